"""Tests pinning behaviour that a hand mutation review of workflows/scheduler.py found unchecked: each one fails
with the mutant it names and passes on the real code."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import time_machine
from sqlalchemy import select

from core.errors import UpstreamError, UpstreamUnavailable
from core.store import ScheduledJob
from tests.workflows.test_scheduler import (
    BERLIN,
    RecordingSlack,
    RunningToggl,
    TogglStopOutage,
    _claim_as_dead_worker,
    abandoned_run,
    attempts_are,
    scheduler_for,
    stop_row,
)
from tests.workflows.world import TOGGL_BASE, WORKSPACE, post_whatsapp, wait_for, whatsapp_form, world
from workflows.scheduler import BRIEFING_JOB_ID, next_stop_attempt


def test_a_retry_falling_exactly_at_the_end_of_the_window_is_still_made():
    """Mutant `at <= planned + STOP_RETRY_WINDOW` -> `<` survived: the documented window is "no later than" 12
    hours after the planned stop, and an attempt due at exactly that time was dropped."""
    planned = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    failed_at = planned + timedelta(hours=11, minutes=30)
    assert next_stop_attempt(planned=planned, attempts=6, failed_at=failed_at) == planned + timedelta(hours=12)
    late = failed_at + timedelta(seconds=1)
    assert next_stop_attempt(planned=planned, attempts=6, failed_at=late) is None


async def test_with_long_http_timeouts_a_live_stop_is_not_taken_for_a_dead_workers(make_client):
    """Mutant fixing the claim lease at its 10-minute floor survived: only short timeouts were tested. With
    HTTP_TIMEOUT_SECONDS=120 one stop (two Toggl calls of 3 x (2 x 120 + 2 x 5) + 2 x 10 s) can take 1,540 s, so a
    claim 11 minutes old may be a live worker's; the lease is twice that."""
    async with world() as w:
        async with make_client(**w.settings(http_timeout_seconds=120)) as client:
            await post_whatsapp(client, whatsapp_form("start sprint for 1 min"))
            scheduler = client.app.state.scheduler
            await _claim_as_dead_worker(client, claimed_ago=timedelta(minutes=11))
            within_lease = await scheduler.fire_stop("stop:9001")
            stops_while_held = list(w.toggl.stops)
            with time_machine.travel(datetime.now(UTC) + timedelta(minutes=41), tick=True):
                past_lease = await scheduler.fire_stop("stop:9001")
    assert scheduler.claim_lease == timedelta(seconds=3080)
    assert (within_lease, stops_while_held) == (False, [])
    assert past_lease is True and w.toggl.stops == ["9001"]


async def test_a_briefing_more_than_the_grace_late_is_skipped_not_sent_late(make_settings, sessions, ledger):
    """Mutant dropping the briefing job's `misfire_grace_time` survived (it then inherits no limit): a worker whose
    loop woke at 08:06 for the 08:00 briefing sent it then, though the docs say a briefing over 5 minutes late is
    skipped."""
    settings = make_settings(briefing_cron="0 8 * * *", timezone="Europe/Berlin")
    slack = RecordingSlack()
    scheduler = scheduler_for(settings, sessions, ledger, slack=slack, worker_id="w1")
    with time_machine.travel(datetime(2026, 11, 25, 7, 59, 0, tzinfo=BERLIN), tick=True) as clock:
        await scheduler.start()
        try:
            clock.move_to(datetime(2026, 11, 25, 8, 6, 0, tzinfo=BERLIN))
            scheduler.aps.wakeup()
            await asyncio.sleep(0.5)  # a late briefing would have been posted by now
            await scheduler.tasks.aclose(grace_seconds=5)
            next_run = scheduler.aps.get_job(BRIEFING_JOB_ID).next_run_time
        finally:
            await scheduler.shutdown()
    assert slack.posts == []
    assert (await ledger.list_runs(kind="briefing"))[1] == 0
    assert next_run == datetime(2026, 11, 26, 8, 0, tzinfo=BERLIN)


