"""The one retry loop and the transport-error mapping."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import pytest
import respx

from core.errors import InvalidInput, UpstreamError, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable
from core.upstream import (
    MAX_RESPONSE_BYTES,
    ResponseTooLarge,
    bounded_request,
    parse_retry_after,
    server_error,
    transport_error,
    with_retries,
)
from tests.fakes.raw_http import raw_http_server

REQUEST = httpx.Request("POST", "https://api.example.test/create")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("inf", None), ("nan", None), ("1e12", 86_400.0), ("Fri, 31 Dec 9999 23:59:59 GMT", 86_400.0), ("-5", 0.0)],
)
def test_an_absurd_retry_after_is_capped_or_ignored(header, seconds):
    """`inf` or a year-9999 date overflowed the scheduler's datetime arithmetic (a code review found it)."""
    assert parse_retry_after(header) == seconds


def test_a_huge_retry_after_cannot_overflow_the_next_stop_attempt():
    from datetime import UTC, datetime

    from workflows.scheduler import next_stop_attempt

    now = datetime(2026, 11, 25, 8, tzinfo=UTC)
    assert next_stop_attempt(planned=now, attempts=1, failed_at=now, retry_after=1e12) is None  # past the window


def test_parse_retry_after_seconds_and_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused", request=REQUEST), UpstreamUnavailable),
        (httpx.ConnectTimeout("slow connect", request=REQUEST), UpstreamTimeout),
        (httpx.PoolTimeout("pool", request=REQUEST), UpstreamTimeout),
    ],
)
def test_never_sent_failures_are_always_retryable(exc, kind):
    for replay_safe in (True, False):
        error = transport_error(exc, upstream="toggl", replay_safe=replay_safe)
        assert isinstance(error, kind) and error.retryable


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ReadTimeout("no answer", request=REQUEST), UpstreamTimeout),
        (httpx.RemoteProtocolError("dropped mid-answer", request=REQUEST), UpstreamUnavailable),
        (httpx.ReadError("reset", request=REQUEST), UpstreamUnavailable),
    ],
)
def test_ambiguous_failures_are_not_retried_for_creating_calls(exc, kind):
    assert transport_error(exc, upstream="toggl").retryable  # a read is safe to repeat
    error = transport_error(exc, upstream="toggl", replay_safe=False)
    assert isinstance(error, kind)
    assert not error.retryable
    assert "outcome is unknown" in error.detail


def test_a_creating_call_may_say_how_to_check_the_outcome():
    error = transport_error(
        httpx.ReadTimeout("no answer", request=REQUEST),
        upstream="slack",
        replay_safe=False,
        check="the message may have been posted; check #general",
    )
    assert error.detail.endswith(
        "The outcome is unknown: the message may have been posted; check #general before retrying."
    )


# One status mapping for an upstream 5xx in every skill.
FIVE_XX = [
    (500, UpstreamError, 502, "upstream-error"),
    (502, UpstreamError, 502, "upstream-error"),
    (503, UpstreamUnavailable, 503, "upstream-unavailable"),
    (504, UpstreamTimeout, 504, "upstream-timeout"),
    (507, UpstreamError, 502, "upstream-error"),
]


@pytest.mark.parametrize(("upstream_status", "kind", "status", "slug"), FIVE_XX)
def test_5xx_status_mapping_is_the_same_for_reads_and_creates(upstream_status, kind, status, slug):
    for replay_safe in (True, False):
        error = server_error(upstream_status, "Toggl answered.", upstream="toggl", replay_safe=replay_safe)
        assert type(error) is kind
        assert (error.status, error.slug) == (status, slug)
        assert error.extras["upstream_status"] == upstream_status
        assert error.extras["upstream"] == "toggl"


