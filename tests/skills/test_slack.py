"""SlackSkill against a Slack-compatible fake on 127.0.0.1: what reached it, and every failure mapping."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import SimpleNamespace

import pytest

from core.errors import (
    Conflict,
    InvalidInput,
    NotConfigured,
    NotFound,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from skills.slack import ATTEMPTS, MAX_BLOCKS, SlackSkill, escape_text, open_skill, unescape_text
from tests.fakes.server import FakeUpstream, Reply
from tests.fakes.slack import CHAT_POST_MESSAGE, FakeSlack

TOKEN = "xoxb-test-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=TOKEN) as server:
        yield server


@pytest.fixture
def slack_settings(make_settings, fake):
    def _make(**overrides):
        values = {"slack_bot_token": TOKEN, "slack_base_url": fake.base_url, "slack_default_channel": "#general"}
        return make_settings(**{**values, **overrides})

    return _make


@asynccontextmanager
async def opened(settings) -> AsyncIterator[SlackSkill]:
    async with AsyncExitStack() as stack:
        yield await open_skill(SimpleNamespace(settings=settings), stack)


# --- What reaches Slack ----------------------------------------------------------------


async def test_posts_channel_text_blocks_thread_and_bearer_token(fake, slack_settings):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deploy* done"}}]
    async with opened(slack_settings()) as skill:
        posted = await skill.post_message(text="Deploy done", channel="#alerts", blocks=blocks, thread_ts="1.000001")

    assert (posted.channel, posted.ts, posted.dry_run) == ("C0000000003", "1732521600.000001", False)
    [request] = fake.calls("POST", CHAT_POST_MESSAGE)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"].startswith("application/json")
    assert request.json == {"channel": "#alerts", "text": "Deploy done", "blocks": blocks, "thread_ts": "1.000001"}
    assert posted.payload == request.json
    assert posted.ledger_external_id() == "C0000000003/1732521600.000001"


async def test_channel_defaults_to_setting_and_optional_fields_are_omitted(fake, slack_settings):
    async with opened(slack_settings(slack_default_channel="#random")) as skill:
        posted = await skill.post_message(text="hello")
    assert posted.channel == "C0000000002"
    assert fake.posts == [{"channel": "#random", "text": "hello"}]


async def test_the_channel_reaches_slack_without_surrounding_whitespace(fake, slack_settings):
    async with opened(slack_settings()) as skill:
        posted = await skill.post_message(text="hello", channel=" #alerts\n")
    assert fake.posts == [{"channel": "#alerts", "text": "hello"}]
    assert posted.channel == "C0000000003"


async def test_empty_blocks_are_not_sent(fake, slack_settings):
    """No blocks is a plain-text message: Slack is sent no `blocks` key rather than an empty array."""
    async with opened(slack_settings()) as skill:
        posted = await skill.post_message(text="hello", blocks=[])
    assert fake.posts == [{"channel": "#general", "text": "hello"}]
    assert posted.payload == {"channel": "#general", "text": "hello"}


async def test_fifty_blocks_are_posted_and_fifty_one_refused_before_any_request(fake, slack_settings):
    block = {"type": "divider"}
    async with opened(slack_settings()) as skill:
        await skill.post_message(text="hello", blocks=[block] * 50)
        with pytest.raises(InvalidInput) as caught:
            await skill.post_message(text="hello", blocks=[block] * 51)
    assert MAX_BLOCKS == 50  # Slack's documented limit
    assert [len(post["blocks"]) for post in fake.posts] == [50]
    assert caught.value.detail == "Slack accepts at most 50 blocks per message; got 51."


async def test_no_channel_anywhere_is_422_before_any_request(fake, slack_settings):
    async with opened(slack_settings(slack_default_channel=None)) as skill:
        with pytest.raises(InvalidInput) as caught:
            await skill.post_message(text="hello")
    assert "SLACK_DEFAULT_CHANNEL" in caught.value.detail
    assert fake.requests == []


async def test_blank_text_is_422(fake, slack_settings):
    async with opened(slack_settings()) as skill:
        with pytest.raises(InvalidInput):
            await skill.post_message(text="   ", blocks=[{"type": "divider"}])
    assert fake.requests == []


async def test_unconfigured_names_the_variable(fake, make_settings):
    async with opened(make_settings(slack_base_url=fake.base_url)) as skill:
        with pytest.raises(NotConfigured) as caught:
            await skill.post_message(text="hello", channel="#general")
    assert caught.value.status == 503
    assert caught.value.extras["missing_settings"] == ["SLACK_BOT_TOKEN"]
    assert fake.requests == []


async def test_dry_run_returns_the_exact_payload_and_sends_nothing(fake, slack_settings):
    async with opened(slack_settings()) as skill:
        posted = await skill.post_message(text="hi", thread_ts="1.5", dry_run=True)
    assert posted.dry_run is True
    assert posted.ts is None
    assert posted.payload == {"channel": "#general", "text": "hi", "thread_ts": "1.5"}
    assert fake.requests == []


async def test_the_sdk_retry_handlers_are_off(slack_settings):
    # One retry loop (core.upstream.with_retries): the SDK must not retry on its own.
    async with opened(slack_settings()) as skill:
        assert skill.client.retry_handlers == []


# --- ok:false mappings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "problem", "status", "words"),
    [
        ("channel_not_found", NotFound, 404, "not found"),
        ("not_in_channel", Conflict, 409, "/invite"),
        ("is_archived", Conflict, 409, "archived"),
        ("invalid_auth", UpstreamError, 502, "SLACK_BOT_TOKEN"),
        ("not_authed", UpstreamError, 502, "SLACK_BOT_TOKEN"),
        ("account_inactive", UpstreamError, 502, "SLACK_BOT_TOKEN"),
        ("token_revoked", UpstreamError, 502, "SLACK_BOT_TOKEN"),
        ("token_expired", UpstreamError, 502, "SLACK_BOT_TOKEN"),
        ("not_allowed_token_type", UpstreamError, 502, "SLACK_BOT_TOKEN"),
        ("missing_scope", UpstreamError, 502, "chat:write"),
        ("msg_too_long", InvalidInput, 422, "too long"),
        ("no_text", InvalidInput, 422, "no text"),
        ("invalid_blocks", InvalidInput, 422, "blocks"),
        ("invalid_blocks_format", InvalidInput, 422, "Block Kit"),
        ("too_many_attachments", InvalidInput, 422, "attachments"),
        ("invalid_arguments", InvalidInput, 422, "arguments"),
        ("internal_error", UpstreamError, 502, "internal_error"),
        ("something_new", UpstreamError, 502, "something_new"),
    ],
)
async def test_ok_false_is_mapped_and_not_retried(fake, slack_settings, error, problem, status, words):
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(json={"ok": False, "error": error}))
    async with opened(slack_settings()) as skill:
        with pytest.raises(problem) as caught:
            await skill.post_message(text="hello", channel="#general")
    assert caught.value.status == status
    assert words in caught.value.detail
    assert caught.value.extras["slack_error"] == error
    assert caught.value.retryable is False
    assert len(fake.posts) == 1, "a refusal must not be retried"
    assert TOKEN not in caught.value.detail
    # Only Slack's own failure may have posted; a refusal says nothing was, so no Idempotency-Key keeps it.
    assert caught.value.extras.get("outcome_unknown") is (True if error == "internal_error" else None)


async def test_missing_scope_names_the_scope_slack_says_is_needed(fake, slack_settings):
    fake.queue(
        "POST",
        CHAT_POST_MESSAGE,
        Reply(json={"ok": False, "error": "missing_scope", "needed": "chat:write.public", "provided": "chat:write"}),
    )
    async with opened(slack_settings()) as skill:
        with pytest.raises(UpstreamError) as caught:
            await skill.post_message(text="hello")
    assert caught.value.detail.startswith("SLACK_BOT_TOKEN lacks the chat:write.public scope.")
    assert caught.value.extras["settings"] == ["SLACK_BOT_TOKEN"]


async def test_not_in_channel_names_the_channel_and_the_invite_hint(fake, slack_settings):
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(json={"ok": False, "error": "not_in_channel"}))
    async with opened(slack_settings()) as skill:
        with pytest.raises(Conflict) as caught:
            await skill.post_message(text="hello", channel="C0000000002")
    assert "C0000000002" in caught.value.detail
    assert "Invite" in caught.value.detail


async def test_a_wrong_token_reaches_the_fake_and_is_502(fake, slack_settings):
    # Not scripted: the fake itself refuses the bearer token, as Slack would.
    async with opened(slack_settings(slack_bot_token="xoxb-wrong")) as skill:
        with pytest.raises(UpstreamError) as caught:
            await skill.post_message(text="hello")
    assert caught.value.status == 502
    assert caught.value.extras["settings"] == ["SLACK_BOT_TOKEN"]
    assert fake.requests[0].headers["authorization"] == "Bearer xoxb-wrong"
    assert "xoxb-wrong" not in caught.value.detail


# --- Rate limits --------------------------------------------------------------------------


def _ratelimited(retry_after: str | None = None) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(429, json={"ok": False, "error": "ratelimited"}, headers=headers)


async def test_429_waits_out_retry_after_then_succeeds(fake, slack_settings):
    fake.queue("POST", CHAT_POST_MESSAGE, _ratelimited("1"))
    async with opened(slack_settings()) as skill:
        started = time.monotonic()
        posted = await skill.post_message(text="hello")
        elapsed = time.monotonic() - started
    assert posted.ts is not None
    assert len(fake.posts) == 2
    assert fake.posts[0] == fake.posts[1]
    assert elapsed >= 0.95, f"Retry-After: 1 was not honoured ({elapsed:.2f} s)"


async def test_429_that_persists_is_a_429_with_retry_after_after_bounded_attempts(fake, slack_settings):
    fake.queue("POST", CHAT_POST_MESSAGE, *[_ratelimited("0")] * 5)
    async with opened(slack_settings()) as skill:
        with pytest.raises(UpstreamRateLimited) as caught:
            await skill.post_message(text="hello")
    assert len(fake.posts) == 3  # the bound itself, not the constant: a change to it must be a decision
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "0"
    assert caught.value.extras["slack_error"] == "ratelimited"


async def test_429_without_retry_after_backs_off_and_gives_up(fake, slack_settings):
    fake.queue("POST", CHAT_POST_MESSAGE, *[_ratelimited()] * 5)
    async with opened(slack_settings()) as skill:
        with pytest.raises(UpstreamRateLimited) as caught:
            await skill.post_message(text="hello")
    assert len(fake.posts) == ATTEMPTS
    assert "Retry-After" not in caught.value.headers


@pytest.mark.parametrize("status", [429, 200, 503])
async def test_a_long_retry_after_is_passed_on_at_once(fake, slack_settings, status):
    """A 429, or Slack's `ratelimited` in any status ("refer to the Retry-After header"), with a wait too long to
    sit out: passed on at once, not ignored or retried."""
    ratelimited = Reply(status, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "120"})
    fake.queue("POST", CHAT_POST_MESSAGE, ratelimited)
    async with opened(slack_settings()) as skill:
        started = time.monotonic()
        with pytest.raises(UpstreamRateLimited) as caught:
            await skill.post_message(text="hello")
    assert time.monotonic() - started < 2
    assert len(fake.posts) == 1
    assert caught.value.headers["Retry-After"] == "120"
    assert "Slack asks to wait 120 s" in caught.value.detail


async def test_ratelimited_on_an_http_200_is_retried_like_a_429(fake, slack_settings):
    """Slack's `ratelimited` error means the request was refused, whatever the HTTP status it came with."""
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(json={"ok": False, "error": "ratelimited"}))
    async with opened(slack_settings()) as skill:
        posted = await skill.post_message(text="hello")
    assert posted.ts is not None
    assert len(fake.posts) == 2


