"""Tests pinning behaviour that a hand mutation review of the timer, webhook, email and run routers found
unchecked: each one fails with the mutant it names and passes on the real code."""

from __future__ import annotations

import json

import pytest

from routers.whatsapp_webhook import FAILED, INTERRUPTED, WORKING
from skills.whatsapp import MAX_BODY_CHARS, MAX_PARTS
from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_whatsapp_status import PUBLIC, post_status, send_one, status_form
from tests.routers.test_whatsapp_webhook import messages
from tests.workflows.world import OWNER, finished_runs, post_whatsapp, runs_of, whatsapp_form, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


# --- routers/timers.py ------------------------------------------------------------------


async def test_a_hand_stop_cancels_the_planned_stop_of_that_timer(w, make_client):
    """Mutants dropping the `cancel_planned_stop` call (or running it only in a dry run) survived: a timer
    stopped by hand kept its planned stop `pending` in GET /schedule."""
    async with make_client(**w.settings()) as client:
        started = (await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})).json()
        [before] = (await client.get("/schedule")).json()["stops"]
        stopped = await client.post("/stop-timer")
        [after] = (await client.get("/schedule")).json()["stops"]
    assert stopped.status_code == 200 and stopped.json()["stopped"] is True
    assert w.toggl.stops == [str(started["entry_id"])]
    assert (before["entry_id"], before["status"]) == (started["entry_id"], "pending")
    assert (after["entry_id"], after["status"]) == (started["entry_id"], "cancelled")


async def test_a_tag_with_a_line_break_is_a_422_before_any_run_is_recorded(w, make_client):
    """Mutant dropping the tags' `skill_check` in StartTimerRequest survived: the skill refused the tag
    anyway, but only after a ledger run had been opened, and with Toggl unconfigured a 503 hid the 422."""
    async with make_client(**w.settings(toggl_api_token=None)) as client:
        response = await client.post("/start-timer", json={"task_name": "Admin", "tags": ["ok", "two\nlines"]})
        runs = (await client.get("/runs", params={"kind": "toggl.start_timer"})).json()
    assert response.status_code == 422, response.text
    assert "A tag contains a control character" in response.text
    assert runs["total"] == 0 and w.toggl.starts == []


# --- routers/whatsapp_webhook.py --------------------------------------------------------


async def test_an_answer_of_only_forbidden_characters_is_answered_with_the_apology(w, make_client):
    """Mutant dropping `or FAILED` from `whatsapp_text` survived: an answer XML cannot carry became no reply."""
    w.claude.answer = "\x07\x08"
    async with make_client(**w.settings()) as client:
        reply = messages(await post_whatsapp(client, whatsapp_form("what now?")))
    assert reply == [FAILED]


async def test_an_answer_longer_than_ten_messages_is_cut_to_fit_them(w, make_client):
    """Mutant making `bounded` a no-op survived: a 20,000-character answer went out as 13 billed messages."""
    w.claude.answer = ("word " * 4000).strip()
    async with make_client(**w.settings()) as client:
        reply = messages(await post_whatsapp(client, whatsapp_form("tell me everything")))
    assert len(reply) <= MAX_PARTS
    assert all(len(part) <= MAX_BODY_CHARS for part in reply)
    assert reply[-1].endswith("…")


async def test_a_late_reply_cut_off_by_a_shutdown_is_recorded_cancelled(w, make_client):
    """Mutant returning instead of re-raising the CancelledError in `_send_when_ready` survived: the apology was
    sent, but the late reply's own run was not recorded `cancelled`, so the ledger showed no cut-off reply."""
    w.claude.delay = 3  # past the webhook's 1.5 s and the 0.2 s grace
    settings = w.settings(shutdown_grace_seconds=0.2, llm_timeout_seconds=30)
    async with make_client(**settings) as client:
        assert messages(await post_whatsapp(client, whatsapp_form("think hard"))) == [WORKING]
    async with make_client(**settings) as client:  # the same database, after the shutdown
        runs = await runs_of(client, "whatsapp.reply")
    assert [sent["Body"] for sent in w.twilio.sent] == [INTERRUPTED]
    assert sorted((run["status"], run["error"]) for run in runs) == [
        ("cancelled", "cancelled at shutdown"),
        ("ok", None),
    ]


async def test_a_late_answer_longer_than_ten_messages_is_cut_to_fit_them_not_lost(w, make_client):
    """Mutant sending the late answer without `whatsapp_text` survived: the skill refuses a text of more than ten
    parts, so a long answer that missed the TwiML budget never reached the sender at all."""
    w.claude.delay = 2.5  # a second past the webhook's 1.5 s budget
    w.claude.answer = ("word " * 4000).strip()
    async with make_client(**w.settings()) as client:
        assert messages(await post_whatsapp(client, whatsapp_form("tell me everything"))) == [WORKING]
        [run] = await finished_runs(client, "whatsapp.reply")
    assert run["status"] == "ok"
    bodies = [sent["Body"] for sent in w.twilio.sent]
    assert 1 < len(bodies) <= MAX_PARTS and bodies[-1].endswith("…")


