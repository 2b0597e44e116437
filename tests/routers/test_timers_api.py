"""POST /start-timer, POST /stop-timer, GET /timers/current through the real app: upstream requests, ledger rows,
idempotency, dry run and every fault the Toggl API can throw at us."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from tests.fakes.raw_http import raw_http_server
from tests.fakes.server import FakeUpstream, Recorded, Reply

BASE = "https://toggl.test/api/v9"
TOKEN = "tok-abcdef123456"
WID = 4242
AUTH = "Basic " + base64.b64encode(f"{TOKEN}:api_token".encode()).decode()
CONFIG: dict[str, Any] = {"toggl_api_token": TOKEN, "toggl_workspace_id": WID, "toggl_base_url": BASE}


def entry(**fields: Any) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    data: dict[str, Any] = {
        "id": 111222333,
        "workspace_id": WID,
        "project_id": None,
        "billable": False,
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stop": None,
        "duration": -int(start.timestamp()),
        "description": "Deep Work",
        "tags": [],
        "at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    data.update(fields)
    return data


def echo_entry(request: httpx.Request) -> httpx.Response:
    """Answer a create like Toggl: the entry as sent, with an id and duration = -start_epoch."""
    sent = json.loads(request.content)
    start = datetime.strptime(sent["start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return httpx.Response(
        200,
        json=entry(
            description=sent["description"],
            workspace_id=sent["workspace_id"],
            project_id=sent.get("project_id"),
            tags=sent.get("tags", []),
            start=sent["start"],
            duration=-int(start.timestamp()),
        ),
    )


@pytest.fixture
def toggl() -> respx.MockRouter:
    # Only Toggl's host is mocked; the test client talks to the app over ASGITransport, not through respx.
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        # Nothing runs unless a test says otherwise: a failed start reads the running timer back.
        router.get("/me/time_entries/current").mock(
            return_value=httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
        )
        yield router


async def get_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    return response.json()


async def latest_run(client: httpx.AsyncClient, kind: str) -> dict[str, Any]:
    page = (await client.get("/runs", params={"kind": kind})).json()
    assert page["items"], f"no {kind} run recorded"
    return await get_run(client, page["items"][0]["id"])


# --- Start --------------------------------------------------------------------------------


async def test_start_timer_end_to_end(make_client, toggl):
    route = toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=echo_entry)
    async with make_client(**CONFIG) as client:
        response = await client.post(
            "/start-timer",
            json={"task_name": "  Deep Work ", "duration_minutes": 90, "project_id": 5, "tags": ["focus"]},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        run = await get_run(client, body["run_id"])

    request = route.calls.last.request
    assert request.headers["authorization"] == AUTH
    sent = json.loads(request.content)
    assert sent == {
        "created_with": "ai-productivity-orchestrator",
        "workspace_id": WID,
        "start": sent["start"],
        "duration": -1,
        "description": "Deep Work",
        "project_id": 5,
        "tags": ["focus"],
    }
    assert sent["start"].endswith("Z")

    start = datetime.fromisoformat(body["start"])
    assert body["dry_run"] is False
    assert body["entry_id"] == 111222333
    assert body["description"] == "Deep Work"
    assert datetime.fromisoformat(body["planned_stop"]) == start + timedelta(minutes=90)

    assert run["kind"] == "toggl.start_timer"
    assert run["trigger"] == "api"
    assert run["status"] == "ok"
    assert run["input_summary"] == {
        "task_name": "Deep Work",
        "duration_minutes": 90,
        "project_id": 5,
        "tags": ["focus"],
    }
    assert run["result"]["planned_stop"] == body["planned_stop"]
    [action] = run["actions"]
    assert (action["skill"], action["operation"], action["status"]) == ("toggl", "start_timer", "ok")
    assert action["external_id"] == "111222333"
    assert action["attempts"] == 1
    assert action["request"] == {"method": "POST", "path": f"/workspaces/{WID}/time_entries", "json": sent}


async def test_missing_workspace_is_503_naming_the_setting_and_recorded(make_client, toggl):
    """A 422 "invalid input" before, while /health called Toggl configured (found by a black-box review): the gap
    is the configuration's. /health now says what a missing TOGGL_WORKSPACE_ID means."""
    async with make_client(toggl_api_token=TOKEN, toggl_base_url=BASE) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["missing_settings"] == ["TOGGL_WORKSPACE_ID"]
        assert response.json()["detail"].startswith("No Toggl workspace: set TOGGL_WORKSPACE_ID")
        run = await latest_run(client, "toggl.start_timer")
        toggl_health = (await client.get("/health")).json()["integrations"]["toggl"]
    assert not toggl.calls
    assert run["status"] == "failed"  # recorded, with the setting named
    assert "TOGGL_WORKSPACE_ID" in run["actions"][0]["error"]
    assert toggl_health["configured"] is True
    assert toggl_health["advice"] == [
        "TOGGL_WORKSPACE_ID is not set: POST /start-timer, and POST /stop-timer with an entry_id, need a "
        "workspace_id in each request, and the briefing and the chat `start` command cannot start a timer."
    ]


