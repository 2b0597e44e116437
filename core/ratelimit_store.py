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

A hit is one transaction: an upsert that adds the hit to the current window's
counter and returns the new count, then a read of the previous window. When
the weighted count is over the limit the transaction is rolled back, so a
refused hit is not counted. On PostgreSQL the upsert's row lock holds
concurrent hits on the same key until the first commits or rolls back, and the
second then adds to the committed count: two workers can never both take the
last slot (tested in tests/core/test_ratelimit_store.py). On SQLite the
database's single writer serialises them the same way.
"""

from __future__ import annotations

import hashlib
import time
from math import floor
from typing import Any, ClassVar

from limits.aio.storage.base import SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow
from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.store import RateLimitCounter

#: Longest key stored as it is; longer ones (a long forwarded address, say) are stored hashed.
MAX_KEY_CHARS = 200
#: Expired counters are deleted at most this often per process (seconds).
PURGE_EVERY_SECONDS = 60.0

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _stored_key(key: str) -> str:
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class DatabaseStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """Rate-limit counters in the `rate_limit_counters` table (SQLite or PostgreSQL)."""

    STORAGE_SCHEME: ClassVar[list[str]] = ["orchestrator+database"]

    def __init__(self, sessions: async_sessionmaker[AsyncSession], **options: Any) -> None:
        self._sessions = sessions
        self._last_purge = 0.0
        super().__init__(None, wrap_exceptions=False, **options)

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    # --- One counter -----------------------------------------------------------

    async def _add(self, session: AsyncSession, key: str, amount: int, expiry: float, now: float) -> int:
        """Add `amount` to the key's live counter (a new or expired one restarts at `amount`); return the count."""
        insert = _INSERTS.get(session.get_bind().dialect.name)
        if insert is None:
            raise NotImplementedError("the database rate-limit storage supports SQLite and PostgreSQL")
        table = RateLimitCounter.__table__
        statement = insert(table).values(key=_stored_key(key), count=amount, expires_at=now + expiry)
        expired = table.c.expires_at <= now
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "count": case((expired, statement.excluded.count), else_=table.c.count + statement.excluded.count),
                "expires_at": case((expired, statement.excluded.expires_at), else_=table.c.expires_at),
            },
        ).returning(table.c.count)
        return (await session.execute(statement)).scalar_one()

    async def _live(self, session: AsyncSession, key: str, now: float) -> tuple[int, float]:
        """(count, expires_at) of the key's counter, or (0, now) when it is absent or expired."""
        row = (
            await session.execute(
                select(RateLimitCounter.count, RateLimitCounter.expires_at).where(
                    RateLimitCounter.key == _stored_key(key), RateLimitCounter.expires_at > now
                )
            )
        ).first()
        return (row[0], row[1]) if row else (0, now)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        async with self._sessions() as session, session.begin():
            return await self._add(session, key, amount, expiry, time.time())

    async def get(self, key: str) -> int:
        async with self._sessions() as session:
            return (await self._live(session, key, time.time()))[0]

    async def get_expiry(self, key: str) -> float:
        async with self._sessions() as session:
            return (await self._live(session, key, time.time()))[1]

    async def clear(self, key: str) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(delete(RateLimitCounter).where(RateLimitCounter.key == _stored_key(key)))

    async def reset(self) -> int | None:
        async with self._sessions() as session, session.begin():
            return (await session.execute(delete(RateLimitCounter))).rowcount

    async def check(self) -> bool:
        try:
            async with self._sessions() as session:
                await session.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    # --- Sliding window counter ------------------------------------------------

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        async with self._sessions() as session:
            # The upsert first: its row lock is what makes concurrent hits on this key wait their turn.
            # Twice the window, as limits' own storages do: the counter is read as "previous" for one more window.
            current_count = await self._add(session, current_key, amount, 2 * expiry, now)
            previous_count, _ = await self._live(session, previous_key, now)
            weighted = previous_count * self._previous_ttl(previous_count, expiry, now) / expiry + current_count
            if floor(weighted) > limit:
                await session.rollback()  # not counted: refused hits must not keep a client locked out for longer
                return False
            await session.commit()
        await self._purge_expired(now)
        return True

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        async with self._sessions() as session:
            previous_count, _ = await self._live(session, previous_key, now)
            current_count, _ = await self._live(session, current_key, now)
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, self._previous_ttl(previous_count, expiry, now), current_count, current_ttl

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, time.time())
        async with self._sessions() as session, session.begin():
            keys = [_stored_key(previous_key), _stored_key(current_key)]
            await session.execute(delete(RateLimitCounter).where(RateLimitCounter.key.in_(keys)))

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
        async with self._sessions() as session, session.begin():
            await session.execute(delete(RateLimitCounter).where(RateLimitCounter.expires_at <= now))
