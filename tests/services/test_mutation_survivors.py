"""Tests that pin behaviour a hand mutation review of services/ (router, providers, base) found unguarded.

Each test names the mutant it kills. They run against the local fakes (tests/fakes/llm.py) and assert on
what reached them.
"""

from __future__ import annotations

import httpx2
import pytest

from core.errors import InvalidInput, NotConfigured, PayloadTooLarge
from services.ai_router import AllProvidersFailed
from services.base import CallerPayloadTooLarge
from services.claude_transport import CappedTransport
from tests.fakes.llm import (
    ANTHROPIC_PATH,
    HTML_ERROR_PAGE,
    OPENAI_PATH,
    anthropic_error,
    anthropic_message,
    gemini_content,
    openai_completion,
    openai_error,
)
from tests.fakes.server import FakeUpstream, Reply


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


# --- The router's own input checks (the API validates too, but workflows call the router directly) ---------


async def test_text_of_exactly_max_input_chars_is_sent(make_router, fakes):
    """Mutant: `len(text) >= max_input_chars` refused a prompt at the documented limit."""
    router = await make_router(max_input_chars=100)

    result = await router.generate(text="x" * 100)

    assert result.provider == "gemini"
    assert len(fakes.gemini.calls()) == 1


async def test_system_over_max_input_chars_is_413_and_nothing_is_sent(make_router, fakes):
    """Mutant: the system-length guard deleted; a huge system text went to the vendor."""
    router = await make_router(max_input_chars=100)

    with pytest.raises(PayloadTooLarge) as caught:
        await router.generate(text="hello", system="s" * 101)

    assert caught.value.detail.startswith("system has 101 characters")
    assert fakes.gemini.calls() == [] and fakes.claude.calls() == []


async def test_max_tokens_zero_is_invalid_not_replaced_by_the_default(make_router, fakes):
    """Mutant: `max_tokens < 0`; 0 then fell through `max_tokens or LLM_MAX_TOKENS` and billed the default."""
    router = await make_router()

    with pytest.raises(InvalidInput) as caught:
        await router.generate(text="hello", max_tokens=0)

    assert caught.value.extras["errors"] == [{"field": "max_tokens"}]
    assert fakes.gemini.calls() == []


async def test_an_unknown_provider_is_invalid_and_nothing_is_sent(make_router, fakes):
    """Mutant: the provider check deleted; "openai" was silently treated as a forced, unconfigured provider."""
    router = await make_router()

    with pytest.raises(InvalidInput) as caught:
        await router.generate(text="hello", provider="openai")  # type: ignore[arg-type]

    assert caught.value.extras["errors"] == [{"field": "provider"}]
    assert fakes.gemini.calls() == [] and fakes.claude.calls() == []


async def test_a_dry_run_says_which_provider_it_fell_back_from(make_router, fakes):
    """Mutant: a dry run's `fallback_from` always None, so the rehearsal hid the fallback a real call makes."""
    router = await make_router(gemini_api_key=None)

    result = await router.generate(text="short prompt", dry_run=True)

    assert (result.provider, result.routing.fallback_from) == ("claude", "gemini")
    assert fakes.claude.calls() == [] and fakes.gemini.calls() == []


async def test_a_prompt_too_large_for_every_window_says_the_estimate(make_router, fakes):
    """Mutant: `estimated_tokens` dropped from the 413's members."""
    router = await make_router(local=True, local_llm_context_tokens=512)

    with pytest.raises(PayloadTooLarge) as caught:
        await router.generate(text="x" * 4000, provider="local", max_tokens=100)

    assert caught.value.extras["estimated_tokens"] == 1000 + 100
    assert fakes.local.calls() == []


async def test_a_half_configured_local_model_is_not_used(make_router, fakes):
    """Mutant: LOCAL_LLM_BASE_URL alone configured the local provider, which then sent `"model": null`."""
    router = await make_router(local_llm_base_url=fakes.local.base_url)

    assert "local" not in router.configured
    with pytest.raises(NotConfigured) as caught:
        await router.generate(text="hello", provider="local")
    assert caught.value.extras["missing_settings"] == ["LOCAL_LLM_MODEL"]
    assert fakes.local.calls() == []


