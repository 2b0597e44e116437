"""A `*_BASE_URL` carries a query, a fragment or `user:password@` only where its client really uses them.

Found by a review: `TOGGL_BASE_URL=https://relay.example/api/v9?key=...` started, and every call went to
`/api/v9?key=.../me/time_entries/current` (Toggl, Twilio, the local model and Claude append the path to the base
URL, so it landed inside the query); slack_sdk dropped the query unsent; httpx dropped Toggl's and Twilio's URL
credentials for the requests' own Basic auth; and aiohttp raised on URL credentials beside an Authorization header
(Slack's token, Claude's key, LOCAL_LLM_API_KEY), a 502 "URL ... is not valid" for Slack and a 500 for the local
model. Now start-up refuses those shapes with a message that names the setting and the fix, and never the secret
(`core.settings.BASE_URL_SHAPES`, the one table of what each base URL allows).

Three kinds of test: the refusals (they fail without the validation); the shapes kept allowed, run end to end
against a fake upstream on 127.0.0.1 (the path right, the query and the credentials arriving); and the evidence
for each refusal, the same calls with the refused shape forced past validation, so that an SDK upgrade that
changes what a client does shows up here and the table can follow.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from core.errors import ConfigurationError
from core.settings import BASE_URL_SHAPES, HttpUrlStr, Settings, load_settings
from tests.conftest import running_app
from tests.core.test_settings import _start
from tests.fakes.llm import anthropic_message, gemini_content, gemini_path, openai_completion
from tests.fakes.server import FakeUpstream, Recorded, Reply

SECRET = "gw-PASS-0061"
KEY = "gw-KEY-0062"
TWILIO_SID = "AC00000000000000000000000000000061"
MESSAGES_PATH = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- Refused at start-up -------------------------------------------------------------------------------------------

_QUERY_INTO_PATH = "each request's path is appended to it, so the path would land inside the query"
_FRAGMENT = (
    "has a fragment ('#...'), which is never sent and takes with it whatever follows: remove it, and write a '#' "
    "that belongs to a password or key as %23"
)


def _beside(sender: str) -> str:
    return (
        f"{sender} in an Authorization header, and aiohttp refuses credentials in a URL beside one: every request fails"
    )


LOCAL_SENDER = "the local model's client sends LOCAL_LLM_API_KEY"

REFUSED = [
    pytest.param(
        {"TOGGL_BASE_URL": f"https://relay.example/api/v9?key={KEY}"},
        f"TOGGL_BASE_URL: has a query string ('?...'): {_QUERY_INTO_PATH}. Remove it: https://relay.example/api/v9",
        id="toggl-query",
    ),
    pytest.param(
        {"TOGGL_BASE_URL": "https://relay.example/api/v9?"},
        f"TOGGL_BASE_URL: has a query string ('?...'): {_QUERY_INTO_PATH}. Remove it: https://relay.example/api/v9",
        id="toggl-empty-query",
    ),
    pytest.param(
        {"TOGGL_BASE_URL": f"https://relay:{SECRET}@relay.example/api/v9"},
        "TOGGL_BASE_URL: has credentials (user:password@): TOGGL_API_TOKEN is sent as the requests' own HTTP Basic "
        "auth, so httpx never sends these. Remove them: https://relay.example/api/v9",
        id="toggl-credentials",
    ),
    pytest.param(
        {"TOGGL_BASE_URL": f"https://relay:{SECRET}@relay.example/api/v9?key={KEY}"},
        f"TOGGL_BASE_URL: has a query string ('?...'): {_QUERY_INTO_PATH}; and credentials (user:password@): "
        "TOGGL_API_TOKEN is sent as the requests' own HTTP Basic auth, so httpx never sends these. Remove both: "
        "https://relay.example/api/v9",
        id="toggl-both",
    ),
    pytest.param(
        {"TOGGL_BASE_URL": "https://relay.example/api/v9#v9"},
        f"TOGGL_BASE_URL: {_FRAGMENT}",
        id="toggl-fragment",
    ),
    pytest.param(
        {"TWILIO_BASE_URL": f"https://twilio-relay.example/relay?key={KEY}"},
        f"TWILIO_BASE_URL: has a query string ('?...'): {_QUERY_INTO_PATH}. Remove it: https://twilio-relay.example/relay",
        id="twilio-query",
    ),
    pytest.param(
        {"TWILIO_BASE_URL": f"https://relay:{SECRET}@twilio-relay.example"},
        "TWILIO_BASE_URL: has credentials (user:password@): TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are sent as the "
        "requests' own HTTP Basic auth, so httpx never sends these. Remove them: https://twilio-relay.example",
        id="twilio-credentials",
    ),
    pytest.param(
        {"SLACK_BASE_URL": f"https://slack-relay.example/api/?key={KEY}"},
        "SLACK_BASE_URL: has a query string ('?...'): slack_sdk joins each method name to it as a relative URL, "
        "which drops the query unsent. Remove it: https://slack-relay.example/api/",
        id="slack-query",
    ),
    pytest.param(
        {"SLACK_BASE_URL": f"https://relay:{SECRET}@slack-relay.example/api/"},
        f"SLACK_BASE_URL: has credentials (user:password@): {_beside('slack_sdk sends SLACK_BOT_TOKEN')}. "
        "Remove them: https://slack-relay.example/api/",
        id="slack-credentials",
    ),
    pytest.param(
        {"ANTHROPIC_BASE_URL": f"https://claude-relay.example?key={KEY}"},
        f"ANTHROPIC_BASE_URL: has a query string ('?...'): {_QUERY_INTO_PATH}. Remove it: https://claude-relay.example",
        id="anthropic-query",
    ),
    pytest.param(
        {"ANTHROPIC_BASE_URL": f"https://{KEY}@claude-relay.example"},
        "ANTHROPIC_BASE_URL: has credentials (user:password@): "
        f"{_beside('the Anthropic SDK sends ANTHROPIC_API_KEY')}. Remove them: https://claude-relay.example",
        id="anthropic-credentials",
    ),
    pytest.param(
        {"LOCAL_LLM_BASE_URL": f"http://gw:{SECRET}@gateway.example/v1?key={KEY}", "LOCAL_LLM_MODEL": "m"},
        f"LOCAL_LLM_BASE_URL: has a query string ('?...'): {_QUERY_INTO_PATH}. Remove it: http://gateway.example/v1 "
        "(shown without its user:password@, which may stay)",
        id="local-query",
    ),
    pytest.param(
        {
            "LOCAL_LLM_BASE_URL": f"http://gw:{SECRET}@gateway.example/v1",
            "LOCAL_LLM_MODEL": "m",
            "LOCAL_LLM_API_KEY": "local-key-0063",
        },
        "LOCAL_LLM_BASE_URL has credentials (user:password@) and LOCAL_LLM_API_KEY is set: "
        f"{_beside(LOCAL_SENDER)}. Remove user:password@ "
        "from LOCAL_LLM_BASE_URL (http://gateway.example/v1), or unset LOCAL_LLM_API_KEY to send the URL's "
        "credentials as HTTP Basic",
        id="local-credentials-beside-its-key",
    ),
    pytest.param(
        {"PUBLIC_BASE_URL": f"http://localhost:8000/?hook_token={KEY}"},
        "PUBLIC_BASE_URL: has a query string ('?...'): the webhook paths are appended to it (the URL Twilio signs, "
        "the status callback), so the path would land inside the query. Remove it: http://localhost:8000/",
        id="public-query",
    ),
    pytest.param(
        # A '#' in the key, not percent-encoded: Gemini would have been sent `key=gw-KEY-` and nothing said.
        {"GEMINI_BASE_URL": f"https://gemini-relay.example?key=gw-KEY-#{KEY}"},
        f"GEMINI_BASE_URL: {_FRAGMENT}",
        id="gemini-fragment",
    ),
]


@pytest.mark.parametrize(("environment", "expected"), REFUSED)
def test_a_base_url_its_client_would_break_is_refused_naming_the_setting_and_the_fix(
    monkeypatch, environment, expected
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert message == f"Invalid configuration: {expected}"
    for secret in (SECRET, KEY, "local-key-0063"):
        assert secret not in message


def test_the_service_does_not_start_with_one_and_prints_one_line_without_the_secret(tmp_path):
    result = _start(
        {"TOGGL_BASE_URL": f"https://relay:{SECRET}@relay.example/api/v9", "TOGGL_API_TOKEN": "toggl-token-0064"},
        tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "TOGGL_BASE_URL: has credentials (user:password@)" in line and "https://relay.example/api/v9" in line
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("field", sorted(name for name in Settings.model_fields if name.endswith("_base_url")))
def test_every_base_url_is_http_or_https(make_settings, field):
    """Checked before this change too (`HttpUrlStr`); kept here with the rest of a base URL's shape."""
    with pytest.raises(ValidationError) as caught:
        make_settings(**{field: "ftp://relay.example/api"})
    [error] = caught.value.errors(include_input=False)
    assert error["loc"] == (field,) and "must be an absolute http:// or https:// URL" in error["msg"]


