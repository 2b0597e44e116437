"""Errors a chat command relays, told in the words of whoever reads them.

A `start` or `brief` whose Toggl start has an unknown outcome said "check the running timer (GET /timers/current or
Toggl)", a missing TOGGL_WORKSPACE_ID "pass workspace_id to POST /start-timer and /stop-timer", and a missing
SLACK_DEFAULT_CHANNEL "pass `channel` to POST /slack-notify": nothing a person on WhatsApp or Slack can send. The
chat replies and the briefing's Slack summary now name the `status` command or the operator's setting; the API
answers keep their API wording, from the same sentence. Each test reads what reached the fake Twilio or Slack.
"""

from __future__ import annotations

import httpx

from tests.routers.test_slack_events import callback, mention, post
from tests.workflows.test_planned_stop_errors_in_chat_words import API_CALL, _thread_replies
from tests.workflows.world import (
    TOGGL_BASE,
    briefing_summary,
    finished_runs,
    post_whatsapp,
    wait_for,
    whatsapp_form,
)

SEND_STATUS = (
    'The outcome is unknown: the time entry may have been created; send "status" to see whether the timer runs '
    "(or look in Toggl) before retrying."
)
API_CHECK = "check the running timer (GET /timers/current or Toggl) before retrying."
#: The workspace and the restart are the operator's: "your Toggl workspace" and a bare "restart" spoke to the chat
#: user as if they ran the service; the wording now ends as `core.errors.set_and_restart`'s chat wording does.
NO_WORKSPACE = (
    "No Toggl workspace: the operator must set TOGGL_WORKSPACE_ID (the number in the Toggl workspace's URL) and "
    "restart the service."
)


async def _slack_reply(w, client, text: str) -> str:
    await post(client, callback(mention(f"<@UBOT> {text}")))
    await wait_for(lambda: len(_thread_replies(w)) == 1)
    [reply] = _thread_replies(w)
    return reply


async def test_a_late_whatsapp_start_toggl_answered_500_to_says_send_status(w, make_client):
    w.toggl.fail_start = 500
    w.toggl.delay = 1.7  # past REPLY_BUDGET_SECONDS: the answer is a message of its own, through Twilio's API
    async with make_client(**w.settings()) as client:
        await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        await wait_for(lambda: len(w.twilio.sent) == 1)
    [sent] = w.twilio.sent
    body = sent["Body"]
    assert body.startswith("Could not start the timer: Toggl answered 500."), body
    assert body.endswith(SEND_STATUS), body
    assert not API_CALL.search(body) and "/timers/current" not in body, body


async def test_a_slack_start_that_timed_out_after_sending_says_send_status(w, make_client):
    # The start went out and no answer came; the running timer read back is not it (nothing runs).
    start = w.toggl.mock.post(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries$")
    start.mock(side_effect=httpx.ReadTimeout("no answer"))
    async with make_client(**w.settings()) as client:
        reply = await _slack_reply(w, client, "start focus for 10 min")
        [run] = await finished_runs(client, "command.start")
    assert reply.startswith("Could not start the timer: toggl did not answer in time (ReadTimeout)."), reply
    assert reply.endswith(SEND_STATUS), reply
    assert not API_CALL.search(reply), reply
    # The ledger is read through GET /runs: its row of the failed start keeps the API wording.
    [action] = [action for action in run["actions"] if action["skill"] == "toggl"]
    assert action["error"].endswith(API_CHECK), action


async def test_the_brief_command_and_its_summary_say_send_status_when_the_start_is_unknown(w, make_client):
    w.toggl.fail_start = 502
    async with make_client(**w.settings()) as client:
        reply = await _slack_reply(w, client, "brief")
    summary = briefing_summary(w)
    # Toggl may have started it: "not started" would contradict the sentence after it (the summary already said so).
    assert "Timer may or may not have started: 502 upstream-error: Toggl answered 502." in reply, reply
    assert "*Timer*: may or may not have started (502 upstream-error: Toggl answered 502." in summary, summary
    for text in (reply, summary):
        assert SEND_STATUS in text, text
        assert not API_CALL.search(text), text


async def test_a_missing_workspace_is_the_operators_setting_in_start_and_brief_replies(w, make_client):
    async with make_client(**w.settings(toggl_workspace_id=None)) as client:
        start = await _slack_reply(w, client, "start focus for 10 min")
        await post(client, callback(mention("<@UBOT> brief", ts="1764057601.000100"), event_id="Ev0002"))
        await wait_for(lambda: any(sent.get("thread_ts") == "1764057601.000100" for sent in w.slack.posts))
    [brief] = [sent["text"] for sent in w.slack.posts if sent.get("thread_ts") == "1764057601.000100"]
    summary = briefing_summary(w)
    assert start == f"Could not start the timer: {NO_WORKSPACE}", start
    assert f"Timer not started: {NO_WORKSPACE}" in brief, brief
    assert f"*Timer*: not started ({NO_WORKSPACE})" in summary, summary
    for text in (start, brief, summary):
        assert not API_CALL.search(text) and "workspace_id" not in text, text
    assert w.toggl.starts == []


async def test_a_missing_slack_channel_is_the_operators_setting_in_start_and_brief_replies(w, make_client):
    w.toggl.delay = 1.7  # late answers: each goes through Twilio's API
    async with make_client(**w.settings(slack_default_channel=None)) as client:
        await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        await wait_for(lambda: len(w.twilio.sent) == 1)
        await post_whatsapp(client, whatsapp_form("brief", sid="SM" + "b" * 32))
        await wait_for(lambda: len(w.twilio.sent) == 2)
    start, brief = (sent["Body"] for sent in w.twilio.sent)
    assert start.endswith(" Slack was not told: No Slack channel: the operator must set SLACK_DEFAULT_CHANNEL."), start
    assert brief.endswith(
        "Slack summary not posted: no channel for the summary: the operator must set BRIEFING_CHANNEL "
        "(or SLACK_DEFAULT_CHANNEL)"
    ), brief
    for text in (start, brief):
        assert not API_CALL.search(text) and "`channel`" not in text, text


async def test_the_api_answers_keep_their_api_wording_while_the_slack_summary_gets_the_chat_one(w, make_client):
    w.toggl.fail_start = 500
    async with make_client(**w.settings()) as client:
        started = await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})
        briefing = (await client.post("/morning-briefing", json={"task": "Writing", "duration_minutes": 30})).json()
    assert started.status_code == 502
    assert started.json()["detail"].endswith(API_CHECK)
    [timer] = [step for step in briefing["steps"] if step["name"] == "timer"]
    assert timer["detail"].endswith(API_CHECK), timer
    # The same briefing's Slack post is read in a chat.
    assert SEND_STATUS in briefing_summary(w) and not API_CALL.search(briefing_summary(w)), briefing_summary(w)
