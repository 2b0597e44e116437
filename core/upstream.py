"""Calling upstream APIs: one retry loop, transport and 5xx mapping, Retry-After parsing.

Skills turn each vendor's failure shape into a domain error (`core.errors`)
and mark it `retryable` or not; `with_retries` is the only loop that retries.

One rule for every skill: a call that creates something (post a message, send
one, start a timer) is retried only when the failure proves the upstream did
not act: the connection was never made, or it answered 429 (refused, not
processed). A read timeout, a dropped answer or a 5xx answer proves nothing
(a 500 can come after the side effect), so the error says the outcome is
unknown and how to check, and is not retried. Reads and replay-safe writes
retry all of these.
"""

from __future__ import annotations

import asyncio
import math
import random
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from core.errors import (
    OUTCOME_UNKNOWN,
    Phrase,
    ProblemError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    operator_checks,
)
from core.ledger import note_attempt

T = TypeVar("T")

DEFAULT_ATTEMPTS = 3
DEFAULT_MAX_WAIT_SECONDS = 30.0
BASE_DELAY_SECONDS = 0.25


#: The longest Retry-After taken at its word. An upstream's `inf` or year-9999 date overflowed the datetime
#: arithmetic downstream (found by a code review); a day is already "not now".
MAX_RETRY_AFTER_SECONDS = 86_400.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date, capped at a day; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


# Failures that prove the request never reached the upstream: always safe to try again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


#: How to find out whether a call acted, in the skill's words: text every reader can follow ("the message may
#: have been posted; check #general"), or a `Phrase` whose way to look differs by reader (an API endpoint, or a
#: chat command), worded by the caller that relays the error (`ProblemError.words`).
Check = str | Phrase


def outcome_unknown(upstream: str, check: Check | None = None) -> Phrase:
    """The sentence every "did it happen?" failure ends with: the outcome is unknown, and how to find out."""
    return Phrase((f" {OUTCOME_UNKNOWN}: ",)) + (check or f"check {upstream}") + " before retrying."


def unreadable_create(detail: str, *, upstream: str, status: int | None, check: Check) -> UpstreamError:
    """A 2xx to a create whose body cannot be used (an HTML page from a proxy, no id): the create most likely
    happened, so the outcome is unknown, said as for a 5xx (`outcome_unknown`), and it is never retried."""
    return UpstreamError(
        detail + outcome_unknown(upstream, check), upstream=upstream, upstream_status=status, outcome_unknown=True
    )


#: The most of an upstream's answer that is read: Toggl's and Twilio's are a few kilobytes. Read whole, a broken
#: or hostile endpoint (a proxy set as a *_BASE_URL) could make the worker buffer any size.
MAX_RESPONSE_BYTES = 1 << 20


class ResponseTooLarge(httpx.DecodingError):
    """The answer's body went past MAX_RESPONSE_BYTES (decoded); it was not read further."""


async def bounded_request(
    http: httpx.AsyncClient, method: str, url: str, *, deadline: float, **kwargs: Any
) -> httpx.Response:
    """One request through the shared client, its answer read within `deadline` and up to MAX_RESPONSE_BYTES.

    httpx's timeouts apply to each socket operation, so an upstream that sent its headers and then a byte every
    few seconds kept a call alive without end (16 s with a 1 s timeout; found by a code review), past every
    bound computed from HTTP_TIMEOUT_SECONDS. The deadline starts when the request starts to leave (httpcore's
    `trace` event): before, waiting for a free connection and connecting have httpx's own timeouts, so a
    `PoolTimeout` or `ConnectTimeout` still says the request never left (a deadline over the whole call turned
    a full pool into "outcome unknown"; found by a code review). From there, sending, the headers and the body
    all count. Past it the call fails as an httpx `ReadTimeout`, mapped by `transport_error`.

    The answer is asked for uncompressed and read raw; one compressed anyway (gzip or deflate) is decompressed
    here a bounded piece at a time, so a gzip bomb never holds more than the cap in memory. A body over
    MAX_RESPONSE_BYTES, decoded, fails as `ResponseTooLarge`.
    """
    headers = {**(kwargs.pop("headers", None) or {}), "Accept-Encoding": "identity"}
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as budget:

            async def on_transport_event(event: str, info: dict[str, Any]) -> None:
                # httpcore's trace: the request starts to leave now, so the deadline starts now.
                if event.endswith("send_request_headers.started") and budget.when() is None:
                    budget.reschedule(loop.time() + deadline)

            extensions = {**(kwargs.pop("extensions", None) or {}), "trace": on_transport_event}
            async with http.stream(method, url, headers=headers, extensions=extensions, **kwargs) as response:
                if budget.when() is None:  # a transport without httpcore's trace (a test's mock): from here
                    budget.reschedule(loop.time() + deadline)
                decode = _decoder(response)
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += decode(chunk, MAX_RESPONSE_BYTES + 1 - len(body))
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise ResponseTooLarge(
                            f"the answer is over {MAX_RESPONSE_BYTES} bytes", request=response.request
                        )
    except TimeoutError:
        raise httpx.ReadTimeout(f"no complete answer within {deadline:g} s of sending") from None
    except zlib.error as exc:
        raise httpx.DecodingError(f"the compressed answer is corrupt ({exc})", request=response.request) from None
    kept = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(response.status_code, headers=kept, content=bytes(body), request=response.request)


