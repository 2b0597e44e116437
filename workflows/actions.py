"""Run one skill call as a recorded run: the path every single-action endpoint takes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from core.errors import ProblemError
from core.ledger import Ledger, RunHandle, RunKind
from core.outcome import ActionOutcome

O = TypeVar("O", bound=ActionOutcome)  # noqa: E741


async def perform_action(
    ledger: Ledger,
    *,
    kind: RunKind,
    trigger: str,
    skill: str,
    operation: str,
    input_summary: Mapping[str, Any],
    call: Callable[[], Awaitable[O]],
    then: Callable[[RunHandle, O], Awaitable[None]] | None = None,
    dry_run: bool = False,
) -> tuple[str, O]:
    """Record a run with one action around `call`; return the run id and the outcome.

    `dry_run` is recorded in the run's `input_summary` before anything runs, so a rehearsal that fails (nothing
    configured, say) is not read as a failed real action: before, only a successful one said so, by its status.

    `then` runs inside the run once the action succeeded, before the run can finish `ok`: what must be
    recorded with the action (a started timer's planned stop), not after it.

    A failure is recorded (run and action `failed`, with the reason) and re-raised
    for the error mapping to answer, with the run's id in the problem (`run_id`),
    so the caller can find the record: GET /runs/{run_id}.
    """
    run_id: str | None = None
    try:
        summary = {**input_summary, "dry_run": True} if dry_run else input_summary
        async with ledger.run(kind, trigger=trigger, input_summary=summary) as run:
            run_id = run.id
            async with run.action(skill, operation) as action:
                outcome = await call()
                action.external_id = outcome.ledger_external_id()
                action.request = outcome.payload
                action.status = "dry_run" if outcome.dry_run else "ok"
            if then is not None:
                await then(run, outcome)
            run.status = "dry_run" if outcome.dry_run else "ok"
            run.result = outcome.model_dump(mode="json")
    except ProblemError as exc:
        if run_id is not None:
            exc.extras.setdefault("run_id", run_id)
        raise
    return run.id, outcome
