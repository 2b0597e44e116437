"""Two wordings made to say what happened.

- The briefing's Slack summary said "_(the plan was cut short: it was longer than the model's answer limit)_" for
  every plan cut short, a full context window (Claude's `model_context_window_exceeded`) and Gemini's stop at its
  per-request limit (`CONTINUATION`) included. The note now follows the provider's stop reason.
- A start whose outcome stayed unknown, found running later by the prune, got the ledger note "its stop is planned
  for 09:30 UTC" with no day, while every other wording of a timer's stop names the day when it is not the
  start's (`local_stop_time`): a 24-hour timer's stop read as the start's own day.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import respx

from tests.fakes.llm import FakeAnthropic, FakeGemini, FakeOpenAI
from tests.routers.test_timers_api import BASE, CONFIG, CreatedButUnreadable, latest_run
from tests.workflows.test_briefing import RecordingScheduler, RecordingSlack, SlowRouter, make_deps
from tests.workflows.test_truncation_reason_and_stop_day import FixedToggl, LLMs
from tests.workflows.world import world
from workflows.briefing import BriefingRequest, run_briefing

ANSWER_LIMIT = "_(the plan was cut short: it was longer than the model's answer limit)_"
CONTEXT_FULL = "_(the plan was cut short: the model's context window was full)_"
ONE_REQUEST = (
    "_(the plan was cut short: the model stopped at its limit for one request, and the rest was not requested)_"
)
STOPPED_EARLY = "_(the plan was cut short: the model stopped before it finished)_"


@pytest.fixture
async def llms() -> AsyncIterator[LLMs]:
    async with FakeAnthropic() as claude, FakeGemini() as gemini, FakeOpenAI() as local:
        yield LLMs(claude=claude, gemini=gemini, local=local)


@pytest.mark.parametrize(
    ("provider", "reason", "note"),
    [
        ("claude", "max_tokens", ANSWER_LIMIT),
        ("claude", "model_context_window_exceeded", CONTEXT_FULL),
        ("gemini", "MAX_TOKENS", ANSWER_LIMIT),
        ("gemini", "CONTINUATION", ONE_REQUEST),
        ("local", "length", ANSWER_LIMIT),
    ],
    ids=["claude-max_tokens", "claude-context-window", "gemini-MAX_TOKENS", "gemini-CONTINUATION", "local-length"],
)
async def test_the_slack_summary_says_why_the_plan_was_cut_short(make_client, llms, provider, reason, note):
    """Through the app: the vendor's own answer shape, the real router and Slack skill, the fake Slack's post."""
    llms.cut_short(provider, reason)
    async with world() as w:
        # Only `provider` answers: the world's Claude is replaced (or removed) by the vendor fake.
        settings = w.settings(anthropic_api_key=None, briefing_channel="#random") | llms.settings(provider)
        async with make_client(**settings) as client:
            response = await client.post("/morning-briefing", json={"task": "Writing", "duration_minutes": 30})
        report = response.json()
        posts = w.slack.posts

    assert response.status_code == 200, report
    steps = {step["name"]: step for step in report["steps"]}
    assert steps["plan"]["detail"].endswith(f"(cut short: {reason})")
    assert steps["timer"]["status"] == "ok"
    [post] = posts
    assert post["channel"] == "#random"
    assert post["text"] == (f"*Morning briefing*\n\n*Plan*\n- focus\n{note}\n\n*Timer*: {steps['timer']['detail']}"), (
        post["text"]
    )


@pytest.mark.parametrize("reason", [None, "SOMETHING_NEW"])
async def test_a_plan_cut_short_for_a_reason_not_known_says_only_that_it_stopped_early(make_settings, ledger, reason):
    slack = RecordingSlack()
    deps = make_deps(
        make_settings,
        ledger,
        router=SlowRouter(truncated=True, stop_reason=reason),
        toggl=FixedToggl("2026-11-26T08:30"),
        slack=slack,
        scheduler=RecordingScheduler(),
    )

    await run_briefing(deps, BriefingRequest(task="Writing", duration_minutes=30), trigger="api")

    [post] = slack.posts
    assert post["text"] == (
        "*Morning briefing*\n\n*Plan*\n- focus\n- lunch\n"
        f"{STOPPED_EARLY}\n\n"
        "*Timer*: 'Writing' started 09:30 Europe/Berlin, stops 10:00 Europe/Berlin"
    )


# --- The day of a stop found later ---------------------------------------------------------


@pytest.fixture
def toggl() -> respx.MockRouter:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Kolkata"])
async def test_the_note_of_a_start_found_running_later_names_the_day_of_its_stop(make_client, toggl, timezone):
    """A 24-hour timer's stop is always on another day than its start, in a zone without daylight saving."""
    lost = CreatedButUnreadable(toggl, down_reads=1)  # the start's read-back fails: its outcome stays unknown
    async with make_client(**CONFIG, timezone=timezone) as client:
        response = await client.post("/start-timer", json={"task_name": "Deep Work", "duration_minutes": 24 * 60})
        await client.app.state.scheduler.prune()  # Toggl is back: the timer is found, its stop planned
        stops = (await client.get("/schedule")).json()["stops"]
        run = await latest_run(client, "toggl.start_timer")

    assert response.status_code == 503 and response.json()["outcome_unknown"] is True
    assert lost.running is not None
    started = datetime.fromisoformat(lost.running.json()["start"].replace("Z", "+00:00"))
    stop = (started + timedelta(hours=24)).astimezone(ZoneInfo(timezone))
    [planned] = stops
    assert (planned["entry_id"], datetime.fromisoformat(planned["run_at"])) == (111222333, stop)
    [action] = run["actions"]
    assert action["external_id"] == "111222333"
    assert action["error"].endswith(
        f"Found running later as entry 111222333; its stop is planned for "
        f"{stop:%H:%M} {timezone} on {stop:%a} {stop.day} {stop:%b}."
    ), action["error"]
