"""API-fact review of the LLM providers: each test pins a vendor behaviour read in the installed SDK's source."""

from __future__ import annotations

import base64

import pytest

from core.errors import ProblemError
from tests.fakes.llm import ANTHROPIC_PATH, anthropic_message, gemini_content
from tests.fakes.server import Reply


async def test_a_gemini_continuation_is_one_request_flagged_truncated(make_router, fakes):
    """google-genai continues a `CONTINUATION` answer on its own by default (GenerateContentConfig
    `automatic_continuation`: "the SDK sends the same request again with the response's continuation token until
    the model finishes. Timeouts, retries and billing apply to each request"): one attempt became a loop of billed
    requests. One attempt is one request; a continued answer is cut short, so it is flagged."""
    first = gemini_content("the first half of the plan")
    first["candidates"][0]["finishReason"] = "CONTINUATION"
    first["candidates"][0]["continuationToken"] = base64.b64encode(b"resume-here").decode()
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=first))
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=gemini_content(" and the second half")))
    router = await make_router()

    result = await router.generate(text="plan my day", provider="gemini")

    assert len(fakes.gemini.calls()) == 1
    assert (result.response, result.truncated) == ("the first half of the plan", True)


async def test_a_claude_answer_stopped_at_the_context_window_is_flagged_truncated(make_router, fakes):
    """anthropic's StopReason includes `model_context_window_exceeded` ("we exceeded the model's context window",
    anthropic/types/message.py): the model stopped before it finished, as at `max_tokens`. It came back as a whole
    answer."""
    body = anthropic_message("half a pl")
    body["stop_reason"] = "model_context_window_exceeded"
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=body))
    router = await make_router()

    result = await router.generate(text="plan my day", provider="claude")

    assert (result.response, result.truncated, result.refused) == ("half a pl", True, False)


async def test_a_gemini_answer_whose_budget_went_on_thinking_says_so(make_router, fakes):
    """Gemini 3 models think by default, and `max_output_tokens` caps thoughts and answer together
    (googleapis/python-genai#2062): a short `max_tokens` can be spent on thinking alone, leaving no text. That read
    "an answer we cannot use (no text; finish reason MAX_TOKENS)", which says nothing of why or what to change."""
    body = gemini_content("unused")
    body["candidates"][0]["content"]["parts"] = []
    body["candidates"][0]["finishReason"] = "MAX_TOKENS"
    body["usageMetadata"] = {"promptTokenCount": 12, "candidatesTokenCount": 0, "thoughtsTokenCount": 300}
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=body))
    router = await make_router()

    with pytest.raises(ProblemError) as caught:
        await router.generate(text="plan my day", provider="gemini", max_tokens=300)

    detail = caught.value.detail
    assert "300 thinking tokens" in detail and "max_tokens" in detail, detail
    assert len(fakes.gemini.calls()) == 1  # the same budget would be spent the same way: not retried


# google-genai copies ThinkingConfig through with its Python field names; the API's JSON parser takes proto field
# names as well as camelCase ones (proto3 JSON mapping).
@pytest.mark.parametrize(("level", "sent"), [(None, None), ("minimal", {"thinking_level": "MINIMAL"})])
async def test_gemini_thinking_level_is_sent_only_when_set(make_router, fakes, level, sent):
    """GEMINI_THINKING_LEVEL: the way out of a budget spent on thinking. Unset, no thinkingConfig is sent (models
    differ in the levels they take, and a level a model does not take is a 400)."""
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=gemini_content("ok")))
    router = await make_router(gemini_thinking_level=level)

    await router.generate(text="plan my day", provider="gemini")

    [call] = fakes.gemini.calls()
    assert call.json["generationConfig"].get("thinkingConfig") == sent
