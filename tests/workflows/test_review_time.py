"""Time review: daylight saving in TIMEZONE around the briefing's fire time and its start-up catch-up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from core.cron import crontab_trigger
from core.errors import UpstreamRateLimited
from core.store import ScheduledJob
from skills.slack import SlackPosted
from skills.toggl import TimerStarted
from tests.workflows.test_briefing import RecordingScheduler, RecordingSlack, make_deps
from tests.workflows.test_scheduler import BERLIN, assert_one_briefing_run_claimed_by_w1_for, scheduler_for
from workflows.briefing import local_time
from workflows.commands import respond
from workflows.scheduler import briefing_fire_time, missed_briefing


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "now", "occurrence"),
    [
        # 02:30 does not exist on 29 March 2026 in Berlin (02:00 CET -> 03:00 CEST): it fires an hour on, at 03:30
        # CEST (01:30 UTC). Asked from 03:25, APScheduler looked past it, to the next day.
        ("30 2 * * *", "2026-03-29T01:30:00.200", "2026-03-29T01:30"),
        ("30 2 * * *", "2026-03-29T01:31:10", "2026-03-29T01:30"),
        ("30 2 * * *", "2026-03-29T01:34:59", "2026-03-29T01:30"),
        # 5 minutes before 03:00:30 CEST is the nonexistent 02:55:30, which zoneinfo reads as 01:55:30 UTC, after
        # now: "now - 5 min" was taken on the wall clock.
        ("0 3 * * *", "2026-03-29T01:00:30", "2026-03-29T01:00"),
        ("0 3 * * *", "2026-03-29T01:01:10", "2026-03-29T01:00"),
    ],
)
def test_the_fire_time_of_a_briefing_run_late_after_the_spring_gap_is_its_occurrence(cron, now, occurrence):
    trigger = crontab_trigger(cron, timezone=BERLIN)
    moment = utc(now).astimezone(BERLIN)
    # In UTC: a time in the skipped hour (02:30+01:00) never compares equal to one of another zone (PEP 495).
    assert missed_briefing(trigger, moment).astimezone(UTC) == utc(occurrence)
    assert briefing_fire_time(trigger, moment).astimezone(UTC) == utc(occurrence)


@pytest.mark.parametrize("now", ["2026-03-29T01:00", "2026-03-29T01:10", "2026-03-29T01:29:59.5", "2026-03-29T01:30"])
def test_a_worker_started_after_the_spring_jump_still_fires_the_skipped_hours_time_an_hour_on(now):
    """Started between 03:00 and 03:30 CEST, APScheduler looked for hour 2 from 03:xx and went to the next day."""
    trigger = crontab_trigger("30 2 * * *", timezone=BERLIN)
    assert trigger.get_next_fire_time(None, utc(now).astimezone(BERLIN)).astimezone(UTC) == utc("2026-03-29T01:30")
    assert trigger.get_next_fire_time(None, utc("2026-03-29T01:30:01")) == utc("2026-03-30T00:30")


def test_the_catch_up_window_is_five_real_minutes_in_the_repeated_hour():
    # 02:00 CEST (00:00 UTC) fired; at 02:03 CET (01:03 UTC, 63 minutes later) "now - 5 min" on the wall clock
    # was 01:58 CEST: the window reached back an hour, and a start-up ran the 02:00 briefing 63 minutes late.
    trigger = crontab_trigger("0 2 * * *", timezone=BERLIN)
    assert missed_briefing(trigger, utc("2026-10-25T01:03").astimezone(BERLIN)) is None
    assert missed_briefing(trigger, utc("2026-10-25T00:03").astimezone(BERLIN)).astimezone(UTC) == utc(
        "2026-10-25T00:00"
    )


@pytest.mark.parametrize("second_wakes_at", ["2026-03-29T01:30:00.300", "2026-03-29T01:31:10"])
async def test_two_workers_run_a_briefing_in_the_skipped_hour_once(make_settings, sessions, ledger, second_wakes_at):
    """`30 2 * * *` on the spring-forward day: a worker whose loop ran the 03:30 CEST firing 70 s late claimed
    "03:31" and posted a second briefing (and started a second timer). Both start at 03:29:58 CEST, after the jump,
    when APScheduler alone armed the next day."""
    settings = make_settings(briefing_cron="30 2 * * *", timezone="Europe/Berlin")
    slack = RecordingSlack()
    first = scheduler_for(settings, sessions, ledger, slack=slack, worker_id="w1")
    second = scheduler_for(settings, sessions, ledger, slack=slack, worker_id="w2")
    with time_machine.travel(utc("2026-03-29T01:29:58"), tick=True) as clock:
        await first.start()
        await second.start()
        try:
            clock.move_to(utc("2026-03-29T01:30:00.200"))
            first.aps.wakeup()
            await asyncio.sleep(0.1)
            clock.move_to(utc(second_wakes_at))
            second.aps.wakeup()
            await asyncio.sleep(0.2)
            await first.tasks.aclose(grace_seconds=5)
            await second.tasks.aclose(grace_seconds=5)
        finally:
            await first.shutdown()
            await second.shutdown()
    assert len(slack.posts) == 1
    await assert_one_briefing_run_claimed_by_w1_for(utc("2026-03-29T01:30"), sessions, ledger)


async def test_a_briefing_in_the_skipped_hour_missed_while_down_runs_at_start_up(make_settings, sessions, ledger):
    """The README: a worker starting within 5 minutes after a cron time runs it at once. For 02:30 on the
    spring-forward day (fired at 03:30 CEST) a start-up at 03:32 found nothing, and that day had no briefing."""
    settings = make_settings(briefing_cron="30 2 * * *", timezone="Europe/Berlin")
    slack = RecordingSlack()
    scheduler = scheduler_for(settings, sessions, ledger, slack=slack, worker_id="w1")
    with time_machine.travel(utc("2026-03-29T01:32:00"), tick=True):
        await scheduler.start()
        try:
            await asyncio.sleep(0.05)
            await scheduler.tasks.aclose(grace_seconds=5)
        finally:
            await scheduler.shutdown()
    assert len(slack.posts) == 1
    await assert_one_briefing_run_claimed_by_w1_for(utc("2026-03-29T01:30"), sessions, ledger)


class QuotaToggl:
    """Toggl refusing every stop for longer than the retry window (Retry-After: 50,000 s)."""

    async def stop_timer(self, **kwargs):
        raise UpstreamRateLimited("Toggl's rate limit was reached (429).", upstream="toggl", retry_after=50_000)


async def test_a_given_up_stop_names_its_planned_time_in_timezone(make_settings, sessions, ledger):
    """GET /schedule gives every time in TIMEZONE (docs/inbound-and-briefing.md); a stop given up said when it
    was planned for in UTC ("...the planned stop at 2026-11-25T09:00:00+00:00") next to Berlin times."""
    settings = make_settings(timezone="Europe/Berlin")
    scheduler = scheduler_for(settings, sessions, ledger, slack=RecordingSlack(), worker_id="w1")
    scheduler.deps().skills.toggl = QuotaToggl()
    planned = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    await scheduler.schedule_stop(entry_id=5, workspace_id=7, description="Deep Work", at=planned)
    with time_machine.travel(planned + timedelta(seconds=1), tick=False):
        assert await scheduler.fire_stop("stop:5")
    async with sessions() as session:
        stop = await session.get(ScheduledJob, "stop:5")
    assert stop.status == "failed"
    assert "past the 12 hours after the planned stop at 2026-11-25T10:00:00+01:00." in stop.error


class AutumnToggl:
    """A timer started at 02:40 CEST on 25 October 2026, in the hour Berlin's clocks repeat."""

    async def start_timer(self, **kwargs):
        start = datetime(2026, 10, 25, 0, 40, tzinfo=UTC)
        return TimerStarted(
            entry_id=77,
            workspace_id=1,
            description=kwargs["description"],
            start=start,
            planned_stop=start + timedelta(minutes=kwargs["duration_minutes"]),
            payload={"json": {"duration": -1}},
        )


