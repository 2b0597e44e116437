"""Review of 5daf621..HEAD: edge cases the change's DST and logging fixes still got wrong."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from core.cron import crontab_trigger
from workflows.scheduler import missed_briefing

BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


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


async def test_the_rejected_signature_log_does_not_show_credentials_in_public_base_url(make_client, caplog):
    """The new warning logs the URL checked, without its query; PUBLIC_BASE_URL may carry Twilio's HTTP basic-auth
    credentials (https://user:password@host, so that the status callback authenticates), and any unsigned POST
    wrote that password into the log."""
    settings = {
        "public_base_url": "https://twilio:hunter2-basic-auth@hooks.example.com",
        "app_api_key": "k" * 24,
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "t" * 32,
        "whatsapp_allowed_senders": "+15551234567",
    }
    caplog.set_level(logging.WARNING)
    async with make_client(**settings) as client:
        response = await client.post(
            "/whatsapp-webhook",
            data={"MessageSid": "SM" + "0" * 32, "From": "whatsapp:+15551234567", "Body": "status"},
            headers={"X-Twilio-Signature": "c2lnbmVkIGJ5IGFub3RoZXIgdG9rZW4="},
        )
    assert response.status_code == 403
    assert "hunter2-basic-auth" not in caplog.text
    assert "https://hooks.example.com/whatsapp-webhook" in caplog.text