# --- Faults ----------------------------------------------------------------------------------


# A post is not replay-safe: Slack documents that after `fatal_error` "it's possible some aspect of the
# operation succeeded", so a 5xx is reported with the outcome unknown, never posted again.

_UNKNOWN = "The outcome is unknown: the message may have been posted; check #general before retrying."


@pytest.mark.parametrize(
    ("reply", "problem", "status", "lead"),
    [
        (
            Reply(500, json={"ok": False, "error": "fatal_error"}),
            UpstreamError,
            502,
            "Slack answered 500 (fatal_error).",
        ),
        (Reply(500, text="oops"), UpstreamError, 502, "Slack answered 500."),
        (
            Reply(502, text="<html><body>Bad gateway</body></html>", content_type="text/html"),
            UpstreamError,
            502,
            "Slack answered 502.",
        ),
        (
            Reply(503, json={"ok": False, "error": "service_unavailable"}),
            UpstreamUnavailable,
            503,
            "Slack answered 503 (service_unavailable).",
        ),
        # Even with a Retry-After: Slack does not document a 503 as "nothing was posted".
        (Reply(503, text="unavailable", headers={"Retry-After": "1"}), UpstreamUnavailable, 503, "Slack answered 503."),
        (Reply(504, text="gateway timeout"), UpstreamTimeout, 504, "Slack answered 504."),
    ],
    ids=["500-fatal_error", "500-text", "502-html", "503-service_unavailable", "503-retry-after", "504"],
)
async def test_5xx_is_posted_once_and_says_the_outcome_is_unknown(fake, slack_settings, reply, problem, status, lead):
    # A good answer is queued behind the fault: a retry would post the message a second time.
    fake.queue("POST", CHAT_POST_MESSAGE, reply, Reply(json={"ok": True, "channel": "C0000000001", "ts": "1.1"}))
    async with opened(slack_settings()) as skill:
        with pytest.raises(problem) as caught:
            await skill.post_message(text="hello")
    assert len(fake.posts) == 1
    assert type(caught.value) is problem
    assert caught.value.status == status
    assert caught.value.retryable is False
    assert caught.value.detail == f"{lead} {_UNKNOWN}"
    assert caught.value.extras["upstream_status"] == reply.status
    assert "<html>" not in caught.value.detail
    # A Retry-After is passed on to the caller (not waited for: the post is not retried).
    said = (reply.headers or {}).get("Retry-After")
    assert caught.value.headers.get("Retry-After") == said
    assert caught.value.extras.get("retry_after") == (int(said) if said else None)


