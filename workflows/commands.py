"""The inbound command grammar: deterministic, case-insensitive, anchored at the start of the message.

The original service treated any message *containing* "start" as a command, so
"I can't start today" started a timer. Here a message is a command only when
the WHOLE message matches one of the forms below; everything else is chat and
goes to the AIRouter. An inbound message is untrusted text: the model never
decides to act, only this grammar does.

    start                                   BRIEFING_TASK for BRIEFING_TIMER_MINUTES
    start <task> for <N> <unit>             (one line; a task needs "for")
    start [for] <N> <unit>                  BRIEFING_TASK for N
    stop | status | brief | briefing | help

N has 1-4 ASCII digits; keywords and units are ASCII (any case); unit is m|min|mins|minute(s)|h|hr|hrs|hour(s).
Blanks are spaces and tabs, Unicode's no-break and other spaces included.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

from core.errors import OUTCOME_UNKNOWN, NotConfigured, ProblemError, StoreUnavailable, from_the_database
from core.ledger import RunKind
from core.text import xml_safe
from services.ai_router import NO_PROVIDER, SET_A_PROVIDER
from skills.slack import escape_text
from workflows.briefing import (
    BriefingRequest,
    WorkflowDeps,
    cancel_planned_stop,
    human_duration,
    local_stop_time,
    local_time,
    plan_stop,
    run_briefing,
)

logger = logging.getLogger("orchestrator.commands")

CommandName = Literal["start", "stop", "status", "brief", "help"]

MAX_MINUTES = 24 * 60

# Trailing punctuation is tolerated ("stop!"), nothing else may follow a command word.
_END = r"[.!]*"
# Keywords, units and digits match as ASCII only (`(?a:...)`): under Unicode rules IGNORECASE also matched the
# long s and the dotless i ("ſtart" parsed as a command named "ſtart", which ran the briefing), and `\d` matched
# any script's digits ("start for ٣٠ min"); found by a review. A task may still be written in any script.
_SIMPLE = re.compile(rf"(?P<word>(?a:start|stop|status|brief|briefing|help)){_END}", re.IGNORECASE)
# One line, and a task only before "for": "Start the oven and wait 10 min" and "Start\nI will be done in
# 20 min" are sentences, not commands (both started timers before a review found them). Without a task,
# "start 2h" and "start for 30 min" mean BRIEFING_TASK.
# A blank is a space or a tab, or any of Unicode's other spaces (category Zs: the no-break space, the narrow and
# thin ones, ...), which a chat app shows as a space: Slack sends "start\u00a0writing for 25 min" for a copied or
# edited message, and it was chat (found by a review). None of them breaks a line.
_BLANK = r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+"
_BLANK_RUN = re.compile(_BLANK)
# Every character that starts a new line somewhere: CR, LF, VT, FF, the C1 NEL and Unicode's separators
# (U+2028 let "Start the oven\u2028I will wait for 20 min" through; found by a review).
_LINE_BREAKS = r"\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029"
_TIMED_START = re.compile(
    rf"(?a:start)(?:{_BLANK}(?P<task>[^{_LINE_BREAKS}]*?\S){_BLANK}(?a:for)|(?:{_BLANK}(?a:for))?){_BLANK}"
    rf"(?P<amount>[0-9]{{1,4}})(?:{_BLANK})?(?P<unit>(?a:m|min|mins|minutes?|h|hrs?|hours?)){_END}",
    re.IGNORECASE,
)
_ALIASES: dict[str, CommandName] = {"briefing": "brief"}

HELP_TEXT = (
    "Commands:\n"
    "• start <task> for <N> min|h: start a Toggl timer (stops by itself) and tell Slack\n"
    "• start: {task} for {minutes} minutes\n"
    "• stop: stop the running timer\n"
    "• status: the running timer, if any\n"
    "• brief: run the morning briefing\n"
    "• help: this list\n"
    "Anything else is answered by the assistant."
)


@dataclass(frozen=True)
class Command:
    """A parsed command. `task` and `minutes` are set only for a timed `start`."""

    name: CommandName
    task: str | None = None
    minutes: int | None = None


def parse_command(text: str) -> Command | None:
    """The command `text` spells, or None when it is not a command (chat for the AIRouter)."""
    message = text.strip()
    simple = _SIMPLE.fullmatch(message)
    if simple:
        word = simple.group("word").lower()
        return Command(name=_ALIASES.get(word, word))  # type: ignore[arg-type]
    # Blank runs collapsed first: against a long run of blanks the pattern's `[ \t]+` on both sides of a task
    # backtracked in quadratic time ("start" + 40,000 spaces + "x" took 25 s of the event loop; found by a
    # code review). The task's blanks are collapsed anyway.
    timed = _TIMED_START.fullmatch(_BLANK_RUN.sub(" ", message))
    if timed:
        amount = int(timed.group("amount"))
        minutes = amount * 60 if timed.group("unit").lower().startswith("h") else amount
        task = " ".join(timed.group("task").split()) if timed.group("task") else None
        return Command(name="start", task=task, minutes=minutes)
    return None


# A label stops at `<` too: with `[^>]*`, each unclosed `<@U|` in "<@U|<@U|..." scanned to the end of the text,
# quadratic in its length (40,000 characters, Slack's longest message, held the event loop 2 s; found by a
# security review). A label never holds `<`: Slack escapes it.
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^<>]*)?>[:,]?")


def strip_mentions(text: str) -> str:
    """Remove Slack user mentions (`<@U123ABC>`, and the `:` or `,` Slack's autocomplete may add after one)
    so "@bot start" and "@bot: status" parse like "start" and "status"."""
    return _MENTION.sub(" ", text).strip()


# --- Executing --------------------------------------------------------------------

CHAT_SYSTEM = (
    "You are a friendly productivity assistant replying on a chat app. Answer briefly in plain text. "
    "You cannot perform actions yourself; if asked to, point the user to the commands: "
    "start <task> for <N> min, stop, status, brief, help."
)
CHAT_MAX_INPUT_CHARS = 4000  # inbound text is untrusted: bound what it can spend on LLM tokens
CHAT_MAX_TOKENS = 600


def help_text(deps: WorkflowDeps) -> str:
    return HELP_TEXT.format(task=deps.settings.briefing_task, minutes=deps.settings.briefing_timer_minutes)


async def respond(deps: WorkflowDeps, text: str, *, trigger: str, sender: str | None = None) -> str:
    """The reply to one inbound message: a command's confirmation, or the AIRouter's answer.

    Never raises for an upstream failure: the failure becomes the reply (and
    is recorded in the ledger), because the sender is waiting for an answer.

    Every chat reply (WhatsApp TwiML, the late WhatsApp message, the Slack
    thread reply) is this function's result, so it is scrubbed here, once,
    with the app's SecretScrubber: an upstream error quoted in a reply can
    echo a credential (Gemini's 400 "API key not valid: AIza..."), and a chat
    message is as public as a problem body or a log line.

    The characters no chat message can carry (`xml_safe`: TwiML drops them) go
    first: dropped after the scrub, a control character splitting a secret
    would hide it from the scrubber and then rejoin it.

    The service's own database failing is answered too (`database_failure_reply`); any other exception is a
    bug, and is raised.
    """
    try:
        reply = await _reply(deps, text, trigger=trigger, sender=sender)
    except Exception as exc:
        told = database_failure_reply(deps, text, exc)
        if told is None:
            raise
        logger.exception("a %s message met the service's database failing; the sender is told so", trigger)
        reply = told
    return deps.settings.secret_scrubber.scrub(xml_safe(reply))


#: The reply to a message whose command or question the database refused before anything was done: a run's
#: start is committed before it acts, so that refusal comes first.
NOTHING_DONE = "Sorry, the service's database did not answer, so nothing was done. Send your message again in a minute."
#: ... to a question whose answer was lost when the database failed after the model answered: the assistant
#: acts on nothing, so asking again is safe.
ANSWER_LOST = (
    "Sorry, the service's database failed while the assistant answered, so the answer was lost; nothing else was "
    "done. Send your message again in a minute."
)
#: ... to a command the database failed under once it may have acted: what may have happened, and how to find
#: out before sending it again (the chat form of the HTTP API's "check GET /runs").
MAY_HAVE_ACTED = (
    "Sorry, the service's database failed while this ran, so what it did may not be recorded. "
    f"{OUTCOME_UNKNOWN}: {{what}}"
)
_WHAT_MAY_HAVE_HAPPENED: dict[CommandName, str] = {
    "start": 'the timer may have started, and Slack may have been told. Send "status" to see whether it runs '
    '(or check Toggl) before sending the command again; "stop" stops it.',
    "stop": 'the timer may have stopped. Send "status" to see whether it still runs before sending "stop" again.',
    "brief": 'the briefing may have started its timer and posted its summary to Slack. Send "status" and look '
    'in Slack before sending "brief" again.',
}


def database_failure_reply(deps: WorkflowDeps, text: str, exc: BaseException) -> str | None:
    """What the sender of `text` is told when its command or question failed with the service's own database;
    None for any other failure (a bug).

    Raised, the failure was swallowed by the background task running the message: the sender got "Sorry,
    something went wrong" on WhatsApp and nothing at all on Slack, while the timer may have started (found by
    a review). A refused run start (`database_failed(acted=False)`: `nothing_sent`) comes before
    anything is done; any later database failure (the run's finish, a lost ledger write) may follow a Toggl
    start or a Slack post, so the outcome is unknown, as the HTTP API says in the same case.
    """
    if not (isinstance(exc, StoreUnavailable) or from_the_database(exc)):
        return None
    if isinstance(exc, StoreUnavailable) and exc.extras.get("nothing_sent") is True:
        return NOTHING_DONE
    if deps.settings.dry_run:  # a rehearsal sends nothing: no Toggl or Slack call, no question to the model
        return NOTHING_DONE
    command = parse_command(text)
    if command is None:
        return ANSWER_LOST
    what = _WHAT_MAY_HAVE_HAPPENED.get(command.name)
    return MAY_HAVE_ACTED.format(what=what) if what is not None else NOTHING_DONE


async def _reply(deps: WorkflowDeps, text: str, *, trigger: str, sender: str | None) -> str:
    if not text.strip():
        # A photo or a voice note without text: nothing to act on, and no reason to spend LLM tokens.
        return "Send me a text message. " + help_text(deps)
    command = parse_command(text)
    if command is None:
        return await _chat(deps, text, trigger=trigger, sender=sender)
    if command.name == "help":
        return help_text(deps)
    if command.name == "start":
        return await _start(deps, command, trigger=trigger, sender=sender)
    if command.name == "stop":
        return await _stop(deps, trigger=trigger, sender=sender)
    if command.name == "status":
        return await _status(deps)
    return await _brief(deps, trigger=trigger)


def _dry(dry_run: bool) -> str:
    """The start of every reply to a command run under DRY_RUN=true: nothing was done, and why."""
    return "Dry run (DRY_RUN=true), nothing was sent: " if dry_run else ""


def _problem_reply(what: str, exc: ProblemError) -> str:
    # Worded for the chat: a detail's API remedies (GET /timers/current, pass workspace_id to POST /start-timer)
    # are nothing a person on WhatsApp or Slack can send. The run's ledger rows keep the API wording.
    return f"{what}: {exc.words('chat')}"


async def _start(deps: WorkflowDeps, command: Command, *, trigger: str, sender: str | None) -> str:
    settings = deps.settings
    task = command.task or settings.briefing_task
    minutes = command.minutes if command.minutes is not None else settings.briefing_timer_minutes
    if not 1 <= minutes <= MAX_MINUTES:
        return "A timer can run from 1 minute to 24 hours. Try: start writing for 45 min"
    dry_run = settings.dry_run
    summary = {"command": "start", "task": task, "duration_minutes": minutes, "sender": sender}
    if dry_run:  # recorded: the prune's recovery of an interrupted start must know a rehearsal from a start
        summary["dry_run"] = True
    async with deps.ledger.run(RunKind.COMMAND_START, trigger=trigger, input_summary=summary) as run:
        try:
            async with run.action("toggl", "start_timer") as action:
                started = await deps.skills.toggl.start_timer(
                    description=task, duration_minutes=minutes, dry_run=dry_run
                )
                action.external_id = started.ledger_external_id()
                action.request = started.payload
                action.status = "dry_run" if dry_run else "ok"
        except ProblemError as exc:
            run.status = "failed"
            return _problem_reply("Could not start the timer", exc)
        stop_not_saved = await plan_stop(deps, run, started)
        start_at = local_time(started.start, settings)
        stop_at = local_stop_time(started.planned_stop, started.start, settings)
        confirmation = (
            f"Would start '{task}' at {start_at}; it would stop at {stop_at}."
            if dry_run
            else f"Started '{task}' at {start_at}; it stops at {stop_at}."
        )
        if stop_not_saved is not None:
            confirmation += f" {stop_not_saved.words('chat')}"
        announcement = (
            # The task is the sender's text: escaped, or "start <!channel> for 5 min" would ping the channel.
            f":stopwatch: '{escape_text(task)}' started at {start_at}, planned stop {stop_at} "
            f"({human_duration(minutes * 60)})."
        )
        try:
            async with run.action("slack", "post_message") as action:
                posted = await deps.skills.slack.post_message(text=announcement, dry_run=dry_run)
                action.external_id = posted.ledger_external_id()
                action.request = posted.payload
                action.status = "dry_run" if dry_run else "ok"
        except ProblemError as exc:
            run.status = "partial"
            run.error = exc.detail  # the run said `partial` with no reason (found by a black-box review)
            return f"{_dry(dry_run)}{confirmation} Slack was not told: {exc.words('chat')}"
        run.result = {"entry_id": started.entry_id, "slack_channel": posted.channel, "slack_ts": posted.ts}
        if dry_run:
            run.status = "dry_run"
            return f"{_dry(dry_run)}{confirmation} Slack {posted.channel} would be told."
        return f"{confirmation} Posted to Slack {posted.channel}."


async def _stop(deps: WorkflowDeps, *, trigger: str, sender: str | None) -> str:
    dry_run = deps.settings.dry_run
    summary = {"command": "stop", "sender": sender} | ({"dry_run": True} if dry_run else {})
    async with deps.ledger.run(RunKind.COMMAND_STOP, trigger=trigger, input_summary=summary) as run:
        try:
            async with run.action("toggl", "stop_timer") as action:
                stopped = await deps.skills.toggl.stop_timer(dry_run=dry_run)
                action.external_id = None if stopped is None else str(stopped.entry_id)
                if stopped is not None:
                    action.request = stopped.payload
                action.status = "dry_run" if dry_run else "ok"
        except ProblemError as exc:
            run.status = "failed"
            return _problem_reply("Could not stop the timer", exc)
        if dry_run:
            # Also when nothing runs, as POST /stop-timer records it: it read `ok`, as if a real stop had run.
            run.status = "dry_run"
        if stopped is None:
            run.result = {"stopped": None}
            return "No timer is running."
        cancel_failed = await cancel_planned_stop(deps, run, stopped)
        # The sender reads it in the chat, where GET /schedule means nothing; the run records what they were told.
        not_cancelled = cancel_failed.words("chat") if cancel_failed is not None else None
        run.result = {"entry_id": stopped.entry_id, "elapsed_seconds": stopped.elapsed_seconds}
        if not_cancelled:
            run.result["planned_stop_error"] = not_cancelled
        name = f"'{stopped.description}'" if stopped.description else "the timer"
        if dry_run:
            return f"{_dry(dry_run)}Would stop {name} (entry {stopped.entry_id})."
        if stopped.elapsed_seconds is None:  # Toggl found it already stopped and did not return it
            confirmation = f"Stopped {name}."
        else:
            confirmation = f"Stopped {name} after {human_duration(stopped.elapsed_seconds)}."
        return f"{confirmation} {not_cancelled}" if not_cancelled else confirmation


async def _status(deps: WorkflowDeps) -> str:
    try:
        running = await deps.skills.toggl.current_timer()
    except ProblemError as exc:
        return _problem_reply("Could not read the timer", exc)
    if running is None:
        return "No timer is running."
    return (
        f"'{running.description}' running since {local_time(running.start, deps.settings)} "
        f"({human_duration(running.elapsed_seconds)})."
    )


async def _brief(deps: WorkflowDeps, *, trigger: str) -> str:
    dry_run = deps.settings.dry_run
    report = await run_briefing(deps, BriefingRequest(dry_run=dry_run), trigger=trigger, audience="chat")
    by_name = {step.name: step for step in report.steps}
    lines = [report.plan or f"No plan today ({by_name['plan'].detail})."]
    timer = by_name["timer"]
    if timer.status == "ok":
        lines.append(f"Timer: {timer.detail}")
    elif timer.outcome_unknown:
        # As the Slack summary says it: "not started" next to "the time entry may have been created" was both.
        lines.append(f"Timer may or may not have started: {timer.detail}")
    else:
        lines.append(f"Timer not started: {timer.detail}")
    slack = by_name["slack"]
    if slack.status != "ok":
        lines.append(f"Slack summary not posted: {slack.detail}")
    return _dry(dry_run) + "\n\n".join(lines)


async def _chat(deps: WorkflowDeps, text: str, *, trigger: str, sender: str | None) -> str:
    router = deps.ai_router
    if router is None:
        return "The assistant is not configured (no language model). " + help_text(deps)
    prompt = text.strip()[:CHAT_MAX_INPUT_CHARS]
    dry_run = deps.settings.dry_run
    summary = {"sender": sender} | ({"dry_run": True} if dry_run else {})
    async with deps.ledger.run(RunKind.INBOUND_CHAT, trigger=trigger, input_summary=summary) as run:
        try:
            async with run.action("ai_router", "generate") as action:
                generation = await router.generate(
                    text=prompt, system=CHAT_SYSTEM, max_tokens=CHAT_MAX_TOKENS, dry_run=dry_run
                )
                action.external_id = str(generation.model_used)
                action.status = "dry_run" if dry_run else "ok"
        except NotConfigured as exc:
            run.status = "failed"
            if exc.extras.get("integration") == NO_PROVIDER:
                # The remedy alone: the whole detail repeated the reply's own words ("The assistant is not
                # configured: No LLM provider is set up yet: ..."). The run's action keeps the API detail.
                return f"The assistant is not set up yet: {SET_A_PROVIDER.words('chat')}"
            return _problem_reply("The assistant is not set up yet", exc)
        except ProblemError as exc:
            run.status = "failed"
            return _problem_reply("The assistant could not answer", exc)
        run.result = {
            "provider": generation.provider,
            "model_used": generation.model_used,
            "truncated": generation.truncated,
            "refused": generation.refused,
        }
        if dry_run:
            run.status = "dry_run"
            return f"{_dry(dry_run)}The assistant ({generation.provider} {generation.model_used}) was not asked."
    reply = str(generation.response).strip()
    if not reply and generation.refused:
        return "The assistant's safety checks stopped it from answering this."
    if reply and generation.refused:
        reply += " [the assistant's safety checks stopped this answer]"
    elif reply and generation.truncated:
        reply += f" {model_cut_short(generation.stop_reason)}"
    return reply or "(the assistant returned an empty answer)"


def model_cut_short(stop_reason: str | None) -> str:
    """The note after an answer the model itself stopped before its end (`Generation.truncated`), with the
    provider's reason: `max_tokens` (CHAT_MAX_TOKENS), the context window, Gemini's CONTINUATION.

    It read "the answer was longer than a chat reply allows", which blamed the chat's own length limit (a
    WhatsApp reply is cut at MAX_REPLY_CHARS, far past CHAT_MAX_TOKENS, and ends with "…" alone) for what the
    model did (found by a review).
    """
    reason = f" ({stop_reason})" if stop_reason else ""
    return f"[…cut short: the model stopped before the end of its answer{reason}]"
