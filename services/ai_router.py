"""The AIRouter: picks an LLM per prompt, retries, falls back, and says why.

Policy (the user's original rule, kept as the default):

- `provider="auto"`: count words (whitespace-separated). At or below
  ROUTER_WORD_THRESHOLD -> Gemini (fast, cheap); above it -> Claude (larger
  context). The other of the two is the fallback, then the local model.
- `provider="gemini" | "claude" | "local"`: that provider only; an explicit
  choice is honoured, never silently replaced.

Fallback happens when the chosen provider is not configured, its context
window is clearly too small, or it fails with a 5xx, 429/529, a timeout, a
connection error, bad credentials or an unusable answer. A request the
provider rejects as malformed (400/413/422) is answered at once: another
provider would refuse it too.

When every provider tried failed with a 429 (a rate limit, or an exhausted
quota or spend limit), the answer is a 429 `upstream-rate-limited` whose
Retry-After is the smallest any provider gave; any other mix is a 502.

The one retry loop is `core.upstream.with_retries` around each provider:
LLM_MAX_ATTEMPTS attempts, jittered backoff, Retry-After honoured up to
`max_retry_wait_seconds` (a longer wait moves on to the next provider
instead), each attempt capped at LLM_TIMEOUT_SECONDS. The SDKs' own retries
are off. Cancelling `generate` (a client disconnect) cancels the HTTP call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from core.errors import (
    CONFIGURED,
    Audience,
    InvalidInput,
    NotConfigured,
    PayloadTooLarge,
    PerAudience,
    Phrase,
    ProblemError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    set_and_restart,
)
from core.resources import Resources
from core.settings import Settings
from core.upstream import CappedResponse, refuse_redirects, with_retries
from services import claude, gemini, local_llm
from services.base import Completion, ContextExceeded, LLMProvider, is_caller_fault

logger = logging.getLogger("orchestrator.ai_router")

ProviderName = Literal["gemini", "claude", "local"]
ProviderChoice = Literal["auto", "gemini", "claude", "local"]

#: A deliberately low estimate (English averages ~4 characters per token), so the
#: context guard only reroutes prompts that are clearly too long.
CHARS_PER_TOKEN = 4
#: A Retry-After longer than this is not waited out inside a request: the next provider is tried.
DEFAULT_MAX_RETRY_WAIT_SECONDS = 10.0

#: The integration a `NotConfigured` names when no provider at all is set up, and its remedy, by reader. The chat
#: reply words the remedy alone ("The assistant is not set up yet: the operator must set ..."): relaying the whole
#: detail read "The assistant is not configured: No LLM provider is set up yet: ...", twice the same fact.
NO_PROVIDER = "llm"
SET_A_PROVIDER = set_and_restart(
    "GEMINI_API_KEY or ANTHROPIC_API_KEY (or LOCAL_LLM_BASE_URL and LOCAL_LLM_MODEL for a local model)"
)

_CONFIG_HINTS = {
    "gemini": "GEMINI_API_KEY",
    "claude": "ANTHROPIC_API_KEY",
    "local": "LOCAL_LLM_BASE_URL and LOCAL_LLM_MODEL",
}


class Usage(BaseModel):
    input_tokens: int | None = Field(None, description="Prompt tokens as the provider counted them.")
    output_tokens: int | None = Field(None, description="Generated tokens as the provider counted them.")


class Routing(BaseModel):
    word_count: int = Field(description="Whitespace-separated words in `text`.")
    threshold: int = Field(description="ROUTER_WORD_THRESHOLD: at or below -> gemini, above -> claude.")
    rule: Literal["word_threshold", "forced"] = Field(description="How the first provider was chosen.")
    fallback_from: str | None = Field(None, description="The provider that was chosen first but did not answer.")
    reason: str = Field(description="One readable sentence explaining the choice.")


class Generation(BaseModel):
    """What `AIRouter.generate` returns and POST /ai-process answers."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "response": "Here is a summary of your notes...",
                "model_used": "claude-haiku-4-5",
                "provider": "claude",
                "routing": {
                    "word_count": 812,
                    "threshold": 500,
                    "rule": "word_threshold",
                    "fallback_from": None,
                    "reason": "812 words > 500: claude",
                },
                "usage": {"input_tokens": 1093, "output_tokens": 214},
                "latency_ms": 2310,
                "truncated": False,
                "refused": False,
                "stop_reason": "end_turn",
            }
        }
    )

    response: str
    model_used: str
    provider: str
    routing: Routing
    usage: Usage
    latency_ms: int
    truncated: bool = Field(
        False,
        description="The provider stopped before the answer was finished, so `response` is cut short: at "
        "`max_tokens` (send a larger one for the whole answer), at the model's context window (Claude "
        "`model_context_window_exceeded`: shorten the prompt), or at Gemini's per-request limit (`CONTINUATION`). "
        "`stop_reason` says which.",
    )
    refused: bool = Field(
        False,
        description="The provider's safety system stopped the answer (Claude `refusal`, Gemini `SAFETY` and the "
        "like or a blocked prompt, an OpenAI-compatible `content_filter`): `response` is partial, a refusal, or "
        "empty when it refused outright. A refusal is an answer: it is not sent on to another provider.",
    )
    stop_reason: str | None = Field(
        None,
        description="Why the provider stopped, in its own words: Claude's `stop_reason` (`end_turn`, `max_tokens`, "
        "`model_context_window_exceeded`, `refusal`...), Gemini's `finishReason` (`STOP`, `MAX_TOKENS`, "
        "`CONTINUATION`, `SAFETY`...; a blocked prompt is `prompt blocked: <blockReason>`), an OpenAI-compatible "
        "`finish_reason` (`stop`, `length`, `content_filter`). None when it gave none, and in a dry run.",
    )


