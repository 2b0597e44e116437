"""What every LLM provider offers the AIRouter, and how vendor failures become domain errors.

A provider makes ONE attempt per `generate` call: no SDK retries, no loops.
It turns each vendor's failure shape into a `core.errors` problem that says
how the router should treat it:

- `retryable=True` (429 with a usable wait, 5xx, 529, timeout, connection
  refused or reset): the router retries it, then falls back to the next provider.
- `CallerFault` (400, 413, 422: the request itself is wrong): the router
  answers at once; another provider would refuse it too, so none is tried.
- anything else (401/403 bad key, 404 unknown model, exhausted spend or quota,
  an unreadable answer): not retried, but the next provider is tried.

A 400 is not always the caller's fault: Anthropic bills a low credit balance
as a 400, and Gemini answers a wrong or expired key, and a region it does not
serve, with a 400. Those are `account_refused` (like a 401/403), recognised by
the provider that knows its vendor's error shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from core.errors import (
    OPERATOR_CHECKS,
    InvalidInput,
    PayloadTooLarge,
    Phrase,
    ProblemError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from core.text import cut_between_words

#: Phrases vendors use when a 429 means "out of money or daily quota", not "slow down".
#: Waiting a few seconds cannot fix those, so they are never retried.
_SPEND_EXHAUSTED = re.compile(
    r"(spend limit|usage limit|credit balance|billing hard limit|insufficient[_ ]quota|per ?day|perday|daily)",
    re.IGNORECASE,
)

#: Phrases vendors use in a 400 when the prompt does not fit the model's context window (Anthropic: "prompt is
#: too long: 212345 tokens > 200000 maximum"; Gemini: "The input token count (X) exceeds the maximum number of
#: tokens allowed (Y)"). Not the caller's fault: a model with a larger window may take it.
_CONTEXT_EXCEEDED = re.compile(
    r"(prompt is too long|input token count|too many (input )?tokens|exceeds? the maximum (number of )?tokens"
    r"|context (length|window) (exceeded|is exceeded)|maximum context length|exceeds? (the )?context limit"
    r"|exceeds? the available context size)",
    re.IGNORECASE,
)

#: Upstream statuses that mean the request itself is wrong (ours to fix, not the provider's).
CALLER_FAULT_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True)
class Completion:
    """One provider's answer to one attempt."""

    text: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    #: The provider stopped before the model finished (at `max_tokens`, the context window, ...): the text is cut
    #: short. `stop_reason` says which.
    truncated: bool = False
    #: The provider stopped because its safety system declined to go on: the text is partial, or a refusal.
    refused: bool = False
    #: Why the provider stopped, in its own words (Claude `stop_reason`, Gemini `finishReason`, an OpenAI-compatible
    #: `finish_reason`), or None when it gave none.
    stop_reason: str | None = None


class LLMProvider(Protocol):
    """An LLM the router can call. `context_tokens` is the model's context window."""

    name: str
    model: str
    context_tokens: int

    async def generate(self, *, text: str, system: str | None, max_tokens: int) -> Completion: ...


class CallerFault(InvalidInput):
    """The provider refused the request as malformed (its 400/422): not retried, not sent elsewhere."""

    slug, title = "llm-request-rejected", "The LLM provider rejected the request"


class ContextExceeded(UpstreamError):
    """The model said the prompt does not fit its context window (a 400): the router tries the next provider,
    whose window may be larger; when none can take it, the answer is a 413 `llm-prompt-too-large`."""

    status, slug = 413, "llm-prompt-too-large"


class CallerPayloadTooLarge(PayloadTooLarge):
    """The provider said the prompt is too large for the model (its 413)."""

    slug = "llm-prompt-too-large"


def token_count(value: Any) -> int | None:
    """A vendor's token count, or None when it is missing or not a count (a bool, a negative number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


#: A stop reason is a vendor's short code (`max_tokens`, `MAX_TOKENS`, `length`); anything longer is cut.
_STOP_REASON_CHARS = 64


def stop_reason_of(value: Any) -> str | None:
    """A vendor's stop or finish reason as text, or None when it is missing or not a string. Cut short: it is
    upstream text that the answer, the ledger and the briefing's step detail repeat."""
    if not isinstance(value, str) or not value.strip():
        return None
    return cut_between_words(" ".join(value.split()), _STOP_REASON_CHARS)


def is_caller_fault(exc: BaseException) -> bool:
    return isinstance(exc, (CallerFault, CallerPayloadTooLarge))


def spend_exhausted(message: str) -> bool:
    return bool(_SPEND_EXHAUSTED.search(message))


