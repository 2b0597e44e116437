"""Day of the month and day of the week together, as crontab reads them (core/cron.py, `_either_day_matches`).

crontab(5): "If both fields are restricted (i.e., do not contain the "*" character), the command will be run when
either field matches the current time." Vixie cron and cronie decide "restricted" on the field's first character
(DOM_STAR / DOW_STAR, set in src/entry.c when it is `*`): `*/2` is unrestricted, and `0 8 */2 * 1-5` still needs
both. Such expressions were refused before; here they are checked against an oracle that matches wall-clock
minutes one by one, written from that rule and nothing else.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
import time_machine

from core.cron import crontab_trigger
from tests.workflows.conftest import ledger, sessions  # noqa: F401 (the scheduler test's fixtures)
from tests.workflows.test_briefing import RecordingSlack
from tests.workflows.test_scheduler import assert_one_briefing_run_claimed_by_w1_for, scheduler_for
from tests.workflows.world import wait_for
from workflows.scheduler import BRIEFING_JOB_ID, missed_briefing

BERLIN = ZoneInfo("Europe/Berlin")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

# --- The oracle: crontab(5), one wall-clock minute at a time ------------------------------------------------


@cache
def _values(field: str, low: int, high: int, names: tuple[str, ...] = ()) -> frozenset[int]:
    """The numbers a crontab field lists: `*`, `n`, `a-b`, each with an optional `/step`, comma-separated."""
    found: set[int] = set()
    for part in field.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            first, last = low, high
        else:
            ends = [names.index(end.lower()) if end.isalpha() else int(end) for end in base.split("-")]
            first, last = ends[0], ends[-1]
        found.update(range(first, last + 1, int(step or 1)))
    return frozenset(found)


def _day_matches(expression: str, day: date) -> bool:
    _, _, dom, month, dow = expression.split()
    if day.month not in _values(month, 1, 12):
        return False
    dom_ok = day.day in _values(dom, 1, 31)
    dow_ok = day.isoweekday() % 7 in {d % 7 for d in _values(dow, 0, 7, DAY_NAMES)}  # 0 and 7: Sunday
    if dom.startswith("*") or dow.startswith("*"):  # DOM_STAR or DOW_STAR: both must match
        return dom_ok and dow_ok
    return dom_ok or dow_ok  # both restricted: either


def _matches(expression: str, wall: datetime) -> bool:
    minute, hour, *_ = expression.split()
    return (
        wall.minute in _values(minute, 0, 59) and wall.hour in _values(hour, 0, 23) and _day_matches(expression, wall)
    )


def _oracle(expression: str, zone: ZoneInfo, start: datetime, count: int) -> list[datetime]:
    """The first `count` fire times from `start` (inclusive), in UTC.

    Each matching wall-clock minute is one fire time, at the instant `replace(tzinfo=zone)` gives it (fold 0), which
    is the service's documented daylight-saving rule: a wall time the clocks repeat fires once, at its first
    occurrence; one they skip fires an hour on (02:30 read in the offset before the jump is 03:30 CEST).
    """
    found: set[datetime] = set()
    day = start.astimezone(zone).date() - timedelta(days=1)  # a skipped 23:xx would land on the next day
    while True:
        if _day_matches(expression, day):
            midnight = datetime.combine(day, time())
            for minute in range(24 * 60):
                wall = midnight + timedelta(minutes=minute)
                if _matches(expression, wall):
                    found.add(wall.replace(tzinfo=zone).astimezone(UTC))
        due = sorted(moment for moment in found if moment >= start)
        # Fire times are found a day at a time; two days on, none earlier than those found can turn up.
        if len(due) >= count and due[count - 1] < datetime.combine(day - timedelta(days=1), time(), tzinfo=UTC):
            return due[:count]
        day += timedelta(days=1)


def _fired(expression: str, zone: ZoneInfo, start: datetime, count: int) -> list[datetime]:
    """The trigger's first `count` fire times from `start`, asked as APScheduler asks (the last one handed back)."""
    trigger = crontab_trigger(expression, timezone=zone)
    times, previous = [], None
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, previous or start.astimezone(zone))
        assert previous is not None
        times.append(previous.astimezone(UTC))
    return times


