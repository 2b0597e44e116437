"""Review session 11 (adversarial): today's crontab day rule (`EitherDayCronTrigger`), attacked where the commit's
own tests did not look. (The review's other finding, a firing cut short at shutdown, is tested in
tests/workflows/test_late_stop_across_firings.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from core.cron import crontab_trigger
from tests.core.test_cron_day_or_rule import _fired, _oracle


@pytest.mark.parametrize("expression", ["0 7 30 2 1", "0 8 31 2,4,6,9,11 1-5"])
def test_a_day_of_the_month_the_months_never_have_is_not_asked_at_every_fire_time(expression):
    """Accepted since both day fields follow crontab (Mondays in February, weekdays of short months): the
    day-of-month half has no fire time ever, and APScheduler walks to year 9999 to say so, ~0.15 s in the event
    loop each time the trigger is asked (twice by APScheduler's run loop and twice by `missed_briefing` per
    briefing). The trigger is the day-of-week half alone, with crontab's fire times."""
    berlin = ZoneInfo("Europe/Berlin")
    trigger = crontab_trigger(expression, timezone=berlin)
    start = datetime(2026, 11, 25, 12, tzinfo=UTC)
    halves = getattr(trigger, "triggers", [trigger])
    assert all(half.get_next_fire_time(None, start) is not None for half in halves)
    assert _fired(expression, berlin, start, 12) == _oracle(expression, berlin, start, 12)
