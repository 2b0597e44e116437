"""RATE_LIMIT_STORAGE=database: one rate-limit budget shared by every worker (core/ratelimit_store.py)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from core import ratelimit_store
from core.errors import PROBLEM_CONTENT_TYPE
from core.ratelimit import limiter_for
from core.ratelimit_store import MAX_KEY_CHARS, DatabaseStorage, MemoryStorage
from core.store import RateLimitCounter, RateLimitHit, create_engine, migrate
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
    """The storages' clocks, moved by hand: time.time() (the database's) and the memory storage's monotonic one."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock(1_800_000_010.0)
    monkeypatch.setattr(ratelimit_store.time, "time", fake)
    monkeypatch.setattr(ratelimit_store, "monotonic", fake)
    return fake


async def _rows(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(RateLimitCounter.key, RateLimitCounter.count))).all())


async def _slots(engine) -> set[tuple[str, int]]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(RateLimitHit.key, RateLimitHit.slot))).all())


# --- The storage itself ---------------------------------------------------------------


@pytest.fixture(params=["memory", "database"])
def storage(request, engine):
    """Each storage of core/ratelimit_store.py: the rule is the same in both."""
    return MemoryStorage() if request.param == "memory" else DatabaseStorage(engine)


async def test_hits_up_to_the_limit_then_refused_and_a_refusal_is_not_counted(engine, clock):
    limiter = MovingWindowRateLimiter(DatabaseStorage(engine))
    item = RateLimitItemPerMinute(3)
    outcomes = [await limiter.hit(item, "/ai-process", "key:abc") for _ in range(5)]
    assert outcomes == [True, True, True, False, False]
    # Three ring slots, and one counter whose next slot is 0 again (3 % 3): the two refusals were rolled back.
    rows = await _rows(engine)
    assert list(rows.values()) == [0]
    (key,) = rows
    assert "/ai-process" in key and "key:abc" in key
    assert await _slots(engine) == {(key, 0), (key, 1), (key, 2)}
    # Another client, and another endpoint, have budgets of their own.
    assert await limiter.hit(item, "/ai-process", "key:other")
    assert await limiter.hit(item, "/send-email", "key:abc")


async def test_no_second_budget_across_a_minute_boundary(storage, clock):
    """A client that spends its budget at 0:55 gets nothing more until those hits are 60 s old.

    limits' sliding-window counter weighed the old minute as if its hits were spread evenly: one more hit fitted
    15 s later, and by 1:54 nearly a whole second budget (109 calls in 55 s for a limit of 60, found by a
    multi-worker review).
    """
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(3)
    spent_at = clock.now = clock.now - 15  # 0:55
    assert [await limiter.hit(item, "/x", "c") for _ in range(3)] == [True, True, True]
    for later in (15, 45, 59.9):  # 1:10, 1:40, 1:54.9
        clock.now = spent_at + later
        assert not await limiter.hit(item, "/x", "c"), f"a hit {later} s after the budget was spent"
    clock.now = spent_at + 60  # exactly 60 s after them: the three have left the window
    assert [await limiter.hit(item, "/x", "c") for _ in range(4)] == [True, True, True, False]


async def test_window_stats_give_the_reset_time_used_for_retry_after(storage, clock):
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(2)
    start = clock.now
    assert await limiter.hit(item, "/x", "c")
    clock.now += 10
    assert await limiter.hit(item, "/x", "c")
    clock.now += 10
    assert not await limiter.hit(item, "/x", "c")
    stats = await limiter.get_window_stats(item, "/x", "c")
    assert (stats.reset_time, stats.remaining) == (pytest.approx(start + 60, abs=1e-3), 0)  # the oldest hit leaves then
    clock.now = start + 60  # the first hit has left; the second (at +10) is still in
    assert await limiter.hit(item, "/x", "c")
    assert not await limiter.hit(item, "/x", "c")
    stats = await limiter.get_window_stats(item, "/x", "c")
    assert (stats.reset_time, stats.remaining) == (pytest.approx(start + 70, abs=1e-3), 0)
    stats = await limiter.get_window_stats(item, "/x", "someone else")
    assert (stats.reset_time, stats.remaining) == (pytest.approx(clock.now + 60, abs=1e-3), 2)


