"""Replay claims and the tracked background tasks: nothing runs twice, nothing is silently lost."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from workflows import inbound
from workflows.inbound import BackgroundTasks, claim_message, sender_allowed


async def test_ten_concurrent_claims_of_one_message_win_once(sessions):
    results = await asyncio.gather(*(claim_message(sessions, source="whatsapp", message_id="SM1") for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]
    # Another source with the same id is a different message.
    assert await claim_message(sessions, source="slack", message_id="SM1") is True


def test_allowlist_compares_bare_e164(make_settings):
    settings = make_settings(whatsapp_allowed_senders="+15551230001, whatsapp:+15551230002")
    assert sender_allowed(settings, "whatsapp:+15551230001")
    assert sender_allowed(settings, "whatsapp:+15551230002")
    assert not sender_allowed(settings, "whatsapp:+15551230003")
    assert not sender_allowed(settings, "")
    assert sender_allowed(settings, " whatsapp:+15551230001\n")  # blanks around the address do not count
    # Empty allows no one (it allowed everyone in development; found by a black-box review).
    assert not sender_allowed(make_settings(whatsapp_allowed_senders=""), "whatsapp:+15551230001")


async def test_a_failing_task_is_logged_and_recorded(ledger, caplog):
    caplog.set_level(logging.ERROR, logger="orchestrator.inbound")
    tasks = BackgroundTasks(ledger)

    async def boom() -> None:
        raise RuntimeError("bug in background work")

    task = tasks.spawn(boom(), kind="whatsapp.message", trigger="whatsapp", input_summary={"message_sid": "SM9"})
    await task
    runs, total = await ledger.list_runs(kind="whatsapp.message")
    assert total == 1
    assert (runs[0].status, runs[0].trigger) == ("failed", "whatsapp")
    assert runs[0].error == "RuntimeError: bug in background work"
    assert runs[0].input_summary == {"message_sid": "SM9"}
    assert any("background whatsapp.message failed" in r.getMessage() for r in caplog.records)
    assert len(tasks) == 0


async def test_shutdown_waits_for_work_within_the_grace_period(ledger):
    tasks = BackgroundTasks(ledger)
    finished: list[str] = []

    async def quick() -> None:
        await asyncio.sleep(0.1)
        finished.append("quick")

    tasks.spawn(quick(), kind="k", trigger="slack")
    await tasks.aclose(grace_seconds=2)
    assert finished == ["quick"]


async def test_shutdown_cancels_overdue_work_and_records_it(ledger, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.inbound")
    tasks = BackgroundTasks(ledger)

    async def forever() -> None:
        await asyncio.sleep(3600)

    task = tasks.spawn(forever(), kind="slack.event", trigger="slack")
    await tasks.aclose(grace_seconds=0.05)
    assert task.cancelled()
    runs, _ = await ledger.list_runs(kind="slack.event")
    assert [(run.status, run.error) for run in runs] == [("cancelled", "cancelled at shutdown")]
    with pytest.raises(RuntimeError, match="shutting down"):
        tasks.spawn(forever(), kind="late", trigger="slack")


async def test_concurrent_claims_share_one_transaction(sessions):
    """Claims made together are committed together: one commit for twenty webhooks, not twenty."""
    from sqlalchemy import event

    engine = sessions.kw["bind"].sync_engine
    commits: list[int] = []

    def count(_connection) -> None:
        commits.append(1)

    event.listen(engine, "commit", count)
    try:
        results = await asyncio.gather(
            *(claim_message(sessions, source="whatsapp", message_id=f"SM{n}") for n in range(20))
        )
    finally:
        event.remove(engine, "commit", count)
    assert results == [True] * 20
    assert len(commits) == 1


@pytest.mark.parametrize("insert", ["one statement", "savepoint per row"])
async def test_a_batch_tells_replays_from_first_deliveries(sessions, monkeypatch, insert):
    """In one batch: an id already stored, one id twice and a new id; the database decides each. A database
    without INSERT ... ON CONFLICT in SQLAlchemy's dialects gets a savepoint per row, here forced on SQLite
    (pinned by a mutation review: nothing ran that path)."""
    if insert == "savepoint per row":
        monkeypatch.setattr(inbound, "sqlite", SimpleNamespace(insert=None))
    assert await claim_message(sessions, source="whatsapp", message_id="SM-old") is True
    results = await asyncio.gather(
        claim_message(sessions, source="whatsapp", message_id="SM-old"),
        claim_message(sessions, source="whatsapp", message_id="SM-twice"),
        claim_message(sessions, source="whatsapp", message_id="SM-twice"),
        claim_message(sessions, source="slack", message_id="SM-old"),
    )
    assert results == [False, True, False, True]
    # Committed, not just decided: a fresh session sees exactly these rows.
    from sqlalchemy import select

    from core.store import InboundMessage

    async with sessions() as session:
        rows = set((await session.execute(select(InboundMessage.source, InboundMessage.message_id))).all())
    assert rows == {("whatsapp", "SM-old"), ("whatsapp", "SM-twice"), ("slack", "SM-old")}


async def test_a_database_failure_fails_every_claim_of_the_batch(sessions):
    from sqlalchemy import text

    async with sessions.begin() as session:
        await session.execute(text("DROP TABLE inbound_messages"))
    results = await asyncio.gather(
        *(claim_message(sessions, source="whatsapp", message_id=f"SM{n}") for n in range(3)), return_exceptions=True
    )
    assert len(results) == 3
    assert all(isinstance(result, Exception) for result in results)


@pytest.mark.postgres
async def test_batched_claims_and_finishes_on_postgresql(postgres_url):
    """The PostgreSQL branches: ON CONFLICT DO NOTHING RETURNING for claims, the finishes' executemany."""
    from core.ledger import Ledger
    from core.store import create_engine, migrate, session_factory

    engine = create_engine(postgres_url)
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        assert await claim_message(sessions, source="whatsapp", message_id="SM-old") is True
        results = await asyncio.gather(
            claim_message(sessions, source="whatsapp", message_id="SM-old"),
            claim_message(sessions, source="whatsapp", message_id="SM-new"),
            claim_message(sessions, source="whatsapp", message_id="SM-new"),
        )
        assert results == [False, True, False]

        ledger = Ledger(sessions)

        async def one(n: int) -> str:
            async with ledger.run("pg.run", trigger="api", durable_start=False) as run:
                run.result = {"n": n}
            return run.id

        ids = await asyncio.gather(*(one(n) for n in range(5)))
        for n, run_id in enumerate(ids):
            run = await ledger.get_run(run_id)
            assert (run.status, run.result, run.finished_at is not None) == ("ok", {"n": n}, True)
    finally:
        await engine.dispose()


