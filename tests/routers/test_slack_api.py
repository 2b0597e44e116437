"""POST /slack-notify through the real app and lifespan, against the Slack fake on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.validation import json_depth
from skills.slack import ATTEMPTS
from tests.fakes.server import Reply
from tests.fakes.slack import CHAT_POST_MESSAGE, FakeSlack

TOKEN = "xoxb-api-test-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=TOKEN) as server:
        yield server


@pytest.fixture
def slack_client(make_client, fake):
    def _make(**overrides):
        values = {"slack_bot_token": TOKEN, "slack_base_url": fake.base_url, "slack_default_channel": "#general"}
        return make_client(**{**values, **overrides})

    return _make


async def _only_run(client, kind: str = "slack.notify") -> dict:
    page = (await client.get("/runs", params={"kind": kind})).json()
    assert page["total"] == 1, page
    return (await client.get(f"/runs/{page['items'][0]['id']}")).json()


async def test_posts_and_records_the_run(slack_client, fake):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Shipped*"}}]
    async with slack_client() as client:
        response = await client.post(
            "/slack-notify",
            json={"message": "Shipped", "channel": "#alerts", "thread_ts": "1732521600.000100", "blocks": blocks},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()

    assert body == {"run_id": body["run_id"], "dry_run": False, "channel": "C0000000003", "ts": "1732521600.000001"}
    [request] = fake.calls("POST", CHAT_POST_MESSAGE)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    sent = {"channel": "#alerts", "text": "Shipped", "blocks": blocks, "thread_ts": "1732521600.000100"}
    assert request.json == sent

    assert (run["kind"], run["trigger"], run["status"]) == ("slack.notify", "api", "ok")
    assert run["input_summary"] == {
        "channel": "#alerts",
        "message_chars": 7,
        "blocks": 1,
        "thread_ts": "1732521600.000100",
    }
    [action] = run["actions"]
    assert (action["skill"], action["operation"], action["status"]) == ("slack", "post_message", "ok")
    assert action["external_id"] == "C0000000003/1732521600.000001"
    assert action["request"] == sent
    assert action["attempts"] == 1
    assert run["result"]["ts"] == "1732521600.000001"


async def test_channel_defaults_to_slack_default_channel(slack_client, fake):
    async with slack_client(slack_default_channel="#random") as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
    assert response.json()["channel"] == "C0000000002"
    assert fake.posts == [{"channel": "#random", "text": "hi"}]


async def test_no_channel_is_422_and_recorded(slack_client, fake):
    async with slack_client(slack_default_channel=None) as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
        run = await _only_run(client)
    assert response.status_code == 422
    assert "SLACK_DEFAULT_CHANNEL" in response.json()["detail"]
    assert run["status"] == "failed"
    assert fake.requests == []


async def test_unconfigured_is_503_naming_the_variable_and_recorded(make_client):
    async with make_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi", "channel": "#general"})
        run = await _only_run(client)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["missing_settings"] == ["SLACK_BOT_TOKEN"]
    assert run["status"] == "failed"
    assert run["actions"][0]["status"] == "failed"
    assert "SLACK_BOT_TOKEN" in run["actions"][0]["error"]


def nested(levels: int) -> dict:
    """A block whose `text` nests `levels` objects deep (the block itself is one more, the list another)."""
    inner: dict = {"type": "plain_text", "text": "deep"}
    for _ in range(levels - 1):
        inner = {"type": "x", "text": inner}
    return {"type": "section", "text": inner}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"message": ""},
        {"message": "hi", "thread_ts": "yesterday"},
        {"message": "hi", "text": "typo field"},
        {"message": "hi", "blocks": [{"type": "divider"}] * 51},
        {"message": "hi", "blocks": [nested(300)]},
        {"message": "hi", "blocks": [nested(16)]},
    ],
    ids=["missing", "empty", "bad-thread-ts", "unknown-field", "too-many-blocks", "nested-300", "nested-18"],
)
async def test_invalid_bodies_are_422_without_a_post(slack_client, fake, body):
    async with slack_client() as client:
        response = await client.post("/slack-notify", json=body)
    assert response.status_code == 422
    assert fake.requests == []


async def test_needs_the_api_key_when_one_is_set(slack_client, fake):
    async with slack_client(app_api_key="k" * 32) as client:
        refused = await client.post("/slack-notify", json={"message": "hi"})
        accepted = await client.post("/slack-notify", json={"message": "hi"}, headers={"X-API-Key": "k" * 32})
    assert refused.status_code == 401
    assert accepted.status_code == 200
    assert len(fake.posts) == 1


# --- Idempotency and dry run ----------------------------------------------------------------


async def test_same_idempotency_key_twice_posts_once_and_replays(slack_client, fake):
    headers = {"Idempotency-Key": "notify-0001"}
    async with slack_client() as client:
        first = await client.post("/slack-notify", json={"message": "once"}, headers=headers)
        second = await client.post("/slack-notify", json={"message": "once"}, headers=headers)
        other = await client.post("/slack-notify", json={"message": "different"}, headers=headers)
        runs = (await client.get("/runs", params={"kind": "slack.notify"})).json()
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert other.status_code == 422
    assert len(fake.posts) == 1
    assert runs["total"] == 1


async def test_a_dry_run_is_not_replayed_as_a_real_post(slack_client, fake):
    headers = {"Idempotency-Key": "notify-0002"}
    async with slack_client() as client:
        dry = await client.post("/slack-notify?dry_run=true", json={"message": "x"}, headers=headers)
        real = await client.post("/slack-notify", json={"message": "x"}, headers=headers)
    assert dry.json()["dry_run"] is True
    assert real.status_code == 422, "same key, different request: the dry run must not stand in for the post"
    assert fake.posts == []


@pytest.mark.parametrize("how", ["query", "setting"])
async def test_dry_run_records_the_exact_payload_without_posting(slack_client, fake, how):
    overrides = {"dry_run": True} if how == "setting" else {}
    url = "/slack-notify?dry_run=true" if how == "query" else "/slack-notify"
    async with slack_client(**overrides) as client:
        response = await client.post(url, json={"message": "hello", "thread_ts": "1.2"})
        run = (await client.get(f"/runs/{response.json()['run_id']}")).json()
    assert response.status_code == 200
    assert response.json()["dry_run"] is True
    assert response.json()["ts"] is None
    assert fake.requests == []
    assert run["status"] == "dry_run"
    [action] = run["actions"]
    assert action["status"] == "dry_run"
    assert action["request"] == {"channel": "#general", "text": "hello", "thread_ts": "1.2"}


# --- Mapped failures, recorded ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        ("channel_not_found", 404, "not found"),
        ("not_in_channel", 409, "/invite"),
        ("is_archived", 409, "archived"),
        ("invalid_auth", 502, "SLACK_BOT_TOKEN"),
        ("msg_too_long", 422, "too long"),
    ],
)
async def test_slack_refusals_are_problems_and_failed_actions(slack_client, fake, error, status, words):
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(json={"ok": False, "error": error}))
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
        run = await _only_run(client)
    assert response.status_code == status
    problem = response.json()
    assert words in problem["detail"]
    assert problem["slack_error"] == error
    assert TOKEN not in response.text
    assert run["status"] == "failed"
    [action] = run["actions"]
    assert action["status"] == "failed"
    assert action["attempts"] == 1
    assert action["error"].startswith(f"{status} ")
    assert words in action["error"]


async def test_rate_limit_that_persists_is_429_with_retry_after_and_counted_attempts(slack_client, fake):
    limited = Reply(429, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "0"})
    fake.queue("POST", CHAT_POST_MESSAGE, *[limited] * ATTEMPTS)
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
        run = await _only_run(client)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0"
    assert len(fake.posts) == ATTEMPTS
    assert run["actions"][0]["attempts"] == ATTEMPTS
    assert "429" in run["actions"][0]["error"]


async def test_rate_limit_then_success_is_one_post_recorded_with_two_attempts(slack_client, fake):
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(429, json={"ok": False}, headers={"Retry-After": "1"}))
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
        run = (await client.get(f"/runs/{response.json()['run_id']}")).json()
    assert response.status_code == 200
    assert run["actions"][0]["attempts"] == 2


@pytest.mark.parametrize(
    ("replies", "status", "attempts"),
    [
        # A 5xx, a dropped answer or a timeout: the request reached Slack, which may have posted it. One attempt,
        # never repeated (a retry, were there one, would meet the queued copies and post them).
        ([Reply(500, json={"ok": False, "error": "fatal_error"})] * ATTEMPTS, 502, 1),
        ([Reply(503, text="unavailable")] * ATTEMPTS, 503, 1),
        ([Reply(502, text="<html>bad gateway</html>", content_type="text/html")] * ATTEMPTS, 502, 1),
        ([Reply(504, text="gateway timeout")] * ATTEMPTS, 504, 1),
        ([Reply(200, text="{not json")], 502, 1),
        ([Reply(drop=True)] * ATTEMPTS, 503, 1),
        ([Reply(json={"ok": True, "ts": "1.1"}, delay=1.0)] * ATTEMPTS, 504, 1),
    ],
    ids=["500", "503", "html-502", "504", "invalid-json", "reset", "slow-past-timeout"],
)
async def test_faults_are_mapped_bounded_and_recorded(slack_client, fake, replies, status, attempts):
    fake.queue("POST", CHAT_POST_MESSAGE, *replies)
    async with slack_client(http_timeout_seconds=0.3) as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
        run = await _only_run(client)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["upstream"] == "slack"
    assert len(fake.posts) == attempts
    [action] = run["actions"]
    assert (run["status"], action["status"]) == ("failed", "failed")
    assert action["attempts"] == attempts
    assert action["error"].startswith(str(status))


async def test_fatal_error_500_is_one_post_and_a_failed_action_saying_how_to_check(slack_client, fake):
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(500, json={"ok": False, "error": "fatal_error"}))
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi", "channel": "#alerts"})
        run = await _only_run(client)
    assert len(fake.posts) == 1
    assert response.status_code == 502
    problem = response.json()
    detail = (
        "Slack answered 500 (fatal_error). The outcome is unknown: the message may have been posted; "
        "check #alerts before retrying."
    )
    assert (problem["type"], problem["detail"]) == ("/problems/upstream-error", detail)
    assert (problem["upstream"], problem["upstream_status"], problem["slack_error"]) == ("slack", 500, "fatal_error")
    [action] = run["actions"]
    assert (run["status"], action["status"], action["attempts"]) == ("failed", "failed", 1)
    assert action["error"] == f"502 upstream-error: {detail}"


async def test_connection_refused_is_503_and_recorded(make_client):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with make_client(
        slack_bot_token=TOKEN, slack_base_url=f"http://127.0.0.1:{port}/api/", slack_default_channel="#general"
    ) as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
        run = await _only_run(client)
    assert response.status_code == 503
    assert run["actions"][0]["attempts"] == ATTEMPTS
    assert "could not be reached" in run["actions"][0]["error"]


async def test_blocks_as_deep_as_block_kit_goes_are_posted(slack_client, fake):
    """At the limit (16 levels, the list included) the post goes out and its record reads back."""
    async with slack_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi", "blocks": [nested(14)]})
        run = await _only_run(client)
    assert response.status_code == 200
    assert fake.calls("POST", CHAT_POST_MESSAGE)[0].json["blocks"] == [nested(14)]
    assert run["actions"][0]["request"]["blocks"] == [nested(14)]


async def test_block_depth_limit_is_exact_16_posted_17_refused(slack_client, fake):
    """Both sides of MAX_BLOCK_DEPTH (16, the list included): one level more is a 422 and nothing reaches Slack
    (pinned by a mutation review: only 16 and 18 were tried)."""
    at_limit, one_deeper = [nested(14)], [nested(15)]
    assert (json_depth(at_limit), json_depth(one_deeper)) == (16, 17)
    async with slack_client() as client:
        refused = await client.post("/slack-notify", json={"message": "hi", "blocks": one_deeper})
        assert fake.requests == []
        posted = await client.post("/slack-notify", json={"message": "hi", "blocks": at_limit})
        runs = (await client.get("/runs", params={"kind": "slack.notify"})).json()
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    [error] = refused.json()["errors"]
    assert error["field"] == "body.blocks"
    assert "nest 17 levels deep; Block Kit needs at most 16" in error["message"]
    assert posted.status_code == 200, posted.text
    assert [request.json["blocks"] for request in fake.calls("POST", CHAT_POST_MESSAGE)] == [at_limit]
    assert runs["total"] == 1  # the refused request opened no run


@pytest.mark.parametrize("briefing_channel", [None, "#daily"])
async def test_health_advises_a_default_channel_when_slack_has_none(slack_client, briefing_channel):
    """Found by a user review: without SLACK_DEFAULT_CHANNEL the chat `start` could not announce its timer (and a
    scheduled briefing without BRIEFING_CHANNEL had nowhere to post), and /health said nothing of it."""
    async with slack_client(slack_default_channel=None, briefing_channel=briefing_channel) as client:
        slack = (await client.get("/health")).json()["integrations"]["slack"]
    async with slack_client() as client:
        with_channel = (await client.get("/health")).json()["integrations"]["slack"]
    assert slack["configured"] is True
    [advice] = slack["advice"]
    assert advice.startswith("SLACK_DEFAULT_CHANNEL is not set: POST /slack-notify needs a `channel` in each request")
    assert ("BRIEFING_CHANNEL" in advice) is (briefing_channel is None)
    assert with_channel["advice"] == []
