"""CPU cost of the ledger alone: runs shaped like /ai-process's, at 1 and 16 concurrent runs.

    taskset -c 0 .venv/bin/python -m bench.ledger [--runs 3000]

One process, uvloop, a fresh SQLite file, the service's own `Ledger`. Prints runs per second and CPU
microseconds per run, counted over every thread of the process (aiosqlite works in its own thread).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import uvloop

from core.ledger import Ledger
from core.store import create_engine, migrate, session_factory

SUMMARY = {"provider": "claude", "max_output": None, "text_chars": 16, "text_words": 3, "text_sha256": "ab" * 32}
RESULT = {
    "provider": "claude",
    "model": "claude-haiku-4-5",
    "usage": {"input": 12, "output": 40},
    "latency_ms": 3,
    "routing": {"word_count": 3, "threshold": 500, "rule": "forced", "fallback_from": None, "reason": "forced"},
}


async def _one(ledger: Ledger) -> None:
    async with ledger.run("ai.process", trigger="api", input_summary=SUMMARY, durable_start=False) as run:
        async with run.action("ai", "generate") as action:
            await asyncio.sleep(0)  # the upstream call
            action.skill, action.external_id = "claude", "claude-haiku-4-5"
        run.result = RESULT


async def _measure(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}")
        await migrate(engine)
        ledger = Ledger(session_factory(engine))

        async def worker(count: int) -> None:
            for _ in range(count):
                await _one(ledger)

        for concurrency in (1, 16):
            per_worker = runs // concurrency
            await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm-up
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            total = per_worker * concurrency
            print(f"concurrency {concurrency:2d}: {total / wall:6.0f} runs/s, {1e6 * cpu / total:5.0f} us CPU per run")
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3000)
    uvloop.run(_measure(parser.parse_args().runs))


if __name__ == "__main__":
    main()
