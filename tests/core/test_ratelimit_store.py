"""RATE_LIMIT_STORAGE=database: one rate-limit budget shared by every worker (core/ratelimit_store.py)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from limits import RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from core import ratelimit_store
from core.errors import PROBLEM_CONTENT_TYPE
from core.ratelimit import limiter_for
from core.ratelimit_store import MAX_KEY_CHARS, DatabaseStorage
from core.store import RateLimitCounter, create_engine, migrate
from tests.conftest import running_app

KEY = {"X-API-Key": "k"}
PROMPT = {"text": "hello", "provider": "claude"}


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


class Clock:
    """time.time() for the storage, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    # 10 s into a 60-second window, so the previous window still weighs 5/6.
    fake = Clock(1_800_000_010.0)
    monkeypatch.setattr(ratelimit_store.time, "time", fake)
    return fake


async def _rows(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(RateLimitCounter.key, RateLimitCounter.count))).all())


# --- The storage itself ---------------------------------------------------------------


async def test_hits_up_to_the_limit_then_refused_and_a_refusal_is_not_counted(engine, clock):
    limiter = SlidingWindowCounterRateLimiter(DatabaseStorage(engine))
    item = RateLimitItemPerMinute(3)
    outcomes = [await limiter.hit(item, "/ai-process", "key:abc") for _ in range(5)]
    assert outcomes == [True, True, True, False, False]
    rows = await _rows(engine)
    # One row, the current window's, holding the three hits taken: the two refusals were rolled back.
    assert list(rows.values()) == [3]
    (key,) = rows
    assert "/ai-process" in key and "key:abc" in key
    # Another client, and another endpoint, have budgets of their own.
    assert await limiter.hit(item, "/ai-process", "key:other")
    assert await limiter.hit(item, "/send-email", "key:abc")


async def test_the_previous_window_weighs_on_the_next_one(engine, clock):
    """limits' sliding-window counter: 3 hits late in one window still count as 5/6 x 3 ten seconds into the next."""
    limiter = SlidingWindowCounterRateLimiter(DatabaseStorage(engine))
    item = RateLimitItemPerMinute(3)
    clock.now -= 15  # 55 s into the previous window
    assert [await limiter.hit(item, "/x", "c") for _ in range(3)] == [True, True, True]
    clock.now += 15  # 10 s into the next: weighted count = 3 * 50/60 = 2.5, floor 2, so one more fits
    assert await limiter.hit(item, "/x", "c")
    assert not await limiter.hit(item, "/x", "c")
    stats = await limiter.get_window_stats(item, "/x", "c")
    assert stats.remaining == 0
    clock.now += 50  # 60 s into the next window: the old one no longer weighs at all
    assert await limiter.hit(item, "/x", "c")


async def test_window_stats_give_the_reset_time_used_for_retry_after(engine, clock):
    storage = DatabaseStorage(engine)
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerMinute(2)
    await limiter.hit(item, "/x", "c")
    previous, previous_ttl, current, current_ttl = await storage.get_sliding_window(item.key_for("/x", "c"), 60)
    assert (previous, previous_ttl, current) == (0, 0.0, 1)
    assert current_ttl == pytest.approx(110.0)  # 50 s left of this window, plus the next one
    stats = await limiter.get_window_stats(item, "/x", "c")
    assert stats.remaining == 1


async def test_expired_counters_restart_and_are_purged(engine, clock):
    storage = DatabaseStorage(engine)
    assert await storage.incr("k", 60) == 1
    assert await storage.incr("k", 60) == 2
    assert await storage.get("k") == 2
    assert await storage.get_expiry("k") == pytest.approx(clock.now + 60)
    clock.now += 61
    assert await storage.get("k") == 0  # expired: reads as absent
    assert await storage.incr("k", 60) == 1  # and restarts rather than adding to the stale count
    # An old window's row is deleted by the next successful hit once a purge is due.
    await storage.incr("old", 1)
    clock.now += ratelimit_store.PURGE_EVERY_SECONDS + 1
    limiter = SlidingWindowCounterRateLimiter(storage)
    assert await limiter.hit(RateLimitItemPerMinute(5), "/x", "c")
    keys = set(await _rows(engine))
    assert "old" not in keys and "k" not in keys
    assert len(keys) == 1


async def test_clear_reset_and_check(engine, clock):
    storage = DatabaseStorage(engine)
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerMinute(1)
    assert await limiter.hit(item, "/x", "c")
    assert not await limiter.hit(item, "/x", "c")
    await limiter.clear(item, "/x", "c")
    assert await limiter.hit(item, "/x", "c")
    await storage.incr("other", 60)
    assert await storage.reset() == 2
    assert await _rows(engine) == {}
    assert await storage.check()


async def test_an_overlong_key_is_stored_hashed(engine, clock):
    storage = DatabaseStorage(engine)
    long_key = "ip:" + "f" * (MAX_KEY_CHARS + 50)
    assert await storage.incr(long_key, 60) == 1
    assert await storage.incr(long_key, 60) == 2
    (stored,) = await _rows(engine)
    assert stored.startswith("sha256:") and len(stored) < MAX_KEY_CHARS


