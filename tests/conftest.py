"""Shared fixtures.

- Every test runs with a clean environment (no setting leaks in from the
  developer's shell or `.env`) and a fresh SQLite file.
- `make_client(**settings)` builds the real app, runs its real lifespan and
  returns an httpx client over ASGITransport.
- A socket guard fails any test that tries to reach an address other than
  loopback: the real Slack, Toggl, Twilio, Google and Anthropic are never called.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings

# --- Network guard ----------------------------------------------------------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"test tried to reach {address!r}; only loopback is allowed")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"test tried to reach {address!r}; only loopback is allowed")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


# --- Clean environment -------------------------------------------------------------

_ALIASES = ("GOOGLE_API_KEY", "CLAUDE_API_KEY", "TOGGL_API_KEY")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [*(field.upper() for field in Settings.model_fields), *_ALIASES]:
        monkeypatch.delenv(name, raising=False)
    # Nothing may read the developer's .env: run from an empty directory.
    monkeypatch.chdir(tmp_path)


# --- App and client ------------------------------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/test.db"


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    def _make(**overrides: Any) -> Settings:
        overrides.setdefault("database_url", database_url)
        return Settings(_env_file=None, **overrides)

    return _make


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    from main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings],
) -> Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]:
    """`async with make_client(slack_bot_token="x") as client:` runs the real app and lifespan; with
    `send_api_key=True` the client sends APP_API_KEY on every request."""

    @asynccontextmanager
    async def _make(*, send_api_key: bool = False, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(**overrides)
        async with running_app(settings) as (app, client):
            client.app = app  # type: ignore[attr-defined]
            if send_api_key and settings.app_api_key is not None:
                client.headers["X-API-Key"] = settings.app_api_key.get_secret_value()
            yield client

    return _make


@pytest.fixture
async def client(
    make_client: Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]],
) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client


# --- PostgreSQL (scripts/test-postgres starts one for `make test`) -------------------


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import os
    import uuid

    import asyncpg

    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail("REQUIRE_POSTGRES=1 but TEST_POSTGRES_URL is not set (scripts/test-postgres start failed)")
        pytest.skip("no PostgreSQL: set TEST_POSTGRES_URL or run `make test`")
    admin_dsn = base.replace("postgresql+asyncpg://", "postgresql://")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield base.rsplit("/", 1)[0] + f"/{name}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
