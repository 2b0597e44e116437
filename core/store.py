"""Database: SQLAlchemy 2 async engine, table models, and Alembic migrations at start-up.

SQLite (aiosqlite) is the zero-configuration default; any async URL works,
and `postgresql+asyncpg://` is what several workers share.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator, event
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.errors import ConfigurationError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use core.store.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Run(Base):
    """One request or trigger that performs actions."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    input_summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    #: The `Idempotency-Key` of the request that started the run (migration 0008), so that a key whose answer the
    #: database failed to store can still say which run answered it (`core.idempotency`). Not in GET /runs.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))

    actions: Mapped[list[Action]] = relationship(
        back_populates="run", order_by="Action.id", lazy="raise", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_runs_created_at", "created_at"),
        Index("ix_runs_kind_created_at", "kind", "created_at"),
        Index("ix_runs_status_created_at", "status", "created_at"),
    )


class Action(Base):
    """One call to a skill or provider inside a run."""

    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    skill: Mapped[str] = mapped_column(String(32))
    operation: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    # Text, not String(255): a multi-part WhatsApp message records every part's SID (migration 0005).
    external_id: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=1)
    duration_ms: Mapped[int] = mapped_column(default=0)
    request: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="actions", lazy="raise")


# --- Engine ---------------------------------------------------------------------


def create_engine(database_url: str) -> AsyncEngine:
    """Create the engine; for SQLite, create the file's directory and tune for concurrency."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # One connection per process: SQLite takes one writer at a time anyway, and with
        # several connections a second writer sleeps in SQLite's busy handler (backing off
        # up to 100 ms) instead of waiting its turn in asyncio; that sleep was the p99 of
        # the webhooks benchmark (docs/benchmarks.md). Sessions are short and never nested,
        # so one connection cannot deadlock. Other workers still meet busy_timeout.
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the writer; busy_timeout makes writers
            # from other workers wait instead of failing with "database is locked".
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            # In WAL mode NORMAL skips the fsync on every commit (the WAL is synced at
            # checkpoints): the database stays consistent after a power cut, at worst
            # losing the last commits. An fsync per ledger write halved throughput.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


# Alembic keeps its migration context in module globals, so two migrations in one
# process (two apps in one test, say) must not interleave. Workers in separate
# processes are serialised by the database instead (see migrations/env.py).
_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


class DatabaseUnreachable(ConfigurationError):
    """The database named by DATABASE_URL could not be reached at start-up. The message hides the password."""


async def ensure_reachable(engine: AsyncEngine, within_seconds: float = 15.0) -> None:
    """Open one connection, or raise DatabaseUnreachable naming DATABASE_URL (password hidden) and the cause.

    Without it, a wrong DATABASE_URL surfaced as a 170-line traceback from deep inside the driver.
    """
    from sqlalchemy.exc import DBAPIError

    try:
        async with asyncio.timeout(within_seconds), engine.connect():
            pass
    except (OSError, DBAPIError, TimeoutError) as exc:
        where = shown_url(engine.url)
        cause = type(exc).__name__ if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {_first_line(exc)}"
        raise DatabaseUnreachable(
            f"Cannot reach the database at {where} ({cause}). Check DATABASE_URL and that the server is running "
            "and accepts connections from this host."
        ) from None


def shown_url(url: URL) -> str:
    """A database URL as the service prints it: the password hidden, in the user part or a `?password=`."""
    if "password" in url.query:
        url = url.update_query_dict({"password": "***"})
    return url.render_as_string(hide_password=True).replace("password=%2A%2A%2A", "password=***")


def _first_line(exc: BaseException) -> str:
    from sqlalchemy.exc import DBAPIError

    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return (str(original).strip().splitlines() or [""])[0][:200]


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision` (start-up runs this with "head")."""
    from alembic import command

    await ensure_reachable(engine)

    def _upgrade(connection: Any) -> None:
        command.upgrade(_alembic_config(connection), revision)

    lock = _migration_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


# When each engine last answered a ping (monotonic seconds). Weak keys: an engine
# that is disposed and dropped takes its entry with it.
_last_ping_ok: weakref.WeakKeyDictionary[AsyncEngine, float] = weakref.WeakKeyDictionary()
PING_FRESH_SECONDS = 1.0


async def ping(engine: AsyncEngine, within_seconds: float = 2.0, *, fresh_seconds: float = PING_FRESH_SECONDS) -> bool:
    """True when the database answers `SELECT 1` within `within_seconds`.

    A success is reused for `fresh_seconds`: probes poll /health many times a
    second, and under load each ping queued for a pooled connection behind the
    ledger's writes, so /health measured the queue rather than the service
    (docs/benchmarks.md). A failure is never reused: it is re-checked every time.
    """
    from sqlalchemy import text

    last_ok = _last_ping_ok.get(engine)
    if last_ok is not None and time.monotonic() - last_ok < fresh_seconds:
        return True

    async def _ping() -> None:
        conn: AsyncConnection
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(_ping(), within_seconds)
    except Exception:
        _last_ping_ok.pop(engine, None)
        return False
    _last_ping_ok[engine] = time.monotonic()
    return True


class IdempotencyKey(Base):
    """A stored outcome for an `Idempotency-Key`, so a retry replays it instead of acting twice."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(128), primary_key=True)  # "POST /slack-notify"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # in_progress | done
    response_status: Mapped[int | None]
    response_body: Mapped[dict[str, Any] | None]
    response_headers: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


# --- Inbound messages and the scheduler (issue 6) ---------------------------------


class InboundMessage(Base):
    """One delivery of a webhook message, keyed by the sender's own id so a redelivery is refused by the database."""

    __tablename__ = "inbound_messages"

    source: Mapped[str] = mapped_column(
        String(16), primary_key=True
    )  # "whatsapp" | "slack" (event_id) | "slack-message" (channel:ts)
    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # MessageSid | event_id | channel:ts
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_inbound_messages_received_at", "received_at"),)


class ScheduledJob(Base):
    """A persisted one-off job (a planned timer stop): it survives restarts and is fired by whichever worker wins."""

    __tablename__ = "scheduled_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "timer_stop"
    run_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16))  # pending | done | failed | cancelled
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    run_id: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_scheduled_jobs_status_run_at", "status", "run_at"),)


class JobFire(Base):
    """The claim of one firing: the primary key (job_id, fire_time) lets exactly one worker run it."""

    __tablename__ = "job_fires"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fire_time: Mapped[datetime] = mapped_column(primary_key=True)
    worker: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)


class RateLimitCounter(Base):
    """One (client, endpoint) key's hit count, shared by every worker.

    Written by core.ratelimit_store.DatabaseStorage for `RATE_LIMIT_STORAGE=database`. For a moving window
    `count` is the slot of the key's ring in `rate_limit_hits` that its next hit takes (the hits taken since its
    window last emptied, modulo the limit) and `expires_at` is when the last of them leaves the window (never
    moved earlier).
    `expires_at` is epoch seconds, as the `limits` library counts time.
    """

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class RateLimitHit(Base):
    """One slot of a key's ring of its last `limit` hits: when the hit in it leaves the moving window.

    A key has at most `limit` rows (slot 0 .. limit - 1); hit number n goes in slot n % limit, where it
    replaces hit n - limit, so a hit is allowed exactly when the hit `limit` places back has expired.
    """

    __tablename__ = "rate_limit_hits"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
