"""The AIRouter against fake Gemini, Anthropic and OpenAI-compatible servers on 127.0.0.1.

Every test asserts on what reached the fakes (model, prompt, system, max_tokens,
auth headers, how many calls), not only on what the router returned.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from core.errors import InvalidInput, NotConfigured, PayloadTooLarge, UpstreamRateLimited
from services.ai_router import AllProvidersFailed, estimate_tokens
from services.base import CallerFault, ContextExceeded, status_error
from tests.fakes.llm import (
    ANTHROPIC_PATH,
    HTML_ERROR_PAGE,
    OPENAI_PATH,
    anthropic_error,
    anthropic_message,
    gemini_content,
    gemini_error,
    gemini_prompt,
    gemini_system,
    openai_completion,
    openai_error,
)
from tests.fakes.server import FakeUpstream, Reply
from tests.services.conftest import ANTHROPIC_KEY, GEMINI_KEY, LOCAL_KEY

TRANSPORTS = ["aiohttp", "httpx"]


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


# --- The word rule ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("count", "provider", "reason"),
    [
        (499, "gemini", "499 words <= 500: gemini"),
        (500, "gemini", "500 words <= 500: gemini"),
        (501, "claude", "501 words > 500: claude"),
    ],
)
async def test_word_threshold_boundary(make_router, fakes, transport, count, provider, reason):
    router = await make_router(transport=transport)
    text = words(count)

    result = await router.generate(text=text)

    assert result.provider == provider
    assert result.routing.model_dump() == {
        "word_count": count,
        "threshold": 500,
        "rule": "word_threshold",
        "fallback_from": None,
        "reason": reason,
    }
    if provider == "gemini":
        assert [gemini_prompt(r) for r in fakes.gemini.calls("POST", fakes.gemini.path)] == [text]
        assert fakes.claude.calls() == []
        assert result.response == f"gemini: {count} words received"
    else:
        assert [r.json["messages"][0]["content"] for r in fakes.claude.calls("POST", ANTHROPIC_PATH)] == [text]
        assert fakes.gemini.calls() == []
        assert result.response == f"claude: {count} words received"


async def test_threshold_comes_from_settings(make_router, fakes):
    router = await make_router(router_word_threshold=3)

    assert (await router.generate(text="one two three")).provider == "gemini"
    result = await router.generate(text="one two three four")
    assert result.provider == "claude"
    assert result.routing.reason == "4 words > 3: claude"


# --- Exactly what each vendor receives ---------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gemini_receives_model_prompt_system_max_tokens_and_key(make_router, fakes, transport):
    router = await make_router(transport=transport)

    result = await router.generate(text="Plan my day", system="Be brief.", max_tokens=77)

    [call] = fakes.gemini.calls("POST", "/v1/models/gemini-3.8-flash:generateContent")
    assert call.headers["x-goog-api-key"] == GEMINI_KEY
    assert gemini_prompt(call) == "Plan my day"
    assert gemini_system(call) == "Be brief."
    assert call.json["generationConfig"] == {"maxOutputTokens": 77}
    assert result.model_used == "gemini-3.8-flash"
    assert result.usage.model_dump() == {"input_tokens": 13, "output_tokens": 5}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_claude_receives_model_prompt_system_max_tokens_and_key(make_router, fakes, transport):
    router = await make_router(transport=transport)

    result = await router.generate(text=words(600), system="Summarise.", max_tokens=321)

    [call] = fakes.claude.calls("POST", ANTHROPIC_PATH)
    assert call.json == {
        "model": "claude-haiku-4-5",
        "max_tokens": 321,
        "messages": [{"role": "user", "content": words(600)}],
        "system": "Summarise.",
    }
    # anthropic 2.x sends the API key as a bearer token, with a version header.
    assert call.headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert call.headers["anthropic-version"]
    assert call.headers["x-stainless-retry-count"] == "0"
    assert result.model_used == "claude-haiku-4-5"
    assert result.usage.model_dump() == {"input_tokens": 11, "output_tokens": 7}


async def test_claude_omits_system_when_none(make_router, fakes):
    router = await make_router(gemini_api_key=None)
    await router.generate(text="hello")
    assert "system" not in fakes.claude.calls("POST", ANTHROPIC_PATH)[0].json


async def test_default_max_tokens_is_llm_max_tokens(make_router, fakes):
    router = await make_router(llm_max_tokens=256)
    await router.generate(text="hello")
    assert fakes.gemini.calls()[0].json["generationConfig"] == {"maxOutputTokens": 256}


async def test_local_forced_receives_openai_chat_payload_and_bearer_key(make_router, fakes):
    router = await make_router(local=True, local_llm_api_key=LOCAL_KEY)

    result = await router.generate(text="hi there", system="Be terse.", max_tokens=42, provider="local")

    [call] = fakes.local.calls("POST", OPENAI_PATH)
    assert call.headers["authorization"] == f"Bearer {LOCAL_KEY}"
    assert call.json == {
        "model": "llama3.2",
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi there"}],
        "max_tokens": 42,
        "stream": False,
    }
    assert result.provider == "local"
    assert result.routing.rule == "forced"
    assert result.routing.reason == "provider local requested"
    assert result.usage.model_dump() == {"input_tokens": 17, "output_tokens": 3}
    assert fakes.gemini.calls() == [] and fakes.claude.calls() == []


async def test_local_without_key_sends_no_authorization(make_router, fakes):
    router = await make_router(local=True)
    await router.generate(text="hi", provider="local")
    assert "authorization" not in fakes.local.calls()[0].headers


async def test_forced_provider_is_not_replaced_on_failure(make_router, fakes):
    fakes.claude.queue("POST", ANTHROPIC_PATH, *[anthropic_error(500, "api_error", "boom")] * 2)
    router = await make_router()

    with pytest.raises(AllProvidersFailed):
        await router.generate(text="short", provider="claude")
    assert fakes.gemini.calls() == []


# --- Fallback ----------------------------------------------------------------------------


async def test_gemini_5xx_falls_back_to_claude(make_router, fakes):
    fakes.gemini.queue("POST", fakes.gemini.path, *[gemini_error(503, "UNAVAILABLE", "The model is overloaded.")] * 2)
    router = await make_router()

    result = await router.generate(text="short prompt")

    assert result.provider == "claude"
    assert result.routing.fallback_from == "gemini"
    assert result.routing.reason == ("2 words <= 500: gemini; gemini failed (503 upstream-error); fell back to claude")
    assert len(fakes.gemini.calls()) == 2  # LLM_MAX_ATTEMPTS on gemini first
    assert fakes.claude.calls()[0].json["messages"][0]["content"] == "short prompt"


async def test_gemini_5xx_then_success_is_retried_on_gemini(make_router, fakes):
    fakes.gemini.queue("POST", fakes.gemini.path, gemini_error(500, "INTERNAL", "oops"))
    router = await make_router()

    result = await router.generate(text="short prompt")

    assert result.provider == "gemini"
    assert result.routing.fallback_from is None
    assert len(fakes.gemini.calls()) == 2
    assert fakes.claude.calls() == []


@pytest.mark.parametrize("status", [408, 409])
@pytest.mark.parametrize("primary", ["gemini", "claude"])
async def test_408_and_409_are_transient_and_retried_on_the_same_provider(make_router, fakes, primary, status):
    """A request timeout or conflict on the vendor's side is transient like a 5xx: retried on the provider that
    answered it, not handed at once to the fallback (pinned by a mutation review)."""
    if primary == "gemini":
        fake, path, text = fakes.gemini, fakes.gemini.path, "short prompt"
        fake.queue("POST", path, gemini_error(status, "ABORTED", "Try again."))
    else:
        fake, path, text = fakes.claude, ANTHROPIC_PATH, words(600)
        fake.queue("POST", path, anthropic_error(status, "api_error", "Try again."))
    other = fakes.claude if primary == "gemini" else fakes.gemini
    router = await make_router()

    result = await router.generate(text=text)

    assert (result.provider, result.routing.fallback_from) == (primary, None)
    assert len(fake.calls("POST", path)) == 2
    assert other.calls() == []


@pytest.mark.parametrize(
    ("retry_after", "gemini_calls", "answered_by"),
    [("120", 1, "claude"), ("0.5", 2, "gemini")],
    ids=["longer-than-the-wait-moves-on", "short-is-waited-out"],
)
async def test_a_5xx_retry_after_is_honoured(make_router, fakes, retry_after, gemini_calls, answered_by):
    """A 503's Retry-After drives the retry as a 429's does: longer than the router waits, the next provider is
    tried at once; shorter, it is waited out before the one retry (pinned by a mutation review)."""
    arrivals: list[float] = []

    def unavailable_once(request):
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            return gemini_error(503, "UNAVAILABLE", "Overloaded.", headers={"Retry-After": retry_after})
        return Reply(200, json=gemini_content("gemini: answered"))

    fakes.gemini.route("POST", fakes.gemini.path, unavailable_once)
    router = await make_router(max_retry_wait_seconds=5)

    result = await router.generate(text="short prompt")

    assert len(fakes.gemini.calls("POST", fakes.gemini.path)) == gemini_calls
    assert result.provider == answered_by
    if answered_by == "claude":
        assert result.routing.reason.endswith("gemini failed (503 upstream-error); fell back to claude")
        assert len(fakes.claude.calls("POST", ANTHROPIC_PATH)) == 1
    else:
        assert arrivals[1] - arrivals[0] >= 0.5  # waited as told, not the backoff's at most 0.25 s
        assert fakes.claude.calls() == []


async def test_claude_529_overloaded_falls_back_to_gemini(make_router, fakes):
    fakes.claude.queue("POST", ANTHROPIC_PATH, *[anthropic_error(529, "overloaded_error", "Overloaded")] * 2)
    router = await make_router()

    result = await router.generate(text=words(800))

    assert result.provider == "gemini"
    assert result.routing.fallback_from == "claude"
    assert result.routing.reason == "800 words > 500: claude; claude failed (529 upstream-error); fell back to gemini"
    assert len(fakes.claude.calls()) == 2
    assert gemini_prompt(fakes.gemini.calls()[0]) == words(800)


async def test_claude_429_with_short_retry_after_is_waited_and_retried(make_router, fakes):
    fakes.claude.queue(
        "POST", ANTHROPIC_PATH, anthropic_error(429, "rate_limit_error", "Slow down", headers={"retry-after": "0"})
    )
    router = await make_router()

    result = await router.generate(text=words(600))

    assert result.provider == "claude"
    assert len(fakes.claude.calls()) == 2
    assert fakes.gemini.calls() == []


async def test_claude_429_with_long_retry_after_moves_on_without_waiting(make_router, fakes):
    fakes.claude.queue(
        "POST", ANTHROPIC_PATH, anthropic_error(429, "rate_limit_error", "Slow down", headers={"retry-after": "120"})
    )
    router = await make_router(max_retry_wait_seconds=5)
    started = time.monotonic()

    result = await router.generate(text=words(600))

    assert time.monotonic() - started < 2
    assert result.provider == "gemini"
    assert result.routing.reason.endswith("claude failed (429 upstream-rate-limited); fell back to gemini")
    assert len(fakes.claude.calls()) == 1


async def test_claude_429_without_retry_after_is_retried_with_backoff(make_router, fakes):
    fakes.claude.queue("POST", ANTHROPIC_PATH, anthropic_error(429, "rate_limit_error", "Too many requests"))
    router = await make_router()

    result = await router.generate(text=words(600))

    assert result.provider == "claude"
    assert len(fakes.claude.calls()) == 2


async def test_exhausted_spend_limit_429_is_not_retried(make_router, fakes):
    fakes.claude.queue(
        "POST",
        ANTHROPIC_PATH,
        anthropic_error(429, "rate_limit_error", "You have reached your specified API usage limits."),
    )
    router = await make_router()

    result = await router.generate(text=words(600))

    assert len(fakes.claude.calls()) == 1
    assert result.provider == "gemini"
    assert result.routing.fallback_from == "claude"


async def test_an_exhausted_quota_passes_on_the_vendors_retry_after(make_router, fakes):
    """Found by a black-box review: the vendor's Retry-After was dropped on the exhausted branch."""
    fakes.claude.queue(
        "POST",
        ANTHROPIC_PATH,
        anthropic_error(
            429, "rate_limit_error", "You have reached your specified API usage limits.", headers={"retry-after": "60"}
        ),
    )
    router = await make_router()

    with pytest.raises(UpstreamRateLimited) as caught:
        await router.generate(text=words(10), provider="claude")

    assert len(fakes.claude.calls()) == 1  # not waited for, not retried
    assert caught.value.retry_after == 60
    assert caught.value.headers["Retry-After"] == "60"


