"""GET /skills: read from the registry, names of missing settings only, never values."""

from __future__ import annotations

SLACK_TOKEN = "xoxb-never-shown-1234"
TWILIO_TOKEN = "twilio-never-shown-5678"


async def test_lists_every_registered_skill_and_no_llm(client):
    response = await client.get("/skills")
    assert response.status_code == 200
    skills = {item["name"]: item for item in response.json()["skills"]}
    registry = client.app.state.registry
    assert set(skills) == {item.name for item in registry.of_kind("skill")}
    assert {"slack", "toggl", "email", "whatsapp"} <= set(skills)
    assert not {"gemini", "claude"} & set(skills)
    for name, item in skills.items():
        integration = registry.get(name)
        assert item["description"] == integration.description
        assert item["operations"] == list(integration.operations)
        assert item["configured"] is False
        assert item["missing_settings"]


async def test_unconfigured_slack_and_whatsapp_name_what_is_missing(client):
    skills = {item["name"]: item for item in (await client.get("/skills")).json()["skills"]}
    assert skills["slack"] == {
        "name": "slack",
        "description": "Post messages to Slack channels and threads.",
        "configured": False,
        "missing_settings": ["SLACK_BOT_TOKEN"],
        "required_settings": ["SLACK_BOT_TOKEN"],
        "optional_settings": ["SLACK_DEFAULT_CHANNEL", "SLACK_SIGNING_SECRET", "SLACK_BASE_URL"],
        "operations": ["post_message"],
    }
    assert skills["whatsapp"]["missing_settings"] == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    assert skills["whatsapp"]["operations"] == ["send_message"]


async def test_configured_skills_show_no_missing_settings_and_no_values(make_client):
    async with make_client(
        slack_bot_token=SLACK_TOKEN, twilio_account_sid="AC123", twilio_auth_token=TWILIO_TOKEN
    ) as client:
        response = await client.get("/skills")
    skills = {item["name"]: item for item in response.json()["skills"]}
    assert (skills["slack"]["configured"], skills["slack"]["missing_settings"]) == (True, [])
    assert (skills["whatsapp"]["configured"], skills["whatsapp"]["missing_settings"]) == (True, [])
    assert skills["toggl"]["configured"] is False
    for secret in (SLACK_TOKEN, TWILIO_TOKEN, "AC123"):
        assert secret not in response.text


async def test_partly_configured_whatsapp_names_only_the_missing_one(make_client):
    async with make_client(twilio_account_sid="AC123") as client:
        skills = {item["name"]: item for item in (await client.get("/skills")).json()["skills"]}
    assert skills["whatsapp"]["missing_settings"] == ["TWILIO_AUTH_TOKEN"]


async def test_needs_the_api_key_when_one_is_set(make_client):
    async with make_client(app_api_key="s" * 32) as client:
        refused = await client.get("/skills")
        accepted = await client.get("/skills", headers={"Authorization": "Bearer " + "s" * 32})
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert accepted.status_code == 200


async def test_documented_in_openapi_with_tags_and_examples(client):
    schema = (await client.get("/openapi.json")).json()
    for path, method in (("/skills", "get"), ("/slack-notify", "post"), ("/whatsapp-send", "post")):
        operation = schema["paths"][path][method]
        assert operation["tags"] and operation["summary"]
        assert "401" in operation["responses"]
    for name in (
        "SlackNotifyRequest",
        "SlackNotifyResponse",
        "WhatsAppSendRequest",
        "WhatsAppSendResponse",
        "SkillList",
    ):
        assert "example" in schema["components"]["schemas"][name], name
