"""Tests pinning behaviour that a hand mutation review of the routers (and the scheduler behind GET /schedule)
found unchecked: each one fails with the mutant it names and passes on the real code."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from tests.workflows.world import finished_runs, wait_for, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


async def test_stopping_an_entry_whose_planned_stop_already_fired_keeps_that_stop_done(w, make_client):
    """Mutant dropping `status == "pending"` from `cancel_stops` survived: a stop that had fired was relabelled
    `cancelled` in GET /schedule by a later hand stop of the same (already stopped) entry."""
    async with make_client(**w.settings()) as client:
        started = (await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})).json()
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=16), tick=True):
            client.app.state.scheduler.aps.wakeup()
            await wait_for(lambda: w.toggl.stops == [str(started["entry_id"])])
            [run] = await finished_runs(client, "schedule.stop_timer")
            for _ in range(100):  # the stop row is marked right after its run is recorded
                [fired] = (await client.get("/schedule")).json()["stops"]
                if fired["status"] != "pending":
                    break
                await asyncio.sleep(0.05)
            again = await client.post(
                "/stop-timer", json={"entry_id": started["entry_id"], "workspace_id": started["workspace_id"]}
            )
            [stop] = (await client.get("/schedule")).json()["stops"]
    assert again.status_code == 200 and again.json()["already_stopped"] is True
    assert (fired["status"], fired["run_id"]) == ("done", run["id"])
    assert (stop["status"], stop["run_id"]) == ("done", run["id"])


# --- routers/email.py -------------------------------------------------------------------

MAIL = {"to_address": "ann@example.com", "subject": "Plan", "body": "Deep work first."}


async def test_a_dry_run_email_is_never_replayed_for_the_real_send_with_the_same_key(make_client, smtp_login):
    """Mutant dropping `dry_run` from /send-email's idempotency fingerprint survived (POST /start-timer has this
    test, /send-email had none): the real send with the key of a rehearsal replayed the rehearsal's 200, and
    the email was never sent."""
    server, settings = smtp_login
    headers = {"Idempotency-Key": "mail-dry-then-real"}
    async with make_client(**settings) as client:
        dry = await client.post("/send-email?dry_run=true", json=MAIL, headers=headers)
        real = await client.post("/send-email", json=MAIL, headers=headers)
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    assert real.status_code == 422  # a different request for the key, not a replay of the rehearsal
    assert "idempotent-replayed" not in real.headers
    assert server.messages == []