# --- How the router sums up failures ------------------------------------------------------------------------


async def test_a_context_refusal_and_an_outage_stay_a_502(make_router, fakes):
    """Mutant: `any(ContextExceeded)` made a 413 "send less" of a mix where the other provider was merely down."""
    fakes.claude.queue(
        "POST", ANTHROPIC_PATH, anthropic_error(400, "invalid_request_error", "prompt is too long: 9 > 8 maximum")
    )
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: Reply(500, json={"error": {"code": 500}}))
    router = await make_router()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text=words(600))

    assert (caught.value.status, caught.value.slug) == (502, "llm-providers-failed")
    claude, gemini = caught.value.extras["providers"]
    assert (claude["status"], claude["error"]) == (413, "llm-prompt-too-large")
    assert (gemini["provider"], gemini["status"]) == ("gemini", 502)
    assert len(fakes.claude.calls()) == 1 and len(fakes.gemini.calls()) == 2


async def test_every_provider_rate_limited_says_the_wait_rounded_up(make_router, fakes):
    """Mutant: `math.floor` told the reader to come back in 3 s when the vendor asked for 3.2."""
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: Reply(429, json={"error": {"code": 429}}))
    fakes.claude.route(
        "POST",
        ANTHROPIC_PATH,
        lambda _: anthropic_error(429, "rate_limit_error", "slow down", headers={"retry-after": "3.2"}),
    )
    router = await make_router(llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello")

    assert caught.value.detail.startswith("Every LLM provider is rate limiting us; try again in 4 s. ")


# --- Vendor statuses that are the caller's fault ------------------------------------------------------------


async def test_a_vendor_413_is_answered_at_once_as_413(make_router, fakes):
    """Mutants: 413 mapped like a 400 (a 422), or not counted a caller fault (the prompt went on to Claude)."""
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(413, text="Request Entity Too Large"))
    router = await make_router()

    with pytest.raises(CallerPayloadTooLarge) as caught:
        await router.generate(text="hello")

    assert (caught.value.status, caught.value.slug) == (413, "llm-prompt-too-large")
    assert len(fakes.gemini.calls()) == 1
    assert fakes.claude.calls() == []


async def test_a_vendor_422_is_the_callers_fault_and_not_sent_elsewhere(make_router, fakes):
    """Mutant: 422 dropped from CALLER_FAULT_STATUSES; the malformed request was sent on to Gemini."""
    fakes.claude.queue("POST", ANTHROPIC_PATH, anthropic_error(422, "invalid_request_error", "max_tokens: too big"))
    router = await make_router()

    with pytest.raises(InvalidInput) as caught:
        await router.generate(text=words(600))

    assert (caught.value.status, caught.value.slug) == (422, "llm-request-rejected")
    assert len(fakes.claude.calls()) == 1
    assert fakes.gemini.calls() == []


# --- What the vendors' answers say --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": 0, "output_tokens": 0}, {"input_tokens": 0, "output_tokens": 0}),
        ({"input_tokens": True, "output_tokens": 2}, {"input_tokens": None, "output_tokens": 2}),
    ],
)
async def test_token_counts_keep_zero_and_refuse_booleans(make_router, fakes, usage, expected):
    """Mutants: `value > 0` reported a real 0 as unknown; dropping the bool check reported `true` as 1 token."""
    body = anthropic_message("ok") | {"usage": usage}
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=body))
    router = await make_router()

    result = await router.generate(text="plan", provider="claude")

    assert result.usage.model_dump() == expected


async def test_a_long_vendor_message_is_cut_and_put_on_one_line(make_router, fakes):
    """Mutant: `_said` returned the vendor's text whole; a proxy's long page went into the detail as it was."""
    page = "<html>\n<body>\n" + "bad gateway " * 200 + "</body></html>"
    fakes.local.route("POST", OPENAI_PATH, lambda _: Reply(404, text=page, content_type="text/html"))
    router = await make_router(local=True)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hi", provider="local")

    [failure] = caught.value.extras["providers"]
    assert "\n" not in failure["detail"]
    assert len(failure["detail"]) < 500
    assert failure["detail"].startswith("local does not know the model or endpoint (<html> <body> bad gateway")