async def test_every_batch_inserts_its_rows_in_one_global_order(database_url):
    """Two workers' batches holding the same MessageSids in opposite orders must take the rows' locks in the same
    order: else each can hold the row the other needs next, PostgreSQL aborts one batch as a deadlock and its
    webhooks get a 500 (a risk raised by a multi-worker review). So rows go in sorted, whatever the arrival order."""
    from sqlalchemy import event

    from core.store import create_engine, migrate, session_factory

    engine = create_engine(database_url)
    sent: list[object] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: sent.append(args[3]))
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        arrived = [("whatsapp", "SM-c"), ("slack", "Ev-9"), ("whatsapp", "SM-a"), ("whatsapp", "SM-b")]
        sent.clear()
        async with sessions.begin() as session:
            inserted = await inbound._insert_new(session, arrived)
    finally:
        await engine.dispose()
    assert inserted == set(arrived)
    (parameters,) = [params for params in sent if params and "SM-a" in str(params)]
    ids = [value for value in parameters if isinstance(value, str) and value.startswith(("SM-", "Ev-"))]
    assert ids == ["Ev-9", "SM-a", "SM-b", "SM-c"]  # by (source, message_id): slack before whatsapp


async def test_the_apps_shutdown_waits_shutdown_grace_seconds_for_a_late_answer(make_settings):
    """A late WhatsApp answer still running at shutdown: it finishes within SHUTDOWN_GRACE_SECONDS, not cut at 5 s."""
    from tests.conftest import running_app

    finished: list[str] = []

    async def slow_answer() -> None:
        await asyncio.sleep(0.3)
        finished.append("answered")

    async with running_app(make_settings(shutdown_grace_seconds=2)) as (app, _):
        app.state.background_tasks.spawn(slow_answer(), kind="whatsapp.reply", trigger="whatsapp")
    assert finished == ["answered"]

    async with running_app(make_settings(shutdown_grace_seconds=0)) as (app, _):
        app.state.background_tasks.spawn(slow_answer(), kind="whatsapp.reply", trigger="whatsapp")
        ledger = app.state.resources.ledger
    runs, _ = await ledger.list_runs(kind="whatsapp.reply")
    assert finished == ["answered"]  # the second one was cut off
    assert [run.status for run in runs] == ["cancelled"]


# --- Pinned by a mutation review ---------------------------------------------------------------


