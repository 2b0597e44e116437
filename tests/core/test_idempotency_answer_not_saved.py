"""An action that succeeded, whose answer the database then failed to store under its Idempotency-Key.

It was answered 503 `store-unavailable`, "The outcome is unknown: check GET /runs once the database is back before
retrying", while the ledger recorded the run `ok`: the caller lost the answer of something that had happened, and
a 503 invites the retry that can no longer be replayed. It is now the action's own answer, with
`Idempotent-Replayable: false`; the key stays claimed, so a retry with it gets a 409 and never acts again until the
answer is stored late (test_idempotency_late_save.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from core import idempotency
from core.idempotency import Idempotency, IdempotencyDep

BASE = "https://toggl.test/api/v9"
WID = 4242
TOGGL = {"toggl_api_token": "tok-abcdef123456", "toggl_workspace_id": WID, "toggl_base_url": BASE}


class Body(BaseModel):
    text: str


def _install(client: httpx.AsyncClient) -> list[str]:
    calls: list[str] = []

    async def act(body: Body, idem: IdempotencyDep):
        async def side_effect() -> dict[str, Any]:
            calls.append(body.text)
            return {"run_id": "r" * 32, "echo": body.text}

        return await idem.execute(body, side_effect, status_code=201)

    client.app.add_api_route("/act", act, methods=["POST"])  # type: ignore[attr-defined]
    return calls


def _fail_storing_successes(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[int]:
    """`_settle` fails as the database does for an answer being stored; `down.clear()` brings it back."""
    original = Idempotency._settle
    down = [1]

    async def settle(self: Idempotency, status: int, body: Any, headers: dict[str, str]) -> None:
        if down and status < 400:
            raise error
        await original(self, status, body, headers)

    monkeypatch.setattr(Idempotency, "_settle", settle)
    return down


def _database_down() -> OperationalError:
    return OperationalError("UPDATE idempotency_keys", {}, ConnectionRefusedError("database went away"))


async def test_a_success_whose_answer_cannot_be_stored_is_answered_as_the_success(client, monkeypatch):
    calls = _install(client)
    down = _fail_storing_successes(monkeypatch, _database_down())
    headers = {"Idempotency-Key": "k-unsaved"}
    response = await client.post("/act", json={"text": "a"}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json() == {"run_id": "r" * 32, "echo": "a"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["idempotent-replayable"] == "false"
    assert "retry-after" not in response.headers

    # Not stored yet: the key is still claimed, so the retry is refused and nothing acts twice.
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
    retry = await client.post("/act", json={"text": "a"}, headers=headers)
    down.clear()  # the late save stores it before the app shuts down
    assert retry.status_code == 409
    assert calls == ["a"]


async def test_a_stored_success_carries_no_replayable_header(client):
    _install(client)
    first = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-saved"})
    replay = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-saved"})
    unkeyed = await client.post("/act", json={"text": "a"})
    assert [r.status_code for r in (first, replay, unkeyed)] == [201, 201, 201]
    assert all("idempotent-replayable" not in r.headers for r in (first, replay, unkeyed))


async def test_an_error_that_is_not_the_database_s_is_not_taken_for_it(client, monkeypatch):
    """Only the database's failure is known to leave the action done and its key claimed; a bug stays a 500."""
    calls = _install(client)
    _fail_storing_successes(monkeypatch, OSError("not from the database"))
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-bug"})
    assert response.status_code == 500
    assert "idempotent-replayable" not in response.headers
    assert calls == ["a"]


def _entry(request: httpx.Request) -> httpx.Response:
    sent = json.loads(request.content)
    start = datetime.strptime(sent["start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return httpx.Response(
        200,
        json={
            "id": 111222333,
            "workspace_id": WID,
            "project_id": None,
            "billable": False,
            "start": sent["start"],
            "stop": None,
            "duration": -int(start.timestamp()),
            "description": sent["description"],
            "tags": [],
            "at": sent["start"],
        },
    )


async def test_a_started_timer_whose_answer_cannot_be_stored_names_its_run(make_client, monkeypatch):
    """Through a real action: the answer is the start's, with its run id, and GET /runs/{run_id} shows it `ok`."""
    with respx.mock(base_url=BASE, assert_all_called=False) as toggl:
        create = toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=_entry)
        async with make_client(**TOGGL) as client:
            down = _fail_storing_successes(monkeypatch, _database_down())
            headers = {"Idempotency-Key": "start-unsaved"}
            response = await client.post("/start-timer", json={"task_name": "Deep Work"}, headers=headers)
            run = (await client.get(f"/runs/{response.json()['run_id']}")).json()
            monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
            retry = await client.post("/start-timer", json={"task_name": "Deep Work"}, headers=headers)
            down.clear()  # the late save stores it before the app shuts down
    body = response.json()
    assert response.status_code == 200, body
    assert response.headers["idempotent-replayable"] == "false"
    assert body["entry_id"] == 111222333 and "outcome_unknown" not in body
    assert run["status"] == "ok" and run["actions"][0]["external_id"] == "111222333"
    assert retry.status_code == 409  # never a second timer
    assert retry.json()["run_id"] == body["run_id"]
    assert create.call_count == 1
    assert json.loads(create.calls.last.request.content)["description"] == "Deep Work"
