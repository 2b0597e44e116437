"""Fault injection, per provider: every failure maps to a problem, retries stay bounded, nothing escapes.

Each provider is forced (no fallback), so the error lists exactly its own
failure, and the fake's call count shows how many attempts were made
(LLM_MAX_ATTEMPTS=2: retryable faults are tried twice, the others once).
A rate limit on the only provider tried is a 429 with its Retry-After, a timeout a 504; the rest are 502s.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable

import pytest

from services.ai_router import AllProvidersFailed
from tests.fakes.llm import (
    ANTHROPIC_PATH,
    HTML_ERROR_PAGE,
    OPENAI_PATH,
    rate_limited_reply,
    server_error_reply,
)
from tests.fakes.server import Reply

FAULTS: dict[str, tuple[Callable[[str], Reply], str, int, int, dict[str, str]]] = {
    # name: (reply for a vendor, problem slug in the providers list, expected calls, answer status, answer headers)
    "429 with Retry-After": (
        lambda v: rate_limited_reply(v, {"Retry-After": "0"}),
        "upstream-rate-limited",
        2,
        429,
        {"Retry-After": "0"},
    ),
    "429 without Retry-After": (lambda v: rate_limited_reply(v, {}), "upstream-rate-limited", 2, 429, {}),
    "500": (lambda v: server_error_reply(v, 500), "upstream-error", 2, 502, {}),
    "503": (lambda v: server_error_reply(v, 503), "upstream-error", 2, 502, {}),
    "slow past the timeout": (lambda v: Reply(200, json={}, delay=3.0), "upstream-timeout", 2, 504, {}),
    "connection reset": (lambda v: Reply(drop=True), "upstream-unavailable", 2, 502, {}),
    "HTML error page": (
        lambda v: Reply(502, text=HTML_ERROR_PAGE, content_type="text/html"),
        "upstream-error",
        2,
        502,
        {},
    ),
    "invalid JSON on 200": (
        lambda v: Reply(200, text='{"candidates": [', content_type="application/json"),
        "upstream-error",
        1,
        502,
        {},
    ),
}

VENDORS = ["gemini", "claude", "local"]


def _path(fakes, vendor: str) -> tuple[object, str]:
    return {
        "gemini": (fakes.gemini, fakes.gemini.path),
        "claude": (fakes.claude, ANTHROPIC_PATH),
        "local": (fakes.local, OPENAI_PATH),
    }[vendor]


@pytest.fixture(autouse=True)
def _no_full_collection_due():
    """These tests count attempts against 1 s timeouts. Late in a full run the test process holds millions of
    objects, and a full garbage collection falling inside an attempt held the loop past the SDK's own timeout
    before the request left (one call counted instead of two, in two full runs; never alone). Collecting first
    makes one unlikely during the test. The service itself freezes its start-up heap (core/gc_tuning.py)."""
    gc.collect()


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_is_mapped_with_bounded_retries(make_router, fakes, vendor, fault):
    make_reply, slug, expected_calls, status, headers = FAULTS[fault]
    fake, path = _path(fakes, vendor)
    fake.route("POST", path, lambda _: make_reply(vendor))
    # 1 s, not less: see _no_full_collection_due.
    router = await make_router(local=True, llm_timeout_seconds=1.0, llm_max_attempts=2)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello", provider=vendor)

    [failure] = caught.value.extras["providers"]
    assert failure["provider"] == vendor
    assert failure["error"] == slug, failure["detail"]
    assert len(fake.calls("POST", path)) == expected_calls
    assert caught.value.status == status
    assert caught.value.headers == headers


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("vendor", VENDORS)
async def test_connection_refused_is_mapped(make_router, fakes, vendor):
    dead = f"http://127.0.0.1:{_closed_port()}"
    overrides = {
        "gemini": {"gemini_base_url": dead},
        "claude": {"anthropic_base_url": dead},
        "local": {"local_llm_base_url": dead + "/v1"},
    }[vendor]
    router = await make_router(local=True, **overrides)

    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(text="hello", provider=vendor)

    [failure] = caught.value.extras["providers"]
    assert failure["error"] == "upstream-unavailable"
    assert "could not be reached" in failure["detail"]