def test_the_table_names_only_real_settings():
    """A renamed setting would fall back to the strictest shape with nothing said: its entry must follow it."""
    assert set(BASE_URL_SHAPES) <= {name for name in Settings.model_fields if name.endswith("_base_url")}


def test_a_base_url_the_table_does_not_list_takes_no_query_and_no_credentials():
    """docs/adding-a-skill.md's NTFY_BASE_URL: its client appends paths and sends a token of its own."""

    class WithNtfy(Settings):
        ntfy_base_url: HttpUrlStr = "https://ntfy.sh"

    assert WithNtfy(_env_file=None, ntfy_base_url="https://ntfy.example/base").ntfy_base_url.endswith("/base")
    for url, refused in [
        ("https://ntfy.example/?topic=x", "a query string"),
        (f"https://u:{SECRET}@ntfy.example", "credentials"),
    ]:
        with pytest.raises(ValidationError) as caught:
            WithNtfy(_env_file=None, ntfy_base_url=url)
        [error] = caught.value.errors(include_input=False)
        assert error["loc"] == ("ntfy_base_url",) and f"has {refused}" in error["msg"]


# --- Kept: they start, and the request works -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {"slack_base_url": "https://slack-relay.example/api", "toggl_base_url": "https://toggl-relay.example/"},
            id="no-trailing-slash-or-one",
        ),
        pytest.param({"gemini_base_url": f"https://gw:{SECRET}@gemini-relay.example/v?key={KEY}"}, id="gemini-both"),
        pytest.param(
            {"local_llm_base_url": f"http://gw:{SECRET}@gateway.example/v1", "local_llm_model": "m"},
            id="local-credentials-without-its-key",
        ),
        pytest.param({"public_base_url": f"http://hook:{SECRET}@localhost:8000"}, id="public-credentials"),
    ],
)
async def test_shapes_their_clients_keep_still_start(make_client, overrides):
    async with make_client(**overrides) as client:
        response = await client.get("/health")
    assert response.status_code == 200, response.text


