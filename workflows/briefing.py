"""The morning briefing: an AI plan and a deep-work timer, concurrently, then one Slack summary.

One workflow serves POST /morning-briefing, the WhatsApp/Slack `brief`
command and the BRIEFING_CRON schedule. A failing or unconfigured step never
stops the others: each step becomes a `BriefingStep` with its own status, and
the Slack summary goes out even when the plan failed, saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from core.errors import CONFIGURED, OPERATOR_SETS, Audience, NotConfigured, PerAudience, Phrase, ProblemError
from core.ledger import Ledger, RunHandle, RunKind, describe_error
from core.registry import Registry
from core.settings import Settings
from core.validation import skill_check
from skills import SkillSet
from skills.slack import escape_text
from skills.toggl import check_text

logger = logging.getLogger("orchestrator.briefing")

StepStatus = Literal["ok", "failed", "skipped", "not_configured"]
BriefingStatus = Literal["ok", "partial", "failed"]
# `Audience` (core.errors): the facts of a planned-stop failure are the same for every reader; how to act on them
# is not: an API caller sends `POST /stop-timer`, a chat user sends "stop" (a command of `workflows.commands`).

PLAN_SYSTEM = (
    "You are a concise productivity assistant. Write a realistic plan for the day as at most five short "
    "bullet points. Plain text, no preamble."
)
PLAN_MAX_TOKENS = 400


# --- What the workflows need, gathered once -----------------------------------------


class TextGenerator(Protocol):
    """The AIRouter's interface as the workflows use it (services.ai_router.AIRouter)."""

    async def generate(
        self,
        *,
        text: str,
        system: str | None = None,
        max_tokens: int | None = None,
        provider: str = "auto",
        dry_run: bool = False,
    ) -> Any: ...


class StopPlanner(Protocol):
    """The scheduler's interface as the workflows use it (workflows.scheduler.JobScheduler)."""

    async def schedule_stop(
        self, *, entry_id: int | str, workspace_id: int | str | None, description: str, at: datetime
    ) -> str | None: ...

    async def cancel_stops(self, *, entry_id: int | str) -> int: ...


@dataclass
class WorkflowDeps:
    """Everything a workflow touches. Read from the app at call time, so the scheduler and the
    webhooks' background tasks see the same objects as the routes."""

    settings: Settings
    registry: Registry
    ledger: Ledger
    skills: SkillSet
    ai_router: TextGenerator | None
    scheduler: StopPlanner | None

    @classmethod
    def from_app(cls, app: FastAPI) -> WorkflowDeps:
        state = app.state
        return cls(
            settings=state.resources.settings,
            registry=state.registry,
            ledger=state.resources.ledger,
            skills=state.skills,
            # Built by the LLM issue's lifespan code; absent means "no provider configured".
            ai_router=getattr(state, "ai_router", None),
            scheduler=getattr(state, "scheduler", None),
        )


def local_time(moment: datetime | str | None, settings: Settings) -> str:
    """`09:30 Europe/Berlin`: every time a person reads is shown in TIMEZONE.

    A wall time the clocks show twice (the autumn hour they repeat) also says which one it is, `02:10
    Europe/Berlin (CET, UTC+01:00)`: a 30-minute timer started at 02:40 CEST was confirmed as "started at 02:40;
    it stops at 02:10" (found by a review).
    """
    if moment is None:
        return "?"
    local = _in_zone(moment, settings)
    shown = f"{local:%H:%M} {settings.timezone}"
    if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
        offset = f"{local:%z}"
        shown += f" ({local:%Z}, UTC{offset[:3]}:{offset[3:]})"
    return shown


