"""Twilio's SharedKey-signed webhooks: when a Webhook Rule matches the URL, Twilio signs with that Webhook
Setting's SharedKey and algorithm (HMAC-SHA256) instead of the auth token, and says so in
X-Twilio-Webhooks-Signature-Settings. Every signature here is computed independently (hmac over the URL and
the sorted fields), not with twilio's RequestValidator the service uses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import httpx
import pytest

from tests.workflows.world import (
    OWNER,
    PUBLIC_API_KEY,
    TWILIO_TOKEN,
    finished_runs,
    runs_of,
    whatsapp_form,
    world,
)

SHARED_KEY = "webhook-shared-key-secret-0123456789"
KEY_ID = "webhooks_sharedkey_0123456789abcdef"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
URL = "http://testserver/whatsapp-webhook"
START = "start Deep work for 25 min"


def sign(url: str, form: dict[str, str], secret: str, digest: Callable[..., Any]) -> str:
    """Twilio's scheme: base64(HMAC(secret, url + each name and value, sorted by name)), no separators."""
    signed = url + "".join(name + value for name, value in sorted(form.items()))
    return base64.b64encode(hmac.new(secret.encode(), signed.encode(), digest).digest()).decode()


def shared_key_headers(algorithm: str = "HMAC_SHA256", *, key_id: str = KEY_ID) -> dict[str, str]:
    return {SETTINGS_HEADER: f"key={key_id},algorithm={algorithm}"}


async def post(
    client: httpx.AsyncClient,
    form: dict[str, str],
    signature: str,
    headers: dict[str, str] | None = None,
    url: str = URL,
) -> httpx.Response:
    return await client.post(
        url.removeprefix("http://testserver"),
        content=urlencode(form),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
            **(headers or {}),
        },
    )