async def test_gemini_sends_the_base_urls_query_and_credentials_to_a_gateway(make_client):
    """google-genai puts the path before the query and keeps the user part, which aiohttp sends as HTTP Basic
    beside the key's own x-goog-api-key header."""
    async with FakeUpstream() as gateway:
        gateway.route("POST", f"/gemini{gemini_path()}", lambda request: Reply(200, json=gemini_content("hi")))
        base = f"http://gw:{SECRET}@127.0.0.1:{gateway.port}/gemini?key={KEY}"
        settings = {"gemini_api_key": "gemini-key-0065", "gemini_base_url": base, "llm_max_attempts": 1}
        async with make_client(**settings) as client:
            response = await client.post("/ai-process", json={"text": "hello", "provider": "gemini"})
    assert response.status_code == 200, response.text
    [request] = gateway.requests
    assert request.path == f"/gemini{gemini_path()}" and request.query == {"key": KEY}
    assert request.headers["authorization"] == _basic("gw", SECRET)
    assert request.headers["x-goog-api-key"] == "gemini-key-0065"


@pytest.mark.parametrize(("user", "password"), [("gw", SECRET), (KEY, "")], ids=["user-password", "token-alone"])
async def test_the_local_model_sends_the_base_urls_credentials_as_basic_without_a_key(make_client, user, password):
    """Without LOCAL_LLM_API_KEY, aiohttp sends `user:password@` as HTTP Basic: a gateway in front of Ollama."""
    async with FakeUpstream() as gateway:
        gateway.route("POST", "/v1/chat/completions", lambda request: Reply(200, json=openai_completion("hi")))
        userinfo = f"{user}:{password}" if password else user
        base = f"http://{userinfo}@127.0.0.1:{gateway.port}/v1"
        async with make_client(local_llm_base_url=base, local_llm_model="m", llm_max_attempts=1) as client:
            response = await client.post("/ai-process", json={"text": "hello", "provider": "local"})
    assert response.status_code == 200, response.text
    [request] = gateway.requests
    assert request.path == "/v1/chat/completions" and request.query == {}
    assert request.headers["authorization"] == _basic(user, password)