async def test_gemini_daily_quota_429_is_not_retried(make_router, fakes):
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"},
    ]
    fakes.gemini.queue(
        "POST", fakes.gemini.path, gemini_error(429, "RESOURCE_EXHAUSTED", "You exceeded your quota.", details=details)
    )
    router = await make_router()

    result = await router.generate(text="short")

    assert len(fakes.gemini.calls()) == 1
    assert result.provider == "claude"


async def test_gemini_429_retry_info_delay_is_honoured(make_router, fakes):
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.3s"}]
    fakes.gemini.queue(
        "POST", fakes.gemini.path, gemini_error(429, "RESOURCE_EXHAUSTED", "Per-minute quota.", details=details)
    )
    router = await make_router()
    started = time.monotonic()

    result = await router.generate(text="short")

    assert time.monotonic() - started >= 0.3
    assert result.provider == "gemini"
    assert len(fakes.gemini.calls()) == 2


@pytest.mark.parametrize(("delay", "passed_on"), [("infs", None), ("nans", None), ("1e12s", 86_400), ("-5s", 0)])
async def test_a_wild_gemini_retry_delay_is_sanitised_and_claude_is_tried(make_router, fakes, delay, passed_on):
    """Found by a code review: "infs" raised a ValueError inside the router (a 500, Claude never tried), and
    "1e12s" was passed on as Retry-After: 1000000000000."""
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
    reply = gemini_error(429, "RESOURCE_EXHAUSTED", "Per-minute quota.", details=details)
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: reply)
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: anthropic_error(429, "rate_limit_error", "Slow down."))
    router = await make_router(llm_max_attempts=1)

    with pytest.raises(UpstreamRateLimited) as caught:
        await router.generate(text="short")

    [gemini, claude] = caught.value.extras["providers"]
    assert (gemini["provider"], claude["provider"]) == ("gemini", "claude")
    assert len(fakes.claude.calls()) == 1
    assert caught.value.headers.get("Retry-After") == (None if passed_on is None else str(passed_on))


