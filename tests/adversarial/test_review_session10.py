"""Review session 10 (adversarial): today's key rotation, cron and idempotency changes, attacked from outside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.cron import crontab_trigger
from core.settings import ConfigurationError, load_settings


@pytest.mark.parametrize(
    ("zone", "fired", "expression", "expected"),
    [
        # The clocks go 02:00 -> 03:00 on Sunday 29 March 2026: Monday's 00:00 exists, and was stepped over.
        ("Europe/Berlin", datetime(2026, 3, 29, 0, 0), "0 0 * * *", datetime(2026, 3, 30, 0, 0)),
        ("Europe/Berlin", datetime(2026, 3, 29, 0, 30), "30 0 * * *", datetime(2026, 3, 30, 0, 30)),
        # 02:00 -> 03:00 on Sunday 8 March 2026; a weekday briefing at 00:30 lost Monday's.
        ("America/New_York", datetime(2026, 3, 6, 0, 30), "30 0 * * 1-5", datetime(2026, 3, 9, 0, 30)),
        ("America/St_Johns", datetime(2026, 3, 8, 0, 0), "0 0 * * *", datetime(2026, 3, 9, 0, 0)),
    ],
)
def test_a_midnight_time_the_day_after_the_clocks_go_forward_fires(zone, fired, expression, expected):
    """APScheduler 3.11, asked from a fire time before the night the clocks go forward at 02:00, computes the
    next day's 00:xx in the offset before the jump (an hour late, so past hour 0) and answers the day after:
    `0 0 * * *` in Berlin had no firing on Monday 30 March 2026, in New York a weekday 00:30 briefing lost
    Monday 9 March. The day's wall time exists; only the midnight-gap zones (Santiago) were handled."""
    tz = ZoneInfo(zone)
    trigger = crontab_trigger(expression, tz)
    previous = fired.replace(tzinfo=tz)
    # As APScheduler asks after a run: the run's fire time, and a `now` a moment after it.
    due = trigger.get_next_fire_time(previous, previous + timedelta(milliseconds=5))
    assert due == expected.replace(tzinfo=tz)
    assert due.utcoffset() == expected.replace(tzinfo=tz).utcoffset()
    # Asked afresh from the same moment (a worker starting then), the same answer.
    assert trigger.get_next_fire_time(None, previous + timedelta(milliseconds=5)) == due
    # And from there on every day fires once, in order.
    after = trigger.get_next_fire_time(due, due + timedelta(milliseconds=5))
    assert after is not None and after.astimezone(UTC) > due.astimezone(UTC)
    assert after - due <= timedelta(days=3)


def test_a_skipped_time_and_a_later_one_of_the_jump_day_both_fire_in_order():
    """Where the clocks skip 00:00-01:00 (Santiago, 6 September 2026), `30 0` fires at 01:30 and `15 1` at 01:15:
    the earlier of the two comes first, and neither is lost."""
    tz = ZoneInfo("America/Santiago")
    trigger = crontab_trigger("15,30 0,1 * * *", tz)
    previous = datetime(2026, 9, 5, 1, 30, tzinfo=tz)
    first = trigger.get_next_fire_time(previous, previous + timedelta(milliseconds=5))
    second = trigger.get_next_fire_time(first, first + timedelta(milliseconds=5))
    assert [first, second] == [datetime(2026, 9, 6, 1, 15, tzinfo=tz), datetime(2026, 9, 6, 1, 30, tzinfo=tz)]


# --- APP_API_KEY: a value no client can send ---------------------------------------------------------------

ASCII_KEY = "ascii-key-0123456789abcdef"
ACCENTED_KEY = "clé-secrète-très-longue-0123"


@pytest.mark.parametrize(
    "value",
    [f"{ASCII_KEY},{ACCENTED_KEY}", ACCENTED_KEY, f"{ASCII_KEY},\u00a0{ASCII_KEY}x", f"{ASCII_KEY}\x01zz"],
)
def test_an_api_key_a_header_cannot_carry_stops_start_up_without_quoting_it(monkeypatch, value):
    """`APP_API_KEY=old,clé-...` (or a no-break space pasted before a key: only ASCII blanks are dropped) started,
    and the key it named could never be used: a client sends it as UTF-8 bytes (curl), which the server reads
    as Latin-1, so every request with it was a 401 (httpx refuses to send it at all). Refused at start-up,
    naming the value's position only, as an empty value is."""
    monkeypatch.setenv("APP_API_KEY", value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings(_env_file=None)
    message = str(refused.value)
    assert message.startswith("Invalid configuration: APP_API_KEY:") and "ASCII" in message
    assert ASCII_KEY not in message and ACCENTED_KEY not in message


def test_an_ascii_key_with_inner_spaces_still_starts(monkeypatch):
    monkeypatch.setenv("APP_API_KEY", f"{ASCII_KEY}, a passphrase of several words ")
    assert [key.get_secret_value() for key in load_settings(_env_file=None).app_api_keys] == [
        ASCII_KEY,
        "a passphrase of several words",
    ]
