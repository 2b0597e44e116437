"""What chat senders and Twilio are told when the service's own database fails.

Found by a review:
- A WhatsApp or Slack command runs in a background task. The database failing once it had acted (the run's
  finish after a Toggl start) was swallowed there: WhatsApp replied "Sorry, something went wrong; it has been
  logged." while the timer ran, and Slack posted nothing at all. The database refusing the run's start (nothing
  done yet) got the same two answers, though the message could simply be sent again.
- A chat answer the model cut short (`max_tokens`) said "the answer was longer than a chat reply allows",
  blaming the chat's length limit for what the model did.
- A WhatsApp status callback that met the database down was answered 503 "the outcome is unknown: check
  GET /runs" (not the 500 the docs said) though nothing had been recorded; and one whose run's start was
  refused was answered 204, so Twilio never tried again and the failed delivery was lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from core import ledger as ledger_module
from core.ledger import Ledger
from services.ai_router import AIRouter
from skills.toggl import TogglSkill
from tests.fakes.server import Reply
from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_whatsapp_status import PUBLIC, post_status, send_one, status_form
from tests.routers.test_whatsapp_webhook import messages
from tests.workflows.world import (
    OWNER,
    finished_runs,
    post_whatsapp,
    runs_of,
    wait_for,
    whatsapp_form,
)
from workflows import inbound
from workflows.commands import ANSWER_LOST, NOTHING_DONE

FAILED = "Sorry, something went wrong"
THREAD = "1764057600.000100"  # the `ts` of tests.routers.test_slack_events.mention


class DatabaseDown:
    """The service's database stops answering: while `down`, every statement any engine sends fails as a refused
    connection would (claims, the ledger, the scheduler's rows alike).

    `after(owner, name)` takes it down as soon as that coroutine method has first returned: right after Toggl
    started the timer, say. The ledger gives up on a write nobody waits for at once (UNWAITED_RETRY_SECONDS),
    not after 30 s.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        self._monkeypatch = monkeypatch
        monkeypatch.setattr(ledger_module, "UNWAITED_RETRY_SECONDS", 0.0)
        event.listen(Engine, "before_cursor_execute", self._refuse)

    def _refuse(self, _connection, _cursor, statement, *_) -> None:
        if self.down:
            raise OperationalError(statement, {}, ConnectionRefusedError(111, "Connection refused"))

    def after(self, owner: type, name: str) -> None:
        real = getattr(owner, name)
        calls = 0

        async def then_down(*args, **kwargs):
            nonlocal calls
            calls += 1
            try:
                return await real(*args, **kwargs)
            finally:
                if calls == 1:  # once: the retry that follows meets the database back
                    self.down = True

        self._monkeypatch.setattr(owner, name, then_down)

    def close(self) -> None:
        event.remove(Engine, "before_cursor_execute", self._refuse)


@pytest.fixture
def database(monkeypatch) -> Iterator[DatabaseDown]:
    database = DatabaseDown(monkeypatch)
    yield database
    database.close()


def _down_after_the_claim(database: DatabaseDown, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """The database goes away once the webhook's first claim of `source` is in: before the command's run starts."""
    real = inbound._insert_new
    armed = True

    async def insert_new(session, keys):
        nonlocal armed
        inserted = await real(session, keys)
        if armed and any(key[0] == source for key in keys):
            armed = False
            database.down = True
        return inserted

    monkeypatch.setattr(inbound, "_insert_new", insert_new)


def _says_the_outcome_is_unknown(reply: str, *, may_have: str, check: str) -> None:
    assert reply.startswith("Sorry, the service's database failed while this ran"), reply
    assert "The outcome is unknown: " + may_have in reply
    assert check in reply
    assert FAILED not in reply and "nothing was done" not in reply
    assert "GET /runs" not in reply and "POST /" not in reply  # a chat user is not sent to the HTTP API


# --- A command that acted, then met the database failing ------------------------------------------------


async def test_a_whatsapp_start_whose_run_cannot_finish_says_the_timer_may_have_started(w, make_client, database):
    database.after(TogglSkill, "start_timer")
    form = whatsapp_form("start writing for 25 min")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, form)
        database.down = False  # back
        redelivered = await post_whatsapp(client, form)  # Twilio's retry of the same MessageSid
        status = await post_whatsapp(client, whatsapp_form("status", sid="SM" + "b" * 32))
    [reply] = messages(response)
    _says_the_outcome_is_unknown(
        reply, may_have="the timer may have started", check='Send "status" to see whether it runs (or check Toggl)'
    )
    assert len(w.toggl.starts) == 1 and w.toggl.starts[0]["description"] == "writing"
    assert messages(redelivered) == [] and len(w.toggl.starts) == 1  # never twice
    [running] = messages(status)
    assert running.startswith("'writing' running since")


async def test_a_slack_start_whose_run_cannot_finish_is_answered_in_the_thread(w, make_client, database):
    """The reply's own run cannot be started either (the database is still down): it is posted unrecorded."""
    database.after(TogglSkill, "start_timer")
    async with make_client(**w.settings()) as client:
        response = await post(client, callback(mention("<@UBOT> start planning for 20 min"), event_id="EvActed"))
        await wait_for(lambda: any(post.get("thread_ts") == THREAD for post in w.slack.posts))
        database.down = False
    assert response.status_code == 200
    [reply] = [post["text"] for post in w.slack.posts if post.get("thread_ts") == THREAD]
    _says_the_outcome_is_unknown(reply, may_have="the timer may have started", check='Send "status"')
    assert len(w.toggl.starts) == 1
    assert [post["text"][:12] for post in w.slack.posts] == [":stopwatch: ", reply[:12]]  # announced once


async def test_a_late_whatsapp_answer_saying_so_is_sent_though_its_run_cannot_be_recorded(w, make_client, database):
    """Past the 2-second TwiML budget the answer is a message of its own, whose `whatsapp.reply` run the database
    refuses too: it is sent unrecorded, once, rather than not at all."""
    w.toggl.delay = 1.7  # past REPLY_BUDGET_SECONDS
    database.after(TogglSkill, "start_timer")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start writing for 25 min"))
        await wait_for(lambda: len(w.twilio.sent) == 1)
        database.down = False
        await asyncio.sleep(0.1)
    assert messages(response) == ["Working on it; the answer follows in a moment."]
    [sent] = w.twilio.sent
    assert sent["To"] == f"whatsapp:{OWNER}"
    _says_the_outcome_is_unknown(sent["Body"], may_have="the timer may have started", check='Send "status"')
    assert len(w.toggl.starts) == 1


@pytest.mark.parametrize(
    ("command", "owner", "method", "may_have", "check"),
    [
        (
            "stop",
            TogglSkill,
            "stop_timer",
            "the timer may have stopped",
            'Send "status" to see whether it still runs before sending "stop" again',
        ),
        (
            "brief",
            TogglSkill,
            "start_timer",
            "the briefing may have started its timer and posted its summary to Slack",
            'Send "status" and look in Slack before sending "brief" again',
        ),
    ],
)
async def test_each_command_that_may_have_acted_says_what_to_check(
    w, make_client, database, command, owner, method, may_have, check
):
    async with make_client(**w.settings()) as client:
        if command == "stop":
            assert "Started" in messages(await post_whatsapp(client, whatsapp_form("start writing for 25 min")))[0]
        database.after(owner, method)
        response = await post_whatsapp(client, whatsapp_form(command, sid="SM" + "c" * 32))
        database.down = False
    [reply] = messages(response)
    _says_the_outcome_is_unknown(reply, may_have=may_have, check=check)
    assert len(w.toggl.starts) == 1  # the start before the stop, or the briefing's own
    assert len(w.toggl.stops) == (1 if command == "stop" else 0)


async def test_a_chat_answer_lost_with_the_database_says_so_and_that_asking_again_is_safe(w, make_client, database):
    database.after(AIRouter, "generate")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
        database.down = False
    assert messages(response) == [ANSWER_LOST]
    assert len(w.claude.prompts) == 1
    assert w.toggl.starts == []


# --- The database failing before anything was done ------------------------------------------------------


async def test_a_whatsapp_command_whose_run_cannot_start_did_nothing_and_can_be_sent_again(
    w, make_client, database, monkeypatch
):
    _down_after_the_claim(database, monkeypatch, "whatsapp")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start writing for 25 min"))
        assert w.toggl.starts == []
        database.down = False
        again = await post_whatsapp(client, whatsapp_form("start writing for 25 min", sid="SM" + "d" * 32))
    assert messages(response) == [NOTHING_DONE]
    assert "Started 'writing'" in messages(again)[0]
    assert len(w.toggl.starts) == 1


async def test_a_slack_command_whose_run_cannot_start_did_nothing_and_says_so_in_the_thread(
    w, make_client, database, monkeypatch
):
    _down_after_the_claim(database, monkeypatch, "slack-message")
    async with make_client(**w.settings()) as client:
        response = await post(client, callback(mention("<@UBOT> start planning for 20 min"), event_id="EvNothing"))
        await wait_for(lambda: len(w.slack.posts) == 1)
        database.down = False
        await asyncio.sleep(0.1)
    assert response.status_code == 200
    assert [(post["text"], post.get("thread_ts")) for post in w.slack.posts] == [(NOTHING_DONE, THREAD)]
    assert w.toggl.starts == []


async def test_under_dry_run_a_command_that_met_the_database_failing_did_nothing(w, make_client, database):
    """A rehearsal sends nothing to Toggl or Slack: "the timer may have started" would be untrue."""
    database.after(TogglSkill, "start_timer")
    async with make_client(**w.settings(dry_run=True)) as client:
        response = await post_whatsapp(client, whatsapp_form("start writing for 25 min"))
        database.down = False
    assert messages(response) == [NOTHING_DONE]
    assert w.toggl.starts == [] and w.slack.posts == []


async def test_a_bug_is_still_a_bug_not_a_database_failure(w, make_client, monkeypatch):
    async def broken(*_, **__):
        raise RuntimeError("a bug")

    monkeypatch.setattr(TogglSkill, "start_timer", broken)
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start writing for 25 min"))
    [reply] = messages(response)
    assert reply.startswith(FAILED)


# --- An answer the model cut short --------------------------------------------------------------------


async def test_a_chat_answer_the_model_cut_short_says_the_model_stopped_not_the_chat(w, make_client):
    cut = {
        "id": "msg_cut",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "First, answer the two urgent emails. Then"}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 600},
    }
    w.claude.fail = Reply(200, json=cut)
    async with make_client(**w.settings()) as client:
        response = await post(client, callback(mention("<@UBOT> what should I do first?"), event_id="EvCut"))
        [run] = await finished_runs(client, "slack.reply")
    assert response.status_code == 200
    [reply] = [post["text"] for post in w.slack.posts]
    assert reply == (
        "First, answer the two urgent emails. Then "
        "[…cut short: the model stopped before the end of its answer (max_tokens)]"
    )
    assert "chat reply allows" not in reply
    assert run["status"] == "ok"


