"""A `limits` storage kept in the service's own database, so several workers share one rate-limit budget.

`limits` ships in-memory, Redis, Memcached and MongoDB storages. In memory each
worker counts alone, so four workers allow four times `RATE_LIMIT_PER_MINUTE`;
the others would add a server this service does not otherwise need. The
workers already share PostgreSQL, so the counters live there: one row per
(client, endpoint, window), in the `rate_limit_counters` table.

Only what `SlidingWindowCounterRateLimiter` needs is implemented, plus the
`Storage` basics (`incr`, `get`, `clear`, ...). The algorithm stays the
library's: this class only stores its two counters per key (the current and
the previous window) and takes a hit atomically.

A hit is one transaction of one statement: an upsert that adds the hit to the
current window's counter and returns the new count together with the previous
window's (a subquery in RETURNING, which SQLite >= 3.35 and PostgreSQL accept). When
the weighted count is over the limit the transaction is rolled back, so a
refused hit is not counted. On PostgreSQL the upsert's row lock holds
concurrent hits on the same key until the first commits or rolls back, and the
second then adds to the committed count: two workers can never both take the
last slot (tested in tests/core/test_ratelimit_store.py). On SQLite the
database's single writer serialises them the same way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from math import floor
from typing import Any, ClassVar

from limits.aio.storage.base import SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow
from sqlalchemy import bindparam, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.store import RateLimitCounter

logger = logging.getLogger("orchestrator.ratelimit")

#: Longest key stored as it is; longer ones (a long forwarded address, say) are stored hashed.
MAX_KEY_CHARS = 200
#: Expired counters are deleted at most this often per process (seconds).
PURGE_EVERY_SECONDS = 60.0

_counters = RateLimitCounter.__table__


_LIVE = select(_counters.c.count, _counters.c.expires_at).where(
    _counters.c.key == bindparam("key"), _counters.c.expires_at > bindparam("now")
)


def _add_statement(insert: Any) -> Any:
    """Add :amount to :key's live counter (a new or expired one restarts at :amount).

    Returns the new count and, in the same round trip, the live count of :previous_key (None when absent).
    """
    statement = insert(_counters).values(
        key=bindparam("key"), count=bindparam("amount"), expires_at=bindparam("expires_at")
    )
    expired = _counters.c.expires_at <= bindparam("now")
    previous = _counters.alias("previous")
    previous_count = (
        select(previous.c.count)
        .where(previous.c.key == bindparam("previous_key"), previous.c.expires_at > bindparam("now"))
        .scalar_subquery()
    )
    return statement.on_conflict_do_update(
        index_elements=[_counters.c.key],
        set_={
            "count": case((expired, statement.excluded.count), else_=_counters.c.count + statement.excluded.count),
            "expires_at": case((expired, statement.excluded.expires_at), else_=_counters.c.expires_at),
        },
    ).returning(_counters.c.count, previous_count)


# Built once: constructing a statement per hit cost more than running it (bench/ratelimit.py).
_ADD = {"sqlite": _add_statement(sqlite.insert), "postgresql": _add_statement(postgresql.insert)}
_DELETE_KEYS = delete(_counters).where(_counters.c.key.in_(bindparam("keys", expanding=True)))
_PURGE = delete(_counters).where(_counters.c.expires_at <= bindparam("now"))


def _stored_key(key: str) -> str:
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class DatabaseStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """Rate-limit counters in the `rate_limit_counters` table (SQLite or PostgreSQL)."""

    STORAGE_SCHEME: ClassVar[list[str]] = ["orchestrator+database"]

    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        if engine.dialect.name not in _ADD:
            raise NotImplementedError("the database rate-limit storage supports SQLite and PostgreSQL")
        self._engine = engine
        self._add_counter = _ADD[engine.dialect.name]
        self._last_purge = 0.0
        super().__init__(None, wrap_exceptions=False, **options)

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    # --- One counter -----------------------------------------------------------

    async def _add(
        self, conn: AsyncConnection, key: str, amount: int, expiry: float, now: float, previous_key: str = ""
    ) -> tuple[int, int]:
        """(new count of `key`, live count of `previous_key`) after adding `amount` to `key`."""
        params = {
            "key": _stored_key(key),
            "amount": amount,
            "expires_at": now + expiry,
            "now": now,
            "previous_key": _stored_key(previous_key),
        }
        count, previous = (await conn.execute(self._add_counter, params)).one()
        return count, previous or 0

    @staticmethod
    async def _live(conn: AsyncConnection, key: str, now: float) -> tuple[int, float]:
        """(count, expires_at) of the key's counter, or (0, now) when it is absent or expired."""
        row = (await conn.execute(_LIVE, {"key": _stored_key(key), "now": now})).first()
        return (row[0], row[1]) if row else (0, now)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        async with self._engine.begin() as conn:
            return (await self._add(conn, key, amount, expiry, time.time()))[0]

    async def get(self, key: str) -> int:
        async with self._engine.connect() as conn:
            return (await self._live(conn, key, time.time()))[0]

    async def get_expiry(self, key: str) -> float:
        async with self._engine.connect() as conn:
            return (await self._live(conn, key, time.time()))[1]

    async def clear(self, key: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(_DELETE_KEYS, {"keys": [_stored_key(key)]})

    async def reset(self) -> int | None:
        async with self._engine.begin() as conn:
            return (await conn.execute(delete(_counters))).rowcount

    async def check(self) -> bool:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    # --- Sliding window counter ------------------------------------------------

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        async with self._engine.connect() as conn:
            # One statement: the upsert, whose row lock makes concurrent hits on this key wait their turn, also
            # returns the previous window's count. Twice the window, as limits' own storages do: the counter is
            # read as "previous" for one more window.
            current_count, previous_count = await self._add(conn, current_key, amount, 2 * expiry, now, previous_key)
            weighted = previous_count * self._previous_ttl(previous_count, expiry, now) / expiry + current_count
            if floor(weighted) > limit:
                await conn.rollback()  # not counted: refused hits must not keep a client locked out for longer
                return False
            await conn.commit()
        await self._purge_expired(now)
        return True

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        async with self._engine.connect() as conn:
            previous_count, _ = await self._live(conn, previous_key, now)
            current_count, _ = await self._live(conn, current_key, now)
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, self._previous_ttl(previous_count, expiry, now), current_count, current_ttl

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, time.time())
        async with self._engine.begin() as conn:
            await conn.execute(_DELETE_KEYS, {"keys": [_stored_key(previous_key), _stored_key(current_key)]})

    @staticmethod
    def _previous_ttl(previous_count: int, expiry: int, now: float) -> float:
        """How much of the previous window still weighs on this one (limits.aio.storage.MemoryStorage's formula)."""
        if previous_count == 0:
            return 0.0
        return (1 - (((now - expiry) / expiry) % 1)) * expiry

    async def _purge_expired(self, now: float) -> None:
        """Delete counters past their expiry, once a minute per process: each window leaves one row per client."""
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        try:
            async with self._engine.begin() as conn:
                await conn.execute(_PURGE, {"now": now})
        except SQLAlchemyError as exc:
            # The hit that got here was allowed and counted: a failed clean-up must not turn it into a 503.
            # The rows stay until the next purge, a minute later.
            logger.warning("rate-limit counters not purged: %s", type(exc).__name__)