@pytest.mark.parametrize(
    ("error", "problem", "status"),
    [
        ("fatal_error", UpstreamError, 502),
        ("internal_error", UpstreamError, 502),
        ("service_unavailable", UpstreamUnavailable, 503),
    ],
)
async def test_ok_false_failures_that_may_have_posted_are_not_retried(fake, slack_settings, error, problem, status):
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(json={"ok": False, "error": error}))
    async with opened(slack_settings()) as skill:
        with pytest.raises(problem) as caught:
            await skill.post_message(text="hello", channel="#alerts")
    assert len(fake.posts) == 1
    assert caught.value.status == status
    assert caught.value.retryable is False
    assert caught.value.extras["slack_error"] == error
    assert "The outcome is unknown: the message may have been posted; check #alerts" in caught.value.detail


async def test_request_timeout_is_retried_because_slack_never_had_the_message(fake, slack_settings):
    # Slack: "the POST data was either missing or truncated", so nothing was posted and a retry is safe.
    fake.queue("POST", CHAT_POST_MESSAGE, Reply(json={"ok": False, "error": "request_timeout"}))
    async with opened(slack_settings()) as skill:
        posted = await skill.post_message(text="hello")
    assert posted.ts is not None
    assert len(fake.posts) == 2


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, text="<html>captive portal</html>", content_type="text/html"),
        Reply(200, text="{not json", content_type="application/json"),
        Reply(200, text="ok", content_type="text/plain"),
        Reply(200, json=[1, 2, "x"]),  # JSON, not an object (was reported as "plain text"; found by review)
        Reply(200, json={"ok": True}),  # no ts
        # Invalid UTF-8: the SDK's decode raised, a 500 with no run id (found by a black-box review).
        Reply(200, raw=b'{"ok": true, "channel": "C1", "ts": "1.1", "x": "\xff\xfe"}'),
    ],
    ids=["html", "invalid-json", "plain-text", "json-array", "no-ts", "invalid-utf8"],
)
async def test_unusable_200_is_502_and_not_retried(fake, slack_settings, reply):
    # The message may have been posted: retrying could post it twice.
    fake.queue("POST", CHAT_POST_MESSAGE, reply)
    async with opened(slack_settings()) as skill:
        with pytest.raises(UpstreamError) as caught:
            await skill.post_message(text="hello")
    assert caught.value.status == 502
    assert type(caught.value) is UpstreamError
    assert len(fake.posts) == 1
    # Slack answered 200: it may have posted, and an Idempotency-Key keeps this answer (core/idempotency.py).
    assert caught.value.extras["outcome_unknown"] is True
    assert caught.value.detail.endswith(_UNKNOWN)
    assert "plain text instead of JSON" not in caught.value.detail


