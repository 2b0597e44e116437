"""Credentials inside URL settings never reach a log line, a problem body or the ledger.

A `*_BASE_URL` may carry a gateway's credentials: `user:password@` in its user part, a token in its query
(`?key=...`). They are not `SecretStr` settings, so the scrubber did not know them, and the service printed the URL
itself (the ledger's record of a WhatsApp send). Now the scrubber takes them from every `*_BASE_URL` and from
DATABASE_URL (`Settings.secret_values`, `core.secrets.url_secrets`), with the length rules of every secret, and
the service prints such a URL `without_credentials`.

Each case uses a base URL that may carry them (`core.settings.BASE_URL_SHAPES`, tests/core/test_base_url_validation.py):
PUBLIC_BASE_URL's `user:password@`, which Twilio is given in the status callback; LOCAL_LLM_BASE_URL's, sent as
HTTP Basic without LOCAL_LLM_API_KEY; GEMINI_BASE_URL's query and `user:password@`, both sent. Toggl, Twilio, Slack
and Claude refuse them at start-up: their clients dropped or misplaced them, or failed on them.

Logs are read from what the app writes (capsys), not from caplog: pytest's handler formats each record before the
app's handler scrubs it, so caplog shows what any record held, scrubbed or not.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from core.secrets import REDACTED, url_secrets, without_credentials
from core.settings import ANSWER_SECRET_MIN_CHARS
from tests.core.test_secret_redaction import assert_nowhere, dump_database, only_run
from tests.fakes.llm import gemini_path
from tests.fakes.server import FakeUpstream, Recorded, Reply

PASSWORD = "relay-PASS-0042"
TOKEN = "relay-TOKEN-0043"
TWILIO_SID = "AC00000000000000000000000000000009"
TWILIO_HOST = "https://twilio-relay.test"
#: A relay in front of Twilio; not the REST root (the relay adds /relay).
TWILIO_BASE = f"{TWILIO_HOST}/relay"
#: The status callback Twilio is given, with the HTTP Basic credentials it authenticates to it with.
PUBLIC_BASE = f"http://hook:{PASSWORD}@localhost:8000"


def _forms(user: str, *secrets: str) -> list[str]:
    """Each secret, and the base64 of the Basic credentials a client builds from the URL's user part."""
    return [*secrets, base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()]


@pytest.fixture
def twilio_relay() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=TWILIO_HOST, assert_all_called=False) as router:
        yield router


async def test_a_relays_404_quoting_the_status_callback_reaches_no_answer_log_or_ledger_with_its_credentials(
    make_client, twilio_relay, database_url, capsys
):
    """TWILIO_BASE_URL is a relay that is not Twilio's REST root: its 404 (no Twilio error code) names the setting,
    and, as proxies do, quotes the request it could not route, the status callback's `hook:password@` with it. The
    ledger recorded the callback whole, `hook:password@` included."""

    def not_routed(request: httpx.Request) -> httpx.Response:
        callback = parse_qs(request.content.decode())["StatusCallback"][0]
        said = f"no route for POST {request.url.raw_path.decode()} (StatusCallback={callback})"
        return httpx.Response(404, json={"message": said})

    route = twilio_relay.post(url__regex=r"/relay/").mock(side_effect=not_routed)
    settings = {
        "twilio_account_sid": TWILIO_SID,
        "twilio_auth_token": "twilio-token-0044",
        "twilio_base_url": TWILIO_BASE,
        "public_base_url": PUBLIC_BASE,
    }
    async with make_client(**settings) as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
        run = await only_run(client, "whatsapp.send")
    logged = capsys.readouterr().err

    # The relay really was given the callback with its credentials (Twilio authenticates to it with them).
    sent = parse_qs(route.calls.last.request.content.decode())["StatusCallback"][0]
    assert sent == f"{PUBLIC_BASE}/whatsapp-status"
    assert response.status_code == 502, response.text
    detail = response.json()["detail"]
    shown = f"StatusCallback=http://hook:{REDACTED}@localhost:8000/whatsapp-status"
    assert "check TWILIO_BASE_URL" in detail and shown in detail
    assert f"hook:{REDACTED}@" in logged  # the 502's warning line, scrubbed
    assert f"hook:{REDACTED}@" in run["error"] and f"hook:{REDACTED}@" in run["actions"][0]["error"]
    # The recorded request names the URLs without their credentials.
    recorded = run["actions"][0]["request"]
    assert recorded["url"] == f"{TWILIO_BASE}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert recorded["messages"][0]["StatusCallback"] == "http://localhost:8000/whatsapp-status"
    assert_nowhere(
        _forms("hook", PASSWORD),
        response=response.text,
        run=json.dumps(run),
        database=dump_database(database_url),
        logs=logged,
    )


