"""Tests pinning behaviour that a hand mutation review of workflows/briefing.py and workflows/scheduler.py found
unchecked: each one fails with the mutant it names and passes on the real code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import time_machine

from core.errors import UpstreamError
from core.registry import Registry
from core.store import ScheduledJob
from services import PROVIDERS
from skills import SKILLS
from skills.slack import SlackPosted
from skills.toggl import TimerStarted, TimerStopped
from tests.workflows.test_scheduler import stop_row
from tests.workflows.world import FakeToggl, finished_runs, post_whatsapp, wait_for, whatsapp_form, world
from workflows.briefing import BriefingRequest, WorkflowDeps, run_briefing
from workflows.commands import respond
from workflows.inbound import BackgroundTasks
from workflows.scheduler import JobScheduler

START = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


class Router:
    def __init__(self, *, refused: bool = False, truncated: bool = False) -> None:
        self.refused, self.truncated = refused, truncated
        self.calls: list[dict[str, Any]] = []

    async def generate(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return SimpleNamespace(
            response="- focus",
            model_used="claude-haiku-4-5",
            provider="claude",
            truncated=self.truncated,
            refused=self.refused,
        )


class Toggl:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def start_timer(self, **kwargs: Any) -> TimerStarted:
        self.calls.append(kwargs)
        return TimerStarted(
            entry_id=77,
            workspace_id=1,
            description=kwargs["description"],
            start=START,
            planned_stop=START + timedelta(minutes=kwargs["duration_minutes"]),
            payload={"json": {"duration": -1}},
        )

    async def stop_timer(self, **kwargs: Any) -> TimerStopped:
        self.calls.append(kwargs)
        return TimerStopped(
            entry_id=77, workspace_id=1, description="Writing", start=START, dry_run=kwargs.get("dry_run", False)
        )


class Slack:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []

    async def post_message(self, **kwargs: Any) -> SlackPosted:
        self.posts.append(kwargs)
        return SlackPosted(channel="C1", ts="1.000001", payload={"channel": kwargs["channel"], "text": kwargs["text"]})


def deps_for(make_settings, ledger, *, router=None, slack=None, toggl=None, scheduler=None, **settings) -> WorkflowDeps:
    return WorkflowDeps(
        settings=make_settings(timezone="Europe/Berlin", briefing_channel="#daily", **settings),
        registry=Registry([*PROVIDERS, *SKILLS]),
        ledger=ledger,
        skills=SimpleNamespace(toggl=toggl or Toggl(), slack=slack or Slack()),  # type: ignore[arg-type]
        ai_router=router or Router(),
        scheduler=scheduler,
    )


# --- briefing.py ------------------------------------------------------------------------


async def test_a_plan_the_models_safety_checks_stopped_says_so_in_the_summary_and_the_step(make_settings, ledger):
    """Mutant `if plan.value.refused:` -> `if False:` survived: nothing checked the safety note."""
    slack = Slack()
    report = await run_briefing(
        deps_for(make_settings, ledger, router=Router(refused=True), slack=slack),
        BriefingRequest(task="Writing", duration_minutes=30),
        trigger="api",
    )
    [post] = slack.posts
    assert "*Plan*\n- focus\n_(the model's safety checks stopped the plan: it may be partial)_\n" in post["text"]
    assert "cut short" not in post["text"]
    [plan] = [step for step in report.steps if step.name == "plan"]
    assert (plan.status, plan.detail) == ("ok", "claude claude-haiku-4-5 (stopped by its safety checks)")


class FailingToggl(Toggl):
    async def start_timer(self, **kwargs: Any) -> TimerStarted:
        self.calls.append(kwargs)
        raise UpstreamError("Toggl answered 500", upstream="toggl")


async def test_a_partial_briefing_run_error_names_only_the_steps_that_did_not_succeed(make_settings, ledger):
    """Mutant dropping `if step.status != "ok"` from the run's error survived: GET /runs then listed the
    successful steps as if they were what went wrong."""
    report = await run_briefing(
        deps_for(make_settings, ledger, toggl=FailingToggl()), BriefingRequest(task="Writing"), trigger="api"
    )
    assert report.status == "partial"
    run = await ledger.get_run(report.run_id)
    assert run is not None and run.status == "partial"
    assert run.error == "timer failed: 502 upstream-error: Toggl answered 500"


class Scheduler:
    def __init__(self) -> None:
        self.stops: list[dict[str, Any]] = []
        self.cancelled: list[Any] = []

    async def schedule_stop(self, **kwargs: Any) -> str:
        self.stops.append(kwargs)
        return f"stop:{kwargs['entry_id']}"

    async def cancel_stops(self, *, entry_id: Any) -> int:
        self.cancelled.append(entry_id)
        return 1


async def test_a_stop_command_under_dry_run_keeps_the_real_timers_planned_stop(make_settings, ledger):
    """Mutant dropping the `dry_run` guard of `cancel_planned_stop` survived. Under DRY_RUN=true the `stop`
    command rehearses a stop of the real running entry: cancelling its planned stop would leave the real timer
    running with nothing to stop it."""
    scheduler, toggl = Scheduler(), Toggl()
    deps = deps_for(make_settings, ledger, toggl=toggl, scheduler=scheduler, dry_run=True)
    reply = await respond(deps, "stop", trigger="whatsapp", sender="+15551230001")
    assert toggl.calls == [{"dry_run": True}]
    assert reply.startswith("Dry run") and "Would stop 'Writing' (entry 77)" in reply
    assert scheduler.cancelled == []


async def test_a_real_stop_command_cancels_the_planned_stop_of_the_entry_it_stopped(make_settings, ledger):
    scheduler = Scheduler()
    deps = deps_for(make_settings, ledger, scheduler=scheduler)
    await respond(deps, "stop", trigger="whatsapp", sender="+15551230001")
    assert scheduler.cancelled == [77]


# --- scheduler.py ----------------------------------------------------------------------


async def test_a_late_stop_whose_correction_failed_says_why_in_its_run(make_client, monkeypatch):
    """Mutant `if stopped.backdate_error:` -> `if False:` survived: the run of a late planned stop lost the
    reason its entry still shows the late stop time, the one thing saying it must be corrected by hand."""
    monkeypatch.setattr(FakeToggl, "_update", lambda self, request: httpx.Response(400, json="Stop time is invalid"))
    async with world() as w:
        settings = w.settings()
        async with make_client(**settings) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=True):
            async with make_client(**settings) as client:
                await wait_for(lambda: w.toggl.stops == ["9001"])
                [run] = await finished_runs(client, "schedule.stop_timer")
                await stop_row(client, until=lambda row: row.status != "pending")
                [listed] = (await client.get("/schedule")).json()["stops"]
    assert run["status"] == "ok" and run["result"]["entry_id"] == 9001
    assert "stopped_late_at" in run["result"]
    assert "Stop time is invalid" in run["result"]["backdate_error"]
    # GET /schedule lists the stop `done` and says why its entry still shows the late stop (it read `error: null`,
    # the reason only in the run; found by the session-10 integration review).
    assert (listed["status"], listed["run_id"], listed["error"]) == ("done", run["id"], run["result"]["backdate_error"])


class UnsavableScheduler(Scheduler):
    """Its database went away when the timer started: the stop could not be saved."""

    async def schedule_stop(self, **kwargs: Any) -> str:
        from sqlalchemy.exc import OperationalError

        raise OperationalError("INSERT INTO scheduled_jobs", {}, Exception("database is locked"))


async def test_the_prune_saving_an_unsaved_stop_never_resets_one_that_already_fired(make_settings, sessions, ledger):
    """Mutant `only_if_absent=True` -> `False` in the prune's recoveries survived (only `schedule_stop` itself
    was tested). The stop of entry 77 was saved and fired meanwhile (another worker's prune): saving it again
    must not set it back to `pending`, which would stop the entry a second time."""
    deps = deps_for(make_settings, ledger, scheduler=UnsavableScheduler())
    report = await run_briefing(deps, BriefingRequest(task="Writing", duration_minutes=30), trigger="api")
    run = await ledger.get_run(report.run_id)
    assert [(a.operation, a.status) for a in run.actions if a.skill == "scheduler"] == [("plan_stop", "failed")]

    scheduler = JobScheduler(
        settings=deps.settings, sessions=sessions, ledger=ledger, tasks=BackgroundTasks(ledger), deps=lambda: deps
    )
    at = START + timedelta(minutes=30)
    await scheduler.schedule_stop(entry_id=77, workspace_id=1, description="Writing", at=at)
    async with sessions.begin() as session:
        (await session.get(ScheduledJob, "stop:77")).status = "done"

    await scheduler.prune()

    async with sessions() as session:
        row = await session.get(ScheduledJob, "stop:77")
    assert (row.status, row.run_at.replace(tzinfo=UTC)) == ("done", at)
    run = await ledger.get_run(report.run_id)
    [plan] = [a for a in run.actions if a.skill == "scheduler"]
    assert plan.external_id == "stop:77"  # settled by the prune