async def test_unconfigured_is_503_naming_the_token(make_client, toggl):
    async with make_client() as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
    assert response.status_code == 503
    assert response.json()["missing_settings"] == ["TOGGL_API_TOKEN"]
    assert not toggl.calls


@pytest.mark.parametrize(
    "body",
    [
        {"task_name": ""},
        {"task_name": "   "},
        {},
        {"task_name": "x", "workspace_id": 0},
        # Control characters (found by a black-box review: NUL and ESC were sent to Toggl).
        {"task_name": "a\u0000b"},
        {"task_name": "a\u001bc"},
        {"task_name": "two\nlines"},
        {"task_name": "x", "tags": ["ok", "bad\u0007"]},
        {"task_name": "a\u2028b"},  # a Unicode line separator
        {"task_name": "invoice \u202egnp.exe"},  # a right-to-left override: shows as something else
    ],
)
async def test_invalid_body_is_422_without_upstream(make_client, toggl, body):
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json=body)
    assert response.status_code == 422
    assert not toggl.calls


async def test_api_key_is_required_when_set(make_client, toggl):
    async with make_client(**CONFIG, app_api_key="k" * 32) as client:
        assert (await client.post("/start-timer", json={"task_name": "x"})).status_code == 401
        assert (await client.post("/stop-timer")).status_code == 401
        assert (await client.get("/timers/current")).status_code == 401
    assert not toggl.calls


# --- Dry run ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["query", "setting"])
async def test_dry_run_records_the_exact_payload_and_calls_nothing(make_client, toggl, how):
    settings = {**CONFIG, "dry_run": how == "setting"}
    params = {"dry_run": "true"} if how == "query" else {}
    async with make_client(**settings) as client:
        response = await client.post(
            "/start-timer", params=params, json={"task_name": "Plan", "duration_minutes": 15, "billable": True}
        )
        assert response.status_code == 200
        body = response.json()
        run = await get_run(client, body["run_id"])
    assert not toggl.calls
    assert body["dry_run"] is True
    assert body["entry_id"] is None
    assert run["status"] == "dry_run"
    assert run["input_summary"]["dry_run"] is True  # so an interrupted rehearsal is never taken for a start
    [action] = run["actions"]
    assert action["status"] == "dry_run"
    assert action["request"] == {
        "method": "POST",
        "path": f"/workspaces/{WID}/time_entries",
        "json": {
            "created_with": "ai-productivity-orchestrator",
            "workspace_id": WID,
            "start": body["start"].replace("+00:00", "Z"),
            "duration": -1,
            "description": "Plan",
            "billable": True,
        },
    }


async def test_dry_run_given_twice_with_different_values_is_422_and_nothing_is_sent(make_client, toggl):
    """Found by a black-box review: `?dry_run=true&dry_run=false` started a real timer (the last value won)."""
    route = toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=echo_entry)
    async with make_client(**CONFIG) as client:
        mixed = await client.post("/start-timer?dry_run=true&dry_run=false", json={"task_name": "A"})
        same = await client.post("/start-timer?dry_run=true&dry_run=1", json={"task_name": "A"})  # both true
    assert mixed.status_code == 422
    assert "dry_run is given 2 times with different values" in mixed.json()["detail"]
    assert same.status_code == 200 and same.json()["dry_run"] is True
    assert not route.called


# --- Idempotency --------------------------------------------------------------------------


