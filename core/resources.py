"""The shared resources one app instance owns, opened in the lifespan and closed after it."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core import __version__
from core.ledger import Ledger
from core.registry import Registry
from core.settings import Settings
from core.store import create_engine, migrate, session_factory


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one shared httpx client: explicit timeouts and pool limits, no per-request clients."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.http_timeout_seconds, connect=settings.connect_timeout_seconds),
        limits=httpx.Limits(
            max_connections=settings.http_max_connections,
            max_keepalive_connections=max(1, settings.http_max_connections // 2),
            keepalive_expiry=30,
        ),
        headers={"User-Agent": f"ai-productivity-orchestrator/{__version__}"},
        follow_redirects=False,
    )


@dataclass
class Resources:
    settings: Settings
    registry: Registry
    http: httpx.AsyncClient
    engine: AsyncEngine
    sessions: async_sessionmaker
    ledger: Ledger
    # Later capabilities (SDK clients, scheduler) hang their long-lived objects here.
    extras: dict[str, Any] = field(default_factory=dict)


async def open_resources(settings: Settings, registry: Registry, stack: AsyncExitStack) -> Resources:
    """Open everything in order and register each close on `stack` (closed in reverse)."""
    engine = create_engine(settings.database_url)
    stack.push_async_callback(engine.dispose)
    await migrate(engine)
    sessions = session_factory(engine)
    http = build_http_client(settings)
    stack.push_async_callback(http.aclose)
    return Resources(
        settings=settings,
        registry=registry,
        http=http,
        engine=engine,
        sessions=sessions,
        ledger=Ledger(sessions, scrubber=settings.secret_scrubber),
    )
