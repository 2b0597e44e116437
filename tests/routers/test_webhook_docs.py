"""The signed webhooks document their request bodies and signature headers in OpenAPI, and the documented
examples, once signed, are what the routes accept and act on (the docs describe the real shape)."""

from __future__ import annotations

import json

from tests.workflows.world import runs_of, slack_headers, twilio_signature, wait_for, world


def _operation(schema: dict, path: str) -> dict:
    return schema["paths"][path]["post"]


def _example(operation: dict, media_type: str) -> dict:
    return operation["requestBody"]["content"][media_type]["example"]


async def test_the_webhooks_document_body_and_signature_headers(make_client):
    async with world() as w, make_client(**w.settings()) as client:
        schema = (await client.get("/openapi.json")).json()
    headers = {
        path: [parameter["name"] for parameter in _operation(schema, path)["parameters"] if parameter["in"] == "header"]
        for path in ("/whatsapp-webhook", "/whatsapp-status", "/slack/events")
    }
    assert headers == {
        "/whatsapp-webhook": ["X-Twilio-Signature", "X-Twilio-Webhooks-Signature-Settings"],
        "/whatsapp-status": ["X-Twilio-Signature", "X-Twilio-Webhooks-Signature-Settings"],
        "/slack/events": ["X-Slack-Signature", "X-Slack-Request-Timestamp"],
    }
    for path in ("/whatsapp-webhook", "/whatsapp-status"):
        body = _operation(schema, path)["requestBody"]
        assert list(body["content"]) == ["application/x-www-form-urlencoded"]
        assert "cannot sign" in body["description"]
    assert list(_operation(schema, "/slack/events")["requestBody"]["content"]) == ["application/json"]


async def test_the_documented_whatsapp_example_signed_is_acted_on(make_client):
    async with world() as w:
        async with make_client(**w.settings()) as client:
            example = _example(
                _operation((await client.get("/openapi.json")).json(), "/whatsapp-webhook"),
                "application/x-www-form-urlencoded",
            )
        sender = example["From"].removeprefix("whatsapp:")
        async with make_client(**w.settings(whatsapp_allowed_senders=sender)) as client:
            signature = twilio_signature("http://testserver/whatsapp-webhook", example)
            response = await client.post("/whatsapp-webhook", data=example, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    assert "Started 'writing'" in response.text
    assert [start["description"] for start in w.toggl.starts] == ["writing"]


async def test_the_documented_status_example_signed_is_recorded(make_client):
    async with world() as w, make_client(**w.settings()) as client:
        operation = _operation((await client.get("/openapi.json")).json(), "/whatsapp-status")
        example = _example(operation, "application/x-www-form-urlencoded")
        signature = twilio_signature("http://testserver/whatsapp-status", example)
        response = await client.post("/whatsapp-status", data=example, headers={"X-Twilio-Signature": signature})
        [run] = await runs_of(client, "whatsapp.delivery")
    assert response.status_code == 204
    assert run["status"] == "failed" and "63016" in run["error"]


async def test_the_documented_slack_example_signed_is_acted_on(make_client):
    async with world() as w, make_client(**w.settings()) as client:
        example = _example(_operation((await client.get("/openapi.json")).json(), "/slack/events"), "application/json")
        body = json.dumps(example).encode()
        response = await client.post("/slack/events", content=body, headers=slack_headers(body))
        await wait_for(lambda: w.toggl.starts)
    assert response.status_code == 200
    assert [start["description"] for start in w.toggl.starts] == ["planning"]