def status_error(
    *,
    upstream: str,
    status: int,
    message: str,
    retry_after: float | None = None,
    hint: str | Phrase = "",
    endpoint_setting: str = "",
) -> ProblemError:
    """Map one non-2xx answer to the domain error the router understands.

    `message` is the vendor's own error text (never our request or key); it is
    cut short because a proxy's HTML error page can be long. The vendor's
    status is kept as `upstream_status`; the problem's own status stays the
    error class's (502, 429, 422...). `hint` names the settings to check; a `Phrase` when a chat user reads it
    differently (the operator must check them: `core.errors.OPERATOR_CHECKS`).
    """
    said = _said(message)
    suffix: str | Phrase = " " + hint if hint else ""
    if status == 413:
        return CallerPayloadTooLarge(
            f"{upstream} refused the prompt as too large ({said}).", upstream=upstream, upstream_status=status
        )
    if status == 400 and _CONTEXT_EXCEEDED.search(said):
        # Our token estimate let it through (CJK text has far more tokens per character), and the vendor
        # refused it: a 422 "check your text" was wrong and Gemini's 1M window was never tried (found by review).
        return ContextExceeded(
            f"{upstream}'s model cannot take a prompt this long ({said}).", upstream=upstream, upstream_status=status
        )
    if status == 400 and spend_exhausted(said):
        # Anthropic answers "Your credit balance is too low" as a 400: the account's fault, not the
        # caller's, so another provider may well answer it.
        return UpstreamError(
            f"{upstream} refused the request for billing reasons ({said})." + suffix,
            upstream=upstream,
            upstream_status=status,
        )
    if status in CALLER_FAULT_STATUSES:
        return CallerFault(
            f"{upstream} rejected the request ({status}: {said}). Check text, system and max_tokens.",
            upstream=upstream,
            upstream_status=status,
        )
    if status == 429:
        if spend_exhausted(said):
            exhausted = UpstreamRateLimited(
                f"{upstream} quota or spend limit is exhausted ({said}); waiting will not help." + suffix,
                upstream=upstream,
                upstream_status=status,
                # Not waited for here (it is not retried), but passed on: when the vendor says when, so do we.
                retry_after=retry_after,
            )
            exhausted.retryable = False
            return exhausted
        return UpstreamRateLimited(
            f"{upstream} is rate limiting us ({said}).",
            upstream=upstream,
            retry_after=retry_after,
            upstream_status=status,
        )
    if status in (401, 403):
        return account_refused(upstream=upstream, status=status, message=said, fix=hint)
    if status == 404:
        # The endpoint is the base URL's: a gateway path that 404s was told to check only the key and the model
        # (found by a user review).
        endpoint = (
            Phrase((f" The endpoint comes from {endpoint_setting}: ", OPERATOR_CHECKS, " it too."))
            if endpoint_setting
            else ""
        )
        return UpstreamError(
            f"{upstream} does not know the model or endpoint ({said})." + suffix + endpoint,
            upstream=upstream,
            upstream_status=status,
        )
    if status >= 500 or status in (408, 409):
        # 5xx, Anthropic's 529 overloaded, 408 request timeout, 409 conflict: transient on the vendor's side.
        transient = UpstreamError(
            f"{upstream} failed ({status}: {said}).", upstream=upstream, upstream_status=status, retryable=True
        )
        transient.retry_after = retry_after  # a 503's Retry-After is honoured by the retry loop too
        return transient
    return UpstreamError(f"{upstream} answered {status} ({said})." + suffix, upstream=upstream, upstream_status=status)


def account_refused(
    *,
    upstream: str,
    status: int,
    message: str,
    fix: str | Phrase,
    reason: str | None = None,
    refused: str = "our credentials",
) -> UpstreamError:
    """The vendor refused our key, project or region (a 401/403, or one of the 400s that mean the same).

    Our configuration's fault, not the caller's and not transient: not retried,
    but the next provider is tried. `fix` names the setting and how to repair
    it; the key's value is never part of the message. A `Phrase` `fix` is worded per reader: only the operator
    can repair a key, so a chat user reads that the operator must. `reason` is the vendor's machine-readable cause
    (Gemini's `API_KEY_INVALID`), shown next to the status.
    """
    code = f"{status} {reason}" if reason else str(status)
    suffix: str | Phrase = " " + fix if fix else ""
    return UpstreamError(
        f"{upstream} refused {refused} ({code}: {_said(message)})." + suffix, upstream=upstream, upstream_status=status
    )


def _said(message: str) -> str:
    """The vendor's message on one line, cut short: a proxy's HTML error page can be long."""
    return cut_between_words(" ".join((message or "no error message").split()), 300)


def connection_failed(upstream: str, exc: BaseException, fix: str | Phrase) -> UpstreamUnavailable:
    """A transient failure on the way (retried, then the next provider). An answer cut off or undecodable mid-read
    (aiohttp's ClientPayloadError) is said as such: "could not be reached" sent readers to check the URL of a
    provider that had answered (found by a fault-injection audit). `fix` names the settings to check; a `Phrase`
    (`core.errors.operator_checks`) words it per reader, since only the operator can change them."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        said = f"{upstream}'s answer was cut off or could not be decoded ({type(exc).__name__})."
    else:
        said = f"{upstream} could not be reached ({type(exc).__name__})."
    return UpstreamUnavailable(said + " " + fix, upstream=upstream)


def unusable_answer(upstream: str, exc: BaseException | str) -> UpstreamError:
    """A 2xx we cannot read (invalid JSON, an HTML page, no text): the provider is broken, try another."""
    reason = exc if isinstance(exc, str) else type(exc).__name__
    return UpstreamError(f"{upstream} returned an answer we cannot use ({reason}).", upstream=upstream)


def first_text(value: Any) -> str | None:
    """`value` if it is a non-empty string, else None (answers with no text are unusable)."""
    return value if isinstance(value, str) and value.strip() else None
