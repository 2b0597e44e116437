"""Fake Anthropic, Gemini and OpenAI-compatible servers on 127.0.0.1, built on FakeUpstream.

Each fake answers its vendor's generate endpoint with the vendor's real
response shape (echoing a short summary of what it received) and records
every request, so tests assert on the exact model, prompt, system text,
max_tokens and auth headers that reached the "vendor".

    async with FakeAnthropic() as claude, FakeGemini() as gemini:
        claude.queue("POST", ANTHROPIC_PATH, anthropic_error(529, "overloaded_error", "Overloaded"))
        ... ANTHROPIC_BASE_URL=claude.url, GEMINI_BASE_URL=gemini.url ...
        assert claude.calls("POST", ANTHROPIC_PATH)[0].json["model"] == "claude-haiku-4-5"
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeUpstream, Recorded, Reply

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
DEFAULT_GEMINI_MODEL = "gemini-3.8-flash"


def gemini_path(model: str = DEFAULT_GEMINI_MODEL) -> str:
    return f"/v1/models/{model}:generateContent"


# --- Success bodies, in each vendor's shape ----------------------------------------


def anthropic_message(text: str, *, model: str = "claude-haiku-4-5", input_tokens: int = 11, output_tokens: int = 7):
    return {
        "id": "msg_01FakeFakeFakeFake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def gemini_content(text: str, *, model: str = DEFAULT_GEMINI_MODEL, prompt_tokens: int = 13, output_tokens: int = 5):
    return {
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
        },
        "modelVersion": model,
        "responseId": "fake-response-id",
    }


def openai_completion(text: str, *, model: str = "llama3.2", prompt_tokens: int = 17, completion_tokens: int = 3):
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_764_057_600,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# --- Error replies, in each vendor's shape ---------------------------------------------


def anthropic_error(status: int, kind: str, message: str, *, headers: dict[str, str] | None = None) -> Reply:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return Reply(status, json=body, headers=headers or {})


def gemini_error(
    status: int, grpc_status: str, message: str, *, headers: dict[str, str] | None = None, details: Any = None
) -> Reply:
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc_status}
    if details is not None:
        error["details"] = details
    return Reply(status, json={"error": error}, headers=headers or {})


def openai_error(status: int, kind: str, message: str, *, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json={"error": {"message": message, "type": kind, "code": None}}, headers=headers or {})


HTML_ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


# --- What the fakes received, decoded --------------------------------------------------


def rate_limited_reply(vendor: str, headers: dict[str, str]) -> Reply:
    """A 429 in `vendor`'s own error shape ("claude", "gemini" or "local")."""
    if vendor == "claude":
        return anthropic_error(429, "rate_limit_error", "Rate limit exceeded", headers=headers)
    if vendor == "gemini":
        return gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", headers=headers)
    return openai_error(429, "rate_limit_exceeded", "Rate limit reached", headers=headers)


def server_error_reply(vendor: str, status: int) -> Reply:
    """A 5xx in `vendor`'s own error shape."""
    if vendor == "claude":
        return anthropic_error(status, "api_error", "Internal server error")
    if vendor == "gemini":
        return gemini_error(status, "INTERNAL" if status == 500 else "UNAVAILABLE", "An internal error has occurred.")
    return openai_error(status, "server_error", "The server had an error")


def gemini_prompt(recorded: Recorded) -> str:
    return "".join(part.get("text", "") for part in recorded.json["contents"][0]["parts"])


def gemini_system(recorded: Recorded) -> str | None:
    instruction = recorded.json.get("systemInstruction")
    if not instruction:
        return None
    return "".join(part.get("text", "") for part in instruction["parts"])


def _summary(prompt: str) -> str:
    words = prompt.split()
    return f"{len(words)} words received"


# --- The fakes ---------------------------------------------------------------------------


class _LLMFake(FakeUpstream):
    """FakeUpstream whose handlers are cancelled when the client hangs up, and which counts those.

    `cancelled` is how a test proves that our side really dropped an upstream
    call (a client disconnect, a timeout) instead of leaving it running.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cancelled = 0
        self.received = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received.set()
        try:
            return await super()._handle(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that hangs up cancels the handler (aiohttp's default is to let it run).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self


class FakeAnthropic(_LLMFake):
    """Answers POST /v1/messages like Anthropic: `claude: N words received`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.route("POST", ANTHROPIC_PATH, self._answer)

    @staticmethod
    def _answer(request: Recorded) -> Reply:
        body = request.json
        prompt = "".join(
            block["text"] if isinstance(block, dict) else "" for block in _as_blocks(body["messages"][0]["content"])
        )
        return Reply(200, json=anthropic_message(f"claude: {_summary(prompt)}", model=body["model"]))


def _as_blocks(content: Any) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


class FakeGemini(_LLMFake):
    """Answers POST /v1/models/{model}:generateContent like Gemini: `gemini: N words received`."""

    def __init__(self, *, model: str = DEFAULT_GEMINI_MODEL, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.path = gemini_path(model)
        self.route("POST", self.path, self._answer)

    def _answer(self, request: Recorded) -> Reply:
        return Reply(200, json=gemini_content(f"gemini: {_summary(gemini_prompt(request))}", model=self.model))


class FakeOpenAI(_LLMFake):
    """Answers POST /v1/chat/completions like an OpenAI-compatible server (Ollama, vLLM)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.route("POST", OPENAI_PATH, self._answer)

    @staticmethod
    def _answer(request: Recorded) -> Reply:
        body = request.json
        prompt = next(message["content"] for message in body["messages"] if message["role"] == "user")
        return Reply(200, json=openai_completion(f"local: {_summary(prompt)}", model=body["model"]))

    @property
    def base_url(self) -> str:
        """The LOCAL_LLM_BASE_URL to configure: OpenAI convention, version included."""
        return f"{self.url}/v1"
