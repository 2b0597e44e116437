"""Keep the cyclic garbage collector off the start-up heap, so a full collection does not stall the event loop.

A started service holds ~320,000 objects that live as long as the process
(modules, SDK classes, pydantic and SQLAlchemy metadata, the OpenAPI schema).
Every full (generation 2) collection walks all of them: ~185 ms on the benchmark
machine, longer under load, and the event loop stands still meanwhile. In the
event-loop benchmark a profile caught the loop frozen for 445 ms at the first
line of a request handler, a collection triggered by an allocation, while every
other thread was idle; that is what set the `/health` p99 (docs/benchmarks.md).

`gc.freeze()` moves the objects alive at that moment to a permanent generation
that collections skip, so a full collection only walks objects created since.
Reference counting still frees everything as usual; only cycles among frozen
objects are never collected. No collection is run first: at the end of start-up
a full collection finds ~40 unreachable objects, not worth its 185 ms (and the
test suite starts hundreds of apps).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("orchestrator.gc")


@contextmanager
def frozen_startup_heap() -> Iterator[None]:
    """Freeze the heap for the app's lifetime; unfreeze at shutdown (tests start many apps in one process)."""
    gc.freeze()
    logger.debug("froze %d start-up objects out of the cyclic collector's reach", gc.get_freeze_count())
    try:
        yield
    finally:
        gc.unfreeze()
