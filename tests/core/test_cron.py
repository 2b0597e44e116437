"""BRIEFING_CRON is read as crontab reads it: 0 and 7 are Sunday, 1-5 Monday to Friday (core/cron.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.cron import crontab_days, crontab_trigger

FRIDAY_NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


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
    "expression", ["0 8 * *", "0 8 * * 8", "0 8 * * 5-1", "0 8 * * */0", "0 8 * * funday", "0 8 13 * 5"]
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
