"""Tests for mutants of core/ (cron, store, secrets) that the rest of the suite let through (a hand mutation
review). Each test names the mutant it kills."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event

from core.cron import crontab_days, crontab_trigger
from core.secrets import SecretScrubber
from core.store import ScheduledJob, UTCDateTime, create_engine, migrate, ping, session_factory

# Short on purpose: too short for the secret alone to be found inside longer base64 (core.secrets._MIN_CORE), so
# only the exact credential the skill sends, listed by `from_settings`, catches the encoded header.
SHORT_TOKEN = "tk12"
TWILIO_SID = "AC00000000000000000000000000000001"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# --- core/cron.py ----------------------------------------------------------------------------------------------


def test_a_cron_with_six_fields_is_refused_saying_five():
    """Mutant: `!= 5` became `< 5`; a six-field (seconds-first) expression failed with Python's own
    "too many values to unpack" instead of saying what a crontab expression is."""
    with pytest.raises(ValueError, match=r"^a crontab expression has five fields, not 6$"):
        crontab_trigger("0 0 8 * * 1-5", timezone="UTC")


def test_a_day_of_week_step_of_zero_is_refused_saying_why():
    """Mutant: `step < 1` became `step < 0`; `*/0` then failed inside `range()` ("arg 3 must not be zero")."""
    with pytest.raises(ValueError, match=r"day-of-week step must be at least 1 in '\*/0'"):
        crontab_days("*/0")


@pytest.mark.parametrize(("field", "names"), [("MON-FRI", "mon,tue,wed,thu,fri"), ("Sun,SAT", "sun,sat")])
def test_day_names_are_read_in_any_case_as_crontab_does(field, names):
    """Mutant: the `.lower()` dropped; `MON-FRI`, valid crontab, stopped the service at start-up."""
    assert crontab_days(field) == names


def test_asked_afresh_inside_the_repeated_hour_a_daily_cron_waits_for_the_next_day():
    """Mutant: the second-occurrence check dropped. A worker (re)started at 02:10 CET on the fall-back day, after
    02:30 CEST had fired, was told 02:30 CET: the daily briefing a second time that day."""
    berlin = ZoneInfo("Europe/Berlin")
    trigger = crontab_trigger("30 2 * * *", timezone=berlin)
    now = datetime(2026, 10, 25, 1, 10, tzinfo=UTC).astimezone(berlin)  # 02:10+01:00, the second 02:10
    assert now.fold == 1
    assert trigger.get_next_fire_time(None, now).isoformat() == "2026-10-26T02:30:00+01:00"


def test_a_stuck_fire_time_is_stepped_past_by_a_minute_not_over_the_next_one(monkeypatch):
    """Mutant: `_STEP` an hour; stepping past APScheduler's stuck answer at 09:00 skipped 09:15, 09:30 and 09:45
    of a quarter-hourly cron."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = crontab_trigger("*/15 * * * *", timezone="UTC")
    previous = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    original = CronTrigger.get_next_fire_time

    def stuck(self, previous_fire_time, now):
        return previous_fire_time if previous_fire_time is not None else original(self, previous_fire_time, now)

    monkeypatch.setattr(CronTrigger, "get_next_fire_time", stuck)
    assert trigger.get_next_fire_time(previous, previous) == datetime(2026, 11, 26, 9, 15, tzinfo=UTC)


