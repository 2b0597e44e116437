"""GET /schedule, and the planned stops that POST /start-timer with duration_minutes hands to the scheduler."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine

from tests.workflows.world import finished_runs, runs_of, wait_for, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


async def test_lists_the_briefing_job_with_its_next_run_in_timezone(w, make_client):
    settings = w.settings(briefing_cron="0 8 * * 1-5", app_api_key="s" * 32)
    async with make_client(**settings) as client:
        refused = await client.get("/schedule")
        listed = await client.get("/schedule", headers={"X-API-Key": "s" * 32})
    assert refused.status_code == 401
    body = listed.json()
    assert (body["timezone"], body["briefing_cron"]) == ("Europe/Berlin", "0 8 * * 1-5")
    [job] = body["jobs"]
    assert job["id"] == "morning-briefing"
    next_run = datetime.fromisoformat(job["next_run_time"])
    assert next_run.utcoffset() == timedelta(hours=1)  # Berlin in winter
    assert (next_run.hour, next_run.minute) == (8, 0) and next_run.isoweekday() <= 5
    assert body["stops"] == []


async def test_the_stops_times_are_listed_in_timezone_too(w, make_client):
    """Found by a black-box review: the stops' times were UTC while the docs (and the cron job) say TIMEZONE."""
    async with make_client(**w.settings()) as client:
        started = (await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})).json()
        body = (await client.get("/schedule")).json()
    [stop] = body["stops"]
    [job] = [job for job in body["jobs"] if job["id"] == stop["id"]]
    planned = datetime.fromisoformat(started["planned_stop"].replace("Z", "+00:00"))
    assert job["trigger"].startswith("date[") and job["trigger"].endswith("]")  # "date[... UTC]" before
    for listed in (stop["run_at"], stop["planned_stop"], job["next_run_time"], job["trigger"][5:-1]):
        moment = datetime.fromisoformat(listed)
        assert moment.utcoffset() == planned.astimezone(ZoneInfo("Europe/Berlin")).utcoffset(), listed
        assert moment == planned


async def test_without_a_cron_no_briefing_job(w, make_client):
    async with make_client(**w.settings()) as client:
        body = (await client.get("/schedule")).json()
    assert body["jobs"] == [] and body["briefing_cron"] is None


async def test_start_timer_with_duration_plans_a_stop_that_fires(w, make_client):
    async with make_client(**w.settings()) as client:
        response = await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})
        assert response.status_code == 200, response.text
        started = response.json()
        [stop] = (await client.get("/schedule")).json()["stops"]
        assert stop["id"] == f"stop:{started['entry_id']}"
        assert stop["status"] == "pending" and stop["description"] == "Admin"
        assert datetime.fromisoformat(stop["run_at"].replace("Z", "+00:00")) == datetime.fromisoformat(
            started["planned_stop"].replace("Z", "+00:00")
        )
        [job] = [job for job in (await client.get("/schedule")).json()["jobs"] if job["id"] == stop["id"]]

        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=16), tick=True):
            client.app.state.scheduler.aps.wakeup()
            await wait_for(lambda: w.toggl.stops == [str(started["entry_id"])])
            [run] = await finished_runs(client, "schedule.stop_timer")
    assert job["name"] == "Planned timer stop"
    assert run["status"] == "ok" and run["input_summary"]["entry_id"] == started["entry_id"]


async def test_no_stop_without_duration_or_in_a_dry_run(w, make_client):
    async with make_client(**w.settings()) as client:
        plain = await client.post("/start-timer", json={"task_name": "Open-ended"})
        dry = await client.post("/start-timer?dry_run=true", json={"task_name": "Dry", "duration_minutes": 5})
        body = (await client.get("/schedule")).json()
    assert plain.status_code == dry.status_code == 200
    assert body["stops"] == []
    assert [start["description"] for start in w.toggl.starts] == ["Open-ended"]


async def test_stopping_by_hand_cancels_the_planned_stop(w, make_client):
    """Found by a black-box run: after POST /stop-timer the plan stayed `pending` and later fired as a no-op."""
    async with make_client(**w.settings()) as client:
        started = (await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})).json()
        dry = await client.post("/stop-timer?dry_run=true", json={})
        [after_dry_run] = (await client.get("/schedule")).json()["stops"]
        stopped = await client.post("/stop-timer", json={})
        body = (await client.get("/schedule")).json()

        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=16), tick=True):
            client.app.state.scheduler.aps.wakeup()
            await asyncio.sleep(0.3)
            planned_runs = await runs_of(client, "schedule.stop_timer")
    assert dry.status_code == stopped.status_code == 200
    assert after_dry_run["status"] == "pending"  # a dry run changes nothing
    assert w.toggl.stops == [str(started["entry_id"])]  # the hand stop only
    assert [(stop["id"], stop["status"]) for stop in body["stops"]] == [(f"stop:{started['entry_id']}", "cancelled")]
    assert not [job for job in body["jobs"] if job["id"].startswith("stop:")]
    assert planned_runs == []