async def test_a_gateway_quoting_the_basic_credentials_of_its_url_reaches_no_answer_log_or_ledger(
    make_client, database_url, capsys
):
    """LOCAL_LLM_BASE_URL is a gateway that wants `user:password@` (and no LOCAL_LLM_API_KEY): aiohttp sends the
    user part as HTTP Basic. Refusing it, the gateway quotes the header and the request it got, as the Toggl and
    Twilio fakes of tests/core/test_secret_redaction.py do; the base64 of `relay:password` was no secret the
    scrubber knew, and went out in the 502, its error log line and the ledger."""

    def refuse(request: Recorded) -> Reply:
        said = f"{request.headers['authorization']} may not POST {request.path}"
        return Reply(401, json={"error": {"message": f"unauthorized: {said}"}})

    async with FakeUpstream() as gateway:
        gateway.route("POST", "/v1/chat/completions", refuse)
        base = f"http://relay:{PASSWORD}@127.0.0.1:{gateway.port}/v1"
        settings = {"local_llm_base_url": base, "local_llm_model": "m", "llm_max_attempts": 1}
        async with make_client(**settings) as client:
            response = await client.post("/ai-process", json={"text": "hello"})
            run = await only_run(client, "ai.process")
    logged = capsys.readouterr().err

    # The gateway really got the Basic credentials of the URL's user part, and quoted them back.
    basic = base64.b64encode(f"relay:{PASSWORD}".encode()).decode()
    assert gateway.requests[0].headers["authorization"] == f"Basic {basic}"
    assert response.status_code == 502, response.text
    assert f"unauthorized: Basic {REDACTED} may not POST /v1/chat/completions" in response.text
    assert f"Basic {REDACTED}" in logged and f"Basic {REDACTED}" in run["error"]
    assert_nowhere(
        _forms("relay", PASSWORD),
        response=response.text,
        run=json.dumps(run),
        database=dump_database(database_url),
        logs=logged,
    )


async def test_a_gateway_quoting_its_query_key_and_basic_credentials_reaches_no_answer_log_or_ledger(
    make_client, database_url, capsys
):
    """GEMINI_BASE_URL is a gateway that wants `?key=` and `user:password@`, both of which google-genai sends.
    Refusing the request, it quotes the request it got, as proxies do: the key and the Basic credentials with it."""

    def refuse(request: Recorded) -> Reply:
        said = f"{request.headers['authorization']} may not POST {request.path}?key={request.query['key']}"
        return Reply(403, json={"error": {"code": 403, "message": said, "status": "PERMISSION_DENIED"}})

    async with FakeUpstream() as gateway:
        gateway.route("POST", f"/gw{gemini_path()}", refuse)
        base = f"http://relay:{PASSWORD}@127.0.0.1:{gateway.port}/gw?key={TOKEN}"
        settings = {"gemini_api_key": "gemini-key-0045", "gemini_base_url": base, "llm_max_attempts": 1}
        async with make_client(**settings) as client:
            response = await client.post("/ai-process", json={"text": "hello", "provider": "gemini"})
            run = await only_run(client, "ai.process")
    logged = capsys.readouterr().err

    # The gateway really got its key and the Basic credentials, and quoted them back.
    basic = base64.b64encode(f"relay:{PASSWORD}".encode()).decode()
    assert gateway.requests[0].headers["authorization"] == f"Basic {basic}"
    assert gateway.requests[0].query == {"key": TOKEN}
    assert response.status_code == 502, response.text
    assert f"Basic {REDACTED} may not POST /gw{gemini_path()}?key={REDACTED}" in response.text
    assert f"key={REDACTED}" in logged and f"key={REDACTED}" in run["error"]
    assert_nowhere(
        _forms("relay", PASSWORD, TOKEN),
        response=response.text,
        run=json.dumps(run),
        database=dump_database(database_url),
        logs=logged,
    )


# --- What is taken from a URL -------------------------------------------------------------------------------------