async def test_slow_answer_past_the_timeout_is_504_and_never_reposted(fake, slack_settings):
    # The request reached Slack and may have been posted: a retry could post it twice.
    fake.queue("POST", CHAT_POST_MESSAGE, *[Reply(json={"ok": True, "ts": "1.1"}, delay=1.0)] * 5)
    async with opened(slack_settings(http_timeout_seconds=0.2)) as skill:
        with pytest.raises(UpstreamTimeout) as caught:
            await skill.post_message(text="hello")
    assert caught.value.status == 504
    assert caught.value.detail.endswith(_UNKNOWN)
    assert len(fake.posts) == 1


async def test_connection_reset_mid_request_is_503_and_never_reposted(fake, slack_settings):
    fake.queue("POST", CHAT_POST_MESSAGE, *[Reply(drop=True)] * 5)
    async with opened(slack_settings()) as skill:
        with pytest.raises(UpstreamUnavailable) as caught:
            await skill.post_message(text="hello")
    assert caught.value.status == 503
    assert caught.value.detail.endswith(_UNKNOWN)
    # One request only: neither our loop nor the SDK's connection-error handler may repeat it.
    assert len(fake.posts) == 1


async def test_connection_refused_is_503(make_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(slack_bot_token=TOKEN, slack_base_url=f"http://127.0.0.1:{port}/api/")
    async with opened(settings) as skill:
        with pytest.raises(UpstreamUnavailable) as caught:
            await skill.post_message(text="hello", channel="#general")
    assert caught.value.status == 503
    assert caught.value.retryable is True


async def test_a_connection_that_never_completes_is_retried_and_not_reported_as_maybe_posted(make_settings):
    """Nothing left, so it is retried and never "may have been posted" (a mutation review found it was: only
    aiohttp's `total` timeout was set, so a hung connect was a plain TimeoutError)."""
    # A listener whose accept queue is full: Linux drops further SYNs, so connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            settings = make_settings(
                slack_bot_token=TOKEN, slack_base_url=f"http://127.0.0.1:{port}/api/", http_timeout_seconds=0.2
            )
            async with opened(settings) as skill:
                with pytest.raises(UpstreamTimeout) as caught:
                    await skill.post_message(text="hello", channel="#general")
        finally:
            for filler in fillers:
                filler.close()
    assert caught.value.retryable is True
    assert "outcome is unknown" not in caught.value.detail
    assert caught.value.detail.startswith("Slack could not be reached in time")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed_and_not_taken_for_a_post(fake, slack_settings, status):
    """Found by a black-box review: a redirect from SLACK_BASE_URL sent the token and the message on to the host
    it named, and that host's `ok: true` was recorded as a post."""
    async with FakeUpstream() as elsewhere:
        elsewhere.route(
            "POST", "/api/chat.postMessage", lambda _: Reply(json={"ok": True, "channel": "C1", "ts": "1.1"})
        )
        fake.queue(
            "POST", CHAT_POST_MESSAGE, Reply(status, headers={"Location": f"{elsewhere.url}/api/chat.postMessage"})
        )
        async with opened(slack_settings()) as skill:
            with pytest.raises(UpstreamError) as caught:
                await skill.post_message(text="hello")
        assert elsewhere.requests == []
    assert len(fake.posts) == 1
    assert caught.value.status == 502 and "outcome_unknown" not in caught.value.extras
    assert caught.value.extras["upstream"] == "slack"
    assert caught.value.detail == (
        f"Slack answered {status}, a redirect to 127.0.0.1; not followed. Check SLACK_BASE_URL."
    )


