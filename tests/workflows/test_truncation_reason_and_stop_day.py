"""Two honest wordings: why a plan was cut short, and on which day a timer stops.

- An answer is flagged `truncated` for more than `max_tokens` (Claude's `model_context_window_exceeded`, Gemini's
  `CONTINUATION`), yet the briefing's plan step read "(cut short at max_tokens)" for every one of them. The
  provider's own reason now travels on the Generation (and the /ai-process answer and its ledger record), and
  the step names it.
- A 24-hour timer was confirmed as "Started 'x' at 09:30; it stops at 09:30": a stop on another day in TIMEZONE
  now names that day.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ai_router import build_ai_router
from skills.slack import SlackPosted
from skills.toggl import TimerStarted
from tests.fakes.llm import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    FakeAnthropic,
    FakeGemini,
    FakeOpenAI,
    anthropic_message,
    gemini_content,
    openai_completion,
)
from tests.fakes.server import Reply
from tests.workflows.test_briefing import FailingScheduler, RecordingScheduler, RecordingSlack, make_deps
from workflows.briefing import PLAN_MAX_TOKENS, BriefingRequest, run_briefing
from workflows.commands import respond

# --- Why a plan was cut short ---------------------------------------------------------


@dataclass
class LLMs:
    claude: FakeAnthropic
    gemini: FakeGemini
    local: FakeOpenAI

    def settings(self, provider: str) -> dict[str, Any]:
        """Only `provider` configured, so the briefing's plan (which names none) goes to it."""
        return {
            "claude": {"anthropic_api_key": "test-anthropic-key-0002", "anthropic_base_url": self.claude.url},
            "gemini": {"gemini_api_key": "test-gemini-key-0002", "gemini_base_url": self.gemini.url},
            "local": {"local_llm_base_url": self.local.base_url, "local_llm_model": "llama3.2"},
        }[provider] | {"llm_timeout_seconds": 2.0, "llm_max_attempts": 1}

    def cut_short(self, provider: str, reason: str) -> None:
        """The next answer of `provider` is "- focus" stopped for `reason`, in the vendor's own shape."""
        if provider == "claude":
            body = anthropic_message("- focus")
            body["stop_reason"] = reason
            self.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=body))
        elif provider == "gemini":
            body = gemini_content("- focus")
            body["candidates"][0]["finishReason"] = reason
            self.gemini.queue("POST", self.gemini.path, Reply(200, json=body))
        else:
            body = openai_completion("- focus")
            body["choices"][0]["finish_reason"] = reason
            self.local.queue("POST", OPENAI_PATH, Reply(200, json=body))

    def max_tokens_sent(self, provider: str) -> list[int]:
        if provider == "claude":
            return [call.json["max_tokens"] for call in self.claude.calls("POST", ANTHROPIC_PATH)]
        if provider == "gemini":
            return [call.json["generationConfig"]["maxOutputTokens"] for call in self.gemini.calls()]
        return [call.json["max_tokens"] for call in self.local.calls("POST", OPENAI_PATH)]


@pytest.fixture
async def llms() -> AsyncIterator[LLMs]:
    async with FakeAnthropic() as claude, FakeGemini() as gemini, FakeOpenAI() as local:
        yield LLMs(claude=claude, gemini=gemini, local=local)


CUT_SHORT = [
    ("claude", "claude-haiku-4-5", "max_tokens"),
    ("claude", "claude-haiku-4-5", "model_context_window_exceeded"),
    ("gemini", "gemini-3.8-flash", "MAX_TOKENS"),
    ("gemini", "gemini-3.8-flash", "CONTINUATION"),
    ("local", "llama3.2", "length"),
]


