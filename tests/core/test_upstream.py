"""The one retry loop and the transport-error mapping."""

from __future__ import annotations

import httpx
import pytest

from core.errors import InvalidInput, UpstreamError, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable
from core.upstream import parse_retry_after, server_error, transport_error, with_retries

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
