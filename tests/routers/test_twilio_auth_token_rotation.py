"""TWILIO_AUTH_TOKEN rotated without downtime, as Twilio documents it: a secondary Auth Token authenticates REST API
requests from its creation on, webhooks stay signed with the primary until the secondary is promoted, and the old
primary is refused from the promotion on. So TWILIO_AUTH_TOKEN may list `<secondary>,<primary>`: the FIRST token
sends (HTTP Basic), and a webhook signed with ANY listed token passes. Each token is a secret on its own."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
import pytest
import respx

from core.errors import ConfigurationError
from core.log import configure_logging
from core.secrets import REDACTED
from core.settings import load_settings
from tests.docs.test_readme_webhook_snippet import _snippet
from tests.routers.test_whatsapp_shared_key_signature import START, messages
from tests.routers.test_whatsapp_status import PUBLIC, post_status, status_form
from tests.workflows.world import (
    MESSAGES_PATH,
    OWNER,
    TWILIO_BASE,
    TWILIO_SID,
    TWILIO_TOKEN,
    finished_runs,
    post_whatsapp,
    runs_of,
    twilio_signature,
    whatsapp_form,
    world,
)

PRIMARY = TWILIO_TOKEN
SECONDARY = "twilio-secondary-auth-token-0123"
ROTATING = f"{SECONDARY},{PRIMARY}"
WEBHOOK_URL = "http://testserver/whatsapp-webhook"


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"{TWILIO_SID}:{token}".encode()).decode()


def twilio_requests(w) -> list[httpx.Request]:
    """What reached Twilio's REST API (the world's respx router also passes the loopback fakes' traffic)."""
    return [call.request for call in w.twilio.mock.calls if call.request.url.host == "twilio.test"]


# --- Settings ----------------------------------------------------------------------------------------------


def test_every_listed_token_is_one_value_the_first_sends_and_none_is_shown():
    settings = load_settings(_env_file=None, twilio_auth_token=f"{SECONDARY}, {PRIMARY}\n")
    assert [token.get_secret_value() for token in settings.twilio_auth_tokens] == [SECONDARY, PRIMARY]
    assert settings.twilio_sending_token.get_secret_value() == SECONDARY
    shown = repr(settings) + str(settings.model_dump()) + repr(settings.twilio_auth_tokens)
    assert SECONDARY not in shown and PRIMARY not in shown


def test_a_single_token_is_the_one_that_sends_and_verifies():
    settings = load_settings(_env_file=None, twilio_auth_token=PRIMARY)
    assert [token.get_secret_value() for token in settings.twilio_auth_tokens] == [PRIMARY]
    assert settings.twilio_sending_token.get_secret_value() == PRIMARY
    unset = load_settings(_env_file=None)
    assert (unset.twilio_auth_tokens, unset.twilio_sending_token) == ((), None)


@pytest.mark.parametrize(
    ("value", "position"),
    [
        (f"{SECONDARY},", "value 2 of 2"),
        (f",{PRIMARY}", "value 1 of 2"),
        (f"{SECONDARY},,{PRIMARY}", "value 2 of 3"),
        (f"{SECONDARY}, ,{PRIMARY}", "value 2 of 3"),
    ],
)
def test_an_empty_token_in_the_list_stops_start_up_naming_the_setting_not_the_tokens(monkeypatch, value, position):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings(_env_file=None)
    message = str(refused.value)
    assert message.startswith(f"Invalid configuration: TWILIO_AUTH_TOKEN: {position} (separated by commas) is empty")
    assert SECONDARY not in message and PRIMARY not in message


