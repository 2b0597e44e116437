"""Tests that kill mutants of this session's production changes which the suite let survive (workflows/)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from workflows.briefing import local_time

BERLIN = ZoneInfo("Europe/Berlin")


def test_a_time_in_the_skipped_hour_is_shown_at_the_wall_time_it_happens(make_settings):
    """02:30+01:00 on 29 March 2026 (APScheduler's name for a fire time in the hour Berlin skips, or a stop
    computed on the wall clock) is 01:30 UTC, which Berlin's clocks show as 03:30. `astimezone` into the zone the
    time already has returns it untouched: it was shown as "02:30", a time that never happened that day."""
    settings = make_settings(timezone="Europe/Berlin")
    assert local_time(datetime(2026, 3, 29, 2, 30, tzinfo=BERLIN), settings) == "03:30 Europe/Berlin"