async def test_a_whatsapp_command_records_its_sender_as_a_bare_number(w, make_client):
    """Mutant passing Twilio's `whatsapp:+…` address to `respond` survived: the command's run named the sender
    differently from the webhook's own run and from WHATSAPP_ALLOWED_SENDERS."""
    async with make_client(**w.settings()) as client:
        await post_whatsapp(client, whatsapp_form("start writing for 20 min"))
        [run] = await finished_runs(client, "command.start")
    assert run["input_summary"]["sender"] == OWNER


async def test_a_form_with_only_the_legacy_sms_message_sid_is_answered_once(w, make_client):
    """Mutant dropping the `SmsMessageSid` fallback survived: every form in the tests carried both fields."""
    form = whatsapp_form("help")
    del form["MessageSid"]
    async with make_client(**w.settings()) as client:
        first = messages(await post_whatsapp(client, form))
        again = messages(await post_whatsapp(client, form))
    assert len(first) == 1 and "Commands:" in first[0]
    assert again == []


# --- routers/whatsapp_status.py ---------------------------------------------------------


async def test_a_callback_with_only_the_legacy_sms_fields_is_recorded(w, make_client):
    """Mutants dropping the `SmsSid` / `SmsStatus` fallbacks or the status's `.lower()` survived: every callback in
    the tests carried both spellings, in lower case."""
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, send_run = await send_one(client)
        form = status_form(sid, "Undelivered", code="63016")
        del form["MessageSid"], form["MessageStatus"]
        response = await post_status(client, form)
        [run] = await finished_runs(client, "whatsapp.delivery")
    assert response.status_code == 204
    assert run["input_summary"]["message_sid"] == sid and run["input_summary"]["status"] == "undelivered"
    assert run["input_summary"]["send_run_id"] == send_run


async def test_twilios_error_message_is_kept_in_the_failed_run(w, make_client):
    """Mutant passing `error_message=None` survived: Twilio's own words about an unknown code were dropped."""
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, _ = await send_one(client)
        form = {**status_form(sid, "failed", code="30008"), "ErrorMessage": "Unknown error"}
        await post_status(client, form)
        [run] = await finished_runs(client, "whatsapp.delivery")
    assert "(Twilio 30008: Unknown error)" in run["error"]


@pytest.mark.parametrize(("minutes", "status"), [(24 * 60, 200), (24 * 60 + 1, 422)])
async def test_a_planned_length_is_at_most_a_day(w, make_client, minutes, status):
    """Mutant raising `duration_minutes`' bound to 86,400 survived: /start-timer planned a 60-day stop."""
    async with make_client(**w.settings()) as client:
        response = await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": minutes})
    assert response.status_code == status, response.text
    assert len(w.toggl.starts) == (1 if status == 200 else 0)


async def test_a_misspelt_stop_field_is_a_422_and_stops_nothing(w, make_client):
    """Mutant dropping `extra="forbid"` from StopTimerRequest survived: `{"entryid": ...}` was read as no body and
    stopped whatever timer was running."""
    async with make_client(**w.settings()) as client:
        started = (await client.post("/start-timer", json={"task_name": "Admin"})).json()
        response = await client.post("/stop-timer", json={"entryid": started["entry_id"] + 1})
    assert response.status_code == 422, response.text
    assert w.toggl.stops == [] and w.toggl.running is not None


# --- routers/slack_events.py ------------------------------------------------------------


async def test_a_mention_by_the_member_who_installed_the_app_is_answered(w, make_client):
    """Mutant dropping `if auth.is_bot` from the bot's own ids survived: Slack lists the installing member among
    `authorizations` too (is_bot false), and their mentions were taken for the bot's own and ignored."""
    payload = json.loads(callback(mention("<@UBOT> status")))
    payload["authorizations"].append({"team_id": "T0001", "user_id": "UHUMAN", "is_bot": False})
    async with make_client(**w.settings()) as client:
        await post(client, json.dumps(payload).encode())
        await finished_runs(client, "slack.reply")
    [reply] = w.slack.posts
    assert reply["text"] == "No timer is running."


# --- routers/email.py -------------------------------------------------------------------


async def test_a_blank_html_part_is_recorded_as_no_html(make_client, smtp_login):
    """Mutant recording `html` as `request.html is not None` survived: a blank HTML part, which is not sent, was
    recorded in the run as sent."""
    server, settings = smtp_login
    mail = {"to_address": "ann@example.com", "subject": "Plan", "body": "Deep work first.", "html": "  \n"}
    async with make_client(**settings) as client:
        response = await client.post("/send-email", json=mail)
        run = (await client.get(f"/runs/{response.json()['run_id']}")).json()
    assert response.status_code == 200, response.text
    assert run["input_summary"]["html"] is False
    assert server.messages[0].message.get_body(("html",)) is None


# --- routers/runs.py --------------------------------------------------------------------


async def test_an_unknown_run_id_is_a_404_saying_how_to_list_runs(client):
    """Mutant returning None instead of raising NotFound in GET /runs/{id} survived: the caller got a 500."""
    response = await client.get("/runs/no-such-run")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "No run with id no-such-run. List runs with GET /runs."


async def test_an_unknown_trigger_filter_is_a_422_not_an_empty_page(client):
    """Mutant typing GET /runs's `trigger` as any string survived: a typo ("whatsap") answered an empty page
    that looked like "no such runs"."""
    response = await client.get("/runs", params={"trigger": "whatsap"})
    assert response.status_code == 422
    assert "whatsapp" in response.text