@pytest.mark.parametrize(("upstream_status", "kind", "status", "slug"), FIVE_XX)
def test_5xx_is_retryable_only_for_a_replay_safe_call(upstream_status, kind, status, slug):
    read = server_error(upstream_status, "Toggl answered.", upstream="toggl", replay_safe=True)
    assert read.retryable and read.detail == "Toggl answered."
    create = server_error(
        upstream_status, "Slack answered 500 (fatal_error).", upstream="slack", replay_safe=False, check="check #ops"
    )
    assert not create.retryable
    assert create.detail == "Slack answered 500 (fatal_error). The outcome is unknown: check #ops before retrying."


@pytest.mark.parametrize(("replay_safe", "attempts"), [(True, 3), (False, 1)])
async def test_with_retries_repeats_a_5xx_only_for_a_replay_safe_call(replay_safe, attempts):
    calls = 0

    async def fails():
        nonlocal calls
        calls += 1
        raise server_error(500, "boom", upstream="x", replay_safe=replay_safe)

    with pytest.raises(UpstreamError):
        await with_retries(fails, attempts=3)
    assert calls == attempts


async def test_with_retries_is_bounded_and_honours_retry_after():
    attempts = 0

    async def flaky():
        nonlocal attempts
        attempts += 1
        raise UpstreamRateLimited("slow down", upstream="slack", retry_after=0)

    with pytest.raises(UpstreamRateLimited):
        await with_retries(flaky, attempts=3)
    assert attempts == 3


async def test_with_retries_waits_out_a_retry_after_equal_to_the_longest_wait():
    """The bound is inclusive: a Retry-After of exactly max_wait_seconds is waited (pinned by a mutation review)."""
    attempts = 0

    async def limited():
        nonlocal attempts
        attempts += 1
        raise UpstreamRateLimited("slow down", upstream="slack", retry_after=0.05)

    with pytest.raises(UpstreamRateLimited):
        await with_retries(limited, attempts=2, max_wait_seconds=0.05)
    assert attempts == 2


async def test_with_retries_passes_a_long_retry_after_on_at_once():
    attempts = 0

    async def limited():
        nonlocal attempts
        attempts += 1
        raise UpstreamRateLimited("slow down", upstream="slack", retry_after=120)

    with pytest.raises(UpstreamRateLimited) as caught:
        await with_retries(limited, attempts=5, max_wait_seconds=10)
    assert attempts == 1 and caught.value.headers["Retry-After"] == "120"


@pytest.mark.parametrize("error", [InvalidInput("bad"), UpstreamError("auth refused", upstream="toggl")])
async def test_non_retryable_errors_are_raised_at_once(error):
    attempts = 0

    async def fails():
        nonlocal attempts
        attempts += 1
        raise error

    with pytest.raises(type(error)):
        await with_retries(fails, attempts=4)
    assert attempts == 1


async def test_with_retries_returns_the_first_success():
    results = iter([UpstreamError("500", upstream="x", retryable=True), "ok"])

    async def eventually():
        item = next(results)
        if isinstance(item, Exception):
            raise item
        return item

    assert await with_retries(eventually, attempts=3) == "ok"


# --- One request: a total deadline and a bounded answer -----------------------------------


async def test_an_answer_trickled_past_the_deadline_times_out_although_every_read_is_quick():
    """Found by a code review: httpx's timeout is per socket read, so a byte every 0.2 s kept a call with a
    1 s timeout alive until the whole answer had trickled in."""
    body = b'{"id": 1, "padding": "' + b"x" * 30 + b'"}'
    async with raw_http_server(body, pieces=len(body), pause=0.1) as url:  # ~5 s in all, each read far under 1 s
        async with httpx.AsyncClient(timeout=1.0) as http:
            with pytest.raises(httpx.ReadTimeout, match="no complete answer within 1 s"):
                await bounded_request(http, "GET", url, deadline=1.0)


async def test_an_answer_within_the_deadline_is_read_whole():
    body = b'{"id": 1, "description": "Deep Work"}'
    async with raw_http_server(body, pieces=3, pause=0.05) as url:
        async with httpx.AsyncClient(timeout=1.0) as http:
            response = await bounded_request(http, "GET", url, deadline=5.0)
    assert response.status_code == 200 and response.json() == {"id": 1, "description": "Deep Work"}