class AllProvidersFailed(UpstreamError):
    """Every candidate provider failed; `providers` lists each one's error."""

    slug, title = "llm-providers-failed", "Every LLM provider failed"


class AllProvidersTooSmall(AllProvidersFailed):
    """Every provider tried said the prompt does not fit its model's context: a 413, the caller must send less."""

    status, slug, title = 413, "llm-prompt-too-large", "Prompt too large for the model"
    retryable = False


class AllProvidersRateLimited(AllProvidersFailed, UpstreamRateLimited):
    """Every provider tried answered 429: a 429 `upstream-rate-limited` with the smallest Retry-After any gave.

    Still an `AllProvidersFailed` (with its `providers` list) for code that handles total failure; its
    type and title are the rate limit's, so a client backs off instead of treating it as an outage.
    """

    status, slug, title = UpstreamRateLimited.status, UpstreamRateLimited.slug, UpstreamRateLimited.title
    # The router has spent its attempts on every provider; a loop on top of it would multiply them.
    retryable = False


class AllProvidersTimedOut(AllProvidersFailed, UpstreamTimeout):
    """Every provider tried timed out: a 504 `upstream-timeout`, with the `providers` list.

    A gateway timeout, not a 502: nothing refused the prompt, the models were too slow for
    LLM_TIMEOUT_SECONDS, and a retry later (or a smaller `max_tokens`) may well be answered.
    """

    status, slug, title = UpstreamTimeout.status, UpstreamTimeout.slug, UpstreamTimeout.title
    retryable = False


def estimate_tokens(*parts: str | None) -> int:
    """About 4 characters a token for ASCII text; every other character counted as a token of its own (CJK runs
    at about one token a character or more, and 4 to 1 let a 60,000-word Chinese prompt past the guard)."""
    total = 0
    for part in parts:
        if part:
            ascii_chars = len(part) if part.isascii() else len(part.encode("ascii", "ignore"))
            total += ascii_chars // CHARS_PER_TOKEN + (len(part) - ascii_chars)
    return total