async def test_same_key_replays_without_a_second_timer(make_client, toggl):
    route = toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=echo_entry)
    headers = {"Idempotency-Key": "start-1"}
    async with make_client(**CONFIG) as client:
        first = await client.post("/start-timer", json={"task_name": "A"}, headers=headers)
        second = await client.post("/start-timer", json={"task_name": "A"}, headers=headers)
        other = await client.post("/start-timer", json={"task_name": "B"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert other.status_code == 422
    assert "different request (its body" in other.json()["detail"]
    assert route.call_count == 1


async def test_dry_run_and_real_run_are_different_requests_for_the_key(make_client, toggl):
    toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=echo_entry)
    headers = {"Idempotency-Key": "start-2"}
    async with make_client(**CONFIG) as client:
        dry = await client.post("/start-timer?dry_run=true", json={"task_name": "A"}, headers=headers)
        real = await client.post("/start-timer", json={"task_name": "A"}, headers=headers)
    assert dry.status_code == 200
    assert real.status_code == 422  # a dry-run answer is never replayed as if the timer had started


@pytest.fixture
async def fake_toggl() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


def fake_config(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {**CONFIG, "toggl_base_url": f"{fake.url}/api/v9", **extra}


def slow_create(request: Recorded) -> Reply:
    sent = request.json
    return Reply(json=entry(description=sent["description"], start=sent["start"]), delay=0.3)


async def test_twenty_concurrent_duplicates_start_one_timer(make_client, fake_toggl):
    path = f"/api/v9/workspaces/{WID}/time_entries"
    fake_toggl.route("POST", path, slow_create)
    headers = {"Idempotency-Key": "burst-1"}
    async with make_client(**fake_config(fake_toggl)) as client:
        responses = await asyncio.gather(
            *(client.post("/start-timer", json={"task_name": "Burst"}, headers=headers) for _ in range(20))
        )
        runs = (await client.get("/runs", params={"kind": "toggl.start_timer"})).json()
    assert len(fake_toggl.calls("POST", path)) == 1
    assert {response.status_code for response in responses} == {200}
    assert len({response.json()["run_id"] for response in responses}) == 1
    assert sum(response.headers.get("idempotent-replayed") == "true" for response in responses) == 19
    assert runs["total"] == 1


# --- Faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream_status", "status", "slug"),
    [(500, 502, "upstream-error"), (503, 503, "upstream-unavailable"), (504, 504, "upstream-timeout")],
)
async def test_5xx_on_start_is_one_post_and_a_failed_action_saying_how_to_check(
    make_client, fake_toggl, upstream_status, status, slug
):
    # A real server, with a good answer behind the fault: a retried POST would start a timer.
    path = f"/api/v9/workspaces/{WID}/time_entries"
    fake_toggl.queue(
        "POST", path, Reply(upstream_status, text="<html>Service Unavailable</html>", content_type="text/html")
    )
    fake_toggl.route("POST", path, slow_create)
    async with make_client(**fake_config(fake_toggl)) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
        run = await latest_run(client, "toggl.start_timer")
    assert len(fake_toggl.calls("POST", path)) == 1
    assert response.status_code == status
    problem = response.json()
    detail = (
        f"Toggl answered {upstream_status}. The outcome is unknown: the time entry may have been created; "
        "check the running timer (GET /timers/current or Toggl) before retrying."
    )
    assert (problem["type"], problem["detail"], problem["upstream_status"]) == (
        f"/problems/{slug}",
        detail,
        upstream_status,
    )
    assert problem["outcome_unknown"] is True
    assert run["status"] == "failed"
    [action] = run["actions"]
    assert (action["status"], action["attempts"]) == ("failed", 1)
    assert action["error"] == f"{status} {slug}: {detail}"
    # The exact request that may have started a timer (it was null for failures; found by review).
    [sent] = fake_toggl.calls("POST", path)
    assert action["request"] == {"method": "POST", "path": f"/workspaces/{WID}/time_entries", "json": sent.json}


@pytest.mark.parametrize("fault", [Reply(503, text="down"), Reply(drop=True)], ids=["503", "dropped"])
async def test_an_unknown_outcome_is_kept_for_the_idempotency_key_so_a_retry_never_starts_twice(
    make_client, fake_toggl, fault
):
    """Found by a black-box review: a 503 after the POST went out released the key, and the client's retry
    with the same key started a second timer."""
    path = f"/api/v9/workspaces/{WID}/time_entries"
    fake_toggl.queue("POST", path, fault)
    fake_toggl.route("POST", path, slow_create)
    headers = {"Idempotency-Key": "unknown-1"}
    async with make_client(**fake_config(fake_toggl)) as client:
        first = await client.post("/start-timer", json={"task_name": "x"}, headers=headers)
        retry = await client.post("/start-timer", json={"task_name": "x"}, headers=headers)
    assert len(fake_toggl.calls("POST", path)) == 1
    assert first.status_code == retry.status_code == 503
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["detail"] == first.json()["detail"]
    assert "The outcome is unknown" in retry.json()["detail"]


class CreatedButLost:
    """Toggl creates the entry, then the answer is lost (`status`), and the entry runs (GET current shows it)."""

    def __init__(self, toggl: respx.MockRouter, status: int, *, created: bool = True) -> None:
        self.running: httpx.Response | None = None
        self.status, self.created = status, created
        toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=self.create)
        toggl.get("/me/time_entries/current").mock(side_effect=self.current)

    def create(self, request: httpx.Request) -> httpx.Response:
        if self.created:
            self.running = echo_entry(request)
        return httpx.Response(self.status, text="<html>upstream hiccup</html>", headers={"content-type": "text/html"})

    def current(self, request: httpx.Request) -> httpx.Response:
        if self.running is None:
            return httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
        return self.running


