"""POST /slack/events through the real app: signatures built with slack_sdk's SignatureVerifier, the
url_verification handshake, replays, what is ignored, and answers posted in the thread."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import pytest

from tests.fakes.llm import FakeGemini, gemini_error
from tests.fakes.slack import CHAT_POST_MESSAGE
from tests.workflows.world import SLACK_SECRET, finished_runs, runs_of, slack_headers, wait_for, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def callback(event: dict, *, event_id: str = "Ev0001") -> bytes:
    payload = {
        "token": "legacy-verification-token",
        "team_id": "T0001",
        "api_app_id": "A0001",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": "T0001", "user_id": "UBOT", "is_bot": True}],
        "event": event,
    }
    return json.dumps(payload).encode()


def mention(text: str, **extra) -> dict:
    return {
        "type": "app_mention",
        "user": "UHUMAN",
        "text": text,
        "ts": "1764057600.000100",
        "channel": "C0000000002",
        **extra,
    }


async def post(client, body: bytes, headers: dict | None = None):
    return await client.post("/slack/events", content=body, headers=headers or slack_headers(body))


async def test_url_verification_echoes_the_challenge(w, make_client):
    body = json.dumps({"type": "url_verification", "token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY"}).encode()
    async with make_client(**w.settings()) as client:
        response = await post(client, body)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY"}


async def test_bad_signature_is_rejected_and_nothing_runs(w, make_client):
    body = callback(mention("<@UBOT> start"))
    async with make_client(**w.settings()) as client:
        forged = await post(client, body, slack_headers(body, secret="someone-elses-secret"))
        missing = await client.post("/slack/events", content=body, headers={"Content-Type": "application/json"})
        await asyncio.sleep(0.2)
    assert forged.status_code == 403 and missing.status_code == 403
    assert forged.headers["content-type"] == "application/problem+json"
    assert SLACK_SECRET not in forged.text
    assert w.toggl.starts == [] and w.slack.requests == []


async def test_timestamp_older_than_five_minutes_is_rejected(w, make_client):
    body = callback(mention("<@UBOT> status"))
    async with make_client(**w.settings()) as client:
        stale = await post(client, body, slack_headers(body, timestamp=int(time.time()) - 301))
        fresh = await post(client, body, slack_headers(body, timestamp=int(time.time()) - 240))
    assert stale.status_code == 403
    assert "5 minutes" in stale.json()["detail"]
    assert fresh.status_code == 200


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        ("abc", "v0=00"),
        ("1e3", "v0=00"),
        ("-5", "v0=00"),
        ("١٢٣", "v0=00"),
        (None, "v0=00"),
        ("now", "v0=é"),
        ("9" * 5000, "v0=00"),  # over CPython's 4,300-digit int() limit: a 500 again (found by a review)
    ],
)
async def test_a_malformed_timestamp_or_signature_header_is_403_not_500(w, make_client, timestamp, signature):
    """Found by schemathesis (once the headers were documented) and a black-box review: an unauthenticated 500."""
    body = callback(mention("<@UBOT> status"))
    headers = {"Content-Type": b"application/json", "X-Slack-Signature": signature.encode()}  # bytes: non-ASCII too
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = (str(int(time.time())) if timestamp == "now" else timestamp).encode()
    async with make_client(**w.settings()) as client:
        response = await client.post("/slack/events", content=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/forbidden"


async def test_no_signing_secret_is_503(w, make_client):
    body = callback(mention("hi"))
    async with make_client(**w.settings(slack_signing_secret=None)) as client:
        response = await post(client, body)
    assert response.status_code == 503
    assert response.json()["missing_settings"] == ["SLACK_SIGNING_SECRET"]


async def test_mention_command_runs_and_replies_in_the_thread(w, make_client):
    body = callback(mention("<@UBOT> start planning for 20 min"))
    async with make_client(**w.settings()) as client:
        started = time.perf_counter()
        response = await post(client, body)
        ack_seconds = time.perf_counter() - started
        [reply_run] = await finished_runs(client, "slack.reply")
        [start_run] = await runs_of(client, "command.start")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert ack_seconds < 3
    assert w.toggl.starts[0]["description"] == "planning"
    announcement, reply = w.slack.posts
    assert announcement["channel"] == "#general" and "planning" in announcement["text"]
    assert reply["channel"] == "C0000000002"
    assert reply["thread_ts"] == "1764057600.000100"
    assert reply["text"].startswith("Started 'planning' at ")
    assert start_run["trigger"] == "slack" and start_run["input_summary"]["sender"] == "UHUMAN"
    assert reply_run["status"] == "ok"


async def test_direct_message_gets_an_ai_answer_in_its_thread(w, make_client):
    w.claude.answer = "Start with the hardest task."
    event = {
        "type": "message",
        "channel_type": "im",
        "user": "UHUMAN",
        "text": "What should I start with?",
        "ts": "1764057600.000200",
        "thread_ts": "1764057500.000100",
        "channel": "D0000000001",
    }
    w.slack.channels["dm"] = "D0000000001"
    async with make_client(**w.settings()) as client:
        await post(client, callback(event))
        await finished_runs(client, "slack.reply")
    assert w.claude.prompts == ["What should I start with?"]
    [reply] = w.slack.posts
    assert reply == {"channel": "D0000000001", "text": "Start with the hardest task.", "thread_ts": "1764057500.000100"}
    assert w.toggl.starts == []


async def test_ack_is_immediate_even_when_the_work_is_slow(w, make_client):
    w.claude.delay = 3.5
    async with make_client(**w.settings()) as client:
        started = time.perf_counter()
        response = await post(client, callback(mention("<@UBOT> summarise the week")))
        elapsed = time.perf_counter() - started
        await finished_runs(client, "slack.reply")
    assert response.status_code == 200
    assert elapsed < 1.0
    assert len(w.slack.posts) == 1


@pytest.mark.parametrize(
    "event",
    [
        mention("<@UBOT> start", bot_id="B0001"),
        mention("<@UBOT> start", subtype="bot_message"),
        {"type": "message", "subtype": "message_changed", "channel_type": "im", "channel": "D1", "ts": "1.2"},
        {"type": "message", "channel_type": "im", "user": "UBOT", "text": "start", "ts": "1.3", "channel": "D1"},
        {"type": "message", "channel_type": "channel", "user": "UHUMAN", "text": "start", "ts": "1.4", "channel": "C1"},
        {"type": "reaction_added", "user": "UHUMAN", "reaction": "thumbsup"},
    ],
    ids=["bot_id", "bot_message", "edit", "own_message", "channel_chatter", "other_event"],
)
async def test_ignored_events_do_nothing(w, make_client, event):
    async with make_client(**w.settings()) as client:
        response = await post(client, callback(event))
        await asyncio.sleep(0.3)
        assert await runs_of(client, "slack.reply") == []
    assert response.status_code == 200
    assert w.toggl.starts == [] and w.slack.requests == [] and w.claude.requests == []


async def test_retries_and_concurrent_duplicates_act_once(w, make_client):
    body = callback(mention("<@UBOT> start"), event_id="EvDup")
    async with make_client(**w.settings()) as client:
        responses = await asyncio.gather(*(post(client, body) for _ in range(10)))
        await finished_runs(client, "slack.reply")
        retry = await post(client, body, {**slack_headers(body), "X-Slack-Retry-Num": "1"})
        await asyncio.sleep(0.2)
    assert all(response.status_code == 200 for response in [*responses, retry])
    assert len(w.toggl.starts) == 1
    assert len(w.slack.calls("POST", CHAT_POST_MESSAGE)) == 2  # one announcement, one thread reply


async def test_replay_survives_a_restart(w, make_client, make_settings):
    body = callback(mention("<@UBOT> start"), event_id="EvPersisted")
    async with make_client(**w.settings()) as client:
        await post(client, body)
        await wait_for(lambda: len(w.slack.posts) == 2)
    async with make_client(**w.settings()) as client:
        await post(client, body)
        await asyncio.sleep(0.3)
    assert len(w.toggl.starts) == 1


async def test_a_dm_that_mentions_the_bot_is_answered_once(w, make_client):
    """Slack sends such a message twice, as message.im and as app_mention, with different event_ids."""
    text = "<@UBOT> start planning for 20 min"
    same_message = {"user": "UHUMAN", "text": text, "ts": "1764057600.000300", "channel": "D0000000001"}
    as_dm = callback({"type": "message", "channel_type": "im", **same_message}, event_id="EvAsMessage")
    as_mention = callback({"type": "app_mention", **same_message}, event_id="EvAsMention")
    w.slack.channels["dm"] = "D0000000001"
    async with make_client(**w.settings()) as client:
        responses = await asyncio.gather(post(client, as_dm), post(client, as_mention))
        await finished_runs(client, "slack.reply")
        await asyncio.sleep(0.3)
        assert len(await runs_of(client, "slack.reply")) == 1
    assert [response.status_code for response in responses] == [200, 200]
    assert len(w.toggl.starts) == 1
    thread_replies = [post for post in w.slack.posts if post.get("thread_ts") == "1764057600.000300"]
    assert len(thread_replies) == 1


async def test_two_messages_with_the_same_ts_in_different_channels_are_both_answered(w, make_client):
    """The message key is channel and ts together: a ts alone is only unique within its channel."""
    w.claude.answer = "ok"
    first = callback(mention("<@UBOT> how are you", channel="C0000000002"), event_id="EvChannelA")
    second = callback(mention("<@UBOT> how are you", channel="C0000000003"), event_id="EvChannelB")
    async with make_client(**w.settings()) as client:
        await post(client, first)
        await post(client, second)
        await finished_runs(client, "slack.reply", count=2)
    assert sorted(post["channel"] for post in w.slack.posts) == ["C0000000002", "C0000000003"]


async def test_a_failed_message_claim_holds_neither_claim_so_slacks_retry_is_answered(w, make_client, monkeypatch):
    """A failure (here not even the database's) at the message's row: the event's row, in the same transaction,
    is not kept either, so Slack's retry (same event_id) is not taken for a redelivery."""
    from workflows import inbound

    real_insert = inbound._insert_new
    calls = 0

    async def flaky_insert(session, keys):
        nonlocal calls
        if any(source == "slack-message" for source, _ in keys):
            calls += 1
            if calls == 1:
                raise RuntimeError("database went away")
        return await real_insert(session, keys)

    monkeypatch.setattr(inbound, "_insert_new", flaky_insert)
    body = callback(mention("<@UBOT> start planning for 20 min"), event_id="EvFlaky")
    async with make_client(**w.settings()) as client:
        first = await post(client, body)
        retry = await post(client, body, {**slack_headers(body), "X-Slack-Retry-Num": "1"})
        await finished_runs(client, "slack.reply")
    assert (first.status_code, retry.status_code) == (500, 200)
    assert len(w.toggl.starts) == 1


# --- Shapes Slack does not document ----------------------------------------------------------


def envelope(event_id: object = "EvBad1", **members) -> dict:
    return {
        "type": "event_callback",
        "event_id": event_id,
        "authorizations": [{"user_id": "UBOT", "is_bot": True}],
        **members,
    }


@pytest.mark.parametrize(
    "payload",
    [
        envelope(event="x"),
        envelope(event=mention("<@UBOT> start"), authorizations=["x"]),
        envelope(event=mention("<@UBOT> start", user=["U1"])),
        envelope(event={**mention("<@UBOT> start"), "text": {"not": "text"}}),
        envelope(event=mention("<@UBOT> start", channel=None)),  # the reply would go to the default channel
        envelope(event={k: v for k, v in mention("<@UBOT> start").items() if k != "ts"}),
        envelope(event=mention("<@UBOT> start", thread_ts=1764057600.0001)),
        envelope(event=mention("<@UBOT> start", user="U\ud800")),  # a lone surrogate: no database key
        envelope(event=[mention("<@UBOT> start")]),
        envelope(event=mention("<@UBOT> start"), authorizations=[{"user_id": "UBOT", "is_bot": "yes"}]),
        {"type": "event_callback", "event": mention("<@UBOT> start")},  # no event_id
        envelope(event_id=12345, event=mention("<@UBOT> start")),
    ],
    ids=[
        "event_not_object",
        "authorization_not_object",
        "user_list",
        "text_object",
        "no_channel",
        "no_ts",
        "thread_ts_number",
        "user_surrogate",
        "event_list",
        "is_bot_string",
        "no_event_id",
        "event_id_number",
    ],
)
async def test_an_unexpected_shape_is_acknowledged_ignored_and_logged(w, make_client, caplog, payload):
    caplog.set_level(logging.WARNING, logger="orchestrator.slack_events")
    body = json.dumps(payload).encode()
    async with make_client(**w.settings()) as client:
        response = await post(client, body)
        await asyncio.sleep(0.2)
        assert await runs_of(client, "slack.event") == []
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert w.toggl.starts == [] and w.slack.requests == [] and w.claude.requests == []
    [warning] = [record.getMessage() for record in caplog.records if "not shaped like" in record.getMessage()]
    assert repr(payload.get("event_id")) in warning


async def test_an_unexpected_shape_does_not_claim_its_event_id(w, make_client):
    """Nothing is held for a body that was ignored: a well-formed event with that event_id is still answered."""
    bad = json.dumps(envelope(event=mention("<@UBOT> start planning for 20 min", user=["UHUMAN"]))).encode()
    good = callback(mention("<@UBOT> start planning for 20 min"), event_id="EvBad1")
    async with make_client(**w.settings()) as client:
        assert (await post(client, bad)).status_code == 200
        assert (await post(client, good)).status_code == 200
        await finished_runs(client, "slack.reply")
    assert [start["description"] for start in w.toggl.starts] == ["planning"]


async def test_an_event_of_another_type_is_not_validated(w, make_client, caplog):
    # user_change carries `user` as an object: a shape Slack documents, never read here, so no warning.
    caplog.set_level(logging.WARNING, logger="orchestrator.slack_events")
    event = {"type": "user_change", "user": {"id": "UHUMAN", "name": "someone"}}
    async with make_client(**w.settings()) as client:
        response = await post(client, callback(event))
    assert response.status_code == 200
    assert not [record for record in caplog.records if "not shaped like" in record.getMessage()]


@pytest.mark.parametrize("challenge", [None, 42, "", ["a"], "two words", "x" * 256])
async def test_url_verification_without_a_challenge_token_is_400(w, make_client, challenge):
    payload = {"type": "url_verification", "token": "t"} | ({} if challenge is None else {"challenge": challenge})
    async with make_client(**w.settings()) as client:
        response = await post(client, json.dumps(payload).encode())
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == (
        "url_verification needs a `challenge` to echo: a token of 1-255 printable ASCII characters, no spaces."
    )


# --- Secrets never reach a chat reply ---------------------------------------------------------

GEMINI_KEY = "AIzaSyD-test-gemini-key-000000000000000"


async def test_a_key_echoed_by_the_llm_is_scrubbed_from_the_thread_reply(w, make_client):
    message = f"API key not valid: {GEMINI_KEY}. Please pass a valid API key."
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: gemini_error(400, "INVALID_ARGUMENT", message))
        settings = w.settings(anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)
        async with make_client(**settings) as client:
            await post(client, callback(mention("<@UBOT> what should I do first?")))
            await finished_runs(client, "slack.reply")
        assert len(gemini.calls()) == 1
    [reply] = w.slack.posts  # the body chat.postMessage received
    assert reply["text"].startswith("The assistant could not answer:")
    assert "***" in reply["text"] and GEMINI_KEY not in reply["text"]