def messages(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [element.text or "" for element in ElementTree.fromstring(response.text).findall("Message")]


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


async def test_a_shared_key_hmac_sha256_delivery_is_accepted_and_acted_on(w, make_client):
    form = whatsapp_form(START)
    signature = sign(URL, form, SHARED_KEY, hashlib.sha256)
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        response = await post(client, form, signature, shared_key_headers())
        [run] = await finished_runs(client, "command.start")
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert [start["description"] for start in w.toggl.starts] == ["Deep work"]
    assert run["status"] == "ok"


async def test_a_shared_key_question_reaches_the_llm_and_its_answer_is_the_reply(w, make_client):
    w.claude.answer = "Plan: write first, then review."
    form = whatsapp_form("what should I focus on today?", sid="SM" + "c" * 32)
    signature = sign(URL, form, SHARED_KEY, hashlib.sha256)
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        response = await post(client, form, signature, shared_key_headers())
    assert messages(response) == ["Plan: write first, then review."]
    assert any("what should I focus on today?" in prompt for prompt in w.claude.prompts)


async def test_the_status_callback_takes_a_shared_key_signature_too(w, make_client):
    form = {
        "MessageSid": "SM" + "d" * 32,
        "MessageStatus": "undelivered",
        "ErrorCode": "63016",
        "To": f"whatsapp:{OWNER}",
    }
    url = "http://testserver/whatsapp-status"
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        refused = await post(client, form, sign(url, form, TWILIO_TOKEN, hashlib.sha256), shared_key_headers(), url)
        assert await runs_of(client, "whatsapp.delivery") == []
        response = await post(client, form, sign(url, form, SHARED_KEY, hashlib.sha256), shared_key_headers(), url)
        [run] = await runs_of(client, "whatsapp.delivery")
    assert refused.status_code == 403
    assert response.status_code == 204
    assert "63016" in run["error"]


async def test_a_header_without_algorithm_means_hmac_sha1_with_the_shared_key(w, make_client):
    # As twilio's get_signature_algorithm reads it: no `algorithm=` is HMAC_SHA1, still keyed with the SharedKey.
    form = whatsapp_form("help")
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        ok = await post(client, form, sign(URL, form, SHARED_KEY, hashlib.sha1), {SETTINGS_HEADER: f"key={KEY_ID}"})
    assert "Commands:" in messages(ok)[0]


@pytest.mark.parametrize("shared_key", [None, SHARED_KEY], ids=["no-shared-key", "shared-key-set"])
async def test_an_auth_token_sha1_delivery_without_the_header_still_works(w, make_client, shared_key):
    form = whatsapp_form(START)
    signature = sign(URL, form, TWILIO_TOKEN, hashlib.sha1)
    async with make_client(**w.settings(twilio_webhook_shared_key=shared_key)) as client:
        response = await post(client, form, signature)
    assert messages(response)[0].startswith("Started 'Deep work'")
    assert [start["description"] for start in w.toggl.starts] == ["Deep work"]


async def test_an_empty_settings_header_is_the_auth_token_check(w, make_client):
    # Twilio's Node middleware tests the header for truthiness: an empty one is the default signature.
    form = whatsapp_form("help")
    async with make_client(**w.settings()) as client:
        ok = await post(client, form, sign(URL, form, TWILIO_TOKEN, hashlib.sha1), {SETTINGS_HEADER: ""})
    assert "Commands:" in messages(ok)[0]


async def test_the_header_without_the_setting_is_a_403_naming_it_and_nothing_happens(w, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.whatsapp_webhook")
    form = whatsapp_form(START)
    signature = sign(URL, form, SHARED_KEY, hashlib.sha256)
    async with make_client(**w.settings()) as client:
        response = await post(client, form, signature, shared_key_headers())
        assert (await client.get("/runs")).json()["items"] == []  # no ledger row of any kind
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert "TWILIO_WEBHOOK_SHARED_KEY" in detail and "SharedKey" in detail
    assert "does not match" not in detail  # not the auth token's mismatch, which would send the user astray
    assert w.toggl.starts == [] and w.twilio.sent == [] and w.claude.requests == []
    assert KEY_ID in caplog.text and "TWILIO_WEBHOOK_SHARED_KEY is not set" in caplog.text


async def test_a_refused_delivery_is_acted_on_when_twilio_retries_it_with_the_setting(w, make_client):
    """The 403 claims nothing: the same MessageSid, signed the same way, acts once the key is configured."""
    form = whatsapp_form(START)
    signature = sign(URL, form, SHARED_KEY, hashlib.sha256)
    async with make_client(**w.settings()) as client:
        refused = await post(client, form, signature, shared_key_headers())
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        retried = await post(client, form, signature, shared_key_headers())
    assert refused.status_code == 403
    assert messages(retried)[0].startswith("Started")
    assert len(w.toggl.starts) == 1


async def test_a_wrong_shared_key_is_403_naming_the_setting(w, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.whatsapp_webhook")
    form = whatsapp_form(START)
    signature = sign(URL, form, "another-webhook-settings-secret", hashlib.sha256)
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        response = await post(client, form, signature, shared_key_headers())
        assert await runs_of(client, "command.start") == []
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert "does not match" in detail and "TWILIO_WEBHOOK_SHARED_KEY" in detail and "PUBLIC_BASE_URL" in detail
    assert "TWILIO_AUTH_TOKEN" not in detail
    assert w.toggl.starts == []
    assert "rejected a whatsapp webhook with a bad signature (HMAC_SHA256 with SharedKey" in caplog.text
    assert SHARED_KEY not in caplog.text and SHARED_KEY not in response.text


async def test_a_shared_key_mismatch_with_public_base_url_says_what_to_check(w, make_client, caplog):
    public = "https://twilio:basic-auth-pw@abc123.ngrok.app"
    form = whatsapp_form(START)
    signature = sign("https://abc123.ngrok.app/whatsapp-webhook", form, "not-the-shared-key", hashlib.sha256)
    settings = w.settings(public_base_url=public, twilio_webhook_shared_key=SHARED_KEY)
    async with make_client(send_api_key=True, **settings) as client:
        response = await post(client, form, signature, shared_key_headers())
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert "check that PUBLIC_BASE_URL is the URL Twilio calls" in detail and "TWILIO_WEBHOOK_SHARED_KEY" in detail
    assert "checked for https://abc123.ngrok.app/whatsapp-webhook)" in caplog.text
    assert "basic-auth-pw" not in caplog.text and PUBLIC_API_KEY not in caplog.text


async def test_a_public_base_url_shared_key_delivery_is_accepted(w, make_client):
    form = whatsapp_form("help")
    signature = sign("https://abc123.ngrok.app/whatsapp-webhook", form, SHARED_KEY, hashlib.sha256)
    settings = w.settings(public_base_url="https://abc123.ngrok.app", twilio_webhook_shared_key=SHARED_KEY)
    async with make_client(send_api_key=True, **settings) as client:
        response = await post(client, form, signature, shared_key_headers())
    assert "Commands:" in messages(response)[0]


@pytest.mark.parametrize("algorithm", ["HMAC_SHA512", "RSA_SHA256"])
async def test_an_unsupported_algorithm_is_403_naming_it(w, make_client, algorithm):
    form = whatsapp_form(START)
    signature = sign(URL, form, SHARED_KEY, hashlib.sha512)
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        response = await post(client, form, signature, shared_key_headers(algorithm))
        assert await runs_of(client, "command.start") == []
    assert response.status_code == 403
    assert algorithm in response.json()["detail"] and "HMAC_SHA256" in response.json()["detail"]
    assert w.toggl.starts == []


async def test_an_unreadable_algorithm_or_key_id_is_not_repeated(w, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.whatsapp_webhook")
    form = whatsapp_form(START)
    header = {SETTINGS_HEADER: "key=<script>evil</script>,algorithm=HMAC_SHA512 injected\tline"}
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        response = await post(client, form, sign(URL, form, SHARED_KEY, hashlib.sha256), header)
    assert response.status_code == 403
    assert "injected" not in response.text and "injected" not in caplog.text and "<script>" not in caplog.text
    assert "(unreadable)" in response.json()["detail"]


@pytest.mark.parametrize("digest", [hashlib.sha1, hashlib.sha256], ids=["sha1", "sha256"])
async def test_the_settings_header_with_an_auth_token_signature_is_403(w, make_client, digest):
    """A request claiming a SharedKey is checked with the SharedKey only: the auth token does not pass there."""
    form = whatsapp_form(START)
    signature = sign(URL, form, TWILIO_TOKEN, digest)
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        response = await post(
            client, form, signature, shared_key_headers("HMAC_SHA256" if digest is hashlib.sha256 else "HMAC_SHA1")
        )
        assert await runs_of(client, "command.start") == []
    assert response.status_code == 403
    assert w.toggl.starts == []


async def test_a_shared_key_signature_without_the_header_is_403(w, make_client):
    """Without the header the auth token decides: a SharedKey signature stripped of it does not pass."""
    form = whatsapp_form(START)
    async with make_client(**w.settings(twilio_webhook_shared_key=SHARED_KEY)) as client:
        sha256 = await post(client, form, sign(URL, form, SHARED_KEY, hashlib.sha256))
        sha1 = await post(client, form, sign(URL, form, SHARED_KEY, hashlib.sha1))
    assert sha256.status_code == sha1.status_code == 403
    assert "TWILIO_AUTH_TOKEN" in sha1.json()["detail"]
    assert w.toggl.starts == []


async def test_the_shared_key_is_a_secret_scrubbed_like_the_others(make_settings):
    settings = make_settings(twilio_webhook_shared_key=SHARED_KEY)
    assert SHARED_KEY not in repr(settings) and SHARED_KEY not in str(settings.model_dump())
    assert settings.secret_scrubber.scrub(f"echoed {SHARED_KEY} back") == "echoed *** back"
    encoded = base64.b64encode(f"x:{SHARED_KEY}".encode()).decode()
    assert "***" in settings.secret_scrubber.scrub(f"Basic {encoded}")


async def test_the_openapi_schema_documents_the_settings_header(w, make_client):
    async with make_client(**w.settings()) as client:
        schema = (await client.get("/openapi.json")).json()
    for path in ("/whatsapp-webhook", "/whatsapp-status"):
        [header] = [p for p in schema["paths"][path]["post"]["parameters"] if p["name"] == SETTINGS_HEADER]
        assert header["in"] == "header" and header["required"] is False
        assert "TWILIO_WEBHOOK_SHARED_KEY" in header["description"]
