"""What every inbound channel shares: replay protection, the sender allowlist, and tracked background work.

The webhooks (WhatsApp via Twilio, Slack Events) must answer fast, so the work
behind a message often outlives the request. That work runs as tasks owned by
`BackgroundTasks`: kept referenced (asyncio only keeps weak references),
awaited and then cancelled at shutdown, and every failure or cancellation is
logged and written to the ledger, so nothing is silently lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from contextlib import AsyncExitStack
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.ledger import Ledger, describe_error
from core.settings import Settings
from core.store import InboundMessage, utcnow

logger = logging.getLogger("orchestrator.inbound")

SHUTDOWN_GRACE_SECONDS = 5.0


async def claim_message(sessions: async_sessionmaker, *, source: str, message_id: str) -> bool:
    """True for the first delivery of (source, message_id); False for any replay.

    The primary key decides, so concurrent duplicate deliveries, even to
    different workers, produce exactly one True.
    """
    try:
        async with sessions.begin() as session:
            session.add(InboundMessage(source=source, message_id=message_id[:255], received_at=utcnow()))
    except IntegrityError:
        return False
    return True


def bare_number(address: str) -> str:
    """`whatsapp:+15551234567` -> `+15551234567`."""
    return address.strip().removeprefix("whatsapp:")


def sender_allowed(settings: Settings, address: str) -> bool:
    """WHATSAPP_ALLOWED_SENDERS decides; an empty list allows everyone (development only, with a warning).

    core.settings refuses to start in production with WhatsApp configured and
    an empty list, so "empty" here always means development.
    """
    allowed = settings.whatsapp_allowed_senders
    if not allowed:
        logger.warning(
            "WHATSAPP_ALLOWED_SENDERS is empty: accepting a command from any sender (development only)",
        )
        return True
    return bare_number(address) in allowed


class BackgroundTasks:
    """Owns the tasks that finish inbound work after the webhook has answered."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        kind: str,
        trigger: str,
        input_summary: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[Any]:
        """Run `coro` in the background; a failure is logged and recorded as a failed `kind` run."""
        if self._closing:
            coro.close()
            raise RuntimeError("shutting down: no new background work is accepted")
        task = asyncio.create_task(self._guard(coro, kind=kind, trigger=trigger, summary=dict(input_summary or {})))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def adopt(
        self, task: asyncio.Task[Any], *, kind: str, trigger: str, input_summary: Mapping[str, Any] | None = None
    ) -> asyncio.Task[Any]:
        """Take over an already running task (one a webhook started but stopped waiting for)."""

        async def wait() -> Any:
            return await task

        tracked = self.spawn(wait(), kind=kind, trigger=trigger, input_summary=input_summary)
        # Cancelling the tracker's wrapper must cancel the work itself too.
        tracked.add_done_callback(lambda done: task.cancel() if done.cancelled() else None)
        return tracked

    async def _guard(self, coro: Coroutine[Any, Any, Any], *, kind: str, trigger: str, summary: dict[str, Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            logger.warning("background %s cancelled at shutdown before it finished", kind)
            await asyncio.shield(
                self._record(kind, trigger, summary, status="cancelled", error="cancelled at shutdown")
            )
            raise
        except Exception as exc:
            logger.exception("background %s failed", kind)
            await self._record(kind, trigger, summary, status="failed", error=describe_error(exc))
            return None

    async def _record(self, kind: str, trigger: str, summary: dict[str, Any], *, status: str, error: str) -> None:
        try:
            run_id = await self.ledger.start_run(kind, trigger=trigger, input_summary=summary)
            await self.ledger.finish_run(run_id, status=status, error=error)
        except Exception:  # the database itself may be what failed; the log line above stands
            logger.exception("could not record the background %s outcome in the ledger", kind)

    async def aclose(self, grace_seconds: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Let running work finish for `grace_seconds`, then cancel what is left and wait for it."""
        self._closing = True
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still_running = await asyncio.wait(pending, timeout=grace_seconds)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running)


async def open_background_tasks(ledger: Ledger, stack: AsyncExitStack) -> BackgroundTasks:
    tasks = BackgroundTasks(ledger)
    stack.push_async_callback(tasks.aclose)
    return tasks
