"""A rejected credential, told in the words of whoever reads it.

An upstream that refuses our key or token (Gemini's 400 API_KEY_INVALID, Claude's 401, Toggl's 401/403, Slack's
`invalid_auth` or `missing_scope`) gave a chat user the operator's remedy: "create one in Google AI Studio, set
GEMINI_API_KEY in the environment or .env, and restart", "check TOGGL_API_TOKEN". A person on WhatsApp or Slack can
do neither. The chat replies now say that the operator must replace or check the setting (named, never its value);
the API answers and the ledger's rows (GET /runs, read by whoever runs the service) keep the API wording, from the
same sentence. Each chat test reads what reached the fake Twilio (the reply's TwiML) or the fake Slack
(chat.postMessage).
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.fakes.llm import FakeGemini, anthropic_error
from tests.fakes.server import Reply
from tests.fakes.slack import CHAT_POST_MESSAGE
from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_whatsapp_webhook import messages
from tests.services.test_ai_router import gemini_bad_key
from tests.workflows.test_planned_stop_errors_in_chat_words import API_CALL, _thread_replies
from tests.workflows.world import (
    MESSAGES_PATH,
    OWNER,
    TWILIO_BASE,
    finished_runs,
    post_whatsapp,
    wait_for,
    whatsapp_form,
    world,
)

GEMINI_KEY = "AIzaSyD-test-gemini-key-000000000000000"
GEMINI_REFUSED = (
    "gemini refused our credentials (400 API_KEY_INVALID: API key not valid. Please pass a valid API key.). "
    "GEMINI_API_KEY is not a valid Gemini API key (wrong, expired or deleted): "
)
API_GEMINI_FIX = "create one in Google AI Studio, set GEMINI_API_KEY in the environment or .env, and restart."
CHAT_GEMINI_FIX = "the operator must replace it with a valid key and restart the service."
TOGGL_REFUSED = "Toggl refused the credentials ({status}): "
API_TOGGL_FIX = "check TOGGL_API_TOKEN and that it can use this workspace. Toggl said: Toggl is having a bad day."
CHAT_TOGGL_FIX = (
    "ask the operator to check TOGGL_API_TOKEN and that it can use this workspace. Toggl said: Toggl is having a "
    "bad day."
)
SLACK_CHECK = " SLACK_BOT_TOKEN: it must be a valid bot token (xoxb-...) of an installed, active app."
#: The API wording's remedies, which only the operator can apply: "check X" not asked of the operator, Google AI
#: Studio's key page, a bare "and restart." (the chat's is "and restart the service.").
OPERATOR_ONLY = re.compile(r"(?<![Aa]sk the operator to )\b[Cc]heck [A-Z]|create one in Google AI Studio|and restart\.")


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def _chat_only(text: str) -> None:
    assert not OPERATOR_ONLY.search(text) and not API_CALL.search(text), text


async def test_a_whatsapp_question_gemini_refuses_the_key_of_says_the_operator_must_replace_it(w, make_client):
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: gemini_bad_key())
        settings = w.settings(anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)
        async with make_client(**settings) as client:
            response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
            [run] = await finished_runs(client, "inbound.chat")
        assert len(gemini.calls()) == 1
    assert messages(response) == [
        f"The assistant could not answer: Every LLM provider failed. gemini: {GEMINI_REFUSED}{CHAT_GEMINI_FIX}"
    ]
    assert GEMINI_KEY not in response.text
    _chat_only(response.text)
    # GET /runs is read by whoever runs the service: the failed action keeps the API wording.
    [action] = run["actions"]
    assert action["error"] == (
        f"502 llm-providers-failed: Every LLM provider failed. gemini: {GEMINI_REFUSED}{API_GEMINI_FIX}"
    ), action


async def test_a_slack_question_both_providers_refuse_says_ask_the_operator_for_each(w, make_client):
    """Gemini's bad key, then Claude's disabled organization: the router's one detail words each provider's
    remedy for the chat."""
    w.claude.fail = anthropic_error(400, "invalid_request_error", "This organization has been disabled.")
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: gemini_bad_key())
        async with make_client(**w.settings(gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)) as client:
            await post(client, callback(mention("<@UBOT> what should I do first?")))
            await wait_for(lambda: len(_thread_replies(w)) == 1)
            [run] = await finished_runs(client, "slack.reply")
    [reply] = _thread_replies(w)  # the text chat.postMessage received
    assert reply == (
        f"The assistant could not answer: Every LLM provider failed. gemini: {GEMINI_REFUSED}"
        "the operator must replace it with a valid key and restart the service; claude: claude refused to serve "
        "our account (400: This organization has been disabled.). The Anthropic organization of ANTHROPIC_API_KEY "
        "has been disabled: the operator must resolve it in the Anthropic Console, or replace ANTHROPIC_API_KEY and "
        "restart the service."
    ), reply
    _chat_only(reply)
    assert run["status"] != "running"


async def test_a_whatsapp_question_claude_refuses_the_key_of_says_ask_the_operator(w, make_client):
    w.claude.fail = anthropic_error(401, "authentication_error", "invalid x-api-key")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
    assert messages(response) == [
        "The assistant could not answer: Every LLM provider failed. claude: claude refused our credentials (401: "
        "invalid x-api-key). Ask the operator to check ANTHROPIC_API_KEY and CLAUDE_MODEL."
    ]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_whatsapp_start_toggl_refuses_the_token_of_says_ask_the_operator(w, make_client, status):
    w.toggl.fail_start = status
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        [run] = await finished_runs(client, "command.start")
    assert messages(response) == [f"Could not start the timer: {TOGGL_REFUSED.format(status=status)}{CHAT_TOGGL_FIX}"]
    _chat_only(response.text)
    assert w.slack.posts == []  # nothing started, nothing announced
    [action] = [action for action in run["actions"] if action["skill"] == "toggl"]
    assert action["error"] == f"502 upstream-error: {TOGGL_REFUSED.format(status=status)}{API_TOGGL_FIX}", action


async def test_a_slack_start_toggl_refuses_the_token_of_says_ask_the_operator(w, make_client):
    w.toggl.fail_start = 403
    async with make_client(**w.settings()) as client:
        await post(client, callback(mention("<@UBOT> start focus for 10 min")))
        await wait_for(lambda: len(_thread_replies(w)) == 1)
    [reply] = _thread_replies(w)
    assert reply == f"Could not start the timer: {TOGGL_REFUSED.format(status=403)}{CHAT_TOGGL_FIX}", reply


async def test_a_whatsapp_start_slack_refuses_the_token_of_says_ask_the_operator(w, make_client):
    async with make_client(**w.settings(slack_bot_token="xoxb-revoked")) as client:
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        [run] = await finished_runs(client, "command.start")
    [reply] = messages(response)
    assert reply.startswith("Started 'focus' at "), reply
    assert reply.endswith(
        f" Slack was not told: Slack refused the token (invalid_auth). Ask the operator to check{SLACK_CHECK}"
    )
    _chat_only(reply)
    assert run["error"] == f"Slack refused the token (invalid_auth). Check{SLACK_CHECK}", run


async def test_a_whatsapp_start_slack_refuses_for_a_scope_says_the_operator_must_add_it(w, make_client):
    w.slack.queue(
        "POST", CHAT_POST_MESSAGE, Reply(json={"ok": False, "error": "missing_scope", "needed": "chat:write"})
    )
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        [run] = await finished_runs(client, "command.start")
    [reply] = messages(response)
    assert reply.endswith(
        " Slack was not told: SLACK_BOT_TOKEN lacks the chat:write scope: the operator must add it under OAuth & "
        "Permissions and reinstall the app."
    ), reply
    assert run["error"] == (
        "SLACK_BOT_TOKEN lacks the chat:write scope. Add it under OAuth & Permissions and reinstall the app."
    ), run


async def test_the_api_answers_keep_the_api_wording_byte_for_byte(w, make_client):
    w.toggl.fail_start = 403
    w.twilio.mock.post(f"{TWILIO_BASE}{MESSAGES_PATH}").mock(
        return_value=httpx.Response(401, json={"code": 20003, "message": "Authenticate", "status": 401})
    )
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: gemini_bad_key())
        settings = w.settings(
            anthropic_api_key=None,
            gemini_api_key=GEMINI_KEY,
            gemini_base_url=gemini.url,
            slack_bot_token="xoxb-revoked",
        )
        async with make_client(**settings) as client:
            asked = await client.post("/ai-process", json={"text": "hello"})
            started = await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})
            notified = await client.post("/slack-notify", json={"message": "hello"})
            sent = await client.post("/whatsapp-send", json={"to": OWNER, "body": "hello"})
    assert asked.status_code == 502, asked.json()
    assert asked.json()["detail"] == f"Every LLM provider failed. gemini: {GEMINI_REFUSED}{API_GEMINI_FIX}"
    assert started.status_code == 502, started.json()
    assert started.json()["detail"] == f"{TOGGL_REFUSED.format(status=403)}{API_TOGGL_FIX}"
    assert notified.status_code == 502, notified.json()
    assert notified.json()["detail"] == f"Slack refused the token (invalid_auth). Check{SLACK_CHECK}"
    assert sent.status_code == 502, sent.json()
    assert sent.json()["detail"] == (
        "Twilio refused the credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN. (Twilio 20003: Authenticate)"
    )


async def test_a_slack_brief_toggl_refuses_the_token_of_words_its_reply_and_summary_for_the_chat(w, make_client):
    w.toggl.fail_start = 401
    async with make_client(**w.settings()) as client:
        await post(client, callback(mention("<@UBOT> brief")))
        await wait_for(lambda: len(_thread_replies(w)) == 1)
        [run] = await finished_runs(client, "briefing")
    [reply] = _thread_replies(w)
    [summary] = [sent["text"] for sent in w.slack.posts if sent["text"].startswith("*Morning briefing*")]
    refused = f"502 upstream-error: {TOGGL_REFUSED.format(status=401)}"
    assert f"Timer not started: {refused}{CHAT_TOGGL_FIX}" in reply, reply
    assert f"*Timer*: not started ({refused}{CHAT_TOGGL_FIX})" in summary, summary
    for text in (reply, summary):
        _chat_only(text)
    [timer] = [step for step in run["result"]["steps"] if step["name"] == "timer"]
    assert timer["detail"] == f"{refused}{API_TOGGL_FIX}", timer