async def test_a_start_whose_answer_was_lost_is_confirmed_from_the_running_timer_and_its_stop_planned(
    make_client, toggl
):
    """Found by a black-box review: a start that timed out or got a 5xx after Toggl created the entry left a
    timer running with no planned stop, forever, and a retry would have started a second one."""
    lost = CreatedButLost(toggl, 503)
    async with make_client(**CONFIG) as client:
        response = await client.post(
            "/start-timer", json={"task_name": "Deep Work", "duration_minutes": 25}, headers={"Idempotency-Key": "l1"}
        )
        stops = (await client.get("/schedule")).json()["stops"]
        run = await latest_run(client, "toggl.start_timer")
    body = response.json()
    assert response.status_code == 200, body
    assert body["entry_id"] == 111222333 and body["description"] == "Deep Work"
    assert body["confirmed_after_error"].startswith(
        "Toggl's answer to the start was lost or unreadable (Toggl answered 503"
    )
    assert [(stop["entry_id"], stop["status"]) for stop in stops] == [(111222333, "pending")]
    assert lost.running is not None
    assert run["status"] == "ok" and run["actions"][0]["external_id"] == "111222333"


async def test_a_lost_start_that_did_not_happen_stays_outcome_unknown(make_client, toggl):
    CreatedButLost(toggl, 503, created=False)
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json={"task_name": "Deep Work", "duration_minutes": 25})
        stops = (await client.get("/schedule")).json()["stops"]
    assert response.status_code == 503
    assert response.json()["outcome_unknown"] is True
    assert stops == []


class CreatedButUnreadable(CreatedButLost):
    """As CreatedButLost, and Toggl cannot be read either for the next `down_reads` reads of the running timer."""

    def __init__(self, toggl: respx.MockRouter, *, down_reads: int) -> None:
        super().__init__(toggl, 503)
        self.down_reads = down_reads

    def current(self, request: httpx.Request) -> httpx.Response:
        if self.down_reads > 0:
            self.down_reads -= 1
            return httpx.Response(503, text="down")
        return super().current(request)


async def test_a_start_whose_outcome_stayed_unknown_gets_its_stop_planned_when_toggl_is_back(make_client, toggl):
    """Toggl created the entry, lost the answer, and could not be read back either: the caller was told the
    outcome is unknown, and the timer would have run with no stop for good. The next prune finds it."""
    lost = CreatedButUnreadable(toggl, down_reads=4)  # the read-back, then the first prune's read (3 attempts)
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json={"task_name": "Deep Work", "duration_minutes": 25})
        scheduler = client.app.state.scheduler
        await scheduler.prune()  # Toggl still down: nothing found, nothing lost
        still_unknown = await latest_run(client, "toggl.start_timer")
        await scheduler.prune()
        await scheduler.prune()  # a second look changes nothing
        stops = (await client.get("/schedule")).json()["stops"]
        run = await latest_run(client, "toggl.start_timer")
    assert response.status_code == 503 and response.json()["outcome_unknown"] is True
    assert still_unknown["actions"][0]["external_id"] is None
    assert lost.running is not None
    started = datetime.fromisoformat(lost.running.json()["start"].replace("Z", "+00:00"))
    [stop] = stops
    assert (stop["entry_id"], stop["status"]) == (111222333, "pending")
    assert datetime.fromisoformat(stop["run_at"]) == started + timedelta(minutes=25)
    [action] = run["actions"]
    assert (run["status"], action["status"], action["external_id"]) == ("failed", "failed", "111222333")
    planned = started + timedelta(minutes=25)
    # Run in the last 25 minutes of a UTC day, the stop is on the next one, and the note names it.
    day = "" if planned.date() == started.date() else f" on {planned:%a} {planned.day} {planned:%b}"
    assert action["error"].endswith(
        f"Found running later as entry 111222333; its stop is planned for {planned:%H:%M} UTC{day}."
    )
    # The start, its read-back, three reads while down, the find; once found, no prune reads Toggl for it again.
    assert len(toggl.calls) == 1 + 1 + 3 + 1


