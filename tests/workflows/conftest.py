"""A migrated database and a ledger for workflow tests that run without the HTTP app; a Toggl skill over respx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from core.ledger import Ledger
from core.store import create_engine, migrate, session_factory
from skills.toggl import TogglSkill
from tests.workflows.world import TOGGL_BASE, TOGGL_TOKEN, WORKSPACE, World, world


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator:
    engine = create_engine(database_url)
    await migrate(engine)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def ledger(sessions) -> Ledger:
    return Ledger(sessions)


@pytest.fixture
async def stop_skill(make_settings) -> AsyncIterator[tuple[TogglSkill, respx.MockRouter]]:
    """The Toggl skill over its own client, and a respx router whose PATCH of entry 77 answers 409: a planned
    stop's retry meeting "already stopped" (the late-stop tests after a lost answer, within and across firings)."""
    settings = make_settings(toggl_api_token=TOGGL_TOKEN, toggl_workspace_id=WORKSPACE, toggl_base_url=TOGGL_BASE)
    async with httpx.AsyncClient() as http, respx.mock(base_url=TOGGL_BASE, assert_all_called=False) as toggl:
        toggl.patch(f"/workspaces/{WORKSPACE}/time_entries/77/stop").mock(
            return_value=httpx.Response(409, json="Time entry already stopped")
        )
        yield TogglSkill(settings, http), toggl


@pytest.fixture
async def w() -> AsyncIterator[World]:
    """The app wired to fake Slack, Toggl, Twilio and Claude (`tests.workflows.world`), for chat-command tests."""
    async with world() as fakes:
        yield fakes