# --- The local model -----------------------------------------------------------------------------------------


async def test_a_local_base_url_with_a_trailing_slash_reaches_the_endpoint(make_router, fakes):
    """Mutant: the trailing slash kept, so the request went to /v1//chat/completions (a 404 from Ollama)."""
    router = await make_router(local=True, local_llm_base_url=f"{fakes.local.base_url}/")

    result = await router.generate(text="hi", provider="local")

    assert result.provider == "local"
    assert [call.path for call in fakes.local.calls()] == [OPENAI_PATH]


async def test_a_local_400_is_the_callers_fault(make_router, fakes):
    """Mutant: `status > 400` read a 400's error body as an answer (an unusable one, sent to the next provider)."""
    fakes.local.queue("POST", OPENAI_PATH, openai_error(400, "invalid_request_error", "max_tokens is too large"))
    router = await make_router(local=True)

    with pytest.raises(InvalidInput) as caught:
        await router.generate(text="hi", provider="local")

    assert caught.value.slug == "llm-request-rejected"
    assert "max_tokens is too large" in caught.value.detail
    assert len(fakes.local.calls()) == 1


@pytest.mark.parametrize(
    "reply",
    [
        openai_error(404, "not_found_error", "The model `llama9` does not exist"),
        Reply(404, json={"error": "The model `llama9` does not exist"}),  # Ollama's shape
    ],
)
async def test_a_local_error_says_the_servers_message_not_its_json(make_router, fakes, reply):
    """Mutants: the raw JSON body shown instead of the message (OpenAI's object, Ollama's string)."""
    fakes.local.queue("POST", OPENAI_PATH, reply)
    router = await make_router(local=True)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hi", provider="local")

    [failure] = caught.value.extras["providers"]
    assert failure["detail"].startswith(
        "local does not know the model or endpoint (The model `llama9` does not exist)."
    )


async def test_a_local_429_retry_after_is_passed_on(make_router, fakes):
    """Mutant: the local server's Retry-After ignored, so the 429 said no wait."""
    fakes.local.route(
        "POST", OPENAI_PATH, lambda _: openai_error(429, "rate_limit_exceeded", "busy", headers={"Retry-After": "30"})
    )
    router = await make_router(local=True, llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hi", provider="local")

    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "30"}
    assert len(fakes.local.calls()) == 1


# --- Claude's capped transport ------------------------------------------------------------------------------


async def test_an_answer_from_claude_of_one_byte_over_the_cap_is_refused(make_router):
    """Mutant: `read > MAX_RESPONSE_BYTES + 1` let one byte more than the cap through."""
    from core.upstream import MAX_RESPONSE_BYTES
    from tests.fakes.raw_http import raw_http_server

    async with raw_http_server(b" " * (MAX_RESPONSE_BYTES + 1)) as url:
        router = await make_router(llm_max_attempts=1, anthropic_base_url=url)
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="hi", provider="claude")

    [failure] = caught.value.extras["providers"]
    assert failure["detail"] == (
        f"claude answered more than {MAX_RESPONSE_BYTES} bytes; not read further. Check ANTHROPIC_BASE_URL."
    )


