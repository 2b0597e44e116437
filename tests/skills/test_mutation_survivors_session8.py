"""Tests that kill mutants of this session's production changes which the suite let survive (skills/)."""

from __future__ import annotations

import aiosmtplib
import httpx

from core.errors import UpstreamUnavailable
from skills import slack
from skills.email import envelope_error, sending_error
from skills.whatsapp import twilio_error

# --- skills/slack.py: _channel_advice ---------------------------------------------------------------------


def test_unconfigured_slack_gives_no_channel_advice(make_settings):
    """Without SLACK_BOT_TOKEN, GET /health's missing settings say what to set first: advice about a default
    channel for a Slack that cannot post at all would be noise."""
    assert slack.INTEGRATION.advise(make_settings()) == []
    assert slack.INTEGRATION.advise(make_settings(slack_bot_token="xoxb-1")) != []  # the same, configured


# --- skills/email.py ------------------------------------------------------------------------------------


def test_a_reply_code_below_200_after_data_is_an_unknown_outcome_not_a_refusal():
    """No SMTP reply below 200 refuses anything (1yz is not used, aiosmtplib's -1 is an unreadable reply): the
    server may have queued the message, so it is never read as "refused"."""
    error = sending_error(aiosmtplib.SMTPDataError(150, "odd"))
    assert error.extras.get("outcome_unknown") is True
    assert "refused" not in str(error.detail)


def test_a_connection_reset_before_data_says_nothing_was_handed_over():
    """A reset (an OSError, not a timeout) at EHLO, MAIL FROM or RCPT TO: the server closed the connection before
    the message, a retryable 503 with nothing sent, not connect-time advice."""
    error = envelope_error(ConnectionResetError(104, "Connection reset by peer"))
    assert isinstance(error, UpstreamUnavailable)
    assert "closed the connection before the message was handed over" in str(error.detail)
    assert error.extras["nothing_sent"] is True


# --- skills/whatsapp.py: twilio_error's 404 -------------------------------------------------------------


def test_a_twilio_404_with_another_code_is_read_by_its_code_not_as_an_unknown_account():
    """Only a 404 without Twilio's JSON error came from elsewhere, and only 20404 says the account is unknown: a
    404 naming the sender (21606) points at TWILIO_WHATSAPP_NUMBER, not TWILIO_ACCOUNT_SID."""
    response = httpx.Response(404, json={"code": 21606, "message": "not a WhatsApp sender", "status": 404})
    error = twilio_error(response, recipient="+15551234567")
    assert error.extras["settings"] == ["TWILIO_WHATSAPP_NUMBER"]
    assert "TWILIO_WHATSAPP_NUMBER" in str(error.detail)