async def test_a_lone_surrogate_in_a_mention_is_replaced_and_the_command_still_answers(w, make_client):
    """JSON can carry "\\ud800": it broke the Toggl request in the background (no reply) and, stored in the
    ledger, made GET /runs a 500. Found by a code review."""
    body = callback(mention("<@UBOT> start a\ud800b for 5 min"))
    assert b"\\ud800" in body  # json.dumps escaped it: what Slack would send
    async with make_client(**w.settings()) as client:
        response = await post(client, body)
        [reply_run] = await finished_runs(client, "slack.reply")
        listing = await client.get("/runs")
    assert response.status_code == 200
    assert w.toggl.starts[0]["description"] == "a?b"
    assert reply_run["status"] == "ok"
    assert listing.status_code == 200


async def test_an_overlong_channel_or_ts_is_ignored_not_a_database_error(w, make_client, caplog):
    """The message claim "channel:ts" goes into a 255-character column, which PostgreSQL enforces."""
    caplog.set_level(logging.WARNING)
    body = callback(mention("<@UBOT> help", channel="C" * 200, ts="1" * 150), event_id="EvLong")
    async with make_client(**w.settings()) as client:
        response = await post(client, body)
        await asyncio.sleep(0.2)
    assert response.status_code == 200
    assert w.slack.posts == []
    assert "EvLong" in caplog.text


