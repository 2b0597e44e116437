"""A small scriptable HTTP server on 127.0.0.1 for fake upstreams.

Used where respx cannot reach (SDKs on aiohttp: slack_sdk, google-genai) and
by the benchmark. Each fake records every request it receives so tests can
assert on exactly what reached the "upstream".

    async with FakeUpstream() as fake:
        fake.route("POST", "/api/chat.postMessage", lambda req: json_response({"ok": True, "ts": "1.2"}))
        fake.queue("POST", "/api/chat.postMessage", Reply(429, headers={"Retry-After": "1"}))
        ... point the client at fake.url ...
        assert fake.requests[0].json["channel"] == "#general"
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def form(self) -> dict[str, str]:
        return {key: values[-1] for key, values in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass
class Reply:
    """A scripted answer. `delay` seconds before answering; `drop=True` closes the connection; `truncate=True`
    sends the status, headers and the start of a body, then closes the connection mid-answer."""

    status: int = 200
    json: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    truncate: bool = False
    content_type: str | None = None
    #: Bytes sent as the body exactly (invalid UTF-8, say), instead of `json` or `text`.
    raw: bytes | None = None


Handler = Callable[[Recorded], "Reply | Awaitable[Reply]"]


class FakeUpstream:
    def __init__(self, *, latency: float = 0.0, record: bool = True) -> None:
        self.latency = latency
        self.record = record
        self.requests: list[Recorded] = []
        self._routes: dict[tuple[str, str], Handler] = {}
        self._queues: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self.port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Default answer for METHOD path (used when nothing is queued)."""
        self._routes[(method.upper(), path)] = handler

    def queue(self, method: str, path: str, *replies: Reply) -> None:
        """One-shot answers, used in order before the route's default."""
        self._queues[(method.upper(), path)].extend(replies)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or r.path == path)
        ]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        recorded = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
        )
        if self.record:
            self.requests.append(recorded)
        key = (request.method, request.path)
        if self._queues.get(key):
            reply = self._queues[key].popleft()
        elif key in self._routes:
            produced = self._routes[key](recorded)
            reply = await produced if asyncio.iscoroutine(produced) else produced  # type: ignore[assignment]
        else:
            reply = Reply(404, json={"error": f"fake has no route for {request.method} {request.path}"})
        delay = self.latency + reply.delay
        if delay:
            await asyncio.sleep(delay)
        if reply.truncate:
            started = web.StreamResponse(
                status=reply.status, headers={"Content-Type": "application/json", "Content-Length": "500"}
            )
            await started.prepare(request)
            await started.write(b'{"candidates": [')
            assert request.transport is not None
            request.transport.close()
            return started
        if reply.drop:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if reply.raw is not None:
            return web.Response(
                status=reply.status,
                body=reply.raw,
                headers=reply.headers,
                content_type=reply.content_type or "application/json",
            )
        if reply.text is not None:
            return web.Response(
                status=reply.status,
                text=reply.text,
                headers=reply.headers,
                content_type=reply.content_type or "text/plain",
            )
        return web.Response(
            status=reply.status,
            body=json.dumps(reply.json).encode(),
            headers=reply.headers,
            content_type=reply.content_type or "application/json",
        )

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