def test_a_base_urls_password_query_key_and_basic_credentials_are_scrubbed(make_settings):
    settings = make_settings(gemini_base_url="https://relay:p%40ss-0046@proxy.test/api/v9?key=tok1&v=2")
    scrub = settings.secret_scrubber.scrub
    basic = base64.b64encode(b"relay:p@ss-0046").decode()
    text = f"https://relay:p%40ss-0046@proxy.test/api/v9?key=tok1&v=2 sent p@ss-0046 as Basic {basic}"
    # Percent-encoded as written and decoded as sent; the user name and a plain option stay.
    assert scrub(text) == f"https://relay:{REDACTED}@proxy.test/api/v9?key={REDACTED}&v=2 sent {REDACTED} as Basic ***"


def test_short_values_and_plain_options_stay_as_every_secret_shorter_than_4_does(make_settings):
    """Under 4 characters a secret would garble ordinary text (it is not scrubbed anywhere), and a query value that
    is not named as a credential is taken only at the length of a key: `region=eu-west-1` is an option."""
    base = "https://u:pw@proxy.test/v1?key=abc&region=eu-west-1&gateway_id=gw-0123456789abcdef"
    settings = make_settings(gemini_base_url=base)
    values = settings.secret_values()
    assert "pw" not in values and "abc" not in values and "eu-west-1" not in values
    assert "gw-0123456789abcdef" in values  # any value as long as a key may be one
    assert url_secrets(base, min_length=4, others_from=None) == []


@pytest.mark.parametrize(
    "url",
    ["https://TOKEN-abcdef-0047@proxy.test/api", "https://TOKEN-abcdef-0047:@proxy.test/api"],
    ids=["user-only", "empty-password"],
)
def test_a_user_name_given_alone_is_the_credential(make_settings, url):
    settings = make_settings(gemini_base_url=url)
    assert "TOKEN-abcdef-0047" in settings.secret_values()
    assert settings.secret_scrubber.scrub(f"GET {url}") == f"GET https://{REDACTED}{url.partition('0047')[2]}"


def test_public_base_urls_credentials_are_covered_like_every_base_urls(make_settings):
    """PUBLIC_BASE_URL may carry the user and password Twilio sends back to the status callback."""
    settings = make_settings(public_base_url="http://hook:hook-pass-0048@localhost:8000")
    assert settings.secret_scrubber.scrub("hook-pass-0048") == REDACTED


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://orchestrator:PGPASS-SEKRIT-0049@db/app?ssl=require",
        "postgresql+asyncpg://orchestrator@db/app?ssl=require&password=PGPASS-SEKRIT-0049",
    ],
    ids=["user-part", "query"],
)
def test_the_database_password_is_scrubbed_when_as_long_as_a_key(make_settings, url):
    """DATABASE_URL's password was hidden where the service prints the URL, never scrubbed: one quoted elsewhere (a
    driver's message) went out whole. A short one stays, as before: a development database's `pass` or `postgres`
    garbled every line holding the word (and `postgresql://`); neither the user nor the driver's options are taken."""
    settings = make_settings(database_url=url)
    text = "orchestrator connected to PGPASS-SEKRIT-0049 with ssl=require"
    assert settings.secret_scrubber.scrub(text) == f"orchestrator connected to {REDACTED} with ssl=require"
    short = make_settings(database_url="postgresql+asyncpg://postgres:postgres@db/app")
    assert short.secret_scrubber.scrub("postgresql+asyncpg://postgres") == "postgresql+asyncpg://postgres"
    assert len("postgres") < ANSWER_SECRET_MIN_CHARS


def test_answers_take_a_urls_credentials_only_from_the_answer_length(make_settings):
    settings = make_settings(gemini_base_url="https://relay:short-0050@proxy.test/api/v9?key=a-much-longer-key-0051")
    assert settings.answer_scrubber.scrub("short-0050 a-much-longer-key-0051") == f"short-0050 {REDACTED}"
    assert settings.secret_scrubber.scrub("short-0050 a-much-longer-key-0051") == f"{REDACTED} {REDACTED}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pass@proxy.test/api/v9?key=tok#frag", "https://proxy.test/api/v9"),
        ("https://TOKEN@proxy.test:8443/api", "https://proxy.test:8443/api"),
        (
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json",
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json",
        ),
    ],
)
def test_a_url_is_printed_without_its_credentials(url, shown):
    assert without_credentials(url) == shown