def test_the_oracle_reads_crontabs_own_example():
    """crontab(5): "30 4 1,15 * 5" runs "at 4:30 am on the 1st and 15th of each month, plus every Friday"."""
    start = datetime(2026, 5, 1, tzinfo=UTC)
    days = [moment.strftime("%a %d %H:%M") for moment in _oracle("30 4 1,15 * 5", ZoneInfo("UTC"), start, 7)]
    assert days == [
        "Fri 01 04:30",
        "Fri 08 04:30",
        "Fri 15 04:30",  # the 15th and a Friday: once
        "Fri 22 04:30",
        "Fri 29 04:30",
        "Mon 01 04:30",
        "Fri 05 04:30",
    ]
    # One field starting with `*` (DOM_STAR): both must match, odd days that are also weekdays.
    odd_weekdays = _oracle("0 8 */2 * 1-5", ZoneInfo("UTC"), start, 4)
    assert [moment.strftime("%a %d") for moment in odd_weekdays] == ["Fri 01", "Tue 05", "Thu 07", "Mon 11"]


START_MOMENTS = [
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 2, 13, 7, 59, 30, tzinfo=UTC),
    datetime(2026, 3, 28, 12, tzinfo=UTC),  # the day before Berlin's clocks skip 02:00-03:00
    datetime(2026, 3, 29, 0, 45, tzinfo=UTC),  # 01:45 CET, just before the jump
    datetime(2026, 3, 29, 1, 10, tzinfo=UTC),  # 03:10 CEST, just after it
    datetime(2026, 6, 1, 6, tzinfo=UTC),  # a Monday the 1st, at 08:00 in Berlin
    datetime(2026, 10, 24, 22, tzinfo=UTC),  # the night Berlin's clocks repeat 02:00-03:00
    datetime(2026, 10, 25, 0, 15, tzinfo=UTC),  # 02:15 CEST, the first time round
    datetime(2026, 10, 25, 1, 15, tzinfo=UTC),  # 02:15 CET, the second
    datetime(2026, 11, 15, 23, 59, 59, tzinfo=UTC),
]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
@pytest.mark.parametrize(
    "expression",
    [
        # Both day fields restricted: either matches.
        "0 8 1,15 * 1",
        "0 0 13 * 5",
        "0 8 1-7 * 0",
        "*/30 * 15 * sun",  # 15 March 2026 is a Sunday; 29 March and 25 October are DST Sundays in Berlin
        "30 2 29 3,10 sun",  # in the hour Berlin's clocks skip and repeat, on days both fields match
        # One starting with `*`: both must match.
        "30 9 */2 * 1-5",
        "15 6 10-20 * */2",
        # One or neither restricted, as before (controls).
        "0 8 * * 1-5",
        "0 9 13 * *",
        "30 2 * * *",
        "*/15 * * * *",
    ],
)
def test_the_next_fifty_fire_times_are_crontabs(expression, zone):
    for start in START_MOMENTS:
        assert _fired(expression, ZoneInfo(zone), start, 50) == _oracle(expression, ZoneInfo(zone), start, 50), start


@pytest.mark.parametrize("expression", ["30 0 6 9 5", "0 0 1,6 * sun", "*/30 23,0 13 * sat"])
def test_either_day_where_the_clocks_skip_the_hour_after_midnight(expression):
    """America/Santiago: on Sunday 6 September 2026 00:00 becomes 01:00 (the half matching that day fires an hour
    on, 00:30 at 01:30), and on Saturday 4 April 23:00-24:00 happens twice (once)."""
    zone = ZoneInfo("America/Santiago")
    for start in [datetime(2026, 4, 4, 12, tzinfo=UTC), datetime(2026, 9, 5, 12, tzinfo=UTC), *START_MOMENTS[:3]]:
        assert _fired(expression, zone, start, 50) == _oracle(expression, zone, start, 50), start


# --- Firing once --------------------------------------------------------------------------------------------


def test_a_time_both_day_fields_match_fires_once():
    """June 2026: the 1st and the 15th are Mondays. Both of the trigger's halves answer each; it fires once."""
    trigger = crontab_trigger("0 8 1,15 * 1", timezone=BERLIN)
    start = datetime(2026, 5, 31, 12, tzinfo=BERLIN)
    first = trigger.get_next_fire_time(None, start)
    assert first == datetime(2026, 6, 1, 8, tzinfo=BERLIN)
    assert [half.get_next_fire_time(None, start) for half in trigger.triggers] == [first, first]  # type: ignore[attr-defined]
    days = [moment.strftime("%a %d %b") for moment in _fired("0 8 1,15 * 1", BERLIN, start, 7)]
    assert days == ["Mon 01 Jun", "Mon 08 Jun", "Mon 15 Jun", "Mon 22 Jun", "Mon 29 Jun", "Wed 01 Jul", "Mon 06 Jul"]