async def test_a_cost_above_one_takes_that_many_slots(storage, clock):
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(5)
    assert await limiter.hit(item, "/x", "c", cost=3)
    assert not await limiter.hit(item, "/x", "c", cost=3)  # 3 + 3 > 5, and the refusal takes nothing
    assert await limiter.hit(item, "/x", "c", cost=2)
    assert not await limiter.hit(item, "/x", "c")
    assert not await limiter.hit(item, "/y", "c", cost=6)  # more than the whole limit never fits
    assert (await limiter.get_window_stats(item, "/x", "c")).remaining == 0


def _reference(times: list[float], limit: int, expiry: float) -> list[bool]:
    """The moving window by definition: a hit is allowed when fewer than `limit` allowed hits are in (t - expiry, t]."""
    allowed: list[float] = []
    outcomes = []
    for at in times:
        fits = sum(1 for earlier in allowed if earlier > at - expiry) < limit
        outcomes.append(fits)
        if fits:
            allowed.append(at)
    return outcomes


@pytest.fixture(scope="module")
def migrated_url(tmp_path_factory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ratelimit')}/property.db"

    async def _migrate() -> None:
        engine = create_engine(url)
        await migrate(engine)
        await engine.dispose()

    asyncio.run(_migrate())
    return url


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 6),
    gaps=st.lists(st.sampled_from([0.0, 0.5, 5.0, 20.0, 29.9, 30.0, 59.9, 60.0, 61.0]), min_size=1, max_size=40),
    kind=st.sampled_from(["memory", "database"]),
)
def test_every_storage_matches_the_definition_of_a_moving_window(migrated_url, limit, gaps, kind):
    """Whatever the spacing of the hits, each storage allows exactly what "at most `limit` in any 60 s" allows:
    through the ring's wrap-around, an emptied window and hits at the same instant."""
    times = list(itertools.accumulate(gaps, initial=1_800_000_000.0))[1:]
    clock = Clock(times[0])

    async def scenario() -> list[bool]:
        engine = create_engine(migrated_url)
        try:
            limiter = MovingWindowRateLimiter(MemoryStorage() if kind == "memory" else DatabaseStorage(engine))
            item, client = RateLimitItemPerMinute(limit), uuid.uuid4().hex
            outcomes = []
            for at in times:
                clock.now = at
                outcomes.append(await limiter.hit(item, "/x", client))
            return outcomes
        finally:
            await engine.dispose()

    with mock.patch.object(ratelimit_store.time, "time", clock), mock.patch.object(ratelimit_store, "monotonic", clock):
        outcomes = asyncio.run(scenario())
    assert outcomes == _reference(times, limit, 60.0)


