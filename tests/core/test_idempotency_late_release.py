"""A refusal whose Idempotency-Key release the database failed is released late; a crash's error is never lost.

A refusal that acted on nothing (a 4xx, a refused connection, any `nothing_sent` problem) releases its key, so a
retry with it runs afresh once the cause is fixed. When the database failed that release, nothing tried it again:
the key stayed claimed for its 24 hours, and a retry got a 409 saying the answer was "not stored yet; retry
shortly to get it replayed" (nothing would ever be stored), then that the database "failed to store its answer".
The release is now retried by the late save's task (`_settle_late`), only while the row is still our claim.

A request that crashed (an error that is not a problem answer) keeps its key as a 500; when the database failed
that store too, the store's error was raised in place of the crash's, and the caller and the log lost what
actually happened.

Database failures are injected into `Idempotency._settle`, as in test_idempotency_late_save.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
import respx
from sqlalchemy import select, update

from core import idempotency
from core.errors import InvalidInput, NotConfigured, ProblemError, UpstreamError, UpstreamRateLimited, database_failed
from core.idempotency import Idempotency
from core.store import IdempotencyKey

# The /act route failing with a given error, and its request body.
from tests.core.test_idempotency import Body, _install

# The Toggl settings of the answer-not-saved tests; the start request, the failing settle and the waits of the
# late save tests.
from tests.core.test_idempotency_answer_not_saved import BASE, TOGGL, WID
from tests.core.test_idempotency_late_save import (
    START,
    _background_done,
    _claim,
    _fail_storing_successes,
    quick_retries,  # noqa: F401 (autouse: the late save's backoff in milliseconds)
)

#: Refusals that acted on nothing: `_stores_outcome` releases their key.
REFUSALS = [
    pytest.param(lambda: UpstreamRateLimited("slow down", upstream="slack", retry_after=5), id="429"),
    pytest.param(lambda: InvalidInput("No such channel"), id="422"),
    pytest.param(lambda: NotConfigured("Toggl", ["TOGGL_API_TOKEN"]), id="503-not-configured"),
    pytest.param(
        lambda: UpstreamError("SMTP login refused", upstream="smtp", nothing_sent=True), id="502-nothing-sent"
    ),
    pytest.param(lambda: database_failed(ConnectionRefusedError("down"), acted=False), id="503-nothing-sent"),
]


async def _key_row(client: httpx.AsyncClient, key: str) -> IdempotencyKey | None:
    async with client.app.state.resources.sessions() as session:  # type: ignore[attr-defined]
        return await session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == key))


def _refused_start(toggl: respx.MockRouter) -> respx.Route:
    """Toggl refuses the start with a 400: nothing was created, so the key is released (a failed run)."""
    return toggl.post(f"/workspaces/{WID}/time_entries").mock(
        return_value=httpx.Response(400, json="Workspace needs a project for time entries")
    )


def _problem_type(problem: ProblemError) -> str:
    return f"/problems/{problem.slug}"


@pytest.mark.parametrize("make_refusal", REFUSALS)
async def test_a_refusal_whose_release_fails_is_released_late_and_a_retry_acts_afresh(
    client, monkeypatch, make_refusal: Callable[[], ProblemError]
):
    """The refusal is answered as itself, without `Idempotent-Replayable` (nothing is ever replayed for it), and
    its key is freed once the database is back: a retry with it runs, as it would have had the release worked."""
    refusal = make_refusal()
    calls = _install(client, fail_with=refusal)
    down = _fail_storing_successes(monkeypatch, failures_too=True)
    headers = {"Idempotency-Key": "refused-late-1"}
    first = await client.post("/act", json={"text": "a"}, headers=headers)
    assert len(client.app.state.background_tasks) == 1  # the late save's tracked task, releasing
    assert (await _claim(client, "refused-late-1")).state == "in_progress"
    down.clear()
    await _background_done(client)
    released = await _key_row(client, "refused-late-1")
    retry = await client.post("/act", json={"text": "a"}, headers=headers)
    assert first.status_code == refusal.status
    assert first.json()["type"] == _problem_type(refusal)
    assert "idempotent-replayable" not in first.headers
    assert released is None
    assert retry.status_code == refusal.status
    assert "idempotent-replayed" not in retry.headers
    assert calls == ["a", "a"]


async def test_a_retry_while_the_release_is_pending_is_not_promised_a_replay(make_client, monkeypatch):
    """The database is back for the retry's claim, not yet for the release: the 409 names the failed run and
    says its key is being freed or its answer stored (which, the retry cannot tell), never only "replayed"."""
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        create = _refused_start(toggl)
        async with make_client(**TOGGL) as client:
            down = _fail_storing_successes(monkeypatch, failures_too=True)
            headers = {"Idempotency-Key": "refused-late-2"}
            first = await client.post("/start-timer", json=START, headers=headers)
            early = await client.post("/start-timer", json=START, headers=headers)
            down.clear()
            await _background_done(client)
            retry = await client.post("/start-timer", json=START, headers=headers)
    run_id = first.json()["run_id"]
    assert 400 <= first.status_code < 500 and first.status_code != 429, first.text
    assert "idempotent-replayable" not in first.headers
    problem = early.json()
    assert early.status_code == 409, problem
    assert problem["run_id"] == run_id and f"finished (run {run_id}, failed)" in problem["detail"]
    assert "freeing the key if it was refused without effect" in problem["detail"]
    assert "get it replayed" not in problem["detail"]
    assert early.headers["retry-after"] == "1"
    assert retry.status_code == first.status_code  # acted afresh: Toggl was asked again
    assert retry.json()["run_id"] != run_id
    assert create.call_count == 2


async def test_a_release_never_done_gets_a_409_that_does_not_say_an_answer_was_lost(make_client, monkeypatch):
    """The database stays down past the window: the key stays claimed, and the retry's 409 must not say the
    database "failed to store its answer" of a request that was refused."""
    monkeypatch.setattr(idempotency, "LATE_SAVE_SECONDS", 0.1)
    monkeypatch.setattr(idempotency, "LATE_SAVE_MARGIN_SECONDS", 0.0)
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        create = _refused_start(toggl)
        async with make_client(**TOGGL) as client:
            down = _fail_storing_successes(monkeypatch, failures_too=True)
            headers = {"Idempotency-Key": "refused-late-3"}
            first = await client.post("/start-timer", json=START, headers=headers)
            await _background_done(client)  # gave up
            await asyncio.sleep(0.05)
            down.clear()
            retry = await client.post("/start-timer", json=START, headers=headers)
    run_id = first.json()["run_id"]
    problem = retry.json()
    assert retry.status_code == 409, problem
    assert f"finished (run {run_id}, failed)" in problem["detail"] and f"GET /runs/{run_id}" in problem["detail"]
    assert "to free the key if it was refused without effect" in problem["detail"]
    assert "failed to store its answer" not in problem["detail"]
    assert "retry-after" not in retry.headers
    assert create.call_count == 1


async def test_a_late_release_never_frees_a_key_claimed_since(client, monkeypatch):
    """The failed release went through after all, and another request claimed the key: the late release leaves
    that claim alone."""
    calls = _install(client, fail_with=InvalidInput("No such channel"))
    down = _fail_storing_successes(monkeypatch, failures_too=True)
    await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "refused-late-4"})
    newer = (await _claim(client, "refused-late-4")).created_at + timedelta(seconds=1)
    async with client.app.state.resources.sessions.begin() as session:
        await session.execute(
            update(IdempotencyKey).where(IdempotencyKey.key == "refused-late-4").values(created_at=newer)
        )
    down.clear()
    await _background_done(client)
    claim = await _claim(client, "refused-late-4")
    assert (claim.state, claim.created_at) == ("in_progress", newer)
    assert calls == ["a"]


async def test_a_release_without_a_claim_of_its_own_frees_nothing(client):
    """Compare-and-set like the store: a release by a request that never inserted its claim matches no row. It
    deleted whatever in-progress row held the key: another request's claim, while that request acted."""
    sessions = client.app.state.resources.sessions
    async with sessions.begin() as session:
        session.add(IdempotencyKey(scope="*", key="someone-else-s", request_hash="h", state="in_progress"))
    unclaimed = Idempotency(sessions, key="someone-else-s", method="POST", path="/act")
    await unclaimed._settle(422, {}, {})
    assert (await _claim(client, "someone-else-s")).state == "in_progress"