async def test_an_unknown_start_does_not_claim_someone_elses_timer(make_client, toggl):
    lost = CreatedButUnreadable(toggl, down_reads=1)
    lost.created = False  # the start never happened...
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json={"task_name": "Deep Work", "duration_minutes": 25})
        # ...and a timer of the same name was started by hand a little later.
        lost.running = echo_entry(
            httpx.Request("POST", "https://toggl", json=_same_name_started_later(response.json(), seconds=3))
        )
        await client.app.state.scheduler.prune()
        stops = (await client.get("/schedule")).json()["stops"]
        run = await latest_run(client, "toggl.start_timer")
    assert response.status_code == 503
    assert stops == [] and run["actions"][0]["external_id"] is None


def _same_name_started_later(problem: dict[str, Any], *, seconds: int) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
    return {"description": "Deep Work", "workspace_id": WID, "start": start.strftime("%Y-%m-%dT%H:%M:%SZ")}


def failing_once(scheduler: Any, monkeypatch: pytest.MonkeyPatch, seen: list[str]) -> None:
    """The scheduler's first stop write fails like a database that went away; it records the run's status then."""
    from sqlalchemy.exc import OperationalError

    original = scheduler.schedule_stop

    async def schedule_stop(**kwargs: Any) -> str:
        seen.append("called")
        if len(seen) == 1:
            raise OperationalError("INSERT INTO scheduled_jobs", {}, Exception("database is locked"))
        return await original(**kwargs)

    monkeypatch.setattr(scheduler, "schedule_stop", schedule_stop)


async def test_a_stop_that_cannot_be_saved_is_said_and_saved_by_the_next_prune(make_client, toggl, monkeypatch):
    """Found by a code review: the stop was written after the run had finished `ok`; a failed write (or a
    worker killed then) left the timer running for good, and the prune never looked at an `ok` run."""
    toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=echo_entry)
    seen: list[str] = []
    async with make_client(**CONFIG) as client:
        scheduler = client.app.state.scheduler
        failing_once(scheduler, monkeypatch, seen)
        response = await client.post("/start-timer", json={"task_name": "Deep Work", "duration_minutes": 25})
        before = (await client.get("/schedule")).json()["stops"]
        await scheduler.prune()
        await scheduler.prune()  # saved once
        after = (await client.get("/schedule")).json()["stops"]
        run = await get_run(client, response.json()["run_id"])
    body = response.json()
    assert response.status_code == 200
    assert body["entry_id"] == 111222333
    assert body["planned_stop_error"].startswith("The timer started, but its stop at ")
    assert "database is locked" in body["planned_stop_error"]
    assert 'POST /stop-timer {"entry_id": 111222333, "workspace_id": 4242}' in body["planned_stop_error"]
    assert before == []
    [stop] = after
    assert (stop["entry_id"], stop["status"]) == (111222333, "pending")
    assert datetime.fromisoformat(stop["run_at"]) == datetime.fromisoformat(body["planned_stop"])
    assert run["status"] == "ok" and run["result"]["planned_stop_error"] == body["planned_stop_error"]
    start, plan = run["actions"]
    assert (start["skill"], start["status"], start["external_id"]) == ("toggl", "ok", "111222333")
    assert (plan["skill"], plan["operation"], plan["status"], plan["external_id"]) == (
        "scheduler",
        "plan_stop",
        "failed",
        "stop:111222333",
    )
    assert plan["request"] == {
        "entry_id": 111222333,
        "workspace_id": WID,
        "description": "Deep Work",
        "at": datetime.fromisoformat(body["planned_stop"]).isoformat(),
    }
    assert "database is locked" in plan["error"] and "Saved by the prune at " in plan["error"]
    assert seen == ["called", "called"]


async def test_the_stop_is_saved_before_the_run_can_finish(make_client, toggl, monkeypatch):
    """A worker killed between the two must leave the run `running`, which the prune's recovery looks at."""
    toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=echo_entry)
    statuses: list[str] = []
    async with make_client(**CONFIG) as client:
        scheduler, ledger = client.app.state.scheduler, client.app.state.resources.ledger
        original = scheduler.schedule_stop

        async def schedule_stop(**kwargs: Any) -> str:
            [run], _ = await ledger.list_runs(kind="toggl.start_timer")
            statuses.append(run.status)
            return await original(**kwargs)

        monkeypatch.setattr(scheduler, "schedule_stop", schedule_stop)
        response = await client.post("/start-timer", json={"task_name": "Deep Work", "duration_minutes": 25})
    assert response.status_code == 200 and response.json()["planned_stop_error"] is None
    assert statuses == ["running"]


