"""A missing integration, told in the words of whoever reads it.

`NotConfigured`'s detail said "<integration> is not configured: set X in the environment or .env and restart." to
everyone, and the chat replies relayed it: a WhatsApp `start` without Toggl's token, a Slack `brief` without a
language model told a chat user to set environment variables, which only the operator can. The chat replies and
the briefing's Slack summary now say the integration is not set up yet and that the operator must set the setting
(named, never its value) and restart the service; the API answers and the ledger's rows keep the API wording,
from the same sentence. Each chat test reads what reached the fake Twilio or Slack.
"""

from __future__ import annotations

import dataclasses

from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_whatsapp_webhook import messages
from tests.workflows.test_planned_stop_errors_in_chat_words import API_CALL, _thread_replies
from tests.workflows.world import briefing_summary, finished_runs, post_whatsapp, wait_for, whatsapp_form
from workflows import commands
from workflows.briefing import WorkflowDeps

API_TOGGL = "toggl is not configured: set TOGGL_API_TOKEN in the environment or .env and restart."
CHAT_TOGGL = (
    "toggl is not set up yet: the operator must set TOGGL_API_TOKEN in the environment or .env and restart the service."
)
LLM_NAMES = "GEMINI_API_KEY or ANTHROPIC_API_KEY (or LOCAL_LLM_BASE_URL and LOCAL_LLM_MODEL for a local model)"
API_LLM = f"No LLM provider is configured: set {LLM_NAMES} in the environment or .env and restart."
CHAT_LLM = (
    f"No LLM provider is set up yet: the operator must set {LLM_NAMES} in the environment or .env and restart "
    "the service."
)
#: The router-less briefing's plan step (workflows built without an AIRouter).
API_NO_MODEL = "no language model is configured: set GEMINI_API_KEY or ANTHROPIC_API_KEY"
CHAT_NO_MODEL = "no language model is set up yet: the operator must set GEMINI_API_KEY or ANTHROPIC_API_KEY"
#: The API's imperative, which a chat user cannot follow.
TOLD_TO_SET = "configured: set "


async def test_a_whatsapp_start_without_toggl_says_the_operator_must_set_the_token(w, make_client):
    async with make_client(**w.settings(toggl_api_token=None)) as client:
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        [run] = await finished_runs(client, "command.start")
    assert messages(response) == [f"Could not start the timer: {CHAT_TOGGL}"]
    assert w.toggl.starts == [] and w.twilio.sent == []
    # GET /runs is read by whoever runs the service: the failed action keeps the API wording.
    [action] = [action for action in run["actions"] if action["skill"] == "toggl"]
    assert action["error"] == f"503 not-configured: {API_TOGGL}", action


async def test_a_whatsapp_start_without_slack_says_the_operator_must_set_the_slack_token(w, make_client):
    async with make_client(**w.settings(slack_bot_token=None)) as client:
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        [run] = await finished_runs(client, "command.start")
    [reply] = messages(response)
    assert reply.startswith("Started 'focus' at "), reply
    assert reply.endswith(
        " Slack was not told: slack is not set up yet: the operator must set SLACK_BOT_TOKEN in the environment or "
        ".env and restart the service."
    ), reply
    assert w.slack.posts == []
    assert run["error"] == "slack is not configured: set SLACK_BOT_TOKEN in the environment or .env and restart."


async def test_a_whatsapp_question_without_a_language_model_says_the_operator_must_set_a_key(w, make_client):
    async with make_client(**w.settings(anthropic_api_key=None)) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
        [run] = await finished_runs(client, "inbound.chat")
    # Changed deliberately: "The assistant is not configured: No LLM provider is set up yet: ..." said the same fact
    # twice, and "configured" is the operator's word. The reply now gives the remedy once (test_hints_chat_wording).
    assert messages(response) == [
        "The assistant is not set up yet: " + CHAT_LLM.removeprefix("No LLM provider is set up yet: ")
    ]
    assert w.claude.requests == []
    [action] = run["actions"]
    assert action["error"] == f"503 not-configured: {API_LLM}", action


async def test_a_slack_status_without_toggl_says_the_operator_must_set_the_token(w, make_client):
    async with make_client(**w.settings(toggl_api_token=None)) as client:
        await post(client, callback(mention("<@UBOT> status")))
        await wait_for(lambda: len(_thread_replies(w)) == 1)
    [reply] = _thread_replies(w)
    assert reply == f"Could not read the timer: {CHAT_TOGGL}", reply


async def test_a_slack_brief_without_toggl_or_llm_words_its_reply_and_summary_for_the_chat(w, make_client):
    async with make_client(**w.settings(toggl_api_token=None, anthropic_api_key=None)) as client:
        await post(client, callback(mention("<@UBOT> brief")))
        await wait_for(lambda: len(_thread_replies(w)) == 1)
        [run] = await finished_runs(client, "briefing")
    [reply] = _thread_replies(w)
    summary = briefing_summary(w)
    assert f"No plan today ({CHAT_LLM})." in reply, reply
    assert f"Timer not started: {CHAT_TOGGL}" in reply, reply
    assert f"*Plan*: could not be generated ({CHAT_LLM})" in summary, summary
    assert f"*Timer*: not started ({CHAT_TOGGL})" in summary, summary
    for text in (reply, summary):
        assert TOLD_TO_SET not in text and not API_CALL.search(text), text
    # The `brief` command's briefing run keeps the API wording, in its steps and its error.
    steps = {step["name"]: step["detail"] for step in run["result"]["steps"]}
    assert steps["plan"] == API_LLM and steps["timer"] == API_TOGGL, steps
    assert f"plan not_configured: {API_LLM}" in run["error"], run["error"]
    assert f"timer not_configured: {API_TOGGL}" in run["error"], run["error"]


async def test_a_brief_with_no_router_at_all_words_its_plan_step_for_the_chat(w, make_client):
    """Workflows built without an AIRouter (the app always has one): the plan step's own detail, not an error's."""
    async with make_client(**w.settings()) as client:
        deps = dataclasses.replace(WorkflowDeps.from_app(client.app), ai_router=None)
        reply = await commands.respond(deps, "brief", trigger="slack", sender="UHUMAN")
        [run] = await finished_runs(client, "briefing")
    assert f"No plan today ({CHAT_NO_MODEL})." in reply, reply
    assert f"*Plan*: could not be generated ({CHAT_NO_MODEL})" in briefing_summary(w), briefing_summary(w)
    [plan] = [step for step in run["result"]["steps"] if step["name"] == "plan"]
    assert plan["detail"] == API_NO_MODEL, plan
    [action] = [action for action in run["actions"] if action["skill"] == "ai_router"]
    assert action["error"] == API_NO_MODEL, action


async def test_the_api_answers_keep_the_api_wording_byte_for_byte(w, make_client):
    async with make_client(**w.settings(toggl_api_token=None, anthropic_api_key=None)) as client:
        started = await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})
        asked = await client.post("/ai-process", json={"text": "hello"})
        forced = await client.post("/ai-process", json={"text": "hello", "provider": "claude"})
    assert started.status_code == 503 and started.json()["detail"] == API_TOGGL, started.json()
    assert started.json()["missing_settings"] == ["TOGGL_API_TOKEN"]
    assert asked.status_code == 503 and asked.json()["detail"] == API_LLM, asked.json()
    assert forced.status_code == 503, forced.json()
    assert forced.json()["detail"] == (
        "claude is not configured: set ANTHROPIC_API_KEY in the environment or .env and restart."
    ), forced.json()