async def test_a_firing_before_a_retry_is_due_neither_stops_early_nor_loses_the_retry(make_client, monkeypatch):
    """Mutants dropping the "retry not due yet" guard of `fire_stop`, or its re-arming, survived. A firing armed for
    an earlier attempt (a sync that read the row just before the retry moved it) stopped the timer ahead of the
    retry; without the re-arming, the retry's own firing, which that sync replaced, never came."""
    monkeypatch.setattr("core.upstream.BASE_DELAY_SECONDS", 0)  # the skill's in-call backoff: not under test here
    async with world() as w:
        async with make_client(**w.settings()) as client:
            await post_whatsapp(client, whatsapp_form("start sprint for 1 min"))
            scheduler = client.app.state.scheduler
            planned = (await stop_row(client)).run_at
            outage = TogglStopOutage(w, 503)
            with time_machine.travel(planned + timedelta(seconds=5), tick=True):
                scheduler.aps.wakeup()
                retry = await stop_row(client, until=attempts_are(1))
                outage.status = None
                scheduler.aps.remove_job("stop:9001")  # the stale firing ran: APScheduler dropped the job
                fired = await scheduler.fire_stop("stop:9001")
                row = await stop_row(client)
                job = scheduler.aps.get_job("stop:9001")
    assert fired is False and w.toggl.stops == []
    assert (row.status, row.run_at, row.payload["attempts"]) == ("pending", retry.run_at, 1)
    assert job is not None and job.trigger.run_date == retry.run_at


async def test_a_retry_after_past_the_window_fails_the_stop_saying_toggl_asked_to_wait(make_client):
    """Mutant always calling a retryable give-up "window" survived (only `gave_up_error` itself was tested): a stop
    Toggl asked to wait 50,000 s for said it had tried for 12 hours, after one attempt."""
    async with world() as w:
        w.toggl.mock.patch(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+/stop$").mock(
            return_value=httpx.Response(429, headers={"Retry-After": "50000"}, json="Too many requests")
        )
        async with make_client(**w.settings()) as client:
            await post_whatsapp(client, whatsapp_form("start sprint for 1 min"))
            planned = (await stop_row(client)).run_at
            with time_machine.travel(planned + timedelta(seconds=5), tick=True):
                assert await client.app.state.scheduler.fire_stop("stop:9001") is True
            row = await stop_row(client)
            [listed] = (await client.get("/schedule")).json()["stops"]
    assert (row.status, row.payload["attempts"]) == ("failed", 1)
    assert "Not tried again: Toggl asked to wait 50000 s, past the 12 hours after the planned stop" in row.error
    assert "Gave up after" not in row.error
    assert listed["error"] == row.error


async def test_a_stop_cancelled_during_a_failing_attempt_is_not_armed_again(make_client, monkeypatch):
    """Mutant arming the retry whether or not `_retry_later` moved the row survived: a stop cancelled by hand while
    its attempt failed was listed again among GET /schedule's jobs, armed to fire a no-op."""
    monkeypatch.setattr("core.upstream.BASE_DELAY_SECONDS", 0)
    async with world() as w:
        async with make_client(**w.settings()) as client:
            await post_whatsapp(client, whatsapp_form("start sprint for 30 min"))
            scheduler = client.app.state.scheduler
            TogglStopOutage(w, 503)
            toggl = client.app.state.skills.toggl
            stop_timer = toggl.stop_timer

            async def stop_while_cancelled_by_hand(**kwargs):
                assert await scheduler.cancel_stops(entry_id=9001) == 1
                return await stop_timer(**kwargs)

            toggl.stop_timer = stop_while_cancelled_by_hand
            assert await scheduler.fire_stop("stop:9001") is True
            body = (await client.get("/schedule")).json()
    assert [stop["status"] for stop in body["stops"]] == ["cancelled"]
    assert body["jobs"] == []


