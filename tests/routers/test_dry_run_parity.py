"""A dry run answers what the real run would, on every single-action endpoint, and its ledger row says it was one.

Each case sends the same request twice to the same app, once with `?dry_run=true` and once for real, and compares
what the service could know without asking anyone upstream: the status code, the problem type and the settings
it names. The fakes' URLs are set, so a dry run that called out would reach them.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.workflows.world import TOGGL_BASE, TWILIO_BASE, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def nowhere_configured(w) -> dict[str, Any]:
    """No credentials at all, every base URL pointing at a fake."""
    return {
        "toggl_base_url": TOGGL_BASE,
        "twilio_base_url": TWILIO_BASE,
        "slack_base_url": w.slack.base_url,
        "anthropic_base_url": w.claude.url,
    }


ACTIONS = [
    ("/slack-notify", {"message": "Deploy finished"}, "slack.notify", ["SLACK_BOT_TOKEN"]),
    ("/start-timer", {"task_name": "Write", "duration_minutes": 25}, "toggl.start_timer", ["TOGGL_API_TOKEN"]),
    ("/stop-timer", {}, "toggl.stop_timer", ["TOGGL_API_TOKEN"]),
    (
        "/send-email",
        {"to_address": "ann@example.com", "subject": "Plan", "body": "Deep work first."},
        "email.send",
        ["SMTP_HOST", "SMTP_FROM"],
    ),
    (
        "/whatsapp-send",
        {"to": "+15551234567", "body": "Standup"},
        "whatsapp.send",
        ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"],
    ),
    ("/ai-process", {"text": "Plan my day"}, "ai.process", ["GEMINI_API_KEY", "ANTHROPIC_API_KEY"]),
]


@pytest.mark.parametrize(("path", "body", "kind", "missing"), ACTIONS, ids=[case[0] for case in ACTIONS])
async def test_unconfigured_a_dry_run_is_the_real_runs_503_and_its_failed_run_says_dry_run(
    w, make_client, path, body, kind, missing
):
    """A failed rehearsal was recorded exactly as a failed real action (`failed`, nothing saying dry run) on every
    endpoint but /start-timer: GET /runs showed a Slack post, an email or a WhatsApp message that had failed,
    where nothing had been attempted at all (found by a dry-run review)."""
    async with make_client(**nowhere_configured(w)) as client:
        rehearsal = await client.post(f"{path}?dry_run=true", json=body)
        real = await client.post(path, json=body)
        rehearsal_run = (await client.get(f"/runs/{rehearsal.json()['run_id']}")).json()
        real_run = (await client.get(f"/runs/{real.json()['run_id']}")).json()
    assert rehearsal.status_code == real.status_code == 503, rehearsal.json()
    assert rehearsal.json()["type"] == real.json()["type"] == "/problems/not-configured"
    assert rehearsal.json()["missing_settings"] == real.json()["missing_settings"] == missing
    assert rehearsal_run["kind"] == real_run["kind"] == kind
    assert rehearsal_run["status"] == real_run["status"] == "failed"
    assert rehearsal_run["input_summary"]["dry_run"] is True
    assert "dry_run" not in real_run["input_summary"]
    assert w.toggl.mock.calls.call_count == 0  # no httpx request at all (Toggl, Twilio), to a fake or anywhere else
    assert w.slack.requests == [] and w.claude.requests == []
