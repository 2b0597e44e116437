"""Tests for mutants of the ninth session's router changes that survived the existing suite.

Each test names the mutant it kills; the commit that adds this file lists every mutant tried.
"""

from __future__ import annotations

import hashlib
import logging

import pytest

from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_webhooks_database_down import ClaimsDown, _assert_nothing_done_answer, _refused_unwrapped
from tests.routers.test_whatsapp_shared_key_signature import (
    KEY_ID,
    SETTINGS_HEADER,
    SHARED_KEY,
    START,
    URL,
    messages,
    shared_key_headers,
    sign,
)
from tests.routers.test_whatsapp_shared_key_signature import post as post_signed
from tests.workflows.world import finished_runs, slack_headers, whatsapp_form, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


async def test_a_slack_message_claim_refused_by_asyncpgs_unwrapped_connect_error_says_nothing_was_done(
    w, make_client, monkeypatch
):
    """Kills catching only SQLAlchemyError around the message's claim (routers/slack_events.py): asyncpg's
    refused connection is a bare ConnectionRefusedError, which then went out as the generic "outcome unknown"
    503 for an event that had done nothing. Neither the event's claim nor the message's is kept, so Slack's resend
    is answered."""
    down = ClaimsDown(monkeypatch, _refused_unwrapped)
    down.sources.add("slack-message")
    body = callback(mention("<@UBOT> start planning for 20 min"), event_id="EvDbDownMessageOSError")
    async with make_client(**w.settings()) as client:
        first = await post(client, body)
        assert w.toggl.starts == []
        down.sources.clear()
        retry = await post(client, body, {**slack_headers(body), "X-Slack-Retry-Num": "1"})
        await finished_runs(client, "slack.reply")
    _assert_nothing_done_answer(first, says="Slack resends")
    assert first.json()["detail"].startswith("The service's database did not answer (ConnectionRefusedError)")
    assert retry.status_code == 200
    assert len(w.toggl.starts) == 1


async def test_a_shared_key_algorithm_named_in_lower_case_is_verified_like_its_upper_case(w, make_client):
    """Kills comparing the header's algorithm with the supported ones as written: twilio's validator reads
    `hmac_sha256` as HMAC_SHA256, so a delivery signed with it is genuine, not "an algorithm this service cannot
    verify"."""
    form = whatsapp_form(START)
    signature = sign(URL, form, SHARED_KEY, hashlib.sha256)
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        response = await post_signed(client, form, signature, shared_key_headers("hmac_sha256"))
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert [start["description"] for start in w.toggl.starts] == ["Deep work"]


async def test_the_key_id_is_named_in_the_log_wherever_the_header_lists_it(w, make_client, caplog):
    """Kills reading `key=` only where it starts the header (`_header_part` without strip): Twilio's order is
    `key=...,algorithm=...`, but a proxy may rewrite it with a space after the comma, and the log line of the
    refusal then said SharedKey (none), hiding which Webhook Setting to look at."""
    caplog.set_level(logging.WARNING, logger="orchestrator.whatsapp_webhook")
    form = whatsapp_form(START)
    header = {SETTINGS_HEADER: f"algorithm=HMAC_SHA256, key={KEY_ID}"}
    async with make_client(**w.settings()) as client:
        response = await post_signed(client, form, sign(URL, form, SHARED_KEY, hashlib.sha256), header)
    assert response.status_code == 403
    assert f"signed with SharedKey {KEY_ID} (HMAC_SHA256): TWILIO_WEBHOOK_SHARED_KEY is not set" in caplog.text
    assert w.toggl.starts == []
