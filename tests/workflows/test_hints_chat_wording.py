"""An address hint, told in the words of whoever reads it.

A provider or skill whose base URL did not answer as expected ended its detail with the operator's remedy, "Check
GEMINI_BASE_URL.", "check TOGGL_BASE_URL (the API v9 base, ...)", and the chat replies relayed it: a person on
WhatsApp or Slack was told to check a setting only the operator can change. The chat replies now ask the operator
to check it (`core.errors.operator_checks`, `OPERATOR_CHECKS`); the API answers and the ledger's rows (GET /runs)
keep the API wording, from the same sentence. A chat question without any language model said "The assistant is
not configured: No LLM provider is set up yet: ..."; it now says the assistant is not set up yet, and what the
operator must set. Each chat test reads what reached the fake Twilio (the reply's TwiML) or the fake Slack.
"""

from __future__ import annotations

import pytest

from tests.fakes.llm import OPENAI_PATH, FakeGemini, FakeOpenAI
from tests.fakes.server import Reply
from tests.fakes.slack import CHAT_POST_MESSAGE
from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_whatsapp_webhook import messages
from tests.workflows.test_credential_errors_chat_wording import GEMINI_KEY, _chat_only
from tests.workflows.test_planned_stop_errors_in_chat_words import _thread_replies
from tests.workflows.world import finished_runs, post_whatsapp, wait_for, whatsapp_form, world

TOGGL_404 = "Toggl has no such workspace or time entry (404); if every Toggl call answers this, "
TOGGL_BASE = (
    " TOGGL_BASE_URL (the API v9 base, https://api.track.toggl.com/api/v9). Toggl said: Toggl is having a bad day."
)
SLACK_NOT_JSON = "Slack answered HTTP 404 without a usable JSON body: "
SLACK_BASE = " SLACK_BASE_URL (the Web API root, https://slack.com/api/)."
LOCAL_HINT = " LOCAL_LLM_BASE_URL (version included, e.g. http://localhost:11434/v1) and LOCAL_LLM_MODEL."
LLM_NAMES = "GEMINI_API_KEY or ANTHROPIC_API_KEY (or LOCAL_LLM_BASE_URL and LOCAL_LLM_MODEL for a local model)"


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def _slack_not_json() -> Reply:
    # What a SLACK_BASE_URL without its api/ answers: a web page, not Slack's {"ok": false}.
    return Reply(404, text="<html>Page not found</html>", content_type="text/html")


async def test_a_whatsapp_question_gemini_cannot_be_reached_at_says_ask_the_operator(w, make_client):
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: Reply(drop=True))
        settings = w.settings(
            anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url, llm_max_attempts=1
        )
        async with make_client(**settings) as client:
            response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
            [run] = await finished_runs(client, "inbound.chat")
    [reply] = messages(response)
    assert reply.startswith("The assistant could not answer: Every LLM provider failed. gemini: gemini "), reply
    assert reply.endswith("). Ask the operator to check GEMINI_BASE_URL."), reply
    _chat_only(reply)
    # GET /runs is read by whoever runs the service: the failed action keeps the API wording.
    [action] = run["actions"]
    assert action["error"].endswith("). Check GEMINI_BASE_URL."), action


async def test_a_slack_question_the_local_model_does_not_know_says_ask_the_operator(w, make_client):
    async with FakeOpenAI() as local:
        local.route("POST", OPENAI_PATH, lambda _: Reply(404, json={"error": {"message": "model 'llama' not found"}}))
        settings = w.settings(
            anthropic_api_key=None, local_llm_base_url=local.base_url, local_llm_model="llama", llm_max_attempts=1
        )
        async with make_client(**settings) as client:
            await post(client, callback(mention("<@UBOT> what should I do first?")))
            await wait_for(lambda: len(_thread_replies(w)) == 1)
            [run] = await finished_runs(client, "inbound.chat")
    [reply] = _thread_replies(w)  # the text chat.postMessage received
    said = "local does not know the model or endpoint (model 'llama' not found)."
    assert reply == (
        f"The assistant could not answer: Every LLM provider failed. local: {said} Ask the operator to check"
        f"{LOCAL_HINT}"
    ), reply
    _chat_only(reply)
    [action] = run["actions"]
    assert action["error"] == f"502 llm-providers-failed: Every LLM provider failed. local: {said} Check{LOCAL_HINT}"


