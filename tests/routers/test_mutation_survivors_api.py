"""Tests for mutants of the API routers that the rest of the suite let through (a hand mutation review).

Each test names the mutant it kills: the behaviour it pins is one a caller or an operator would notice.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from skills.whatsapp import MAX_BODY_CHARS, MAX_PARTS
from tests.fakes.llm import FakeAnthropic, FakeGemini, gemini_content, gemini_prompt
from tests.fakes.server import Reply
from tests.fakes.slack import FakeSlack

GEMINI_KEY = "test-gemini-key-mutation-0001"
ANTHROPIC_KEY = "test-anthropic-key-mutation-0001"


@pytest.fixture
async def llms() -> AsyncIterator[tuple[FakeGemini, FakeAnthropic]]:
    async with FakeGemini() as gemini, FakeAnthropic() as claude:
        yield gemini, claude


@pytest.fixture
def ai_client(make_client, llms):
    gemini, claude = llms

    def _make(**overrides: Any):
        values = {
            "gemini_api_key": GEMINI_KEY,
            "anthropic_api_key": ANTHROPIC_KEY,
            "gemini_base_url": gemini.url,
            "anthropic_base_url": claude.url,
            "llm_timeout_seconds": 2.0,
        }
        return make_client(**{**values, **overrides})

    return _make


async def _runs(client, kind: str) -> list[dict[str, Any]]:
    page = (await client.get("/runs", params={"kind": kind})).json()
    return [(await client.get(f"/runs/{item['id']}")).json() for item in page["items"]]


# --- POST /ai-process -------------------------------------------------------------------------------------------


async def test_blank_text_is_refused_before_a_run_is_recorded(ai_client, llms):
    """Mutant: the request model's whitespace check dropped. The AIRouter refuses blank text too, but only after a
    failed `ai.process` run was written for a request that never was one."""
    gemini, claude = llms
    async with ai_client() as client:
        response = await client.post("/ai-process", json={"text": "  \n "})
        runs = await _runs(client, "ai.process")
    assert response.status_code == 422
    assert "whitespace" in response.text
    assert runs == []
    assert gemini.calls() == [] and claude.calls() == []


@pytest.mark.parametrize(("max_tokens", "status"), [(65_536, 200), (65_537, 422)])
async def test_max_tokens_upper_bound_is_exact(ai_client, llms, max_tokens, status):
    """Mutant: `le=65_536` moved by one; a cap above the documented one reached the provider."""
    gemini, _ = llms
    async with ai_client() as client:
        response = await client.post("/ai-process", json={"text": "hello there", "max_tokens": max_tokens})
    assert response.status_code == status, response.text
    sent = [call.json["generationConfig"]["maxOutputTokens"] for call in gemini.calls()]
    assert sent == ([65_536] if status == 200 else [])


async def test_the_ledger_counts_the_prompt_as_sent_whitespace_included(ai_client, llms):
    """Mutant: `text_chars` counted the stripped text; the ledger must describe the prompt that was sent."""
    gemini, _ = llms
    text = "  Plan my morning \n"
    async with ai_client() as client:
        assert (await client.post("/ai-process", json={"text": text})).status_code == 200
        [run] = await _runs(client, "ai.process")
    assert gemini_prompt(gemini.calls()[0]) == text
    summary = run["input_summary"]
    assert summary["text_chars"] == len(text) == 19
    assert summary["text_words"] == 3
    assert summary["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()


async def test_a_refusal_is_flagged_in_the_answer_and_the_ledger(ai_client, llms):
    """Mutant: `refused` recorded as False in the run's result; the ledger showed a refusal as a whole answer."""
    gemini, claude = llms
    stopped = gemini_content("I can't help with that")
    stopped["candidates"][0]["finishReason"] = "SAFETY"
    gemini.queue("POST", gemini.path, Reply(200, json=stopped))
    async with ai_client() as client:
        body = (await client.post("/ai-process", json={"text": "Plan my morning"})).json()
        [run] = await _runs(client, "ai.process")
    assert (body["refused"], body["truncated"]) == (True, False)
    assert (run["result"]["refused"], run["result"]["truncated"]) == (True, False)
    assert len(gemini.calls()) == 1 and claude.calls() == []


async def test_a_dry_run_is_marked_in_the_ledgers_input_summary(ai_client, llms):
    """Mutant: `dry_run` left out of the input summary; a failed rehearsal would read as a failed real call."""
    gemini, claude = llms
    async with ai_client() as client:
        dry = await client.post("/ai-process?dry_run=true", json={"text": "hello"})
        real = await client.post("/ai-process", json={"text": "hello"})
        runs = {run["id"]: run for run in await _runs(client, "ai.process")}
    assert dry.status_code == real.status_code == 200
    assert runs[dry.json()["run_id"]]["input_summary"]["dry_run"] is True
    assert "dry_run" not in runs[real.json()["run_id"]]["input_summary"]
    assert len(gemini.calls()) == 1 and claude.calls() == []


# --- POST /slack-notify -----------------------------------------------------------------------------------------

SLACK_TOKEN = "xoxb-mutation-test-token"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=SLACK_TOKEN) as server:
        yield server


@pytest.fixture
def slack_client(make_client, slack):
    def _make(**overrides: Any):
        values = {"slack_bot_token": SLACK_TOKEN, "slack_base_url": slack.base_url, "slack_default_channel": "#general"}
        return make_client(**{**values, **overrides})

    return _make


