"""Tests for mutants of the tenth session's workflow changes that survived the existing suite.

Each test names the mutant it kills. The mutants were applied by hand to the code changed since 23c0339; the
commit that adds this file lists them all.
"""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from tests.routers.test_slack_claims_one_transaction import claim, claims_held, sessions  # noqa: F401
from tests.routers.test_whatsapp_webhook import messages
from tests.workflows.test_chat_replies_name_no_api_paths import NO_WORKSPACE
from tests.workflows.test_planned_stop_errors_in_chat_words import SEND_STOP
from tests.workflows.world import briefing_summary, finished_runs, post_whatsapp, whatsapp_form
from workflows.inbound import EventClaim

# --- claim_event_and_message (workflows/inbound.py) -------------------------------------------------------------


async def test_an_event_and_its_message_are_held_by_ids_cut_to_the_columns_width(sessions):  # noqa: F811
    """Kills cutting only the event's id: the message's id went to the database whole, which PostgreSQL refuses
    past VARCHAR(255) (SQLite stores it), so every such event failed its claim. Asserted on the rows held."""
    long_event, long_message = "Ev" + "e" * 300, "C1:" + "9" * 300
    assert await claim(sessions, long_event, long_message) == EventClaim(True, True)
    assert await claims_held(sessions) == {("slack", long_event[:255]), ("slack-message", long_message[:255])}


# --- The briefing's Slack summary (workflows/briefing.py `_run_step`) -------------------------------------------


async def test_an_api_briefing_without_a_workspace_tells_slack_the_operators_setting(w, make_client):
    """Kills dropping the chat wording of a step that is not configured: POST /morning-briefing's report is read by
    its API caller, but its Slack summary is read in a chat, where "pass workspace_id to POST /start-timer" is
    nothing anyone can send. Read from what reached the fake Slack."""
    async with make_client(**w.settings(toggl_workspace_id=None)) as client:
        report = (await client.post("/morning-briefing", json={"task": "Writing", "duration_minutes": 30})).json()
    [timer] = [step for step in report["steps"] if step["name"] == "timer"]
    assert timer["status"] == "not_configured"
    assert timer["detail"].endswith("or pass workspace_id to POST /start-timer and /stop-timer."), timer
    summary = briefing_summary(w)
    assert f"*Timer*: not started ({NO_WORKSPACE})" in summary, summary
    assert "workspace_id" not in summary, summary
    assert w.toggl.starts == []


# --- A planned stop that could not be saved (workflows/briefing.py `StopNotSaved`) -------------------------------


async def test_the_stop_not_saved_reply_quotes_the_database_error_cut_short(w, make_client, monkeypatch):
    """Kills quoting the whole error (the reply quotes its first 200 characters; the rest, the SQL and SQLAlchemy's
    background link, is for the ledger), and dropping the promise that the stop is saved again.
    Read from the TwiML answer a WhatsApp `start` gets."""
    async with make_client(**w.settings()) as client:

        async def schedule_stop(**_: object) -> str:
            locked = Exception("database is locked " + "." * 200 + " END-OF-ERROR")
            raise OperationalError("INSERT INTO scheduled_jobs", {}, locked)

        monkeypatch.setattr(client.app.state.scheduler, "schedule_stop", schedule_stop)
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
    reply = " ".join(messages(response))
    assert reply.startswith("Started 'focus' at "), reply
    assert "could not be saved yet (OperationalError: " in reply and "database is locked" in reply, reply
    assert "END-OF-ERROR" not in reply, reply
    # ... and says the service will save it again, before how to make sure.
    assert f"); the service saves it again within 10 minutes. {SEND_STOP}" in reply, reply


# --- A briefing with no channel for its summary (workflows/briefing.py) -----------------------------------------


async def test_a_brief_command_without_a_channel_records_the_api_wording_in_the_ledger(w, make_client):
    """Kills recording the chat wording in the ledger: the sender reads "the operator must set BRIEFING_CHANNEL",
    but GET /runs is read by whoever runs the service, who can also pass `channel` to POST /morning-briefing."""
    async with make_client(**w.settings(slack_default_channel=None)) as client:
        await post_whatsapp(client, whatsapp_form("brief"))
        [run] = await finished_runs(client, "briefing")
    [skipped] = [action for action in run["actions"] if action["skill"] == "slack"]
    assert (skipped["operation"], skipped["status"]) == ("post_message", "not_configured")
    assert skipped["error"] == (
        "no channel for the summary: pass `channel`, or set BRIEFING_CHANNEL (or SLACK_DEFAULT_CHANNEL)"
    )
