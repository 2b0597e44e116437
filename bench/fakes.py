"""Vendor-shaped fake upstreams: Gemini, Anthropic, an OpenAI-compatible local LLM, Slack, Toggl, Twilio, SMTP.

One aiohttp app answers every vendor's paths with a well-formed success body,
after a configurable per-vendor latency. Toggl keeps the entries it started
(`TogglEntries`), so a stop or an update answers that entry, and a second stop
of it is Toggl's 409; starting a running entry stops the one running in its
workspace, as Toggl does. Used by the benchmark (as a separate
process: `python -m bench.fakes --port 9000 --latency anthropic=0.05`) and by
the adversarial tests (in-process), so both exercise the real client code.

The SMTP fake is aiosmtpd with an optional delay before it accepts DATA,
standing in for a slow mail relay.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

VENDORS = ("gemini", "anthropic", "openai", "slack", "toggl", "twilio", "hello")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Latencies:
    """Seconds each vendor waits before answering (asyncio.sleep: no thread is blocked)."""

    per_vendor: dict[str, float] = field(default_factory=dict)

    def of(self, vendor: str) -> float:
        # `default` is for the vendors; /hello is the readiness probe and the hello-world baseline, so it
        # waits only when asked by name (with default=2 the probe's 2 s timeout raced the 2 s answer).
        fallback = 0.0 if vendor == "hello" else self.per_vendor.get("default", 0.0)
        return self.per_vendor.get(vendor, fallback)

    @classmethod
    def parse(cls, items: list[str]) -> Latencies:
        per_vendor: dict[str, float] = {}
        for item in items:
            name, _, seconds = item.partition("=")
            per_vendor[name.strip()] = float(seconds)
        return cls(per_vendor)


@dataclass
class TogglEntries:
    """The time entries the fake Toggl started, so that a stop and an update answer that entry (its real start),
    as Toggl does: the service's late-stop correction reads the stop Toggl reports, and needs the start it sent.

    Bounded (the oldest are forgotten): a benchmark starts one entry per briefing. An id the fake did not start,
    or has forgotten, is still answered with a well-formed entry, like every other path here.
    """

    limit: int = 10_000
    entries: OrderedDict[int, dict[str, Any]] = field(default_factory=OrderedDict)
    running_id: int | None = None
    #: (entry id, body) of the latest update PUTs, for tests to assert on what the service sent.
    updates: deque[tuple[int, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=100))

    def add(self, entry: dict[str, Any]) -> None:
        self.entries[entry["id"]] = entry
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)
        if entry["stop"] is None:
            self.running_id = entry["id"]

    def running(self) -> dict[str, Any] | None:
        entry = self.entries.get(self.running_id) if self.running_id is not None else None
        return entry if entry is not None and entry["stop"] is None else None

    def stop_running(self, *, workspace_id: int, user_id: int, at: int) -> dict[str, Any] | None:
        """Stop the entry running in `workspace_id` for `user_id`, as Toggl does when a new running entry is created
        there, and return it (None when nothing of theirs runs there).

        Toggl stops the running entry itself (toggl/toggl_api_docs#227: "API will stop one as well"); when exactly
        is not documented (unsure). Here it is stopped at `at`, the moment of the create, as the fake's stop PATCH
        stops at "now" (Toggl's own apps settled on the current time too: toggl/mobileapp#2454), never before its
        own start. Only the entry `running()` answers is looked at: the fake keeps one current timer per process.
        Before, it ran on beside the new one, and a later stop of it found it running where Toggl answers 409.
        """
        entry = self.running()
        if entry is None or entry["workspace_id"] != workspace_id or entry["user_id"] != user_id:
            return None
        start = _epoch(entry["start"], default=at)
        _set_times(entry, start=start, stop=max(at, start))
        entry["at"] = _iso(at)
        return entry


_ids = itertools.count(1)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _epoch(value: Any, default: int) -> int:
    """An RFC 3339 time as whole epoch seconds; `default` for anything else."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return default
    return int(moment.timestamp()) if moment.tzinfo is not None else default


def _set_times(entry: dict[str, Any], *, start: int, stop: int | None) -> None:
    """`start`, `stop` and `duration` consistent, as Toggl answers them: running is `duration = -start`."""
    entry["start"] = _iso(start)
    entry["stop"] = None if stop is None else _iso(stop)
    entry["duration"] = -start if stop is None else stop - start


def build_vendor_app(
    latencies: Latencies | None = None,
    *,
    counts: dict[str, int] | None = None,
    toggl: TogglEntries | None = None,
) -> web.Application:
    latencies = latencies or Latencies()
    seen = counts if counts is not None else {}
    toggl_entries = toggl if toggl is not None else TogglEntries()

    def vendor(name: str) -> Callable[[Handler], Handler]:
        def wrap(handler: Handler) -> Handler:
            async def handle(request: web.Request) -> web.StreamResponse:
                await request.read()
                seen[name] = seen.get(name, 0) + 1
                delay = latencies.of(name)
                if delay:
                    await asyncio.sleep(delay)
                return await handler(request)

            return handle

        return wrap

    @vendor("gemini")
    async def gemini(request: web.Request) -> web.Response:
        model = request.match_info["model"].split(":")[0]
        return _json(
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "Fake Gemini answer."}]},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 4, "totalTokenCount": 12},
                "modelVersion": model,
                "responseId": f"fake-{next(_ids)}",
            }
        )

    @vendor("anthropic")
    async def anthropic_messages(request: web.Request) -> web.Response:
        body = await request.json()
        return _json(
            {
                "id": f"msg_fake{next(_ids)}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "claude-haiku-4-5"),
                "content": [{"type": "text", "text": "Fake Claude answer."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 8, "output_tokens": 4},
            }
        )

    @vendor("anthropic")
    async def anthropic_count(request: web.Request) -> web.Response:
        return _json({"input_tokens": 8})

    @vendor("openai")
    async def openai_chat(request: web.Request) -> web.Response:
        body = await request.json()
        return _json(
            {
                "id": f"chatcmpl-fake{next(_ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "local"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Fake local answer."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
            }
        )

    @vendor("slack")
    async def slack(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method == "chat.postMessage":
            channel = "C0FAKE"
            try:
                channel = (await request.json()).get("channel") or channel
            except (json.JSONDecodeError, ValueError):
                form = await request.post()
                channel = str(form.get("channel") or channel)
            return _json({"ok": True, "channel": channel, "ts": f"{time.time():.6f}", "message": {"text": "x"}})
        if method == "auth.test":
            return _json({"ok": True, "user_id": "U0FAKE", "team_id": "T0FAKE", "bot_id": "B0FAKE"})
        return _json({"ok": True})

    def _entry(workspace_id: int, **overrides: Any) -> dict[str, Any]:
        entry = {
            "id": next(_ids) + 4_000_000_000,
            "workspace_id": workspace_id,
            "project_id": None,
            "task_id": None,
            "billable": False,
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stop": None,
            "duration": -int(time.time()),
            "description": "Deep Work",
            "tags": [],
            "tag_ids": [],
            "duronly": True,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "user_id": 1,
        }
        entry.update(overrides)
        return entry

    @vendor("toggl")
    async def toggl_create(request: web.Request) -> web.Response:
        workspace_id = int(request.match_info["wid"])
        body = await request.json()
        entry = _entry(
            workspace_id,
            description=body.get("description"),
            tags=body.get("tags") or [],
            project_id=body.get("project_id"),
        )
        # The start the caller sent (the service fixes it before the POST); a negative duration is a running timer.
        now = int(time.time())
        start = _epoch(body.get("start"), default=now)
        duration = body.get("duration", -1)
        running = not isinstance(duration, int) or duration < 0
        _set_times(entry, start=start, stop=None if running else start + duration)
        if running:  # a finished entry (a positive duration) leaves the running timer alone
            toggl_entries.stop_running(workspace_id=workspace_id, user_id=entry["user_id"], at=now)
        toggl_entries.add(entry)
        return _json(entry)

    @vendor("toggl")
    async def toggl_stop(request: web.Request) -> web.Response:
        entry_id, now = int(request.match_info["id"]), int(time.time())
        entry = toggl_entries.entries.get(entry_id)
        if entry is None:  # not started here: a minute-long entry of that id, stopped now
            entry = _entry(int(request.match_info["wid"]), id=entry_id)
            _set_times(entry, start=now - 60, stop=now)
            return _json(entry)
        if entry["stop"] is not None:
            return _json("Time entry already stopped", status=409)  # Toggl's errors are bare JSON strings
        _set_times(entry, start=_epoch(entry["start"], default=now), stop=now)
        entry["at"] = _iso(now)
        return _json(entry)

    @vendor("toggl")
    async def toggl_update(request: web.Request) -> web.Response:
        """`PUT /workspaces/{wid}/time_entries/{id}`: the fields sent replace the entry's; the entry comes back.

        Start, stop and duration stay consistent: a `stop` sets the duration from the start, a `duration` alone
        sets the stop (a negative one makes it a running timer again). The service sends `stop` with the matching
        `duration` to set a late planned stop back to the planned time.
        """
        entry_id, now = int(request.match_info["id"]), int(time.time())
        body = await request.json()
        if not isinstance(body, dict):
            return _json("The body must be a JSON object", status=400)
        toggl_entries.updates.append((entry_id, body))
        duration = body.get("duration")
        duration = duration if isinstance(duration, int) else None
        entry = toggl_entries.entries.get(entry_id)
        if entry is None:  # not started here: a stopped entry of that id, as long as the duration sent
            entry = _entry(int(request.match_info["wid"]), id=entry_id)
            stop = _epoch(body.get("stop"), default=now)
            _set_times(entry, start=stop - (duration if duration is not None and duration >= 0 else 60), stop=stop)
        for name in ("description", "project_id", "task_id", "billable", "tags", "tag_ids"):
            if name in body:
                entry[name] = body[name]
        start = _epoch(body.get("start"), default=_epoch(entry["start"], default=now))
        stop: int | None = _epoch(entry["stop"], default=now) if entry["stop"] is not None else None
        if body.get("stop") is not None:
            stop = _epoch(body["stop"], default=now)
        elif duration is not None:
            stop = start + duration if duration >= 0 else None
        _set_times(entry, start=start, stop=stop)
        entry["at"] = _iso(now)
        if entry["stop"] is None:
            toggl_entries.add(entry)  # running (again): the timer GET /me/time_entries/current answers
        return _json(entry)

    @vendor("toggl")
    async def toggl_current(request: web.Request) -> web.Response:
        # The entry started last while it runs; else a fresh one, so a stop without an id always finds a timer.
        return _json(toggl_entries.running() or _entry(1))

    @vendor("toggl")
    async def toggl_entry(request: web.Request) -> web.Response:
        """`GET /me/time_entries/{id}`: the entry as the fake holds it (the late-stop check after a lost answer reads
        it); 404 for one the fake never started or has forgotten, as Toggl answers an unknown id."""
        entry = toggl_entries.entries.get(int(request.match_info["id"]))
        return _json(entry) if entry is not None else _json("Time entry not found", status=404)

    @vendor("toggl")
    async def toggl_me(request: web.Request) -> web.Response:
        return _json({"id": 1, "default_workspace_id": 1, "email": "me@example.com", "fullname": "Fake"})

    @vendor("toggl")
    async def toggl_list(request: web.Request) -> web.Response:
        return _json([])

    @vendor("twilio")
    async def twilio_send(request: web.Request) -> web.Response:
        form = await request.post()
        return _json(
            {
                "sid": f"SM{next(_ids):032x}",
                "account_sid": request.match_info["sid"],
                "status": "queued",
                "to": form.get("To"),
                "from": form.get("From"),
                "body": form.get("Body"),
                "num_segments": "1",
                "error_code": None,
                "error_message": None,
            },
            status=201,
        )

    @vendor("hello")
    async def hello(request: web.Request) -> web.Response:
        return _json({"hello": "world"})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1beta/models/{model}", gemini)
    app.router.add_post("/v1/models/{model}", gemini)
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_post("/v1/messages/count_tokens", anthropic_count)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/chat/completions", openai_chat)
    app.router.add_route("*", "/api/{method}", slack)
    app.router.add_post("/api/v9/workspaces/{wid}/time_entries", toggl_create)
    app.router.add_patch("/api/v9/workspaces/{wid}/time_entries/{id}/stop", toggl_stop)
    app.router.add_put("/api/v9/workspaces/{wid}/time_entries/{id}", toggl_update)
    app.router.add_get("/api/v9/me/time_entries/current", toggl_current)
    app.router.add_get("/api/v9/me/time_entries/{id:[0-9]+}", toggl_entry)
    app.router.add_get("/api/v9/me", toggl_me)
    app.router.add_get("/api/v9/workspaces/{wid}/projects", toggl_list)
    app.router.add_get("/api/v9/workspaces/{wid}/tags", toggl_list)
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", twilio_send)
    app.router.add_get("/hello", hello)
    return app


def vendor_settings(base_url: str, smtp_port: int | None = None) -> dict[str, Any]:
    """Settings that point every integration at a fake at `base_url` (and SMTP at `smtp_port`)."""
    settings: dict[str, Any] = {
        "gemini_api_key": "fake-gemini-key",
        "gemini_base_url": base_url,
        "anthropic_api_key": "fake-anthropic-key",
        "anthropic_base_url": base_url,
        "local_llm_base_url": base_url + "/v1",
        "local_llm_model": "llama3.2",
        "slack_bot_token": "xoxb-fake",
        "slack_signing_secret": "fake-signing-secret",
        "slack_default_channel": "#general",
        "slack_base_url": base_url + "/api/",
        "toggl_api_token": "fake-toggl-token",
        "toggl_workspace_id": 1,
        "toggl_base_url": base_url + "/api/v9",
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "fake-twilio-token",
        "twilio_base_url": base_url,
        "whatsapp_allowed_senders": ["+15551234567"],
        "briefing_channel": "#general",
    }
    if smtp_port is not None:
        settings.update(
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            smtp_security="none",
            smtp_from="bench@example.com",
        )
    return settings


class SlowSmtpHandler:
    """aiosmtpd handler: waits `delay` seconds, then accepts the message and counts it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


def start_smtp(delay: float = 0.0, port: int = 0) -> tuple[Any, SlowSmtpHandler]:
    """A real SMTP server on 127.0.0.1 in its own thread (aiosmtpd Controller)."""
    from aiosmtpd.controller import Controller

    handler = SlowSmtpHandler(delay)
    controller = Controller(handler, hostname="127.0.0.1", port=port or _free_port())
    controller.start()
    return controller, handler


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _serve(port: int, latencies: Latencies, smtp_port: int | None, smtp_delay: float) -> None:
    runner = web.AppRunner(build_vendor_app(latencies), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    controller = None
    if smtp_port:
        controller, _ = start_smtp(smtp_delay, smtp_port)
    try:
        await asyncio.Event().wait()
    finally:
        if controller is not None:
            controller.stop()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", action="append", default=[], help="vendor=seconds, or default=seconds")
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--smtp-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_serve(args.port, Latencies.parse(args.latency), args.smtp_port, args.smtp_delay))


if __name__ == "__main__":
    main()
