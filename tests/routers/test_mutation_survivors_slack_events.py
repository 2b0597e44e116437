"""Tests pinning behaviour that a hand mutation review of routers/slack_events.py found unchecked: each one fails
with the mutant it names and passes on the real code."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from routers.slack_events import REFUSAL
from tests.routers.test_slack_events import callback, mention, post
from tests.workflows.world import finished_runs, slack_headers, world


async def test_a_fresh_timestamp_without_a_signature_is_403_not_500(make_client):
    """Mutant dropping `not signature` survived: every test without a signature also lacked the timestamp, which
    is checked first. Without the check, `None.isascii()` made an unauthenticated request a 500."""
    body = callback(mention("<@UBOT> start planning for 20 min"))
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": str(int(time.time()))}
    async with world() as w:
        async with make_client(**w.settings()) as client:
            response = await client.post("/slack/events", content=body, headers=headers)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/forbidden"
    assert w.toggl.starts == [] and w.slack.requests == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[]", "The body is not a JSON object."),
        (b'"event_callback"', "The body is not a JSON object."),
        (b"type=event_callback", "The body is not JSON."),
        (b'{"type": "event_callback",', "The body is not JSON."),
    ],
    ids=["array", "string", "form", "truncated"],
)
async def test_a_signed_body_that_is_not_a_json_object_is_a_400_problem(make_client, body, detail):
    """Mutants acknowledging such a body with a 200 survived (the property test allows a 200 or a 400 and only the
    deep-nesting case was pinned): Slack never sends one, and a 400 shows the sender it was not read."""
    async with world() as w:
        async with make_client(**w.settings()) as client:
            response = await post(client, body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == detail


async def test_an_envelope_of_another_type_is_acknowledged_without_a_warning(make_client, caplog):
    """Mutant dropping the early return for envelopes other than `event_callback` survived: Slack's documented
    `app_rate_limited` notice was validated as an event callback and logged as an undocumented shape."""
    caplog.set_level(logging.WARNING, logger="orchestrator.slack_events")
    notice = {"token": "t", "type": "app_rate_limited", "team_id": "T0001", "minute_rate_limited": 1518467820}
    async with world() as w:
        async with make_client(**w.settings()) as client:
            response = await post(client, json.dumps(notice).encode())
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert [record.getMessage() for record in caplog.records] == []


async def test_each_stranger_is_told_once_not_only_the_first_one(make_client):
    """Mutant keying the hourly refusal on "slack:" alone, not on the user, survived: only one stranger was in
    the test, and with the mutant the second stranger in an hour got no answer at all."""
    bodies = [
        callback(mention("<@UBOT> status", user=user, ts=f"1764057600.00040{n}"), event_id=f"EvStranger{n}")
        for n, user in enumerate(["USTRANGER1", "USTRANGER2", "USTRANGER1"])
    ]
    async with world() as w:
        async with make_client(**w.settings(slack_allowed_users="UHUMAN")) as client:
            for body in bodies:
                assert (await post(client, body)).status_code == 200
            await finished_runs(client, "slack.reply", count=2)
            await asyncio.sleep(0.5)  # a refusal too many would have been posted by now
    assert [(post["text"], post["thread_ts"]) for post in w.slack.posts] == [
        (REFUSAL, "1764057600.000400"),
        (REFUSAL, "1764057600.000401"),
    ]
    assert w.toggl.starts == [] and w.claude.requests == []


async def test_past_the_one_notice_an_over_limit_mention_posts_nothing_and_records_no_reply(make_client):
    """Mutant posting a notice whether or not there is one (`if admission.notice:` -> `if True:`) survived: the
    rate-limit test counted replies with "at least". Past the one notice a minute, a reply of None was attempted
    and recorded as a failed `slack.reply` run for every further mention."""
    bodies = [
        callback(mention("<@UBOT> what first?", ts=f"1764057600.00050{n}"), event_id=f"EvBurst{n}") for n in range(3)
    ]
    async with world() as w:
        w.claude.answer = "Do the hardest thing first."
        async with make_client(**w.settings(rate_limit_per_minute=1)) as client:
            for body in bodies:
                assert (await post(client, body)).status_code == 200
            await finished_runs(client, "slack.reply", count=2)
            await asyncio.sleep(0.5)  # a third reply would have been recorded by now
            replies = await finished_runs(client, "slack.reply")
    assert sorted(run["status"] for run in replies) == ["ok", "ok"]
    by_ts = {post["thread_ts"]: post["text"] for post in w.slack.posts}
    assert len(w.slack.posts) == 2 and set(by_ts) == {"1764057600.000500", "1764057600.000501"}
    assert by_ts["1764057600.000500"] == "Do the hardest thing first."
    assert by_ts["1764057600.000501"].startswith("You have sent more than 1 messages in a minute")


@pytest.mark.parametrize(
    "event",
    [
        {k: v for k, v in mention("<@UBOT> start planning for 20 min").items() if k != "user"},
        {
            "type": "message",
            "subtype": "file_share",
            "channel_type": "im",
            "text": "status",
            "ts": "1.5",
            "channel": "D1",
        },
    ],
    ids=["mention", "file_share_dm"],
)
async def test_an_event_without_a_user_is_acknowledged_and_ignored(make_client, event):
    """Mutant dropping `or not event.user` from `should_act` survived: every userless test event was also an
    edit or a bot's. Acted on, a userless event failed its `assert event.user` after both claims: a 500 to Slack,
    whose retries were then taken for redeliveries."""
    async with world() as w:
        async with make_client(**w.settings()) as client:
            response = await post(client, callback(event))
            retry = await post(client, callback(event), {**slack_headers(callback(event)), "X-Slack-Retry-Num": "1"})
            await asyncio.sleep(0.5)
            replies = await finished_runs(client, "slack.reply", count=0)
    assert (response.status_code, retry.status_code) == (200, 200)
    assert replies == []
    assert w.toggl.starts == [] and w.slack.requests == [] and w.claude.requests == []


async def test_a_reply_slack_refuses_is_one_failed_reply_run_not_a_crashed_task(make_client):
    """Mutant narrowing `except ProblemError` in `_post_reply` survived: a reply Slack refused (channel_not_found)
    escaped the task, which logged a traceback and recorded a second failed run, `slack.event`, for it."""
    body = callback(mention("<@UBOT> status", channel="C0UNKNOWN1"))
    async with world() as w:
        async with make_client(**w.settings()) as client:
            assert (await post(client, body)).status_code == 200
            [reply_run] = await finished_runs(client, "slack.reply")
            await asyncio.sleep(0.5)  # the task's own failure would be recorded just after the reply run
            crashed = await finished_runs(client, "slack.event", count=0)
    [attempt] = w.slack.posts
    assert (attempt["channel"], attempt["thread_ts"]) == ("C0UNKNOWN1", "1764057600.000100")
    assert reply_run["status"] == "failed" and "'C0UNKNOWN1' was not found" in reply_run["error"]
    assert crashed == []


async def test_a_mention_typed_as_text_stays_in_the_task_name(make_client):
    """Mutant unescaping before stripping mentions survived: "<@U999>" typed as text (Slack sends it escaped,
    "&lt;@U999&gt;") was taken for a real mention and dropped from the task."""
    body = callback(mention("<@UBOT> start &lt;@U999&gt; review for 30 min"))
    async with world() as w:
        async with make_client(**w.settings()) as client:
            await post(client, body)
            await finished_runs(client, "slack.reply")
    assert [start["description"] for start in w.toggl.starts] == ["<@U999> review"]


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({"slack_signing_secret": "s" * 32, "slack_bot_token": "xoxb-1"}, True),
        ({"slack_signing_secret": "s" * 32, "slack_bot_token": "xoxb-1", "slack_allowed_users": "U0123ABCD"}, False),
        ({}, False),  # Slack events are off: nobody can command the service through them
    ],
    ids=["open_to_anyone", "allowed_users_listed", "not_configured"],
)
async def test_health_warns_that_anyone_may_command_only_while_slack_events_are_on(make_client, settings, warned):
    """The SLACK_ALLOWED_USERS advice was never asserted: mutant dropping `or not settings.slack_signing_secret`
    survived, and GET /health warned about who may command an integration that was not configured at all."""
    async with make_client(**settings) as client:
        advice = (await client.get("/health")).json()["integrations"]["slack_events"]["advice"]
    if warned:
        [sentence] = advice
        assert sentence.startswith("SLACK_ALLOWED_USERS is empty, so anyone who can mention or message the bot")
    else:
        assert advice == []