async def test_concurrent_hits_never_take_more_than_the_limit(engine):
    limiter = SlidingWindowCounterRateLimiter(DatabaseStorage(engine))
    item = RateLimitItemPerMinute(5)
    outcomes = await asyncio.gather(*(limiter.hit(item, "/x", "c") for _ in range(30)))
    assert outcomes.count(True) == 5


# --- Which storage the app uses -------------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "database_url", "shared"),
    [
        ("auto", "sqlite+aiosqlite:///./x.db", False),
        ("auto", "postgresql+asyncpg://u:p@db/x", True),
        ("memory", "postgresql+asyncpg://u:p@db/x", False),
        ("database", "sqlite+aiosqlite:///./x.db", True),
    ],
)
def test_storage_setting(make_settings, storage, database_url, shared):
    settings = make_settings(rate_limit_storage=storage, database_url=database_url)
    assert settings.shared_rate_limit is shared
    engine = create_async_engine(database_url)  # connects on first use only: nothing is reached here
    assert limiter_for(settings, engine=engine).shared is shared


async def test_two_workers_on_one_database_share_one_budget(make_settings):
    """Two app instances (two workers) on one SQLite file: 3 per minute in total, not 3 each."""
    settings = make_settings(app_api_key="k", rate_limit_per_minute=3, rate_limit_storage="database")
    async with running_app(settings) as (_, worker_a), running_app(settings) as (_, worker_b):
        statuses = [
            (await worker.post("/ai-process", json=PROMPT, headers=KEY)).status_code
            for worker in (worker_a, worker_b, worker_a, worker_b)
        ]
    # Nothing is configured, so the calls the limit lets through answer 503 not-configured.
    assert statuses == [503, 503, 503, 429]


async def test_in_memory_each_worker_counts_alone(make_settings):
    """The contrast the setting exists for: with memory storage two workers allow twice the limit."""
    settings = make_settings(app_api_key="k", rate_limit_per_minute=1, rate_limit_storage="memory")
    async with running_app(settings) as (_, worker_a), running_app(settings) as (_, worker_b):
        statuses = [
            (await worker.post("/ai-process", json=PROMPT, headers=KEY)).status_code
            for worker in (worker_a, worker_b, worker_a)
        ]
    assert statuses == [503, 503, 429]


@pytest.mark.parametrize(
    ("store_url", "reason"),
    [
        ("sqlite+aiosqlite:////nonexistent-directory/limits.db", "unable to open database file"),
        ("postgresql+asyncpg://orchestrator:secret-pw@127.0.0.1:9/limits", "Connect call failed"),
    ],
    ids=["sqlite-unopenable", "postgres-refused"],
)
async def test_an_unreachable_store_refuses_the_costly_call_with_a_503(make_settings, store_url, reason):
    """Fail closed: an uncounted request would be an unlimited one. The handler never runs (no ledger run)."""
    settings = make_settings(app_api_key="k", rate_limit_storage="database")
    async with running_app(settings) as (app, client):
        unreachable = create_async_engine(store_url)
        app.state.client_rate_limiter = limiter_for(settings, unreachable)
        response = await client.post("/morning-briefing", json={"dry_run": True}, headers=KEY)
        runs = (await client.get("/runs", headers=KEY)).json()
        await unreachable.dispose()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["type"] == "/problems/store-unavailable"
    assert "RATE_LIMIT_STORAGE" in body["detail"]
    assert reason not in body["detail"] and "secret-pw" not in response.text
    assert runs["items"] == []


# --- PostgreSQL: several workers ----------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_workers_share_the_budget_under_concurrency(postgres_url, make_settings):
    """Forty concurrent costly calls spread over two workers on PostgreSQL: exactly the limit get through."""
    settings = make_settings(database_url=postgres_url, app_api_key="k", rate_limit_per_minute=7)
    assert settings.shared_rate_limit  # auto picks the database on PostgreSQL
    async with running_app(settings) as (app_a, worker_a), running_app(settings) as (_, worker_b):
        responses = await asyncio.gather(
            *(worker.post("/ai-process", json=PROMPT, headers=KEY) for worker in (worker_a, worker_b) * 20)
        )
        async with app_a.state.resources.sessions() as session:
            stored = (await session.execute(select(func.sum(RateLimitCounter.count)))).scalar_one()
    assert Counter(response.status_code for response in responses) == {503: 7, 429: 33}
    assert stored == 7  # refusals were rolled back, not counted


async def test_a_failed_purge_does_not_refuse_an_allowed_hit(engine, monkeypatch, caplog):
    """The purge runs after the hit is committed: its failure used to turn an allowed, counted hit into a 503."""
    from sqlalchemy import text

    monkeypatch.setattr(ratelimit_store, "_PURGE", text("DELETE FROM no_such_table"))
    limiter = SlidingWindowCounterRateLimiter(DatabaseStorage(engine))
    assert await limiter.hit(RateLimitItemPerMinute(5), "/x", "c")
    assert "rate-limit counters not purged" in caplog.text
    assert list((await _rows(engine)).values()) == [1]
