"""An answer the database failed to store under its Idempotency-Key is stored late, or its 409 names its run.

The action succeeded, its answer was sent with `Idempotent-Replayable: false`, and the key stayed claimed: a retry
got "still in progress; retry shortly" for minutes, then, past the abandoned cutoff, a 409 saying the first
request "never finished (the service stopped while it ran)", while its run read `ok`. Now the answer is stored in
the background once the database is back, and a retry replays it; if the database stays down longer, the 409
says which run answered. Database failures are injected into `Idempotency._settle`, as in
test_idempotency_answer_not_saved.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from core import idempotency
from core.idempotency import Idempotency
from core.store import IdempotencyKey

# The same Toggl settings and fake running entry as the answer-not-saved tests this file continues.
from tests.core.test_idempotency_answer_not_saved import BASE, TOGGL, WID, _entry

START = {"task_name": "Deep Work"}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The late save's backoff and the replay's wait, in milliseconds rather than seconds."""
    monkeypatch.setattr(idempotency, "LATE_SAVE_FIRST_DELAY", 0.01, raising=False)
    monkeypatch.setattr(idempotency, "LATE_SAVE_MAX_DELAY", 0.02, raising=False)
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)


def _fail_storing_successes(monkeypatch: pytest.MonkeyPatch, *, failures_too: bool = False) -> list[int]:
    """`_settle` fails as the database does while `down` is non-empty; `down.clear()` brings it back.

    For a success's answer; with `failures_too`, for a failure's as well (its store or its key's release:
    test_idempotency_late_save_failures.py)."""
    original = Idempotency._settle
    down = [1]

    async def settle(self: Idempotency, status: int, body: Any, headers: dict[str, str]) -> None:
        if down and (failures_too or status < 400):
            raise OperationalError("UPDATE idempotency_keys", {}, ConnectionRefusedError("database went away"))
        await original(self, status, body, headers)

    monkeypatch.setattr(Idempotency, "_settle", settle)
    return down


async def _background_done(client: httpx.AsyncClient, timeout: float = 5.0) -> None:
    tasks = client.app.state.background_tasks  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while len(tasks):
        assert time.monotonic() < deadline, "the late save did not end"
        await asyncio.sleep(0.01)


async def _claim(client: httpx.AsyncClient, key: str) -> IdempotencyKey:
    async with client.app.state.resources.sessions() as session:  # type: ignore[attr-defined]
        row = await session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == key))
    assert row is not None
    return row


async def test_an_answer_stored_late_is_replayed_once_the_database_is_back(make_client, monkeypatch):
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        create = toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=_entry)
        async with make_client(**TOGGL) as client:
            down = _fail_storing_successes(monkeypatch)
            headers = {"Idempotency-Key": "late-1"}
            first = await client.post("/start-timer", json=START, headers=headers)
            assert len(client.app.state.background_tasks) == 1  # tracked, not fire-and-forget
            # Still down: not stored yet, so a 409 that says so, and nothing runs twice.
            early = await client.post("/start-timer", json=START, headers=headers)
            down.clear()
            await _background_done(client)
            assert (await _claim(client, "late-1")).state == "done"
            retry = await client.post("/start-timer", json=START, headers=headers)
    assert first.status_code == 200, first.text
    assert first.headers["idempotent-replayable"] == "false"
    run_id = first.json()["run_id"]
    assert early.status_code == 409
    assert early.json()["run_id"] == run_id and "not stored its answer for this key yet" in early.json()["detail"]
    assert early.headers["retry-after"] == "1"
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayable" not in retry.headers
    assert create.call_count == 1


@pytest.mark.parametrize("past_the_cutoff", [False, True])
async def test_an_answer_never_stored_gets_a_409_naming_its_run(make_client, monkeypatch, past_the_cutoff):
    """The database stays down past the late save's window: a retry is told the run finished, and which, at once
    (no 30 s wait ending in "still in progress"), and past the abandoned cutoff not "never finished"."""
    monkeypatch.setattr(idempotency, "LATE_SAVE_SECONDS", 0.1, raising=False)
    monkeypatch.setattr(idempotency, "LATE_SAVE_MARGIN_SECONDS", 0.0, raising=False)
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 30.0)  # a retry that waits fails the time bound below
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        create = toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=_entry)
        async with make_client(**TOGGL) as client:
            down = _fail_storing_successes(monkeypatch)
            headers = {"Idempotency-Key": "late-2"}
            first = await client.post("/start-timer", json=START, headers=headers)
            await _background_done(client)  # gave up
            await asyncio.sleep(0.05)
            down.clear()
            if past_the_cutoff:
                aged = (await _claim(client, "late-2")).created_at - client.app.state.settings.abandoned_after * 2
                async with client.app.state.resources.sessions.begin() as session:
                    await session.execute(
                        update(IdempotencyKey).where(IdempotencyKey.key == "late-2").values(created_at=aged)
                    )
            started = time.monotonic()
            retry = await client.post("/start-timer", json=START, headers=headers)
            took = time.monotonic() - started
            claim = await _claim(client, "late-2")
    run_id = first.json()["run_id"]
    problem = retry.json()
    assert retry.status_code == 409, problem
    assert f"finished (run {run_id}, ok)" in problem["detail"] and f"GET /runs/{run_id}" in problem["detail"]
    assert "never finished" not in problem["detail"]
    assert problem["run_id"] == run_id and problem["idempotency_key"] == "late-2"
    assert "outcome_unknown" not in problem and "retry-after" not in retry.headers  # its outcome is known, final
    assert took < 5
    assert claim.state == "in_progress"
    assert create.call_count == 1


async def test_the_late_save_never_overwrites_a_claim_it_does_not_own(make_client, monkeypatch):
    """The key released and claimed again meanwhile (another request's claim): the late save leaves it alone."""
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=_entry)
        async with make_client(**TOGGL) as client:
            down = _fail_storing_successes(monkeypatch)
            await client.post("/start-timer", json=START, headers={"Idempotency-Key": "late-3"})
            newer = (await _claim(client, "late-3")).created_at + timedelta(seconds=1)
            async with client.app.state.resources.sessions.begin() as session:
                await session.execute(
                    update(IdempotencyKey).where(IdempotencyKey.key == "late-3").values(created_at=newer)
                )
            down.clear()
            await _background_done(client)
            claim = await _claim(client, "late-3")
    assert (claim.state, claim.response_body) == ("in_progress", None)


async def test_shutdown_with_a_late_save_pending_neither_hangs_nor_fails(make_client, monkeypatch, caplog):
    monkeypatch.setattr(idempotency, "LATE_SAVE_SECONDS", 600.0, raising=False)
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=_entry)
        async with make_client(shutdown_grace_seconds=0.2, **TOGGL) as client:
            _fail_storing_successes(monkeypatch)
            first = await client.post("/start-timer", json=START, headers={"Idempotency-Key": "late-4"})
            pending = set(client.app.state.background_tasks._tasks)
            assert len(pending) == 1
            caplog.set_level(logging.WARNING, logger="orchestrator.idempotency")
            started = time.monotonic()
        closed_in = time.monotonic() - started
    assert first.status_code == 200
    assert closed_in < 5
    assert all(task.done() for task in pending)
    assert any(
        "shutting down before the answer of run " + first.json()["run_id"] in r.getMessage() for r in caplog.records
    )
