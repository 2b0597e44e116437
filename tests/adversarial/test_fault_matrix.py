"""The fault matrix, end to end: every fault against every skill and provider, through the real app.

For each (endpoint x fault): the answer is the mapped problem (status and type), the upstream saw a bounded
number of attempts (counted at the fake) equal to the ledger's count, and the ledger row says `failed` with
the reason. No secret reaches the answer or the record.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakes.llm import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    FakeAnthropic,
    FakeGemini,
    FakeOpenAI,
    anthropic_message,
    gemini_content,
    openai_completion,
    rate_limited_reply,
    server_error_reply,
)
from tests.fakes.raw_http import raw_http_server
from tests.fakes.raw_tcp import raw_tcp_server
from tests.fakes.server import FakeUpstream, Reply
from tests.routers.test_timers_api import WID, entry

PROBLEM = "application/problem+json"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def only_run(client: httpx.AsyncClient, kind: str) -> dict[str, Any]:
    page = (await client.get("/runs", params={"kind": kind})).json()
    assert page["total"] == 1, page
    return (await client.get(f"/runs/{page['items'][0]['id']}")).json()


def assert_failed_with_reason(run: dict[str, Any], status: int, slug: str, attempts: int) -> None:
    assert run["status"] == "failed", run
    assert slug in (run["error"] or ""), run["error"]
    action = run["actions"][-1]
    assert action["status"] == "failed", action
    assert action["error"].startswith(f"{status} {slug}: "), action["error"]
    assert action["attempts"] == attempts, action


# --- Slack, Toggl, Twilio: one table ----------------------------------------------------------------------

SLACK_TOKEN = "xoxb-matrix-secret-0001"
TOGGL_TOKEN = "toggl-matrix-secret-0001"
TWILIO_SID = "AC00000000000000000000000000000009"
TWILIO_TOKEN = "twilio-matrix-secret-0001"


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # the ledger run's kind
    endpoint: str
    body: dict[str, Any] | None
    method: str  # the upstream call the fault is put on
    path: str
    secret: str
    settings: Callable[[str], dict[str, Any]]  # base URL of the fake -> settings
    #: Attempts at most (the skill's ATTEMPTS): every fault must stay within it.
    attempts: int = 3
    #: Other routes the fake answers normally (a stop reads the running timer first).
    setup: Callable[[FakeUpstream], None] | None = None
    #: Attempts the ledger counts before the faulty call (a stop's read of the running timer).
    before: int = 0


def _toggl_current_running(fake: FakeUpstream) -> None:
    fake.route("GET", "/api/v9/me/time_entries/current", lambda _: Reply(json=entry()))


def _toggl_nothing_running(fake: FakeUpstream) -> None:
    fake.route("GET", "/api/v9/me/time_entries/current", lambda _: Reply(json=None))


TARGETS = {
    "slack": Target(
        name="slack",
        kind="slack.notify",
        endpoint="/slack-notify",
        body={"message": "hi"},
        method="POST",
        path="/api/chat.postMessage",
        secret=SLACK_TOKEN,
        settings=lambda url: {
            "slack_bot_token": SLACK_TOKEN,
            "slack_base_url": f"{url}/api/",
            "slack_default_channel": "#general",
        },
    ),
    "toggl-start": Target(
        name="toggl",
        kind="toggl.start_timer",
        endpoint="/start-timer",
        body={"task_name": "Deep Work"},
        method="POST",
        path=f"/api/v9/workspaces/{WID}/time_entries",
        secret=TOGGL_TOKEN,
        settings=lambda url: {
            "toggl_api_token": TOGGL_TOKEN,
            "toggl_workspace_id": WID,
            "toggl_base_url": f"{url}/api/v9",
        },
        setup=_toggl_nothing_running,
    ),
    "toggl-stop": Target(
        name="toggl",
        kind="toggl.stop_timer",
        endpoint="/stop-timer",
        body=None,
        method="PATCH",
        path=f"/api/v9/workspaces/{WID}/time_entries/111222333/stop",
        secret=TOGGL_TOKEN,
        settings=lambda url: {
            "toggl_api_token": TOGGL_TOKEN,
            "toggl_workspace_id": WID,
            "toggl_base_url": f"{url}/api/v9",
        },
        setup=_toggl_current_running,
        before=1,
    ),
    "whatsapp": Target(
        name="twilio",
        kind="whatsapp.send",
        endpoint="/whatsapp-send",
        body={"to": "+15551234567", "body": "hi"},
        method="POST",
        path=f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
        secret=TWILIO_TOKEN,
        settings=lambda url: {
            "twilio_account_sid": TWILIO_SID,
            "twilio_auth_token": TWILIO_TOKEN,
            "twilio_base_url": url,
        },
    ),
}

HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


def _rate_limited(target: str, headers: dict[str, str]) -> Reply:
    if target == "slack":
        return Reply(429, json={"ok": False, "error": "ratelimited"}, headers=headers)
    if target == "whatsapp":
        return Reply(429, json={"code": 20429, "message": "Too Many Requests"}, headers=headers)
    return Reply(429, json="Too many requests", headers=headers)


#: fault -> (reply, status, slug, attempts per target: None means "the target's ATTEMPTS")
HTTP_FAULTS: dict[str, tuple[Callable[[str], Reply], int, str, dict[str, int | None]]] = {
    "429-retry-after": (
        lambda t: _rate_limited(t, {"Retry-After": "0"}),
        429,
        "upstream-rate-limited",
        {"slack": None, "toggl-start": None, "toggl-stop": None, "whatsapp": None},
    ),
    "429-bare": (
        lambda t: _rate_limited(t, {}),
        429,
        "upstream-rate-limited",
        {"slack": None, "toggl-start": None, "toggl-stop": None, "whatsapp": None},
    ),
    "500": (
        lambda t: Reply(500, json={"error": "internal"}),
        502,
        "upstream-error",
        {"slack": 1, "toggl-start": 1, "toggl-stop": None, "whatsapp": 1},
    ),
    "503": (
        lambda t: Reply(503, text="unavailable"),
        503,
        "upstream-unavailable",
        {"slack": 1, "toggl-start": 1, "toggl-stop": None, "whatsapp": 1},
    ),
    "html-502": (
        lambda t: Reply(502, text=HTML, content_type="text/html"),
        502,
        "upstream-error",
        {"slack": 1, "toggl-start": 1, "toggl-stop": None, "whatsapp": 1},
    ),
    "html-200": (
        lambda t: Reply(200, text=HTML, content_type="text/html"),
        502,
        "upstream-error",
        {"slack": 1, "toggl-start": 1, "toggl-stop": 1, "whatsapp": 1},
    ),
    "invalid-json-200": (
        lambda t: Reply(200 if t != "whatsapp" else 201, text='{"ok": tru', content_type="application/json"),
        502,
        "upstream-error",
        {"slack": 1, "toggl-start": 1, "toggl-stop": 1, "whatsapp": 1},
    ),
    "timeout": (
        lambda t: Reply(200, json={}, delay=1.5),
        504,
        "upstream-timeout",
        {"slack": 1, "toggl-start": 1, "toggl-stop": None, "whatsapp": 1},
    ),
    "reset": (
        lambda t: Reply(drop=True),
        503,
        "upstream-unavailable",
        {"slack": 1, "toggl-start": 1, "toggl-stop": None, "whatsapp": 1},
    ),
    # 200, headers and the start of a body, then the connection closes: a reset mid-answer.
    "truncated": (
        lambda t: Reply(200, truncate=True),
        503,
        "upstream-unavailable",
        {"slack": 1, "toggl-start": 1, "toggl-stop": None, "whatsapp": 1},
    ),
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


async def _call(client: httpx.AsyncClient, target: Target) -> httpx.Response:
    if target.body is None:
        return await client.post(target.endpoint)
    return await client.post(target.endpoint, json=target.body)


@pytest.mark.parametrize("fault", list(HTTP_FAULTS))
@pytest.mark.parametrize("which", list(TARGETS))
async def test_http_skill_fault_is_mapped_bounded_and_recorded(make_client, fake, which, fault):
    target = TARGETS[which]
    make_reply, status, slug, per_target = HTTP_FAULTS[fault]
    expected = per_target[which] or target.attempts
    if target.setup is not None:
        target.setup(fake)
    fake.route(target.method, target.path, lambda _: make_reply(which))
    async with make_client(**target.settings(fake.url), http_timeout_seconds=0.5) as client:
        response = await _call(client, target)
        run = await only_run(client, target.kind)

    body = response.json()
    assert response.status_code == status, body
    assert response.headers["content-type"] == PROBLEM
    assert body["type"] == f"/problems/{slug}"
    assert body["run_id"] == run["id"]
    assert len(fake.calls(target.method, target.path)) == expected
    assert_failed_with_reason(run, status, slug, target.before + expected)
    assert target.secret not in response.text and target.secret not in json.dumps(run)
    if fault == "429-retry-after":
        assert response.headers["retry-after"] == "0"
    if fault == "429-bare":
        assert "retry-after" not in response.headers


@pytest.mark.parametrize("which", list(TARGETS))
async def test_http_skill_connection_refused_is_503_bounded_and_recorded(make_client, which):
    target = TARGETS[which]
    port = closed_port()
    settings = target.settings(f"http://127.0.0.1:{port}")
    if which == "toggl-stop":
        settings["toggl_base_url"] = f"http://127.0.0.1:{port}/api/v9"
    async with make_client(**settings) as client:
        response = await _call(client, target)
        run = await only_run(client, target.kind)
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "/problems/upstream-unavailable"
    # Nothing can count refused connections at a fake: the ledger's count is the bound.
    assert_failed_with_reason(run, 503, "upstream-unavailable", target.attempts)


@pytest.mark.parametrize("which", list(TARGETS))
async def test_http_skill_answer_trickled_past_the_timeout_is_504_bounded_and_recorded(make_client, which):
    target = TARGETS[which]
    answers = {
        "slack": {"ok": True, "channel": "C0000000001", "ts": "1.000001"},
        "toggl-start": entry(),
        "toggl-stop": entry(),
        "whatsapp": {"sid": "SM00000000000000000000000000000001", "status": "queued"},
    }
    body = json.dumps(answers[which]).encode()
    requests: list[bytes] = []
    # The whole body takes ~len(body) * 0.05 s, each byte well within the 0.5 s timeout.
    async with raw_http_server(body, pieces=len(body), pause=0.05, requests=requests) as url:
        async with make_client(**target.settings(url), http_timeout_seconds=0.5) as client:
            response = await _call(client, target)
            run = await only_run(client, target.kind)
    assert response.status_code == 504, response.text
    assert response.json()["type"] == "/problems/upstream-timeout"
    assert 1 <= len(requests) <= target.attempts + 1  # +1: a stop's read of the running timer
    action = run["actions"][-1]
    assert_failed_with_reason(run, 504, "upstream-timeout", action["attempts"])
    assert 1 <= action["attempts"] <= target.attempts


# --- LLM providers and the router's fallback, through POST /ai-process ----------------------------------

GEMINI_KEY = "gemini-matrix-secret-0001"
ANTHROPIC_KEY = "anthropic-matrix-secret-0001"
LOCAL_KEY = "local-matrix-secret-0001"
VENDORS = ["gemini", "claude", "local"]


#: fault -> (reply, status when one provider is forced, slug of that answer, attempts per provider)
LLM_FAULTS: dict[str, tuple[Callable[[str], Reply], int, str, int]] = {
    "429-retry-after": (lambda v: rate_limited_reply(v, {"Retry-After": "0"}), 429, "upstream-rate-limited", 2),
    "429-bare": (lambda v: rate_limited_reply(v, {}), 429, "upstream-rate-limited", 2),
    "500": (lambda v: server_error_reply(v, 500), 502, "llm-providers-failed", 2),
    "503": (lambda v: server_error_reply(v, 503), 502, "llm-providers-failed", 2),
    "html-502": (lambda v: Reply(502, text=HTML, content_type="text/html"), 502, "llm-providers-failed", 2),
    "html-200": (lambda v: Reply(200, text=HTML, content_type="text/html"), 502, "llm-providers-failed", 1),
    "invalid-json-200": (
        lambda v: Reply(200, text='{"candidates": [', content_type="application/json"),
        502,
        "llm-providers-failed",
        1,
    ),
    "timeout": (lambda v: Reply(200, json={}, delay=2.5), 504, "upstream-timeout", 2),
    "reset": (lambda v: Reply(drop=True), 502, "llm-providers-failed", 2),
    "truncated": (lambda v: Reply(200, truncate=True), 502, "llm-providers-failed", 2),
}


@dataclass
class LLMFakes:
    claude: FakeAnthropic
    gemini: FakeGemini
    local: FakeOpenAI

    def fake(self, vendor: str) -> tuple[FakeUpstream, str]:
        return {
            "gemini": (self.gemini, self.gemini.path),
            "claude": (self.claude, ANTHROPIC_PATH),
            "local": (self.local, OPENAI_PATH),
        }[vendor]

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "gemini_api_key": GEMINI_KEY,
            "anthropic_api_key": ANTHROPIC_KEY,
            "gemini_base_url": self.gemini.url,
            "anthropic_base_url": self.claude.url,
            "local_llm_base_url": self.local.base_url,
            "local_llm_model": "llama3.2",
            "local_llm_api_key": LOCAL_KEY,
            "llm_timeout_seconds": 1.0,
            "llm_max_attempts": 2,
            **overrides,
        }


@pytest.fixture
async def llm() -> AsyncIterator[LLMFakes]:
    async with FakeAnthropic() as claude, FakeGemini() as gemini, FakeOpenAI() as local:
        yield LLMFakes(claude=claude, gemini=gemini, local=local)


@pytest.fixture
def _collected() -> None:
    """As tests/services/test_provider_faults.py: no full garbage collection inside a 1 s attempt."""
    gc.collect()


def _no_llm_secret(response: httpx.Response, run: dict[str, Any]) -> None:
    for secret in (GEMINI_KEY, ANTHROPIC_KEY, LOCAL_KEY):
        assert secret not in response.text and secret not in json.dumps(run)


@pytest.mark.usefixtures("_collected")
@pytest.mark.parametrize("fault", list(LLM_FAULTS))
@pytest.mark.parametrize("vendor", VENDORS)
async def test_llm_provider_fault_is_mapped_bounded_and_recorded(make_client, llm, vendor, fault):
    make_reply, status, slug, attempts = LLM_FAULTS[fault]
    fake, path = llm.fake(vendor)
    fake.route("POST", path, lambda _: make_reply(vendor))
    async with make_client(**llm.settings()) as client:
        response = await client.post("/ai-process", json={"text": "hello", "provider": vendor})
        run = await only_run(client, "ai.process")

    body = response.json()
    assert response.status_code == status, body
    assert response.headers["content-type"] == PROBLEM
    assert body["type"] == f"/problems/{slug}"
    assert [p["provider"] for p in body["providers"]] == [vendor]
    assert body["run_id"] == run["id"]
    assert len(fake.calls("POST", path)) == attempts
    assert_failed_with_reason(run, status, slug, attempts)
    _no_llm_secret(response, run)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_llm_provider_connection_refused_is_mapped_bounded_and_recorded(make_client, llm, vendor):
    dead = f"http://127.0.0.1:{closed_port()}"
    overrides = {
        "gemini": {"gemini_base_url": dead},
        "claude": {"anthropic_base_url": dead},
        "local": {"local_llm_base_url": dead + "/v1"},
    }[vendor]
    async with make_client(**llm.settings(**overrides)) as client:
        response = await client.post("/ai-process", json={"text": "hello", "provider": vendor})
        run = await only_run(client, "ai.process")
    assert response.status_code == 502, response.text
    assert response.json()["type"] == "/problems/llm-providers-failed"
    assert response.json()["providers"][0]["error"] == "upstream-unavailable"
    assert_failed_with_reason(run, 502, "llm-providers-failed", 2)
    _no_llm_secret(response, run)


def _answer_of(vendor: str) -> bytes:
    if vendor == "claude":
        return json.dumps(anthropic_message("trickled")).encode()
    if vendor == "gemini":
        return json.dumps(gemini_content("trickled")).encode()
    return json.dumps(openai_completion("trickled")).encode()


@pytest.mark.parametrize("vendor", VENDORS)
async def test_llm_answer_trickled_past_the_timeout_is_504_bounded_and_recorded(make_client, llm, vendor):
    requests: list[bytes] = []
    body = _answer_of(vendor)
    async with raw_http_server(body, pieces=len(body), pause=0.05, requests=requests) as url:
        overrides = {
            "gemini": {"gemini_base_url": url},
            "claude": {"anthropic_base_url": url},
            "local": {"local_llm_base_url": url + "/v1"},
        }[vendor]
        async with make_client(**llm.settings(**overrides)) as client:
            response = await client.post("/ai-process", json={"text": "hello", "provider": vendor})
            run = await only_run(client, "ai.process")
    assert response.status_code == 504, response.text
    assert response.json()["type"] == "/problems/upstream-timeout"
    assert len(requests) == 2
    assert_failed_with_reason(run, 504, "upstream-timeout", 2)


@pytest.mark.usefixtures("_collected")
@pytest.mark.parametrize("fault", list(LLM_FAULTS))
async def test_router_fallback_with_every_provider_failing_is_mapped_bounded_and_recorded(make_client, llm, fault):
    make_reply, _, _, attempts = LLM_FAULTS[fault]
    for vendor in VENDORS:
        fake, path = llm.fake(vendor)
        fake.route("POST", path, lambda _, vendor=vendor: make_reply(vendor))
    async with make_client(**llm.settings()) as client:
        response = await client.post("/ai-process", json={"text": "hello"})
        run = await only_run(client, "ai.process")

    body = response.json()
    # Every provider limiting us is a 429, every one timing out a 504; anything else a 502.
    status, slug = {
        "429-retry-after": (429, "upstream-rate-limited"),
        "429-bare": (429, "upstream-rate-limited"),
        "timeout": (504, "upstream-timeout"),
    }.get(fault, (502, "llm-providers-failed"))
    assert response.status_code == status, body
    assert body["type"] == f"/problems/{slug}"
    assert [p["provider"] for p in body["providers"]] == VENDORS  # the fallback order: gemini, claude, local
    for vendor in VENDORS:
        fake, path = llm.fake(vendor)
        assert len(fake.calls("POST", path)) == attempts, vendor
    assert_failed_with_reason(run, status, slug, attempts * len(VENDORS))
    _no_llm_secret(response, run)


# --- SMTP, through POST /send-email: the faults as an SMTP server shows them --------------------------------

MAIL = {"to_address": "ann@example.com", "subject": "Plan", "body": "Deep work first."}
SMTP_PASSWORD = "smtp-matrix-secret-0001"

#: What the scripted server does at a step: a reply (bytes), "reset" (abort the connection), "silent" (say nothing
#: until the client leaves) or (seconds, reply) (answer late).
Step = bytes | str | tuple[float, bytes]

_NORMAL: dict[str, Step] = {
    "GREETING": b"220 matrix.test ESMTP\r\n",
    "EHLO": b"250-matrix.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
    "HELO": b"250 matrix.test\r\n",
    "MAIL": b"250 2.1.0 OK\r\n",
    "RCPT": b"250 2.1.5 OK\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "END": b"250 2.0.0 Queued\r\n",
    "RSET": b"250 OK\r\n",
    "NOOP": b"250 OK\r\n",
    "QUIT": b"221 Bye\r\n",
}


@asynccontextmanager
async def scripted_smtp(script: dict[str, Step]) -> AsyncIterator[tuple[int, list[int]]]:
    """A plain SMTP server on 127.0.0.1 that follows `script` (over _NORMAL); yields its port and a list that
    grows by one per connection."""
    steps = {**_NORMAL, **script}

    async def act(step: Step, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Do one step; False when the connection is over."""
        if step == "reset":
            writer.transport.abort()
            return False
        if step == "silent":
            await reader.read()
            return False
        if isinstance(step, tuple):
            await asyncio.sleep(step[0])
            step = step[1]
        assert isinstance(step, bytes)
        writer.write(step)
        await writer.drain()
        return not step.startswith(b"221")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not await act(steps["GREETING"], reader, writer):
                return
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].strip().upper().decode(errors="replace")
                if not await act(steps.get(verb, b"502 5.5.2 Command not recognised\r\n"), reader, writer):
                    return
                if verb == "DATA" and steps["DATA"] == _NORMAL["DATA"]:
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    if not await act(steps["END"], reader, writer):
                        return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async with raw_tcp_server(handle) as served:
        yield served