class AnySlack:
    async def post_message(self, **kwargs):
        return SlackPosted(channel="C1", ts="1.000001", payload={"text": kwargs["text"]})


async def test_a_timer_in_the_repeated_hour_is_not_confirmed_as_stopping_before_it_started(make_settings, ledger):
    """ "Started 'x' at 02:40 Europe/Berlin; it stops at 02:10 Europe/Berlin.": 30 minutes on, across the fall-back,
    the reply read as a stop before the start. A wall time the clocks show twice now says which one it is."""
    deps = make_deps(make_settings, ledger, toggl=AutumnToggl(), slack=AnySlack(), scheduler=RecordingScheduler())
    reply = await respond(deps, "start x for 30 min", trigger="whatsapp")
    assert reply.startswith(
        "Started 'x' at 02:40 Europe/Berlin (CEST, UTC+02:00); it stops at 02:10 Europe/Berlin (CET, UTC+01:00)."
    ), reply
    # Any other time reads as before.
    assert local_time(datetime(2026, 10, 25, 8, 0, tzinfo=UTC), deps.settings) == "09:00 Europe/Berlin"


async def test_the_schedule_shows_the_skipped_hours_briefing_at_a_time_that_exists(make_settings, sessions, ledger):
    """On the spring-forward day GET /schedule showed `30 2 * * *`'s next run as 02:30+01:00, a Berlin time that
    never happens that day (the right instant, the wrong words): now 03:30+02:00."""
    settings = make_settings(briefing_cron="30 2 * * *", timezone="Europe/Berlin")
    scheduler = scheduler_for(settings, sessions, ledger, slack=RecordingSlack(), worker_id="w1")
    with time_machine.travel(utc("2026-03-28T23:00:00"), tick=False):  # 00:00 CET, before the jump
        await scheduler.start()
        try:
            [job] = (await scheduler.describe())["jobs"]
        finally:
            await scheduler.shutdown()
    assert job["next_run_time"].isoformat() == "2026-03-29T03:30:00+02:00"


