"""A migrated database and a ledger for workflow tests that run without the HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.ledger import Ledger
from core.store import create_engine, migrate, session_factory


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
