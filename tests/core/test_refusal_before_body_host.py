"""Without APP_API_KEY, a body FastAPI cannot parse gets the same DNS-rebinding 403 as a parseable one.

FastAPI parses the body before `require_api_key` runs, so the error handlers ask `refusal_before_body` for the
refusal first. It made only the key check: without a key, malformed JSON sent to a domain-name Host (a page that
rebound its own name to 127.0.0.1) got the 400/422 naming the endpoint's input, where a parseable body got the 403.
"""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from core.errors import PROBLEM_CONTENT_TYPE

REBOUND = "evil.example"
LOOPBACK = "127.0.0.1:8000"
JSON = "application/json"
#: Bodies FastAPI refuses before any dependency runs: a 422 `json_invalid`, or Starlette's 400 for an undecodable
#: body. Each reached the client without the Host check.
UNPARSABLE = [
    pytest.param(b'{"message":', 422, id="malformed-json"),
    pytest.param(b'{"message":"\xff\xfe"}', 400, id="not-utf8"),
    pytest.param(b"[" * 1100 + b"]" * 1100, 400, id="nested-too-deep"),
]
#: A form sent to a JSON endpoint is not parsed before the dependencies (FastAPI parses only JSON there), so
#: `require_api_key` itself refused it already; pinned here so the two paths keep answering alike.
FORMS = [
    pytest.param("application/x-www-form-urlencoded", b"%zz=%%&&==&message=%E0%A4%A", id="urlencoded"),
    pytest.param("multipart/form-data; boundary=x", b"--x\r\nbroken", id="multipart"),
]


class Echo(BaseModel):
    text: str


def _key_protected_body_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation taking a body that is not public, from the app's OpenAPI."""
    public = app.state.public_paths
    found = []
    for template, operations in app.openapi()["paths"].items():
        if template in public:
            continue
        for method, operation in operations.items():
            if method in ("post", "put", "patch") and operation.get("requestBody"):
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "x", template)))
    return found


def _assert_host_refusal(response: httpx.Response, where: str) -> None:
    assert response.status_code == 403, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE, where
    body = response.json()
    assert body["type"] == "/problems/forbidden", where
    assert "DNS rebinding" in body["detail"] and "APP_API_KEY" in body["detail"], where
    assert "errors" not in body, where  # nothing about the endpoint's input


@pytest.mark.parametrize(("body", "status_on_loopback"), UNPARSABLE)
async def test_an_unparsable_json_body_to_a_domain_name_is_the_rebinding_403(make_client, body, status_on_loopback):
    async with make_client() as client:
        routes = _key_protected_body_routes(client.app)
        assert len(routes) >= 6  # start/stop timer, Slack, WhatsApp, email, AI, briefing
        for method, path in routes:
            headers = {"Content-Type": JSON, "Host": REBOUND}
            rebound = await client.request(method, path, content=body, headers=headers)
            _assert_host_refusal(rebound, f"{method} {path}")
            # A parseable body to the same name is refused the same way (what the unparsable one must match).
            parsed = await client.request(method, path, json={}, headers={"Host": REBOUND})
            assert (parsed.status_code, parsed.json()["detail"]) == (403, rebound.json()["detail"])


@pytest.mark.parametrize(("body", "status_on_loopback"), UNPARSABLE)
async def test_the_same_body_to_this_machine_by_address_still_gets_its_own_problem(
    make_client, body, status_on_loopback
):
    async with make_client() as client:
        response = await client.post("/slack-notify", content=body, headers={"Content-Type": JSON, "Host": LOOPBACK})
    assert response.status_code == status_on_loopback, response.text
    assert response.json()["type"] == {400: "/problems/bad-request", 422: "/problems/invalid-input"}[status_on_loopback]


@pytest.mark.parametrize(("content_type", "body"), FORMS)
async def test_a_malformed_form_is_refused_for_a_domain_name_and_described_for_an_address(
    make_client, content_type, body
):
    async with make_client() as client:
        rebound = await client.post(
            "/slack-notify", content=body, headers={"Content-Type": content_type, "Host": REBOUND}
        )
        local = await client.post(
            "/slack-notify", content=body, headers={"Content-Type": content_type, "Host": LOOPBACK}
        )
    _assert_host_refusal(rebound, content_type)
    assert local.status_code == 422, local.text


async def test_with_a_key_configured_the_host_is_not_checked_and_the_key_is_first(make_client):
    """As `require_api_key`: with APP_API_KEY the key is the check, whatever the Host."""
    key = "k" * 32
    malformed = {"Content-Type": JSON, "Host": REBOUND}
    async with make_client(app_api_key=key) as client:
        anonymous = await client.post("/slack-notify", content=b'{"message":', headers=malformed)
        keyed = await client.post("/slack-notify", content=b'{"message":', headers={**malformed, "X-API-Key": key})
    assert anonymous.status_code == 401 and anonymous.json()["type"] == "/problems/unauthorized"
    assert keyed.status_code == 422 and keyed.json()["errors"][0]["type"] == "json_invalid"


async def test_health_needs_no_host_check(make_client):
    async with make_client() as client:
        response = await client.get("/health", headers={"Host": REBOUND})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/slack/events", JSON, b'{"type":'),
        ("/slack/events", JSON, b'{"type":"\xff\xfe"}'),
        ("/whatsapp-webhook", "application/x-www-form-urlencoded", b"%zz=%%&Body=%E0%A4%A"),
        ("/whatsapp-status", "application/x-www-form-urlencoded", b"\xff\xfe\xfd=\x00"),
    ],
)
async def test_a_signed_webhook_answers_a_domain_name_as_it_answers_an_address(make_client, path, content_type, body):
    """The webhooks carry their own signatures and are called by Slack and Twilio by the public name: the Host
    check is not theirs, for a body they cannot parse either."""
    settings = {
        "slack_signing_secret": "s" * 32,
        "slack_bot_token": "xoxb-test",
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "t" * 32,
    }
    async with make_client(**settings) as client:
        rebound = await client.post(path, content=body, headers={"Content-Type": content_type, "Host": REBOUND})
        local = await client.post(path, content=body, headers={"Content-Type": content_type, "Host": LOOPBACK})
    assert rebound.status_code == local.status_code, (rebound.text, local.text)
    assert rebound.json()["type"] == local.json()["type"]
    assert "DNS rebinding" not in rebound.json()["detail"]


async def test_a_public_route_whose_body_fastapi_parses_keeps_its_own_problem(make_client):
    """The webhooks read their bodies raw, so none of the app's public routes has FastAPI parse a body: this one
    does, to pin that `public_paths` still exempts a route from the Host check as from the key check."""

    async def echo(body: Echo) -> dict[str, str]:
        return {"text": body.text}

    async with make_client() as client:
        client.app.add_api_route("/public-echo", echo, methods=["POST"])
        client.app.state.public_paths = client.app.state.public_paths | {"/public-echo"}
        malformed = await client.post(
            "/public-echo", content=b'{"text":', headers={"Content-Type": JSON, "Host": REBOUND}
        )
        parsed = await client.post("/public-echo", json={"text": "hi"}, headers={"Host": REBOUND})
    assert malformed.status_code == 422 and malformed.json()["errors"][0]["type"] == "json_invalid"
    assert parsed.status_code == 200
