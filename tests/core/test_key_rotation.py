"""Key rotation without downtime: APP_API_KEY and TWILIO_WEBHOOK_SHARED_KEY may list several values separated by
commas (add the new key, move the clients over, drop the old one), any of which is accepted. Each value is held
to the rules of a single one, is a secret (never shown, scrubbed everywhere), and the per-client rate limit stays
per key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from core import auth
from core.auth import RequireApiKey
from core.errors import ConfigurationError, UpstreamError, add_exception_handlers
from core.ledger import Ledger
from core.log import configure_logging
from core.ratelimit import RateLimitDep
from core.secrets import REDACTED
from core.settings import Settings, load_settings
from core.store import create_engine, migrate, session_factory
from tests.routers.test_whatsapp_shared_key_signature import (
    SHARED_KEY,
    START,
    URL,
    messages,
    post,
    shared_key_headers,
    sign,
)
from tests.workflows.world import whatsapp_form, world

OLD_KEY = "old-api-key-0123456789abcdef"
NEW_KEY = "new-api-key-fedcba9876543210"
NEW_SHARED_KEY = "webhook-shared-key-secret-NEW-987654"

# --- Settings ----------------------------------------------------------------------------------------------


def test_every_listed_key_is_one_value_and_none_is_shown():
    settings = load_settings(
        _env_file=None,
        app_api_key=f"{OLD_KEY}, {NEW_KEY}\n",  # spaces around a comma and a file's newline are layout
        twilio_webhook_shared_key=f"{SHARED_KEY},{NEW_SHARED_KEY}",
    )
    assert [key.get_secret_value() for key in settings.app_api_keys] == [OLD_KEY, NEW_KEY]
    assert [key.get_secret_value() for key in settings.twilio_webhook_shared_keys] == [SHARED_KEY, NEW_SHARED_KEY]
    # Still SecretStr, so neither the settings' repr nor a dump shows a key.
    assert isinstance(settings.app_api_key, SecretStr) and isinstance(settings.twilio_webhook_shared_key, SecretStr)
    shown = repr(settings) + str(settings.model_dump()) + repr(settings.app_api_keys)
    for secret in (OLD_KEY, NEW_KEY, SHARED_KEY, NEW_SHARED_KEY):
        assert secret not in shown


def test_a_single_value_is_one_key_without_the_blanks_around_it():
    """One value is one key. Blanks around it are dropped: a header's value is read without them, so a key of
    " one key " started and no request could ever match it. The blanks inside are the key's own."""
    settings = load_settings(_env_file=None, app_api_key=" one key \t\n", twilio_webhook_shared_key=SHARED_KEY)
    assert [key.get_secret_value() for key in settings.app_api_keys] == ["one key"]
    assert settings.app_api_key.get_secret_value() == "one key"
    assert [key.get_secret_value() for key in settings.twilio_webhook_shared_keys] == [SHARED_KEY]
    assert load_settings(_env_file=None).app_api_keys == ()