class AIRouter:
    """Routes one prompt to one provider; shared by routes, workflows and the scheduler."""

    def __init__(
        self,
        *,
        settings: Settings,
        providers: Mapping[str, LLMProvider],
        max_retry_wait_seconds: float = DEFAULT_MAX_RETRY_WAIT_SECONDS,
    ) -> None:
        self.settings = settings
        self.providers = dict(providers)
        self.max_retry_wait_seconds = max_retry_wait_seconds

    @property
    def configured(self) -> list[str]:
        return list(self.providers)

    async def generate(
        self,
        *,
        text: str,
        system: str | None = None,
        max_tokens: int | None = None,
        provider: ProviderChoice = "auto",
        dry_run: bool = False,
    ) -> Generation:
        """Generate with the routed provider, falling back on failure. `dry_run`: decide the provider and model
        as a real call would (validation, routing, context guard), and send nothing: `response` is empty."""
        settings = self.settings
        self._validate(text, system, max_tokens, provider)
        # A blank system text is no system text: Gemini rejects an empty systemInstruction part.
        system = system if system and system.strip() else None
        max_tokens = max_tokens or settings.llm_max_tokens
        started = time.perf_counter()
        word_count = len(text.split())
        threshold = settings.router_word_threshold

        order: list[str]
        if provider == "auto":
            primary = "gemini" if word_count <= threshold else "claude"
            order = [primary, "claude" if primary == "gemini" else "gemini", "local"]
            rule: Literal["word_threshold", "forced"] = "word_threshold"
            comparison = "<=" if word_count <= threshold else ">"
            reason = f"{word_count} words {comparison} {threshold}: {primary}"
        else:
            order = [provider]
            rule = "forced"
            reason = f"provider {provider} requested"

        needed = estimate_tokens(text, system) + max_tokens
        candidates, notes, too_small = self._candidates(order, needed)
        if not candidates:
            raise self._nothing_to_call(order, needed, too_small, forced=rule == "forced")

        if dry_run:
            first = candidates[0]
            skipped = f"; {'; '.join(notes)}" if notes else ""
            return Generation(
                response="",
                model_used=first.model,
                provider=first.name,
                routing=Routing(
                    word_count=word_count,
                    threshold=threshold,
                    rule=rule,
                    fallback_from=order[0] if first.name != order[0] else None,
                    reason=f"{reason}{skipped}; dry run: would send to {first.name}, sent nothing",
                ),
                usage=Usage(),
                latency_ms=int((time.perf_counter() - started) * 1000),
            )

        failures: list[tuple[str, ProblemError]] = []
        for candidate in candidates:
            try:
                completion = await with_retries(
                    lambda candidate=candidate: self._attempt(candidate, text, system, max_tokens),
                    attempts=settings.llm_max_attempts,
                    max_wait_seconds=self.max_retry_wait_seconds,
                )
            except ProblemError as exc:
                if is_caller_fault(exc):
                    raise
                logger.warning("%s failed, trying the next provider: %s", candidate.name, exc.detail)
                failures.append((candidate.name, exc))
                notes.append(f"{candidate.name} failed ({_short(exc)})")
                continue
            fallback_from = order[0] if candidate.name != order[0] else None
            if fallback_from is not None:
                reason = f"{reason}; {'; '.join(notes)}; fell back to {candidate.name}"
            return _generation(
                completion,
                scrub=self.settings.answer_scrubber.scrub,
                provider=candidate.name,
                routing=Routing(
                    word_count=word_count, threshold=threshold, rule=rule, fallback_from=fallback_from, reason=reason
                ),
                latency_ms=int((time.perf_counter() - started) * 1000),
            )
        raise _all_failed(failures, untried=too_small, needed=needed)

    # --- internals ---------------------------------------------------------------

    def _validate(self, text: str, system: str | None, max_tokens: int | None, provider: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("text is empty: send the prompt to process.", errors=[{"field": "text"}])
        if len(text) > self.settings.max_input_chars:
            raise PayloadTooLarge(
                f"text has {len(text)} characters; the limit is MAX_INPUT_CHARS={self.settings.max_input_chars}.",
                limit_chars=self.settings.max_input_chars,
            )
        if system is not None and len(system) > self.settings.max_input_chars:
            raise PayloadTooLarge(
                f"system has {len(system)} characters; the limit is MAX_INPUT_CHARS={self.settings.max_input_chars}.",
                limit_chars=self.settings.max_input_chars,
            )
        if max_tokens is not None and max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1.", errors=[{"field": "max_tokens"}])
        if provider not in ("auto", "gemini", "claude", "local"):
            raise InvalidInput("provider must be auto, gemini, claude or local.", errors=[{"field": "provider"}])

    def _candidates(self, order: Sequence[str], needed: int) -> tuple[list[LLMProvider], list[str], list[str]]:
        candidates: list[LLMProvider] = []
        notes: list[str] = []
        too_small: list[str] = []
        for name in order:
            found = self.providers.get(name)
            if found is None:
                if name != "local":  # the optional local model is not worth a note when absent
                    notes.append(f"{name} not configured")
                continue
            if needed > found.context_tokens:
                too_small.append(f"{name} ({found.context_tokens:,} tokens)")
                notes.append(f"{name}'s context window is too small (~{needed:,} tokens needed)")
                continue
            candidates.append(found)
        return candidates, notes, too_small

    def _nothing_to_call(
        self, order: Sequence[str], needed: int, too_small: list[str], *, forced: bool
    ) -> ProblemError:
        if too_small:
            return PayloadTooLarge(
                f"The prompt needs about {needed:,} tokens (text, system and max_tokens), more than the context "
                f"window of {', '.join(too_small)}. Shorten the text or lower max_tokens.",
                estimated_tokens=needed,
            )
        if forced:
            name = order[0]
            missing = self._missing_settings(name)
            return NotConfigured(name, missing)
        return NotConfigured(
            NO_PROVIDER,
            ["GEMINI_API_KEY", "ANTHROPIC_API_KEY"],
            detail=Phrase(("No LLM provider is ", CONFIGURED, ": ")) + SET_A_PROVIDER,
        )

    def _missing_settings(self, name: str) -> list[str]:
        integration = {"gemini": gemini.INTEGRATION, "claude": claude.INTEGRATION, "local": local_llm.INTEGRATION}
        return integration[name].missing(self.settings) or [_CONFIG_HINTS[name]]

    async def _attempt(self, candidate: LLMProvider, text: str, system: str | None, max_tokens: int) -> Completion:
        timeout = self.settings.llm_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                return await candidate.generate(text=text, system=system, max_tokens=max_tokens)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{candidate.name} did not answer within LLM_TIMEOUT_SECONDS={timeout:g}.", upstream=candidate.name
            ) from None