@pytest.mark.parametrize(("provider", "model", "reason"), CUT_SHORT)
async def test_the_plan_step_names_the_providers_reason_for_cutting_the_plan_short(
    make_settings, ledger, llms, provider, model, reason
):
    llms.cut_short(provider, reason)
    slack = RecordingSlack()
    async with AsyncExitStack() as stack:
        router = await build_ai_router(make_settings(**llms.settings(provider)), stack)
        deps = make_deps(make_settings, ledger, router=router, slack=slack)
        report = await run_briefing(deps, BriefingRequest(task="Writing", duration_minutes=30), trigger="api")

    assert llms.max_tokens_sent(provider) == [PLAN_MAX_TOKENS]
    [plan] = [step for step in report.steps if step.name == "plan"]
    assert (plan.status, plan.detail) == ("ok", f"{provider} {model} (cut short: {reason})")
    [post] = slack.posts
    assert "- focus\n_(the plan was cut short" in post["text"]
    run = await ledger.get_run(report.run_id)
    assert run is not None
    [action] = [action for action in run.actions if action.skill == "ai_router"]
    assert action.status == "ok"


@pytest.mark.parametrize(
    ("provider", "reason", "truncated"),
    [*((provider, reason, True) for provider, _, reason in CUT_SHORT), ("claude", "end_turn", False)],
)
async def test_an_ai_process_answer_and_its_record_say_why_the_provider_stopped(
    make_client, llms, provider, reason, truncated
):
    llms.cut_short(provider, reason)
    async with make_client(**llms.settings(provider)) as client:
        body = (await client.post("/ai-process", json={"text": "Plan my morning", "max_tokens": 8})).json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()

    assert llms.max_tokens_sent(provider) == [8]
    assert (body["provider"], body["truncated"], body["stop_reason"]) == (provider, truncated, reason)
    assert (run["result"]["truncated"], run["result"]["stop_reason"]) == (truncated, reason)


async def test_a_stop_reason_that_is_not_a_short_string_is_not_passed_on(make_settings, llms):
    """Upstream text like the answer: a gateway's stop reason that is not a string is dropped, a long one cut."""
    for reason in ({"nested": "object"}, "stopped for a reason " * 20):
        body = openai_completion("- focus")
        body["choices"][0]["finish_reason"] = reason
        llms.local.queue("POST", OPENAI_PATH, Reply(200, json=body))
    async with AsyncExitStack() as stack:
        router = await build_ai_router(make_settings(**llms.settings("local")), stack)
        odd = await router.generate(text="plan my day")
        long = await router.generate(text="plan my day")

    assert len(llms.local.calls("POST", OPENAI_PATH)) == 2
    assert odd.stop_reason is None
    assert long.stop_reason == "stopped for a reason stopped for a reason stopped for a reason …"


# --- Which day a timer stops -----------------------------------------------------------


class FixedToggl:
    """Starts every timer at `start` (UTC); the planned stop is `duration_minutes` later."""

    def __init__(self, start: str) -> None:
        self.start = datetime.fromisoformat(start).replace(tzinfo=UTC)
        self.calls: list[dict[str, Any]] = []

    async def start_timer(self, **kwargs: Any) -> TimerStarted:
        self.calls.append(kwargs)
        return TimerStarted(
            entry_id=77,
            workspace_id=1,
            description=kwargs["description"],
            start=self.start,
            planned_stop=self.start + timedelta(minutes=kwargs["duration_minutes"]),
            payload={"json": {"duration": -1}},
            dry_run=kwargs.get("dry_run", False),
        )


class PostingSlack:
    def __init__(self) -> None:
        self.posts: list[str] = []

    async def post_message(self, **kwargs: Any) -> SlackPosted:
        self.posts.append(kwargs["text"])
        return SlackPosted(channel="C1", ts="1.000001", payload={"text": kwargs["text"]})