async def test_an_answer_over_the_cap_is_not_read_further():
    async with raw_http_server(b"x" * (MAX_RESPONSE_BYTES + 10), pieces=8) as url:
        async with httpx.AsyncClient(timeout=5.0) as http:
            with pytest.raises(ResponseTooLarge):
                await bounded_request(http, "GET", url, deadline=5.0)


async def test_a_compressed_answer_is_capped_as_it_is_decoded():
    bomb = gzip.compress(b"0" * (16 * MAX_RESPONSE_BYTES))  # ~16 KB on the wire, 16 MiB decoded
    async with raw_http_server(bomb, headers={"Content-Encoding": "gzip"}) as url:
        async with httpx.AsyncClient(timeout=5.0) as http:
            with pytest.raises(ResponseTooLarge):
                await bounded_request(http, "GET", url, deadline=5.0)


async def test_a_compressed_answer_under_the_cap_reads_back_decoded():
    payload = b'{"ok": true}'
    async with raw_http_server(gzip.compress(payload), headers={"Content-Encoding": "gzip"}) as url:
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await bounded_request(http, "GET", url, deadline=5.0)
    assert response.content == payload and response.json() == {"ok": True}
    assert "content-encoding" not in response.headers


async def test_a_full_pool_is_still_never_sent_not_outcome_unknown():
    """Found by a code review: a deadline over the whole call fired while waiting for a free connection, and a
    start that never left the machine was answered "outcome unknown" (and its key held for 24 hours)."""
    body = b'{"id": 1}'
    async with raw_http_server(body, pieces=len(body), pause=0.3) as url:  # holds its connection ~3 s
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5), limits=limits) as http:
            busy = asyncio.create_task(bounded_request(http, "GET", url, deadline=10.0))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await bounded_request(http, "POST", url, deadline=0.5)
            busy.cancel()
    error = transport_error(httpx.PoolTimeout("pool"), upstream="toggl", replay_safe=False)
    assert error.retryable and "outcome_unknown" not in error.extras


async def test_the_answer_is_asked_for_uncompressed():
    with respx.mock() as upstream:
        route = upstream.get("https://toggl.test/x").respond(200, json={"ok": True})
        async with httpx.AsyncClient() as http:
            response = await bounded_request(http, "GET", "https://toggl.test/x", deadline=1.0)
    assert route.calls.last.request.headers["accept-encoding"] == "identity"
    assert response.json() == {"ok": True}


def test_a_compressed_piece_is_decoded_no_further_than_asked():
    """A gzip bomb decoded a network chunk at a time still held ~130 MiB per request (found by a code review);
    each piece now stops at the limit."""
    from core.upstream import _decoder

    bomb = gzip.compress(b"0" * (64 * MAX_RESPONSE_BYTES))
    response = httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"")
    piece = _decoder(response)(bomb, 10)
    assert piece == b"0" * 10


async def test_headers_trickled_past_the_deadline_time_out_too():
    """The deadline starts when the request starts to leave, so a server trickling its headers (not only its
    body) cannot hold the call either."""
    async with raw_http_server(b'{"id": 1}', head_pause=0.1) as url:  # ~60 header bytes: ~6 s
        async with httpx.AsyncClient(timeout=1.0) as http:
            with pytest.raises(httpx.ReadTimeout, match="no complete answer within 1 s of sending"):
                await bounded_request(http, "GET", url, deadline=1.0)


async def test_a_retry_leaves_the_global_random_state_alone():
    """The jitter drew from the `random` module's global generator, so a background retry changed the state of
    code that owns it (Hypothesis failed a property test: "Do not use the `random` module inside strategies")."""
    import random

    from core.errors import UpstreamUnavailable
    from core.upstream import with_retries

    attempts = 0

    async def flaky():
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise UpstreamUnavailable("refused", upstream="toggl")  # retryable
        return "ok"

    before = random.getstate()
    assert await with_retries(flaky, attempts=3, max_wait_seconds=0.01) == "ok"
    assert random.getstate() == before