def _short(exc: ProblemError) -> str:
    upstream_status = exc.extras.get("upstream_status")
    return f"{upstream_status} {exc.slug}" if upstream_status else exc.slug


def _generation(
    completion: Completion, *, scrub: Callable[[str], str], provider: str, routing: Routing, latency_ms: int
) -> Generation:
    # The answer is upstream text like any error message: an endpoint or gateway that echoes the request headers
    # in it (found by a security review) put the provider's key into the /ai-process answer, the stored
    # Idempotency-Key replay and the briefing's Slack post, which sent one vendor's key to another.
    return Generation(
        response=scrub(completion.text),
        model_used=scrub(completion.model),
        provider=provider,
        routing=routing,
        usage=Usage(input_tokens=completion.input_tokens, output_tokens=completion.output_tokens),
        latency_ms=latency_ms,
        truncated=completion.truncated,
        refused=completion.refused,
        stop_reason=scrub(completion.stop_reason) if completion.stop_reason is not None else None,
    )


def _all_failed(
    failures: list[tuple[str, ProblemError]], *, untried: Sequence[str] = (), needed: int = 0
) -> AllProvidersFailed:
    # Each provider's detail as each reader reads it: a refused key's remedy is the operator's in a chat reply
    # ("The assistant could not answer: ..."), and the API's in the HTTP answer and the ledger.
    listed: Phrase = Phrase((PerAudience(api=_listed(failures, "api"), chat=_listed(failures, "chat")),))
    if untried:
        # A provider the context guard passed over could have answered a shorter prompt: say so, or the
        # caller reads "every provider" as every configured one (found by a first-time-user review).
        listed += f" Not tried, context window too small for ~{needed:,} tokens: {', '.join(untried)}."
    providers: list[dict[str, Any]] = [
        {"provider": name, "status": exc.status, "error": exc.slug, "detail": exc.detail} for name, exc in failures
    ]
    if all(isinstance(exc, ContextExceeded) for _, exc in failures):
        return AllProvidersTooSmall(
            "The prompt fits no configured model's context window: send less. " + listed,
            upstream="llm",
            providers=providers,
        )
    if all(isinstance(exc, UpstreamRateLimited) for _, exc in failures):
        # Anthropic's 529 overloaded and a 503 are UpstreamErrors, not rate limits: the vendor is down, not
        # limiting us, so a mix with them stays a 502. The raw smallest wait is passed on, not reduced by
        # the time spent since: a client that waits it never arrives early.
        waits = [exc.retry_after for _, exc in failures if exc.retry_after is not None]
        retry_after = min(waits) if waits else None
        when = f"; try again in {math.ceil(retry_after)} s" if retry_after is not None else ""
        return AllProvidersRateLimited(
            f"Every LLM provider is rate limiting us{when}. " + listed,
            upstream="llm",
            retry_after=retry_after,
            providers=providers,
        )
    if all(isinstance(exc, UpstreamTimeout) for _, exc in failures):
        return AllProvidersTimedOut(
            "Every LLM provider timed out (LLM_TIMEOUT_SECONDS per attempt); try again, or ask for fewer "
            "max_tokens. " + listed,
            upstream="llm",
            providers=providers,
        )
    return AllProvidersFailed("Every LLM provider failed. " + listed, upstream="llm", providers=providers)


