"""Optional local provider: any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server).

LOCAL_LLM_BASE_URL follows the OpenAI convention and includes the version
(`http://localhost:11434/v1` for Ollama); requests go to
`{base}/chat/completions`. It can be forced per request and serves as the
last fallback; it never changes the Gemini/Claude word rule. With it, someone
with a local model can run fully offline.

It shares the router's aiohttp session (the transport the benchmark chose):
no SDK, one plain JSON POST.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from pydantic import SecretStr

from core.errors import UpstreamTimeout, operator_checks
from core.registry import Integration
from core.upstream import AnswerTooLarge, RedirectRefused, guard_refusal, parse_retry_after
from services.base import (
    Completion,
    connection_failed,
    first_text,
    status_error,
    stop_reason_of,
    token_count,
    unusable_answer,
)

INTEGRATION = Integration(
    name="local",
    kind="llm",
    description="Optional OpenAI-compatible server (Ollama, vLLM, llama.cpp): forced per request or last fallback.",
    required=("LOCAL_LLM_BASE_URL", "LOCAL_LLM_MODEL"),
    optional=("LOCAL_LLM_API_KEY", "LOCAL_LLM_CONTEXT_TOKENS"),
    operations=("generate",),
)

UPSTREAM = "local"
#: The settings to check, by reader: only the operator can change them (`operator_checks`).
_HINT = operator_checks("LOCAL_LLM_BASE_URL (version included, e.g. http://localhost:11434/v1) and LOCAL_LLM_MODEL.")


class LocalLLMProvider:
    """One POST /chat/completions per attempt."""

    name = UPSTREAM

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None,
        timeout_seconds: float,
        session: aiohttp.ClientSession,
        context_tokens: int,
    ) -> None:
        self.model = model
        self.context_tokens = context_tokens
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session = session

    async def generate(self, *, text: str, system: str | None, max_tokens: int) -> Completion:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "stream": False}
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        try:
            async with self._session.post(self.url, json=payload, headers=headers, timeout=self._timeout) as response:
                raw = await response.read()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"local did not answer in time ({type(exc).__name__}).", upstream=UPSTREAM) from None
        except (AnswerTooLarge, RedirectRefused) as exc:
            raise guard_refusal(exc, upstream=UPSTREAM, setting="LOCAL_LLM_BASE_URL") from None
        except aiohttp.ClientError as exc:
            raise connection_failed(UPSTREAM, exc, _HINT) from None
        body = _json_or_none(raw)
        if status >= 400:
            message = _error_message(body) or raw.decode("utf-8", "replace")
            raise status_error(upstream=UPSTREAM, status=status, message=message, retry_after=retry_after, hint=_HINT)
        if not isinstance(body, dict):
            raise unusable_answer(UPSTREAM, "not a JSON object")
        refused = _finish_reason(body) == "content_filter"
        try:
            answer = first_text(body["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise unusable_answer(UPSTREAM, "no choices[0].message.content") from None
        if answer is None:
            if not refused:
                raise unusable_answer(UPSTREAM, "empty content")
            answer = ""  # refused outright: an answer (flagged), not a failure to send elsewhere
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return Completion(
            text=answer,
            model=str(body.get("model") or self.model),
            input_tokens=token_count(usage.get("prompt_tokens")),
            output_tokens=token_count(usage.get("completion_tokens")),
            truncated=_finish_reason(body) == "length",
            refused=refused,
            stop_reason=stop_reason_of(_finish_reason(body)),
        )


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or "")
        if isinstance(error, str):  # Ollama: {"error": "model 'x' not found"}
            return error
    return None


def _finish_reason(body: dict[str, Any]) -> Any:
    """OpenAI-compatible servers say `length` when the answer stopped at max_tokens."""
    try:
        return body["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
