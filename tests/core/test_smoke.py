import logging

import pytest


async def test_health_with_no_configuration(client):
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert set(body["integrations"]) == {
        "gemini",
        "claude",
        "local",
        "slack",
        "toggl",
        "email",
        "whatsapp",
        "slack_events",
        "whatsapp_webhook",
    }
    assert not any(item["configured"] for item in body["integrations"].values())
    # The webhooks say what they need, like the skills (found by a review: a bot token alone looked enough).
    assert body["integrations"]["slack_events"] == {
        "configured": False,
        "kind": "inbound",
        "missing_settings": ["SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN"],
        "advice": [],
    }
    assert body["integrations"]["whatsapp_webhook"]["missing_settings"] == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    # Not a requirement (without a proxy the request's own URL is the signed one), but said.
    # Advice only for what is (being) set up: the allowlist is asked for once Twilio is.
    [advice] = body["integrations"]["whatsapp_webhook"]["advice"]
    assert "PUBLIC_BASE_URL" in advice


async def test_a_webhook_is_configured_only_with_everything_it_needs(make_client):
    async with make_client(
        slack_bot_token="xoxb-1", twilio_auth_token="t" * 32, twilio_account_sid="AC" + "0" * 32
    ) as client:
        partly = (await client.get("/health")).json()["integrations"]
    async with make_client(
        slack_bot_token="xoxb-1",
        slack_signing_secret="s" * 32,
        twilio_auth_token="t" * 32,
        twilio_account_sid="AC" + "0" * 32,
        trust_proxy_headers=True,
        whatsapp_allowed_senders="+15551234567",
    ) as client:
        fully = (await client.get("/health")).json()["integrations"]
    assert partly["slack"]["configured"] and not partly["slack_events"]["configured"]
    assert partly["slack_events"]["missing_settings"] == ["SLACK_SIGNING_SECRET"]
    assert partly["whatsapp_webhook"]["configured"] and partly["whatsapp_webhook"]["advice"]
    assert fully["slack_events"]["configured"] and fully["whatsapp_webhook"]["configured"]
    # TRUST_PROXY_HEADERS: the forwarded URL is checked; and someone may command it.
    assert fully["whatsapp_webhook"]["advice"] == []


async def test_fake_upstream_records_requests():
    import httpx

    from tests.fakes.server import FakeUpstream, Reply

    async with FakeUpstream() as fake:
        fake.route("POST", "/echo", lambda req: Reply(json={"got": req.json}))
        fake.queue("POST", "/echo", Reply(429, json={"error": "slow down"}, headers={"Retry-After": "1"}))
        async with httpx.AsyncClient(base_url=fake.url) as http:
            first = await http.post("/echo", json={"a": 1})
            second = await http.post("/echo", json={"a": 2})
    assert (first.status_code, first.headers["retry-after"]) == (429, "1")
    assert second.json() == {"got": {"a": 2}}
    assert [r.json for r in fake.calls("POST", "/echo")] == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({"api_host": "0.0.0.0"}, True),
        ({"api_host": "0.0.0.0", "app_api_key": "k-network"}, False),
        ({"api_host": "127.0.0.1"}, False),
        ({"api_host": "::1"}, False),
    ],
)
async def test_listening_beyond_this_machine_without_a_key_is_said_at_start_up(make_client, caplog, overrides, warned):
    """Found by a security review: nothing was said when every action endpoint was open to the network."""
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        async with make_client(**overrides):
            pass
    said = [record.getMessage() for record in caplog.records if "without APP_API_KEY" in record.getMessage()]
    assert bool(said) is warned
    if warned:
        assert said == [
            "API_HOST=0.0.0.0 without APP_API_KEY: every action endpoint and /runs is open to anyone who can reach "
            "this machine. Set APP_API_KEY, or API_HOST=127.0.0.1."
        ]