def _listed(failures: list[tuple[str, ProblemError]], audience: Audience) -> str:
    return "; ".join(f"{name}: {exc.words(audience).removesuffix('.')}" for name, exc in failures) + "."


# --- Building it in the lifespan ----------------------------------------------------


async def build_ai_router(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    transport: Literal["aiohttp", "httpx"] = "aiohttp",
    max_retry_wait_seconds: float = DEFAULT_MAX_RETRY_WAIT_SECONDS,
) -> AIRouter:
    """Open a client for each configured provider; each close is registered on `stack`.

    `transport="aiohttp"` is the measured choice (docs/llm-routing.md); "httpx"
    exists for the benchmark and for environments without aiohttp.
    """
    import httpx

    providers: dict[str, LLMProvider] = {}
    timeout = settings.llm_timeout_seconds
    session: aiohttp.ClientSession | None = None
    http: httpx.AsyncClient | None = None

    def aiohttp_session() -> aiohttp.ClientSession:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=settings.http_max_connections),
                # Proxies from the environment are not silently applied to prompts.
                trust_env=False,
                # A redirect would carry the key and the prompt to another host.
                middlewares=(refuse_redirects,),
                response_class=CappedResponse,
            )
            stack.push_async_callback(session.close)
        return session

    def httpx_client() -> httpx.AsyncClient:
        nonlocal http
        if http is None:
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(max_connections=settings.http_max_connections),
                follow_redirects=False,
                trust_env=False,  # as the aiohttp session: no proxy from the environment for prompts
            )
            stack.push_async_callback(http.aclose)
        return http

    if settings.gemini_api_key is not None:
        gemini_provider = gemini.GeminiProvider(
            api_key=settings.gemini_api_key,
            model=settings.gemini_model,
            base_url=settings.gemini_base_url,
            thinking_level=settings.gemini_thinking_level,
            timeout_seconds=timeout,
            session=aiohttp_session() if transport == "aiohttp" else None,
            http=httpx_client() if transport == "httpx" else None,
        )
        stack.push_async_callback(gemini_provider.aclose)
        providers["gemini"] = gemini_provider
    if settings.anthropic_api_key is not None:
        claude_provider = claude.ClaudeProvider(
            api_key=settings.anthropic_api_key,
            model=settings.claude_model,
            base_url=settings.anthropic_base_url,
            timeout_seconds=timeout,
            aiohttp_transport=transport == "aiohttp",
        )
        stack.push_async_callback(claude_provider.aclose)
        providers["claude"] = claude_provider
    if settings.local_llm_base_url and settings.local_llm_model:
        providers["local"] = local_llm.LocalLLMProvider(
            base_url=settings.local_llm_base_url,
            model=settings.local_llm_model,
            api_key=settings.local_llm_api_key,
            timeout_seconds=timeout,
            session=aiohttp_session(),
            context_tokens=settings.local_llm_context_tokens,
        )
    return AIRouter(settings=settings, providers=providers, max_retry_wait_seconds=max_retry_wait_seconds)


async def open_ai_router(resources: Resources, stack: AsyncExitStack) -> AIRouter:
    return await build_ai_router(resources.settings, stack)