def _decoder(response: httpx.Response) -> Callable[[bytes, int], bytes]:
    """`bounded_decoder` for an httpx answer; an encoding it cannot read is an httpx `DecodingError`."""
    encoding = response.headers.get("content-encoding", "")
    decode = bounded_decoder(encoding)
    if decode is None:
        raise httpx.DecodingError(f"the answer is encoded as {encoding!r}, which is not read", request=response.request)
    return decode


def bounded_decoder(content_encoding: str) -> Callable[[bytes, int], bytes] | None:
    """How to turn a raw body into content, at most `limit` bytes per piece (what is left over past the limit
    is never needed: the answer is refused). None for an encoding other than identity, gzip or deflate (the
    only ones asked for or expected, since every request asks for `identity`)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return lambda chunk, limit: chunk
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, told apart by the data
        return lambda chunk, limit: inflater.decompress(chunk, max(limit, 1))
    return None


def transport_error(
    exc: httpx.TransportError,
    *,
    upstream: str,
    hint: str = "",
    replay_safe: bool = True,
    check: Check | None = None,
) -> UpstreamError:
    """Map an httpx transport failure to a domain error.

    `replay_safe=False` is for calls that create something (post a message, start
    a timer): when the request may have reached the upstream before the failure
    (a read timeout, a connection dropped mid-answer), trying again could do it
    twice, so the error is not retryable and says the outcome is unknown
    (`check`: how to find out, see `outcome_unknown`).
    """
    suffix = f" {hint}" if hint else ""
    never_sent = isinstance(exc, _NOT_SENT)
    retryable = never_sent or replay_safe
    unknown = "" if retryable else outcome_unknown(upstream, check)
    # `outcome_unknown` (a problem member): an Idempotency-Key keeps this answer whatever its status, so a
    # retry with the key replays it instead of acting a second time.
    flag = None if retryable else True
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(
            f"{upstream} did not answer in time ({type(exc).__name__})." + unknown + suffix,
            upstream=upstream,
            retryable=retryable,
            outcome_unknown=flag,
        )
    return UpstreamUnavailable(
        f"{upstream} could not be reached ({type(exc).__name__})." + unknown + suffix,
        upstream=upstream,
        retryable=retryable,
        outcome_unknown=flag,
    )


def server_error(
    status: int,
    detail: str,
    *,
    upstream: str,
    replay_safe: bool,
    check: Check | None = None,
    retry_after: float | None = None,
    **extras: Any,
) -> UpstreamError:
    """Map an HTTP 5xx answer to a domain error: the one status mapping and retry rule for every skill.

    Status, the same for Slack, Twilio and Toggl (the intent of `core.errors`' classes):
    - 503 -> `UpstreamUnavailable` (503 `upstream-unavailable`): the upstream says it could not serve the request now;
    - 504 -> `UpstreamTimeout` (504 `upstream-timeout`): a gateway gave up waiting for the upstream;
    - any other 5xx (500, 502 from a proxy, an HTML error page) -> `UpstreamError` (502 `upstream-error`).

    Retry: a 5xx says something failed, not that nothing happened: Slack documents that after `fatal_error` "it's
    possible some aspect of the operation succeeded", and Twilio that retrying a message create after a 500 may
    send it twice (https://www.twilio.com/docs/api/errors/20500). So only a `replay_safe` call is retried; for
    one that creates something the detail ends with `outcome_unknown(upstream, check)`. A skill that has the
    vendor's word that a specific answer was not processed maps that answer itself, before calling this.

    `retry_after` (a 503's Retry-After, as the skill parsed it) is honoured by the retry loop and passed on to
    the caller; it was dropped, so a Toggl 503 "Retry-After: 120" was retried three times in 0.2 s and answered
    without one (found by a code review).
    """
    worded: str | Phrase = detail if replay_safe else detail + outcome_unknown(upstream, check)
    kind: type[UpstreamError] = UpstreamError
    if status == 503:
        kind = UpstreamUnavailable
    elif status == 504:
        kind = UpstreamTimeout
    error = kind(
        worded,
        upstream=upstream,
        upstream_status=status,
        retryable=replay_safe,
        outcome_unknown=None if replay_safe else True,
        **extras,
    )
    error.wait(retry_after)
    return error


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProblemError) and exc.retryable


#: The retries' jitter has a generator of its own: drawing from the module-level one changed the process's global
#: random state from a background retry, under code that owns it (Hypothesis failed a test for it: "Do not use
#: the `random` module inside strategies", while a background Slack answer was being retried).
_JITTER = random.Random()  # noqa: S311 - jitter, not a secret


def _wait(max_wait: float) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        # Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s, ... capped.
        return _JITTER.uniform(0, min(max_wait, BASE_DELAY_SECONDS * 2 ** (state.attempt_number - 1)))

    return wait


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
) -> T:
    """Run `call`, retrying retryable domain errors with bounded attempts and backoff.

    A `Retry-After` longer than `max_wait_seconds` is not waited out: the error
    is raised at once so the caller can pass `Retry-After` on to its client.
    Each attempt is counted on the current ledger action.
    """

    def should_retry(exc: BaseException) -> bool:
        if not _is_retryable(exc):
            return False
        retry_after = getattr(exc, "retry_after", None)
        return retry_after is None or retry_after <= max_wait_seconds

    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=_wait(max_wait_seconds),
        retry=retry_if_exception(should_retry),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            note_attempt()
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover


# --- Redirects are never followed ------------------------------------------------------------

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RedirectRefused(aiohttp.ClientResponseError):
    """An upstream answered a redirect, and it was not followed."""


async def refuse_redirects(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp client middleware: a redirect is an error, never followed.

    aiohttp follows redirects by default, and the SDKs on our sessions (google-genai, slack_sdk) did: a 302 or
    307 from a *_BASE_URL host sent the API key and the prompt, or the message, on to whatever host it named,
    and Slack's answer from there was recorded as a post (found by a black-box review). The shared httpx
    client (Toggl, Twilio) has `follow_redirects=False` for the same reason. Runs for every hop, so it stops
    the first.
    """
    response = await handler(request)
    if response.status in _REDIRECTS:
        host = urlsplit(response.headers.get("Location", "")).hostname or "another address"
        response.release()
        raise RedirectRefused(
            response.request_info,
            (),
            status=response.status,
            message=f"answered {response.status}, a redirect to {host}; not followed",
        )
    return response


class AnswerTooLarge(aiohttp.ClientResponseError):
    """An answer on an aiohttp session went past MAX_RESPONSE_BYTES (decoded); it was not read further."""


class CappedResponse(aiohttp.ClientResponse):
    """The aiohttp sessions' response class: `read()` (and so `json()` and `text()`, which the SDKs call) stops
    at MAX_RESPONSE_BYTES of the decoded body. Read whole, a 2 MB gzip bomb from GEMINI_BASE_URL took the
    worker to 4 GiB (found by a black-box review); an out-of-memory kill loses every action in flight."""

    async def read(self) -> bytes:
        if self._body is None:
            body = bytearray()
            try:
                async for chunk in self.content.iter_any():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise AnswerTooLarge(
                            self.request_info,
                            self.history,
                            status=self.status,
                            message=f"answered more than {MAX_RESPONSE_BYTES} bytes; not read further",
                        )
            except BaseException:
                self.close()
                raise
            self._body = bytes(body)
        return await super().read()


def guard_refusal(
    exc: RedirectRefused | AnswerTooLarge, *, upstream: str, setting: str, name: str | None = None
) -> UpstreamError:
    """What a refusal of the aiohttp guards (`refuse_redirects`, `CappedResponse`) becomes: a 502 naming the
    setting that points at the host; not retried, since the same host would answer the same. `name` is how
    the detail names the upstream, when not as `upstream`. A chat user reads that the operator must check the
    setting (`operator_checks`)."""
    return UpstreamError(
        f"{name or upstream} {exc.message}. " + operator_checks(f"{setting}."),
        upstream=upstream,
        upstream_status=exc.status,
    )
