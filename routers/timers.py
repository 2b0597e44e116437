"""Toggl Track timers: POST /start-timer, POST /stop-timer, GET /timers/current."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from core.deps import DryRunDep, LedgerDep
from core.errors import problem_responses
from core.idempotency import IdempotencyDep
from core.ledger import RunHandle, RunKind
from core.outcome import ActionOutcome
from core.validation import skill_check
from routers.briefing import WorkflowDepsDep
from routers.deps import SkillsDep
from skills.toggl import RunningTimer, TimerStarted, TimerStopped, check_text
from workflows.actions import perform_action
from workflows.briefing import cancel_planned_stop, plan_stop

router = APIRouter(tags=["timers"])

_ACTION_ERRORS = problem_responses(400, 401, 404, 409, 413, 422, 429, 502, 503, 504)


# --- Start ------------------------------------------------------------------------------


#: Toggl ids are 64-bit integers: anything larger cannot name an entry, workspace or project.
TOGGL_ID_MAX = 2**63 - 1


class StartTimerRequest(BaseModel):
    # Unknown fields and loosely typed values are refused: `"duration_minutes": true` must not become a
    # one-minute timer on someone's account, nor "50" silently pass for 50.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "task_name": "Deep Work",
                "workspace_id": 1234567,
                "duration_minutes": 90,
                "project_id": 7654321,
                "tags": ["focus"],
                "billable": False,
            }
        },
    )

    task_name: str = Field(min_length=1, max_length=3000, description="Becomes the time entry's description.")
    workspace_id: StrictInt | None = Field(None, ge=1, le=TOGGL_ID_MAX, description="Defaults to TOGGL_WORKSPACE_ID.")
    duration_minutes: StrictInt | None = Field(
        None,
        ge=1,
        le=24 * 60,
        description="Planned length. The timer still starts running; the response gives the planned stop time.",
    )
    project_id: StrictInt | None = Field(None, ge=1, le=TOGGL_ID_MAX)
    tags: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(None, max_length=50)
    billable: StrictBool | None = None

    @field_validator("task_name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return skill_check(check_text, value)

    @field_validator("tags")
    @classmethod
    def _one_line_tags(cls, tags: list[str] | None) -> list[str] | None:
        for tag in tags or ():
            skill_check(lambda value: check_text(value, "A tag"), tag)
        return tags


class StartTimerResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                "dry_run": False,
                "entry_id": 3456789012,
                "workspace_id": 1234567,
                "description": "Deep Work",
                "start": "2026-11-25T08:00:00Z",
                "planned_stop": "2026-11-25T09:30:00Z",
                "project_id": 7654321,
                "tags": ["focus"],
            }
        }
    )

    run_id: str = Field(description="The ledger run: GET /runs/{run_id}.")
    dry_run: bool
    entry_id: int | None = Field(description="Toggl's time entry id; null in a dry run.")
    workspace_id: int
    description: str
    start: datetime
    planned_stop: datetime | None
    project_id: int | None
    tags: list[str] | None
    confirmed_after_error: str | None = Field(
        None,
        description="Only when Toggl's answer to the start was lost or unreadable: the entry was then confirmed "
        "by reading the running timer back, and this says what went wrong.",
    )
    planned_stop_error: str | None = Field(
        None,
        description="Only when the timer started but its planned stop could not be saved yet (the database "
        "failed): the service saves it again within 10 minutes, and this says how to stop the timer by hand.",
    )


@router.post(
    "/start-timer",
    summary="Start a running Toggl timer",
    response_model=StartTimerResponse,
    responses=_ACTION_ERRORS,
)
async def start_timer(
    request: StartTimerRequest,
    skills: SkillsDep,
    ledger: LedgerDep,
    idem: IdempotencyDep,
    dry_run: DryRunDep,
    workflows: WorkflowDepsDep,
) -> JSONResponse:
    """Creates a *running* entry (`duration: -1`). `duration_minutes` does not make Toggl stop it:
    it sets `planned_stop`, which the scheduler persists and acts on (see GET /schedule)."""

    async def plan_its_stop(run: RunHandle, started: TimerStarted) -> None:
        stop_not_saved = await plan_stop(workflows, run, started)
        if stop_not_saved is not None:
            started.planned_stop_error = stop_not_saved.words("api")

    async def run() -> StartTimerResponse:
        run_id, outcome = await perform_action(
            ledger,
            kind=RunKind.TOGGL_START_TIMER,
            trigger="api",
            skill="toggl",
            operation="start_timer",
            input_summary=request.model_dump(exclude_none=True),
            call=lambda: skills.toggl.start_timer(
                description=request.task_name,
                workspace_id=request.workspace_id,
                duration_minutes=request.duration_minutes,
                project_id=request.project_id,
                tags=request.tags,
                billable=request.billable,
                dry_run=dry_run,
            ),
            # The planned stop is saved inside the run, so the scheduler stops the timer then, across restarts
            # too. Saved after the run had finished `ok`, a worker killed in between left the timer running
            # for good: the prune only recovers runs still `running` (found by a code review).
            then=plan_its_stop,
            # Recorded in input_summary: the prune's recovery of an interrupted start must know a rehearsal.
            dry_run=dry_run,
        )
        return StartTimerResponse(run_id=run_id, **outcome.model_dump())

    return await idem.execute({"body": request.model_dump(mode="json"), "dry_run": dry_run}, run)


# --- Stop -------------------------------------------------------------------------------


class StopTimerRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"workspace_id": 1234567, "entry_id": 3456789012}}
    )

    workspace_id: StrictInt | None = Field(
        None,
        ge=1,
        le=TOGGL_ID_MAX,
        description="Only with entry_id; defaults to TOGGL_WORKSPACE_ID. Without entry_id the "
        "running timer's own workspace is used.",
    )
    entry_id: StrictInt | None = Field(
        None, ge=1, le=TOGGL_ID_MAX, description="Stop this entry; omit to stop whatever is running."
    )


class StopTimerResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                "dry_run": False,
                "stopped": True,
                "already_stopped": False,
                "entry_id": 3456789012,
                "workspace_id": 1234567,
                "description": "Deep Work",
                "start": "2026-11-25T08:00:00Z",
                "stop": "2026-11-25T09:30:00Z",
                "elapsed_seconds": 5400,
            }
        }
    )

    run_id: str
    dry_run: bool
    stopped: bool = Field(description="False when no timer was running: nothing to stop, nothing changed.")
    already_stopped: bool = Field(False, description="Toggl answered 409: the entry had already been stopped.")
    entry_id: int | None = None
    workspace_id: int | None = None
    description: str | None = None
    start: datetime | None = None
    stop: datetime | None = None
    elapsed_seconds: int | None = None
    planned_stop_error: str | None = Field(
        None,
        description="Only when the timer stopped but its planned stop (see GET /schedule) could not be cancelled "
        "(the database failed): it stays listed, and when due it finds the timer already stopped and changes "
        "nothing.",
    )


class StopTimerOutcome(ActionOutcome):
    """A stop, or the finding that nothing runs; lets the ledger record both the same way."""

    stopped: bool
    timer: TimerStopped | None = None
    planned_stop_error: str | None = None

    @classmethod
    def of(cls, timer: TimerStopped | None, *, dry_run: bool) -> StopTimerOutcome:
        if timer is None:
            return cls(dry_run=dry_run, stopped=False, payload={"nothing_running": True})
        return cls(dry_run=timer.dry_run, stopped=True, timer=timer, payload=timer.payload)

    def ledger_external_id(self) -> str | None:
        return self.timer.ledger_external_id() if self.timer else None

    def response(self, run_id: str) -> StopTimerResponse:
        fields = self.timer.model_dump(exclude={"dry_run"}) if self.timer else {}
        return StopTimerResponse(
            run_id=run_id,
            dry_run=self.dry_run,
            stopped=self.stopped,
            planned_stop_error=self.planned_stop_error,
            **fields,
        )


@router.post(
    "/stop-timer",
    summary="Stop the running Toggl timer (or a given entry)",
    response_model=StopTimerResponse,
    responses=_ACTION_ERRORS,
)
async def stop_timer(
    skills: SkillsDep,
    ledger: LedgerDep,
    idem: IdempotencyDep,
    dry_run: DryRunDep,
    workflows: WorkflowDepsDep,
    request: Annotated[
        StopTimerRequest | None,
        Body(
            openapi_examples={
                "running": {"summary": "Stop whatever runs (or send no body)", "value": {}},
                "by_id": {"summary": "Stop one entry", "value": {"workspace_id": 1234567, "entry_id": 3456789012}},
            }
        ),
    ] = None,
) -> JSONResponse:
    """No body stops whatever runs. When nothing runs the answer is 200 with `stopped: false`: the state the
    caller asked for already holds, so a retry is not an error. A 409 from Toggl (already stopped) is success
    with `already_stopped: true`. A planned stop of the stopped entry (see GET /schedule) is cancelled; when
    that fails, the stop is still a 200, and `planned_stop_error` says the planned stop stays listed."""
    request = request or StopTimerRequest()

    async def run() -> StopTimerResponse:
        async def call() -> StopTimerOutcome:
            timer = await skills.toggl.stop_timer(
                workspace_id=request.workspace_id, entry_id=request.entry_id, dry_run=dry_run
            )
            return StopTimerOutcome.of(timer, dry_run=dry_run)

        async def cancel_its_planned_stop(run: RunHandle, outcome: StopTimerOutcome) -> None:
            # Inside the run, as a start's plan_stop: a cancel that fails is recorded with the stop, and the stop
            # is still answered as done (it was a 503 "outcome unknown"; found by a review).
            if not dry_run:
                cancel_failed = await cancel_planned_stop(workflows, run, outcome.timer)
                if cancel_failed is not None:
                    outcome.planned_stop_error = cancel_failed.words("api")

        run_id, outcome = await perform_action(
            ledger,
            kind=RunKind.TOGGL_STOP_TIMER,
            trigger="api",
            skill="toggl",
            operation="stop_timer",
            input_summary=request.model_dump(exclude_none=True),
            call=call,
            then=cancel_its_planned_stop,
            dry_run=dry_run,
        )
        return outcome.response(run_id)

    return await idem.execute({"body": request.model_dump(mode="json"), "dry_run": dry_run}, run)


# --- Current ----------------------------------------------------------------------------


class CurrentTimerResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "running": True,
                "timer": {
                    "entry_id": 3456789012,
                    "workspace_id": 1234567,
                    "description": "Deep Work",
                    "start": "2026-11-25T08:00:00Z",
                    "elapsed_seconds": 1520,
                    "project_id": None,
                    "tags": ["focus"],
                },
            }
        }
    )

    running: bool
    timer: RunningTimer | None


@router.get(
    "/timers/current",
    summary="The running Toggl timer, if any",
    response_model=CurrentTimerResponse,
    responses=problem_responses(401, 404, 429, 502, 503, 504),
)
async def current_timer(skills: SkillsDep) -> CurrentTimerResponse:
    """A read: it changes nothing, so it is not recorded in the ledger. Each call uses Toggl's `/me`
    quota (30 requests an hour on most plans)."""
    timer = await skills.toggl.current_timer()
    return CurrentTimerResponse(running=timer is not None, timer=timer)
