"""GET /schedule's list of planned stops: the pending ones always, the finished ones of the day after them, and what
a worker shows of stops that another worker cancelled or fired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.store import ScheduledJob
from tests.workflows.world import WORKSPACE, world
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
