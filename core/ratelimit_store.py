"""Where rate-limit hits are kept: an exact moving window, in this worker's memory or in the shared database.

The limit is "at most `limit` hits in any `expiry` seconds" (the `limits` library's moving window,
`MovingWindowRateLimiter`). Its two questions to a storage are: may this key take one more hit, taking it if
so (`acquire_entry`); and when did the oldest hit still in the window happen, and how many are there
(`get_moving_window`, for Retry-After).

Why not the library's own pieces: its sliding-window counter is O(1) but weighs the previous minute's hits as if
they were spread evenly, so a client that spent its whole budget at the end of one minute got nearly all of it
again in the next (109 LLM calls in 55 s with a limit of 60, found by a multi-worker review); and its in-memory
moving window runs an expiry pass with a thread hop per key on every hit. Both storages here keep what an exact
answer needs, each key's last `limit` hits, and nothing more:

- `MemoryStorage`: a deque of expiry times per key (one worker; N workers allow N times the limit).
- `DatabaseStorage`: a ring of `limit` slots per key in `rate_limit_hits`, so every worker sharing the
  database draws on one budget.

The rule is the same in both: a key's hits are stamped in the order they are taken, so it has fewer than
`limit` hits in the window exactly when the hit `limit` places back (if there is one) has left it. Workers on
several hosts must keep their clocks in sync (NTP): a clock S seconds ahead frees a slot up to S seconds early.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from typing import Any, ClassVar

from limits.aio.storage.base import MovingWindowSupport, Storage
from sqlalchemy import bindparam, case, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.store import RateLimitCounter, RateLimitHit

logger = logging.getLogger("orchestrator.ratelimit")

#: Longest key stored as it is; longer ones (a long forwarded address, say) are stored hashed.
MAX_KEY_CHARS = 200
#: Expired hits are deleted at most this often per process (seconds).
PURGE_EVERY_SECONDS = 60.0
#: The in-memory windows' clock. Monotonic, because nothing outside this process reads it: a step of the system
#: clock (NTP at boot, a date set by hand) one hour back had every recent client refused for an hour ("Retry after
#: 3660 s"), and one forward handed every client a fresh budget at once (found by a review). The database storage
#: keeps wall-clock times, which every worker on every host can compare.
monotonic = time.monotonic


def _has_room(expiries: Any, limit: int, amount: int, now: float) -> bool:
    """Whether `amount` more hits fit: `expiries` are a key's last hits' expiry times, oldest first.

    The window keeps at most `limit - amount` hits exactly when the hit `limit - amount + 1` places back from
    the newest (if any) has expired; the ones before it are older still.
    """
    if amount > limit:
        return False
    back = limit - amount + 1
    return len(expiries) < back or expiries[len(expiries) - back] <= now


# --- One worker ---------------------------------------------------------------------------------


class MemoryStorage(Storage, MovingWindowSupport):
    """Moving windows in this worker's memory: per key, a deque of its last `limit` hits' expiry times."""

    STORAGE_SCHEME: ClassVar[list[str]] = ["orchestrator+memory"]

    def __init__(self, **options: Any) -> None:
        super().__init__(None, wrap_exceptions=False, **options)
        self._expiries: dict[str, deque[float]] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._last_purge = 0.0

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError  # nothing here talks to anything that can fail

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = monotonic()
        self._purge_expired(now)
        expiries = self._expiries.get(key)
        if expiries is None or expiries.maxlen != limit:
            expiries = self._expiries[key] = deque(expiries or (), maxlen=limit)
        if not _has_room(expiries, limit, amount, now):
            return False
        expiries.extend([now + expiry] * amount)  # the deque's maxlen drops the ones now `limit` places back
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The window's start as a wall-clock time (the limiter compares it with time.time()), and its hits."""
        now, wall_now = monotonic(), time.time()
        live = [at for at in self._expiries.get(key, ()) if at > now]
        return (wall_now - (now - (live[0] - expiry)), len(live)) if live else (wall_now, 0)

    # The `Storage` basics: a plain counter per key, for the fixed-window strategy (not used by the service), in
    # wall-clock time as `get_expiry` answers.

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        count, expires_at = self._counters.get(key, (0, now))
        count, expires_at = (count + amount, expires_at) if expires_at > now else (amount, now + expiry)
        self._counters[key] = (count, expires_at)
        return count

    async def get(self, key: str) -> int:
        count, expires_at = self._counters.get(key, (0, 0.0))
        return count if expires_at > time.time() else 0

    async def get_expiry(self, key: str) -> float:
        now = time.time()
        return max(self._counters.get(key, (0, now))[1], now)

    async def clear(self, key: str) -> None:
        self._expiries.pop(key, None)
        self._counters.pop(key, None)

    async def reset(self) -> int | None:
        cleared = len(self._expiries) + len(self._counters)
        self._expiries.clear()
        self._counters.clear()
        return cleared

    async def check(self) -> bool:
        return True

    def _purge_expired(self, now: float) -> None:
        """Forget keys whose every hit has expired, once a minute: one deque per client would otherwise stay."""
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        for key in [key for key, expiries in self._expiries.items() if not expiries or expiries[-1] <= now]:
            del self._expiries[key]
        wall_now = time.time()
        for key in [key for key, (_, expires_at) in self._counters.items() if expires_at <= wall_now]:
            del self._counters[key]