async def test_unconfigured_primary_falls_back_and_says_so(make_router, fakes):
    router = await make_router(gemini_api_key=None)

    result = await router.generate(text="short prompt")

    assert result.provider == "claude"
    assert result.routing.fallback_from == "gemini"
    assert result.routing.reason == "2 words <= 500: gemini; gemini not configured; fell back to claude"
    assert fakes.gemini.calls() == []


async def test_local_is_the_last_fallback(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_error(500, "INTERNAL", "down"))
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: anthropic_error(500, "api_error", "down"))
    router = await make_router(local=True)

    result = await router.generate(text="short")

    assert result.provider == "local"
    assert result.routing.fallback_from == "gemini"
    assert "fell back to local" in result.routing.reason
    assert fakes.local.calls()[0].json["messages"] == [{"role": "user", "content": "short"}]


# --- Failures that must not fall back, and total failure -------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gemini_bad_request_is_not_sent_elsewhere(make_router, fakes, transport):
    fakes.gemini.queue(
        "POST", fakes.gemini.path, gemini_error(400, "INVALID_ARGUMENT", "max_output_tokens is too large")
    )
    router = await make_router(transport=transport)

    with pytest.raises(CallerFault) as caught:
        await router.generate(text="short", max_tokens=999_999)

    assert caught.value.status == 422
    assert "max_output_tokens is too large" in caught.value.detail
    assert caught.value.extras["upstream"] == "gemini"
    assert len(fakes.gemini.calls()) == 1
    assert fakes.claude.calls() == []


async def test_claude_bad_request_is_not_sent_elsewhere(make_router, fakes):
    fakes.claude.queue("POST", ANTHROPIC_PATH, anthropic_error(400, "invalid_request_error", "system: bad"))
    router = await make_router()

    with pytest.raises(CallerFault):
        await router.generate(text=words(700))
    assert len(fakes.claude.calls()) == 1
    assert fakes.gemini.calls() == []


async def test_every_provider_failing_lists_each_error(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_error(500, "INTERNAL", "gemini is down"))
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: anthropic_error(529, "overloaded_error", "Overloaded"))
    router = await make_router()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="short")

    error = caught.value
    assert error.status == 502
    assert [p["provider"] for p in error.extras["providers"]] == ["gemini", "claude"]
    assert "gemini is down" in error.detail and "Overloaded" in error.detail
    assert len(fakes.gemini.calls()) == 2 and len(fakes.claude.calls()) == 2


async def test_every_provider_failed_names_a_model_the_context_guard_passed_over(make_router, fakes):
    """Found by a first-time-user review: "every provider failed" read as every configured one, while the
    local model had not been tried at all (its window too small for this prompt)."""
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_error(503, "UNAVAILABLE", "gemini is down"))
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: anthropic_error(529, "overloaded_error", "Overloaded"))
    router = await make_router(local=True, local_llm_context_tokens=512)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="short", max_tokens=1024)

    assert "Not tried, context window too small for ~1,025 tokens: local (512 tokens)." in caught.value.detail
    assert [p["provider"] for p in caught.value.extras["providers"]] == ["gemini", "claude"]
    assert fakes.local.calls() == []


async def test_no_provider_configured_names_the_variables(make_router, fakes):
    router = await make_router(gemini_api_key=None, anthropic_api_key=None)

    with pytest.raises(NotConfigured) as caught:
        await router.generate(text="hello")

    assert caught.value.status == 503
    assert caught.value.extras["missing_settings"] == ["GEMINI_API_KEY", "ANTHROPIC_API_KEY"]
    assert "LOCAL_LLM_BASE_URL" in caught.value.detail


async def test_forcing_an_unconfigured_provider_names_its_variables(make_router):
    router = await make_router()

    with pytest.raises(NotConfigured) as caught:
        await router.generate(text="hello", provider="local")

    assert caught.value.extras["missing_settings"] == ["LOCAL_LLM_BASE_URL", "LOCAL_LLM_MODEL"]


# --- Timeouts, refused and reset connections, unusable answers ---------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_timeout_is_capped_per_attempt_then_falls_back(make_router, fakes, transport):
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json={}, delay=3.0))
    router = await make_router(transport=transport, llm_timeout_seconds=0.3, llm_max_attempts=1)
    started = time.monotonic()

    result = await router.generate(text="short")

    assert time.monotonic() - started < 2.0
    assert result.provider == "claude"
    assert "gemini failed (upstream-timeout)" in result.routing.reason
    await asyncio.sleep(0.1)
    assert fakes.gemini.cancelled == 1  # the timed-out call was really dropped


async def test_every_provider_timing_out_is_a_504_listing_each(make_router, fakes):
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json={}, delay=3.0))
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json={}, delay=3.0))
    router = await make_router(llm_timeout_seconds=0.3, llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="short")

    problem = caught.value
    assert (problem.status, problem.slug) == (504, "upstream-timeout")
    assert [(p["provider"], p["status"]) for p in problem.extras["providers"]] == [("gemini", 504), ("claude", 504)]
    assert "timed out" in problem.detail and "LLM_TIMEOUT_SECONDS" in problem.detail
    assert (len(fakes.gemini.calls()), len(fakes.claude.calls())) == (1, 1)


async def test_a_timeout_and_an_outage_stay_a_502(make_router, fakes):
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json={}, delay=3.0))
    fakes.claude.queue("POST", ANTHROPIC_PATH, anthropic_error(500, "api_error", "Internal server error"))
    router = await make_router(llm_timeout_seconds=0.3, llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="short")

    assert (caught.value.status, caught.value.slug) == (502, "llm-providers-failed")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_refused_falls_back_quickly(make_router, fakes, transport):
    # google-genai's aiohttp path would sleep 1-10 s and retry on its own; the provider turns that off.
    router = await make_router(transport=transport, gemini_base_url=f"http://127.0.0.1:{_closed_port()}")
    started = time.monotonic()

    result = await router.generate(text="short")

    assert time.monotonic() - started < 1.5
    assert result.provider == "claude"
    assert "gemini failed (upstream-unavailable)" in result.routing.reason