async def test_twilio_is_given_the_status_callback_with_public_base_urls_credentials(make_client):
    """Twilio authenticates to a callback URL's `user:password@` (HTTP Basic): PUBLIC_BASE_URL may carry them."""
    async with FakeUpstream() as twilio:
        twilio.route("POST", MESSAGES_PATH, lambda request: Reply(201, json={"sid": "SM" + "1" * 32}))
        settings = {
            "twilio_account_sid": TWILIO_SID,
            "twilio_auth_token": "twilio-token-0066",
            "twilio_base_url": twilio.url,
            "public_base_url": f"http://hook:{SECRET}@localhost:8000/",
        }
        async with make_client(**settings) as client:
            response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
    assert response.status_code == 200, response.text
    [request] = twilio.requests
    assert request.form["StatusCallback"] == f"http://hook:{SECRET}@localhost:8000/whatsapp-status"
    assert request.headers["authorization"] == _basic(TWILIO_SID, "twilio-token-0066")


# --- Why each refused shape is refused: what its client does with it ---------------------------------------------


def _success(request: Recorded) -> Reply:
    """Each client's success, given only on its right path: the path, query and headers decide the outcome."""
    path = request.path
    if path.endswith("/chat/completions"):
        return Reply(200, json=openai_completion("hi"))
    if path.endswith("/messages"):
        return Reply(200, json=anthropic_message("hi"))
    if path.endswith("/chat.postMessage"):
        return Reply(200, json={"ok": True, "channel": "C0123", "ts": "1.2"})
    if path.endswith("/Messages.json"):
        return Reply(201, json={"sid": "SM" + "1" * 32})
    return Reply(200, json=None)  # Toggl's /me/time_entries/current: nothing runs


#: Per client: its setting, the base URL's path, the request it must make, its settings, and the call made.
CLIENTS: dict[str, tuple[str, str, tuple[str, str], dict[str, Any], tuple[str, dict[str, Any] | None]]] = {
    "toggl": (
        "toggl_base_url",
        "/api/v9",
        ("GET", "/api/v9/me/time_entries/current"),
        {"toggl_api_token": "toggl-token-0067"},
        ("/timers/current", None),
    ),
    "twilio": (
        "twilio_base_url",
        "",
        ("POST", MESSAGES_PATH),
        {"twilio_account_sid": TWILIO_SID, "twilio_auth_token": "twilio-token-0068"},
        ("/whatsapp-send", {"to": "+15551234567", "body": "hi"}),
    ),
    "slack": (
        "slack_base_url",
        "/api/",
        ("POST", "/api/chat.postMessage"),
        {"slack_bot_token": "xoxb-0069", "slack_default_channel": "#general"},
        ("/slack-notify", {"message": "hi"}),
    ),
    "claude": (
        "anthropic_base_url",
        "",
        ("POST", "/v1/messages"),
        {"anthropic_api_key": "claude-key-0070", "llm_max_attempts": 1},
        ("/ai-process", {"text": "hi", "provider": "claude"}),
    ),
    "local": (
        "local_llm_base_url",
        "/v1",
        ("POST", "/v1/chat/completions"),
        {"local_llm_model": "m", "llm_max_attempts": 1},
        ("/ai-process", {"text": "hi", "provider": "local"}),
    ),
    "local-with-key": (
        "local_llm_base_url",
        "/v1",
        ("POST", "/v1/chat/completions"),
        {"local_llm_model": "m", "llm_max_attempts": 1, "local_llm_api_key": "local-key-0071"},
        ("/ai-process", {"text": "hi", "provider": "local"}),
    ),
}


