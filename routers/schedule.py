"""GET /schedule: the scheduler's jobs with their next run times, and the planned timer stops."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from core.errors import problem_responses
from workflows.scheduler import LISTED_STOPS, JobScheduler

router = APIRouter(tags=["schedule"])


class ScheduledJobOut(BaseModel):
    id: str = Field(description="`morning-briefing` or `stop:<toggl entry id>`.")
    name: str
    trigger: str = Field(description="APScheduler's description of when it fires.")
    next_run_time: datetime | None = Field(description="In TIMEZONE; null when paused.")


class PlannedStopOut(BaseModel):
    id: str
    entry_id: int | str | None
    description: str | None
    run_at: datetime = Field(
        description="When it fires next: the planned stop, or the next attempt after a retryable failure."
    )
    planned_stop: datetime = Field(description="When the stop was planned for.")
    attempts: int = Field(
        description="Attempts made so far. A stop that failed with a retryable error (Toggl 5xx, timeout, rate "
        "limit) stays pending and is tried again with backoff for up to 12 hours after the planned stop."
    )
    status: str = Field(description="pending, done, failed or cancelled.")
    run_id: str | None = Field(description="The ledger run of the latest attempt, once fired.")
    error: str | None = Field(
        description="Why the latest attempt failed (also while a retry is pending); on a `done` stop that landed "
        "late, why its entry may still show the late stop (`backdate_error`), to be corrected in Toggl by hand."
    )


class ScheduleOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "timezone": "Europe/Berlin",
                "briefing_cron": "0 8 * * 1-5",
                "jobs": [
                    {
                        "id": "morning-briefing",
                        "name": "Morning briefing (BRIEFING_CRON)",
                        "trigger": "cron[month='*', day='*', day_of_week='mon,tue,wed,thu,fri', hour='8', minute='0']",
                        "next_run_time": "2026-11-26T08:00:00+01:00",
                    }
                ],
                "stops": [
                    {
                        "id": "stop:3456789012",
                        "entry_id": 3456789012,
                        "description": "Deep Work",
                        "run_at": "2026-11-25T10:31:02+01:00",
                        "planned_stop": "2026-11-25T10:30:00+01:00",
                        "attempts": 1,
                        "status": "pending",
                        "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                        "error": "502 upstream-error: Toggl answered 500.",
                    }
                ],
                "stops_not_listed": 0,
            }
        }
    )

    timezone: str
    briefing_cron: str | None
    jobs: list[ScheduledJobOut]
    stops: list[PlannedStopOut] = Field(
        description=f"Every pending stop, the next to fire first; then, up to {LISTED_STOPS} stops in all, the stops "
        "created in the last 24 hours that ended (done, failed, cancelled), the most recently finished first."
    )
    stops_not_listed: int = Field(
        description=f"Ended stops of the last 24 hours left out of `stops` by its limit of {LISTED_STOPS}, the oldest "
        "finished: 0 when `stops` is complete. A pending stop is never left out."
    )


@router.get(
    "/schedule",
    summary="Scheduled jobs and planned timer stops",
    response_model=ScheduleOut,
    responses=problem_responses(401, 503),
)
async def get_schedule(request: Request) -> ScheduleOut:
    scheduler: JobScheduler = request.app.state.scheduler
    return ScheduleOut.model_validate(await scheduler.describe())