def smtp_settings(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "smtp_from": "Orchestrator <bot@example.com>",
        "smtp_timeout_seconds": 0.5,
        **extra,
    }


#: fault -> (script, status, slug, connections)
SMTP_FAULTS: dict[str, tuple[dict[str, Step], int, str, int]] = {
    # 4xx / 5xx replies
    "greeting-421": ({"GREETING": b"421 4.3.2 Too busy\r\n"}, 503, "upstream-unavailable", 3),
    "greeting-554": ({"GREETING": b"554 5.3.2 No service for you\r\n"}, 502, "upstream-error", 1),
    # With SMTP_SECURITY=none and no login, EHLO comes after the connection phase: a deferral, not retried.
    "ehlo-421": ({"EHLO": b"421 4.3.2 Shutting down\r\n"}, 503, "upstream-unavailable", 1),
    "mail-451": ({"MAIL": b"451 4.3.0 Try later\r\n"}, 503, "upstream-unavailable", 1),
    "mail-550": ({"MAIL": b"550 5.7.1 Sender rejected\r\n"}, 502, "upstream-error", 1),
    "rcpt-451": ({"RCPT": b"451 4.7.1 Greylisted\r\n"}, 503, "upstream-unavailable", 1),
    "rcpt-550": ({"RCPT": b"550 5.1.1 No such user\r\n"}, 422, "invalid-input", 1),
    "data-451": ({"END": b"451 4.3.0 Queue full\r\n"}, 503, "upstream-unavailable", 1),
    "data-554": ({"END": b"554 5.7.1 Rejected as spam\r\n"}, 502, "upstream-error", 1),
    "data-cmd-554": ({"DATA": b"554 5.5.1 No valid recipients\r\n"}, 502, "upstream-error", 1),
    # resets
    "reset-at-greeting": ({"GREETING": "reset"}, 503, "upstream-unavailable", 3),
    "reset-after-data": ({"END": "reset"}, 502, "upstream-error", 1),
    # timeouts and slow answers
    "silent-greeting": ({"GREETING": "silent"}, 504, "upstream-timeout", 3),
    "slow-after-data": ({"END": (1.0, _NORMAL["END"])}, 504, "upstream-timeout", 1),
    "silent-after-data": ({"END": "silent"}, 504, "upstream-timeout", 1),
    # not SMTP at all (the HTML-page analogue)
    "http-greeting": (
        {"GREETING": b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>no</html>\r\n"},
        502,
        "upstream-error",
        1,
    ),
    "garbage-ehlo": ({"EHLO": b"<html><body>502 Bad Gateway</body></html>\r\n"}, 502, "upstream-error", 1),
}

#: Failures before the message could have been handed over (no DATA yet), with SMTP_SECURITY=none and no login:
#: the script, the answer's status, and how many connections it took (a dropped or stalled one is retried).
NOTHING_HANDED_OVER: dict[str, tuple[dict[str, Step], int, int]] = {
    "reset-at-ehlo": ({"EHLO": "reset"}, 503, 3),
    "slow-ehlo": ({"EHLO": (1.0, _NORMAL["EHLO"])}, 504, 3),
    "reset-at-mail": ({"MAIL": "reset"}, 503, 3),
    "reset-at-rcpt": ({"RCPT": "reset"}, 503, 3),
    "sender-refused": ({"MAIL": b"550 5.7.1 Sender rejected\r\n"}, 502, 1),  # a 502 whose key is released
}


@pytest.mark.parametrize("fault", list(SMTP_FAULTS))
async def test_smtp_fault_is_mapped_bounded_and_recorded(make_client, fault):
    script, status, slug, connections = SMTP_FAULTS[fault]
    async with scripted_smtp(script) as (port, seen):
        async with make_client(**smtp_settings(port)) as client:
            response = await client.post("/send-email", json=MAIL)
            run = await only_run(client, "email.send")
    body = response.json()
    assert response.status_code == status, body
    assert response.headers["content-type"] == PROBLEM
    assert body["type"] == f"/problems/{slug}"
    assert body["run_id"] == run["id"]
    assert len(seen) == connections
    assert_failed_with_reason(run, status, slug, connections)


async def test_smtp_connection_refused_is_503_bounded_and_recorded(make_client):
    async with make_client(**smtp_settings(closed_port())) as client:
        response = await client.post("/send-email", json=MAIL)
        run = await only_run(client, "email.send")
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "/problems/upstream-unavailable"
    assert_failed_with_reason(run, 503, "upstream-unavailable", 3)


@pytest.mark.parametrize("fault", list(NOTHING_HANDED_OVER))
async def test_smtp_failure_before_data_is_not_an_unknown_outcome(make_client, fault):
    """Found by this audit: after connecting, every failure read "may or may not have been delivered", though
    no DATA was sent; it was never retried, and the Idempotency-Key replayed it instead of sending."""
    script, status, connections = NOTHING_HANDED_OVER[fault]
    headers = {"Idempotency-Key": f"smtp-{fault}"}
    async with scripted_smtp(script) as (port, seen):
        async with make_client(**smtp_settings(port)) as client:
            first = await client.post("/send-email", json=MAIL, headers=headers)
    async with scripted_smtp({}) as (port, seen_by_retry):
        async with make_client(**smtp_settings(port)) as client:
            retry = await client.post("/send-email", json=MAIL, headers=headers)
    assert first.status_code == status, first.json()
    assert first.json().get("nothing_sent") is True and "outcome_unknown" not in first.json()
    assert len(seen) == connections
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert len(seen_by_retry) == 1


#: Failures once the message was handed over (after the final "."): the server may have queued it.
AFTER_HANDOVER: dict[str, Step] = {
    "reset-after-data": "reset",
    "silent-after-data": "silent",
    "garbage-after-data": b"<html><body>502 Bad Gateway</body></html>\r\n",
    "too-long-after-data": b"250-" + b"x" * 9000 + b"\r\n",
}


@pytest.mark.parametrize("fault", list(AFTER_HANDOVER))
async def test_an_smtp_failure_after_the_message_is_an_unknown_outcome_and_never_sent_again(make_client, fault):
    """Found by a crash-consistency review: an unreadable reply to the message (not SMTP, or too long) read "the
    SMTP server refused the message (-1)", though the server may well have queued it."""
    headers = {"Idempotency-Key": f"smtp-after-{fault}"}
    async with scripted_smtp({"END": AFTER_HANDOVER[fault]}) as (port, seen):
        async with make_client(**smtp_settings(port, timeout=0.5)) as client:
            first = await client.post("/send-email", json=MAIL, headers=headers)
            retry = await client.post("/send-email", json=MAIL, headers=headers)
            run = await only_run(client, "email.send")
    body = first.json()
    assert first.status_code in (502, 504), body
    assert body["outcome_unknown"] is True
    assert "may or may not have been delivered" in body["detail"]
    assert "refused" not in body["detail"]
    assert len(seen) == 1  # never retried: a second connection could deliver it twice
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["original_request_id"] == body["request_id"]
    assert retry.json()["detail"] == body["detail"]
    assert run["status"] == "failed" and "may or may not have been delivered" in run["error"]


@pytest.mark.parametrize("verb", ["EHLO", "MAIL", "RCPT"])
async def test_an_smtp_stall_after_the_greeting_says_nothing_was_handed_over(make_client, verb):
    """Found by a review: a stall at EHLO, MAIL FROM or RCPT TO got the connect-time 504 about a server "silent from
    the start" and a wrong port, though the server had greeted; the docs promise "before the message was handed
    over"."""
    async with scripted_smtp({verb: (1.0, _NORMAL[verb])}) as (port, seen):
        async with make_client(**smtp_settings(port)) as client:
            response = await client.post("/send-email", json=MAIL)
    body = response.json()
    assert response.status_code == 504, body
    assert "before the message was handed over" in body["detail"]
    assert "silent from the start" not in body["detail"]
    assert body["nothing_sent"] is True and len(seen) == 3
