"""The fake world the inbound, briefing and scheduler tests run against.

- Toggl and Twilio REST are mocked with respx on the shared httpx client
  (loopback traffic passes through to the aiohttp-based fakes).
- Slack is tests.fakes.slack.FakeSlack; Claude is a FakeUpstream answering
  POST /v1/messages in Anthropic's shape. Both record what they received.
- Signatures are built with the vendors' own libraries: twilio's
  RequestValidator and slack_sdk's SignatureVerifier.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import respx
import time_machine
from slack_sdk.signature import SignatureVerifier
from twilio.request_validator import RequestValidator

from core import ratelimit_store
from tests.fakes.server import FakeUpstream, Recorded, Reply
from tests.fakes.slack import FakeSlack

TOGGL_BASE = "https://toggl.test/api/v9"
TWILIO_BASE = "https://twilio.test"
WORKSPACE = 4242
TOGGL_TOKEN = "toggl-test-token"
TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "twilio-test-auth-token"
#: The API key `World.settings` adds with a PUBLIC_BASE_URL; `make_client(send_api_key=True)` sends it.
PUBLIC_API_KEY = "world-public-api-key-000000000000"
SLACK_TOKEN = "xoxb-inbound-test"
SLACK_SECRET = "slack-test-signing-secret"
ANTHROPIC_KEY = "sk-ant-test-key"
OWNER = "+15551230001"
STRANGER = "+15559990002"
MESSAGES_PATH = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
CLAUDE_PATH = "/v1/messages"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeToggl:
    """Toggl v9 over respx: creates running entries, stops them, reports the current one."""

    mock: respx.MockRouter
    delay: float = 0.0
    fail_start: int | None = None  # HTTP status to answer POST with
    running: dict[str, Any] | None = None
    starts: list[dict[str, Any]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    #: (entry id, body) of each update PUT: a late planned stop setting the stop back to the planned time.
    updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(9001))

    def install(self) -> FakeToggl:
        self.mock.post(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries$").mock(side_effect=self._start)
        self.mock.patch(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+/stop$").mock(side_effect=self._stop)
        self.mock.get(f"{TOGGL_BASE}/me/time_entries/current").mock(side_effect=self._current)
        self.mock.put(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+$").mock(side_effect=self._update)
        return self

    async def _start(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        body = json.loads(request.content)
        self.starts.append(body)
        if self.fail_start is not None:
            return httpx.Response(self.fail_start, json="Toggl is having a bad day")
        start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
        entry = {
            "id": next(self._ids),
            "workspace_id": body["workspace_id"],
            "description": body.get("description"),
            "start": body["start"],
            "stop": None,
            "duration": -int(start.timestamp()),
        }
        self.running = entry
        return httpx.Response(200, json=entry)

    def _stop(self, request: httpx.Request) -> httpx.Response:
        entry_id = request.url.path.split("/")[-2]
        self.stops.append(entry_id)
        if self.running is None or str(self.running["id"]) != entry_id:
            return httpx.Response(409, json="Time entry already stopped")
        entry, self.running = self.running, None
        now = datetime.now(UTC)
        start = datetime.fromisoformat(entry["start"].replace("Z", "+00:00"))
        stopped = {**entry, "stop": iso(now), "duration": int((now - start).total_seconds())}
        self.stopped[entry_id] = stopped
        return httpx.Response(200, json=stopped)

    def _update(self, request: httpx.Request) -> httpx.Response:
        entry_id = request.url.path.split("/")[-1]
        body = json.loads(request.content)
        self.updates.append((entry_id, body))
        if entry_id not in self.stopped:
            return httpx.Response(404, json="Time entry not found")
        self.stopped[entry_id] = {**self.stopped[entry_id], **body}
        return httpx.Response(200, json=self.stopped[entry_id])

    def _current(self, request: httpx.Request) -> httpx.Response:
        # Toggl answers the literal body `null` when nothing runs.
        return httpx.Response(200, content=json.dumps(self.running), headers={"Content-Type": "application/json"})


@dataclass
class FakeTwilio:
    """Twilio's Messages.json over respx; records each form it received."""

    mock: respx.MockRouter
    sent: list[dict[str, str]] = field(default_factory=list)
    #: Refuse every create after this many have succeeded (a Twilio 400 with code 21211), when set.
    fail_after: int | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def install(self) -> FakeTwilio:
        self.mock.post(f"{TWILIO_BASE}{MESSAGES_PATH}").mock(side_effect=self._create)
        return self

    def _create(self, request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            return httpx.Response(400, json={"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400})
        self.sent.append(form)
        return httpx.Response(201, json={"sid": f"SM{next(self._ids):032d}", "status": "queued"})


class FakeClaude(FakeUpstream):
    """POST /v1/messages in Anthropic's shape; `answer` and `delay` are adjustable per test."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = "1. Write the report\n2. Review PRs"
        self.delay = 0.0
        self.fail: Reply | None = None
        self.route("POST", CLAUDE_PATH, self._answer)

    @property
    def prompts(self) -> list[str]:
        return [request.json["messages"][0]["content"] for request in self.calls("POST", CLAUDE_PATH)]

    async def _answer(self, request: Recorded) -> Reply:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            return self.fail
        return Reply(
            200,
            json={
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": request.json["model"],
                "content": [{"type": "text", "text": self.answer}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5},
            },
        )


@dataclass
class World:
    toggl: FakeToggl
    twilio: FakeTwilio
    slack: FakeSlack
    claude: FakeClaude

    def settings(self, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "toggl_api_token": TOGGL_TOKEN,
            "toggl_workspace_id": WORKSPACE,
            "toggl_base_url": TOGGL_BASE,
            "twilio_account_sid": TWILIO_SID,
            "twilio_auth_token": TWILIO_TOKEN,
            "twilio_base_url": TWILIO_BASE,
            "whatsapp_allowed_senders": OWNER,
            "slack_bot_token": SLACK_TOKEN,
            "slack_signing_secret": SLACK_SECRET,
            "slack_default_channel": "#general",
            "slack_base_url": self.slack.base_url,
            "anthropic_api_key": ANTHROPIC_KEY,
            "anthropic_base_url": self.claude.url,
            "timezone": "Europe/Berlin",
        }
        if overrides.get("public_base_url"):
            values["app_api_key"] = PUBLIC_API_KEY  # the service refuses a public URL without one
        values.update(overrides)
        return {key: value for key, value in values.items() if value is not None}


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    async with FakeSlack(token=SLACK_TOKEN) as slack, FakeClaude() as claude:
        with respx.mock(assert_all_called=False) as mock:
            toggl = FakeToggl(mock).install()
            twilio = FakeTwilio(mock).install()
            # The aiohttp/httpx fakes on loopback are real servers: let that traffic through.
            mock.route(host="127.0.0.1").pass_through()
            yield World(toggl=toggl, twilio=twilio, slack=slack, claude=claude)


# --- Signed requests ------------------------------------------------------------------


def briefing_summary(w: World) -> str:
    """The one morning-briefing summary the fake Slack received."""
    [summary] = [sent["text"] for sent in w.slack.posts if sent["text"].startswith("*Morning briefing*")]
    return summary


def twilio_signature(url: str, form: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, form)


def whatsapp_form(body: str, *, sid: str = "SM" + "a" * 32, sender: str = OWNER) -> dict[str, str]:
    return {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": "Owner",
        "MessageType": "text",
        "WaId": sender.lstrip("+"),
        "Body": body,
        "To": "whatsapp:+14155238886",
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": f"whatsapp:{sender}",
        "ApiVersion": "2010-04-01",
    }


async def post_whatsapp(
    client: httpx.AsyncClient,
    form: dict[str, str],
    *,
    signed_url: str = "http://testserver/whatsapp-webhook",
    path: str = "/whatsapp-webhook",
    headers: dict[str, str] | None = None,
    signature: str | None = None,
) -> httpx.Response:
    sig = signature if signature is not None else twilio_signature(signed_url, form)
    return await client.post(
        path,
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig, **(headers or {})},
    )


def slack_headers(body: bytes, *, secret: str = SLACK_SECRET, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


# Generous on purpose: a passing test returns as soon as the work is done, and a loaded CI machine (or a
# mutation run beside the suite) once took more than 5 s to finish a handful of background answers.
WAIT_SECONDS = 20.0


async def wait_for(predicate: Any, timeout: float = WAIT_SECONDS) -> None:
    """Poll until `predicate()` is true: background work finishes after the webhook answered."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for background work")
        await asyncio.sleep(0.02)


async def runs_of(client: httpx.AsyncClient, kind: str) -> list[dict[str, Any]]:
    page = (await client.get("/runs", params={"kind": kind, "limit": 200})).json()
    return [(await client.get(f"/runs/{item['id']}")).json() for item in page["items"]]


async def finished_runs(
    client: httpx.AsyncClient, kind: str, count: int = 1, timeout: float = WAIT_SECONDS
) -> list[dict]:
    """The runs of `kind` once `count` of them have finished (background work records them late)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [run for run in await runs_of(client, kind) if run["status"] != "running"]
        if len(runs) >= count:
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {count} finished {kind} run(s)")
        await asyncio.sleep(0.05)


@contextmanager
def later(delta: timedelta) -> Iterator[None]:
    """Everything `delta` from now: the wall clock (time_machine) and the in-memory rate limit's monotonic clock,
    which time_machine leaves alone."""
    real = ratelimit_store.monotonic
    ratelimit_store.monotonic = lambda: real() + delta.total_seconds()
    try:
        with time_machine.travel(datetime.now(UTC) + delta, tick=True):
            yield
    finally:
        ratelimit_store.monotonic = real
