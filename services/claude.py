"""Claude provider, built on anthropic's AsyncAnthropic (`messages.create`).

`max_retries=0`: the SDK would otherwise retry 408/409/429/5xx twice on its
own, multiplying with the router's loop. The HTTP transport (aiohttp through
`DefaultAioHttpClient`, or httpx) is picked by the router from the
benchmark in docs/llm-routing.md; the client is closed in the lifespan.
"""

from __future__ import annotations

import anthropic
from anthropic.types import Message
from pydantic import SecretStr

from core.errors import UpstreamTimeout, UpstreamUnavailable
from core.registry import Integration
from core.upstream import parse_retry_after
from services.base import Completion, first_text, status_error, unusable_answer

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
_KEY_HINT = "Check ANTHROPIC_API_KEY and CLAUDE_MODEL."


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
        self.model = model
        self.context_tokens = context_tokens
        http_client = (
            anthropic.DefaultAioHttpClient(timeout=timeout_seconds)
            if aiohttp_transport
            else anthropic.DefaultAsyncHttpxClient(timeout=timeout_seconds)
        )
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key.get_secret_value(),
            base_url=base_url,
            max_retries=0,
            timeout=timeout_seconds,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def generate(self, *, text: str, system: str | None, max_tokens: int) -> Completion:
        extra = {"system": system} if system else {}
        try:
            message = await self._client.messages.create(
                model=self.model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": text}],
                **extra,
            )
        except anthropic.APIStatusError as exc:
            said = exc.api_message or _body_text(exc)
            retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
            raise status_error(
                upstream=UPSTREAM, status=exc.status_code, message=said, retry_after=retry_after, hint=_KEY_HINT
            ) from None
        except anthropic.APITimeoutError:
            raise UpstreamTimeout("claude did not answer in time.", upstream=UPSTREAM) from None
        except anthropic.APIConnectionError as exc:
            raise UpstreamUnavailable(
                f"claude could not be reached ({type(exc.__cause__ or exc).__name__}). Check ANTHROPIC_BASE_URL.",
                upstream=UPSTREAM,
            ) from None
        except (anthropic.APIResponseValidationError, ValueError, TypeError) as exc:
            raise unusable_answer(UPSTREAM, exc) from None
        if not isinstance(message, Message):
            # A 2xx that is not JSON (a proxy's HTML page) comes back as a bare string.
            raise unusable_answer(UPSTREAM, "not a JSON message")
        answer = first_text("".join(block.text for block in message.content if block.type == "text"))
        if answer is None:
            raise unusable_answer(UPSTREAM, f"no text; stop reason {message.stop_reason}")
        return Completion(
            text=answer,
            model=message.model or self.model,
            input_tokens=message.usage.input_tokens if message.usage else None,
            output_tokens=message.usage.output_tokens if message.usage else None,
        )


def _body_text(exc: anthropic.APIStatusError) -> str:
    try:
        return exc.response.text
    except Exception:  # the body may be unread or undecodable; the status still tells the story
        return exc.message