async def test_a_crash_whose_500_cannot_be_stored_answers_its_own_error_and_stores_it_late(client, monkeypatch, caplog):
    """The caller gets the crash's 500 and the log its traceback, not the database's error in their place; the
    500 is stored late like any answer kept for replay, so a retry never acts again."""
    calls = _install(client, fail_with=RuntimeError("bug mid-action"))
    down = _fail_storing_successes(monkeypatch, failures_too=True)
    caplog.set_level(logging.WARNING)
    headers = {"Idempotency-Key": "crashed-1"}
    first = await client.post("/act", json={"text": "a"}, headers=headers)
    down.clear()
    await _background_done(client)
    replay = await client.post("/act", json={"text": "a"}, headers=headers)
    assert first.status_code == 500, first.text
    assert first.json()["type"] == "/problems/internal-error"
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any(isinstance(exc, RuntimeError) and str(exc) == "bug mid-action" for exc in logged), logged
    assert any(
        "500 answer of POST /act" in r.getMessage() and "could not be stored" in r.getMessage() for r in caplog.records
    )
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (500, "true")
    assert "outcome is unknown" in replay.json()["detail"]
    assert calls == ["a"]


async def test_a_crash_whose_500_store_fails_for_another_reason_still_raises_its_own_error(client, monkeypatch, caplog):
    """A store that fails with a bug of its own is logged beside the crash, never raised in its place."""
    sessions = client.app.state.resources.sessions

    async def settle_fails(self: Idempotency, status: int, body: object, headers: dict[str, str]) -> None:
        raise ValueError("a bug in the store")

    async def crashes() -> None:
        raise RuntimeError("bug mid-action")

    monkeypatch.setattr(Idempotency, "_settle", settle_fails)
    caplog.set_level(logging.ERROR, logger="orchestrator.idempotency")
    with pytest.raises(RuntimeError, match="bug mid-action"):
        await Idempotency(sessions, key="crashed-2", method="POST", path="/act").execute(Body(text="a"), crashes)
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any(isinstance(exc, ValueError) for exc in logged), logged
