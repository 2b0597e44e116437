"""A planned stop that could not be saved or cancelled, told in the words of whoever reads it.

The chat replies (WhatsApp, a Slack thread, the briefing's Slack summary) quoted the HTTP API's remedies,
`POST /stop-timer {"entry_id": ..., "workspace_id": ...}` and `GET /schedule`, which a person on WhatsApp or Slack
cannot send. They now name the chat commands ("stop", "status"); the API answers keep their API wording. Each test
reads what reached the fake Twilio or Slack, not a return value.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy.exc import OperationalError

from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_whatsapp_webhook import messages
from tests.workflows.world import WORKSPACE, post_whatsapp, wait_for, whatsapp_form

THREAD = "1764057600.000100"  # the `ts` of tests.routers.test_slack_events.mention
#: An HTTP request line as the API's wording quotes one: nothing a chat user can send.
API_CALL = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) /")
SEND_STOP = 'To be sure, send "stop" then ("status" shows whether it still runs).'
STILL_PLANNED = "it is still planned, and when it is due it finds the timer already stopped and changes nothing."


def _saving_fails(client, monkeypatch: pytest.MonkeyPatch) -> None:
    async def schedule_stop(**_: object) -> str:
        raise OperationalError("INSERT INTO scheduled_jobs", {}, Exception("database is locked"))

    monkeypatch.setattr(client.app.state.scheduler, "schedule_stop", schedule_stop)


def _cancelling_fails(client, monkeypatch: pytest.MonkeyPatch) -> None:
    async def cancel_stops(**_: object) -> int:
        raise OperationalError("UPDATE scheduled_jobs", {}, Exception("database is locked"))

    monkeypatch.setattr(client.app.state.scheduler, "cancel_stops", cancel_stops)


def _thread_replies(w) -> list[str]:
    return [sent["text"] for sent in w.slack.posts if sent.get("thread_ts") == THREAD]


async def test_a_late_whatsapp_start_reply_names_the_stop_command_not_the_api(w, make_client, monkeypatch):
    w.toggl.delay = 1.7  # past REPLY_BUDGET_SECONDS: the answer is a message of its own, through Twilio's API
    async with make_client(**w.settings()) as client:
        _saving_fails(client, monkeypatch)
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        await wait_for(lambda: len(w.twilio.sent) == 1)
    assert messages(response) == ["Working on it; the answer follows in a moment."]
    [sent] = w.twilio.sent
    body = sent["Body"]
    assert body.startswith("Started 'focus' at "), body
    assert "could not be saved yet (" in body and "database is locked" in body
    assert SEND_STOP in body
    assert not API_CALL.search(body) and "stop-timer" not in body, body


async def test_a_slack_stop_reply_does_not_point_at_get_schedule(w, make_client, monkeypatch):
    async with make_client(**w.settings()) as client:
        await post_whatsapp(client, whatsapp_form("start focus for 10 min", sid="SM" + "1" * 32))
        _cancelling_fails(client, monkeypatch)
        await post(client, callback(mention("<@UBOT> stop")))
        await wait_for(lambda: len(_thread_replies(w)) == 1)
    [reply] = _thread_replies(w)
    assert reply.startswith("Stopped 'focus' after "), reply
    assert "its planned stop could not be cancelled (" in reply and "database is locked" in reply
    assert reply.endswith(STILL_PLANNED), reply
    assert not API_CALL.search(reply) and "/schedule" not in reply, reply
    assert w.toggl.stops == ["9001"]


async def test_the_brief_command_and_its_slack_summary_name_the_stop_command(w, make_client, monkeypatch):
    async with make_client(**w.settings()) as client:
        _saving_fails(client, monkeypatch)
        await post(client, callback(mention("<@UBOT> brief")))
        await wait_for(lambda: len(_thread_replies(w)) == 1)
    [reply] = _thread_replies(w)
    [summary] = [sent["text"] for sent in w.slack.posts if sent["text"].startswith("*Morning briefing*")]
    for text in (reply, summary):
        assert "could not be saved yet (" in text and SEND_STOP in text, text
        assert not API_CALL.search(text) and "stop-timer" not in text, text
    assert len(w.toggl.starts) == 1


async def test_the_api_answers_keep_their_api_wording_while_the_slack_summary_gets_the_chat_one(
    w, make_client, monkeypatch
):
    api_remedy = f'stop it then: POST /stop-timer {{"entry_id": 9001, "workspace_id": {WORKSPACE}}}, or send "stop".'
    async with make_client(**w.settings()) as client:
        _saving_fails(client, monkeypatch)
        briefing = (await client.post("/morning-briefing", json={"task": "Writing", "duration_minutes": 30})).json()
        started = (await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})).json()
        _cancelling_fails(client, monkeypatch)
        stopped = (await client.post("/stop-timer")).json()
    [timer] = [step for step in briefing["steps"] if step["name"] == "timer"]
    assert timer["detail"].endswith(f"To be sure, {api_remedy}"), timer["detail"]
    assert started["planned_stop_error"].startswith("The timer started, but its stop at ")
    assert started["planned_stop_error"].endswith(
        f'stop it then: POST /stop-timer {{"entry_id": 9002, "workspace_id": {WORKSPACE}}}, or send "stop".'
    )
    assert stopped["planned_stop_error"].endswith(
        ": GET /schedule still lists it, and when it is due it finds the timer already stopped and changes nothing."
    )
    # The same briefing's Slack post is read in a chat.
    [summary] = [sent["text"] for sent in w.slack.posts if sent["text"].startswith("*Morning briefing*")]
    assert SEND_STOP in summary and not API_CALL.search(summary), summary
