"""One bound on a skill call, worked out from the code, and no live request taken for a dead one.

`Settings.longest_call_seconds` was 3 x (max(HTTP, SMTP timeout) + 10): it left out what `longest_run_seconds`
works out for each attempt of the shared HTTP client (a free connection, connecting, TLS, then the answer). With
HTTP_TIMEOUT_SECONDS=60 a timer stop (two Toggl calls, up to 820 s) outlasted both the planned stop's claim lease
(600 s: another worker took it over and ran it again) and `longest_request_seconds` (660 s: a retry of a live
POST /stop-timer was told the service had most likely stopped). The defaults' timings do not move.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import time_machine

from core import idempotency
from core.idempotency import request_fingerprint
from core.resources import build_http_client
from core.settings import Settings
from core.store import IdempotencyKey, JobFire, utcnow
from skills import slack, toggl, whatsapp
from tests.workflows.test_scheduler import stop_row
from tests.workflows.test_scheduler_guards import claims_on_stop
from tests.workflows.world import post_whatsapp, whatsapp_form, world

HTTP_60 = {"http_timeout_seconds": 60}


@pytest.mark.parametrize(
    "timeouts",
    [{}, {"http_timeout_seconds": 30}, HTTP_60, {"http_timeout_seconds": 1, "smtp_timeout_seconds": 1}],
    ids=["defaults", "HTTP 30 s", "HTTP 60 s", "one-second timeouts"],
)
def test_a_call_is_bounded_by_what_the_client_and_the_skills_do(make_settings, timeouts):
    """The bound repeats the skills' constants (core cannot import a skill) and reads the shared client's
    timeouts: Toggl's calls and Twilio's parts both make three attempts with waits of up to 10 s between."""
    settings = make_settings(**timeouts)
    timeout = build_http_client(settings).timeout
    attempt = timeout.pool + timeout.connect + timeout.connect + settings.http_timeout_seconds
    assert attempt == settings.longest_attempt_seconds
    for attempts, wait in (
        (toggl.ATTEMPTS, toggl.MAX_WAIT_SECONDS),
        (whatsapp.ATTEMPTS, whatsapp.MAX_RETRY_WAIT_SECONDS),
    ):
        assert attempts * attempt + (attempts - 1) * wait == settings.longest_call_seconds
    # One formula for every bound built of calls.
    assert settings.longest_whatsapp_message_seconds == whatsapp.MAX_PARTS * settings.longest_call_seconds
    assert settings.longest_timer_stop_seconds == 2 * settings.longest_call_seconds
    assert settings.longest_request_seconds >= settings.longest_timer_stop_seconds


@pytest.mark.parametrize(
    ("timeouts", "call", "longest_request", "cutoff"),
    [
        ({}, 110, 390, 13 * 60),  # as before: the estimate, above every worst case (the briefing's, 275 s)
        ({"http_timeout_seconds": 30}, 230, 480, 16 * 60),  # as before: two Toggl calls take 460 s
        (HTTP_60, 410, 820, 2 * 820),  # two Toggl calls; the estimate (660 s) was the bound alone
    ],
    ids=["defaults", "HTTP 30 s", "HTTP 60 s"],
)
def test_the_bounds_and_their_cutoffs(make_settings, timeouts, call, longest_request, cutoff):
    settings = make_settings(**timeouts)
    assert settings.longest_call_seconds == call
    assert settings.longest_request_seconds == longest_request
    assert settings.abandoned_after == timedelta(seconds=cutoff)


async def test_a_planned_stop_still_at_work_past_ten_minutes_is_not_taken_over(make_client):
    """With HTTP_TIMEOUT_SECONDS=60 a planned stop (the stop, then its late stop set back) can take 820 s: a claim
    700 s old may belong to a worker still at it. The lease was 600 s, and a second worker ran the stop again."""
    async with world() as w:
        async with make_client(**w.settings(**HTTP_60)) as client:
            scheduler = client.app.state.scheduler
            await post_whatsapp(client, whatsapp_form("start sprint for 1 min"))
            fire_time = (await stop_row(client)).run_at
            now = datetime.now(UTC).replace(microsecond=0)
            claimed_at = now - timedelta(seconds=700)
            async with client.app.state.resources.sessions.begin() as session:
                session.add(
                    JobFire(job_id="stop:9001", fire_time=fire_time, worker="busy-worker", claimed_at=claimed_at)
                )
            with time_machine.travel(now, tick=False):
                fired = await scheduler.fire_stop("stop:9001")
                claims = await claims_on_stop(client)
    assert fired is False
    assert w.toggl.stops == []
    assert claims == [("stop:9001", fire_time, "busy-worker", claimed_at)]
    assert scheduler.claim_lease == timedelta(seconds=2 * 820)


async def test_a_stop_timer_still_at_work_is_not_said_to_have_most_likely_stopped(make_client, monkeypatch):
    """A retry of POST /stop-timer whose first request started 700 s ago: with HTTP_TIMEOUT_SECONDS=60 that stop
    (the running timer read, then stopped) can still be at work until 820 s. It was told the service had most
    likely stopped while it ran."""
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
    async with make_client(toggl_api_token="toggl-token-0060", toggl_workspace_id=7, **HTTP_60) as client:
        fingerprint = {"body": {"workspace_id": None, "entry_id": None}, "dry_run": False}
        async with client.app.state.resources.sessions.begin() as session:
            session.add(
                IdempotencyKey(
                    scope=idempotency.KEY_SCOPE,
                    key="stop-1",
                    request_hash=request_fingerprint("POST", "/stop-timer", fingerprint),
                    state="in_progress",
                    created_at=utcnow() - timedelta(seconds=700),
                )
            )
        response = await client.post("/stop-timer", headers={"Idempotency-Key": "stop-1"})
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == "A request with this Idempotency-Key is still in progress; retry shortly."
    assert response.headers["retry-after"] == "1"


async def test_slacks_connect_limit_is_the_settings_one(make_settings, monkeypatch):
    """skills/slack.py had its own `min(5.0, HTTP_TIMEOUT_SECONDS)`: one definition, `connect_timeout_seconds`,
    which the shared client and the bounds read too. A different value (as if the cap changed) shows which."""
    monkeypatch.setattr(Settings, "connect_timeout_seconds", property(lambda self: 2.5))
    async with AsyncExitStack() as stack:
        skill = await slack.open_skill(SimpleNamespace(settings=make_settings(http_timeout_seconds=10)), stack)
        timeout = skill.client.session.timeout
    assert (timeout.connect, timeout.total) == (2.5, 12.5)