@pytest.mark.parametrize("setting", ["APP_API_KEY", "TWILIO_WEBHOOK_SHARED_KEY"])
@pytest.mark.parametrize(
    ("value", "position"),
    [
        (f"{OLD_KEY},", "value 2 of 2"),  # a trailing comma
        (f",{OLD_KEY}", "value 1 of 2"),
        (f"{OLD_KEY},,{NEW_KEY}", "value 2 of 3"),
        (f"{OLD_KEY}, ,{NEW_KEY}", "value 2 of 3"),
        (f"{OLD_KEY},\n", "value 2 of 2"),  # a value of nothing but a line break
        (f"{OLD_KEY},\r\n,{NEW_KEY}", "value 2 of 3"),
    ],
)
def test_an_empty_value_in_the_list_stops_start_up_naming_the_setting_not_the_keys(
    monkeypatch, setting, value, position
):
    """An empty value is a key someone meant to give (a trailing comma, a paste gone wrong): an error, not
    dropped, and the message never quotes a key."""
    monkeypatch.setenv(setting, value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings(_env_file=None)
    message = str(refused.value)
    assert message.startswith(f"Invalid configuration: {setting}: {position} (separated by commas) is empty")
    assert OLD_KEY not in message and NEW_KEY not in message


@pytest.mark.parametrize(
    ("exposed", "value"), [("APP_ENV", "production"), ("PUBLIC_BASE_URL", "https://abc123.ngrok.app")]
)
def test_an_exposed_service_holds_every_listed_key_to_the_minimum_length(monkeypatch, exposed, value):
    monkeypatch.setenv(exposed, value)
    monkeypatch.setenv("APP_API_KEY", f"{OLD_KEY},change-me")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(_env_file=None)
    message = str(refused.value)
    assert "APP_API_KEY is too short for" in message and "(value 2 of 2: 9 characters; at least 16)" in message
    assert "change-me" not in message and OLD_KEY not in message
    monkeypatch.setenv("APP_API_KEY", f"{OLD_KEY},{NEW_KEY}")
    assert len(load_settings(_env_file=None).app_api_keys) == 2


# --- The API key ---------------------------------------------------------------------------------------


async def test_any_listed_key_opens_the_service_and_nothing_else_does(make_client):
    async with make_client(app_api_key=f"{OLD_KEY},{NEW_KEY}") as client:
        by_old = await client.get("/runs", headers={"X-API-Key": OLD_KEY})
        by_new = await client.get("/runs", headers={"Authorization": f"Bearer {NEW_KEY}"})
        by_new_padded = await client.get("/runs", headers={"X-API-Key": f"{NEW_KEY} "})
        wrong = await client.get("/runs", headers={"X-API-Key": "not-a-key-of-the-list-000"})
        the_list = await client.get("/runs", headers={"X-API-Key": f"{OLD_KEY},{NEW_KEY}"})
        missing = await client.get("/runs")
        # Malformed JSON is refused by the key check before the body's 400/422 (core.auth.refusal_before_body):
        # with the second key it gets past that check to the body's own error.
        body_new = await client.post(
            "/slack-notify", content=b"{", headers={"X-API-Key": NEW_KEY, "Content-Type": "application/json"}
        )
        body_wrong = await client.post(
            "/slack-notify", content=b"{", headers={"X-API-Key": "nope", "Content-Type": "application/json"}
        )
    assert [by_old.status_code, by_new.status_code, by_new_padded.status_code] == [200, 200, 200]
    assert [wrong.status_code, the_list.status_code, missing.status_code] == [401, 401, 401]
    assert body_new.status_code in (400, 422) and body_wrong.status_code == 401
    for response in (wrong, the_list, missing, body_wrong):
        assert OLD_KEY not in response.text and NEW_KEY not in response.text


async def test_a_single_key_with_blanks_around_it_is_matched_by_the_key(make_client):
    """Before, `APP_API_KEY=" <key> "` started and every request got a 401: the supplied key is compared without
    the blanks a header cannot keep, and the configured one kept them."""
    async with make_client(app_api_key=f" {OLD_KEY}\t") as client:
        plain = await client.get("/runs", headers={"X-API-Key": OLD_KEY})
        bearer = await client.get("/runs", headers={"Authorization": f"Bearer {OLD_KEY}"})
    assert [plain.status_code, bearer.status_code] == [200, 200]


@pytest.mark.parametrize("setting", ["APP_API_KEY", "TWILIO_WEBHOOK_SHARED_KEY"])
def test_a_single_value_of_only_blanks_stops_start_up(monkeypatch, setting):
    """Only blanks is no key: an error naming the setting, not an unset key (which would open the service)."""
    monkeypatch.setenv(setting, " \t ")
    with pytest.raises(ConfigurationError, match=f"(?is){setting}.*only blanks"):
        load_settings(_env_file=None)


@pytest.mark.parametrize("supplied", [OLD_KEY, NEW_KEY, "not-a-key-of-the-list-000"])
def test_every_key_is_compared_whichever_matches(monkeypatch, make_settings, supplied):
    """No early exit: a match on the first key costs what a match on the last, or none, does."""
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(given: bytes, key: bytes) -> bool:
        compared.append(key)
        return real(given, key)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    settings = make_settings(app_api_key=f"{OLD_KEY},{NEW_KEY}")
    refusal = auth.key_refusal(settings, supplied)
    assert compared == [OLD_KEY.encode(), NEW_KEY.encode()]
    assert (refusal is None) is (supplied != "not-a-key-of-the-list-000")


def _limited_app(**settings: object) -> FastAPI:
    """One costly route behind the key check and the rate limit, as main.py mounts them."""
    app = FastAPI()
    app.state.settings = Settings(_env_file=None, rate_limit_per_minute=1, **settings)
    add_exception_handlers(app)

    @app.post("/spend", dependencies=[RequireApiKey, RateLimitDep])
    async def spend() -> dict[str, bool]:
        return {"ok": True}

    return app


async def test_each_listed_key_has_a_budget_of_its_own():
    """Each key is one client: two clients given two keys of the list never share a budget, and a client
    that holds both during a rotation has one per key (the design: APP_API_KEY's keys are its clients)."""
    app = _limited_app(app_api_key=f"{OLD_KEY},{NEW_KEY}")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 51000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        first_old = await client.post("/spend", headers={"X-API-Key": OLD_KEY})
        second_old = await client.post("/spend", headers={"Authorization": f"Bearer {OLD_KEY}"})
        first_new = await client.post("/spend", headers={"X-API-Key": NEW_KEY})
        second_new = await client.post("/spend", headers={"X-API-Key": NEW_KEY})
    assert [first_old.status_code, second_old.status_code] == [200, 429]
    assert [first_new.status_code, second_new.status_code] == [200, 429]


# --- Every key is a secret -----------------------------------------------------------------------------


def test_the_second_key_of_each_list_is_scrubbed_in_every_form(make_settings):
    settings = make_settings(
        app_api_key=f"{OLD_KEY},{NEW_KEY}", twilio_webhook_shared_key=f"{SHARED_KEY},{NEW_SHARED_KEY}"
    )
    b64 = base64.b64encode(NEW_KEY.encode()).decode()
    for scrubber in (settings.secret_scrubber, settings.answer_scrubber):
        assert scrubber.scrub(f"key {NEW_KEY} and {NEW_SHARED_KEY}") == f"key {REDACTED} and {REDACTED}"
        assert scrubber.scrub(f"?k={quote(NEW_KEY + '/', safe='')}") == f"?k={REDACTED}%2F"
        assert scrubber.scrub(f"Basic {b64}") == f"Basic {REDACTED}"
        assert scrubber.scrub(OLD_KEY) == REDACTED


async def test_the_second_key_reaches_no_problem_body_ledger_row_or_log_line(make_client, database_url, capsys):
    settings_values = {"app_api_key": f"{OLD_KEY},{NEW_KEY}", "log_format": "json"}

    async def echoes_the_key():
        raise UpstreamError(f"The upstream said: key {NEW_KEY} refused", upstream="slack", echoed=NEW_SHARED_KEY)

    async with make_client(twilio_webhook_shared_key=f"{SHARED_KEY},{NEW_SHARED_KEY}", **settings_values) as client:
        client.app.add_api_route("/echoes", echoes_the_key, dependencies=[RequireApiKey])
        problem = await client.get("/echoes", headers={"X-API-Key": NEW_KEY})
        scrubber = client.app.state.settings.secret_scrubber
        logging.getLogger("orchestrator.test").warning("upstream echoed %s", NEW_KEY)
    logged = capsys.readouterr().err

    engine = create_engine(database_url)
    await migrate(engine)
    try:
        ledger = Ledger(session_factory(engine), scrubber=scrubber)
        with pytest.raises(UpstreamError):
            async with ledger.run("test", trigger="api", input_summary={"key": NEW_KEY}) as run:
                raise UpstreamError(f"Slack said {NEW_SHARED_KEY}", upstream="slack")
        stored = await ledger.get_run(run.id)
    finally:
        await engine.dispose()
        configure_logging(level="INFO", fmt="text", secrets=[])

    assert problem.status_code == 502
    assert problem.json()["echoed"] == REDACTED and f"key {REDACTED} refused" in problem.json()["detail"]
    assert "upstream echoed ***" in logged
    assert stored is not None and stored.input_summary == {"key": REDACTED}
    assert stored.error == f"502 upstream-error: Slack said {REDACTED}"
    for secret in (NEW_KEY, NEW_SHARED_KEY):
        assert secret not in problem.text and secret not in logged
        assert secret not in json.dumps([stored.input_summary, stored.error])


# --- Twilio's SharedKey --------------------------------------------------------------------------------


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


@pytest.mark.parametrize("signed_with", [SHARED_KEY, NEW_SHARED_KEY], ids=["old", "new"])
async def test_a_webhook_signed_with_any_listed_shared_key_is_acted_on(w, make_client, signed_with):
    form = whatsapp_form(START)
    signature = sign(URL, form, signed_with, hashlib.sha256)
    settings = w.settings(twilio_webhook_shared_key=f"{SHARED_KEY}, {NEW_SHARED_KEY}")
    async with make_client(**settings) as client:
        response = await post(client, form, signature, shared_key_headers())
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert [start["description"] for start in w.toggl.starts] == ["Deep work"]


async def test_a_webhook_signed_with_no_listed_shared_key_is_refused(w, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.whatsapp_webhook")
    form = whatsapp_form(START)
    settings = w.settings(twilio_webhook_shared_key=f"{SHARED_KEY},{NEW_SHARED_KEY}")
    async with make_client(**settings) as client:
        # Neither key, nor the list whole taken as one key.
        forged = await post(
            client, form, sign(URL, form, "webhook-shared-key-of-no-one", hashlib.sha256), {**shared_key_headers()}
        )
        whole = await post(
            client, form, sign(URL, form, f"{SHARED_KEY},{NEW_SHARED_KEY}", hashlib.sha256), shared_key_headers()
        )
    assert [forged.status_code, whole.status_code] == [403, 403]
    assert "TWILIO_WEBHOOK_SHARED_KEY is (or lists) the secret" in forged.json()["detail"]
    assert w.toggl.starts == []
    for secret in (SHARED_KEY, NEW_SHARED_KEY):
        assert secret not in caplog.text and secret not in forged.text


async def test_every_listed_shared_key_is_tried_whichever_signed(w, make_client, monkeypatch):
    """No early exit here either: a webhook signed with the first key is checked against the second too."""
    from routers import whatsapp_webhook

    tried: list[str] = []

    class CountingValidator(whatsapp_webhook.RequestValidator):
        def validate(self, *args: object, **kwargs: object) -> bool:
            tried.append("checked")
            return super().validate(*args, **kwargs)

    monkeypatch.setattr(whatsapp_webhook, "RequestValidator", CountingValidator)
    form = whatsapp_form(START)
    settings = w.settings(twilio_webhook_shared_key=f"{SHARED_KEY},{NEW_SHARED_KEY}")
    async with make_client(**settings) as client:
        response = await post(client, form, sign(URL, form, SHARED_KEY, hashlib.sha256), shared_key_headers())
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert tried == ["checked", "checked"]


async def test_blanks_around_a_key_buy_no_budget_of_their_own():
    """The key check ignores blanks around the key (uvicorn's httptools keeps a trailing one); the rate limit
    keyed on the key with them, so `<key> `, `<key>  `, ... each had a fresh budget."""
    app = _limited_app(app_api_key=f"{OLD_KEY},{NEW_KEY}")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 51000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        first = await client.post("/spend", headers={"X-API-Key": NEW_KEY})
        padded = [await client.post("/spend", headers={"X-API-Key": NEW_KEY + blanks}) for blanks in (" ", "  ", "\t")]
    assert first.status_code == 200
    assert [response.status_code for response in padded] == [429, 429, 429]
