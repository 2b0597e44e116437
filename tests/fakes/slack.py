"""A Slack-compatible fake of chat.postMessage on 127.0.0.1, built on FakeUpstream.

slack_sdk talks over aiohttp, which respx cannot intercept, so tests point
SLACK_BASE_URL at this server. Its default answer behaves like Slack: it checks
the bearer token (`invalid_auth`), knows a few channels by name and ID
(`channel_not_found` otherwise) and answers `{"ok": true, "channel", "ts"}`.
Queue `Reply(...)` objects on `CHAT_POST_MESSAGE` to script failures.

    async with FakeSlack(token="xoxb-test") as slack:
        settings = make_settings(slack_bot_token="xoxb-test", slack_base_url=slack.base_url)
        ...
        assert slack.posts[0]["channel"] == "#general"
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.fakes.server import FakeUpstream, Recorded, Reply

CHAT_POST_MESSAGE = "/api/chat.postMessage"

DEFAULT_CHANNELS = {"#general": "C0000000001", "#random": "C0000000002", "#alerts": "C0000000003"}


class FakeSlack(FakeUpstream):
    def __init__(self, *, token: str = "xoxb-test", channels: dict[str, str] | None = None) -> None:
        super().__init__()
        self.token = token
        self.channels = dict(DEFAULT_CHANNELS if channels is None else channels)
        self._ts = itertools.count(1)
        self.route("POST", CHAT_POST_MESSAGE, self._post_message)

    @property
    def base_url(self) -> str:
        """What SLACK_BASE_URL should be (trailing slash included, as slack_sdk expects)."""
        return f"{self.url}/api/"

    @property
    def posts(self) -> list[dict[str, Any]]:
        """The JSON body of every chat.postMessage that reached the fake, scripted replies included."""
        return [request.json for request in self.calls("POST", CHAT_POST_MESSAGE)]

    def _channel_id(self, channel: str) -> str | None:
        if channel in self.channels:
            return self.channels[channel]
        return channel if channel in self.channels.values() else None

    def _post_message(self, request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(json={"ok": False, "error": "invalid_auth"})
        body = request.json or {}
        channel_id = self._channel_id(str(body.get("channel", "")))
        if channel_id is None:
            return Reply(json={"ok": False, "error": "channel_not_found"})
        if not body.get("text") and not body.get("blocks"):
            return Reply(json={"ok": False, "error": "no_text"})
        ts = f"1732521600.{next(self._ts):06d}"
        message = {"type": "message", "text": body.get("text", ""), "ts": ts}
        if "thread_ts" in body:
            message["thread_ts"] = body["thread_ts"]
        return Reply(json={"ok": True, "channel": channel_id, "ts": ts, "message": message})