async def test_a_hit_that_waited_for_the_database_is_stamped_when_it_is_taken(engine, clock):
    """A hit queued behind the process's one SQLite connection (or another worker's hit on the key) for 30 s is
    stamped when it gets in, not when it asked: stamped early, it would leave the window early and let the next hit
    through within 60 s of it (found by a review: two hits 2.3 s apart through a limit of 1 in 5 s)."""
    limiter = MovingWindowRateLimiter(DatabaseStorage(engine))
    item = RateLimitItemPerMinute(1)
    asked = clock.now
    async with engine.connect() as holder:
        await holder.execute(select(1))  # holds the pool's only connection
        waiting = asyncio.create_task(limiter.hit(item, "/x", "c"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        clock.now = asked + 30
    assert await waiting
    clock.now = asked + 61  # 61 s after it asked, 31 s after it was taken
    assert not await limiter.hit(item, "/x", "c")
    clock.now = asked + 90
    assert await limiter.hit(item, "/x", "c")


async def test_a_worker_whose_clock_is_behind_does_not_end_the_window_early(engine, clock):
    """The counter's window end never moves back. A hit stamped 4 s in the past by a worker whose clock is behind
    used to end the key's window at that hit's expiry, while the other hits were still in it: the ring was numbered
    afresh over live slots and allowed hits were refused (found by a review)."""
    limiter = MovingWindowRateLimiter(DatabaseStorage(engine))
    item = RateLimitItemPerMinute(3)
    start = clock.now
    assert await limiter.hit(item, "/x", "c")  # worker A
    clock.now = start - 4  # worker B, 5 s behind A, one second later
    assert await limiter.hit(item, "/x", "c")
    clock.now = start + 57  # A again: B's hit has left the window, A's has not; two of three are free
    assert await limiter.hit(item, "/x", "c")


async def test_a_key_never_idle_keeps_its_counter_below_the_limit(engine, clock):
    """The counter holds the next ring slot, not every hit ever taken: a key hit around the clock would otherwise
    outgrow the column (a 32-bit integer: about 15 days non-stop at 100,000 a minute; found by a review)."""
    limiter = MovingWindowRateLimiter(DatabaseStorage(engine))
    item = RateLimitItemPerMinute(3)
    for _ in range(10):  # one every 30 s: never more than two in any 60 s, and the window never empties
        assert await limiter.hit(item, "/x", "c")
        clock.now += 30
    assert list((await _rows(engine)).values()) == [10 % 3]


async def test_chat_notices_are_one_slot_rings_in_the_shared_store(engine, clock):
    """ "Told once a minute" and a stranger's "told once an hour" live in the same tables when the budget is shared."""
    from core.ratelimit import CHAT_NOTICE, STRANGER_NOTICE, ClientRateLimiter

    limiter = ClientRateLimiter(2, DatabaseStorage(engine))
    start = clock.now
    assert await limiter.first_in(STRANGER_NOTICE, "chat:whatsapp", "whatsapp:+15550001")
    assert await limiter.first_in(CHAT_NOTICE, "chat:whatsapp", "whatsapp:+15550001")
    clock.now = start + 61
    assert await limiter.first_in(CHAT_NOTICE, "chat:whatsapp", "whatsapp:+15550001")  # a minute on: again
    assert not await limiter.first_in(STRANGER_NOTICE, "chat:whatsapp", "whatsapp:+15550001")
    clock.now = start + 3600
    assert await limiter.first_in(STRANGER_NOTICE, "chat:whatsapp", "whatsapp:+15550001")  # an hour on: again


async def test_expired_counters_and_hits_are_purged(engine, clock):
    storage = DatabaseStorage(engine)
    assert await storage.incr("k", 60) == 1
    assert await storage.incr("k", 60) == 2
    assert await storage.get("k") == 2
    assert await storage.get_expiry("k") == pytest.approx(clock.now + 60, abs=1e-3)
    clock.now += 61
    assert await storage.get("k") == 0  # expired: reads as absent
    assert await storage.incr("k", 60) == 1  # and restarts rather than adding to the stale count
    limiter = MovingWindowRateLimiter(storage)
    assert await limiter.hit(RateLimitItemPerMinute(5), "/old", "c")
    # Expired rows are deleted by the next successful hit once a purge is due.
    clock.now += ratelimit_store.PURGE_EVERY_SECONDS + 1
    assert await limiter.hit(RateLimitItemPerMinute(5), "/x", "c")
    (key,) = await _rows(engine)
    assert "/x" in key
    assert await _slots(engine) == {(key, 0)}


async def test_memory_forgets_a_client_whose_hits_have_all_expired(clock):
    storage = MemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    assert await limiter.hit(RateLimitItemPerMinute(5), "/x", "gone")
    clock.now += ratelimit_store.PURGE_EVERY_SECONDS + 1
    assert await limiter.hit(RateLimitItemPerMinute(5), "/x", "new")
    assert [key for key in storage._expiries if "gone" in key] == []
    assert [key for key in storage._expiries if "new" in key] != []


async def test_clear_reset_and_check(storage, clock):
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(1)
    assert await limiter.hit(item, "/x", "c")
    assert not await limiter.hit(item, "/x", "c")
    await limiter.clear(item, "/x", "c")
    assert await limiter.hit(item, "/x", "c")
    assert await storage.incr("other", 60) == 1
    assert await storage.reset() >= 2
    assert await limiter.hit(item, "/x", "c")  # nothing left of the window after a reset
    assert await storage.get("other") == 0
    assert await storage.check()


async def test_an_overlong_key_is_stored_hashed(engine, clock):
    storage = DatabaseStorage(engine)
    long_key = "ip:" + "f" * (MAX_KEY_CHARS + 50)
    assert await storage.incr(long_key, 60) == 1
    assert await storage.incr(long_key, 60) == 2
    assert await storage.acquire_entry(long_key + "/ring", 2, 60)
    stored = set(await _rows(engine)) | {key for key, _ in await _slots(engine)}
    assert len(stored) == 2
    assert all(key.startswith("sha256:") and len(key) < MAX_KEY_CHARS for key in stored)


async def test_concurrent_hits_never_take_more_than_the_limit(engine):
    limiter = MovingWindowRateLimiter(DatabaseStorage(engine))
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
            slots = (await session.execute(select(func.count()).select_from(RateLimitHit))).scalar_one()
    assert Counter(response.status_code for response in responses) == {503: 7, 429: 33}
    assert (stored, slots) == (0, 7)  # seven slots, the next one 7 % 7; refusals were rolled back, not counted


@pytest.mark.postgres
async def test_the_ring_on_postgres_matches_the_definition_of_a_moving_window(postgres_url, clock):
    """The same rule on PostgreSQL's upserts: hits that wrap the ring several times, empty it and refill it."""
    engine = create_engine(postgres_url)
    await migrate(engine)
    try:
        limiter = MovingWindowRateLimiter(DatabaseStorage(engine))
        start = clock.now
        times = [start + at for at in (0, 0, 10, 30, 59.9, 60, 60, 61, 70, 119.9, 120, 125, 200, 200, 200, 200)]
        outcomes = []
        for at in times:
            clock.now = at
            outcomes.append(await limiter.hit(RateLimitItemPerMinute(3), "/x", "c"))
    finally:
        await engine.dispose()
    assert outcomes == _reference(times, 3, 60.0)
    assert outcomes.count(False) >= 4  # the scenario does reach the limit


@pytest.mark.postgres
async def test_the_purge_skips_rows_an_in_flight_hit_holds(postgres_url, clock):
    """A hit holds its ring slots' row locks until it commits; a purge that waited for them could deadlock with a
    hit taking several slots (each locks in its own order, found by a review on PostgreSQL). It skips them."""
    engine = create_engine(postgres_url)
    await migrate(engine)
    try:
        storage = DatabaseStorage(engine)
        assert await storage.acquire_entry("k", 1, 60)
        clock.now += 61  # the hit has expired: the purge's to delete
        async with engine.connect() as in_flight:
            # What a hit taking this slot again does, without committing: the row stays locked.
            await in_flight.execute(
                ratelimit_store._STATEMENTS["postgresql"]["slot"],
                {"key": "k", "slot": 0, "expires_at": clock.now + 60, "now": clock.now},
            )
            storage._last_purge = 0.0
            await asyncio.wait_for(storage._purge_expired(clock.now), 5)  # did not wait for the lock
            await in_flight.commit()
        assert await _slots(engine) == {("k", 0)}  # the taken slot survived the purge
    finally:
        await engine.dispose()


async def test_a_failed_purge_does_not_refuse_an_allowed_hit(engine, monkeypatch, caplog):
    """The purge runs after the hit is committed: its failure used to turn an allowed, counted hit into a 503."""
    from sqlalchemy import text

    monkeypatch.setattr(ratelimit_store, "_PURGE", (text("DELETE FROM no_such_table"),))
    limiter = MovingWindowRateLimiter(DatabaseStorage(engine))
    assert await limiter.hit(RateLimitItemPerMinute(5), "/x", "c")
    assert "rate-limit counters not purged" in caplog.text
    assert list((await _rows(engine)).values()) == [1]
    assert len(await _slots(engine)) == 1