async def test_connection_reset_falls_back(make_router, fakes):
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(drop=True), Reply(drop=True))
    router = await make_router()

    result = await router.generate(text=words(600))

    assert result.provider == "gemini"
    assert "claude failed (upstream-unavailable)" in result.routing.reason


async def test_a_gemini_answer_cut_off_mid_body_is_retried_like_a_reset(make_router, fakes):
    """Found by a black-box review: aiohttp's ClientPayloadError was taken for an unusable answer, not retried,
    while the same cut on Claude (httpx ReadError) was."""
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(truncate=True))
    router = await make_router()

    result = await router.generate(text="short prompt")

    assert len(fakes.gemini.calls()) == 2  # the cut, then the retry that answered
    assert result.provider == "gemini" and result.routing.fallback_from is None


async def test_html_error_page_is_mapped_and_retried(make_router, fakes):
    page = Reply(502, text=HTML_ERROR_PAGE, content_type="text/html")
    fakes.gemini.queue("POST", fakes.gemini.path, page, page)
    router = await make_router()

    result = await router.generate(text="short")

    assert result.provider == "claude"
    assert result.routing.reason == "1 words <= 500: gemini; gemini failed (502 upstream-error); fell back to claude"
    assert len(fakes.gemini.calls()) == 2


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, text="{not json", content_type="application/json"),
        Reply(200, text="<html>captive portal</html>", content_type="text/html"),
        Reply(200, json={"content": [], "usage": {}}),
        Reply(200, json=["not", "an", "object"]),
        Reply(200, json={"content": "a string, not blocks"}),
        Reply(200, json={"content": [{"type": "text", "text": 7}], "stop_reason": "end_turn"}),
        Reply(200, json={"content": [{"type": "thinking", "thinking": "only thoughts"}], "stop_reason": "max_tokens"}),
    ],
)
async def test_unusable_claude_answer_falls_back_without_retry(make_router, fakes, reply):
    fakes.claude.queue("POST", ANTHROPIC_PATH, reply)
    router = await make_router()

    result = await router.generate(text=words(600))

    assert result.provider == "gemini"
    assert len(fakes.claude.calls()) == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, text="{not json", content_type="application/json"),
        Reply(200, json={"candidates": []}),
        Reply(500, text="{truncated", content_type="application/json"),
    ],
)
async def test_unusable_gemini_answer_falls_back(make_router, fakes, reply):
    fakes.gemini.queue("POST", fakes.gemini.path, reply)
    router = await make_router(llm_max_attempts=1)

    result = await router.generate(text="short")

    assert result.provider == "claude"
    assert result.routing.fallback_from == "gemini"


@pytest.mark.parametrize(
    ("reply", "slug"),
    [
        (openai_error(503, "server_error", "loading model"), "503 upstream-error"),
        (Reply(200, text="not json", content_type="text/plain"), "upstream-error"),
        (Reply(200, json={"choices": []}), "upstream-error"),
        (Reply(drop=True), "upstream-unavailable"),
    ],
)
async def test_local_faults_are_mapped(make_router, fakes, reply, slug):
    fakes.local.queue("POST", OPENAI_PATH, reply, reply)
    router = await make_router(local=True)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hi", provider="local")

    [failure] = caught.value.extras["providers"]
    assert failure["provider"] == "local"
    assert slug.split()[-1] == failure["error"]


async def test_local_model_not_found_is_not_retried(make_router, fakes):
    fakes.local.queue("POST", OPENAI_PATH, Reply(404, json={"error": "model 'llama3.2' not found"}))
    router = await make_router(local=True)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hi", provider="local")

    assert "model 'llama3.2' not found" in caught.value.detail
    assert len(fakes.local.calls()) == 1


async def test_bad_credentials_are_not_retried_but_fall_back(make_router, fakes):
    fakes.gemini.queue("POST", fakes.gemini.path, gemini_error(403, "PERMISSION_DENIED", "API key not valid."))
    router = await make_router()

    result = await router.generate(text="short")

    assert result.provider == "claude"
    assert len(fakes.gemini.calls()) == 1


# --- Context guard and input checks -------------------------------------------------------


async def test_prompt_too_big_for_claude_goes_to_gemini(make_router, fakes):
    text = "word " * 180_000  # 900,000 characters: ~225K tokens, over Claude's 200K window
    router = await make_router(max_input_chars=1_000_000)

    result = await router.generate(text=text)

    assert result.provider == "gemini"
    assert result.routing.fallback_from == "claude"
    assert "claude's context window is too small" in result.routing.reason
    assert fakes.claude.calls() == []
    assert gemini_prompt(fakes.gemini.calls()[0]) == text


async def test_prompt_that_fits_no_window_is_413(make_router, fakes):
    router = await make_router(local=True, local_llm_context_tokens=512)

    with pytest.raises(PayloadTooLarge) as caught:
        await router.generate(text="x" * 4000, provider="local")

    assert caught.value.status == 413
    assert "local (512 tokens)" in caught.value.detail
    assert fakes.local.calls() == []


async def test_the_context_guard_is_exact_at_the_window(make_router, fakes):
    """A prompt that needs exactly the window is sent; one token more is not (found by a mutation review)."""
    router = await make_router(local=True, local_llm_context_tokens=512)
    fits = 512 - estimate_tokens("plan my day", None)

    await router.generate(text="plan my day", provider="local", max_tokens=fits)
    with pytest.raises(PayloadTooLarge):
        await router.generate(text="plan my day", provider="local", max_tokens=fits + 1)

    assert [call.json["max_tokens"] for call in fakes.local.calls()] == [fits]


async def test_a_prompt_claude_says_is_too_long_goes_to_gemini(make_router, fakes):
    """Found by a black-box review: CJK text passed the 4-characters-a-token guard, Claude refused it as too
    long, and the answer was a 422 "check your text" without trying Gemini's larger window."""
    fakes.claude.queue(
        "POST",
        ANTHROPIC_PATH,
        anthropic_error(400, "invalid_request_error", "prompt is too long: 212345 tokens > 200000 maximum"),
    )
    router = await make_router()

    result = await router.generate(text=words(700))

    assert len(fakes.claude.calls()) == 1  # not retried: the same model would refuse it again
    assert result.provider == "gemini"
    assert result.routing.fallback_from == "claude"
    assert "claude failed (400 llm-prompt-too-large)" in result.routing.reason  # the vendor status, our type


async def test_a_prompt_every_model_says_is_too_long_is_413(make_router, fakes):
    fakes.claude.queue(
        "POST", ANTHROPIC_PATH, anthropic_error(400, "invalid_request_error", "prompt is too long: 9 > 8 maximum")
    )
    fakes.gemini.queue(
        "POST",
        fakes.gemini.path,
        gemini_error(
            400, "INVALID_ARGUMENT", "The input token count (1048580) exceeds the maximum number of tokens allowed"
        ),
    )
    router = await make_router()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text=words(700))

    assert (caught.value.status, caught.value.slug) == (413, "llm-prompt-too-large")
    assert [entry["provider"] for entry in caught.value.extras["providers"]] == ["claude", "gemini"]


