"""A whole fake world for the adversarial tests: every vendor faked on 127.0.0.1, the real app configured for it.

Schemathesis drives the app synchronously from its own event-loop thread, so
the fakes run on a separate thread (an anyio blocking portal) for as long as
the test module needs them.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from bench.fakes import SlowSmtpHandler, build_vendor_app, start_smtp, vendor_settings
from core.settings import Settings

API_KEY = "adversarial-test-key"


@dataclass
class FakeWorld:
    app: FastAPI
    base_url: str
    portal: BlockingPortal
    stack: ExitStack
    counts: dict[str, int] = field(default_factory=dict)
    smtp: SlowSmtpHandler | None = None
    stopped: bool = False

    @classmethod
    def start(cls, **overrides: Any) -> FakeWorld:
        from main import create_app

        stack = ExitStack()
        portal = stack.enter_context(start_blocking_portal())
        counts: dict[str, int] = {}
        runner = web.AppRunner(build_vendor_app(counts=counts), access_log=None)

        async def serve() -> int:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        port = portal.call(serve)
        stack.callback(portal.call, runner.cleanup)
        controller, smtp = start_smtp()
        stack.callback(controller.stop)
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base_url = f"http://127.0.0.1:{port}"
        settings = Settings(
            _env_file=None,
            **{
                **vendor_settings(base_url, smtp_port=controller.port),
                "app_api_key": API_KEY,
                "database_url": f"sqlite+aiosqlite:///{directory}/adversarial.db",
                # Schemathesis sends hundreds of requests per operation: the limit itself has its own tests.
                "rate_limit_per_minute": 1_000_000,
                "log_level": "CRITICAL",
                **overrides,
            },
        )
        return cls(app=create_app(settings), base_url=base_url, portal=portal, stack=stack, counts=counts, smtp=smtp)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.stack.close()