async def test_a_user_over_the_rate_limit_is_told_once_in_the_thread_and_nothing_runs(w, make_client):
    """Found in review: mentions had no rate limit, so any workspace member could spend LLM tokens without end."""
    w.claude.answer = "Do the hardest thing first."

    def nth(i: int, user: str = "UHUMAN") -> bytes:
        return callback(mention("<@UBOT> what first?", ts=f"1764057600.{i:06d}", user=user), event_id=f"Ev{i:04d}")

    async with make_client(**w.settings(rate_limit_per_minute=2)) as client:
        for i in range(1, 5):
            assert (await post(client, nth(i))).status_code == 200
        assert (await post(client, nth(5, user="UOTHER"))).status_code == 200
        await finished_runs(client, "slack.reply", count=4)
        await asyncio.sleep(0.2)  # anything more would have been posted by now
    assert len(w.claude.prompts) == 3  # two from UHUMAN, one from UOTHER
    by_ts = {post["thread_ts"]: post["text"] for post in w.slack.posts}
    assert set(by_ts) == {"1764057600.000001", "1764057600.000002", "1764057600.000003", "1764057600.000005"}
    assert re.fullmatch(
        r"You have sent more than 2 messages in a minute, so this one was not acted on\. "
        r"Wait \d+ s and send it again\.",
        by_ts["1764057600.000003"],
    )
    assert by_ts["1764057600.000005"] == "Do the hardest thing first."  # each user has a budget of their own