def test_a_session_factory_used_from_a_second_event_loop_still_claims(database_url):
    """The claim queue belongs to the loop it was made in: a factory used again from a new loop (a script that
    calls asyncio.run twice) gets a new queue, not futures of the closed loop."""
    from core.store import create_engine, migrate, session_factory

    engine = create_engine(database_url)
    sessions = session_factory(engine)

    async def claim(message_id: str, *, first: bool = False) -> bool:
        try:
            if first:
                await migrate(engine)
            return await claim_message(sessions, source="whatsapp", message_id=message_id)
        finally:
            await engine.dispose()  # its connections belong to this loop

    assert asyncio.run(claim("SM1", first=True)) is True
    assert asyncio.run(claim("SM1")) is False
    assert asyncio.run(claim("SM2")) is True


async def test_more_claims_than_one_statement_holds_are_all_decided(sessions):
    """Claims beyond one INSERT's rows wait for the next batch; none is dropped to hang its webhook."""
    count = inbound._MAX_CLAIMS_PER_STATEMENT + 1
    async with asyncio.timeout(10):
        results = await asyncio.gather(
            *(claim_message(sessions, source="whatsapp", message_id=f"SM{n}") for n in range(count))
        )
    assert results == [True] * count


async def test_a_failed_batch_does_not_strand_the_claims_queued_behind_it(sessions, monkeypatch):
    """The first batch's database error fails its claims only; the ones queued while it ran are still decided."""
    insert_new = inbound._insert_new
    batches: list[list[tuple[str, str]]] = []
    fail_now = asyncio.Event()

    async def first_batch_fails(session, keys):
        batches.append(keys)
        if len(batches) == 1:
            await fail_now.wait()
            raise OperationalError("INSERT INTO inbound_messages", {}, Exception("database is locked"))
        return await insert_new(session, keys)

    monkeypatch.setattr(inbound, "_insert_new", first_batch_fails)
    first = asyncio.create_task(claim_message(sessions, source="whatsapp", message_id="SM1"))
    async with asyncio.timeout(5):
        while not batches:
            await asyncio.sleep(0.01)
        behind = asyncio.gather(*(claim_message(sessions, source="whatsapp", message_id=f"SM{n}") for n in (2, 3)))
        await asyncio.sleep(0)
        fail_now.set()
        with pytest.raises(OperationalError):
            await first
        assert await behind == [True, True]
    assert batches == [[("whatsapp", "SM1")], [("whatsapp", "SM2"), ("whatsapp", "SM3")]]


async def test_a_second_cancel_does_not_stop_the_cancellation_being_recorded(ledger):
    """Cancelled again while it records the first cancel (a second signal at shutdown): the record still lands."""
    tasks = BackgroundTasks(ledger)

    async def forever() -> None:
        await asyncio.sleep(3600)

    task = tasks.spawn(forever(), kind="slack.event", trigger="slack")
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)  # now in the handler, recording
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        while not (runs := (await ledger.list_runs(kind="slack.event"))[0]) or runs[0].status == "running":
            await asyncio.sleep(0.01)
    assert [(run.status, run.error) for run in runs] == [("cancelled", "cancelled at shutdown")]


async def test_a_failure_is_scrubbed_before_its_description_is_cut(sessions):
    """A secret across the 500-character cut: scrubbed after the cut, its first half would stay in the ledger."""
    from core.ledger import Ledger
    from core.secrets import SecretScrubber

    secret = "sk-live-0123456789abcdef"
    ledger = Ledger(sessions, scrubber=SecretScrubber([secret]))
    tasks = BackgroundTasks(ledger)

    async def boom() -> None:
        raise RuntimeError("x" * 480 + secret)  # "RuntimeError: " + 480 puts the secret across character 500

    await tasks.spawn(boom(), kind="whatsapp.message", trigger="whatsapp")
    [run], _ = await ledger.list_runs(kind="whatsapp.message")
    assert (run.status, run.error) == ("failed", "RuntimeError: " + "x" * 480 + "***")  # not "...sk-liv"


async def test_a_ledger_that_cannot_record_a_failure_leaves_it_in_the_log(ledger, monkeypatch, caplog):
    """The database may be what failed: the task still ends quietly, and the log says the record is missing."""
    caplog.set_level(logging.ERROR, logger="orchestrator.inbound")
    tasks = BackgroundTasks(ledger)

    async def database_down(*_, **__) -> str:
        raise OperationalError("INSERT INTO runs", {}, Exception("database is locked"))

    monkeypatch.setattr(ledger, "start_run", database_down)

    async def boom() -> None:
        raise RuntimeError("bug in background work")

    assert await tasks.spawn(boom(), kind="whatsapp.message", trigger="whatsapp") is None
    messages = [record.getMessage() for record in caplog.records]
    assert "background whatsapp.message failed" in messages
    assert "could not record the background whatsapp.message outcome in the ledger" in messages