def test_apschedulers_own_run_times_list_a_shared_time_once():
    """Job._get_run_times' loop after a pause, and the start-up catch-up: the shared 08:00 once."""
    trigger = crontab_trigger("0 8 1,15 * 1", timezone=BERLIN)
    now = datetime(2026, 6, 1, 8, 4, tzinfo=BERLIN)
    run_times, upcoming = [], trigger.get_next_fire_time(None, datetime(2026, 5, 31, 12, tzinfo=BERLIN))
    while upcoming is not None and upcoming <= now:
        run_times.append(upcoming)
        upcoming = trigger.get_next_fire_time(upcoming, now)
    assert run_times == [datetime(2026, 6, 1, 8, tzinfo=BERLIN)]
    assert upcoming == datetime(2026, 6, 8, 8, tzinfo=BERLIN)
    assert missed_briefing(trigger, now) == datetime(2026, 6, 1, 8, tzinfo=BERLIN)


def test_the_earlier_fire_time_is_the_earlier_in_real_time():
    """In the hour the clocks skip, a fire time reads 02:30+01:00 (03:30 CEST): on the wall clock it is before
    03:00 CEST, which it follows. APScheduler's OrTrigger compares wall clocks and answered 03:30 here."""
    from apscheduler.triggers.combining import OrTrigger

    from core.cron import EitherDayCronTrigger, WallClockCronTrigger

    halves = [
        WallClockCronTrigger(minute=30, hour=2, timezone=BERLIN),
        WallClockCronTrigger(minute=0, hour=3, timezone=BERLIN),
    ]
    before_the_jump = datetime(2026, 3, 29, tzinfo=BERLIN)
    assert OrTrigger(halves).get_next_fire_time(None, before_the_jump).astimezone(UTC) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )
    due = EitherDayCronTrigger(halves).get_next_fire_time(None, before_the_jump)
    assert due is not None and due.astimezone(BERLIN).isoformat() == "2026-03-29T03:00:00+02:00"
    assert isinstance(crontab_trigger("0 8 1,15 * 1", timezone=BERLIN), EitherDayCronTrigger)


# --- Settings and the scheduler -----------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["0 8 1,15 * 1", "0 0 13 * 5", "30 9 */2 * 1-5", "0 7 30 2 1"])
def test_briefing_cron_with_both_day_fields_is_accepted(expression):
    """ "0 7 30 2 1" fires on Mondays in February, as crontab's would; with `*` for the weekday it never fires."""
    from core.errors import ConfigurationError
    from core.settings import load_settings

    assert load_settings(_env_file=None, briefing_cron=expression).briefing_cron == expression
    with pytest.raises(ConfigurationError, match="never fires"):
        load_settings(_env_file=None, briefing_cron="0 7 30 2 *")


async def test_the_scheduler_arms_the_briefing_on_either_day(make_settings, sessions, ledger):  # noqa: F811
    """The 25th or a Monday: from Tuesday 24 November, Wednesday the 25th, then Monday the 30th."""
    settings = make_settings(briefing_cron="0 8 25 * 1", timezone="Europe/Berlin")
    slack = RecordingSlack()
    scheduler = scheduler_for(settings, sessions, ledger, slack=slack, worker_id="w1")
    with time_machine.travel(datetime(2026, 11, 24, 7, 59, tzinfo=BERLIN), tick=True) as clock:
        await scheduler.start()
        try:
            job = scheduler.aps.get_job(BRIEFING_JOB_ID)
            assert job.next_run_time == datetime(2026, 11, 25, 7, 0, tzinfo=UTC)  # 08:00 CET on the 25th

            clock.move_to(datetime(2026, 11, 25, 8, 0, 1, tzinfo=BERLIN))
            scheduler.aps.wakeup()
            await wait_for(lambda: len(slack.posts) == 1)
            await scheduler.tasks.aclose(grace_seconds=5)
            assert job.next_run_time == datetime(2026, 11, 30, 7, 0, tzinfo=UTC)  # the Monday
        finally:
            await scheduler.shutdown()
    await assert_one_briefing_run_claimed_by_w1_for(datetime(2026, 11, 25, 7, 0, tzinfo=UTC), sessions, ledger)