async def test_an_unreadable_2xx_to_a_start_that_cannot_be_confirmed_is_outcome_unknown(make_client, toggl):
    """Found by a black-box review: a 200 HTML page was a plain 502, inviting a second start."""
    CreatedButLost(toggl, 200, created=False)
    headers = {"Idempotency-Key": "html-1"}
    async with make_client(**CONFIG) as client:
        first = await client.post("/start-timer", json={"task_name": "Deep Work"}, headers=headers)
        retry = await client.post("/start-timer", json={"task_name": "Deep Work"}, headers=headers)
    assert first.status_code == 502
    assert first.json()["outcome_unknown"] is True
    assert "The outcome is unknown: the time entry may have been created" in first.json()["detail"]
    assert retry.headers["idempotent-replayed"] == "true"  # kept for the key: the retry does not start a second
    assert len([call for call in toggl.calls if call.request.method == "POST"]) == 1


async def test_a_refused_connection_releases_the_key_so_the_retry_runs(make_client, fake_toggl):
    """Nothing left the machine, so nothing can have started: the same key may try again."""
    headers = {"Idempotency-Key": "refused-1"}
    async with make_client(**{**CONFIG, "toggl_base_url": "http://127.0.0.1:9/api/v9"}) as client:
        refused = await client.post("/start-timer", json={"task_name": "x"}, headers=headers)
    path = f"/api/v9/workspaces/{WID}/time_entries"
    fake_toggl.route("POST", path, slow_create)
    async with make_client(**fake_config(fake_toggl)) as client:
        retry = await client.post("/start-timer", json={"task_name": "x"}, headers=headers)
    assert refused.status_code == 503 and "outcome_unknown" not in refused.json()
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert len(fake_toggl.calls("POST", path)) == 1


async def test_a_503_with_a_long_retry_after_is_not_retried_in_the_request_and_is_passed_on(make_client, toggl):
    """Found by a code review: the Retry-After of a 503 was dropped; three calls went out in 0.2 s."""
    route = toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(503, text="maintenance", headers={"Retry-After": "120"})
    )
    async with make_client(**CONFIG) as client:
        response = await client.get("/timers/current")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "120" and response.json()["retry_after"] == 120
    assert route.call_count == 1


async def test_an_outcome_unknown_answer_carries_no_retry_after(make_client, toggl):
    """Found by a black-box review: a start's 503 said "check ... before retrying" and carried Retry-After: 5,
    inviting a client to retry at once (a second timer, with a new key)."""
    toggl.post(f"/workspaces/{WID}/time_entries").mock(
        return_value=httpx.Response(503, text="maintenance", headers={"Retry-After": "5"})
    )
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(503, text="maintenance"))
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json={"task_name": "Deep work"})
    assert response.status_code == 503
    assert response.json()["outcome_unknown"] is True
    assert "retry-after" not in response.headers


async def test_a_503_with_a_short_retry_after_is_waited_and_retried(make_client, toggl):
    route = toggl.get("/me/time_entries/current").mock(
        side_effect=[
            httpx.Response(503, text="busy", headers={"Retry-After": "1"}),
            httpx.Response(200, content=b"null", headers={"content-type": "application/json"}),
        ]
    )
    async with make_client(**CONFIG) as client:
        response = await client.get("/timers/current")
    assert response.status_code == 200 and route.call_count == 2


async def test_a_toggl_that_trickles_its_answer_is_a_504_within_the_attempts_deadlines(make_client):
    """Found by a code review: HTTP_TIMEOUT_SECONDS bounded each read, not the call, so a byte every 0.1 s held
    the request for as long as the answer lasted."""
    body = json.dumps(entry(description="Deep Work", duration=-1)).encode()
    async with raw_http_server(body, pieces=len(body), pause=0.1) as url:  # ~20 s to send it all
        settings = {**CONFIG, "toggl_base_url": f"{url}/api/v9", "http_timeout_seconds": 0.5}
        async with make_client(**settings) as client:
            response = await client.get("/timers/current")
    assert response.status_code == 504
    assert response.json()["type"] == "/problems/upstream-timeout"
    assert response.json()["detail"].startswith("toggl did not answer in time (ReadTimeout).")


