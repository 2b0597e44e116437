"""The fake Toggl of bench/fakes.py on a loopback port, with the service's own TogglSkill pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from bench.fakes import TogglEntries, build_vendor_app, vendor_settings
from core.settings import Settings
from skills.toggl import TogglSkill

WID = 1  # vendor_settings' TOGGL_WORKSPACE_ID


@dataclass
class FakeToggl:
    api: str  # TOGGL_BASE_URL
    entries: TogglEntries
    skill: TogglSkill
    http: httpx.AsyncClient


@pytest.fixture
async def toggl(tmp_path) -> AsyncIterator[FakeToggl]:
    entries = TogglEntries()
    runner = web.AppRunner(build_vendor_app(toggl=entries), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = Settings(
        _env_file=None,
        **vendor_settings(f"http://127.0.0.1:{port}"),
        database_url=f"sqlite+aiosqlite:///{tmp_path}/unused.db",
    )
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
            yield FakeToggl(settings.toggl_base_url, entries, TogglSkill(settings, http), http)
    finally:
        await runner.cleanup()