def test_a_trigger_stuck_for_good_gives_up_instead_of_firing_again(monkeypatch):
    """Mutant: after `_MAX_STEPS` the stuck time was returned; APScheduler would fire it again and ask again, for
    ever, inside the event loop. None (no firing) is the documented way out."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = crontab_trigger("0 9 * * *", timezone="UTC")
    previous = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    monkeypatch.setattr(CronTrigger, "get_next_fire_time", lambda self, previous_fire_time, now: previous)
    assert trigger.get_next_fire_time(previous, previous) is None


# --- core/secrets.py --------------------------------------------------------------------------------------------


def test_a_short_toggl_token_in_its_basic_header_is_scrubbed(make_settings):
    """Mutant: the Toggl credential built as `token:api-token`; skills/toggl.py sends `token:api_token`."""
    scrubber = make_settings(toggl_api_token=SHORT_TOKEN).secret_scrubber
    header = f"Authorization: Basic {b64(f'{SHORT_TOKEN}:api_token')}"
    assert scrubber.scrub(header) == "Authorization: Basic ***"


def test_a_short_twilio_token_in_its_basic_header_is_scrubbed(make_settings):
    """Mutant: the Twilio credential built as `token:sid`; skills/whatsapp.py sends `ACCOUNT_SID:AUTH_TOKEN`."""
    settings = make_settings(twilio_account_sid=TWILIO_SID, twilio_auth_token=SHORT_TOKEN)
    header = f"Basic {b64(f'{TWILIO_SID}:{SHORT_TOKEN}')}."
    assert settings.secret_scrubber.scrub(header) == "Basic ***."


def test_a_short_secret_is_not_looked_for_inside_unrelated_base64():
    """Mutant: `_MIN_CORE` lowered; the 5-character base64 core of a 4-character secret matched by chance inside a
    base64 value that does not contain it, and the whole value (a message id, say) was replaced by ***."""
    text = "id AcHcxMAAb end"  # holds "cHcxM", the core of "pw12" at offset 0, at another alignment
    assert b"pw12" not in base64.b64decode("AcHcxMAA")
    assert SecretScrubber(["pw12"]).scrub(text) == text


def test_a_secret_whose_base64_core_is_exactly_min_core_long_is_found_inside_longer_base64():
    """Mutant: `len(core) >= _MIN_CORE` became `>`. A 7-character secret one byte into a Basic pairing has a core
    of exactly 8 characters, the only form that finds it there."""
    assert SecretScrubber(["abcdefg"]).scrub(f"Basic {b64('xabcdefg:pw')}.") == "Basic ***."


def test_scrub_value_scrubs_inside_tuples_too():
    """Mutant: tuples left out of `scrub_value`; a secret in a tuple (a pair of arguments, say) reached the
    ledger as is."""
    scrubber = SecretScrubber(["s3cr3t-value-1"])
    value = {"pair": ("user", "s3cr3t-value-1"), "nested": [("a", {"k": "x s3cr3t-value-1"})]}
    assert scrubber.scrub_value(value) == {"pair": ["user", "***"], "nested": [["a", {"k": "x ***"}]]}


# --- core/store.py ----------------------------------------------------------------------------------------------


async def test_a_successful_ping_is_reused_and_a_fresh_one_asked_again(tmp_path: Path):
    """Mutant: the success no longer remembered; every /health probe queued for a connection behind the ledger's
    writes again (docs/benchmarks.md)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/ping.db")
    checkouts: list[object] = []
    event.listen(engine.sync_engine, "checkout", lambda *_: checkouts.append(None))
    try:
        assert await ping(engine, fresh_seconds=60)
        assert await ping(engine, fresh_seconds=60)
        assert len(checkouts) == 1
        assert await ping(engine, fresh_seconds=0)
        assert len(checkouts) == 2
    finally:
        await engine.dispose()


def test_a_naive_datetime_is_refused_rather_than_read_as_local_time():
    """Mutant: the naive-datetime guard dropped; `astimezone` then reads a naive value as the host's local time."""
    with pytest.raises(ValueError, match="naive datetime"):
        UTCDateTime().process_bind_param(datetime(2026, 11, 26, 9, 0), dialect=None)  # type: ignore[arg-type]


async def test_an_aware_datetime_in_another_zone_is_stored_as_the_same_instant(tmp_path: Path):
    """Mutant: the value bound without `astimezone(UTC)`; SQLite keeps the wall time and drops the offset, so a
    09:00 Berlin stop read back as 09:00 UTC, an hour late."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/tz.db")
    try:
        await migrate(engine)
        berlin = datetime(2026, 11, 26, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
        async with session_factory(engine)() as session:
            session.add(ScheduledJob(id="stop:1", kind="timer_stop", run_at=berlin, status="pending"))
            await session.commit()
        async with session_factory(engine)() as session:
            stored = await session.get(ScheduledJob, "stop:1")
        assert stored is not None
        assert stored.run_at == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
        assert stored.run_at.tzinfo is UTC
    finally:
        await engine.dispose()