async def test_an_oversized_toggl_answer_is_refused_not_buffered(make_client):
    async with raw_http_server(b"[" + b" " * (2 << 20) + b"]", pieces=16) as url:
        async with make_client(**{**CONFIG, "toggl_base_url": f"{url}/api/v9"}) as client:
            response = await client.get("/timers/current")
    assert response.status_code == 502
    assert "could not be read (the answer is over 1048576 bytes)" in response.json()["detail"]


async def test_503_on_the_read_before_a_stop_is_retried_then_503_recorded_with_attempts(make_client, toggl):
    route = toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(503, text="down"))
    async with make_client(**CONFIG) as client:
        response = await client.post("/stop-timer")
        run = await latest_run(client, "toggl.stop_timer")
    assert response.status_code == 503
    assert response.json()["type"] == "/problems/upstream-unavailable"
    assert "outcome is unknown" not in response.json()["detail"]
    assert route.call_count == 3
    [action] = run["actions"]
    assert (run["status"], action["status"], action["attempts"]) == ("failed", "failed", 3)
    assert action["error"].startswith("503 upstream-unavailable: Toggl answered 503.")


async def test_auth_failure_is_502_naming_the_token_and_never_the_value(make_client, toggl):
    toggl.post(f"/workspaces/{WID}/time_entries").mock(return_value=httpx.Response(401))
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
        run = await latest_run(client, "toggl.start_timer")
    assert response.status_code == 502
    assert "TOGGL_API_TOKEN" in response.json()["detail"]
    assert TOKEN not in response.text
    assert TOKEN not in json.dumps(run)


@pytest.mark.parametrize("status", [402, 429])
async def test_quota_with_long_retry_after_is_429_passing_it_on(make_client, toggl, status):
    route = toggl.post(f"/workspaces/{WID}/time_entries").mock(
        return_value=httpx.Response(status, json="Quota exceeded", headers={"Retry-After": "1800"})
    )
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
        run = await latest_run(client, "toggl.start_timer")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1800"
    assert "Quota exceeded" in response.json()["detail"]
    assert route.call_count == 1
    assert run["actions"][0]["attempts"] == 1
    assert run["actions"][0]["error"].startswith("429")


async def test_short_retry_after_is_honoured_and_counted(make_client, toggl):
    route = toggl.post(f"/workspaces/{WID}/time_entries").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "1"}), echo_entry]
    )
    async with make_client(**CONFIG) as client:
        began = time.monotonic()
        response = await client.post("/start-timer", json={"task_name": "x"})
        elapsed = time.monotonic() - began
        run = await get_run(client, response.json()["run_id"])
    assert response.status_code == 200
    assert elapsed >= 0.95
    assert route.call_count == 2
    assert run["actions"][0]["attempts"] == 2


async def test_slow_toggl_on_start_is_504_sent_once(make_client, fake_toggl):
    path = f"/api/v9/workspaces/{WID}/time_entries"
    fake_toggl.route("POST", path, lambda req: Reply(json=entry(), delay=1.0))
    async with make_client(**fake_config(fake_toggl, http_timeout_seconds=0.2)) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
        run = await latest_run(client, "toggl.start_timer")
    assert response.status_code == 504
    assert "unknown" in response.json()["detail"]
    # The entry may exist already: replaying the POST could start a second timer.
    assert len(fake_toggl.calls("POST", path)) == 1
    assert run["actions"][0]["attempts"] == 1
    assert run["actions"][0]["error"].startswith("504 upstream-timeout")


async def test_slow_toggl_on_stop_is_504_after_bounded_retries(make_client, fake_toggl):
    current = "/api/v9/me/time_entries/current"
    fake_toggl.route("GET", current, lambda req: Reply(json=entry(), delay=1.0))
    async with make_client(**fake_config(fake_toggl, http_timeout_seconds=0.2)) as client:
        response = await client.post("/stop-timer")
        run = await latest_run(client, "toggl.stop_timer")
    assert response.status_code == 504
    assert len(fake_toggl.calls("GET", current)) == 3
    assert run["status"] == "failed"
    assert run["actions"][0]["attempts"] == 3


async def test_reset_connection_is_503(make_client, fake_toggl):
    path = f"/api/v9/workspaces/{WID}/time_entries"
    fake_toggl.route("POST", path, lambda req: Reply(drop=True))
    async with make_client(**fake_config(fake_toggl)) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
    assert response.status_code == 503
    assert response.json()["upstream"] == "toggl"


