"""Tests for mutants of the tenth session's router-facing changes that survived the existing suite.

Each test names the mutant it kills. The mutants were applied by hand to the code changed since 23c0339; the
commit that adds this file lists them all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.store import ScheduledJob
from tests.routers.test_timers_api import BASE, TOKEN
from tests.workflows.world import WORKSPACE, world
from workflows.scheduler import STOP_KIND


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


async def _add_ended_stop(client, entry_id: int, *, created_at: datetime, finished_at: datetime) -> None:
    async with client.app.state.resources.sessions.begin() as session:
        session.add(
            ScheduledJob(
                id=f"stop:{entry_id}",
                kind=STOP_KIND,
                run_at=finished_at,
                payload={"entry_id": entry_id, "workspace_id": WORKSPACE, "description": "Pomodoro"},
                status="done",
                created_at=created_at,
                finished_at=finished_at,
            )
        )


# --- GET /schedule (workflows/scheduler.py `describe`) ----------------------------------------------------------


async def test_the_ended_stops_are_listed_by_when_they_finished_not_when_they_were_planned(w, make_client):
    """Kills ordering the ended stops by `created_at`: the schema promises "the most recently finished first", and
    a stop planned early for a long timer finishes after one planned later for a short one."""
    now = datetime.now(UTC)
    async with make_client(**w.settings()) as client:
        # Planned first, finished last (a 3-hour timer) ...
        await _add_ended_stop(client, 7001, created_at=now - timedelta(hours=5), finished_at=now - timedelta(hours=1))
        # ... and planned later, finished earlier (a 25-minute one).
        await _add_ended_stop(client, 7002, created_at=now - timedelta(hours=4), finished_at=now - timedelta(hours=3))
        body = (await client.get("/schedule")).json()
    assert [stop["id"] for stop in body["stops"]] == ["stop:7001", "stop:7002"]
    assert body["stops_not_listed"] == 0


async def test_an_ended_stop_planned_more_than_a_day_ago_is_neither_listed_nor_counted(w, make_client):
    """Kills widening the window of ended stops: only those created in the last 24 hours are the day's."""
    now = datetime.now(UTC)
    async with make_client(**w.settings()) as client:
        await _add_ended_stop(client, 7101, created_at=now - timedelta(hours=2), finished_at=now - timedelta(hours=1))
        await _add_ended_stop(client, 7102, created_at=now - timedelta(hours=30), finished_at=now - timedelta(hours=29))
        body = (await client.get("/schedule")).json()
    assert [stop["id"] for stop in body["stops"]] == ["stop:7101"]
    assert body["stops_not_listed"] == 0


async def test_the_listing_holds_two_hundred_stops_as_documented(w, make_client):
    """Kills changing LISTED_STOPS: the listing's size is documented (docs and the schema say 200), and a client
    paging by hand reads `stops_not_listed` against it."""
    now = datetime.now(UTC)
    async with make_client(**w.settings()) as client:
        async with client.app.state.resources.sessions.begin() as session:
            for n in range(201):
                at = now - timedelta(hours=20) + timedelta(minutes=n)
                session.add(
                    ScheduledJob(
                        id=f"stop:{800_000 + n}",
                        kind=STOP_KIND,
                        run_at=at,
                        payload={"entry_id": 800_000 + n, "workspace_id": WORKSPACE, "description": "Pomodoro"},
                        status="done",
                        created_at=at - timedelta(minutes=25),
                        finished_at=at,
                    )
                )
        body = (await client.get("/schedule")).json()
    assert (len(body["stops"]), body["stops_not_listed"]) == (200, 1)
    assert body["stops"][-1]["id"] == "stop:800001"  # the oldest finished is the one left out


# --- GET /skills (skills/email.py INTEGRATION) ------------------------------------------------------------------


async def test_the_email_skill_lists_smtp_local_hostname_among_its_optional_settings(client):
    """Kills dropping SMTP_LOCAL_HOSTNAME from the email integration's optional settings: GET /skills is where an
    operator finds the settings a skill reads, and a strict relay refusing the looked-up EHLO name needs it."""
    skills = {item["name"]: item for item in (await client.get("/skills")).json()["skills"]}
    assert skills["email"]["optional_settings"] == [
        "SMTP_FROM",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_SECURITY",
        "SMTP_CA_FILE",
        "SMTP_LOCAL_HOSTNAME",
    ]


# --- POST /start-timer (skills/toggl.py, worded per audience) ---------------------------------------------------


async def test_a_missing_workspace_tells_an_api_caller_both_remedies(make_client):
    """Kills dropping the API clause of the missing-workspace detail: the chat reply lost "pass workspace_id" on
    purpose, an API caller must still be told it may pass one instead of setting TOGGL_WORKSPACE_ID."""
    async with make_client(toggl_api_token=TOKEN, toggl_base_url=BASE) as client:
        response = await client.post("/start-timer", json={"task_name": "x"})
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "No Toggl workspace: set TOGGL_WORKSPACE_ID (the number in your Toggl workspace's URL) and restart, or pass "
        "workspace_id to POST /start-timer and /stop-timer."
    )