@pytest.mark.parametrize(
    "message",
    [
        "prompt is too long: 212345 tokens > 200000 maximum",
        "input length and `max_tokens` exceed context limit: 199000 + 64000 > 200000",
        "The input token count (1048580) exceeds the maximum number of tokens allowed (1048576)",
        "the request exceeds the available context size, try increasing it",
    ],
)
def test_a_vendors_context_refusal_is_told_apart_from_a_bad_request(message):
    assert isinstance(status_error(upstream="claude", status=400, message=message), ContextExceeded)
    assert isinstance(status_error(upstream="claude", status=400, message="system: bad"), CallerFault)


def test_non_ascii_text_counts_about_a_token_a_character():
    assert estimate_tokens("word " * 100) == 125  # 500 ASCII characters, 4 a token
    assert estimate_tokens("漢字" * 100) == 200
    assert estimate_tokens("ab漢字", None, "cdef") == 0 + 2 + 1


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
async def test_blank_text_is_invalid(make_router, fakes, text):
    router = await make_router()
    with pytest.raises(InvalidInput):
        await router.generate(text=text)
    assert fakes.gemini.calls() == []


async def test_text_over_max_input_chars_is_413(make_router, fakes):
    router = await make_router(max_input_chars=100)
    with pytest.raises(PayloadTooLarge):
        await router.generate(text="x" * 101)
    assert fakes.gemini.calls() == []


# --- Cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_generate_drops_the_upstream_call(make_router, fakes, transport):
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json={}, delay=5.0))
    router = await make_router(transport=transport, llm_timeout_seconds=10)

    task = asyncio.create_task(router.generate(text="short"))
    await asyncio.wait_for(fakes.gemini.received.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.sleep(0.2)
    assert fakes.gemini.cancelled == 1
    assert fakes.claude.calls() == []  # a cancelled call is not "failed": no fallback


async def test_gemini_thinking_tokens_count_as_output(make_router, fakes):
    body = gemini_content("planned", prompt_tokens=20, output_tokens=6)
    body["usageMetadata"]["thoughtsTokenCount"] = 40
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=body))
    router = await make_router()

    result = await router.generate(text="plan")

    assert result.usage.model_dump() == {"input_tokens": 20, "output_tokens": 46}


async def test_missing_usage_is_reported_as_unknown(make_router, fakes):
    body = gemini_content("planned")
    del body["usageMetadata"]
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=body))
    router = await make_router()

    result = await router.generate(text="plan")

    assert result.response == "planned"
    assert result.usage.model_dump() == {"input_tokens": None, "output_tokens": None}


async def test_low_credit_400_is_not_the_callers_fault_and_falls_back(make_router, fakes):
    fakes.claude.queue(
        "POST",
        ANTHROPIC_PATH,
        anthropic_error(400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API."),
    )
    router = await make_router()

    result = await router.generate(text=words(600))

    assert result.provider == "gemini"
    assert result.routing.fallback_from == "claude"
    assert len(fakes.claude.calls()) == 1


async def test_blank_system_text_is_not_sent(make_router, fakes):
    router = await make_router()
    await router.generate(text="hello", system="   ")
    assert "systemInstruction" not in fakes.gemini.calls()[0].json


async def test_claude_answer_keeps_only_text_blocks_and_tolerates_missing_fields(make_router, fakes):
    """The answer is read from the raw JSON: text blocks joined, other blocks ignored, absent usage/model tolerated."""
    body = {
        "content": [
            {"type": "thinking", "thinking": "let me think"},
            {"type": "text", "text": "first half, "},
            {"type": "tool_use", "id": "t1", "name": "x", "input": {}},
            {"type": "text", "text": "second half"},
        ],
        "usage": {"input_tokens": 12, "output_tokens": True},
        "stop_reason": "end_turn",
    }
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=body))
    router = await make_router()

    result = await router.generate(text=words(600))

    assert result.provider == "claude"
    assert result.response == "first half, second half"
    assert result.model_used == "claude-haiku-4-5"  # the configured model: the answer named none
    assert result.usage.model_dump() == {"input_tokens": 12, "output_tokens": None}


# --- Faults on our side that a 4xx reports: our key, project or region ------------------------

#: Gemini's real answer to a wrong or expired key: a 400, not a 401, told apart by its ErrorInfo reason.
API_KEY_INVALID = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
]


def gemini_bad_key() -> Reply:
    return gemini_error(
        400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details=API_KEY_INVALID
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gemini_invalid_key_400_is_not_retried_and_falls_back_to_claude(make_router, fakes, transport):
    fakes.gemini.queue("POST", fakes.gemini.path, gemini_bad_key())
    router = await make_router(transport=transport)

    result = await router.generate(text="hello")

    assert result.provider == "claude"
    assert result.routing.fallback_from == "gemini"
    assert result.routing.reason == "1 words <= 500: gemini; gemini failed (400 upstream-error); fell back to claude"
    [gemini_call] = fakes.gemini.calls("POST", fakes.gemini.path)  # a bad key is not retried
    assert gemini_call.headers["x-goog-api-key"] == GEMINI_KEY
    [claude_call] = fakes.claude.calls("POST", ANTHROPIC_PATH)
    assert claude_call.json["messages"] == [{"role": "user", "content": "hello"}]


async def test_gemini_invalid_key_names_the_setting_and_the_fix_but_not_the_key(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_bad_key())
    router = await make_router()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello", provider="gemini")

    error = caught.value
    assert error.status == 502
    assert error.extras["providers"] == [
        {
            "provider": "gemini",
            "status": 502,
            "error": "upstream-error",
            "detail": "gemini refused our credentials (400 API_KEY_INVALID: API key not valid. Please pass a valid "
            "API key.). GEMINI_API_KEY is not a valid Gemini API key (wrong, expired or deleted): create one in "
            "Google AI Studio, set GEMINI_API_KEY in the environment or .env, and restart.",
        }
    ]
    assert GEMINI_KEY not in error.detail
    assert len(fakes.gemini.calls()) == 1
    assert fakes.claude.calls() == []  # forced: never replaced


@pytest.mark.parametrize(
    ("message", "status", "details"),
    [
        ("User location is not supported for the API use.", "FAILED_PRECONDITION", None),
        (
            "Gemini API free tier is not available in your country. Please enable billing on your project in "
            "Google AI Studio.",
            "FAILED_PRECONDITION",
            None,
        ),
        ("API key expired. Please renew the API key.", "INVALID_ARGUMENT", API_KEY_INVALID),
    ],
)
async def test_gemini_400_for_our_key_region_or_billing_falls_back(make_router, fakes, message, status, details):
    fakes.gemini.queue("POST", fakes.gemini.path, gemini_error(400, status, message, details=details))
    router = await make_router()

    result = await router.generate(text="hello")

    assert result.provider == "claude"
    assert result.routing.reason.endswith("gemini failed (400 upstream-error); fell back to claude")
    assert len(fakes.gemini.calls()) == 1
    assert len(fakes.claude.calls()) == 1


async def test_gemini_region_400_says_what_to_change(make_router, fakes):
    fakes.gemini.queue(
        "POST",
        fakes.gemini.path,
        gemini_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
    )
    router = await make_router(anthropic_api_key=None)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    [failure] = caught.value.extras["providers"]
    assert failure["detail"] == (
        "gemini refused to serve our account (400 FAILED_PRECONDITION: User location is not supported for the API "
        "use.). The Gemini API does not serve this server's region, or not without billing: enable billing on the "
        "project of GEMINI_API_KEY in Google AI Studio, or run the service from a supported region."
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gemini_400_with_field_violations_is_still_the_callers_fault(make_router, fakes, transport):
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "generation_config.max_output_tokens", "description": "too large"}],
        }
    ]
    fakes.gemini.queue(
        "POST", fakes.gemini.path, gemini_error(400, "INVALID_ARGUMENT", "Invalid max_output_tokens", details=details)
    )
    router = await make_router(transport=transport)

    with pytest.raises(CallerFault) as caught:
        await router.generate(text="hello", max_tokens=999_999)

    assert caught.value.status == 422
    assert caught.value.detail == (
        "gemini rejected the request (400: Invalid max_output_tokens). Check text, system and max_tokens."
    )
    assert len(fakes.gemini.calls()) == 1
    assert fakes.claude.calls() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (401, "authentication_error", "invalid x-api-key"),
        (403, "permission_error", "Your API key does not have permission to use the specified resource."),
    ],
)
async def test_claude_401_and_403_are_not_retried_and_fall_back_to_gemini(
    make_router, fakes, transport, status, kind, message
):
    fakes.claude.queue("POST", ANTHROPIC_PATH, anthropic_error(status, kind, message))
    router = await make_router(transport=transport)

    result = await router.generate(text=words(600))

    assert result.provider == "gemini"
    assert result.routing.reason == (
        f"600 words > 500: claude; claude failed ({status} upstream-error); fell back to gemini"
    )
    assert len(fakes.claude.calls()) == 1
    assert gemini_prompt(fakes.gemini.calls()[0]) == words(600)


