"""POST /morning-briefing: the AI plan and the deep-work timer, concurrently, then one Slack summary."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from core.deps import DryRunDep
from core.errors import ProblemError, problem_responses
from core.idempotency import IdempotencyDep
from workflows.briefing import BriefingReport, BriefingRequest, WorkflowDeps, run_briefing
from workflows.inbound import BackgroundTasks

router = APIRouter(tags=["briefing"])


# async def, not def: FastAPI runs a plain def dependency in a worker thread, a thread hop per
# request (these two sit on every webhook; docs/benchmarks.md).
async def get_workflow_deps(request: Request) -> WorkflowDeps:
    return WorkflowDeps.from_app(request.app)


async def get_background_tasks(request: Request) -> BackgroundTasks:
    return request.app.state.background_tasks


WorkflowDepsDep = Annotated[WorkflowDeps, Depends(get_workflow_deps)]
BackgroundTasksDep = Annotated[BackgroundTasks, Depends(get_background_tasks)]


class BriefingFailed(ProblemError):
    """Every step failed. The problem body still carries the run id and each step's status."""

    status, slug, title = 502, "briefing-failed", "The morning briefing failed"


class BriefingNotConfigured(ProblemError):
    """No step could run because nothing it needs is configured: the caller's set-up, not an upstream, is at fault.

    The same type as core.errors.NotConfigured (`missing_settings` lists every variable), plus the run and steps.
    """

    status, slug, title = 503, "not-configured", "Integration not configured"


@router.post(
    "/morning-briefing",
    summary="Run the morning briefing",
    response_model=BriefingReport,
    responses=problem_responses(401, 409, 422, 502, 503),
)
async def morning_briefing(
    deps: WorkflowDepsDep,
    idem: IdempotencyDep,
    dry_run: DryRunDep,
    # Every field has a default, so no body (a bare `curl -X POST`) means the defaults, as `{}` does.
    body: Annotated[
        BriefingRequest | None,
        Body(
            openapi_examples={
                "defaults": {"summary": "Everything from the BRIEFING_* settings (or send no body)", "value": {}},
                "custom": {
                    "summary": "Another task, length and channel",
                    "value": {"channel": "#daily", "task": "Deep Work", "duration_minutes": 90, "dry_run": False},
                },
            }
        ),
    ] = None,
) -> JSONResponse:
    """Generate the day's plan (AIRouter) and start the deep-work timer at the same time, then post one
    Slack summary with both. A failing or unconfigured step never stops the others.

    200 with `status` `ok` or `partial` (read each step's `status` and `detail`); 502 problem when every
    step failed, with `run_id`, `steps` and `briefing_status` members; 503 `not-configured` when no step could
    run because nothing it needs is configured (`missing_settings` lists the variables). Send an
    `Idempotency-Key` to make a retry replay the first answer instead of starting a second timer.
    """
    body = body or BriefingRequest()
    request = body.model_copy(update={"dry_run": body.dry_run or dry_run})

    async def run() -> BriefingReport:
        report = await run_briefing(deps, request, trigger="api")
        if report.status == "failed" and all(step.status == "not_configured" for step in report.steps):
            missing = list(dict.fromkeys(name for step in report.steps for name in step.missing_settings))
            reasons = " ".join(f"{step.name}: {step.detail}" for step in report.steps)
            raise BriefingNotConfigured(
                f"Nothing the briefing needs is configured (any one step is enough for a partial briefing). {reasons}",
                integration="briefing",
                missing_settings=missing,
                run_id=report.run_id,
                steps=[step.model_dump(mode="json") for step in report.steps],
                briefing_status=report.status,
            )
        if report.status == "failed":
            raise BriefingFailed(
                "Every briefing step failed; see `steps` for each reason.",
                run_id=report.run_id,
                steps=[step.model_dump(mode="json") for step in report.steps],
                briefing_status=report.status,
            )
        return report

    return await idem.execute(request.model_dump(mode="json"), run)
