"""A failure kept for its Idempotency-Key's replays, whose answer the database failed to store, is stored late too.

A success whose answer could not be stored was answered with `Idempotent-Replayable: false` and stored in the
background once the database was back (test_idempotency_late_save.py). A failed action whose problem is kept for
replay (a 502 "the entry may have been created", any `outcome_unknown`, `sent_sids`) was not: the caller got the
problem, and a retry with the key got "still in progress", then, past the late save's window, a 409 "finished
(run X, failed)" instead of the replay of that problem. It now takes the same path as a success. A refusal that
acted on nothing releases its key instead, and a release that fails is tried again late
(test_idempotency_late_release.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from core.errors import (
    ProblemError,
    UpstreamError,
    UpstreamTimeout,
    database_failed,
)
from core.idempotency import Idempotency

# The /act route failing with a given problem, from the Idempotency-Key semantics tests.
from tests.core.test_idempotency import _install

# The Toggl settings of the answer-not-saved tests; the start request, the failing store and the waits of the
# success's late save tests.
from tests.core.test_idempotency_answer_not_saved import BASE, TOGGL, WID
from tests.core.test_idempotency_late_save import (
    START,
    _background_done,
    _claim,
    _fail_storing_successes,
    quick_retries,  # noqa: F401 (autouse: the late save's backoff in milliseconds)
)

#: Request ids differ between an answer and its replay (the replay keeps the first one's beside its own).
_REQUEST_IDS = ("request_id", "original_request_id")


def _without_request_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name not in _REQUEST_IDS}


def _unreadable_start(toggl: respx.MockRouter) -> respx.Route:
    """Toggl answers the start with an HTML page and shows no running entry: the start's outcome is unknown, a
    502 kept for the key (tests/routers/test_timers_api.py, an unreadable 2xx)."""
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=None))
    return toggl.post(f"/workspaces/{WID}/time_entries").mock(
        return_value=httpx.Response(200, text="<html>upstream hiccup</html>", headers={"content-type": "text/html"})
    )


async def test_a_failed_start_whose_problem_cannot_be_stored_is_stored_late_and_replayed(make_client, monkeypatch):
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        create = _unreadable_start(toggl)
        async with make_client(**TOGGL) as client:
            down = _fail_storing_successes(monkeypatch, failures_too=True)
            headers = {"Idempotency-Key": "late-failure-1"}
            first = await client.post("/start-timer", json=START, headers=headers)
            assert len(client.app.state.background_tasks) == 1  # the same tracked late save as a success's
            # Still down: not stored yet, so the 409 that says so, naming the failed run; nothing runs twice.
            early = await client.post("/start-timer", json=START, headers=headers)
            down.clear()
            await _background_done(client)
            claim = await _claim(client, "late-failure-1")
            retry = await client.post("/start-timer", json=START, headers=headers)
    problem = first.json()
    assert first.status_code == 502, problem
    assert problem["outcome_unknown"] is True
    assert first.headers["content-type"] == "application/problem+json"
    assert first.headers["idempotent-replayable"] == "false"
    run_id = problem["run_id"]
    assert early.status_code == 409
    assert early.json()["run_id"] == run_id
    assert f"finished (run {run_id}, failed)" in early.json()["detail"]
    # A failed run's key may be a refusal's being freed: the 409 cannot promise a replay (late_release tests).
    assert "not settled this key yet: it is storing its answer for replay" in early.json()["detail"]
    assert (claim.state, claim.response_status) == ("done", 502)
    assert retry.status_code == 502, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["content-type"] == "application/problem+json"
    assert "idempotent-replayable" not in retry.headers
    assert _without_request_ids(retry.json()) == _without_request_ids(problem)
    assert retry.json()["original_request_id"] == problem["request_id"]
    assert create.call_count == 1


@pytest.mark.parametrize(
    "make_problem",
    [
        pytest.param(lambda: UpstreamError("Toggl answered 500", upstream="toggl"), id="502"),
        pytest.param(lambda: UpstreamTimeout("Toggl did not answer in time", upstream="toggl"), id="504"),
        pytest.param(lambda: ProblemError("The action failed unexpectedly"), id="500"),
        pytest.param(lambda: database_failed(ConnectionRefusedError("down mid-request")), id="503-outcome-unknown"),
        pytest.param(
            lambda: ProblemError(
                "The second part was rate limited.",
                status=429,
                headers={"Location": "/runs/r1", "Retry-After": "5"},
                sent_sids=["SM" + "a" * 32],
            ),
            id="429-sent-sids",
        ),
    ],
)
async def test_every_kept_failure_is_stored_late_with_its_status_and_location(
    client, monkeypatch, make_problem: Callable[[], ProblemError]
):
    """The answers `_stores_outcome` keeps: 500/502/504, an `outcome_unknown` or `sent_sids` problem of any
    status. The late store keeps what the store would have: its status, body and Location (not Retry-After)."""
    problem = make_problem()
    calls = _install(client, fail_with=problem)
    down = _fail_storing_successes(monkeypatch, failures_too=True)
    headers = {"Idempotency-Key": f"late-failure-{problem.status}"}
    first = await client.post("/act", json={"text": "a"}, headers=headers)
    down.clear()
    await _background_done(client)
    replay = await client.post("/act", json={"text": "a"}, headers=headers)
    assert first.status_code == problem.status
    assert first.headers["idempotent-replayable"] == "false"
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (problem.status, "true")
    assert _without_request_ids(replay.json()) == _without_request_ids(first.json())
    assert replay.headers.get("location") == first.headers.get("location")
    assert "retry-after" not in replay.headers and "idempotent-replayable" not in replay.headers
    assert calls == ["a"]


async def test_a_kept_failure_whose_store_fails_for_another_reason_is_not_stored_late(client, monkeypatch):
    """Only the database's failure is worth trying again: another error (a bug) is logged, and the problem is
    answered without the header, as before."""
    calls = _install(client, fail_with=UpstreamError("Toggl answered 500", upstream="toggl"))

    async def settle_fails(self: Idempotency, status: int, body: Any, headers: dict[str, str]) -> None:
        raise OSError("not from the database")

    monkeypatch.setattr(Idempotency, "_settle", settle_fails)
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "bug-1"})
    assert response.status_code == 502
    assert "idempotent-replayable" not in response.headers
    assert len(client.app.state.background_tasks) == 0
    assert calls == ["a"]
