"""Tests that kill mutants of this session's production changes which the suite let survive (services/)."""

from __future__ import annotations

import pytest

from core.errors import ProblemError
from tests.fakes.llm import ANTHROPIC_PATH, anthropic_error, gemini_content, gemini_error
from tests.fakes.server import Reply


def _details(error: ProblemError) -> str:
    """The error's detail, and each provider's when the router reports that all failed."""
    return " | ".join([str(error.detail), *(str(p.get("detail")) for p in error.extras.get("providers", []))])


# --- services/base.py status_error's endpoint_setting, from each provider ----------------------------------


async def test_a_claude_404_names_anthropic_base_url(make_router, fakes):
    """A gateway path that 404s was told to check only the key and the model: the endpoint is the base URL's."""
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: anthropic_error(404, "not_found_error", "model: nope"))
    router = await make_router()
    with pytest.raises(ProblemError) as caught:
        await router.generate(text="hi", provider="claude")
    assert "The endpoint comes from ANTHROPIC_BASE_URL: check it too." in _details(caught.value)


async def test_a_gemini_404_names_gemini_base_url(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_error(404, "NOT_FOUND", "models/nope not found"))
    router = await make_router()
    with pytest.raises(ProblemError) as caught:
        await router.generate(text="hi", provider="gemini")
    assert "The endpoint comes from GEMINI_BASE_URL: check it too." in _details(caught.value)


# --- services/gemini.py: the thinking-budget error -------------------------------------------------------------


def _no_text(finish_reason: str, usage: dict) -> dict:
    body = gemini_content("unused")
    body["candidates"][0]["content"]["parts"] = []
    body["candidates"][0]["finishReason"] = finish_reason
    body["usageMetadata"] = usage
    return body


async def test_a_refusal_without_text_is_a_flagged_answer_even_after_thinking(make_router, fakes):
    """Only MAX_TOKENS means the budget went on thinking: a SAFETY stop after 300 thinking tokens is a refusal,
    answered and flagged, not "send a larger max_tokens"."""
    body = _no_text("SAFETY", {"promptTokenCount": 12, "candidatesTokenCount": 0, "thoughtsTokenCount": 300})
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=body))
    router = await make_router()
    result = await router.generate(text="plan my day", provider="gemini")
    assert result.refused is True
    assert len(fakes.gemini.calls()) == 1


async def test_a_max_tokens_stop_without_thoughts_is_not_blamed_on_thinking(make_router, fakes):
    """MAX_TOKENS with no thinking tokens counted: no text for another reason, said as "no text", not "spent its
    whole output budget on None thinking tokens"."""
    body = _no_text("MAX_TOKENS", {"promptTokenCount": 12, "candidatesTokenCount": 0})
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: Reply(200, json=body))
    router = await make_router()
    with pytest.raises(ProblemError) as caught:
        await router.generate(text="plan my day", provider="gemini", max_tokens=300)
    details = _details(caught.value)
    assert "thinking" not in details, details
    assert "no text; finish reason MAX_TOKENS" in details, details