async def test_claude_disabled_organization_400_falls_back_to_gemini(make_router, fakes):
    fakes.claude.queue(
        "POST", ANTHROPIC_PATH, anthropic_error(400, "invalid_request_error", "This organization has been disabled.")
    )
    router = await make_router()

    result = await router.generate(text=words(600))

    assert result.provider == "gemini"
    assert result.routing.reason.endswith("claude failed (400 upstream-error); fell back to gemini")
    assert len(fakes.claude.calls()) == 1
    assert len(fakes.gemini.calls()) == 1


async def test_claude_401_detail_names_the_setting_not_the_key(make_router, fakes):
    fakes.claude.queue("POST", ANTHROPIC_PATH, anthropic_error(401, "authentication_error", "invalid x-api-key"))
    router = await make_router()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello", provider="claude")

    [failure] = caught.value.extras["providers"]
    assert failure["detail"] == (
        "claude refused our credentials (401: invalid x-api-key). Check ANTHROPIC_API_KEY and CLAUDE_MODEL."
    )
    assert ANTHROPIC_KEY not in caught.value.detail


# --- Every provider rate limited ------------------------------------------------------------


def gemini_429(retry_after: str | None = None, details=None) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", headers=headers, details=details)


def claude_429(retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return anthropic_error(429, "rate_limit_error", "Rate limit exceeded", headers=headers)


async def test_every_provider_rate_limited_is_429_with_the_smallest_retry_after(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_429("9"))
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: claude_429("7"))
    router = await make_router(max_retry_wait_seconds=5)  # 7 and 9 s are not waited out in the request
    started = time.monotonic()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    assert time.monotonic() - started < 2
    error = caught.value
    assert (error.status, error.slug, error.title) == (429, "upstream-rate-limited", "Upstream rate limit reached")
    assert error.headers == {"Retry-After": "7"}
    assert error.extras["retry_after"] == 7
    assert error.extras["upstream"] == "llm"
    assert error.retryable is False  # the router has spent its attempts; nobody should loop on top of it
    assert [(p["provider"], p["status"], p["error"]) for p in error.extras["providers"]] == [
        ("gemini", 429, "upstream-rate-limited"),
        ("claude", 429, "upstream-rate-limited"),
    ]
    assert error.detail == (
        "Every LLM provider is rate limiting us; try again in 7 s. "
        "gemini: gemini is rate limiting us (Resource has been exhausted.); "
        "claude: claude is rate limiting us (Rate limit exceeded)."
    )
    assert len(fakes.gemini.calls()) == 1 and len(fakes.claude.calls()) == 1


async def test_rate_limited_retry_after_comes_from_gemini_retry_info_too(make_router, fakes):
    retry_info = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3.2s"}]
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_429(details=retry_info))
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: claude_429("30"))
    router = await make_router(max_retry_wait_seconds=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "4"}  # 3.2 s, rounded up
    assert len(fakes.gemini.calls()) == 1 and len(fakes.claude.calls()) == 1


async def test_rate_limited_without_any_retry_after_is_429_without_the_header(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_429())
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: claude_429())
    router = await make_router()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    assert caught.value.status == 429
    assert caught.value.headers == {}
    assert "retry_after" not in caught.value.extras
    assert caught.value.detail.startswith("Every LLM provider is rate limiting us. gemini: ")
    assert len(fakes.gemini.calls()) == 2 and len(fakes.claude.calls()) == 2  # retried with backoff on each


async def test_rate_limited_with_one_retry_after_uses_that_one(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_429())
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: claude_429("12"))
    router = await make_router(llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "12"}


async def test_rate_limited_includes_the_local_model_when_it_was_tried(make_router, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_429("8"))
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: claude_429("6"))
    fakes.local.route(
        "POST", OPENAI_PATH, lambda _: openai_error(429, "rate_limit_exceeded", "busy", headers={"Retry-After": "5"})
    )
    router = await make_router(local=True, llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "5"}
    assert [p["provider"] for p in caught.value.extras["providers"]] == ["gemini", "claude", "local"]
    assert len(fakes.local.calls()) == 1


@pytest.mark.parametrize(
    ("gemini_reply", "claude_reply"),
    [
        (gemini_429("7"), anthropic_error(529, "overloaded_error", "Overloaded")),  # 529: down, not a rate limit
        (gemini_error(503, "UNAVAILABLE", "The model is overloaded."), claude_429("7")),
        (gemini_429("7"), anthropic_error(401, "authentication_error", "invalid x-api-key")),
    ],
)
async def test_mixed_failures_stay_502(make_router, fakes, gemini_reply, claude_reply):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_reply)
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: claude_reply)
    router = await make_router(llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    error = caught.value
    assert (error.status, error.slug) == (502, "llm-providers-failed")
    assert error.headers == {}
    assert [p["provider"] for p in error.extras["providers"]] == ["gemini", "claude"]
    assert len(fakes.gemini.calls()) == 1 and len(fakes.claude.calls()) == 1


async def test_exhausted_quotas_on_every_provider_are_429(make_router, fakes):
    """A 429 for an exhausted spend limit or daily quota is still the vendor's rate limit: waiting (long) helps."""
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_429("4"))
    fakes.claude.route(
        "POST",
        ANTHROPIC_PATH,
        lambda _: anthropic_error(429, "rate_limit_error", "You have reached your specified API usage limits."),
    )
    router = await make_router(llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "4"}
    assert "waiting will not help" in caught.value.extras["providers"][1]["detail"]