# --- Every worker, through the database -----------------------------------------------------------

_counters = RateLimitCounter.__table__
_hits = RateLimitHit.__table__


def _count_statement(insert: Any) -> Any:
    """Add :amount to :key's counter (an expired one restarts at :amount) and return the new count (a fixed window)."""
    statement = insert(_counters).values(
        key=bindparam("key"), count=bindparam("amount"), expires_at=bindparam("expires_at")
    )
    expired = _counters.c.expires_at <= bindparam("now")
    return statement.on_conflict_do_update(
        index_elements=[_counters.c.key],
        set_={
            "count": case((expired, statement.excluded.count), else_=_counters.c.count + statement.excluded.count),
            "expires_at": case((expired, statement.excluded.expires_at), else_=_counters.c.expires_at),
        },
    ).returning(_counters.c.count)


def _lock_statement(insert: Any) -> Any:
    """Lock :key's counter row, creating it empty, and return (its next ring slot, when its window empties).

    The no-op update takes the row lock on PostgreSQL (concurrent hits on the key queue behind it until this
    transaction ends) and SQLite's write lock, before the hit reads the clock.
    """
    statement = insert(_counters).values(key=bindparam("key"), count=0, expires_at=0.0)
    return statement.on_conflict_do_update(
        index_elements=[_counters.c.key], set_={"count": _counters.c.count}
    ).returning(_counters.c.count, _counters.c.expires_at)


def _slot_statement(insert: Any) -> Any:
    """Put a hit in :key's ring slot :slot if the slot is empty or its hit has expired; a row back means it did."""
    statement = insert(_hits).values(key=bindparam("key"), slot=bindparam("slot"), expires_at=bindparam("expires_at"))
    return statement.on_conflict_do_update(
        index_elements=[_hits.c.key, _hits.c.slot],
        set_={"expires_at": statement.excluded.expires_at},
        where=_hits.c.expires_at <= bindparam("now"),
    ).returning(_hits.c.slot)


def _purge_statement(table: Any, *primary_key: Any) -> Any:
    """Delete expired rows, skipping those an in-flight hit holds (PostgreSQL's SKIP LOCKED; SQLite has one writer).

    Waiting for them instead could deadlock with a hit that takes several slots: it locks them in slot order, the
    purge in scan order.
    """
    expired = select(*primary_key).where(table.c.expires_at <= bindparam("now")).with_for_update(skip_locked=True)
    return delete(table).where(tuple_(*primary_key).in_(expired))