async def test_a_channel_is_posted_without_its_surrounding_spaces(slack_client, slack):
    """Mutant: the channel validator returned the value unstripped; Slack answered channel_not_found for
    ` #alerts ` (a 404 for a channel that exists)."""
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi", "channel": "  #alerts "})
        [run] = await _runs(client, "slack.notify")
    assert response.status_code == 200, response.text
    assert slack.posts == [{"channel": "#alerts", "text": "hi"}]
    assert run["input_summary"]["channel"] == "#alerts"


@pytest.mark.parametrize("channel", [" ", "\t\n"])
async def test_a_blank_channel_is_422_not_a_post_to_the_default_channel(slack_client, slack, channel):
    """Mutant: the blank check reduced to `not value`; `"  "` was stripped to nothing and the message went to
    SLACK_DEFAULT_CHANNEL, a channel the caller never named."""
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi", "channel": channel})
        runs = await _runs(client, "slack.notify")
    assert response.status_code == 422
    assert "SLACK_DEFAULT_CHANNEL" in response.text
    assert slack.requests == [] and runs == []


@pytest.mark.parametrize("thread_ts", ["1732521600.000100x", "1732521600.000100\n", "1.2 3"])
async def test_a_thread_ts_with_a_tail_is_422(slack_client, slack, thread_ts):
    """Mutant: the `$` anchor dropped from the thread_ts pattern; a malformed ts was posted."""
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi", "thread_ts": thread_ts})
    assert response.status_code == 422
    assert slack.requests == []


# --- POST /whatsapp-send ----------------------------------------------------------------------------------------

TWILIO_SID = "AC00000000000000000000000000000001"
TWILIO_BASE = "http://twilio.test"
TWILIO_PATH = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"


@pytest.fixture
def twilio() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=TWILIO_BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def wa_client(make_client):
    def _make(**overrides: Any):
        values = {"twilio_account_sid": TWILIO_SID, "twilio_auth_token": "twilio-mutation-secret"}
        return make_client(**{**values, "twilio_base_url": TWILIO_BASE, **overrides})

    return _make


def _created(sid: str) -> httpx.Response:
    return httpx.Response(201, json={"sid": sid, "status": "queued"})


def _sent_bodies(route: respx.Route) -> list[str]:
    return [dict(parse_qsl(call.request.content.decode()))["Body"] for call in route.calls]


async def test_a_whitespace_body_is_422_before_a_run_or_a_send(wa_client, twilio):
    """Mutant: the `not parts` check dropped from the body validator."""
    route = twilio.post(TWILIO_PATH).mock(return_value=_created("SM1"))
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": " \n\t "})
        runs = await _runs(client, "whatsapp.send")
    assert response.status_code == 422
    assert "whitespace" in response.text
    assert not route.called and runs == []


async def test_a_body_of_exactly_max_parts_messages_is_sent_whole(wa_client, twilio):
    """Mutant: `len(parts) > MAX_PARTS` became `>=`; a body of exactly MAX_PARTS messages was refused."""
    route = twilio.post(TWILIO_PATH).mock(side_effect=[_created(f"SM{n}") for n in range(MAX_PARTS)])
    body = "x" * (MAX_BODY_CHARS * MAX_PARTS)
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": body})
    assert response.status_code == 200, response.text
    assert response.json()["parts"] == MAX_PARTS
    assert response.json()["sids"] == [f"SM{n}" for n in range(MAX_PARTS)]
    assert _sent_bodies(route) == ["x" * MAX_BODY_CHARS] * MAX_PARTS


async def test_one_message_over_max_parts_is_422_naming_the_count(wa_client, twilio):
    route = twilio.post(TWILIO_PATH).mock(return_value=_created("SM1"))
    body = ("a" * 800 + " ") * 19  # one 800-character word per message: 19 messages
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": body})
    assert response.status_code == 422
    assert f"needs 19 WhatsApp messages; the limit is {MAX_PARTS}" in response.text
    assert not route.called


async def test_the_ledger_summary_names_the_recipient_and_the_length(wa_client, twilio):
    """Mutants: `to` and `body_chars` dropped from the input summary (the ledger is how a send is audited)."""
    twilio.post(TWILIO_PATH).mock(return_value=_created("SM1"))
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "Standup in 5"})
        [run] = await _runs(client, "whatsapp.send")
    assert response.status_code == 200
    assert run["input_summary"] == {"to": "+15551234567", "body_chars": 12}


async def test_a_dry_run_send_is_not_replayed_as_a_real_one(wa_client, twilio):
    """Mutant: `dry_run` left out of the idempotency fingerprint; the real send with the rehearsal's key was
    answered with the rehearsal (`sids: []`) and nothing was sent."""
    route = twilio.post(TWILIO_PATH).mock(return_value=_created("SM1"))
    headers = {"Idempotency-Key": "wa-dry-0001"}
    request = {"to": "+15551234567", "body": "hi"}
    async with wa_client() as client:
        dry = await client.post("/whatsapp-send?dry_run=true", json=request, headers=headers)
        real = await client.post("/whatsapp-send", json=request, headers=headers)
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    assert real.status_code == 422, "same key, different request: the dry run must not stand in for the send"
    assert "idempotent-replayed" not in real.headers
    assert not route.called