# --- From a review of these fixes: the fall-back side -----------------------------------------------


@pytest.mark.parametrize(
    ("cron", "now", "next_fire"),
    [
        # 25 October 2026, Berlin: 03:00 CEST (01:00 UTC) -> 02:00 CET. The next `*/15` time after 02:50 CEST is
        # the repeated 02:00 (CET), skipped, so 03:00 CET; stepping past it on the wall clock dropped the fold and
        # went back to 02:01 CEST, answering 02:15 CEST, 35 minutes before `now`.
        ("*/15 * * * *", "2026-10-25T00:50:12", "2026-10-25T02:00"),
        ("0,30 * * * *", "2026-10-25T00:59:00", "2026-10-25T02:00"),
        ("* * * * *", "2026-10-25T00:59:30", "2026-10-25T02:00"),
    ],
)
def test_the_next_fire_time_before_a_fall_back_is_never_in_the_past(cron, now, next_fire):
    trigger = crontab_trigger(cron, timezone=BERLIN)
    moment = utc(now).astimezone(BERLIN)
    assert trigger.get_next_fire_time(None, moment).astimezone(UTC) == utc(next_fire)


@pytest.mark.parametrize(
    ("cron", "now"),
    [
        ("*/15 * * * *", "2026-10-25T00:50:12"),  # 02:45 CEST is 5 min 12 s old
        ("0,30 * * * *", "2026-10-25T00:59:00"),  # 02:30 CEST is 29 minutes old
    ],
)
def test_the_start_up_catch_up_before_a_fall_back_stays_within_the_grace(cron, now):
    """missed_briefing promises the latest cron time in the last five real minutes; just before the fall-back it
    answered one up to an hour old, and a worker starting then ran that stale briefing."""
    trigger = crontab_trigger(cron, timezone=BERLIN)
    assert missed_briefing(trigger, utc(now).astimezone(BERLIN)) is None