async def test_refused_connection_is_503(make_client):
    async with make_client(**{**CONFIG, "toggl_base_url": "http://127.0.0.1:9/api/v9"}) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
        run = await latest_run(client, "toggl.start_timer")
    assert response.status_code == 503
    assert run["actions"][0]["error"].startswith("503 upstream-unavailable")


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, text="{broken"),
        httpx.Response(200, text="<html>maintenance</html>", headers={"content-type": "text/html"}),
        httpx.Response(500, text="<html><body>Internal Server Error</body></html>"),
    ],
)
async def test_garbage_answers_are_502_never_500(make_client, toggl, reply):
    toggl.post(f"/workspaces/{WID}/time_entries").mock(return_value=reply)
    async with make_client(**CONFIG) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
    assert response.status_code == 502
    assert "<html>" not in response.text


# --- Stop and current ---------------------------------------------------------------------


async def test_stop_without_body_stops_the_running_timer(make_client, toggl):
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=entry(workspace_id=77)))
    stop = toggl.patch("/workspaces/77/time_entries/111222333/stop").mock(
        return_value=httpx.Response(200, json=entry(workspace_id=77, stop="2026-11-25T10:00:00Z", duration=1200))
    )
    async with make_client(**CONFIG) as client:
        response = await client.post("/stop-timer")
        body = response.json()
        run = await get_run(client, body["run_id"])
    assert response.status_code == 200
    assert stop.calls.last.request.headers["authorization"] == AUTH
    assert body["stopped"] is True
    assert body["already_stopped"] is False
    assert (body["entry_id"], body["workspace_id"], body["elapsed_seconds"]) == (111222333, 77, 1200)
    assert run["kind"] == "toggl.stop_timer"
    assert run["actions"][0]["external_id"] == "111222333"
    assert run["actions"][0]["request"] == {"method": "PATCH", "path": "/workspaces/77/time_entries/111222333/stop"}
    assert run["actions"][0]["attempts"] == 2  # the read of the running timer, then the stop


async def test_stop_when_nothing_runs_is_200_stopped_false(make_client, toggl):
    toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
    )
    async with make_client(**CONFIG) as client:
        response = await client.post("/stop-timer", json={})
        run = await get_run(client, response.json()["run_id"])
    assert response.status_code == 200
    assert response.json()["stopped"] is False
    assert response.json()["entry_id"] is None
    assert [call.request.method for call in toggl.calls] == ["GET"]
    assert run["status"] == "ok"
    assert run["result"]["stopped"] is False


async def test_stop_by_id_409_is_already_stopped(make_client, toggl):
    route = toggl.patch(f"/workspaces/{WID}/time_entries/5/stop").mock(
        return_value=httpx.Response(409, json="Time entry is already stopped")
    )
    async with make_client(**CONFIG) as client:
        response = await client.post("/stop-timer", json={"entry_id": 5})
    assert response.status_code == 200
    assert response.json()["stopped"] is True
    assert response.json()["already_stopped"] is True
    assert route.call_count == 1


async def test_stop_dry_run_patches_nothing(make_client, toggl):
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=entry()))
    patch = toggl.patch(f"/workspaces/{WID}/time_entries/111222333/stop")
    async with make_client(**CONFIG) as client:
        response = await client.post("/stop-timer?dry_run=true")
        run = await get_run(client, response.json()["run_id"])
    assert response.json()["dry_run"] is True
    assert not patch.called
    assert run["actions"][0]["status"] == "dry_run"
    assert run["actions"][0]["request"]["method"] == "PATCH"


async def test_stop_is_idempotent_by_key(make_client, toggl):
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=entry()))
    stop = toggl.patch(f"/workspaces/{WID}/time_entries/111222333/stop").mock(
        return_value=httpx.Response(200, json=entry(stop="2026-11-25T10:00:00Z", duration=60))
    )
    headers = {"Idempotency-Key": "stop-1"}
    async with make_client(**CONFIG) as client:
        first = await client.post("/stop-timer", headers=headers)
        second = await client.post("/stop-timer", headers=headers)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert stop.call_count == 1


async def test_current_timer(make_client, toggl):
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=300)
    toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(
            200, json=entry(start=start.strftime("%Y-%m-%dT%H:%M:%SZ"), duration=-int(start.timestamp()))
        )
    )
    async with make_client(**CONFIG) as client:
        response = await client.get("/timers/current")
    assert response.status_code == 200
    body = response.json()
    assert body["running"] is True
    assert body["timer"]["entry_id"] == 111222333
    assert 300 <= body["timer"]["elapsed_seconds"] <= 303


async def test_current_timer_when_nothing_runs(make_client, toggl):
    toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
    )
    async with make_client(**CONFIG) as client:
        response = await client.get("/timers/current")
    assert response.json() == {"running": False, "timer": None}