async def _forced(make_settings, client_name: str, shape: str) -> tuple[int, str, list[Recorded]]:
    """The call of `client_name` with its base URL in `shape`, set past validation as a bug elsewhere could."""
    setting, path, (method, right_path), values, (route, body) = CLIENTS[client_name]
    async with FakeUpstream() as upstream:
        upstream.route(method, right_path, _success)
        host = f"127.0.0.1:{upstream.port}"
        base = {
            "query": f"http://{host}{path}?key={KEY}",
            "credentials": f"http://gw:{SECRET}@{host}{path}",
            "fragment": f"http://{host}{path}#v",
        }[shape]
        settings = make_settings(**values)
        setattr(settings, setting, base)  # no validate_assignment: the shape the validation now refuses
        async with running_app(settings) as (_app, client):
            response = await (client.get(route) if body is None else client.post(route, json=body))
        return response.status_code, response.text, upstream.requests


@pytest.mark.parametrize("client_name", ["toggl", "twilio", "claude", "local"])
async def test_evidence_a_query_takes_the_path_inside_it(make_settings, client_name):
    status, _answer, [request] = await _forced(make_settings, client_name, "query")
    assert status >= 400
    assert request.query["key"].startswith(f"{KEY}/")  # `?key=KEY/me/time_entries/current`: the path is in the key
    assert BASE_URL_SHAPES[CLIENTS[client_name][0]].query is not None


async def test_evidence_slack_drops_a_query_unsent(make_settings):
    status, _answer, [request] = await _forced(make_settings, "slack", "query")
    assert status == 200 and request.path == "/api/chat.postMessage" and request.query == {}
    assert BASE_URL_SHAPES["slack_base_url"].query is not None


@pytest.mark.parametrize("client_name", ["toggl", "twilio"])
async def test_evidence_httpx_drops_credentials_for_the_requests_own_basic_auth(make_settings, client_name):
    status, _answer, [request] = await _forced(make_settings, client_name, "credentials")
    assert status == 200  # it "works", the gateway's credentials silently left out
    assert request.headers["authorization"] != _basic("gw", SECRET)
    assert BASE_URL_SHAPES[CLIENTS[client_name][0]].credentials is not None


@pytest.mark.parametrize(
    ("client_name", "status", "said"),
    [
        ("slack", 502, "Slack was not called: the URL built from SLACK_BASE_URL is not valid (Cannot combine"),
        ("claude", 502, "claude could not be reached (ValueError)"),
        ("local-with-key", 500, "An unexpected error occurred"),
    ],
)
async def test_evidence_aiohttp_refuses_url_credentials_beside_an_authorization_header(
    make_settings, client_name, status, said
):
    got, answer, requests = await _forced(make_settings, client_name, "credentials")
    assert (got, requests) == (status, []) and said in answer


@pytest.mark.parametrize("client_name", ["toggl", "twilio", "local"])
async def test_evidence_a_fragment_takes_the_path_with_it(make_settings, client_name):
    status, _answer, [request] = await _forced(make_settings, client_name, "fragment")
    assert status >= 400 and request.path == (CLIENTS[client_name][1] or "/")
