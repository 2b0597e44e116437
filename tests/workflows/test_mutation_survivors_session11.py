"""Mutation survivors of session 11 (today's per-reader wording and late-stop spans), one test per real gap.

Each test reads what reached the fake Twilio (a WhatsApp reply's TwiML), the fake Toggl, or the database.
"""

from __future__ import annotations

import pytest

from tests.fakes.llm import FakeGemini, anthropic_error, gemini_error
from tests.routers.test_whatsapp_webhook import messages
from tests.workflows.world import finished_runs, post_whatsapp, whatsapp_form, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


async def test_every_provider_out_of_quota_is_worded_for_the_chat_in_a_whatsapp_reply(w, make_client):
    """Killed `_all_failed` handing AllProvidersRateLimited the API wording (`listed.words("api")`): a spent
    quota's hint is the operator's to act on, in the rate-limited branch as in the plain failure's."""
    w.claude.fail = anthropic_error(429, "rate_limit_error", "You have reached your specified API usage limits.")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
        [run] = await finished_runs(client, "inbound.chat")
    [reply] = messages(response)
    assert reply.endswith(" Ask the operator to check ANTHROPIC_API_KEY and CLAUDE_MODEL."), reply
    assert "rate limiting us" in reply, reply
    [action] = run["actions"]
    assert action["error"].endswith("waiting will not help. Check ANTHROPIC_API_KEY and CLAUDE_MODEL."), action


async def test_a_model_claude_does_not_know_names_the_operators_settings_in_a_whatsapp_reply(w, make_client):
    """Killed `status_error` dropping its hint, or the 404's endpoint clause, or wording it for the API only: a
    chat user reads that the operator must check the key, the model and the base URL."""
    w.claude.fail = anthropic_error(404, "not_found_error", "model: claude-nonexistent")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
        [run] = await finished_runs(client, "inbound.chat")
    assert messages(response) == [
        "The assistant could not answer: Every LLM provider failed. claude: claude does not know the model or "
        "endpoint (model: claude-nonexistent). Ask the operator to check ANTHROPIC_API_KEY and CLAUDE_MODEL. The "
        "endpoint comes from ANTHROPIC_BASE_URL: ask the operator to check it too."
    ]
    [action] = run["actions"]
    assert action["error"].endswith(
        "Check ANTHROPIC_API_KEY and CLAUDE_MODEL. The endpoint comes from ANTHROPIC_BASE_URL: check it too."
    ), action


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (
            anthropic_error(400, "invalid_request_error", "Your credit balance is too low."),
            "claude refused the request for billing reasons (Your credit balance is too low.).",
        ),
        (anthropic_error(402, "payment_required", "Payment required."), "claude answered 402 (Payment required.)."),
    ],
    ids=["billing refusal (400)", "unmapped status (402)"],
)
async def test_a_refusal_names_the_operators_settings_in_a_whatsapp_reply(w, make_client, answer, said):
    """Killed `status_error` dropping the hint of a 400 refused for billing reasons, and of a status it does not
    map (here a 402), its last branch."""
    w.claude.fail = answer
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
    assert messages(response) == [
        f"The assistant could not answer: Every LLM provider failed. claude: {said} Ask the operator to check "
        "ANTHROPIC_API_KEY and CLAUDE_MODEL."
    ]


GEMINI_KEY = "AIzaSyD-test-gemini-key-000000000000000"


def _error_info(reason: str) -> list[dict]:
    return [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}]


@pytest.mark.parametrize(
    ("answer", "chat_fix", "api_fix"),
    [
        (
            gemini_error(403, "PERMISSION_DENIED", "blocked", details=_error_info("API_KEY_SERVICE_BLOCKED")),
            "the operator must allow this service on the key, or replace GEMINI_API_KEY and restart the service.",
            "or set GEMINI_API_KEY to another key and restart.",
        ),
        (
            gemini_error(403, "PERMISSION_DENIED", "disabled", details=_error_info("SERVICE_DISABLED")),
            "the operator must enable the Generative Language API and billing on it, or replace GEMINI_API_KEY and "
            "restart the service.",
            "or set GEMINI_API_KEY to a key of another project and restart.",
        ),
        (
            gemini_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
            "the operator must enable billing on the project of GEMINI_API_KEY, or run the service from a supported "
            "region.",
            ": enable billing on the project of GEMINI_API_KEY in Google AI Studio, or run the service from a "
            "supported region.",
        ),
        (
            gemini_error(404, "NOT_FOUND", "models/gemini-nonexistent is not found"),
            "Ask the operator to check GEMINI_API_KEY and GEMINI_MODEL. The endpoint comes from GEMINI_BASE_URL: ask "
            "the operator to check it too.",
            ". Check GEMINI_API_KEY and GEMINI_MODEL. The endpoint comes from GEMINI_BASE_URL: check it too.",
        ),
    ],
    ids=["blocked key", "project refused", "region", "unknown model"],
)
async def test_gemini_refusals_of_our_account_are_the_operators_in_a_whatsapp_reply(
    w, make_client, answer, chat_fix, api_fix
):
    """Killed each Gemini fix worded for the API in the chat too (blocked key, project, region), and the key
    hint not capitalized: the chat reply (TwiML) says the operator must act, GET /runs keeps the API wording."""
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: answer)
        settings = w.settings(anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)
        async with make_client(**settings) as client:
            response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
            [run] = await finished_runs(client, "inbound.chat")
    [reply] = messages(response)
    assert reply.startswith("The assistant could not answer: Every LLM provider failed. gemini: "), reply
    assert reply.endswith(" " + chat_fix), reply
    assert "restart." not in reply.replace("restart the service.", ""), reply
    [action] = run["actions"]
    assert action["error"].endswith(api_fix), action


def test_failed_firings_skips_a_span_not_a_pair_of_aware_times():
    """Killed `failed_firings` catching ValueError only (a span that is no sequence raises TypeError), accepting a
    span with one naive end (`or` for `and`: the skill's comparison with Toggl's aware stop would then raise and
    fail the stop itself), and not reading a null list as none."""
    from datetime import UTC, datetime

    from workflows.scheduler import FAILED_FIRINGS, failed_firings

    began, failed = datetime(2026, 11, 25, 9, 0, tzinfo=UTC), datetime(2026, 11, 25, 9, 1, tzinfo=UTC)
    payload = {
        FAILED_FIRINGS: [
            5,
            None,
            [began.isoformat(), "2026-11-25T09:01:00"],
            ["2026-11-25T09:00:00", failed.isoformat()],
            [began.isoformat(), failed.isoformat()],
        ]
    }
    assert failed_firings(payload) == [(began, failed)]
    assert failed_firings({FAILED_FIRINGS: None}) == []
