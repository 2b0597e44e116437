"""BRIEFING_CRON is read as crontab reads it: 0 and 7 are Sunday, 1-5 Monday to Friday (core/cron.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from core.cron import crontab_days, crontab_trigger

FRIDAY_NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def _next_days(expression: str, count: int) -> list[str]:
    trigger = crontab_trigger(expression, timezone="UTC")
    fired, at = [], FRIDAY_NOON
    for _ in range(count):
        at = trigger.get_next_fire_time(None, at)
        fired.append(at.strftime("%a"))
        at = at.replace(minute=at.minute + 1)
    return fired


def test_the_documented_weekday_briefing_fires_monday_to_friday():
    """APScheduler's own from_crontab made this Tuesday to Saturday."""
    assert _next_days("0 8 * * 1-5", 6) == ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("mon-fri", "mon,tue,wed,thu,fri"),
        ("0,6", "sun,sat"),
        ("sat,sun", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1/2", "sun,mon,wed,fri"),  # 1-7/2: 7 is Sunday too
        ("5-7", "sun,fri,sat"),
        ("*", "*"),
    ],
)
def test_day_of_week_fields(field, names):
    assert crontab_days(field) == names


def test_sunday_is_sunday():
    assert _next_days("30 9 * * 0", 2) == ["Sun", "Sun"]


@pytest.mark.parametrize(
    "expression", ["0 8 * *", "0 8 * * 8", "0 8 * * 5-1", "0 8 * * */0", "0 8 * * funday", "0 8 32 * 5"]
)
def test_invalid_expressions_are_refused(expression):
    with pytest.raises(ValueError):
        crontab_trigger(expression, timezone="UTC")


async def test_the_scheduled_briefing_job_uses_crontab_weekdays(make_client):
    async with make_client(briefing_cron="0 8 * * 0", timezone="UTC") as client:
        [job] = (await client.get("/schedule")).json()["jobs"]
    assert datetime.fromisoformat(job["next_run_time"].replace("Z", "+00:00")).strftime("%a") == "Sun"


def test_a_schedule_that_never_fires_is_refused_at_start_up():
    from core.errors import ConfigurationError
    from core.settings import load_settings

    with pytest.raises(ConfigurationError, match="BRIEFING_CRON: '0 7 30 2 \\*' never fires"):
        load_settings(_env_file=None, briefing_cron="0 7 30 2 *")


# --- Daylight saving (found by a review: at a fall-back every worker's event loop spun for good) ------------

BERLIN = ZoneInfo("Europe/Berlin")


def _fire_times(expression: str, zone: ZoneInfo, start: datetime, count: int) -> list[str]:
    trigger = crontab_trigger(expression, timezone=zone)
    times, previous = [], None
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, previous or start.astimezone(zone))
        times.append(previous.isoformat())
    return times


def test_an_hourly_cron_fires_once_per_wall_clock_hour_across_the_fall_back():
    # 25 October 2026: Berlin's clocks go from 03:00 CEST back to 02:00 CET, so 02:00 happens twice.
    assert _fire_times("0 * * * *", BERLIN, datetime(2026, 10, 24, 23, 30, tzinfo=UTC), 4) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T03:00:00+01:00",  # not 02:00+01:00 a second time, and not stuck there
        "2026-10-25T04:00:00+01:00",
        "2026-10-25T05:00:00+01:00",
    ]


@pytest.mark.parametrize(
    ("zone", "expression", "start", "expected"),
    [
        (
            "Europe/Berlin",
            "30 2 * * *",
            datetime(2026, 10, 24, 22, tzinfo=UTC),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        (
            "America/New_York",
            "30 1 * * *",
            datetime(2026, 11, 1, 4, tzinfo=UTC),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        # Spring forward: 02:30 does not exist that day; it fires once, an hour on, and the next day as usual.
        (
            "Europe/Berlin",
            "30 2 * * *",
            datetime(2026, 3, 28, 22, tzinfo=UTC),
            ["2026-03-29T02:30:00+01:00", "2026-03-30T02:30:00+02:00"],
        ),
    ],
)
def test_a_daily_briefing_in_a_repeated_or_missing_hour_fires_once_that_day(zone, expression, start, expected):
    assert _fire_times(expression, ZoneInfo(zone), start, 2) == expected


def test_the_briefing_claim_does_not_loop_for_good_at_the_fall_back():
    """In a subprocess with a timeout: the bug this guards against never returns. Asked at the repeated hour's
    second 02:00, the scheduler's claim key (`briefing_fire_time`) spun inside the event loop."""
    code = "from workflows.scheduler import briefing_fire_time\nprint(briefing_fire_time(trigger, now).isoformat())"
    setup = (
        "from datetime import UTC, datetime, timedelta\nfrom zoneinfo import ZoneInfo\n"
        "from core.cron import crontab_trigger\nzone = ZoneInfo('Europe/Berlin')\n"
        "trigger = crontab_trigger('0 * * * *', timezone=zone)\n"
        "now = datetime(2026, 10, 25, 1, 0, 30, tzinfo=UTC).astimezone(zone)\n"
    )
    finished = subprocess.run([sys.executable, "-c", setup + code], cwd=REPO, timeout=30, capture_output=True)
    assert finished.returncode == 0, finished.stderr.decode()
    # No cron time in the last five real minutes (the repeated 02:00 is skipped, the first was an hour ago): the
    # minute. Before the window was taken in real time, it reached back to the first 02:00.
    assert finished.stdout.decode().strip() == "2026-10-25T02:00:00+01:00"


def test_apschedulers_own_run_times_list_each_wall_clock_time_once():
    """Job._get_run_times' loop, as APScheduler runs it after a pause: the repeated 02:00 was a second run."""
    trigger = crontab_trigger("0 * * * *", timezone=BERLIN)
    now = datetime(2026, 10, 25, 2, 30, tzinfo=UTC).astimezone(BERLIN)
    run_times, upcoming = [], trigger.get_next_fire_time(None, datetime(2026, 10, 24, 23, 30, tzinfo=UTC))
    while upcoming is not None and upcoming <= now:
        run_times.append(upcoming.isoformat())
        upcoming = trigger.get_next_fire_time(upcoming, now)
    assert run_times == ["2026-10-25T02:00:00+02:00", "2026-10-25T03:00:00+01:00"]


def test_a_fire_time_equal_to_the_previous_one_is_stepped_past(monkeypatch):
    """The shape of APScheduler's stuck answer (agronholm/apscheduler#1021) anywhere: the previous fire time
    itself. It is stepped past, not fired again (the `<=` was unpinned, found by a mutation review)."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = crontab_trigger("0 9 * * *", timezone="UTC")
    previous = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    original = CronTrigger.get_next_fire_time

    def stuck(self, previous_fire_time, now):
        if previous_fire_time is not None:
            return previous_fire_time
        return original(self, previous_fire_time, now)

    monkeypatch.setattr(CronTrigger, "get_next_fire_time", stuck)
    assert trigger.get_next_fire_time(previous, previous) == datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
