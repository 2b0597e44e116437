"""The start-up heap is frozen out of the cyclic collector while the app runs (core/gc_tuning.py)."""

from __future__ import annotations

import gc
import time


async def test_the_startup_heap_is_frozen_while_the_app_runs_and_released_at_shutdown(make_client):
    assert gc.get_freeze_count() == 0
    async with make_client() as client:
        assert (await client.get("/health")).status_code == 200
        # Everything alive at start-up (modules, SDKs, the app) is out of reach of full collections...
        assert gc.get_freeze_count() > 10_000
        # ...so a full collection walks only what was created since, instead of the whole heap.
        started = time.perf_counter()
        gc.collect()
        frozen_ms = (time.perf_counter() - started) * 1000
    assert gc.get_freeze_count() == 0  # released at shutdown: other apps in this process start clean
    started = time.perf_counter()
    gc.collect()
    unfrozen_ms = (time.perf_counter() - started) * 1000
    assert frozen_ms < unfrozen_ms