async def test_slack_escaped_text_is_read_as_typed_and_every_post_is_escaped(w, make_client):
    """Found by a black-box review: "R&D" reached Toggl as "R&amp;D", and "<!channel>" in a task was posted raw,
    pinging the whole default channel in the bot's name."""
    body = callback(mention("<@UBOT> start &lt;!channel&gt; R&amp;D sync for 30 min"))
    async with make_client(**w.settings()) as client:
        await post(client, body)
        await finished_runs(client, "slack.reply")
    assert w.toggl.starts[0]["description"] == "<!channel> R&D sync"
    announcement, reply = w.slack.posts
    assert announcement["channel"] == "#general"
    assert "'&lt;!channel&gt; R&amp;D sync' started at " in announcement["text"]
    assert reply["text"].startswith("Started '&lt;!channel&gt; R&amp;D sync' at ")
    assert all("<!" not in posted["text"] for posted in w.slack.posts)


async def test_a_colon_after_the_mention_is_not_part_of_the_command(w, make_client):
    """Slack's autocomplete may write "@bot: status"; it was sent to the LLM as ": status"."""
    async with make_client(**w.settings()) as client:
        await post(client, callback(mention("<@UBOT>: status")))
        [reply_run] = await finished_runs(client, "slack.reply")
    assert w.claude.prompts == []
    [reply] = w.slack.posts
    assert reply["text"] == "No timer is running."
    assert reply_run["status"] == "ok"