def local_stop_time(stop: datetime | str | None, start: datetime | str | None, settings: Settings) -> str:
    """A timer's stop as `local_time` shows it, plus its day when that is not the start's day in TIMEZONE:
    `09:30 Europe/Berlin on Fri 27 Nov`.

    A 24-hour timer was confirmed as "started at 09:30; it stops at 09:30". The day is a date, not "tomorrow":
    the words are kept in the ledger and in Slack and read later, and a 24-hour timer started at 23:30 the night
    the clocks spring forward stops two days on, at 00:30.
    """
    shown = local_time(stop, settings)
    if stop is None or start is None:
        return shown
    day = _in_zone(stop, settings)
    if day.date() == _in_zone(start, settings).date():
        return shown
    return f"{shown} on {day:%a} {day.day} {day:%b}"


def _in_zone(moment: datetime | str, settings: Settings) -> datetime:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return moment.astimezone(UTC).astimezone(settings.zone)  # through UTC: a time in a skipped hour is normalised


def human_duration(seconds: float) -> str:
    minutes = max(0, round(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


# --- Request and report --------------------------------------------------------------


class BriefingRequest(BaseModel):
    """Everything is optional: the defaults come from BRIEFING_* settings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"channel": "#daily", "task": "Deep Work", "duration_minutes": 90, "dry_run": False}
        },
    )

    channel: str | None = Field(
        None,
        min_length=1,
        max_length=80,
        description="Slack channel; default BRIEFING_CHANNEL, then SLACK_DEFAULT_CHANNEL.",
    )
    # The same limit as POST /start-timer's task_name: both become the Toggl entry's description.
    task: str | None = Field(
        None, min_length=1, max_length=3000, description="Timer description; default BRIEFING_TASK."
    )
    # Strict: `"dry_run": "yes"` or `"duration_minutes": true` is a 422, not a guess.
    duration_minutes: StrictInt | None = Field(
        None, ge=1, le=24 * 60, description="Planned timer length; default BRIEFING_TIMER_MINUTES."
    )
    dry_run: StrictBool = Field(False, description="Build every request without sending any (no LLM call either).")

    @field_validator("task")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return skill_check(check_text, value) if value is not None else None

    @field_validator("channel", "task")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        # Blank is a mistake, not a request for the default: omit the field to use the BRIEFING_* setting.
        if value is not None and not value.strip():
            raise ValueError("must not be blank; omit it to use the default")
        return value.strip() if value is not None else None


class BriefingStep(BaseModel):
    name: Literal["plan", "timer", "slack"]
    status: StepStatus
    detail: str
    external_id: str | None = None
    duration_ms: int = 0
    missing_settings: list[str] = Field(
        default_factory=list, description="For a not_configured step: the variables to set (names only)."
    )
    outcome_unknown: bool = Field(
        False, description="For a failed step: the call may still have taken effect (the detail says where to check)."
    )


class BriefingReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "partial",
                "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                "dry_run": False,
                "steps": [
                    {
                        "name": "plan",
                        "status": "failed",
                        "detail": "502 upstream-error: gemini answered 500",
                        "external_id": None,
                        "duration_ms": 812,
                        "missing_settings": [],
                        "outcome_unknown": False,
                    },
                    {
                        "name": "timer",
                        "status": "ok",
                        "detail": "'Deep Work' started 08:00 UTC, stops 09:30 UTC",
                        "external_id": "3456789012",
                        "duration_ms": 240,
                        "missing_settings": [],
                        "outcome_unknown": False,
                    },
                    {
                        "name": "slack",
                        "status": "ok",
                        "detail": "posted to C0123456789",
                        "external_id": "1764057600.000100",
                        "duration_ms": 130,
                        "missing_settings": [],
                        "outcome_unknown": False,
                    },
                ],
                "plan": None,
            }
        }
    )

    status: BriefingStatus
    run_id: str
    dry_run: bool = Field(
        False,
        description="Nothing was sent: the body's `dry_run`, `?dry_run=true` or DRY_RUN=true (any one of them).",
    )
    steps: list[BriefingStep]
    plan: str | None = Field(None, description="The AI plan, when it was generated.")


def overall_status(steps: list[BriefingStep]) -> BriefingStatus:
    """ok: nothing went wrong; failed: nothing succeeded; partial: anything in between.

    `skipped` (a dry run's plan, whose LLM is configured) counts as succeeding, so a dry run answers what the
    real run would: with only an LLM configured that is `partial`, not a 503 "nothing is configured".
    """
    if all(step.status in ("ok", "skipped") for step in steps):
        return "ok"
    if not any(step.status in ("ok", "skipped") for step in steps):
        return "failed"
    return "partial"


# --- The workflow ------------------------------------------------------------------------


@dataclass
class _StepResult:
    step: BriefingStep
    value: Any = None
    #: The step's detail as a chat user reads it (the Slack summary, whoever asked for the briefing), when the
    #: report's `step.detail` is worded for an API caller and differs.
    chat_detail: str | None = None
    #: ... and as an API caller reads it, for the ledger's run (GET /runs is read by whoever runs the service),
    #: when the report's `step.detail` is worded for a chat user (the `brief` command) and differs.
    api_detail: str | None = None

    @property
    def detail_for_chat(self) -> str:
        return self.chat_detail if self.chat_detail is not None else self.step.detail

    @property
    def step_for_ledger(self) -> BriefingStep:
        """The step as the run records it: worded for an API caller, whoever the report is worded for."""
        if self.api_detail is None or self.api_detail == self.step.detail:
            return self.step
        return self.step.model_copy(update={"detail": self.api_detail})


async def _run_step(
    run: RunHandle,
    name: Literal["plan", "timer", "slack"],
    skill: str,
    operation: str,
    call: Callable[[], Awaitable[Any]],
    describe: Callable[[Any, Audience], tuple[str, str | None]],
    audience: Audience,
) -> _StepResult:
    """Run one step as one ledger action; any failure becomes the step's status, never an exception.

    The step's detail is worded for `audience`, its `chat_detail` for a chat user; the ledger's action records
    the API wording (GET /runs is read by whoever runs the service)."""
    started = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        async with run.action(skill, operation) as action:
            try:
                value = await call()
            except NotConfigured as exc:
                action.status, action.error = "not_configured", exc.detail
                return _StepResult(
                    BriefingStep(
                        name=name,
                        status="not_configured",
                        detail=exc.words(audience),
                        duration_ms=elapsed(),
                        missing_settings=list(exc.extras.get("missing_settings", [])),
                    ),
                    chat_detail=exc.words("chat"),
                    api_detail=exc.detail,
                )
            detail, external_id = describe(value, audience)
            action.external_id = external_id
            action.request = getattr(value, "payload", None)
            action.status = "dry_run" if getattr(value, "dry_run", False) else "ok"
    except ProblemError as exc:
        return _failed_step(run, name, exc, audience, duration_ms=elapsed())
    except Exception as exc:  # a bug in one step must not take the briefing down
        logger.exception("briefing step %s failed unexpectedly", name)
        return _StepResult(
            BriefingStep(
                name=name, status="failed", detail=f"unexpected error: {type(exc).__name__}", duration_ms=elapsed()
            )
        )
    return _StepResult(
        BriefingStep(name=name, status="ok", detail=detail, external_id=external_id, duration_ms=elapsed()),
        value,
        chat_detail=describe(value, "chat")[0],
        api_detail=describe(value, "api")[0],
    )


def _failed_step(
    run: RunHandle,
    name: Literal["plan", "timer", "slack"],
    exc: ProblemError,
    audience: Audience,
    *,
    duration_ms: int = 0,
) -> _StepResult:
    """The step a refusal or failure makes: reported in the briefing, never raised out of it."""
    # The detail goes into the 200 report and the Slack summary, neither of them a problem body: scrubbed here
    # (an LLM error can quote the API key it was sent).
    step = BriefingStep(
        name=name,
        status="failed",
        detail=describe_error(exc, scrubber=run.ledger.scrubber, audience=audience),
        duration_ms=duration_ms,
        outcome_unknown=exc.extras.get("outcome_unknown") is True,
        # A setting the step needs (TOGGL_WORKSPACE_ID) is named as on the single endpoints; it was
        # dropped (found by a black-box review).
        missing_settings=list(exc.extras.get("missing_settings", [])),
    )
    return _StepResult(
        step,
        chat_detail=describe_error(exc, scrubber=run.ledger.scrubber, audience="chat"),
        api_detail=describe_error(exc, scrubber=run.ledger.scrubber, audience="api"),
    )


def _plan_prompt(settings: Settings, task: str, minutes: int) -> str:
    today = datetime.now(settings.zone)
    return (
        f"Today is {today:%A %d %B %Y}. The day starts with a {minutes}-minute focus block: {task}. "
        "Suggest a plan for the rest of the day."
    )


def _cut_short(generation: Any) -> str:
    """`cut short: model_context_window_exceeded`, in the provider's own words: an answer is also cut short at the
    context window and at Gemini's per-request limit (CONTINUATION), which "cut short at max_tokens" hid."""
    return f"cut short: {generation.stop_reason}" if generation.stop_reason else "cut short"


#: The summary's note on a plan cut short, by the provider's stop reason (casefolded): said in plain words, since
#: "longer than the model's answer limit" was said of every cut, a full context window included.
_ANSWER_LIMIT = "it was longer than the model's answer limit"
_CUT_SHORT_NOTES = {
    "max_tokens": _ANSWER_LIMIT,  # Claude, and Gemini's MAX_TOKENS
    "length": _ANSWER_LIMIT,  # an OpenAI-compatible server
    "model_context_window_exceeded": "the model's context window was full",  # Claude: prompt and answer
    "continuation": "the model stopped at its limit for one request, and the rest was not requested",  # Gemini
}


def _cut_short_note(stop_reason: str | None) -> str:
    """`_(the plan was cut short: ...)_`, saying why when the reason is one we know, and no more when it is not."""
    why = _CUT_SHORT_NOTES.get((stop_reason or "").casefold(), "the model stopped before it finished")
    return f"_(the plan was cut short: {why})_"


def _summary_text(settings: Settings, plan: _StepResult, timer: _StepResult) -> str:
    """The briefing's Slack post, read in a chat: each step's detail worded for a chat user (the report's is worded
    for whoever asked for the briefing, an API caller included)."""
    # Only the literal `*` markup is ours: the plan (an LLM's words), the task and upstream errors are
    # escaped, so none of them can turn into `<!channel>` or a link in the bot's name.
    plan_detail = escape_text(plan.detail_for_chat)
    timer_detail = escape_text(timer.detail_for_chat)
    lines = ["*Morning briefing*", ""]
    if plan.step.status == "ok":
        plan_text = escape_text(str(plan.value.response).strip())
        lines += ["*Plan*", plan_text] if plan_text else ["*Plan*: none"]
        if plan.value.refused:
            lines.append("_(the model's safety checks stopped the plan: it may be partial)_")
        elif plan.value.truncated:
            lines.append(_cut_short_note(plan.value.stop_reason))
    elif plan.step.status == "skipped":
        lines += [f"*Plan*: not generated ({plan_detail})"]
    else:
        lines += [f"*Plan*: could not be generated ({plan_detail})"]
    lines.append("")
    if timer.step.status == "ok":
        lines.append(f"*Timer*: {timer_detail}")
    elif timer.step.outcome_unknown:
        # "not started" would be wrong: Toggl may have started it (a review found the summary saying both).
        lines.append(f"*Timer*: may or may not have started ({timer_detail})")
    else:
        lines.append(f"*Timer*: not started ({timer_detail})")
    return "\n".join(lines)


async def run_briefing(
    deps: WorkflowDeps, request: BriefingRequest, *, trigger: str, audience: Audience = "api"
) -> BriefingReport:
    """Plan and timer concurrently, then the Slack summary; one ledger run, one action per step.

    `audience` is who reads the report's step details: "api" for POST /morning-briefing and BRIEFING_CRON (whose
    report is read in GET /runs), "chat" for the `brief` command's reply. The Slack summary is always "chat".
    """
    settings = deps.settings
    task = request.task or settings.briefing_task
    minutes = request.duration_minutes or settings.briefing_timer_minutes
    channel = request.channel or settings.briefing_channel
    summary = {"task": task, "duration_minutes": minutes, "channel": channel, "dry_run": request.dry_run}

    async with deps.ledger.run(RunKind.BRIEFING, trigger=trigger, input_summary=summary) as run:

        async def plan() -> _StepResult:
            router = deps.ai_router
            if router is None:
                # Read in the `brief` reply and the Slack summary too: a chat user cannot set the keys.
                no_model = Phrase(("no language model is ", CONFIGURED, ": ", OPERATOR_SETS)) + (
                    " GEMINI_API_KEY or ANTHROPIC_API_KEY"
                )
                await run.skip("ai_router", "generate", status="not_configured", error=no_model.words("api"))
                return _StepResult(
                    BriefingStep(name="plan", status="not_configured", detail=no_model.words(audience)),
                    chat_detail=no_model.words("chat"),
                    api_detail=no_model.words("api"),
                )
            prompt = _plan_prompt(settings, task, minutes)
            if request.dry_run:
                # A dry run sends nothing upstream, and an LLM call is a paid upstream call. The router still
                # routes (sending nothing), so a missing LLM is `not_configured` as in the real run: the plan read
                # `skipped` with no LLM at all, and the rehearsal then disagreed with the real run.
                try:
                    chosen = await router.generate(
                        text=prompt, system=PLAN_SYSTEM, max_tokens=PLAN_MAX_TOKENS, dry_run=True
                    )
                except NotConfigured as exc:
                    await run.skip("ai_router", "generate", status="not_configured", error=exc.detail)
                    missing = list(exc.extras.get("missing_settings", []))
                    return _StepResult(
                        BriefingStep(
                            name="plan", status="not_configured", detail=exc.words(audience), missing_settings=missing
                        ),
                        chat_detail=exc.words("chat"),
                        api_detail=exc.detail,
                    )
                except ProblemError as exc:
                    # Refused before any call (a prompt over MAX_INPUT_CHARS or every context window): the real
                    # run's plan fails the same way and the briefing goes on. Raised, it took the whole rehearsal
                    # down (a 413, and a failed `brief` command or BRIEFING_CRON under DRY_RUN).
                    failed = _failed_step(run, "plan", exc, audience)
                    error = describe_error(exc, scrubber=run.ledger.scrubber)  # the ledger's wording: the API's
                    await run.skip("ai_router", "generate", status="failed", error=error)
                    return failed
                detail = f"dry run: no LLM call (would ask {chosen.provider} {chosen.model_used})"
                await run.skip("ai_router", "generate", status="skipped", error=detail)
                return _StepResult(BriefingStep(name="plan", status="skipped", detail=detail))
            return await _run_step(
                run,
                "plan",
                "ai_router",
                "generate",
                lambda: router.generate(text=prompt, system=PLAN_SYSTEM, max_tokens=PLAN_MAX_TOKENS),
                lambda gen, _: (
                    f"{gen.provider} {gen.model_used}"
                    + (" (stopped by its safety checks)" if gen.refused else "")
                    + (f" ({_cut_short(gen)})" if gen.truncated else ""),
                    str(gen.model_used),
                ),
                audience,
            )

        stop_not_saved: StopNotSaved | None = None

        def timer_detail(started: Any, reader: Audience) -> str:
            start = local_time(started.start, settings)
            stop = local_stop_time(started.planned_stop, started.start, settings)
            when = f"'{task}' started {start}, stops {stop}"
            if stop_not_saved is not None:
                when += f". {stop_not_saved.words(reader)}"
            return f"dry run: {when}" if started.dry_run else when

        async def timer() -> _StepResult:
            async def start() -> Any:
                nonlocal stop_not_saved
                started = await deps.skills.toggl.start_timer(
                    description=task, duration_minutes=minutes, dry_run=request.dry_run
                )
                stop_not_saved = await plan_stop(deps, run, started)
                return started

            def describe(started: Any, reader: Audience) -> tuple[str, str | None]:
                return timer_detail(started, reader), None if started.entry_id is None else str(started.entry_id)

            return await _run_step(run, "timer", "toggl", "start_timer", start, describe, audience)

        plan_result, timer_result = await asyncio.gather(plan(), timer())

        # The summary is read in Slack whoever asked for the briefing: its details are worded for a chat user.
        text = _summary_text(settings, plan_result, timer_result)
        if deps.registry.get("slack").configured(settings) and not (channel or settings.slack_default_channel):
            # The skill's own hint ("pass `channel` or set SLACK_DEFAULT_CHANNEL") left out the briefing's setting.
            # A chat user (the `brief` command) has no `channel` to pass: only the operator's setting helps.
            missing = ["BRIEFING_CHANNEL"]
            no_channel = (
                Phrase(
                    (
                        "no channel for the summary: ",
                        PerAudience(api="pass `channel`, or set", chat="the operator must set"),
                    )
                )
                + " BRIEFING_CHANNEL (or SLACK_DEFAULT_CHANNEL)"
            )
            await run.skip("slack", "post_message", status="not_configured", error=no_channel.words("api"))
            slack_result = _StepResult(
                BriefingStep(
                    name="slack", status="not_configured", detail=no_channel.words(audience), missing_settings=missing
                ),
                api_detail=no_channel.words("api"),
            )
        else:
            slack_result = await _run_step(
                run,
                "slack",
                "slack",
                "post_message",
                lambda: deps.skills.slack.post_message(text=text, channel=channel, dry_run=request.dry_run),
                lambda posted, _: (
                    f"{'dry run: would post' if posted.dry_run else 'posted'} to {posted.channel}",
                    posted.ts,
                ),
                audience,
            )

        steps = [plan_result.step, timer_result.step, slack_result.step]
        status = overall_status(steps)
        plan_text = str(plan_result.value.response).strip() if plan_result.step.status == "ok" else None
        report = BriefingReport(status=status, run_id=run.id, dry_run=request.dry_run, steps=steps, plan=plan_text)
        run.status = "dry_run" if request.dry_run and status == "ok" else status
        # The run is read in GET /runs, in the API's words whoever asked (the `brief` command's report is the chat's).
        recorded = [result.step_for_ledger for result in (plan_result, timer_result, slack_result)]
        run.result = report.model_copy(update={"steps": recorded}).model_dump(mode="json", exclude={"run_id"})
        if status != "ok":
            # The list view shows `error`, not the steps: say there which ones did not succeed and why.
            run.error = "; ".join(
                f"{step.name} {step.status}: {step.detail}" for step in recorded if step.status != "ok"
            )
    return report


async def schedule_planned_stop(deps: WorkflowDeps, started: Any) -> None:
    """Persist the planned stop of a timer just started, so it fires even across a restart."""
    if started.dry_run or started.planned_stop is None or started.entry_id is None or deps.scheduler is None:
        return
    planned = started.planned_stop
    if isinstance(planned, str):
        planned = datetime.fromisoformat(planned.replace("Z", "+00:00"))
    await deps.scheduler.schedule_stop(
        entry_id=started.entry_id, workspace_id=started.workspace_id, description=started.description, at=planned
    )


#: The ledger action a run records when the planned stop of a timer it started could not be saved: failed,
#: with the stop as its request, until the prune saves it (`Scheduler.prune`).
PLAN_STOP = ("scheduler", "plan_stop")
CANCEL_STOP = ("scheduler", "cancel_stop")


@dataclass(frozen=True)
class StopNotSaved:
    """A timer started, but its planned stop could not be saved (the database failed): the facts, which each
    channel words for its reader with `words`, so the sentence exists once."""

    stop_at: str  # local_stop_time: what the reader's clock shows
    error: str
    entry_id: int
    workspace_id: int

    def words(self, audience: Audience) -> str:
        if audience == "api":
            body = {"entry_id": self.entry_id, "workspace_id": self.workspace_id}
            how = f'stop it then: POST /stop-timer {json.dumps(body)}, or send "stop".'
        else:
            how = 'send "stop" then ("status" shows whether it still runs).'
        return (
            f"The timer started, but its stop at {self.stop_at} could not be saved yet ({self.error[:200]}); "
            f"the service saves it again within 10 minutes. To be sure, {how}"
        )


@dataclass(frozen=True)
class StopNotCancelled:
    """A timer stopped by hand, but its planned stop could not be cancelled (the database failed): the facts,
    worded for each reader by `words`. Nothing is left to do: when due, the stop finds the timer stopped."""

    error: str

    def words(self, audience: Audience) -> str:
        # An API caller can see the stop still listed; a chat user has no GET /schedule, only the reassurance.
        still = "GET /schedule still lists it" if audience == "api" else "it is still planned"
        return (
            f"The timer stopped, but its planned stop could not be cancelled ({self.error[:200]}): {still}, and "
            "when it is due it finds the timer already stopped and changes nothing."
        )


async def plan_stop(deps: WorkflowDeps, run: RunHandle, started: Any) -> StopNotSaved | None:
    """Save the planned stop of a timer `run` just started, inside the run (before it can finish `ok`).

    When it cannot be saved now (the database failed), the timer is running and nothing would stop it: the
    run records a failed `scheduler`/`plan_stop` action holding the stop, which the 10-minute prune saves
    later, and the returned `StopNotSaved` lets the caller say so and how to stop the timer by hand, in its
    reader's terms (`planned_stop_error` on POST /start-timer). Before, the failure was taken for a failed start
    ("Timer: not started") while the timer ran on (found by a code review).
    """
    try:
        # Shielded: a caller who hangs up now must not leave a started timer without its stop.
        await asyncio.shield(schedule_planned_stop(deps, started))
        return None
    except Exception as exc:
        logger.exception("the planned stop of entry %s could not be saved", started.entry_id)
        error = describe_error(exc, scrubber=run.ledger.scrubber)
    at = started.planned_stop
    stop = {
        "entry_id": started.entry_id,
        "workspace_id": started.workspace_id,
        "description": started.description,
        "at": at.isoformat(),
    }
    await run.skip(*PLAN_STOP, status="failed", error=error, request=stop)
    return StopNotSaved(
        stop_at=local_stop_time(at, started.start, deps.settings),
        error=error,
        entry_id=started.entry_id,
        workspace_id=started.workspace_id,
    )


async def cancel_planned_stop(deps: WorkflowDeps, run: RunHandle, stopped: Any) -> StopNotCancelled | None:
    """A timer stopped by hand has nothing left for its planned stop to do: cancel it, so GET /schedule stays
    honest and the stop does not fire later as a no-op.

    Returns None, or, when the cancel failed (the database), what the caller words for its reader: the timer is
    stopped either way, and the planned stop left `pending` finds it already stopped when due (Toggl's 409,
    which changes nothing). The failure is recorded in `run` as a failed `scheduler`/`cancel_stop` action.
    Before, it was raised: the caller of a stop that had happened was told 503 "outcome unknown", and the `stop`
    command's run read `failed` (found by a review).
    """
    if stopped is None or getattr(stopped, "dry_run", False) or stopped.entry_id is None or deps.scheduler is None:
        return None
    try:
        await deps.scheduler.cancel_stops(entry_id=stopped.entry_id)
        return None
    except Exception as exc:
        logger.exception("the planned stop of entry %s could not be cancelled", stopped.entry_id)
        error = describe_error(exc, scrubber=run.ledger.scrubber)
    await run.skip(*CANCEL_STOP, status="failed", error=error, request={"entry_id": stopped.entry_id})
    return StopNotCancelled(error=error)
