"""Gemini provider, built on google-genai (`client.aio.models.generate_content`).

Not google-generativeai: that SDK reached end of life on 30 September 2025.

Transport, chosen on purpose (see docs/llm-routing.md for the measurements):
google-genai uses aiohttp whenever aiohttp is importable, and slack_sdk
brings aiohttp in. Rather than inherit that by accident, the router hands
this provider its own `aiohttp.ClientSession` (`HttpOptions.aiohttp_client`),
opened and closed in the lifespan, or an httpx client when asked
(`HttpOptions.httpx_async_client`). Three SDK defaults are switched off:

- retries: `HttpRetryOptions(attempts=1)`. Without explicit retry options the
  SDK's aiohttp path silently sleeps 1-10 s and retries once on a refused or
  reset connection; the router owns retries.
- continuation: `automatic_continuation=False`. The SDK otherwise answers a
  `CONTINUATION` finish reason by sending the request again with the
  continuation token until the model finishes, each hop billed with its own
  `max_output_tokens`: one attempt became a loop. Such an answer is flagged
  `truncated` instead.
- environment: `vertexai=False`, so a stray GOOGLE_GENAI_USE_VERTEXAI cannot
  send prompts to another backend.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from pydantic import SecretStr

from core.errors import PerAudience, Phrase, UpstreamError, UpstreamTimeout, operator_checks
from core.registry import Integration
from core.upstream import AnswerTooLarge, RedirectRefused, guard_refusal, parse_retry_after
from services.base import (
    Completion,
    account_refused,
    connection_failed,
    first_text,
    status_error,
    stop_reason_of,
    token_count,
    unusable_answer,
)

if TYPE_CHECKING:
    from google.genai import errors as genai_errors
    from google.genai import types

INTEGRATION = Integration(
    name="gemini",
    kind="llm",
    description="Google Gemini: short prompts (at or below ROUTER_WORD_THRESHOLD words).",
    required=("GEMINI_API_KEY",),
    optional=("GEMINI_MODEL", "GEMINI_BASE_URL", "GEMINI_THINKING_LEVEL"),
    operations=("generate",),
)

UPSTREAM = "gemini"
#: The SDK's own default for the Gemini API: requests go to {base}/v1/models/{model}:generateContent.
API_VERSION = "v1"
#: Gemini 3.x Flash models take 1,048,576 input tokens.
DEFAULT_CONTEXT_TOKENS = 1_048_576
_KEY_HINT = operator_checks("GEMINI_API_KEY and GEMINI_MODEL.")

# Gemini answers some faults of OUR configuration with a 400, which would otherwise read as the
# caller's fault (answered at once, no fallback). They are told apart by the google.rpc.ErrorInfo
# `reason` (google.api.ErrorReason) or, for region and billing, the status FAILED_PRECONDITION.
#: The key is wrong, expired or deleted: Gemini's "API key not valid" / "API key expired" (400 INVALID_ARGUMENT).
_INVALID_KEY = "API_KEY_INVALID"
#: The key exists but its restrictions block this API, this server's IP or referrer.
_BLOCKED_KEY = frozenset(
    {
        "API_KEY_SERVICE_BLOCKED",
        "API_KEY_HTTP_REFERRER_BLOCKED",
        "API_KEY_IP_ADDRESS_BLOCKED",
        "API_KEY_ANDROID_APP_BLOCKED",
        "API_KEY_IOS_APP_BLOCKED",
    }
)
#: The Google Cloud project behind the key cannot use the API.
_PROJECT_REFUSED = frozenset(
    {"SERVICE_DISABLED", "BILLING_DISABLED", "CONSUMER_SUSPENDED", "CONSUMER_INVALID", "USER_PROJECT_DENIED"}
)
# Each fix is worded per reader: the API caller is told what to do; a chat user, whose question the key failed,
# reads that the operator must (they can neither create a key nor restart the service).
_FIX_INVALID_KEY = Phrase(
    (
        "GEMINI_API_KEY is not a valid Gemini API key (wrong, expired or deleted): ",
        PerAudience(
            api="create one in Google AI Studio, set GEMINI_API_KEY in the environment or .env, and restart.",
            chat="the operator must replace it with a valid key and restart the service.",
        ),
    )
)
_FIX_BLOCKED_KEY = Phrase(
    (
        "GEMINI_API_KEY's restrictions block this call: ",
        PerAudience(
            api="allow the Generative Language API and this server on the key (Google Cloud console, Credentials), "
            "or set GEMINI_API_KEY to another key and restart.",
            chat="the operator must allow this service on the key, or replace GEMINI_API_KEY and restart the service.",
        ),
    )
)
_FIX_PROJECT = Phrase(
    (
        "The Google Cloud project of GEMINI_API_KEY cannot use the Gemini API: ",
        PerAudience(
            api="enable the Generative Language API and billing on it, or set GEMINI_API_KEY to a key of another "
            "project and restart.",
            chat="the operator must enable the Generative Language API and billing on it, or replace GEMINI_API_KEY "
            "and restart the service.",
        ),
    )
)
#: ErrorInfo reason -> (what Gemini refused, how to fix it).
_REFUSALS: dict[str, tuple[str, Phrase]] = {
    _INVALID_KEY: ("our credentials", _FIX_INVALID_KEY),
    **{reason: ("our credentials", _FIX_BLOCKED_KEY) for reason in _BLOCKED_KEY},
    **{reason: ("to serve our account", _FIX_PROJECT) for reason in _PROJECT_REFUSED},
}
#: 400 FAILED_PRECONDITION: "User location is not supported for the API use." or "Gemini API free tier is not
#: available in your country. Please enable billing...". This service sends no cached content or files, so
#: for its requests the unmet precondition is the account's, never the prompt's.
_FIX_REGION = Phrase(
    (
        "The Gemini API does not serve this server's region, or not without billing: ",
        PerAudience(
            api="enable billing on the project of GEMINI_API_KEY in Google AI Studio, or run the service from a "
            "supported region.",
            chat="the operator must enable billing on the project of GEMINI_API_KEY, or run the service from a "
            "supported region.",
        ),
    )
)


class GeminiProvider:
    """One `generate_content` call per attempt; failures become `core.errors` problems."""

    name = UPSTREAM

    def __init__(
        self,
        *,
        api_key: SecretStr,
        model: str,
        base_url: str,
        timeout_seconds: float,
        session: aiohttp.ClientSession | None = None,
        http: httpx.AsyncClient | None = None,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        thinking_level: str | None = None,
    ) -> None:
        if (session is None) == (http is None):
            raise ValueError("give exactly one transport: an aiohttp session or an httpx client")
        # Imported here, not at the top: google-genai is ~16 MiB resident, which an install without
        # GEMINI_API_KEY should not carry (docs/benchmarks.md, footprint).
        from google import genai
        from google.genai import errors, types

        self._errors, self._types = errors, types
        self.model = model
        self.context_tokens = context_tokens
        # GEMINI_THINKING_LEVEL: sent only when set, since models differ in the levels they take (a 400 otherwise).
        self._thinking = types.ThinkingConfig(thinking_level=thinking_level.upper()) if thinking_level else None
        options = types.HttpOptions(
            base_url=base_url,
            # Pinned, so GOOGLE_GENAI_API_VERSION in the environment cannot change the endpoint under us.
            api_version=API_VERSION,
            timeout=int(timeout_seconds * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),
            aiohttp_client=session,
            httpx_async_client=http,
        )
        self._client = genai.Client(vertexai=False, api_key=api_key.get_secret_value(), http_options=options)

    async def aclose(self) -> None:
        # Closes only what the SDK opened itself; the session/client we passed in is closed by its owner.
        await self._client.aio.aclose()

    async def generate(self, *, text: str, system: str | None, max_tokens: int) -> Completion:
        config = self._types.GenerateContentConfig(
            system_instruction=system,
            max_output_tokens=max_tokens,
            automatic_continuation=False,
            thinking_config=self._thinking,
        )
        try:
            response = await self._client.aio.models.generate_content(model=self.model, contents=text, config=config)
        except self._errors.APIError as exc:
            raise _api_error(exc) from None
        except (AnswerTooLarge, RedirectRefused) as exc:
            raise guard_refusal(exc, upstream=UPSTREAM, setting="GEMINI_BASE_URL") from None
        except (aiohttp.ServerTimeoutError, httpx.TimeoutException, TimeoutError) as exc:
            raise UpstreamTimeout(f"gemini did not answer in time ({type(exc).__name__}).", upstream=UPSTREAM) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, httpx.TransportError) as exc:
            # ClientPayloadError: the connection dropped mid-answer. Transient like a reset, and retried as Claude's
            # httpx ReadError is (it was taken for an unusable answer and not retried; found by a review).
            raise connection_failed(UPSTREAM, exc, operator_checks("GEMINI_BASE_URL.")) from None
        except (ValueError, TypeError, KeyError, aiohttp.ClientError) as exc:
            # A 2xx that is not the JSON we expect (a proxy's HTML page, a truncated body).
            raise unusable_answer(UPSTREAM, exc) from None
        reason = _finish_reason(response)
        refused = reason in _REFUSED or (reason or "").startswith(_PROMPT_BLOCKED)
        answer = first_text(_text_of(response))
        if answer is None:
            thoughts = token_count(response.usage_metadata.thoughts_token_count) if response.usage_metadata else None
            if reason == "MAX_TOKENS" and thoughts:
                # Gemini 3 models think by default, and max_output_tokens caps thoughts and answer together: a short
                # budget can go on thinking alone (googleapis/python-genai#2062). Said as such, not "no text".
                raise UpstreamError(
                    f"gemini spent its whole output budget on {thoughts} thinking tokens and wrote no answer: send a "
                    "larger max_tokens (or raise LLM_MAX_TOKENS), or set GEMINI_THINKING_LEVEL=low (or minimal).",
                    upstream=UPSTREAM,
                )
            if not refused:
                raise unusable_answer(UPSTREAM, f"no text; finish reason {reason}" if reason else "no text")
            # Refused outright (no text at all): an answer, flagged, not a failure. As a failure the router sent
            # the same prompt on to the next provider, and `refused` never came back (found by a black-box review).
            answer = ""
        usage = response.usage_metadata
        return Completion(
            text=answer,
            model=response.model_version or self.model,
            input_tokens=token_count(usage.prompt_token_count) if usage else None,
            output_tokens=_billed_output(usage),
            truncated=reason in _CUT_SHORT,
            refused=refused,
            stop_reason=stop_reason_of(reason),
        )


#: How `_finish_reason` names a prompt Gemini blocked before answering (`promptFeedback.blockReason`): a refusal.
_PROMPT_BLOCKED = "prompt blocked: "
#: Gemini finish reasons that mean the answer stopped before the model finished: at `max_output_tokens`, or at the
#: per-request limit with generation to continue (`CONTINUATION`, never followed: see the module docstring).
_CUT_SHORT = frozenset({"MAX_TOKENS", "CONTINUATION"})
#: Gemini finish reasons that mean its safety or policy checks stopped the answer.
_REFUSED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})


def _billed_output(usage: types.GenerateContentResponseUsageMetadata | None) -> int | None:
    """Answer tokens plus thinking tokens: Gemini 3 models think by default and bill thoughts as output."""
    if usage is None or (usage.candidates_token_count is None and usage.thoughts_token_count is None):
        return None
    return token_count((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0))


def _text_of(response: types.GenerateContentResponse) -> str | None:
    try:
        return response.text
    except ValueError:  # the SDK raises when a candidate has no text parts
        return None


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    if response.candidates and response.candidates[0].finish_reason:
        return str(response.candidates[0].finish_reason.value)
    if response.prompt_feedback and response.prompt_feedback.block_reason:
        return f"{_PROMPT_BLOCKED}{response.prompt_feedback.block_reason.value}"
    return None


def _api_error(exc: genai_errors.APIError) -> Exception:
    status = int(exc.code or 0)
    message = (
        exc.message if isinstance(exc.message, str) else json.dumps(exc.details)
    )  # cut by status_error, between words
    detail_text = json.dumps(_error_details(exc))
    retry_after = _retry_after(exc)
    # Gemini's per-minute and per-day quota errors share one message ("You exceeded your current
    # quota..."); the violated quota's id (…PerDay…) in the details tells them apart.
    if status == 429 and "PerDay" in detail_text:
        message = f"{message} (daily quota)"
    refused = _account_refused(exc, status, message)
    if refused is not None:
        return refused
    return status_error(
        upstream=UPSTREAM,
        status=status,
        message=message,
        retry_after=retry_after,
        hint=_KEY_HINT,
        endpoint_setting="GEMINI_BASE_URL",
    )


def _account_refused(exc: genai_errors.APIError, status: int, message: str) -> Exception | None:
    """A 400/401/403 that blames our key, project or region (see the reasons above), else None."""
    if status not in (400, 401, 403):
        return None
    for item in _error_details(exc):
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            reason = str(item.get("reason"))
            if reason in _REFUSALS:
                refused, fix = _REFUSALS[reason]
                return account_refused(
                    upstream=UPSTREAM, status=status, message=message, reason=reason, fix=fix, refused=refused
                )
    if status == 400 and exc.status == "FAILED_PRECONDITION":
        return account_refused(
            upstream=UPSTREAM,
            status=status,
            message=message,
            reason="FAILED_PRECONDITION",
            fix=_FIX_REGION,
            refused="to serve our account",
        )
    return None


def _retry_after(exc: genai_errors.APIError) -> float | None:
    """Retry-After header, else google.rpc.RetryInfo `retryDelay` ("37s") in the error details."""
    headers: Any = getattr(exc.response, "headers", None)
    if headers is not None:
        seconds = parse_retry_after(headers.get("Retry-After"))
        if seconds is not None:
            return seconds
    for item in _error_details(exc):
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            # The header's sanitiser, not float(): "infs" raised inside the router (a 500 with no fallback to
            # Claude) and "1e12s" became Retry-After: 1000000000000 (found by a code review).
            return parse_retry_after(str(item.get("retryDelay", "")).removesuffix("s"))
    return None


def _error_details(exc: genai_errors.APIError) -> list[Any]:
    """`error.details` of a Google error body ({"error": {"code", "message", "status", "details"}}), if any."""
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return details if isinstance(details, list) else []
