"""Found by a new user's walk through the README and docs (black-box, against the running service)."""

from __future__ import annotations

import pytest


def _refused():
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


@pytest.mark.parametrize("path", ["/runs", "/runs/r1", "/schedule"])
async def test_a_read_that_meets_the_database_down_acted_on_nothing(make_client, monkeypatch, path):
    """GET /runs with PostgreSQL stopped said "what it did may not be recorded. The outcome is unknown: check GET
    /runs once the database is back before retrying", with `outcome_unknown` and no Retry-After: a read does
    nothing, so it is the plain "retry after 5 s" refusal."""
    from core.ledger import Ledger
    from workflows.scheduler import JobScheduler

    async def down(self, *args, **kwargs):
        raise _refused()

    monkeypatch.setattr(Ledger, "list_runs", down)
    monkeypatch.setattr(Ledger, "get_run", down)
    monkeypatch.setattr(JobScheduler, "describe", down)
    async with make_client() as client:
        response = await client.get(path)
    assert response.status_code == 503
    body = response.json()
    assert body["type"] == "/problems/store-unavailable"
    assert body["nothing_sent"] is True and "outcome_unknown" not in body
    assert response.headers["retry-after"] == "5"
    assert "outcome is unknown" not in body["detail"]


async def test_every_setting_skills_says_is_missing_is_one_it_lists(make_client):
    """GET /skills with nothing set: email's missing_settings named SMTP_FROM, which neither its required_settings
    (SMTP_HOST) nor its optional_settings listed, so a reader setting what /skills lists still had no email."""
    async with make_client() as client:
        skills = (await client.get("/skills")).json()["skills"]
    for skill in skills:
        listed = set(skill["required_settings"]) | set(skill["optional_settings"])
        assert set(skill["missing_settings"]) <= listed, skill


@pytest.mark.parametrize(
    ("provider", "settings", "setting"),
    [
        ("gemini", {"gemini_api_key": "g" * 20}, "GEMINI_BASE_URL"),
        ("claude", {"anthropic_api_key": "a" * 20}, "ANTHROPIC_BASE_URL"),
    ],
)
async def test_a_404_from_the_vendor_names_the_base_url_setting(make_client, provider, settings, setting):
    """A gateway path given as GEMINI_BASE_URL that answers 404 said "gemini does not know the model or endpoint
    (...). Check GEMINI_API_KEY and GEMINI_MODEL": the setting that decides the endpoint was not named."""
    from tests.fakes.server import FakeUpstream

    async with FakeUpstream() as gateway:  # no routes: every path is a 404
        base = {"gemini": "gemini_base_url", "claude": "anthropic_base_url"}[provider]
        async with make_client(**settings, **{base: gateway.url + "/wrong/path"}, llm_max_attempts=1) as client:
            response = await client.post("/ai-process", json={"text": "hi", "provider": provider})
    assert response.status_code == 502
    [failure] = response.json()["providers"]
    assert "does not know the model or endpoint" in failure["detail"]
    assert setting in failure["detail"]


async def test_a_toggl_404_names_toggl_base_url(make_client):
    """TOGGL_BASE_URL without its /api/v9 (https://api.track.toggl.com) made GET /timers/current, which names no
    workspace and no entry, answer "Toggl has no such workspace or time entry (404)": nothing said which setting
    was wrong."""
    from tests.fakes.server import FakeUpstream

    async with FakeUpstream() as toggl:  # no routes: every path is a 404
        async with make_client(toggl_api_token="t" * 32, toggl_base_url=toggl.url) as client:
            response = await client.get("/timers/current")
    assert response.status_code == 404
    assert "TOGGL_BASE_URL" in response.json()["detail"]


async def test_a_twilio_404_that_is_not_twilios_names_twilio_base_url(make_client):
    """TWILIO_BASE_URL pointing at something that is not Twilio's REST root (a 404 without Twilio's JSON error
    code) said "Twilio does not know this account: check TWILIO_ACCOUNT_SID", a SID that was right."""
    from tests.fakes.server import FakeUpstream

    async with FakeUpstream() as twilio:  # no routes: every path is a 404 without a Twilio code
        settings = {"twilio_account_sid": "AC" + "0" * 32, "twilio_auth_token": "t" * 32}
        async with make_client(**settings, twilio_base_url=twilio.url + "/2010-04-01") as client:
            response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
    assert response.status_code == 502
    assert "TWILIO_BASE_URL" in response.json()["detail"]
    assert "TWILIO_BASE_URL" in response.json()["settings"]


