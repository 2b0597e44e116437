"""Two honest wordings: why a plan was cut short, and on which day a timer stops.

- An answer is flagged `truncated` for more than `max_tokens` (Claude's `model_context_window_exceeded`, Gemini's
  `CONTINUATION`), yet the briefing's plan step read "(cut short at max_tokens)" for every one of them. The
  provider's own reason now travels on the Generation (and the /ai-process answer and its ledger record), and
  the step names it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from services.ai_router import build_ai_router
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
from tests.workflows.test_briefing import RecordingSlack, make_deps
from workflows.briefing import PLAN_MAX_TOKENS, BriefingRequest, run_briefing

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
