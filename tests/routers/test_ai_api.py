"""POST /ai-process through the real app and lifespan, against fake LLM servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from routers.deps import get_ai_router
from services.ai_router import Generation, Routing, Usage
from tests.fakes.llm import (
    ANTHROPIC_PATH,
    FakeAnthropic,
    FakeGemini,
    anthropic_error,
    gemini_content,
    gemini_error,
    gemini_prompt,
)
from tests.fakes.server import Reply
from tests.workflows.world import wait_for

GEMINI_KEY = "test-gemini-key-api-0001"
ANTHROPIC_KEY = "test-anthropic-key-api-0001"


class Fakes:
    def __init__(self, claude: FakeAnthropic, gemini: FakeGemini) -> None:
        self.claude = claude
        self.gemini = gemini

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "gemini_api_key": GEMINI_KEY,
            "anthropic_api_key": ANTHROPIC_KEY,
            "gemini_base_url": self.gemini.url,
            "anthropic_base_url": self.claude.url,
            "llm_timeout_seconds": 2.0,
            **overrides,
        }


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with FakeAnthropic() as claude, FakeGemini() as gemini:
        yield Fakes(claude, gemini)


async def _only_run(client) -> dict[str, Any]:
    runs = (await client.get("/runs", params={"kind": "ai.process"})).json()["items"]
    assert len(runs) == 1
    return (await client.get(f"/runs/{runs[0]['id']}")).json()


async def test_an_answer_cut_at_max_tokens_is_flagged_in_the_answer_and_the_ledger(make_client, fakes):
    cut = gemini_content("Step 1: coffee. Step 2:")
    cut["candidates"][0]["finishReason"] = "MAX_TOKENS"
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json=cut))
    async with make_client(**fakes.settings()) as client:
        body = (await client.post("/ai-process", json={"text": "Plan my morning", "max_tokens": 8})).json()
        run = await _only_run(client)

    assert (body["response"], body["truncated"]) == ("Step 1: coffee. Step 2:", True)
    assert run["result"]["truncated"] is True
    assert fakes.gemini.calls()[0].json["generationConfig"]["maxOutputTokens"] == 8


async def test_short_prompt_answer_has_the_documented_shape(make_client, fakes):
    async with make_client(**fakes.settings()) as client:
        response = await client.post(
            "/ai-process", json={"text": "Plan my morning", "system": "Be brief.", "max_tokens": 120}
        )
        body = response.json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()

    assert response.status_code == 200
    assert set(body) == {
        "response",
        "model_used",
        "provider",
        "routing",
        "usage",
        "latency_ms",
        "run_id",
        "dry_run",
        "truncated",
        "refused",
        "stop_reason",
    }
    assert body["dry_run"] is False
    assert body["truncated"] is False and body["refused"] is False
    # The answer names its ledger record.
    assert (run["kind"], run["result"]["provider"]) == ("ai.process", "gemini")
    assert body["response"] == "gemini: 3 words received"
    assert body["model_used"] == "gemini-3.8-flash"
    assert body["provider"] == "gemini"
    assert body["routing"] == {
        "word_count": 3,
        "threshold": 500,
        "rule": "word_threshold",
        "fallback_from": None,
        "reason": "3 words <= 500: gemini",
    }
    assert body["usage"] == {"input_tokens": 13, "output_tokens": 5}
    assert isinstance(body["latency_ms"], int) and body["latency_ms"] >= 0
    [call] = fakes.gemini.calls()
    assert gemini_prompt(call) == "Plan my morning"
    assert call.json["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert call.json["generationConfig"]["maxOutputTokens"] == 120
    assert call.headers["x-goog-api-key"] == GEMINI_KEY


async def test_long_prompt_goes_to_claude(make_client, fakes):
    text = " ".join(["word"] * 812)
    async with make_client(**fakes.settings()) as client:
        response = await client.post("/ai-process", json={"text": text})

    assert response.status_code == 200
    assert response.json()["routing"]["reason"] == "812 words > 500: claude"
    assert fakes.claude.calls()[0].json["messages"] == [{"role": "user", "content": text}]
    assert fakes.gemini.calls() == []


async def test_ledger_keeps_length_and_hash_but_not_the_prompt(make_client, fakes):
    text = "My secret plan for the quarter"
    async with make_client(**fakes.settings()) as client:
        response = await client.post("/ai-process", json={"text": text, "system": "Be kind.", "max_tokens": 50})
        assert response.status_code == 200
        run = await _only_run(client)

    assert run["kind"] == "ai.process" and run["trigger"] == "api" and run["status"] == "ok"
    summary = run["input_summary"]
    assert summary["text_chars"] == len(text)
    assert summary["text_words"] == 6
    assert summary["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert summary["system_sha256"] == hashlib.sha256(b"Be kind.").hexdigest()
    assert (summary["provider"], summary["max_output"]) == ("auto", 50)
    assert "text" not in summary and "system" not in summary
    assert text not in json.dumps(run)
    assert run["result"]["provider"] == "gemini"
    assert run["result"]["model"] == "gemini-3.8-flash"
    assert run["result"]["usage"] == {"input": 13, "output": 5}
    assert isinstance(run["result"]["latency_ms"], int)
    [action] = run["actions"]
    assert (action["skill"], action["operation"], action["status"]) == ("gemini", "generate", "ok")
    assert action["external_id"] == "gemini-3.8-flash"
    assert action["attempts"] == 1


async def test_store_prompts_true_keeps_the_prompt(make_client, fakes):
    text = "My plan for the quarter"
    async with make_client(**fakes.settings(store_prompts=True)) as client:
        assert (await client.post("/ai-process", json={"text": text, "system": "Be kind."})).status_code == 200
        run = await _only_run(client)

    assert run["input_summary"]["text"] == text
    assert run["input_summary"]["system"] == "Be kind."


async def test_fallback_is_visible_in_the_answer_and_the_ledger(make_client, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_error(503, "UNAVAILABLE", "overloaded"))
    async with make_client(**fakes.settings(llm_max_attempts=2)) as client:
        response = await client.post("/ai-process", json={"text": "short"})
        run = await _only_run(client)

    assert response.status_code == 200
    assert response.json()["provider"] == "claude"
    assert response.json()["routing"]["fallback_from"] == "gemini"
    assert run["result"]["routing"]["fallback_from"] == "gemini"
    assert run["actions"][0]["skill"] == "claude"
    assert run["actions"][0]["attempts"] == 3  # two on gemini, one on claude


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_blank_text_is_422(make_client, fakes, text):
    async with make_client(**fakes.settings()) as client:
        response = await client.post("/ai-process", json={"text": text})

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"].endswith("text")
    assert fakes.gemini.calls() == [] and fakes.claude.calls() == []


@pytest.mark.parametrize("how", ["query", "setting"])
async def test_a_dry_run_routes_the_prompt_and_sends_nothing(make_client, fakes, how):
    """Found by a black-box review: `?dry_run=true` and DRY_RUN=true were ignored here, and billed a real call."""
    settings = fakes.settings(dry_run=True) if how == "setting" else fakes.settings()
    path = "/ai-process" if how == "setting" else "/ai-process?dry_run=true"
    async with make_client(**settings) as client:
        response = await client.post(path, json={"text": "word " * 600})
        body = response.json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()
    assert response.status_code == 200, body
    assert (body["dry_run"], body["provider"], body["response"]) == (True, "claude", "")
    assert body["routing"]["reason"] == "600 words > 500: claude; dry run: would send to claude, sent nothing"
    assert fakes.claude.calls() == [] and fakes.gemini.calls() == []
    assert run["status"] == "dry_run" and run["actions"][0]["status"] == "dry_run"


async def test_a_dry_run_and_a_real_call_are_different_requests_for_a_key(make_client, fakes):
    headers = {"Idempotency-Key": "ai-dry-1"}
    async with make_client(**fakes.settings()) as client:
        dry = await client.post("/ai-process?dry_run=true", json={"text": "hello"}, headers=headers)
        real = await client.post("/ai-process", json={"text": "hello"}, headers=headers)
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    assert real.status_code == 422  # a rehearsal's answer is never replayed as a real one
    assert fakes.gemini.calls() == []


async def test_text_over_max_input_chars_is_413(make_client, fakes):
    async with make_client(**fakes.settings(max_input_chars=50)) as client:
        response = await client.post("/ai-process", json={"text": "x" * 51})

    assert response.status_code == 413
    assert "MAX_INPUT_CHARS=50" in response.json()["detail"]
    assert response.json()["limit_chars"] == 50  # characters, not the body's limit_bytes (docs/errors.md)
    assert fakes.gemini.calls() == []


async def test_unknown_provider_is_422(make_client, fakes):
    async with make_client(**fakes.settings()) as client:
        response = await client.post("/ai-process", json={"text": "hi", "provider": "gpt"})
    assert response.status_code == 422
    assert fakes.gemini.calls() == []


async def test_neither_provider_configured_is_503_naming_variables(make_client):
    async with make_client() as client:
        response = await client.post("/ai-process", json={"text": "hello"})
        run = await _only_run(client)

    assert response.status_code == 503
    body = response.json()
    assert body["missing_settings"] == ["GEMINI_API_KEY", "ANTHROPIC_API_KEY"]
    assert run["status"] == "failed"
    assert "503" in run["error"]


async def test_every_provider_failing_is_502_listing_each_and_ledger_failed(make_client, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: gemini_error(500, "INTERNAL", "gemini broke"))
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: anthropic_error(529, "overloaded_error", "Overloaded"))
    async with make_client(**fakes.settings(llm_max_attempts=1)) as client:
        response = await client.post("/ai-process", json={"text": "hello"})
        run = await _only_run(client)

    assert response.status_code == 502
    body = response.json()
    assert body["type"] == "/problems/llm-providers-failed"
    assert [item["provider"] for item in body["providers"]] == ["gemini", "claude"]
    assert "gemini broke" in body["detail"] and "Overloaded" in body["detail"]
    assert run["status"] == "failed" and "llm-providers-failed" in run["error"]
    assert run["actions"][0]["status"] == "failed"
    for secret in (GEMINI_KEY, ANTHROPIC_KEY):
        assert secret not in response.text and secret not in json.dumps(run)


async def test_bad_request_from_the_provider_is_422_and_not_sent_elsewhere(make_client, fakes):
    fakes.gemini.queue(
        "POST", fakes.gemini.path, gemini_error(400, "INVALID_ARGUMENT", "maxOutputTokens must be <= 65536")
    )
    async with make_client(**fakes.settings()) as client:
        response = await client.post("/ai-process", json={"text": "hello", "max_tokens": 65536})
        run = await _only_run(client)

    assert response.status_code == 422
    assert "maxOutputTokens must be <= 65536" in response.json()["detail"]
    assert response.json()["upstream"] == "gemini"
    assert fakes.claude.calls() == []
    assert run["status"] == "failed"


#: Gemini's real answer to a wrong or expired key: HTTP 400 INVALID_ARGUMENT, with the reason in an ErrorInfo.
GEMINI_BAD_KEY_BODY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}


async def test_invalid_gemini_key_falls_back_to_claude(make_client, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: Reply(400, json=GEMINI_BAD_KEY_BODY))
    async with make_client(**fakes.settings(llm_max_attempts=2)) as client:
        response = await client.post("/ai-process", json={"text": "hello"})
        run = await _only_run(client)

    assert response.status_code == 200
    body = response.json()
    assert body["provider"] == "claude"
    assert body["response"] == "claude: 1 words received"
    assert body["routing"]["fallback_from"] == "gemini"
    assert body["routing"]["reason"] == (
        "1 words <= 500: gemini; gemini failed (400 upstream-error); fell back to claude"
    )
    [gemini_call] = fakes.gemini.calls()  # a bad key is not retried
    assert gemini_call.headers["x-goog-api-key"] == GEMINI_KEY
    [claude_call] = fakes.claude.calls()
    assert claude_call.json["messages"] == [{"role": "user", "content": "hello"}]
    assert run["status"] == "ok"
    assert run["actions"][0]["skill"] == "claude"
    assert run["actions"][0]["attempts"] == 2  # one on gemini, one on claude


async def test_invalid_gemini_key_alone_is_502_naming_the_setting_not_the_key(make_client, fakes):
    fakes.gemini.route("POST", fakes.gemini.path, lambda _: Reply(400, json=GEMINI_BAD_KEY_BODY))
    async with make_client(**fakes.settings(anthropic_api_key=None)) as client:
        response = await client.post("/ai-process", json={"text": "hello"})

    assert response.status_code == 502
    body = response.json()
    assert body["type"] == "/problems/llm-providers-failed"
    assert body["providers"] == [
        {
            "provider": "gemini",
            "status": 502,
            "error": "upstream-error",
            "detail": "gemini refused our credentials (400 API_KEY_INVALID: API key not valid. Please pass a valid "
            "API key.). GEMINI_API_KEY is not a valid Gemini API key (wrong, expired or deleted): create one in "
            "Google AI Studio, set GEMINI_API_KEY in the environment or .env, and restart.",
        }
    ]
    assert GEMINI_KEY not in response.text
    assert len(fakes.gemini.calls()) == 1


async def test_every_provider_rate_limited_is_429_with_the_smallest_retry_after(make_client, fakes):
    fakes.gemini.route(
        "POST",
        fakes.gemini.path,
        lambda _: gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", headers={"Retry-After": "7"}),
    )
    fakes.claude.route(
        "POST",
        ANTHROPIC_PATH,
        lambda _: anthropic_error(429, "rate_limit_error", "Rate limit exceeded", headers={"retry-after": "9"}),
    )
    async with make_client(**fakes.settings(llm_max_attempts=1)) as client:
        response = await client.post("/ai-process", json={"text": "hello"})
        run = await _only_run(client)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json() == {
        "type": "/problems/upstream-rate-limited",
        "title": "Upstream rate limit reached",
        "status": 429,
        "detail": "Every LLM provider is rate limiting us; try again in 7 s. "
        "gemini: gemini is rate limiting us (Resource has been exhausted.); "
        "claude: claude is rate limiting us (Rate limit exceeded).",
        "instance": "/ai-process",
        "request_id": response.headers["x-request-id"],
        "upstream": "llm",
        "retry_after": 7,
        "providers": [
            {
                "provider": "gemini",
                "status": 429,
                "error": "upstream-rate-limited",
                "detail": "gemini is rate limiting us (Resource has been exhausted.).",
            },
            {
                "provider": "claude",
                "status": 429,
                "error": "upstream-rate-limited",
                "detail": "claude is rate limiting us (Rate limit exceeded).",
            },
        ],
        "run_id": run["id"],  # the problem names its ledger record
    }
    assert len(fakes.gemini.calls()) == 1 and len(fakes.claude.calls()) == 1
    assert run["status"] == "failed" and "upstream-rate-limited" in run["error"]


async def test_rate_limit_and_outage_mixed_stay_502_without_retry_after(make_client, fakes):
    fakes.gemini.route(
        "POST",
        fakes.gemini.path,
        lambda _: gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", headers={"Retry-After": "7"}),
    )
    fakes.claude.route("POST", ANTHROPIC_PATH, lambda _: anthropic_error(529, "overloaded_error", "Overloaded"))
    async with make_client(**fakes.settings(llm_max_attempts=1)) as client:
        response = await client.post("/ai-process", json={"text": "hello"})

    assert response.status_code == 502
    assert "retry-after" not in response.headers
    body = response.json()
    assert body["type"] == "/problems/llm-providers-failed"
    assert [(p["provider"], p["error"]) for p in body["providers"]] == [
        ("gemini", "upstream-rate-limited"),
        ("claude", "upstream-error"),
    ]
    assert len(fakes.gemini.calls()) == 1 and len(fakes.claude.calls()) == 1


async def test_timeout_on_the_only_provider_is_504_with_the_timeout_named(make_client, fakes):
    fakes.claude.queue("POST", ANTHROPIC_PATH, Reply(200, json={}, delay=2.0))
    settings = fakes.settings(gemini_api_key=None, llm_timeout_seconds=0.3, llm_max_attempts=1)
    async with make_client(**settings) as client:
        response = await client.post("/ai-process", json={"text": "hello"})

    assert response.status_code == 504
    assert response.json()["type"].endswith("/problems/upstream-timeout")
    assert response.json()["providers"][0]["error"] == "upstream-timeout"
    assert "LLM_TIMEOUT_SECONDS=0.3" in response.json()["detail"]


async def test_idempotency_key_replays_without_a_second_generation(make_client, fakes):
    headers = {"Idempotency-Key": "ai-process-test-1"}
    async with make_client(**fakes.settings()) as client:
        first = await client.post("/ai-process", json={"text": "hello"}, headers=headers)
        second = await client.post("/ai-process", json={"text": "hello"}, headers=headers)
        different = await client.post("/ai-process", json={"text": "other"}, headers=headers)

    assert first.status_code == second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert different.status_code == 422
    assert len(fakes.gemini.calls()) == 1


async def test_needs_the_api_key(make_client, fakes):
    async with make_client(**fakes.settings(app_api_key="k" * 32)) as client:
        refused = await client.post("/ai-process", json={"text": "hello"})
        allowed = await client.post("/ai-process", json={"text": "hello"}, headers={"X-API-Key": "k" * 32})
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert len(fakes.gemini.calls()) == 1


class RecordingRouter:
    """A stand-in AIRouter for the dependency-override test: records what the route passed."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def generate(self, **kwargs: Any) -> Generation:
        self.calls.append(kwargs)
        return Generation(
            response="from the override",
            model_used="stub-model",
            provider="local",
            routing=Routing(word_count=1, threshold=500, rule="forced", fallback_from=None, reason="override"),
            usage=Usage(input_tokens=None, output_tokens=None),
            latency_ms=0,
        )