# --- An answer cut short at max_tokens --------------------------------------------------


@pytest.mark.parametrize(
    ("reasons", "flag"),
    [
        # Each vendor says it its own way; the caller must not take a cut-off or stopped plan for a whole answer.
        ({"claude": "max_tokens", "gemini": "MAX_TOKENS", "local": "length"}, "truncated"),
        # Found by a black-box review: a Claude `refusal` with partial text came back as a plain 200 answer.
        ({"claude": "refusal", "gemini": "SAFETY", "local": "content_filter"}, "refused"),
    ],
)
async def test_an_answer_the_model_stopped_is_flagged_for_each_provider(make_router, fakes, reasons, flag):
    claude = anthropic_message("half a pl")
    claude["stop_reason"] = reasons["claude"]
    gemini = gemini_content("half a pl")
    gemini["candidates"][0]["finishReason"] = reasons["gemini"]
    local = openai_completion("half a pl")
    local["choices"][0]["finish_reason"] = reasons["local"]
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=claude))
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=gemini))
    fakes.local.queue("POST", OPENAI_PATH, Reply(200, json=local))
    router = await make_router(local=True)

    for provider in ("claude", "gemini", "local"):
        result = await router.generate(text="plan my day", provider=provider, max_tokens=5)
        flags = {"truncated": result.truncated, "refused": result.refused}
        assert (result.provider, result.response, flags) == (provider, "half a pl", {**FLAGS_OFF, flag: True})
    assert [call.json["max_tokens"] for call in fakes.claude.calls() + fakes.local.calls()] == [5, 5]


FLAGS_OFF = {"truncated": False, "refused": False}


async def test_a_whole_answer_is_not_flagged(make_router, fakes):
    router = await make_router(local=True)
    for provider in ("claude", "gemini", "local"):
        assert (await router.generate(text="plan my day", provider=provider)).truncated is False


async def test_a_negative_token_count_is_reported_as_unknown(make_router, fakes):
    body = anthropic_message("ok", input_tokens=-5, output_tokens=3)
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=body))
    router = await make_router()

    result = await router.generate(text="plan", provider="claude")

    assert result.usage.model_dump() == {"input_tokens": None, "output_tokens": 3}


@pytest.mark.parametrize("offset", [280, 290, 295, 299])
def test_a_key_echoed_across_the_cut_leaves_no_prefix_behind(offset):
    """Found by a code review: the vendor's text was cut at 300 characters before the scrubber ran, and a key
    straddling the cut left a prefix no scrubber recognises."""
    from core.secrets import SecretScrubber

    key = "sk-local-0123456789abcdefghijklmnopq"
    message = "x" * (offset - len("Received API Key = ")) + "Received API Key = " + key + " and more words here"
    scrubber = SecretScrubber([key])
    problem = status_error(upstream="local", status=401, message=message)
    said = scrubber.scrub(problem.detail)
    assert key[:10] not in said
    assert len(problem.detail) < 400


# --- Redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("provider", ["gemini", "claude", "local"])
async def test_a_redirect_is_never_followed_so_the_key_and_prompt_stay_put(make_router, fakes, provider, status):
    """Found by a black-box review: a 302 or 307 from GEMINI_BASE_URL sent the API key and the prompt on to the
    host it named (Claude's SDK followed too)."""
    async with FakeUpstream() as elsewhere:
        fake, path = {
            "gemini": (fakes.gemini, fakes.gemini.path),
            "claude": (fakes.claude, ANTHROPIC_PATH),
            "local": (fakes.local, OPENAI_PATH),
        }[provider]
        fake.route("POST", path, lambda _: Reply(status, headers={"Location": f"{elsewhere.url}/steal"}))
        router = await make_router(local=True, llm_max_attempts=1)

        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="secret plans", provider=provider)

        assert elsewhere.requests == []
    assert len(fake.calls()) == 1
    [failure] = caught.value.extras["providers"]
    assert str(status) in failure["detail"]


@pytest.mark.parametrize("provider", ["gemini", "local"])
async def test_a_compressed_answer_over_the_cap_is_not_read_into_memory(make_router, fakes, provider):
    """Found by a black-box review: a ~2 MB gzip bomb from GEMINI_BASE_URL took the worker to 4 GiB."""
    import gzip

    from core.upstream import MAX_RESPONSE_BYTES
    from tests.fakes.raw_http import raw_http_server

    bomb = gzip.compress(b" " * (64 * MAX_RESPONSE_BYTES))  # 64 MiB decoded
    async with raw_http_server(bomb, headers={"Content-Encoding": "gzip"}) as url:
        # A generous timeout: this is about memory, and a busy CI machine once took the default 2 s to decode.
        router = await make_router(
            local=True,
            llm_max_attempts=1,
            llm_timeout_seconds=30,
            gemini_base_url=url,
            local_llm_base_url=f"{url}/v1",
        )
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="hi", provider=provider)
    [failure] = caught.value.extras["providers"]
    assert f"answered more than {MAX_RESPONSE_BYTES} bytes; not read further" in failure["detail"]


@pytest.mark.parametrize("provider", ["gemini", "local"])
async def test_a_corrupt_compressed_answer_is_said_to_be_undecodable_not_unreachable(make_router, fakes, provider):
    """Found by a fault-injection audit: "could not be reached" sent the reader to check the URL of a provider
    that had answered, with a body that would not decode."""
    from tests.fakes.raw_http import raw_http_server

    async with raw_http_server(b"\x1f\x8b\x08\x00not gzip at all", headers={"Content-Encoding": "gzip"}) as url:
        router = await make_router(local=True, llm_max_attempts=1, gemini_base_url=url, local_llm_base_url=f"{url}/v1")
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="hi", provider=provider)
    [failure] = caught.value.extras["providers"]
    assert failure["error"] == "upstream-unavailable"
    assert failure["detail"].startswith(f"{provider}'s answer was cut off or could not be decoded (ClientPayloadError)")


# --- Claude's answers are capped too (the SDK reads them whole) ---------------------------------