@pytest.mark.parametrize("subtype", ["file_share", "thread_broadcast"])
async def test_a_direct_message_with_a_file_attached_is_answered(w, make_client, subtype):
    """Found by a black-box review: a DM sharing a file (subtype file_share) with the text "status" was ignored.
    A thread reply also sent to the channel (thread_broadcast) is a person's message too."""
    event = {
        "type": "message",
        "subtype": subtype,
        "channel_type": "im",
        "user": "UHUMAN",
        "text": "status",
        "ts": "1764057600.000300",
        "channel": "D0000000001",
        "files": [{"id": "F1", "name": "notes.txt"}],
    }
    w.slack.channels["dm"] = "D0000000001"
    async with make_client(**w.settings()) as client:
        await post(client, callback(event))
        await finished_runs(client, "slack.reply")
    [reply] = w.slack.posts
    assert reply["text"] == "No timer is running." and reply["channel"] == "D0000000001"


async def test_only_slack_allowed_users_may_command_and_others_are_told_once(w, make_client):
    """Found by a security review: anyone in the workspace (guests, Slack Connect users) could start the owner's
    timers and spend their LLM credit. With SLACK_ALLOWED_USERS set, only those members may."""
    from routers.slack_events import REFUSAL

    stranger = [
        callback(
            mention("<@UBOT> start planning for 20 min", user="USTRANGER", ts=f"1764057600.00020{n}"),
            event_id=f"EvS{n}",
        )
        for n in range(2)
    ]
    allowed = callback(mention("<@UBOT> start writing for 20 min", ts="1764057600.000300"), event_id="EvA")
    async with make_client(**w.settings(slack_allowed_users="UHUMAN,UOTHER")) as client:
        for body in stranger:
            assert (await post(client, body)).status_code == 200
        await post(client, allowed)
        await finished_runs(client, "slack.reply", count=2)  # the allowed user's answer and one refusal
        starts = await runs_of(client, "command.start")
    assert [start["input_summary"]["sender"] for start in starts] == ["UHUMAN"]
    assert [start["description"] for start in w.toggl.starts] == ["writing"]
    refusals = [post for post in w.slack.posts if post["text"] == REFUSAL]
    assert len(refusals) == 1 and refusals[0]["thread_ts"] == "1764057600.000200"  # once an hour, not per message


def test_slack_allowed_users_must_be_member_ids(make_settings):
    from core.errors import ConfigurationError

    with pytest.raises((ConfigurationError, ValueError), match="Slack member IDs"):
        make_settings(slack_allowed_users="@alice")
    assert make_settings(slack_allowed_users="U0123ABCD, W0456EFGH").slack_allowed_users == ["U0123ABCD", "W0456EFGH"]
