"""Tests for mutants of the tenth session's core changes that survived the existing suite.

Each test names the mutant it kills. The mutants were applied by hand to the code changed since 23c0339; the
commit that adds this file lists them all.
"""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from core.cron import crontab_trigger
from core.errors import ConfigurationError, PerAudience, Phrase, UpstreamError
from core.settings import load_settings

# --- Key lists (core/settings.py `_each_listed_secret`) ---------------------------------------------------------


@pytest.mark.parametrize("setting", ["APP_API_KEY", "TWILIO_WEBHOOK_SHARED_KEY"])
def test_a_single_blank_value_is_not_described_as_a_list(monkeypatch, setting):
    """Kills dropping the single-value check: the message then spoke of "value 1 of 1 (separated by commas)" and a
    comma at the start or the end, for a variable that holds no comma at all."""
    monkeypatch.setenv(setting, "  ")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(_env_file=None)
    message = str(raised.value)
    assert setting in message
    assert "is only blanks: give the key, or leave the variable unset" in message
    assert "comma" not in message


# --- SMTP_LOCAL_HOSTNAME (core/settings.py `is_ehlo_domain`) ----------------------------------------------------


def _domain_of(length: int) -> str:
    """A domain of `length` octets: 63-octet labels, then a shorter last one."""
    labels, left = [], length
    while left > 64:
        labels.append("a" * 63)
        left -= 64
    labels.append("b" * left)
    name = ".".join(labels)
    assert len(name) == length
    return name


def test_a_domain_of_255_octets_is_a_valid_ehlo_name_and_one_of_256_is_not(monkeypatch):
    """Kills `len(value) < 255`: RFC 5321 4.5.3.1.2 allows a domain of 255 octets, no more."""
    monkeypatch.setenv("SMTP_LOCAL_HOSTNAME", _domain_of(255))
    assert load_settings(_env_file=None).smtp_local_hostname == _domain_of(255)
    monkeypatch.setenv("SMTP_LOCAL_HOSTNAME", _domain_of(256))
    with pytest.raises(ConfigurationError, match="SMTP_LOCAL_HOSTNAME"):
        load_settings(_env_file=None)


# --- Phrase (core/errors.py) -------------------------------------------------------------------------------------


def test_a_problem_worded_per_audience_reads_as_the_api_wording_in_a_logged_traceback(caplog):
    """Kills `super().__init__(detail)` with the Phrase itself: a logged traceback (a background run that failed)
    showed `UpstreamError: Phrase(parts=(...))` instead of the sentence GET /runs and the HTTP answer carry."""
    detail = Phrase(("Toggl answered 500. ", PerAudience(api="Check GET /timers/current.", chat='Send "status".')))
    with caplog.at_level(logging.ERROR, logger="test.session10"):
        try:
            raise UpstreamError(detail, upstream="toggl")
        except UpstreamError:
            logging.getLogger("test.session10").exception("a background run failed")
    [record] = caplog.records
    assert record.exc_text is not None or record.exc_info is not None
    shown = logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
    assert shown.endswith("UpstreamError: Toggl answered 500. Check GET /timers/current.")


# --- A cron time in an hour skipped after midnight (core/cron.py `_in_midnight_gap`) ------------------------------


def test_a_firing_skipped_by_a_midnight_jump_is_due_when_asked_after_it_from_the_previous_firing():
    """Kills starting the search for a skipped firing at `now` instead of after the previous firing: a worker that
    was paused across Chile's jump (6 September 2026, 00:00 -04 -> 01:00 -03) asks APScheduler for the run times
    after Saturday's 00:00 at 01:02; the 01:00 firing is then due (within the misfire grace), not Monday's."""
    tz = ZoneInfo("America/Santiago")
    trigger = crontab_trigger("0 0 * * *", tz)
    fired = trigger.get_next_fire_time(datetime(2026, 9, 5, 0, 0, tzinfo=tz), datetime(2026, 9, 6, 1, 2, tzinfo=tz))
    assert fired == datetime(2026, 9, 6, 1, 0, tzinfo=tz)
