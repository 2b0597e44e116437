"""A raw HTTP/1.1 server on 127.0.0.1 that answers every request with bytes the test controls: a body sent one
piece at a time with pauses (a trickle), or a huge or compressed one. For what aiohttp-based fakes cannot send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def raw_http_server(
    body: bytes,
    *,
    pieces: int = 1,
    pause: float = 0.0,
    headers: dict[str, str] | None = None,
    head_pause: float = 0.0,
    status: str = "200 OK",
    requests: list[bytes] | None = None,
) -> AsyncIterator[str]:
    """Serve `body` in `pieces` chunks `pause` seconds apart; yields the base URL. With `head_pause`, the
    status line and headers are sent a byte at a time, that many seconds apart. Each request's head is
    appended to `requests` when given. Handlers still sending when the test ends are stopped then, so a body
    trickled for longer than the test needs does not outlive it."""
    handlers: list[asyncio.Task[None]] = []
    done = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if requests is not None:
                requests.append(head)
            answer_head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
            raw_head = (
                f"HTTP/1.1 {status}\r\n".encode()
                + b"".join(f"{k}: {v}\r\n".encode() for k, v in answer_head.items())
                + b"\r\n"
            )
            if head_pause:
                for byte in raw_head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(head_pause)
            else:
                writer.write(raw_head)
            size = max(1, -(-len(body) // pieces))
            for start in range(0, len(body), size):
                if done.is_set() or reader.at_eof():
                    break
                writer.write(body[start : start + size])
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        done.set()
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
