"""The one retry loop and the transport-error mapping."""

from __future__ import annotations

import httpx
import pytest

from core.errors import InvalidInput, UpstreamError, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable
from core.upstream import parse_retry_after, transport_error, with_retries

REQUEST = httpx.Request("POST", "https://api.example.test/create")


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
