"""Cost of one rate-limit hit, per storage: in memory, and in the database (SQLite, and PostgreSQL when available).

    taskset -c 0 .venv/bin/python -m bench.ratelimit [--hits 3000] [--postgres postgresql+asyncpg://...]

One process, uvloop, the service's own `ClientRateLimiter` over each storage, 50 clients hitting one endpoint
with a budget out of their reach. Prints hits per second and CPU microseconds per hit (all threads of this
process; a PostgreSQL server's own CPU is not included) at 1 and 16 concurrent hits. `make test` prints the
URL of its throwaway PostgreSQL: `scripts/test-postgres start`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

from core.ratelimit import ClientRateLimiter
from core.ratelimit_store import DatabaseStorage
from core.store import create_engine, migrate

CLIENTS = 50
BUDGET = 10**9


async def _measure(name: str, make: Callable[[], ClientRateLimiter], hits: int) -> None:
    limiter = make()

    async def worker(offset: int, count: int) -> None:
        for n in range(count):
            await limiter.hit(f"key:{(offset + n) % CLIENTS:032x}", "/ai-process")

    for concurrency in (1, 16):
        per_worker = hits // concurrency
        await asyncio.gather(*(worker(w, 20) for w in range(concurrency)))  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(w, per_worker) for w in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        total = per_worker * concurrency
        print(
            f"{name:10s} concurrency {concurrency:2d}: {total / wall:7.0f} hits/s, "
            f"{1e6 * cpu / total:5.0f} us CPU per hit, {1e6 * wall / total * concurrency:6.0f} us per hit (wall)"
        )


async def _database(name: str, url: str, hits: int) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
        await _measure(name, lambda: ClientRateLimiter(BUDGET, DatabaseStorage(engine)), hits)
    finally:
        await engine.dispose()


async def _main(hits: int, postgres: str | None) -> None:
    await _measure("memory", lambda: ClientRateLimiter(BUDGET), hits)
    with tempfile.TemporaryDirectory() as tmp:
        await _database("sqlite", f"sqlite+aiosqlite:///{Path(tmp) / 'limits.db'}", hits)
    if postgres:
        await _database("postgresql", postgres, hits)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=3000)
    parser.add_argument("--postgres", help="postgresql+asyncpg:// URL of an empty database to also measure")
    args = parser.parse_args()
    uvloop.run(_main(args.hits, args.postgres))