# --- A WhatsApp status callback that met the database down ------------------------------------------


def _assert_nothing_recorded_answer(response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["type"] == "/problems/store-unavailable"
    assert body["nothing_sent"] is True and "outcome_unknown" not in body
    assert response.headers["retry-after"] == "5"
    assert "nothing was done" in body["detail"] and "records it" in body["detail"]
    assert "outcome is unknown" not in body["detail"] and "GET /runs" not in body["detail"]


async def test_a_status_callback_that_met_the_database_down_recorded_nothing_and_twilios_retry_records_it(
    w, make_client, database
):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, send_run = await send_one(client)
        form = status_form(sid, "undelivered", code="63016")
        database.down = True
        first = await post_status(client, form)
        database.down = False
        assert await runs_of(client, "whatsapp.delivery") == []
        retry = await post_status(client, form)
        [run] = await finished_runs(client, "whatsapp.delivery")
    _assert_nothing_recorded_answer(first)
    assert retry.status_code == 204
    assert (run["status"], run["input_summary"]["send_run_id"]) == ("failed", send_run)


async def test_a_status_callback_whose_run_could_not_start_is_not_answered_204(w, make_client, database):
    """The database went away between the send's lookup and the run's start. That refusal was caught with the
    delivery's own problem and answered 204: Twilio never tried again, and the failed delivery was nowhere."""
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, _ = await send_one(client)
        form = status_form(sid, "failed", code="63015")
        database.after(Ledger, "find_run_by_external_id")
        first = await post_status(client, form)
        database.down = False
        assert await runs_of(client, "whatsapp.delivery") == []
        retry = await post_status(client, form)
        again = await post_status(client, form)  # a redelivery of the recorded one: ignored, as before
        runs = await finished_runs(client, "whatsapp.delivery")
    _assert_nothing_recorded_answer(first)
    assert (retry.status_code, again.status_code) == (204, 204)
    assert [run["input_summary"]["status"] for run in runs] == ["failed"]