# Built once per dialect: constructing a statement per hit cost more than running it (bench/ratelimit.py).
_STATEMENTS = {
    name: {"count": _count_statement(insert), "lock": _lock_statement(insert), "slot": _slot_statement(insert)}
    for name, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_SET_COUNTER = (
    update(_counters)
    .where(_counters.c.key == bindparam("counter_key"))
    .values(count=bindparam("next_slot"), expires_at=bindparam("window_ends"))
)
_LIVE_COUNTER = select(_counters.c.count, _counters.c.expires_at).where(
    _counters.c.key == bindparam("key"), _counters.c.expires_at > bindparam("now")
)
_WINDOW = select(func.min(_hits.c.expires_at), func.count()).where(
    _hits.c.key == bindparam("key"), _hits.c.expires_at > bindparam("now")
)
_DELETE_KEYS = (
    delete(_counters).where(_counters.c.key.in_(bindparam("keys", expanding=True))),
    delete(_hits).where(_hits.c.key.in_(bindparam("keys", expanding=True))),
)
_PURGE = (_purge_statement(_counters, _counters.c.key), _purge_statement(_hits, _hits.c.key, _hits.c.slot))


def _stored_key(key: str) -> str:
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class DatabaseStorage(Storage, MovingWindowSupport):
    """Moving windows in `rate_limit_counters` and `rate_limit_hits` (SQLite or PostgreSQL), shared by workers.

    A hit is one transaction: lock the key's counter row (concurrent hits on the key queue behind it), read the
    clock, then put the hit in the counter's next ring slot, which succeeds only if the hit there, `limit` hits
    back, has expired, and move the counter on. A refused hit is rolled back, counter and all, so refusals are
    never counted: a client over the limit is not kept out for longer. Two workers can never both take the last
    slot (tested on PostgreSQL in tests/core/test_ratelimit_store.py).
    """

    STORAGE_SCHEME: ClassVar[list[str]] = ["orchestrator+database"]

    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        if engine.dialect.name not in _STATEMENTS:
            raise NotImplementedError("the database rate-limit storage supports SQLite and PostgreSQL")
        self._engine = engine
        self._statements = _STATEMENTS[engine.dialect.name]
        self._last_purge = 0.0
        super().__init__(None, wrap_exceptions=False, **options)

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    # --- The moving window --------------------------------------------------------

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        stored = _stored_key(key)
        async with self._engine.connect() as conn:
            next_slot, window_ends = (await conn.execute(self._statements["lock"], {"key": stored})).one()
            # The clock is read only now, with the key locked: a hit that waited for a pooled connection or for
            # another worker's hit is stamped when it is taken. Stamped when it asked, it would free its slot
            # early and let a later hit in (found by a review: two hits 2.3 s apart through a limit of 1 in 5 s).
            now = time.time()
            if window_ends <= now:
                next_slot = 0  # every hit has left the window: start the ring afresh
            for number in range(next_slot, next_slot + amount):
                slot = {"key": stored, "slot": number % limit, "expires_at": now + expiry, "now": now}
                if (await conn.execute(self._statements["slot"], slot)).first() is None:
                    await conn.rollback()  # the hit `limit` back is still in the window: refused, not counted
                    return False
            # Never earlier than it was: a worker whose clock is behind must not end the window while hits stamped
            # by another are still in it, or the ring would be numbered afresh over live slots.
            # The slot number is kept modulo `limit`: a count of every hit ever taken would outgrow its column
            # on a key that is never idle for a minute.
            counter = {
                "counter_key": stored,
                "next_slot": (next_slot + amount) % limit,
                "window_ends": max(window_ends, now + expiry),
            }
            await conn.execute(_SET_COUNTER, counter)
            await conn.commit()
        await self._purge_expired(now)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        async with self._engine.connect() as conn:
            oldest_expiry, count = (await conn.execute(_WINDOW, {"key": _stored_key(key), "now": now})).one()
        return (oldest_expiry - expiry, count) if count else (now, 0)

    # --- The `Storage` basics: a plain counter per key (the fixed-window strategy; not used by the service) ----

    @staticmethod
    async def _live(conn: AsyncConnection, key: str, now: float) -> tuple[int, float]:
        """(count, expires_at) of the key's counter, or (0, now) when it is absent or expired."""
        row = (await conn.execute(_LIVE_COUNTER, {"key": _stored_key(key), "now": now})).first()
        return (row[0], row[1]) if row else (0, now)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        params = {"key": _stored_key(key), "amount": amount, "expires_at": now + expiry, "now": now}
        async with self._engine.begin() as conn:
            return (await conn.execute(self._statements["count"], params)).scalar_one()

    async def get(self, key: str) -> int:
        async with self._engine.connect() as conn:
            return (await self._live(conn, key, time.time()))[0]

    async def get_expiry(self, key: str) -> float:
        async with self._engine.connect() as conn:
            return (await self._live(conn, key, time.time()))[1]

    async def clear(self, key: str) -> None:
        async with self._engine.begin() as conn:
            for statement in _DELETE_KEYS:
                await conn.execute(statement, {"keys": [_stored_key(key)]})

    async def reset(self) -> int | None:
        async with self._engine.begin() as conn:
            return (await conn.execute(delete(_counters))).rowcount + (await conn.execute(delete(_hits))).rowcount

    async def check(self) -> bool:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    async def _purge_expired(self, now: float) -> None:
        """Delete expired counters and hits, once a minute per process: each client leaves rows behind."""
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        try:
            async with self._engine.begin() as conn:
                for statement in _PURGE:
                    await conn.execute(statement, {"now": now})
        except SQLAlchemyError as exc:
            # The hit that got here was allowed and counted: a failed clean-up must not turn it into a 503.
            # The rows stay until the next purge, a minute later.
            logger.warning("rate-limit counters not purged: %s", type(exc).__name__)