class _InnerTransport(httpx2.AsyncBaseTransport):
    """Answers every request with `pieces` as the raw body; records whether it was closed."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces
        self.closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=_Pieces(self.pieces), request=request)

    async def aclose(self) -> None:
        self.closed = True


class _Pieces(httpx2.AsyncByteStream):
    def __init__(self, pieces: tuple[bytes, ...]) -> None:
        self.pieces = pieces

    async def __aiter__(self):
        for piece in self.pieces:
            yield piece


async def test_closing_the_capped_transport_closes_the_sdks_own():
    """Mutant: `CappedTransport.aclose` did not close the transport it wraps (its connections leaked)."""
    inner = _InnerTransport(b"{}")
    transport = CappedTransport(inner, upstream="claude", setting="ANTHROPIC_BASE_URL")

    await transport.aclose()

    assert inner.closed is True


async def test_each_piece_is_decoded_with_only_what_is_left_of_the_cap(monkeypatch):
    """Mutant: the decoder was given twice the cap per piece, so a gzip bomb's piece could decode to 2 MiB."""
    import services.claude_transport as claude_transport

    monkeypatch.setattr(claude_transport, "MAX_RESPONSE_BYTES", 10)
    limits: list[int] = []

    def decode(chunk: bytes, limit: int) -> bytes:
        limits.append(limit)
        return chunk[:limit]

    monkeypatch.setattr(claude_transport, "bounded_decoder", lambda encoding: decode)
    transport = CappedTransport(_InnerTransport(b"abcd", b"efgh"), upstream="claude", setting="ANTHROPIC_BASE_URL")

    response = await transport.handle_async_request(httpx2.Request("POST", "http://claude.test/v1/messages"))
    assert b"".join([chunk async for chunk in response.stream]) == b"abcdefgh"
    assert limits == [11, 7]


# --- The router's own per-attempt cap ------------------------------------------------------------------------


async def test_an_answer_trickled_past_the_timeout_is_cut_at_llm_timeout_seconds(make_router):
    """Mutant: the router's `asyncio.timeout` loosened tenfold. httpx's timeout is per read, so an answer sent
    a piece at a time never trips it: only the router's cap ends the attempt at LLM_TIMEOUT_SECONDS."""
    import json

    from tests.fakes.raw_http import raw_http_server

    body = json.dumps(anthropic_message("a plan")).encode()
    async with raw_http_server(body, pieces=20, pause=0.2) as url:  # 3.8 s in all, each read well under 1 s
        router = await make_router(transport="httpx", llm_max_attempts=1, llm_timeout_seconds=1, anthropic_base_url=url)
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="hi", provider="claude")

    [failure] = caught.value.extras["providers"]
    assert (failure["status"], failure["error"]) == (504, "upstream-timeout")
    assert failure["detail"] == "claude did not answer within LLM_TIMEOUT_SECONDS=1."


async def test_a_claude_error_page_that_is_not_json_is_quoted_in_the_detail(make_router, fakes):
    """Mutant: only the SDK's `api_message` (from a JSON error body) was said; a proxy's HTML page read as
    "no error message"."""
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: Reply(502, text=HTML_ERROR_PAGE, content_type="text/html"))
    router = await make_router(llm_max_attempts=1)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hi", provider="claude")

    [failure] = caught.value.extras["providers"]
    assert failure["detail"] == f"claude failed (502: {HTML_ERROR_PAGE})."
    assert len(fakes.claude.calls()) == 1


# --- Mutants run by a second pass of the review ----------------------------------------------------------------


async def test_the_system_text_counts_towards_the_context_guard(make_router, fakes):
    """Mutant: the estimate left `system` out, so a system text that overflows the window was sent anyway."""
    router = await make_router(local=True, local_llm_context_tokens=512)

    with pytest.raises(PayloadTooLarge) as caught:
        await router.generate(text="hi", system="s" * 2000, provider="local", max_tokens=100)

    assert caught.value.extras["estimated_tokens"] == 0 + 500 + 100
    assert fakes.local.calls() == []


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_from_gemini_on_the_httpx_transport_is_not_followed(make_router, fakes, status):
    """Mutant: the router's httpx client built with `follow_redirects=True`. The redirect test runs on the aiohttp
    transport only; on httpx the request was sent on to the host the 3xx named (a 307 with the prompt)."""
    async with FakeUpstream() as elsewhere:
        fakes.gemini.route(
            "POST", fakes.gemini.path, lambda _: Reply(status, headers={"Location": f"{elsewhere.url}/steal"})
        )
        router = await make_router(transport="httpx", llm_max_attempts=1)

        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(text="secret plans", provider="gemini")

        assert elsewhere.requests == []
    assert len(fakes.gemini.calls()) == 1
    [failure] = caught.value.extras["providers"]
    assert str(status) in failure["detail"]