async def test_an_answer_over_the_cap_is_not_read_into_memory(slack_settings):
    """Found by a black-box review: upstream answers were read whole, whatever their size."""
    import gzip

    from core.upstream import MAX_RESPONSE_BYTES
    from tests.fakes.raw_http import raw_http_server

    bomb = gzip.compress(b" " * (64 * MAX_RESPONSE_BYTES))
    async with raw_http_server(bomb, headers={"Content-Encoding": "gzip"}) as url:
        async with opened(slack_settings(slack_base_url=f"{url}/api/")) as skill:
            with pytest.raises(UpstreamError) as caught:
                await skill.post_message(text="hello")
    assert caught.value.extras["outcome_unknown"] is True  # a 200 that big: it may have posted
    assert "AnswerTooLarge" in caught.value.detail


@pytest.mark.parametrize("base_url", ["http://[::1/api/", "http://slack.test:99999/api/"], ids=["urljoin", "aiohttp"])
async def test_a_url_refused_before_sending_is_not_reported_as_maybe_posted(fake, slack_settings, base_url):
    """A ValueError raised while the SDK built the URL was caught as "Slack's answer could not be decoded": outcome
    unknown, the Idempotency-Key kept, for a message that never left (found by a code review)."""
    async with opened(slack_settings()) as skill:
        skill.client.base_url = base_url  # past the setting's validation, as a bug elsewhere could be
        with pytest.raises(UpstreamError) as caught:
            await skill.post_message(text="hello")
    assert caught.value.status == 502
    assert caught.value.detail.startswith("Slack was not called: the URL built from SLACK_BASE_URL is not valid (")
    assert caught.value.detail.endswith("). Check SLACK_BASE_URL.")
    assert caught.value.extras == {"upstream": "slack", "nothing_sent": True}
    assert fake.posts == []


# --- Escaping ------------------------------------------------------------------------------


def test_escape_text_escapes_only_slacks_three_characters_ampersand_first():
    assert escape_text("<!channel> R&D > 1 &lt;") == "&lt;!channel&gt; R&amp;D &gt; 1 &amp;lt;"
    assert escape_text("plain *bold* _it_ :emoji:") == "plain *bold* _it_ :emoji:"


def test_unescape_text_undoes_escape_text_ampersand_last():
    """ "&amp;lt;" is someone typing "&lt;": undoing `&amp;` first would turn it into "<"."""
    assert unescape_text("R&amp;D &lt;b&gt; &amp;lt;") == "R&D <b> &lt;"
    for text in ("&lt;", "&amp;amp;", "<@U1> & <!here>", "a &gt; b"):
        assert unescape_text(escape_text(text)) == text