def test_a_token_of_only_blanks_stops_start_up(monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", " \t ")
    with pytest.raises(ConfigurationError, match=r"(?is)TWILIO_AUTH_TOKEN.*only blanks"):
        load_settings(_env_file=None)


# --- The rotation, end to end ----------------------------------------------------------------------------


async def test_the_documented_rotation_sends_and_verifies_without_a_refusal(w, make_client):
    """Twilio, faked: before the promotion it takes both tokens for API calls and signs with the primary; after it,
    only the new primary (the former secondary) is taken, and it signs with that. Set to `<secondary>,<primary>`,
    the service sends and verifies in both phases."""
    promoted = False

    def create(request: httpx.Request) -> httpx.Response:
        taken = [basic(SECONDARY)] if promoted else [basic(SECONDARY), basic(PRIMARY)]
        if request.headers.get("authorization") not in taken:
            return httpx.Response(401, json={"code": 20003, "message": "Authenticate", "status": 401})
        return httpx.Response(201, json={"sid": "SM" + "0" * 32, "status": "queued"})

    w.twilio.mock.post(f"{TWILIO_BASE}{MESSAGES_PATH}").mock(side_effect=create)  # replaces the world's route
    async with make_client(**w.settings(twilio_auth_token=ROTATING)) as client:
        sent_before = await client.post("/whatsapp-send", json={"to": OWNER, "body": "before the promotion"})
        form = whatsapp_form(START, sid="SM" + "b" * 32)
        signed_before = await post_whatsapp(client, form, signature=twilio_signature(WEBHOOK_URL, form, PRIMARY))
        promoted = True
        sent_after = await client.post("/whatsapp-send", json={"to": OWNER, "body": "after the promotion"})
        form = whatsapp_form("stop", sid="SM" + "c" * 32)
        signed_after = await post_whatsapp(client, form, signature=twilio_signature(WEBHOOK_URL, form, SECONDARY))
    assert [sent_before.status_code, sent_after.status_code] == [200, 200], sent_after.text
    assert messages(signed_before)[0].startswith("Started 'Deep work'")
    assert messages(signed_after)[0].startswith("Stopped 'Deep work'")
    # Only the first token ever went out, never the old primary nor the list whole.
    assert {request.headers["authorization"] for request in twilio_requests(w)} == {basic(SECONDARY)}


@pytest.mark.parametrize("signed_with", [PRIMARY, SECONDARY], ids=["primary", "secondary"])
async def test_a_webhook_signed_with_any_listed_token_is_acted_on(w, make_client, signed_with):
    form = whatsapp_form(START)
    async with make_client(**w.settings(twilio_auth_token=f"{SECONDARY}, {PRIMARY}")) as client:
        response = await post_whatsapp(client, form, signature=twilio_signature(WEBHOOK_URL, form, signed_with))
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert [start["description"] for start in w.toggl.starts] == ["Deep work"]


@pytest.mark.parametrize("signed_with", [PRIMARY, SECONDARY], ids=["primary", "secondary"])
async def test_a_status_callback_signed_with_any_listed_token_is_recorded(w, make_client, signed_with):
    form = status_form("SM" + "d" * 32, "undelivered", code="63016")
    settings = w.settings(public_base_url=PUBLIC, twilio_auth_token=ROTATING)
    async with make_client(send_api_key=True, **settings) as client:
        signature = twilio_signature(f"{PUBLIC}/whatsapp-status", form, signed_with)
        response = await post_status(client, form, signature=signature)
        [run] = await finished_runs(client, "whatsapp.delivery")
    assert response.status_code == 204
    assert run["input_summary"]["message_sid"] == "SM" + "d" * 32


async def test_a_webhook_signed_with_no_listed_token_is_refused(w, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.whatsapp_webhook")
    form = whatsapp_form(START)
    async with make_client(**w.settings(twilio_auth_token=ROTATING)) as client:
        # Neither token, nor the list whole taken as one token.
        forged = await post_whatsapp(client, form, signature=twilio_signature(WEBHOOK_URL, form, "no-ones-token"))
        whole = await post_whatsapp(client, form, signature=twilio_signature(WEBHOOK_URL, form, ROTATING))
        callback = status_form("SM" + "e" * 32, "failed")
        status = await post_whatsapp(
            client,
            callback,
            path="/whatsapp-status",
            signature=twilio_signature("http://testserver/whatsapp-status", callback, ROTATING),
        )
        await asyncio.sleep(0.1)
        assert await runs_of(client, "whatsapp.delivery") == []
    assert [forged.status_code, whole.status_code, status.status_code] == [403, 403, 403]
    # A secondary that was not promoted signs nothing (Twilio error 57012): the 403 says which token signs.
    assert "primary auth token" in forged.json()["detail"]
    assert w.toggl.starts == []
    for secret in (PRIMARY, SECONDARY):
        assert secret not in caplog.text and secret not in forged.text


async def test_every_listed_token_is_tried_whichever_signed(w, make_client, monkeypatch):
    """No early exit: a webhook signed with the first token is checked against the second too, so the time of
    the answer does not say which token signed it."""
    from routers import whatsapp_webhook

    tried: list[str] = []

    class CountingValidator(whatsapp_webhook.RequestValidator):
        def validate(self, *args: object, **kwargs: object) -> bool:
            tried.append("checked")
            return super().validate(*args, **kwargs)

    monkeypatch.setattr(whatsapp_webhook, "RequestValidator", CountingValidator)
    form = whatsapp_form(START)
    async with make_client(**w.settings(twilio_auth_token=ROTATING)) as client:
        response = await post_whatsapp(client, form, signature=twilio_signature(WEBHOOK_URL, form, SECONDARY))
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert tried == ["checked", "checked"]


async def test_a_single_token_with_blanks_around_it_sends_and_verifies_without_them(w, make_client):
    """As for the other listed secrets: blanks around a value are layout. `TWILIO_AUTH_TOKEN=" <token> "` sent the
    blanks as part of the Basic password and keyed the signature check with them, so Twilio refused every message
    and every webhook was a 403."""
    form = whatsapp_form(START)
    async with make_client(**w.settings(twilio_auth_token=f" {PRIMARY}\t")) as client:
        sent = await client.post("/whatsapp-send", json={"to": OWNER, "body": "hello"})
        response = await post_whatsapp(client, form, signature=twilio_signature(WEBHOOK_URL, form, PRIMARY))
    assert sent.status_code == 200, sent.text
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert {request.headers["authorization"] for request in twilio_requests(w)} == {basic(PRIMARY)}


async def test_the_readme_snippet_signs_with_a_listed_token(w, make_client, monkeypatch):
    """The README's "Trying a webhook" snippet reads the token with Settings(): with a list it must sign with one
    token, not the list whole."""
    sender = re.search(r'"From": "whatsapp:(\+\d+)"', _snippet()).group(1)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", ROTATING)  # the snippet reads it with Settings(), as from .env
    loop = asyncio.get_running_loop()
    printed: list[str] = []
    settings = w.settings(
        public_base_url="http://localhost:8000", twilio_auth_token=ROTATING, whatsapp_allowed_senders=sender
    )
    async with make_client(**settings) as client:

        def post(url: str, *, data: dict[str, str], headers: dict[str, str]) -> httpx.Response:
            sent = client.post(url.removeprefix("http://localhost:8000"), data=data, headers=headers)
            return asyncio.run_coroutine_threadsafe(sent, loop).result(timeout=10)

        monkeypatch.setattr(httpx, "post", post)
        code = compile(_snippet(), "README.md", "exec")
        await asyncio.to_thread(exec, code, {"print": printed.append})
    [answer] = printed
    assert [message.text for message in ElementTree.fromstring(answer).findall("Message")] == ["No timer is running."]


# --- Every token is a secret ---------------------------------------------------------------------------


def test_the_second_token_is_scrubbed_in_every_form(make_settings):
    settings = make_settings(twilio_account_sid=TWILIO_SID, twilio_auth_token=ROTATING)
    for scrubber in (settings.secret_scrubber, settings.answer_scrubber):
        assert scrubber.scrub(f"token {PRIMARY}!") == f"token {REDACTED}!"
        assert scrubber.scrub(f"?t={quote(PRIMARY + '/', safe='')}") == f"?t={REDACTED}%2F"
        assert scrubber.scrub(base64.b64encode(PRIMARY.encode()).decode()) == REDACTED
        assert scrubber.scrub(SECONDARY) == REDACTED
    # The Basic credential the service sent with either token (the old one until this restart).
    for token in (SECONDARY, PRIMARY):
        assert settings.secret_scrubber.scrub(basic(token)) == f"Basic {REDACTED}"


def test_the_basic_credential_of_each_listed_token_is_scrubbed_even_for_a_short_token(make_settings):
    """A token too short for its own base64 to be searched inside a longer base64 value is caught by the exact
    `SID:token` pair sent as HTTP Basic: one pair per listed token, not one of the list whole (never sent)."""
    settings = make_settings(twilio_account_sid=TWILIO_SID, twilio_auth_token="tok1a,tok2b")
    for token in ("tok1a", "tok2b"):
        assert settings.secret_scrubber.scrub(basic(token)) == f"Basic {REDACTED}"


async def test_the_second_token_reaches_no_problem_body_ledger_row_or_log_line(make_client, capsys):
    """Twilio (or a gateway before it) echoes the second token in an error: it is masked in the 502, the ledger's
    failed action and run, and the log."""
    echo = {"code": 21606, "message": f"From is not a sender of credential {PRIMARY}", "status": 400}
    settings = {
        "twilio_account_sid": TWILIO_SID,
        "twilio_auth_token": ROTATING,
        "twilio_base_url": TWILIO_BASE,
        "log_format": "json",
    }
    try:
        with respx.mock(assert_all_called=False) as mock:
            mock.post(f"{TWILIO_BASE}{MESSAGES_PATH}").mock(return_value=httpx.Response(400, json=echo))
            async with make_client(**settings) as client:
                problem = await client.post("/whatsapp-send", json={"to": OWNER, "body": "hello"})
                [run] = await runs_of(client, "whatsapp.send")
                logging.getLogger("orchestrator.test").warning("Twilio echoed %s and %s", PRIMARY, SECONDARY)
        logged = capsys.readouterr().err
    finally:
        configure_logging(level="INFO", fmt="text", secrets=[])
    assert problem.status_code == 502
    assert f"credential {REDACTED}" in problem.json()["detail"]
    assert f"credential {REDACTED}" in run["error"] and f"credential {REDACTED}" in run["actions"][0]["error"]
    assert f"Twilio echoed {REDACTED} and {REDACTED}" in logged
    stored = json.dumps(run)
    for secret in (PRIMARY, SECONDARY):
        assert secret not in problem.text and secret not in stored and secret not in logged
