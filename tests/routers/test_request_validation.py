"""Bad input is a 422 before anything runs: before the "not configured" answer, and with no ledger run.

Found by a black-box review: with nothing configured these answered 503 (and recorded a failed run), and
loosely typed values passed: `"duration_minutes": true` started a one-minute timer.
"""

from __future__ import annotations

import pytest

from core.errors import PROBLEM_CONTENT_TYPE

BAD = [
    ("/send-email", {"to_address": "not-an-email", "subject": "Hi", "body": "b"}, "body.to_address"),
    ("/send-email", {"to_address": "ann@example.com", "subject": "s\r\nBcc: x@y.com", "body": "b"}, "body.subject"),
    ("/send-email", {"to_address": "ann@example.com", "subject": "Hi", "body": "b", "cc": "x@y.com"}, "body.cc"),
    ("/whatsapp-send", {"to": "12345678", "body": "hi"}, "body.to"),
    ("/whatsapp-send", {"to": "+1555abc4567", "body": "hi"}, "body.to"),
    ("/whatsapp-send", {"to": "+15551234567", "body": "   "}, "body.body"),
    ("/start-timer", {"task_name": "Deep work", "duration_minutes": True}, "body.duration_minutes"),
    ("/start-timer", {"task_name": "Deep work", "duration_minutes": "50"}, "body.duration_minutes"),
    ("/start-timer", {"task_name": "Deep work", "billable": "yes"}, "body.billable"),
    ("/start-timer", {"task_name": "Deep work", "workspace_id": 99999999999999999999999}, "body.workspace_id"),
    ("/start-timer", {"task_name": "Deep work", "foo": 1}, "body.foo"),
    ("/stop-timer", {"foo": 1}, "body.foo"),
    ("/stop-timer", {"entry_id": "5"}, "body.entry_id"),
    ("/morning-briefing", {"dry_run": "yes"}, "body.dry_run"),
    ("/morning-briefing", {"duration_minutes": True}, "body.duration_minutes"),
    ("/morning-briefing", {"channel": "   "}, "body.channel"),
    ("/slack-notify", {"message": "hi", "channel": "  "}, "body.channel"),
    ("/ai-process", {"text": "hello", "max_tokens": True}, "body.max_tokens"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD, ids=[f"{p} {f}" for p, _, f in BAD])
async def test_bad_input_is_a_422_naming_the_field_with_no_run_even_when_nothing_is_configured(
    make_client, path, body, field
):
    async with make_client(slack_default_channel="#general") as client:
        response = await client.post(path, json=body)
        runs = (await client.get("/runs")).json()
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert field in [error["field"] for error in response.json()["errors"]]
    assert runs["total"] == 0


async def test_the_skill_sentence_is_the_message_without_pydantic_prefixes(make_client):
    async with make_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "12345678", "body": "hi"})
    [error] = response.json()["errors"]
    assert error["message"].startswith("`to` must be an E.164 number")


async def test_a_blank_slack_channel_does_not_blame_the_default(make_client):
    async with make_client(slack_default_channel="#general") as client:
        response = await client.post("/slack-notify", json={"message": "hi", "channel": "  "})
    [error] = response.json()["errors"]
    assert "omit `channel` to use SLACK_DEFAULT_CHANNEL" in error["message"]


@pytest.mark.parametrize(("query", "field"), [("status=bogus", "query.status"), ("trigger=cron", "query.trigger")])
async def test_run_filters_outside_the_ledgers_values_are_a_422_listing_them(make_client, query, field):
    async with make_client() as client:
        response = await client.get(f"/runs?{query}")
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert "'ok'" in error["message"] or "'api'" in error["message"]


async def test_valid_filters_still_work(make_client):
    async with make_client() as client:
        for query in ("status=cancelled", "status=dry_run", "trigger=schedule"):
            assert (await client.get(f"/runs?{query}")).status_code == 200
