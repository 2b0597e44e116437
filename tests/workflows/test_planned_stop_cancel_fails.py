"""A timer stopped by hand whose planned stop could not then be cancelled (the database failed).

The stop had happened, but the failed cancel was raised after it: POST /stop-timer answered 503 "outcome unknown"
(and an Idempotency-Key kept a 500 "outcome unknown" for its replays), and the `stop` command's run was recorded
`failed`, its sender told "Sorry, something went wrong". The
stop is now answered and recorded as done, saying that its planned stop is still listed; when due, that stop finds
the entry already stopped (Toggl's 409) and changes nothing.
"""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
from sqlalchemy.exc import OperationalError

from tests.workflows.world import post_whatsapp, runs_of, whatsapp_form


def _cancel_fails(client, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    tried: list[int] = []

    async def cancel_stops(*, entry_id: int) -> int:
        tried.append(entry_id)
        raise OperationalError("UPDATE scheduled_jobs", {}, Exception("database is locked"))

    monkeypatch.setattr(client.app.state.scheduler, "cancel_stops", cancel_stops)
    return tried


async def test_a_stop_whose_planned_stop_cannot_be_cancelled_is_answered_as_the_stop(w, make_client, monkeypatch):
    headers = {"Idempotency-Key": "stop-cancel-fails"}
    async with make_client(**w.settings()) as client:
        started = (await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})).json()
        tried = _cancel_fails(client, monkeypatch)
        response = await client.post("/stop-timer", headers=headers)
        replay = await client.post("/stop-timer", headers=headers)
        run = (await client.get(f"/runs/{response.json()['run_id']}")).json()
        [stop] = (await client.get("/schedule")).json()["stops"]
    body = response.json()
    assert response.status_code == 200, body
    assert body["stopped"] is True and body["entry_id"] == started["entry_id"]
    assert body["planned_stop_error"].startswith("The timer stopped, but its planned stop could not be cancelled (")
    assert "database is locked" in body["planned_stop_error"]
    assert "outcome_unknown" not in body
    # Stored for the key like any success: the retry replays it and Toggl is asked once.
    assert (replay.status_code, replay.headers["idempotent-replayed"], replay.json()) == (200, "true", body)
    assert w.toggl.stops == [str(started["entry_id"])] and tried == [started["entry_id"]]
    assert run["status"] == "ok" and run["result"]["planned_stop_error"] == body["planned_stop_error"]
    toggl, cancel = run["actions"]
    assert (toggl["skill"], toggl["status"], toggl["external_id"]) == ("toggl", "ok", str(started["entry_id"]))
    assert (cancel["skill"], cancel["operation"], cancel["status"]) == ("scheduler", "cancel_stop", "failed")
    assert cancel["request"] == {"entry_id": started["entry_id"]} and "database is locked" in cancel["error"]
    assert (stop["entry_id"], stop["status"]) == (started["entry_id"], "pending")  # honest: it was not cancelled


async def test_a_stop_whose_planned_stop_is_cancelled_says_nothing_more(w, make_client):
    async with make_client(**w.settings()) as client:
        await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})
        response = await client.post("/stop-timer")
        run = (await client.get(f"/runs/{response.json()['run_id']}")).json()
    assert response.status_code == 200 and response.json()["planned_stop_error"] is None
    assert [action["skill"] for action in run["actions"]] == ["toggl"]


async def test_the_stop_command_says_the_timer_stopped_when_its_planned_stop_cannot_be_cancelled(
    w, make_client, monkeypatch
):
    async with make_client(**w.settings()) as client:
        await post_whatsapp(client, whatsapp_form("start focus for 10 min", sid="SM" + "1" * 32))
        tried = _cancel_fails(client, monkeypatch)
        response = await post_whatsapp(client, whatsapp_form("stop", sid="SM" + "2" * 32))
        [run] = await runs_of(client, "command.stop")
    assert response.status_code == 200, response.text
    [reply] = [element.text or "" for element in ElementTree.fromstring(response.text).findall("Message")]
    assert reply.startswith("Stopped 'focus' after ")
    assert "its planned stop could not be cancelled" in reply and "database is locked" in reply
    assert w.toggl.stops == ["9001"] and tried == [9001]
    assert run["status"] == "ok" and run["result"]["entry_id"] == 9001
    assert "database is locked" in run["result"]["planned_stop_error"]
    assert [(a["skill"], a["operation"], a["status"]) for a in run["actions"]] == [
        ("toggl", "stop_timer", "ok"),
        ("scheduler", "cancel_stop", "failed"),
    ]
