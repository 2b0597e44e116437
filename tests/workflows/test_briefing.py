"""The briefing workflow with in-test doubles: real concurrency, per-step statuses, the ledger record."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from core.errors import NotConfigured, UpstreamError
from core.registry import Registry
from services import PROVIDERS
from skills import SKILLS
from skills.slack import SlackPosted
from skills.toggl import TimerStarted
from workflows.briefing import BriefingRequest, BriefingStep, WorkflowDeps, overall_status, run_briefing

DELAY = 0.3


class SlowRouter:
    def __init__(
        self, *, fail: Exception | None = None, truncated: bool = False, stop_reason: str | None = None
    ) -> None:
        self.fail = fail
        self.truncated = truncated
        self.stop_reason = stop_reason
        self.calls: list[dict[str, Any]] = []

    async def generate(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        await asyncio.sleep(DELAY)
        if self.fail:
            raise self.fail
        return SimpleNamespace(
            response="- focus\n- lunch",
            model_used="claude-haiku-4-5",
            provider="claude",
            truncated=self.truncated,
            refused=False,
            stop_reason=self.stop_reason,
        )


class SlowToggl:
    def __init__(self, *, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[dict[str, Any]] = []

    async def start_timer(self, **kwargs: Any) -> TimerStarted:
        self.calls.append(kwargs)
        await asyncio.sleep(DELAY)
        if self.fail:
            raise self.fail
        start = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
        return TimerStarted(
            entry_id=77,
            workspace_id=1,
            description=kwargs["description"],
            start=start,
            planned_stop=start + timedelta(minutes=kwargs["duration_minutes"]),
            payload={"json": {"duration": -1}},
        )


class RecordingSlack:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []

    async def post_message(self, **kwargs: Any) -> SlackPosted:
        self.posts.append(kwargs)
        return SlackPosted(channel="C1", ts="1.000001", payload={"channel": kwargs["channel"], "text": kwargs["text"]})


class RecordingScheduler:
    def __init__(self) -> None:
        self.stops: list[dict[str, Any]] = []

    async def schedule_stop(self, **kwargs: Any) -> str:
        self.stops.append(kwargs)
        return f"stop:{kwargs['entry_id']}"

    async def cancel_stops(self, *, entry_id: Any) -> int:
        return 0


def make_deps(make_settings, ledger, *, router=None, toggl=None, slack=None, scheduler=None) -> WorkflowDeps:
    settings = make_settings(timezone="Europe/Berlin", briefing_channel="#daily")
    return WorkflowDeps(
        settings=settings,
        registry=Registry([*PROVIDERS, *SKILLS]),
        ledger=ledger,
        skills=SimpleNamespace(toggl=toggl or SlowToggl(), slack=slack or RecordingSlack()),  # type: ignore[arg-type]
        ai_router=router or SlowRouter(),
        scheduler=scheduler,
    )


async def test_plan_and_timer_run_concurrently(make_settings, ledger):
    deps = make_deps(make_settings, ledger)
    started = time.perf_counter()
    report = await run_briefing(deps, BriefingRequest(), trigger="api")
    elapsed = time.perf_counter() - started
    assert report.status == "ok"
    steps = {step.name: step for step in report.steps}
    assert steps["plan"].duration_ms >= 300 and steps["timer"].duration_ms >= 300
    # Sequential would be >= 600 ms; loose bound for slow CI machines.
    assert elapsed < 0.55, elapsed


async def test_summary_has_plan_and_timer_in_timezone_and_stop_is_scheduled(make_settings, ledger):
    slack, scheduler = RecordingSlack(), RecordingScheduler()
    deps = make_deps(make_settings, ledger, slack=slack, scheduler=scheduler)
    report = await run_briefing(deps, BriefingRequest(task="Writing", duration_minutes=30), trigger="schedule")
    [post] = slack.posts
    assert post["channel"] == "#daily"
    assert "- focus\n- lunch" in post["text"]
    # 07:00 UTC is 08:00 in Berlin; the planned stop 30 minutes later.
    assert "'Writing' started 08:00 Europe/Berlin, stops 08:30 Europe/Berlin" in post["text"]
    assert scheduler.stops == [
        {
            "entry_id": 77,
            "workspace_id": 1,
            "description": "Writing",
            "at": datetime(2026, 11, 25, 7, 30, tzinfo=UTC),
        }
    ]
    run = await ledger.get_run(report.run_id)
    assert run is not None and (run.trigger, run.status) == ("schedule", "ok")
    assert sorted((a.skill, a.status) for a in run.actions) == [("ai_router", "ok"), ("slack", "ok"), ("toggl", "ok")]


class FailingScheduler(RecordingScheduler):
    """Its database went away: no stop can be saved."""

    async def schedule_stop(self, **kwargs: Any) -> str:
        from sqlalchemy.exc import OperationalError

        raise OperationalError("INSERT INTO scheduled_jobs", {}, Exception("database is locked"))


async def test_a_timer_whose_stop_cannot_be_saved_is_reported_started_and_the_stop_kept_for_the_prune(
    make_settings, ledger
):
    """Found by a code review: the failed save was taken for a failed start ("Timer: not started", not
    outcome-unknown) while the timer ran, inviting a second one; and nothing would ever stop it."""
    slack = RecordingSlack()
    deps = make_deps(make_settings, ledger, slack=slack, scheduler=FailingScheduler())
    report = await run_briefing(deps, BriefingRequest(task="Writing", duration_minutes=30), trigger="schedule")
    [timer] = [step for step in report.steps if step.name == "timer"]
    assert (timer.status, timer.external_id) == ("ok", "77")
    assert timer.detail.startswith("'Writing' started 08:00 Europe/Berlin, stops 08:30 Europe/Berlin. The timer ")
    assert "its stop at 08:30 Europe/Berlin could not be saved yet" in timer.detail
    [post] = slack.posts
    assert "*Timer*: 'Writing' started 08:00 Europe/Berlin" in post["text"] and "not started" not in post["text"]
    run = await ledger.get_run(report.run_id)
    assert run is not None
    [plan] = [action for action in run.actions if action.skill == "scheduler"]
    assert (plan.operation, plan.status) == ("plan_stop", "failed")
    assert plan.request == {
        "entry_id": 77,
        "workspace_id": 1,
        "description": "Writing",
        "at": "2026-11-25T07:30:00+00:00",
    }


async def test_a_plan_cut_short_says_so_in_the_summary_and_the_step(make_settings, ledger):
    slack = RecordingSlack()
    deps = make_deps(make_settings, ledger, router=SlowRouter(truncated=True, stop_reason="max_tokens"), slack=slack)
    report = await run_briefing(deps, BriefingRequest(task="Writing", duration_minutes=30), trigger="api")
    [post] = slack.posts
    assert "- focus\n- lunch\n_(the plan was cut short: it was longer than the model's answer limit)_" in post["text"]
    [plan] = [step for step in report.steps if step.name == "plan"]
    assert (plan.status, plan.detail) == ("ok", "claude claude-haiku-4-5 (cut short: max_tokens)")


async def test_the_summary_escapes_the_plan_and_the_task_so_neither_pings_the_channel(make_settings, ledger):
    """Found by a black-box review: text from an inbound message or an LLM could broadcast <!channel>."""

    class InjectedRouter(SlowRouter):
        async def generate(self, **kwargs: Any) -> Any:
            answer = await super().generate(**kwargs)
            answer.response = "- <!here> standup & <https://evil.example|click>"
            return answer

    slack = RecordingSlack()
    deps = make_deps(make_settings, ledger, router=InjectedRouter(), slack=slack)
    await run_briefing(deps, BriefingRequest(task="<!channel> R&D", duration_minutes=30), trigger="api")
    [post] = slack.posts
    assert "- &lt;!here&gt; standup &amp; &lt;https://evil.example|click&gt;" in post["text"]
    assert "'&lt;!channel&gt; R&amp;D' started" in post["text"]
    assert "<!" not in post["text"] and "<http" not in post["text"]
    assert post["text"].startswith("*Morning briefing*")  # our own markup is kept


async def test_failure_in_one_concurrent_step_does_not_cancel_the_other(make_settings, ledger):
    toggl = SlowToggl(fail=UpstreamError("Toggl answered 500", upstream="toggl"))
    slack = RecordingSlack()
    deps = make_deps(make_settings, ledger, toggl=toggl, slack=slack)
    report = await run_briefing(deps, BriefingRequest(), trigger="api")
    steps = {step.name: step for step in report.steps}
    assert steps["timer"].status == "failed" and "Toggl answered 500" in steps["timer"].detail
    assert steps["plan"].status == "ok" and report.plan == "- focus\n- lunch"
    assert report.status == "partial"
    assert "*Timer*: not started (502 upstream-error: Toggl answered 500)" in slack.posts[0]["text"]


async def test_a_timer_whose_outcome_is_unknown_is_not_summarised_as_not_started(make_settings, ledger):
    """Found by review: the summary said "not started (... the time entry may have been created ...)"."""
    lost = UpstreamError("Toggl answered 503. The outcome is unknown.", upstream="toggl", outcome_unknown=True)
    slack = RecordingSlack()
    report = await run_briefing(
        make_deps(make_settings, ledger, toggl=SlowToggl(fail=lost), slack=slack), BriefingRequest(), trigger="api"
    )
    timer = {step.name: step for step in report.steps}["timer"]
    assert (timer.status, timer.outcome_unknown) == ("failed", True)
    assert "*Timer*: may or may not have started (502 upstream-error: Toggl answered 503." in slack.posts[0]["text"]
    assert "not started" not in slack.posts[0]["text"].replace("may or may not have started", "")


async def test_not_configured_router_error_is_a_not_configured_step(make_settings, ledger):
    router = SlowRouter(fail=NotConfigured("ai", ["GEMINI_API_KEY"]))
    deps = make_deps(make_settings, ledger, router=router)
    report = await run_briefing(deps, BriefingRequest(), trigger="api")
    assert report.steps[0].status == "not_configured"
    run = await ledger.get_run(report.run_id)
    assert {a.operation: a.status for a in run.actions}["generate"] == "not_configured"


async def test_unexpected_bug_in_a_step_is_contained(make_settings, ledger):
    toggl = SlowToggl(fail=KeyError("surprise"))
    deps = make_deps(make_settings, ledger, toggl=toggl)
    report = await run_briefing(deps, BriefingRequest(), trigger="api")
    assert {s.name: s.status for s in report.steps} == {"plan": "ok", "timer": "failed", "slack": "ok"}
    assert report.steps[1].detail == "unexpected error: KeyError"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["ok", "ok", "ok"], "ok"),
        (["skipped", "ok", "ok"], "ok"),
        (["failed", "ok", "ok"], "partial"),
        (["ok", "not_configured", "failed"], "partial"),
        (["failed", "not_configured", "failed"], "failed"),
        # A dry run's plan is `skipped` when an LLM would have been asked: the real run's plan would be ok.
        (["skipped", "failed", "failed"], "partial"),
        (["skipped", "not_configured", "not_configured"], "partial"),
        (["not_configured", "not_configured", "not_configured"], "failed"),
    ],
)
def test_overall_status(statuses, expected):
    steps = [
        BriefingStep(name=name, status=status, detail="")
        for name, status in zip(["plan", "timer", "slack"], statuses, strict=True)
    ]
    assert overall_status(steps) == expected
