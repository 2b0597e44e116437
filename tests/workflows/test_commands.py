"""The command grammar: every command, the near-misses, and Hypothesis properties that it never misfires."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.server import Reply
from tests.workflows.world import OWNER, post_whatsapp, runs_of, whatsapp_form
from workflows import commands
from workflows.commands import Command, parse_command, strip_mentions

#: The zone offset a time in the hour the clocks repeat in autumn carries ("02:40 Europe/Berlin (CEST, UTC+02:00)"):
#: these tests read the real clock, so one hour a year a reply has it.
_OFFSET = r"( \(\w+, UTC[+-]\d\d:\d\d\))?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("start", Command("start")),
        ("  START  ", Command("start")),
        ("Start!", Command("start")),
        ("stop", Command("stop")),
        ("Stop.", Command("stop")),
        ("status", Command("status")),
        ("STATUS", Command("status")),
        ("brief", Command("brief")),
        ("briefing", Command("brief")),
        ("Briefing", Command("brief")),
        ("help", Command("help")),
        ("start writing for 30 min", Command("start", "writing", 30)),
        ("start Deep work for 45 minutes", Command("start", "Deep work", 45)),
        ("start code review for 1 minute", Command("start", "code review", 1)),
        ("START email for 15m", Command("start", "email", 15)),
        ("start taxes for 2 h", Command("start", "taxes", 120)),
        ("start taxes for 2 hours", Command("start", "taxes", 120)),
        ("start taxes for 1 hour", Command("start", "taxes", 60)),
        ("start   spaced    task   for 10   min", Command("start", "spaced task", 10)),
        ("start plan for the week for 20 min", Command("start", "plan for the week", 20)),
        ("start 3 reviews for 25 min", Command("start", "3 reviews", 25)),
        ("start for 30 min", Command("start", None, 30)),
        ("start 2h", Command("start", None, 120)),
        # A no-break space (phones insert them) is a blank in the task like any other.
        ("start deep\u00a0 work for 25 min", Command("start", "deep work", 25)),
    ],
)
def test_commands(text, expected):
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I can't start today",
        "starting soon",
        "start soon",
        "start writing",
        "please start",
        "can you stop?",
        "stopwatch",
        "stop the war",
        "status report please",
        "brief me",
        "helpful",
        "help me plan",
        "what's my status",
        "start writing for 30 minutes please",
        # A task needs "for", and a command is one line (both started timers before a review found them).
        "start writing 30 min",
        "Start the oven and wait 10 min",
        "Start\nI will be done in 20 min",
        "start writing\nfor 20 min",
        "start\nfor 20 min",
        "Start the oven\u2028I will wait for 20 min",  # Unicode's line separator (found by a review)
        "start a\u2029b for 5 min",
        "start a\x85b for 5 min",
        # The file, group and record separators break a line too (str.splitlines); pinned by a mutation review.
        "start a\x1cb for 5 min",
        "Start the oven\x1dI will wait for 20 min",
        "start a\x1eb for 5 min",
        # A question is not a command: only "." and "!" may follow one (pinned by a mutation review).
        "stop?",
        "status?",
        "start?",
        "start writing for 10000 min",  # N has at most 4 digits
        "start writing for thirty min",
        "start writing for 30 days",
        "start writing for -5 min",
        "",
        "   ",
        "🚀 start",
        "/start",
        # Unicode case folding and other scripts' digits (found by a review): "ſtart" parsed as a command
        # named "ſtart" and ran the briefing; "٣٠" was read as 30.
        "ſtart",
        "ſtop",
        "ſtatus",
        "brıef",
        "ſtart for 30 min",
        "start writing for ٣٠ min",
        "start writing for 30 mın",
    ],
)
def test_near_misses_are_not_commands(text):
    assert parse_command(text) is None


def test_out_of_range_durations_parse_and_are_refused_when_executed():
    # The grammar recognises the shape; the executor refuses 0 minutes or more than a day.
    assert parse_command("start x for 0 min") == Command("start", "x", 0)
    assert parse_command("start x for 99 h") == Command("start", "x", 99 * 60)


def test_slack_mentions_are_stripped():
    assert strip_mentions("<@U012AB3CD> start") == "start"
    assert strip_mentions("<@U012AB3CD|bot>   stop") == "stop"
    assert parse_command(strip_mentions("hey <@U012AB3CD> start")) is None


# --- Properties ----------------------------------------------------------------------

COMMAND_WORDS = {"start", "stop", "status", "brief", "briefing", "help"}
UNITS = ["m", "min", "mins", "minute", "minutes", "h", "hr", "hrs", "hour", "hours"]


def first_word(text: str) -> str:
    words = text.strip().split()
    return re.sub(r"[.!]+$", "", words[0]).lower() if words else ""


@given(st.text())
def test_arbitrary_text_parses_only_when_it_starts_with_a_command_word(text):
    command = parse_command(text)
    if command is not None:
        assert first_word(text) in COMMAND_WORDS


# Unicode case folding pairs these with ASCII letters of the grammar: the long s and the dotless i.
FOLDING_LOOKALIKES = {"s": "ſ", "i": "ı"}


@st.composite
def folded_commands(draw):
    """A valid command with some of its foldable letters swapped for their Unicode lookalikes, and whether any was."""
    text = draw(st.sampled_from([*sorted(COMMAND_WORDS), "start for 30 mins", "start work for 2 hrs"]))
    letters = [FOLDING_LOOKALIKES[c] if c in FOLDING_LOOKALIKES and draw(st.booleans()) else c for c in text]
    return "".join(letters), letters != list(text)


@given(folded_commands())
def test_only_ascii_keywords_are_commands(case):
    text, folded = case
    command = parse_command(text)
    if folded:
        assert command is None
    else:
        assert command is not None and command.name in {"start", "stop", "status", "brief", "help"}


@given(st.text(min_size=1), st.sampled_from(sorted(COMMAND_WORDS)))
def test_a_command_word_later_in_a_sentence_never_fires(prefix, word):
    # "I can't start today", "please stop", "x status": anchored at the start, so never a command.
    text = f"{prefix} {word}"
    if prefix.strip() and first_word(prefix) not in COMMAND_WORDS:
        assert parse_command(text) is None


@given(st.sampled_from(["stop", "status", "brief", "briefing", "help"]), st.text(min_size=1))
def test_a_simple_command_followed_by_words_is_chat(word, tail):
    text = f"{word} {tail}"
    if tail.strip() and not re.fullmatch(r"[.!\s]*", tail):
        assert parse_command(text) is None


task_text = st.text(
    alphabet=st.characters(categories=("L", "N"), include_characters=" -'"), min_size=1, max_size=40
).filter(lambda value: value.strip() and value.split()[0].lower() != "for")


@given(
    task_text,
    st.integers(min_value=1, max_value=9999),
    st.sampled_from(UNITS),
    st.booleans(),
    st.sampled_from(["start", "Start", "START"]),
)
def test_every_timed_start_in_the_grammar_parses_exactly(task, amount, unit, with_for, word):
    text = f"{word} {task} {'for ' if with_for else ''}{amount} {unit}"
    command = parse_command(text)
    if not with_for:
        # "<task> <N> <unit>" without "for" is a sentence ("start the oven and wait 10 min"), unless the
        # task itself ends in "for" and so supplies it.
        assert command is None or (command.task is not None and " ".join(task.split()).startswith(command.task))
        return
    assert command is not None
    assert command.name == "start"
    assert command.minutes == (amount * 60 if unit.startswith("h") else amount)
    # A task may itself end in "for"; only the last "for <N> <unit>" is the duration.
    assert command.task == " ".join(task.split())


@given(st.text(), st.text())
def test_a_timed_start_never_spans_lines(head, tail):
    for newline in ("\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"):
        text = f"start {head}{newline}{tail} for 5 min"
        if text.strip().count(newline):
            assert parse_command(text) is None


class _Recording:
    """Wraps the timed-start pattern and records the text it is run on."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern, self.seen = pattern, []

    def fullmatch(self, text: str):
        self.seen.append(text)
        return self.pattern.fullmatch(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("start" + " " * 40_000 + "x", None),
        ("start a" + " \t" * 20_000 + "b", None),
        ("start  deep \t work   for \t 25  min", Command(name="start", task="deep work", minutes=25)),
        ("start\t\tfor  2h", Command(name="start", task=None, minutes=120)),
    ],
    ids=["40k blanks", "40k blanks inside a task", "blank runs in a command", "tabs without a task"],
)
def test_the_timed_start_pattern_never_sees_a_run_of_blanks(monkeypatch, text, expected):
    """Found by a code review: against a long blank run, the pattern backtracked in quadratic time ("start" +
    40,000 spaces + "x" held the event loop 25 s). Runs are collapsed before it, which changes no command."""
    recording = _Recording(commands._TIMED_START)
    monkeypatch.setattr(commands, "_TIMED_START", recording)
    assert parse_command(text) == expected
    [seen] = recording.seen
    assert "  " not in seen and "\t" not in seen


