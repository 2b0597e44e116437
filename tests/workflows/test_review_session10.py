"""Review session 10: the scheduler's claims on PostgreSQL, and cron times in a midnight daylight-saving gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.cron import crontab_trigger
from core.ledger import Ledger
from core.store import JobFire, create_engine, migrate, session_factory
from workflows import scheduler as scheduler_module
from workflows.inbound import BackgroundTasks
from workflows.scheduler import JobScheduler, missed_briefing

#: An EC2 instance's own host name outside us-east-1 (Amazon Linux: `hostname` is the full resource name).
EC2_HOST = "ip-172-31-20-123.eu-central-1.compute.internal"


def default_scheduler(settings, sessions, monkeypatch) -> JobScheduler:
    monkeypatch.setattr(scheduler_module.socket, "gethostname", lambda: EC2_HOST)
    monkeypatch.setattr(scheduler_module.os, "getpid", lambda: 4_194_303)  # pid_max on 64-bit Linux
    ledger = Ledger(sessions)
    return JobScheduler(
        settings=settings, sessions=sessions, ledger=ledger, tasks=BackgroundTasks(ledger), deps=lambda: None
    )


async def test_the_default_worker_id_fits_the_claims_worker_column(make_settings, sessions, monkeypatch):
    """`job_fires.worker` is VARCHAR(64): PostgreSQL refuses a longer value (SQLite does not check), and every
    claim, of every stop and every briefing, then raised instead of firing (found by a review: host name, pid
    and object id made 67 characters on an EC2 instance in eu-central-1)."""
    scheduler = default_scheduler(make_settings(), sessions, monkeypatch)
    assert len(scheduler.worker_id) <= JobFire.__table__.c.worker.type.length
    assert scheduler.worker_id.endswith(":4194303:" + f"{id(scheduler):x}")  # the parts that tell workers apart


@pytest.mark.postgres
async def test_a_worker_on_a_long_host_name_claims_on_postgresql(postgres_url, make_settings, monkeypatch):
    engine = create_engine(postgres_url)
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        scheduler = default_scheduler(make_settings(database_url=postgres_url), sessions, monkeypatch)
        fire_time = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
        assert await scheduler.claim("stop:1", fire_time) is True
        assert await scheduler.claim("stop:1", fire_time) is False
    finally:
        await engine.dispose()


# Zones whose clocks skip the hour after midnight, on their 2026 spring-forward day: (zone, day, offset after).
MIDNIGHT_JUMPS = [
    ("America/Santiago", datetime(2026, 9, 6), -3),
    ("Africa/Cairo", datetime(2026, 4, 24), 3),
    ("America/Havana", datetime(2026, 3, 8), -4),
    ("Asia/Beirut", datetime(2026, 3, 29), 3),
]


@pytest.mark.parametrize(("zone", "day", "offset_after"), MIDNIGHT_JUMPS, ids=[z for z, _, _ in MIDNIGHT_JUMPS])
@pytest.mark.parametrize("minute", [0, 30])
def test_a_cron_time_in_an_hour_skipped_after_midnight_fires_an_hour_on(zone, day, offset_after, minute):
    """Documented: a cron time in the hour the clocks skip fires once, an hour on. After midnight, APScheduler's
    step to the next day landed on the missing 00:00, read as 01:00, and went on to the day after: that day had no
    briefing (found by a review)."""
    tz = ZoneInfo(zone)
    trigger = crontab_trigger(f"{minute} 0 * * *", tz)
    expected = (day + timedelta(hours=1, minutes=minute)).replace(tzinfo=tz)  # 01:xx, after the jump
    assert expected.utcoffset() == timedelta(hours=offset_after)
    day_before = (day - timedelta(days=1) + timedelta(minutes=minute)).replace(tzinfo=tz)  # 00:xx, the day before
    # As the running scheduler asks (from the previous firing), and as a worker started the evening before does.
    for previous, now in ((day_before, day_before + timedelta(seconds=1)), (None, day_before + timedelta(hours=20))):
        fired = trigger.get_next_fire_time(previous, now)
        assert fired is not None and fired.astimezone(UTC) == expected.astimezone(UTC)
        # Once: the next one is the following midnight.
        following = trigger.get_next_fire_time(fired, fired + timedelta(seconds=1))
        assert following.astimezone(UTC) == (day + timedelta(days=1, minutes=minute)).replace(tzinfo=tz).astimezone(UTC)
    # A worker started two minutes after it runs it at once (the start-up catch-up), and only that one.
    assert missed_briefing(trigger, expected + timedelta(minutes=2)).astimezone(UTC) == expected.astimezone(UTC)


def test_a_midnight_jump_on_a_day_the_cron_skips_fires_nothing_that_day():
    """`1-5` is Monday to Friday: Chile's jump on Sunday 6 September 2026 must not make a Sunday briefing."""
    tz = ZoneInfo("America/Santiago")
    trigger = crontab_trigger("0 0 * * 1-5", tz)
    fired = trigger.get_next_fire_time(None, datetime(2026, 9, 5, 12, tzinfo=tz))
    assert fired == datetime(2026, 9, 7, 0, 0, tzinfo=tz)