@pytest.mark.parametrize(
    ("start", "command", "started", "stops", "length"),
    [
        # Thursday 26 November 2026, 09:30 in Berlin: 24 hours on is the same wall time, the next day.
        (
            "2026-11-26T08:30",
            "start x for 24 h",
            "09:30 Europe/Berlin",
            "09:30 Europe/Berlin on Fri 27 Nov",
            "24 h 00 min",
        ),
        # Past midnight, well short of 24 hours.
        (
            "2026-11-26T22:30",
            "start x for 45 min",
            "23:30 Europe/Berlin",
            "00:15 Europe/Berlin on Fri 27 Nov",
            "45 min",
        ),
        # Into a new year: the day is enough, the stop is at most a day or two on.
        (
            "2026-12-31T22:30",
            "start x for 2 h",
            "23:30 Europe/Berlin",
            "01:30 Europe/Berlin on Fri 1 Jan",
            "2 h 00 min",
        ),
        # Spring forward (Sunday 29 March 2026 has 23 hours): 24 hours from Saturday 23:30 is Monday 00:30, two
        # days on, so the day is a date, never "tomorrow".
        (
            "2026-03-28T22:30",
            "start x for 24 h",
            "23:30 Europe/Berlin",
            "00:30 Europe/Berlin on Mon 30 Mar",
            "24 h 00 min",
        ),
        # Fall back: the stop is in the hour the clocks repeat, the next day; both are said.
        (
            "2026-10-24T00:40",
            "start x for 24 h",
            "02:40 Europe/Berlin",
            "02:40 Europe/Berlin (CEST, UTC+02:00) on Sun 25 Oct",
            "24 h 00 min",
        ),
        # A stop the same day keeps its words, up to the last minute and across the fall-back.
        ("2026-11-26T08:30", "start x for 90 min", "09:30 Europe/Berlin", "11:00 Europe/Berlin", "1 h 30 min"),
        ("2026-11-26T22:10", "start x for 49 min", "23:10 Europe/Berlin", "23:59 Europe/Berlin", "49 min"),
        (
            "2026-10-25T00:40",
            "start x for 30 min",
            "02:40 Europe/Berlin (CEST, UTC+02:00)",
            "02:10 Europe/Berlin (CET, UTC+01:00)",
            "30 min",
        ),
    ],
)
async def test_a_timer_start_names_the_day_of_a_stop_that_is_not_the_start_day(
    make_settings, ledger, start, command, started, stops, length
):
    toggl, slack, scheduler = FixedToggl(start), PostingSlack(), RecordingScheduler()
    deps = make_deps(make_settings, ledger, toggl=toggl, slack=slack, scheduler=scheduler)

    reply = await respond(deps, command, trigger="whatsapp")

    [call] = toggl.calls
    [stop] = scheduler.stops
    assert stop["at"] == toggl.start + timedelta(minutes=call["duration_minutes"])
    assert reply == f"Started 'x' at {started}; it stops at {stops}. Posted to Slack C1."
    assert slack.posts == [f":stopwatch: 'x' started at {started}, planned stop {stops} ({length})."]


async def test_a_rehearsed_start_names_the_day_too(make_settings, ledger):
    toggl, slack = FixedToggl("2026-11-26T08:30"), PostingSlack()
    deps = make_deps(make_settings, ledger, toggl=toggl, slack=slack)
    deps.settings = make_settings(timezone="Europe/Berlin", dry_run=True)

    reply = await respond(deps, "start x for 24 h", trigger="whatsapp")

    assert [call["dry_run"] for call in toggl.calls] == [True]
    assert "Would start 'x' at 09:30 Europe/Berlin; it would stop at 09:30 Europe/Berlin on Fri 27 Nov." in reply


async def test_the_briefing_timer_names_the_day_of_a_stop_after_midnight(make_settings, ledger):
    """The step detail and the Slack summary, and the words of a stop that could not be saved."""
    slack = RecordingSlack()
    deps = make_deps(
        make_settings, ledger, toggl=FixedToggl("2026-11-25T22:00"), slack=slack, scheduler=FailingScheduler()
    )

    report = await run_briefing(deps, BriefingRequest(task="Writing", duration_minutes=90), trigger="api")

    [timer] = [step for step in report.steps if step.name == "timer"]
    assert timer.detail.startswith(
        "'Writing' started 23:00 Europe/Berlin, stops 00:30 Europe/Berlin on Thu 26 Nov. The timer started, but its "
        "stop at 00:30 Europe/Berlin on Thu 26 Nov could not be saved yet"
    ), timer.detail
    [post] = slack.posts
    assert "*Timer*: 'Writing' started 23:00 Europe/Berlin, stops 00:30 Europe/Berlin on Thu 26 Nov." in post["text"]