# --- Executing, through the WhatsApp webhook against the fake world --------------------------


def twiml_messages(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [element.text or "" for element in ElementTree.fromstring(response.text).findall("Message")]


async def test_a_chat_message_reaches_the_llm_cut_to_its_first_4000_characters(w, make_client):
    """Inbound text is untrusted: only its first CHAT_MAX_INPUT_CHARS (4,000) characters, taken after the blanks
    around it are stripped, may spend LLM tokens. Pinned by a mutation review: nothing failed when the cut changed."""
    users_text = "0123456789" * 400 + "THE REST IS NEVER SENT"
    w.claude.answer = "Noted."
    async with make_client(**w.settings()) as client:
        reply = twiml_messages(await post_whatsapp(client, whatsapp_form(f"  \n {users_text}")))
    assert reply == ["Noted."]
    [prompt] = w.claude.prompts
    assert len(prompt) == 4000
    assert prompt == users_text[:4000]


async def test_the_brief_command_says_whether_the_timer_started(w, make_client):
    """The reply's timer line: "Timer not started: <why>" when Toggl refused, "Timer: <what>" when it started
    (pinned by a mutation review: nothing failed when the wording was swapped)."""
    w.claude.answer = "- Inbox zero"
    w.toggl.fail_start = 400
    async with make_client(**w.settings()) as client:
        [failed] = twiml_messages(await post_whatsapp(client, whatsapp_form("brief", sid="SM" + "1" * 32)))
        w.toggl.fail_start = None
        [started] = twiml_messages(await post_whatsapp(client, whatsapp_form("brief", sid="SM" + "2" * 32)))
        runs = await runs_of(client, "briefing")
    assert failed == (
        "- Inbox zero\n\nTimer not started: 422 invalid-input: Toggl rejected the request (400). "
        "Toggl said: Toggl is having a bad day."
    )
    assert re.fullmatch(
        rf"- Inbox zero\n\nTimer: 'Deep Work' started \d\d:\d\d Europe/Berlin{_OFFSET}, "
        rf"stops \d\d:\d\d Europe/Berlin{_OFFSET}"
        r"( on \w{3} \d{1,2} \w{3})?",  # the stop's day, when it is after midnight
        started,
    )
    assert [start["description"] for start in w.toggl.starts] == ["Deep Work", "Deep Work"]  # both asked Toggl
    assert w.toggl.running is not None and w.toggl.running["id"] == 9001  # only the second one started
    assert sorted(run["status"] for run in runs) == ["ok", "partial"]


async def test_a_blank_message_gets_help_and_spends_no_llm_tokens(w, make_client):
    """Blanks only (a photo's empty caption): the help, and nothing asked of the LLM (pinned by a mutation review:
    nothing failed when only an empty text, not a blank one, got the help)."""
    async with make_client(**w.settings()) as client:
        [reply] = twiml_messages(await post_whatsapp(client, whatsapp_form(" \n\t ")))
        assert await runs_of(client, "inbound.chat") == []
    assert reply.startswith("Send me a text message. Commands:")
    assert w.claude.requests == []


async def test_a_timer_of_exactly_24_hours_starts_and_slack_is_told_how_long(w, make_client):
    """24 hours is the longest timer, and allowed; the announcement gives its length (pinned by a mutation review:
    nothing failed when 24 h was refused, nor when the announcement read the minutes as seconds)."""
    async with make_client(**w.settings()) as client:
        [reply] = twiml_messages(await post_whatsapp(client, whatsapp_form("start marathon for 24 h")))
        schedule = (await client.get("/schedule")).json()
    assert reply.startswith("Started 'marathon' at ")
    [started] = w.toggl.starts
    [stop] = schedule["stops"]
    planned = datetime.fromisoformat(stop["run_at"]) - datetime.fromisoformat(started["start"])
    assert planned == timedelta(hours=24)
    [announcement] = w.slack.posts
    assert announcement["text"].endswith("(24 h 00 min).")


async def test_the_runs_of_a_start_and_a_stop_record_what_they_did(w, make_client):
    """The ledger is how GET /runs answers "what happened": the entry started and the Slack message posted, then
    the entry stopped and how long it ran (pinned by a mutation review: nothing read either result)."""
    async with make_client(**w.settings()) as client:
        twiml_messages(await post_whatsapp(client, whatsapp_form("start focus for 10 min", sid="SM" + "1" * 32)))
        twiml_messages(await post_whatsapp(client, whatsapp_form("stop", sid="SM" + "2" * 32)))
        [start] = await runs_of(client, "command.start")
        [stop] = await runs_of(client, "command.stop")
    # FakeSlack answers its first post with this ts in #general's channel id.
    assert start["result"] == {"entry_id": 9001, "slack_channel": "C0000000001", "slack_ts": "1732521600.000001"}
    assert w.toggl.stops == ["9001"]
    assert stop["result"]["entry_id"] == 9001 and 0 <= stop["result"]["elapsed_seconds"] < 60


async def test_a_start_whose_stop_could_not_be_saved_tells_the_sender_how_to_stop_it(w, make_client, monkeypatch):
    """The timer runs, but nothing would stop it until the prune saves the stop: the sender is told (pinned by a
    mutation review: the reply read like any start when the sentence was dropped)."""
    from sqlalchemy.exc import OperationalError

    async with make_client(**w.settings()) as client:

        async def schedule_stop(**_: object) -> str:
            raise OperationalError("INSERT INTO scheduled_jobs", {}, Exception("database is locked"))

        monkeypatch.setattr(client.app.state.scheduler, "schedule_stop", schedule_stop)
        [reply] = twiml_messages(await post_whatsapp(client, whatsapp_form("start focus for 10 min")))
    assert len(w.toggl.starts) == 1
    assert re.match(
        rf"Started 'focus' at \d\d:\d\d Europe/Berlin{_OFFSET}; it stops at \d\d:\d\d Europe/Berlin{_OFFSET}"
        r"( on \w{3} \d{1,2} \w{3})?\. ",  # the stop's day, when it is after midnight
        reply,
    )
    assert "could not be saved yet" in reply and "database is locked" in reply
    # The chat's own command, not the HTTP API's POST /stop-timer, which nobody on WhatsApp can send.
    assert reply.endswith(
        'To be sure, send "stop" then ("status" shows whether it still runs). Posted to Slack C0000000001.'
    )
    assert "/stop-timer" not in reply


async def test_under_dry_run_a_stop_and_a_chat_are_recorded_as_rehearsals(w, make_client):
    """GET /runs must not show a rehearsal as a stop or an answer that happened (pinned by a mutation review: only
    the dry-run start's run was read)."""
    w.toggl.running = {
        "id": 77,
        "workspace_id": 4242,
        "description": "Old",
        "start": "2026-11-26T07:00:00Z",
        "stop": None,
        "duration": -1795676400,
    }
    async with make_client(**w.settings(dry_run=True)) as client:
        twiml_messages(await post_whatsapp(client, whatsapp_form("stop", sid="SM" + "1" * 32)))
        twiml_messages(await post_whatsapp(client, whatsapp_form("what first?", sid="SM" + "2" * 32)))
        [stop] = await runs_of(client, "command.stop")
        [chat] = await runs_of(client, "inbound.chat")
    assert w.toggl.stops == [] and w.claude.requests == []
    assert (stop["status"], stop["input_summary"]) == ("dry_run", {"command": "stop", "sender": OWNER, "dry_run": True})
    assert (chat["status"], chat["input_summary"]) == ("dry_run", {"sender": OWNER, "dry_run": True})


async def test_a_chat_without_a_language_model_says_so_and_is_a_failed_run(w, make_client):
    """Pinned by a mutation review: the run read `ok` when the assistant could not be asked."""
    async with make_client(**w.settings(anthropic_api_key=None)) as client:
        [reply] = twiml_messages(await post_whatsapp(client, whatsapp_form("what first?")))
        [run] = await runs_of(client, "inbound.chat")
    # Changed deliberately from "The assistant is not configured: ", which the chat detail then repeated ("No LLM
    # provider is set up yet: ..."); the chat reply now says it once (tests/workflows/test_hints_chat_wording.py).
    assert reply.startswith("The assistant is not set up yet: the operator must set ")
    assert run["status"] == "failed"
    assert w.claude.requests == []


async def test_a_chat_the_llm_refused_is_the_reply_and_a_failed_run(w, make_client):
    """Pinned by a mutation review: the run read `ok` when the assistant could not answer."""
    w.claude.fail = Reply(400, json={"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    async with make_client(**w.settings()) as client:
        [reply] = twiml_messages(await post_whatsapp(client, whatsapp_form("what first?")))
        [run] = await runs_of(client, "inbound.chat")
    assert reply.startswith("The assistant could not answer: ")
    assert run["status"] == "failed"
    assert len(w.claude.requests) == 1


async def test_an_answer_cut_by_the_models_safety_checks_says_so(w, make_client):
    """A refusal after some text: the text, flagged (pinned by a mutation review: nothing failed without the flag)."""
    w.claude.fail = Reply(
        200,
        json={
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "Here is the first part"}],
            "stop_reason": "refusal",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
    )
    async with make_client(**w.settings()) as client:
        [reply] = twiml_messages(await post_whatsapp(client, whatsapp_form("what first?")))
        [run] = await runs_of(client, "inbound.chat")
    assert reply == "Here is the first part [the assistant's safety checks stopped this answer]"
    assert run["result"]["refused"] is True


async def test_a_chat_with_no_language_model_at_all_gets_the_help(w, make_client):
    """Workflows built without an AIRouter (the app always has one) answer chat with the help and record nothing."""
    import dataclasses

    from workflows.briefing import WorkflowDeps

    async with make_client(**w.settings()) as client:
        deps = dataclasses.replace(WorkflowDeps.from_app(client.app), ai_router=None)
        reply = await commands.respond(deps, "what first?", trigger="whatsapp", sender=OWNER)
        assert await runs_of(client, "inbound.chat") == []
    assert reply.startswith("The assistant is not configured (no language model). Commands:")
    assert w.claude.requests == []