def _claude_refusal(caught: pytest.ExceptionInfo[AllProvidersFailed]) -> str:
    [failure] = caught.value.extras["providers"]
    assert failure["provider"] == "claude"
    return failure["detail"]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        pytest.param("200 OK", "bomb", {"Content-Encoding": "gzip"}, id="gzip-bomb"),
        pytest.param("200 OK", "huge", {}, id="plain-2xx"),
        pytest.param("500 Internal Server Error", "huge", {}, id="error-body"),
    ],
)
async def test_an_answer_from_claude_over_the_cap_is_not_read_into_memory(
    make_router, transport, status, body, headers
):
    """Claude's SDK read every answer whole, a 2xx or an error, and decoded gzip without a bound: a broken or
    hostile ANTHROPIC_BASE_URL could make the worker buffer any size (left over from the black-box review that
    capped the other upstreams)."""
    import gzip

    from core.upstream import MAX_RESPONSE_BYTES
    from tests.fakes.raw_http import raw_http_server

    payload = gzip.compress(b" " * (64 * MAX_RESPONSE_BYTES)) if body == "bomb" else b" " * (4 * MAX_RESPONSE_BYTES)
    heads: list[bytes] = []
    async with raw_http_server(payload, headers=headers, status=status, requests=heads) as url:
        router = await make_router(transport=transport, llm_max_attempts=1, anthropic_base_url=url)
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="hi", provider="claude")

    assert _claude_refusal(caught) == (
        f"claude answered more than {MAX_RESPONSE_BYTES} bytes; not read further. Check ANTHROPIC_BASE_URL."
    )
    [head] = heads
    assert b"\r\naccept-encoding: identity\r\n" in head.lower()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_compressed_answer_from_claude_within_the_cap_is_read(make_router, transport):
    """Asked for `identity`, a server may still compress: the answer is decoded (once, by the cap's transport)."""
    import gzip
    import json

    from tests.fakes.raw_http import raw_http_server

    body = gzip.compress(json.dumps(anthropic_message("a plan", input_tokens=3, output_tokens=2)).encode())
    async with raw_http_server(body, headers={"Content-Encoding": "gzip"}, pieces=4) as url:
        router = await make_router(transport=transport, llm_max_attempts=1, anthropic_base_url=url)
        result = await router.generate(text="hi", provider="claude")

    assert result.response == "a plan"
    assert result.usage.model_dump() == {"input_tokens": 3, "output_tokens": 2}


@pytest.mark.parametrize(
    ("headers", "body", "said"),
    [
        ({"Content-Encoding": "br"}, b"\x0b\x02\x80{}\x03", "claude answered encoded as 'br', which is not read."),
        ({"Content-Encoding": "gzip"}, b"\x1f\x8b not gzip at all", "claude answered a corrupt compressed body"),
    ],
)
async def test_an_answer_from_claude_that_cannot_be_decoded_is_refused_clearly(make_router, headers, body, said):
    from tests.fakes.raw_http import raw_http_server

    async with raw_http_server(body, headers=headers) as url:
        router = await make_router(llm_max_attempts=1, anthropic_base_url=url)
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="hi", provider="claude")

    detail = _claude_refusal(caught)
    assert detail.startswith(said)
    assert detail.endswith("Check ANTHROPIC_BASE_URL.")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("provider", ["gemini", "claude", "local"])
async def test_a_proxy_named_in_the_environment_is_not_applied_to_prompts(
    make_router, fakes, monkeypatch, transport, provider
):
    """The router's own session never took HTTP_PROXY; Claude's SDK clients did, so its prompts (and key) went
    through whatever the environment named (found while capping Claude's answers)."""
    from tests.fakes.raw_http import raw_http_server

    heads: list[bytes] = []
    async with raw_http_server(b"{}", requests=heads) as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy)
        fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=anthropic_message("direct")))
        fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=gemini_content("direct")))
        fakes.local.queue("POST", OPENAI_PATH, Reply(200, json=openai_completion("direct")))
        router = await make_router(transport=transport, local=True, llm_max_attempts=1)
        result = await router.generate(text="hi", provider=provider)

    assert (result.provider, result.response) == (provider, "direct")
    assert heads == []


# --- A refusal with no text at all is an answer, not a failure (found by a black-box review) ------------------


def _refused_outright(provider: str) -> dict:
    if provider == "claude":
        body = anthropic_message("x")
        body["content"], body["stop_reason"] = [], "refusal"
    elif provider == "gemini":
        body = gemini_content("x")
        body["candidates"][0] = {"finishReason": "SAFETY", "index": 0}
    elif provider == "gemini-prompt":
        body = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "modelVersion": "gemini-x"}
    else:
        body = openai_completion("x")
        body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"] = None, "content_filter"
    return body


@pytest.mark.parametrize("provider", ["claude", "gemini", "gemini-prompt", "local"])
async def test_a_refusal_with_no_text_is_a_flagged_answer_not_sent_to_another_provider(make_router, fakes, provider):
    """It was an "unusable answer": the router sent the same prompt on to the next provider (shopping a prompt a
    model's safety checks refused), and `refused: true` never came back."""
    fake, path = {
        "claude": (fakes.claude, ANTHROPIC_PATH),
        "gemini": (fakes.gemini, fakes.gemini.path),
        "gemini-prompt": (fakes.gemini, fakes.gemini.path),
        "local": (fakes.local, OPENAI_PATH),
    }[provider]
    fake.queue("POST", path, Reply(200, json=_refused_outright(provider)))
    router = await make_router(local=True)

    # Gemini through `auto` (short prompts go there first, and a failure went on to Claude); the others by name.
    asked = "auto" if provider.startswith("gemini") else provider
    result = await router.generate(text="something a model refuses", provider=asked)

    assert (result.provider, result.response, result.refused) == (provider.split("-")[0], "", True)
    others = [f for f in (fakes.claude, fakes.gemini, fakes.local) if f is not fake]
    assert all(other.calls() == [] for other in others)  # not re-sent anywhere


@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"])
async def test_every_gemini_safety_stop_is_a_flagged_refusal_not_a_fallback(make_router, fakes, reason):
    """Found by a mutation review: only SAFETY was tested, so dropping RECITATION sent the prompt on to Claude."""
    gemini = gemini_content("half a pl")
    gemini["candidates"][0]["finishReason"] = reason
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=gemini))
    router = await make_router()

    result = await router.generate(text="plan my day")

    assert (result.provider, result.response, result.refused) == ("gemini", "half a pl", True)
    assert fakes.claude.calls() == []


# --- An answer echoing a key ------------------------------------------------------------


async def test_an_answer_echoing_a_configured_key_is_scrubbed_before_anyone_uses_it(make_router, fakes):
    """The generation feeds the /ai-process answer, the briefing's Slack post and chat replies: an endpoint that
    echoed the request's headers sent Gemini's key on to Slack (found by a security review)."""
    echoed = f"x-goog-api-key: {GEMINI_KEY}; and Claude's {ANTHROPIC_KEY}"
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: Reply(200, json=gemini_content(echoed, model=GEMINI_KEY)))
    router = await make_router()

    generation = await router.generate(text="hello", provider="gemini")

    assert generation.response == "x-goog-api-key: ***; and Claude's ***"
    assert generation.model_used == "***"
