"""Vendor-shaped fake upstreams: Gemini, Anthropic, an OpenAI-compatible local LLM, Slack, Toggl, Twilio, SMTP.

One aiohttp app answers every vendor's paths with a well-formed success body,
after a configurable per-vendor latency. Used by the benchmark (as a separate
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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


_ids = itertools.count(1)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def build_vendor_app(latencies: Latencies | None = None, *, counts: dict[str, int] | None = None) -> web.Application:
    latencies = latencies or Latencies()
    seen = counts if counts is not None else {}

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
        return _json(
            _entry(
                workspace_id,
                description=body.get("description"),
                duration=body.get("duration", 0) if body.get("duration", -1) >= 0 else -int(time.time()),
                tags=body.get("tags") or [],
                project_id=body.get("project_id"),
            )
        )

    @vendor("toggl")
    async def toggl_stop(request: web.Request) -> web.Response:
        return _json(_entry(int(request.match_info["wid"]), id=int(request.match_info["id"]), duration=60))

    @vendor("toggl")
    async def toggl_current(request: web.Request) -> web.Response:
        return _json(_entry(1))

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
    app.router.add_get("/api/v9/me/time_entries/current", toggl_current)
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
