"""The run ledger, read-only: GET /runs and GET /runs/{id}."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from core.deps import LedgerDep
from core.errors import NotFound, problem_responses
from core.ledger import RunKind, RunStatus, RunTrigger

router = APIRouter(tags=["ledger"], responses=problem_responses(401, 422, 503))

# The filters take exactly the values the ledger writes (core.ledger's RunKind, RunStatus and RunTrigger): a value
# outside them is a typo, answered with a 422 listing them rather than an empty page that looks like "no such runs".
# Ids are printable ASCII: a NUL reached PostgreSQL and came back as a 500.
_PRINTABLE = r"^[\x21-\x7e]+$"


class ActionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    skill: str
    operation: str
    status: str
    external_id: str | None
    error: str | None
    attempts: int
    duration_ms: int
    request: dict[str, Any] | None
    created_at: datetime


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    trigger: str = Field(description="api, whatsapp, slack or schedule.")
    status: str = Field(
        description="running (not finished yet, or its worker died), ok, partial (some steps failed), failed, "
        "dry_run, or cancelled (stopped at shutdown before it finished)."
    )
    created_at: datetime
    finished_at: datetime | None
    input_summary: dict[str, Any]
    error: str | None


class RunDetail(RunOut):
    result: dict[str, Any] | None
    actions: list[ActionOut]


class RunPage(BaseModel):
    items: list[RunOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "items": [
                    {
                        "id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                        "kind": "toggl.start_timer",
                        "trigger": "api",
                        "status": "ok",
                        "created_at": "2026-11-25T08:00:00Z",
                        "finished_at": "2026-11-25T08:00:01Z",
                        "input_summary": {"task_name": "Deep Work", "duration_minutes": 90},
                        "error": None,
                    }
                ],
                "total": 1,
                "limit": 50,
                "offset": 0,
                "next_offset": None,
            }
        }
    )


@router.get("/runs", summary="List runs, newest first", response_model=RunPage)
async def list_runs(
    ledger: LedgerDep,
    kind: Annotated[RunKind | None, Query(description="Only runs of this kind, e.g. slack.notify.")] = None,
    status: Annotated[RunStatus | None, Query(description="Only runs with this status.")] = None,
    trigger: Annotated[RunTrigger | None, Query(description="Only runs started this way.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RunPage:
    runs, total = await ledger.list_runs(kind=kind, status=status, trigger=trigger, limit=limit, offset=offset)
    next_offset = offset + len(runs) if offset + len(runs) < total else None
    return RunPage(
        items=[RunOut.model_validate(run) for run in runs],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=next_offset,
    )


@router.get(
    "/runs/{run_id}",
    summary="One run with its actions",
    response_model=RunDetail,
    responses=problem_responses(404),
)
async def get_run(ledger: LedgerDep, run_id: Annotated[str, Path(max_length=64, pattern=_PRINTABLE)]) -> RunDetail:
    run = await ledger.get_run(run_id)
    if run is None:
        raise NotFound(f"No run with id {run_id}. List runs with GET /runs.")
    return RunDetail.model_validate(run)
