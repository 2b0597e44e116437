"""The ledger's group commit (core/ledger.py): concurrent writes share transactions, one bad write fails alone."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from core.ledger import Ledger
from core.store import Action, Run, create_engine, migrate, session_factory


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


async def _one_run(ledger: Ledger, n: int, *, durable_start: bool = False) -> str:
    async with ledger.run("bench.kind", trigger="api", input_summary={"n": n}, durable_start=durable_start) as run:
        async with run.action("fake", "call") as action:
            action.external_id = f"ext-{n}"
        run.result = {"n": n}
    return run.id


async def test_concurrent_runs_are_all_written_in_fewer_transactions(engine):
    commits = 0

    def count(_connection):
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", count)
    ledger = Ledger(session_factory(engine))
    ids = await asyncio.gather(*(_one_run(ledger, n) for n in range(40)))

    async with session_factory(engine)() as session:
        runs = {run.id: run for run in (await session.scalars(select(Run))).all()}
        actions = (await session.scalars(select(Action))).all()
    assert set(runs) == set(ids)
    assert all(run.status == "ok" and run.finished_at is not None for run in runs.values())
    assert sorted(run.result["n"] for run in runs.values()) == list(range(40))
    assert sorted(action.external_id for action in actions) == sorted(f"ext-{n}" for n in range(40))
    # 40 runs x 3 writes would be 120 transactions one by one; batched they share commits.
    assert commits < 120 / 2, commits


async def test_when_finish_returns_the_whole_run_is_committed(engine):
    ledger = Ledger(session_factory(engine))
    async with ledger.run("bench.kind", trigger="api") as run:
        async with run.action("fake", "call"):
            pass
        # Ledger reads see writes still queued (read-your-writes).
        assert (await ledger.get_run(run.id)).status == "running"
    async with session_factory(engine)() as session:  # a separate session, no flush: already committed
        stored = await session.get(Run, run.id)
        assert stored.status == "ok"
        assert await session.scalar(select(func.count()).select_from(Action).where(Action.run_id == run.id)) == 1


async def test_one_run_alone_is_one_transaction(engine):
    commits = 0

    def count(_connection):
        nonlocal commits
        commits += 1

    ledger = Ledger(session_factory(engine))
    event.listen(engine.sync_engine, "commit", count)
    await _one_run(ledger, 1)
    assert commits == 1  # start, action and finish, together
    await _one_run(ledger, 2, durable_start=True)
    assert commits == 3  # the durable start alone, then action and finish together


async def test_one_failing_write_fails_alone(engine):
    ledger = Ledger(session_factory(engine))
    await ledger.start_run("bench.kind", trigger="api", run_id="taken")

    async def duplicate() -> str:
        return await ledger.start_run("bench.kind", trigger="api", run_id="taken")

    results = await asyncio.gather(
        *(ledger.start_run("bench.kind", trigger="api", run_id=f"ok-{n}") for n in range(5)),
        duplicate(),
        return_exceptions=True,
    )
    assert results[:5] == [f"ok-{n}" for n in range(5)]
    assert isinstance(results[5], IntegrityError)
    async with session_factory(engine)() as session:
        assert await session.scalar(select(func.count()).select_from(Run)) == 6


async def test_a_cancelled_caller_still_gets_its_row(engine):
    ledger = Ledger(session_factory(engine))
    task = asyncio.create_task(ledger.start_run("bench.kind", trigger="api", run_id="cancelled-caller"))
    await asyncio.sleep(0)  # submitted, not yet committed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        async with session_factory(engine)() as session:
            if await session.get(Run, "cancelled-caller") is not None:
                return
        await asyncio.sleep(0.01)
    pytest.fail("the cancelled caller's run was never written")


async def test_health_ping_reuses_a_success_for_a_second_but_never_a_failure(engine):
    from core.store import ping

    checkouts = 0

    def count(*_args):
        nonlocal checkouts
        checkouts += 1

    event.listen(engine.sync_engine, "checkout", count)
    assert await ping(engine) and await ping(engine) and await ping(engine)
    assert checkouts == 1  # the second and third answered from the fresh success
    assert await ping(engine, fresh_seconds=0)
    assert checkouts == 2

    unreachable = create_engine("postgresql+asyncpg://user:pw@127.0.0.1:1/none")
    try:
        assert not await ping(unreachable, within_seconds=2)
        assert not await ping(unreachable, within_seconds=2)  # re-checked, still down
    finally:
        await unreachable.dispose()