async def test_a_slack_4xx_that_is_not_slacks_names_slack_base_url(make_client):
    """SLACK_BASE_URL without its api/ (https://slack.com/) is a 404 page: /slack-notify said "Slack answered HTTP
    404 without a usable JSON body", naming no setting."""
    from tests.fakes.server import FakeUpstream, Reply

    async with FakeUpstream() as slack:
        slack.queue(
            "POST", "/chat.postMessage", Reply(404, text="<html>Page not found</html>", content_type="text/html")
        )
        settings = {"slack_bot_token": "xoxb-" + "1" * 20, "slack_default_channel": "#general"}
        async with make_client(**settings, slack_base_url=slack.url + "/") as client:
            response = await client.post("/slack-notify", json={"message": "hi"})
    assert response.status_code == 502
    assert "SLACK_BASE_URL" in response.json()["detail"]


async def test_swagger_response_examples_show_every_field_with_a_value(client):
    """The /ai-process response example in /docs had no `truncated` or `refused`, the two flags the README says to
    read (an answer cut short, a safety refusal), nor `dry_run`; the briefing's steps had no `outcome_unknown`."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]

    def missing(example, schema, where):
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
        if isinstance(example, list):
            return [gap for item in example for gap in missing(item, schema.get("items", {}), where + "[]")]
        if not isinstance(example, dict) or "properties" not in schema:
            return []
        gaps = [
            f"{where}.{name}"
            for name, prop in schema["properties"].items()
            if prop.get("default") is not None and name not in example  # FastAPI drops nulls from examples
        ]
        for name, value in example.items():
            prop = schema["properties"].get(name, {})
            for option in prop.get("anyOf", [prop]):
                gaps += missing(value, option, f"{where}.{name}")
        return gaps

    gaps = [gap for name, schema in schemas.items() for gap in missing(schema.get("example"), schema, name)]
    assert gaps == []


async def test_the_schedule_example_is_what_get_schedule_shows(make_client):
    """GET /schedule gives every time in TIMEZONE with its offset, and the cron job's days as names; the /docs
    example, in Europe/Berlin, gave its stop's times in UTC ("...Z") and the days as "1-5"."""
    async with make_client(timezone="Europe/Berlin", briefing_cron="0 8 * * 1-5") as client:
        example = (await client.get("/openapi.json")).json()["components"]["schemas"]["ScheduleOut"]["example"]
        real = (await client.get("/schedule")).json()
    assert example["timezone"] == real["timezone"] and example["briefing_cron"] == real["briefing_cron"]
    [job] = [job for job in real["jobs"] if job["id"] == "morning-briefing"]
    assert example["jobs"][0]["trigger"] == job["trigger"]
    for stop in example["stops"]:
        assert not stop["run_at"].endswith("Z") and not stop["planned_stop"].endswith("Z")


async def test_the_workspace_advice_does_not_claim_every_stop_needs_one(make_client):
    """/health said, while TOGGL_WORKSPACE_ID is unset, that "POST /start-timer and /stop-timer need a workspace_id
    in each request", but POST /stop-timer without a body stops the running timer in its own workspace."""
    from tests.fakes.server import FakeUpstream, Reply

    async with FakeUpstream() as toggl:
        toggl.queue("GET", "/me/time_entries/current", Reply(200, json=None))
        async with make_client(toggl_api_token="t" * 32, toggl_base_url=toggl.url) as client:
            stop = await client.post("/stop-timer")
            [advice] = (await client.get("/health")).json()["integrations"]["toggl"]["advice"]
    assert stop.status_code == 200 and stop.json()["stopped"] is False
    assert "/stop-timer need a workspace_id in each request" not in advice
    assert "entry_id" in advice


async def test_a_bad_twilio_signature_with_public_base_url_set_says_what_to_check(make_client, caplog):
    """With PUBLIC_BASE_URL set, a signature that did not match (a new ngrok host, another account's token) was
    told to "set PUBLIC_BASE_URL", already set, and never to check TWILIO_AUTH_TOKEN; the log did not say which
    URL was checked against what Twilio signed."""
    settings = {
        # With Twilio's HTTP basic auth in it (so that status callbacks authenticate): a review of the log line
        # found any unsigned POST wrote that password into the log.
        "public_base_url": "https://twilio:hunter2-basic-auth@old-tunnel.ngrok.app",
        "app_api_key": "k" * 24,
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "t" * 32,
        "whatsapp_allowed_senders": "+15551234567",
    }
    async with make_client(**settings) as client:
        response = await client.post(
            "/whatsapp-webhook?hook_token=users-own-webhook-secret",
            data={"MessageSid": "SM" + "0" * 32, "From": "whatsapp:+15551234567", "Body": "status"},
            headers={"X-Twilio-Signature": "c2lnbmVkIGJ5IGFub3RoZXIgdG9rZW4="},
        )
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert "TWILIO_AUTH_TOKEN" in detail
    assert "set PUBLIC_BASE_URL" not in detail and "PUBLIC_BASE_URL" in detail
    assert "checked for https://old-tunnel.ngrok.app/whatsapp-webhook)" in caplog.text
    assert "users-own-webhook-secret" not in caplog.text  # a token of the user's own in the webhook URL
    assert "hunter2-basic-auth" not in caplog.text
