"""GET /schedule's list of planned stops: the pending ones always, the finished ones of the day after them, and what
a worker shows of stops that another worker cancelled or fired."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from core.store import ScheduledJob
from tests.workflows.world import WORKSPACE, post_whatsapp, whatsapp_form, world
from workflows.scheduler import LISTED_STOPS, STOP_KIND


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


async def _add_finished_stops(client, count: int, *, now: datetime) -> None:
    """`count` stops of the last hours that already ended (done, failed, cancelled), the newest finished last."""
    async with client.app.state.resources.sessions.begin() as session:
        for n in range(count):
            at = now - timedelta(hours=20) + timedelta(minutes=n)
            session.add(
                ScheduledJob(
                    id=f"stop:{500_000 + n}",
                    kind=STOP_KIND,
                    run_at=at,
                    payload={"entry_id": 500_000 + n, "workspace_id": WORKSPACE, "description": "Pomodoro"},
                    status=("done", "failed", "cancelled")[n % 3],
                    created_at=at - timedelta(minutes=25),
                    finished_at=at,
                )
            )


async def test_a_pending_stop_is_listed_however_many_stops_ended_that_day(w, make_client):
    """Found by a review: the list was ordered by `run_at` and cut at 200 rows, so after a busy day the future
    pending stops, the ones the reader looks for, were the rows cut off."""
    now = datetime.now(UTC)
    async with make_client(**w.settings()) as client:
        await _add_finished_stops(client, LISTED_STOPS + 50, now=now)
        await client.app.state.scheduler.schedule_stop(
            entry_id=9100, workspace_id=WORKSPACE, description="Thesis", at=now + timedelta(hours=1)
        )
        body = (await client.get("/schedule")).json()
    stops = body["stops"]
    assert len(stops) == LISTED_STOPS
    assert (stops[0]["id"], stops[0]["status"]) == ("stop:9100", "pending")
    # Then the most recently finished, newest first: the 51 oldest are the ones left out, and counted.
    newest = [f"stop:{500_000 + n}" for n in range(LISTED_STOPS + 49, 50, -1)]
    assert [stop["id"] for stop in stops[1:]] == newest
    assert body["stops_not_listed"] == 51


async def test_every_pending_stop_is_listed_before_the_finished_ones(w, make_client):
    now = datetime.now(UTC)
    async with make_client(**w.settings()) as client:
        await _add_finished_stops(client, 3, now=now)
        scheduler = client.app.state.scheduler
        for entry_id, minutes in ((9102, 90), (9101, 30)):
            await scheduler.schedule_stop(
                entry_id=entry_id, workspace_id=WORKSPACE, description="Focus", at=now + timedelta(minutes=minutes)
            )
        body = (await client.get("/schedule")).json()
    assert [(stop["id"], stop["status"]) for stop in body["stops"]] == [
        ("stop:9101", "pending"),  # the next to fire first
        ("stop:9102", "pending"),
        ("stop:500002", "cancelled"),
        ("stop:500001", "failed"),
        ("stop:500000", "done"),
    ]
    assert body["stops_not_listed"] == 0


async def test_the_schema_documents_what_was_left_out(client):
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["ScheduleOut"]
    assert "stops_not_listed" in schema["required"]
    assert schema["properties"]["stops_not_listed"]["type"] == "integer"
    assert "stops_not_listed" in schema["example"]
    assert str(LISTED_STOPS) in schema["properties"]["stops"]["description"]


def _armed_stops(client) -> list[str]:
    return [job.id for job in client.app.state.scheduler.aps.get_jobs() if job.id.startswith("stop:")]


async def _started_on_one_armed_on_two(one, two) -> None:
    await post_whatsapp(one, whatsapp_form("start sprint for 30 min"))
    assert await two.app.state.scheduler.sync_stops() == 1
    assert _armed_stops(two) == ["stop:9001"]


async def test_a_stop_cancelled_on_another_worker_leaves_this_workers_jobs_at_its_next_sync(w, make_client):
    """Found by a review: the sync only armed, so a stop stopped by hand on worker A stayed in worker B's `jobs`
    until its time (where it fired as a no-op), and the page a reader got from B said the timer would be stopped."""
    settings = w.settings(briefing_cron="0 8 * * 1-5")
    async with make_client(**settings) as one, make_client(**settings) as two:
        await _started_on_one_armed_on_two(one, two)
        assert (await one.post("/stop-timer", json={})).status_code == 200
        assert _armed_stops(one) == [] and _armed_stops(two) == ["stop:9001"]
        await two.app.state.scheduler.sync_stops()
        body = (await two.get("/schedule")).json()
    assert [job["id"] for job in body["jobs"]] == ["morning-briefing"]  # only stops are dropped
    assert [(stop["id"], stop["status"]) for stop in body["stops"]] == [("stop:9001", "cancelled")]


async def test_a_stop_fired_on_another_worker_or_pruned_leaves_this_workers_jobs_at_its_next_sync(w, make_client):
    settings = w.settings()
    async with make_client(**settings) as one, make_client(**settings) as two:
        await _started_on_one_armed_on_two(one, two)
        assert await one.app.state.scheduler.fire_stop("stop:9001") is True
        await two.app.state.scheduler.sync_stops()
        after_done = _armed_stops(two)

        await one.app.state.scheduler.schedule_stop(
            entry_id=9100, workspace_id=WORKSPACE, description="Thesis", at=datetime.now(UTC) + timedelta(hours=1)
        )
        await two.app.state.scheduler.sync_stops()
        planned_later = _armed_stops(two)
        async with one.app.state.resources.sessions.begin() as session:
            await session.execute(delete(ScheduledJob))
        await two.app.state.scheduler.sync_stops()
        after_delete = _armed_stops(two)
    assert w.toggl.stops == ["9001"]
    assert after_done == [] and after_delete == []
    assert planned_later == ["stop:9100"]


async def test_a_stop_planned_again_while_the_sync_reads_stays_armed(w, make_client, monkeypatch):
    """The sync removes a job only if it is the one armed before it read the database: a stop this worker planned
    again meanwhile (the row read `cancelled`, then made `pending` and armed anew) must still fire."""
    settings = w.settings()
    async with make_client(**settings) as one, make_client(**settings) as two:
        await _started_on_one_armed_on_two(one, two)
        await one.app.state.scheduler.cancel_stops(entry_id=9001)
        second = two.app.state.scheduler
        planned_again = datetime.now(UTC) + timedelta(minutes=45)
        sessions = second.sessions

        class PlanAgainAfterTheRead:
            """The sync's read session; once it is closed, and before the sync goes on, the stop is planned again
            (another request of this worker, which on PostgreSQL need not wait for that session)."""

            def begin(self):
                return sessions.begin()

            @asynccontextmanager
            async def __call__(self):
                async with sessions() as session:
                    yield session
                monkeypatch.setattr(second, "sessions", sessions)
                await second.schedule_stop(
                    entry_id=9001, workspace_id=WORKSPACE, description="sprint", at=planned_again
                )

        monkeypatch.setattr(second, "sessions", PlanAgainAfterTheRead())
        await second.sync_stops()
        job = second.aps.get_job("stop:9001")
    assert second.sessions is sessions  # the read happened, and the stop was planned again after it
    assert job is not None and job.trigger.run_date == planned_again
