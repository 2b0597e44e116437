"""Claude provider, built on anthropic's AsyncAnthropic (`messages.create`).

`max_retries=0`: the SDK would otherwise retry 408/409/429/5xx twice on its
own, multiplying with the router's loop. The answer is read through
`with_raw_response` and only the fields the router needs are taken from the
JSON: building the SDK's `Message` model was a fifth of the SDK's CPU per call
(docs/benchmarks.md). OpenTelemetry spans are off unless
ANTHROPIC_OPEN_TELEMETRY is set: the service registers no tracer, so each call
paid for a span nobody records. The SDK itself is imported when the provider
is built, not with this module: `import anthropic` is ~40 MiB of resident
pydantic types, which an install without ANTHROPIC_API_KEY should not carry. The HTTP transport (aiohttp through
`DefaultAioHttpClient`, or httpx) is picked by the router from the
benchmark in docs/llm-routing.md; the client is closed in the lifespan. Whichever it is, the SDK reads
every answer whole, so `services/claude_transport.py` caps it at 1 MiB, as every other upstream's answer is.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from core.errors import (
    PerAudience,
    Phrase,
    ProblemError,
    UpstreamTimeout,
    UpstreamUnavailable,
    operator_checks,
)
from core.registry import Integration
from core.upstream import parse_retry_after
from services.base import (
    Completion,
    account_refused,
    first_text,
    status_error,
    stop_reason_of,
    token_count,
    unusable_answer,
)

if TYPE_CHECKING:
    import anthropic

INTEGRATION = Integration(
    name="claude",
    kind="llm",
    description="Anthropic Claude: long prompts (above ROUTER_WORD_THRESHOLD words).",
    required=("ANTHROPIC_API_KEY",),
    optional=("CLAUDE_MODEL", "ANTHROPIC_BASE_URL"),
    operations=("generate",),
)

UPSTREAM = "claude"
#: claude-haiku-4-5 (and the other current Claude models by default) take 200K tokens.
DEFAULT_CONTEXT_TOKENS = 200_000
_KEY_HINT = operator_checks("ANTHROPIC_API_KEY and CLAUDE_MODEL.")
#: Anthropic answers a disabled organization with a 400 invalid_request_error ("This organization has been
#: disabled."): our account's fault, not the caller's, so another provider may answer.
_ORGANIZATION_DISABLED = re.compile(r"organization has been disabled", re.IGNORECASE)
#: Stop reasons that mean the model stopped before it finished: at `max_tokens`, or at the model's context window
#: (`model_context_window_exceeded`, when the prompt and `max_tokens` together pass it).
_CUT_SHORT = frozenset({"max_tokens", "model_context_window_exceeded"})
#: Worded per reader: a chat user whose question it failed reads that the operator must act.
_FIX_ORGANIZATION = Phrase(
    (
        "The Anthropic organization of ANTHROPIC_API_KEY has been disabled: ",
        PerAudience(
            api="resolve it in the Anthropic Console, or set ANTHROPIC_API_KEY to a key of another organization and "
            "restart.",
            chat="the operator must resolve it in the Anthropic Console, or replace ANTHROPIC_API_KEY and restart "
            "the service.",
        ),
    )
)


class ClaudeProvider:
    """One `messages.create` call per attempt; failures become `core.errors` problems."""

    name = UPSTREAM

    def __init__(
        self,
        *,
        api_key: SecretStr,
        model: str,
        base_url: str,
        timeout_seconds: float,
        aiohttp_transport: bool = True,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    ) -> None:
        import anthropic  # here, not at the top: see the module docstring

        from services.claude_transport import cap_answers

        self._sdk = anthropic
        self.model = model
        self.context_tokens = context_tokens
        # follow_redirects=False: the SDK's clients follow redirects, and a 307 from ANTHROPIC_BASE_URL sent the
        # key and the prompt on to the host it named (found by a black-box review). A 3xx is then an error.
        # trust_env=False: a proxy named in the environment is not silently applied to prompts, as for Gemini and
        # the local model (the router's aiohttp session); the SDK's clients picked HTTP(S)_PROXY up.
        client_options: dict[str, Any] = {"timeout": timeout_seconds, "follow_redirects": False, "trust_env": False}
        http_client = (
            anthropic.DefaultAioHttpClient(**client_options)
            if aiohttp_transport
            else anthropic.DefaultAsyncHttpxClient(**client_options)
        )
        cap_answers(http_client, upstream=UPSTREAM, setting="ANTHROPIC_BASE_URL")  # the SDK reads answers whole
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key.get_secret_value(),
            base_url=base_url,
            max_retries=0,
            timeout=timeout_seconds,
            http_client=http_client,
            # None = the SDK reads its ANTHROPIC_OPEN_TELEMETRY* variables (an operator who wires up tracing).
            open_telemetry=None if os.environ.get("ANTHROPIC_OPEN_TELEMETRY") else False,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def generate(self, *, text: str, system: str | None, max_tokens: int) -> Completion:
        anthropic = self._sdk
        extra = {"system": system} if system else {}
        try:
            raw = await self._client.messages.with_raw_response.create(
                model=self.model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": text}],
                **extra,
            )
            message = json.loads(await raw.read())
        except anthropic.APIStatusError as exc:
            said = exc.api_message or _body_text(exc)
            retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
            if exc.status_code == 400 and _ORGANIZATION_DISABLED.search(said):
                raise account_refused(
                    upstream=UPSTREAM, status=400, message=said, fix=_FIX_ORGANIZATION, refused="to serve our account"
                ) from None
            raise status_error(
                upstream=UPSTREAM,
                status=exc.status_code,
                message=said,
                retry_after=retry_after,
                hint=_KEY_HINT,
                endpoint_setting="ANTHROPIC_BASE_URL",
            ) from None
        except anthropic.APITimeoutError:
            raise UpstreamTimeout("claude did not answer in time.", upstream=UPSTREAM) from None
        except anthropic.APIConnectionError as exc:
            if isinstance(exc.__cause__, ProblemError):  # claude_transport refused the answer as it was read
                raise exc.__cause__ from None
            raise UpstreamUnavailable(
                f"claude could not be reached ({type(exc.__cause__ or exc).__name__}). "
                + operator_checks("ANTHROPIC_BASE_URL."),
                upstream=UPSTREAM,
            ) from None
        except (anthropic.APIResponseValidationError, ValueError, TypeError) as exc:
            # ValueError includes a 2xx body that is not JSON (a proxy's HTML page).
            raise unusable_answer(UPSTREAM, exc) from None
        return self._completion(message)

    def _completion(self, message: Any) -> Completion:
        """The Messages API answer (`content` blocks, `usage`, `model`) as a Completion; anything else is unusable."""
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise unusable_answer(UPSTREAM, "not a Messages API answer")
        texts = [
            block["text"]
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ]
        refused = message.get("stop_reason") == "refusal"
        answer = first_text("".join(texts))
        if answer is None:
            if not refused:
                raise unusable_answer(UPSTREAM, f"no text; stop reason {message.get('stop_reason')}")
            answer = ""  # refused outright: an answer (flagged), not a failure to send to the next provider
        usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
        model = message.get("model")
        return Completion(
            text=answer,
            model=model if isinstance(model, str) and model else self.model,
            input_tokens=token_count(usage.get("input_tokens")),
            output_tokens=token_count(usage.get("output_tokens")),
            truncated=message.get("stop_reason") in _CUT_SHORT,
            refused=refused,
            stop_reason=stop_reason_of(message.get("stop_reason")),
        )


def _body_text(exc: anthropic.APIStatusError) -> str:
    try:
        return exc.response.text
    except Exception:  # the body may be unread or undecodable; the status still tells the story
        return exc.message