async def test_router_is_a_dependency_tests_can_override(make_client):
    stub = RecordingRouter()
    async with make_client() as client:
        client.app.dependency_overrides[get_ai_router] = lambda: stub
        response = await client.post(
            "/ai-process", json={"text": "hi", "system": "s", "max_tokens": 9, "provider": "local"}
        )

    assert response.status_code == 200
    assert response.json()["response"] == "from the override"
    assert stub.calls == [{"text": "hi", "system": "s", "max_tokens": 9, "provider": "local", "dry_run": False}]


def ai_process_scope(body: bytes) -> dict[str, Any]:
    """The ASGI scope of a POST /ai-process carrying `body`: the tests below drive the app by hand, with their own
    `receive`, to control when (or whether) the client goes away."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/ai-process",
        "raw_path": b"/ai-process",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def test_client_disconnect_cancels_the_upstream_call(make_client, fakes):
    """Starlette does not cancel a handler when its client leaves; the route must notice and cancel."""
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json={}, delay=5.0))
    body = json.dumps({"text": "short prompt"}).encode()
    async with make_client(**fakes.settings(llm_timeout_seconds=10)) as client:
        body_sent = False
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await fakes.gemini.received.wait()  # hang up once the upstream call is in flight
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        started = time.monotonic()
        await asyncio.wait_for(client.app(ai_process_scope(body), receive, send), timeout=4)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.2)
        run = await _only_run(client)

    assert elapsed < 2.0  # not the fake's 5 s
    assert fakes.gemini.cancelled == 1  # the fake saw the call dropped
    assert fakes.claude.calls() == []  # a disconnect is not a provider failure: no fallback
    assert run["status"] == "failed"
    assert "499 client-closed-request" in run["error"]


def _tasks_running(qualname: str) -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if getattr(task.get_coro(), "__qualname__", None) == qualname]


async def test_a_cancelled_handler_cancels_its_llm_call(make_client, fakes):
    """A request cancelled from outside (a server shutting down past its grace) must take the LLM call, which runs
    as its own task, down with it: left running, it would bill for nobody. Pinned by a mutation review."""
    fakes.gemini.queue("POST", fakes.gemini.path, Reply(200, json={}, delay=30.0))
    body = json.dumps({"text": "short prompt"}).encode()
    async with make_client(**fakes.settings(llm_timeout_seconds=60)) as client:
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            # The client never hangs up: only the cancellation can end this request.
            return await asyncio.get_running_loop().create_future()

        async def send(message: dict[str, Any]) -> None:
            pass

        handler = asyncio.create_task(client.app(ai_process_scope(body), receive, send))
        try:
            await asyncio.wait_for(fakes.gemini.received.wait(), timeout=4)
            [llm_call] = _tasks_running("AIRouter.generate")
            [watcher] = _tasks_running("_disconnected")

            handler.cancel()
            done, _ = await asyncio.wait({handler}, timeout=4)  # not the fake's 30 s

            assert handler in done and handler.cancelled()
            assert llm_call.cancelled() and watcher.done()
            await wait_for(lambda: fakes.gemini.cancelled == 1)  # the fake saw the call dropped
        finally:
            for task in (handler, *_tasks_running("AIRouter.generate")):
                task.cancel()
    assert len(fakes.gemini.calls()) == 1 and fakes.claude.calls() == []  # no retry, no fallback


async def test_an_answer_echoing_the_providers_key_is_scrubbed_everywhere_it_goes(make_client, fakes, database_url):
    """A gateway or endpoint that echoes the request's headers in a 200 answer (found by a security review): the
    key reached the /ai-process answer, its stored Idempotency-Key replay, and (through the plan) the briefing's
    Slack post. The answer and the model name are upstream text like any error message, and are scrubbed."""
    from tests.core.test_secret_redaction import assert_nowhere, dump_database

    def echo(request) -> Reply:
        sent = request.headers.get("x-goog-api-key", "")
        return Reply(200, json=gemini_content(f"you sent x-goog-api-key: {sent}", model=f"gemini-{sent}"))

    fakes.gemini.route("POST", fakes.gemini.path, echo)
    headers = {"Idempotency-Key": "echo-1"}
    async with make_client(**fakes.settings()) as client:
        first = await client.post("/ai-process", json={"text": "hello", "provider": "gemini"}, headers=headers)
        replay = await client.post("/ai-process", json={"text": "hello", "provider": "gemini"}, headers=headers)
    assert fakes.gemini.calls()[0].headers["x-goog-api-key"] == GEMINI_KEY  # what was echoed is the real key
    assert first.status_code == 200, first.text
    assert first.json()["response"] == "you sent x-goog-api-key: ***"
    assert first.json()["model_used"] == "gemini-***"
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == first.json()
    assert_nowhere([GEMINI_KEY], answer=first.text, replay=replay.text, database=dump_database(database_url))