async def test_a_403_says_our_credentials_were_refused(make_router, fakes):
    """Mutant: 403 dropped from the 401/403 branch; it read "answered 403" instead of naming the key to check."""
    fakes.claude.route(
        "POST", ANTHROPIC_PATH, lambda _: anthropic_error(403, "permission_error", "Your API key lacks permission.")
    )
    router = await make_router()

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="plan", provider="claude")

    [failure] = caught.value.extras["providers"]
    assert failure["detail"] == (
        "claude refused our credentials (403: Your API key lacks permission.). Check ANTHROPIC_API_KEY and "
        "CLAUDE_MODEL."
    )
    assert len(fakes.claude.calls()) == 1  # not retried


async def test_an_answer_of_only_whitespace_is_unusable_and_the_next_provider_answers(make_router, fakes):
    """Mutant: `first_text` took any non-empty string, so a blank answer was returned as the response."""
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=anthropic_message(" \n\t ")))
    router = await make_router()

    result = await router.generate(text=words(600))

    assert (result.provider, result.routing.fallback_from) == ("gemini", "claude")
    assert result.response == "gemini: 600 words received"
    assert result.routing.reason == "600 words > 500: claude; claude failed (upstream-error); fell back to gemini"
    assert len(fakes.claude.calls()) == 1 and len(fakes.gemini.calls()) == 1


async def test_gemini_api_version_in_the_environment_does_not_move_the_endpoint(make_router, fakes, monkeypatch):
    """Mutant: `api_version` not pinned. The SDK's default is v1 too, so nothing else noticed; but then
    GOOGLE_GENAI_API_VERSION=beta in the environment sent prompts to /v1beta/..."""
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "beta")
    router = await make_router(llm_max_attempts=1)

    result = await router.generate(text="hello", provider="gemini")

    assert result.provider == "gemini"
    assert [call.path for call in fakes.gemini.calls()] == [fakes.gemini.path]


@pytest.mark.parametrize(
    ("provider", "answered"),
    [
        ("gemini", "gemini-3.8-flash-001"),
        ("claude", "claude-haiku-4-5-20251001"),
        ("local", "llama3.2:latest"),
    ],
)
async def test_model_used_is_the_model_that_answered(make_router, fakes, provider, answered):
    """Mutants: `model_used` always the configured model name; the fakes answered with that same name, so the
    version the vendor actually served (an alias resolved to a snapshot) was never checked."""
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=gemini_content("ok", model=answered)))
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json=anthropic_message("ok", model=answered)))
    fakes.local.queue("POST", OPENAI_PATH, Reply(200, json=openai_completion("ok", model=answered)))
    router = await make_router(local=True)

    result = await router.generate(text="hello", provider=provider)

    assert (result.provider, result.model_used) == (provider, answered)


async def test_an_answer_decoded_by_the_capped_transport_does_not_keep_the_compressed_length():
    """Mutant: only Content-Encoding dropped. The SDK saw the decoded body under the compressed Content-Length
    (and Transfer-Encoding), headers that no longer describe it; no other test looked at them."""
    import gzip

    decoded = b'{"content": [], "note": "' + b"x" * 200 + b'"}'
    body = gzip.compress(decoded)

    class Gzipped(_InnerTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            headers = {"Content-Encoding": "gzip", "Content-Length": str(len(body)), "Transfer-Encoding": "identity"}
            return httpx2.Response(200, headers=headers, stream=_Pieces((body,)), request=request)

    transport = CappedTransport(Gzipped(), upstream="claude", setting="ANTHROPIC_BASE_URL")

    response = await transport.handle_async_request(httpx2.Request("POST", "http://claude.test/v1/messages"))

    assert b"".join([chunk async for chunk in response.stream]) == decoded
    assert not {"content-encoding", "content-length", "transfer-encoding"} & set(response.headers.keys())
