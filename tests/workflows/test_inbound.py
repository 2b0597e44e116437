"""Replay claims and the tracked background tasks: nothing runs twice, nothing is silently lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

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