async def test_a_whatsapp_question_claude_cannot_be_reached_at_says_ask_the_operator(w, make_client):
    w.claude.fail = Reply(drop=True)
    async with make_client(**w.settings(llm_max_attempts=1)) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
        [run] = await finished_runs(client, "inbound.chat")
    [reply] = messages(response)
    assert reply.endswith("). Ask the operator to check ANTHROPIC_BASE_URL."), reply
    _chat_only(reply)
    [action] = run["actions"]
    assert action["error"].endswith("). Check ANTHROPIC_BASE_URL."), action


async def test_a_whatsapp_start_toggl_answers_404_to_says_ask_the_operator_to_check_the_base_url(w, make_client):
    w.toggl.fail_start = 404
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        [run] = await finished_runs(client, "command.start")
    assert messages(response) == [f"Could not start the timer: {TOGGL_404}ask the operator to check{TOGGL_BASE}"]
    _chat_only(response.text)
    [action] = [action for action in run["actions"] if action["skill"] == "toggl"]
    assert action["error"] == f"404 not-found: {TOGGL_404}check{TOGGL_BASE}", action


async def test_a_whatsapp_start_slack_answers_a_web_page_to_says_ask_the_operator(w, make_client):
    w.slack.queue("POST", CHAT_POST_MESSAGE, _slack_not_json())
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start focus for 10 min"))
        [run] = await finished_runs(client, "command.start")
    [reply] = messages(response)
    assert reply.startswith("Started 'focus' at "), reply
    assert reply.endswith(f" Slack was not told: {SLACK_NOT_JSON}ask the operator to check{SLACK_BASE}"), reply
    _chat_only(reply)
    assert run["error"] == f"{SLACK_NOT_JSON}check{SLACK_BASE}", run


async def test_a_whatsapp_brief_slack_redirects_the_summary_of_says_ask_the_operator(w, make_client):
    """The redirect guard's hint (`core.upstream.guard_refusal`), relayed by the brief's own reply."""
    w.slack.queue("POST", CHAT_POST_MESSAGE, Reply(302, headers={"Location": "http://127.0.0.1:9/elsewhere"}))
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("brief"))
        [run] = await finished_runs(client, "briefing")
    refused = "502 upstream-error: Slack answered 302, a redirect to 127.0.0.1; not followed. "
    [reply] = messages(response)
    assert f"Slack summary not posted: {refused}Ask the operator to check SLACK_BASE_URL." in reply, reply
    _chat_only(reply)
    [step] = [step for step in run["result"]["steps"] if step["name"] == "slack"]
    assert step["detail"] == f"{refused}Check SLACK_BASE_URL.", step


async def test_a_whatsapp_question_without_a_language_model_says_it_once(w, make_client):
    async with make_client(**w.settings(anthropic_api_key=None)) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
        [run] = await finished_runs(client, "inbound.chat")
    assert messages(response) == [
        f"The assistant is not set up yet: the operator must set {LLM_NAMES} in the environment or .env and restart "
        "the service."
    ]
    [action] = run["actions"]
    assert action["error"] == (
        f"503 not-configured: No LLM provider is configured: set {LLM_NAMES} in the environment or .env and restart."
    ), action


async def test_the_api_answers_keep_the_api_wording_byte_for_byte(w, make_client):
    w.toggl.fail_start = 404
    w.slack.queue("POST", CHAT_POST_MESSAGE, _slack_not_json())
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: Reply(drop=True))
        settings = w.settings(
            anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url, llm_max_attempts=1
        )
        async with make_client(**settings) as client:
            asked = await client.post("/ai-process", json={"text": "hello"})
            started = await client.post("/start-timer", json={"task_name": "Admin", "duration_minutes": 15})
            notified = await client.post("/slack-notify", json={"message": "hello"})
    assert asked.status_code == 502, asked.json()
    assert asked.json()["detail"].startswith("Every LLM provider failed. gemini: gemini "), asked.json()
    assert asked.json()["detail"].endswith("). Check GEMINI_BASE_URL.")
    assert started.status_code == 404, started.json()
    assert started.json()["detail"] == f"{TOGGL_404}check{TOGGL_BASE}"
    assert notified.status_code == 502, notified.json()
    assert notified.json()["detail"] == f"{SLACK_NOT_JSON}check{SLACK_BASE}"