async def test_planning_a_failed_stop_anew_clears_its_old_error(make_settings, sessions, ledger):
    """Mutant leaving `error` out of the re-plan's UPDATE survived: a stop planned again after it failed showed
    as `pending` with the old failure's error in GET /schedule (which lists `error` beside `status`)."""
    scheduler = scheduler_for(make_settings(), sessions, ledger, slack=RecordingSlack(), worker_id="w1")
    at = datetime(2026, 11, 25, 7, 30, tzinfo=UTC)
    await scheduler.schedule_stop(entry_id=77, workspace_id=7, description="Deep Work", at=at)
    async with sessions.begin() as session:
        row = await session.get(ScheduledJob, "stop:77")
        row.status, row.error, row.finished_at = "failed", "403 upstream-error: Toggl refused.", at

    await scheduler.schedule_stop(entry_id=77, workspace_id=7, description="Deep Work", at=at + timedelta(hours=1))

    async with sessions() as session:
        row = await session.get(ScheduledJob, "stop:77")
    assert (row.status, row.error, row.finished_at) == ("pending", None, None)
    assert row.run_at.replace(tzinfo=UTC) == at + timedelta(hours=1)


class UnreadableToggl(RunningToggl):
    """Every read of the running timer fails with `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__(None)
        self.error = error

    async def current_timer(self):
        raise self.error


@pytest.mark.parametrize(
    ("error", "later"),
    [
        (UpstreamError("Toggl refused the credentials.", upstream="toggl", status=403), timedelta(0)),
        (UpstreamUnavailable("Toggl answered 503.", upstream="toggl"), timedelta(hours=12, minutes=1)),
    ],
    ids=["refused for good: closed at once", "unreadable past the recovery window"],
)
async def test_an_interrupted_start_whose_timer_cannot_be_read_is_closed_in_the_end(
    make_settings, sessions, ledger, error, later
):
    """Mutants keeping the run open while Toggl cannot be read survived: a 403, which waiting will not change, and
    an outage longer than RECOVERY_WINDOW each left the killed worker's run `running` in the ledger for good."""
    settings = make_settings()
    run_id, _ = await abandoned_run(
        settings, sessions, ledger, "toggl.start_timer", {"task_name": "Deep Work", "duration_minutes": 25}
    )
    scheduler = scheduler_for(settings, sessions, ledger, slack=RecordingSlack(), worker_id="w1")
    scheduler.deps().skills.toggl = UnreadableToggl(error)
    with time_machine.travel(datetime.now(UTC) + later, tick=True):
        await scheduler.prune()
    closed = await ledger.get_run(run_id)
    assert closed is not None and closed.status == "failed"
    assert (closed.error or "").startswith("interrupted")
    async with sessions() as session:
        assert (await session.scalars(select(ScheduledJob))).all() == []


async def test_a_pending_stop_planned_days_ago_is_still_listed(make_client):
    """Mutant listing only the stops created in the last day survived: a stop planned two days ago for a long
    task, still pending, vanished from GET /schedule, which promises every pending stop."""
    async with world() as w:
        async with make_client(**w.settings()) as client:
            scheduler = client.app.state.scheduler
            now = datetime.now(UTC)
            with time_machine.travel(now - timedelta(days=2), tick=True):
                await scheduler.schedule_stop(
                    entry_id=9100, workspace_id=WORKSPACE, description="Thesis", at=now + timedelta(hours=1)
                )
            listed = (await client.get("/schedule")).json()["stops"]
    assert [(stop["id"], stop["status"]) for stop in listed] == [("stop:9100", "pending")]


async def test_a_stop_another_worker_planned_is_armed_here_by_the_next_sync(make_client):
    """Mutant syncing every 3,000 s instead of SYNC_SECONDS (30) survived: the tests call `sync_stops` by hand. A
    worker must learn of another's stop within half a minute, or a stop planned while the other shuts down waits."""
    async with world() as w:
        settings = w.settings()
        async with make_client(**settings) as one, make_client(**settings) as two:
            await post_whatsapp(one, whatsapp_form("start sprint for 30 min"))
            second = two.app.state.scheduler
            assert second.aps.get_job("stop:9001") is None
            with time_machine.travel(datetime.now(UTC) + timedelta(seconds=31), tick=True):
                second.aps.wakeup()
                await wait_for(lambda: second.aps.get_job("stop:9001") is not None)
    assert w.toggl.stops == []
