"""A TCP server on 127.0.0.1 whose every connection is handled by the test's own coroutine: for upstreams that
misbehave below what a real fake server can be made to do (never greeting, hanging up, speaking another protocol)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


@asynccontextmanager
async def raw_tcp_server(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[object]],
) -> AsyncIterator[tuple[int, list[int]]]:
    """Yields the port and a list that grows by one per connection. The writer is closed after `on_connect`."""
    connections: list[int] = []
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await on_connect(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        await server.wait_closed()
        # Let every handler finish and close its writer before the loop ends (no "loop is closed" warnings).
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
