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
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import StoreUnavailable
from core.ledger import Ledger, RunKind, describe_error
from core.settings import Settings
from core.store import InboundMessage, utcnow

logger = logging.getLogger("orchestrator.inbound")


async def claim_message(sessions: async_sessionmaker, *, source: str, message_id: str) -> bool:
    """True for the first delivery of (source, message_id); False for any replay.

    The primary key decides, so concurrent duplicate deliveries, even to
    different workers, produce exactly one True. The claim is committed before
    this returns; concurrent claims share one transaction (see `_MessageClaims`).
    """
    return (await _claims_for(sessions).claim((source, message_id[:255]), None)).first_delivery


class EventClaim(NamedTuple):
    """What `claim_event_and_message` decided. Both rows were committed in one transaction, or neither."""

    #: The event's own id was not claimed before: False for a redelivery of the same event.
    first_delivery: bool
    #: ... and the message it carries was not claimed by another event either. Always False for a redelivery.
    first_for_message: bool


async def claim_event_and_message(
    sessions: async_sessionmaker, *, source: str, event_id: str, message_source: str, message_id: str
) -> EventClaim:
    """Claim an event and, when it is a first delivery, the message it carries, in one transaction.

    One message can arrive as several events with their own ids (a Slack direct message that mentions the bot
    is both `message.im` and `app_mention`). The event's claim makes its redeliveries replays; the message's
    makes the message one answer. Taken in two transactions, a database failure between the two left the event
    claimed with nothing done, and the sender's resend was then ignored as a redelivery. Here a failure leaves
    neither. A second event for a message keeps its own claim (its redeliveries stay replays) but gets
    `first_for_message=False`. The primary key decides each row, so concurrent events for one message, even on
    different workers, give exactly one `first_for_message`.

    `message_source` must be a source only ever claimed through this function (`"slack-message"`): every batch
    then inserts its events' rows before its messages' rows, each in sorted order, one global order in which two
    workers' batches never wait on each other in a cycle (see `_insert_new`).
    """
    return await _claims_for(sessions).claim((source, event_id[:255]), (message_source, message_id[:255]))


def _claims_for(sessions: async_sessionmaker) -> _MessageClaims:
    loop = asyncio.get_running_loop()
    claims = _claims.get(sessions)
    if claims is None or claims.loop is not loop:
        claims = _claims[sessions] = _MessageClaims(sessions, loop)
    return claims


# One claim queue per session factory (that is, per database and app); weak keys so a disposed
# app's queue goes with it.
_claims: weakref.WeakKeyDictionary[async_sessionmaker, _MessageClaims] = weakref.WeakKeyDictionary()
# Rows per INSERT: 3 parameters each, far below SQLite's 32,766-parameter limit.
_MAX_CLAIMS_PER_STATEMENT = 500


@dataclass(slots=True)
class _PendingClaim:
    key: tuple[str, str]
    #: A second row (a message), claimed in the same transaction only when `key` is a first delivery.
    then: tuple[str, str] | None
    outcome: asyncio.Future[EventClaim]


class _MessageClaims:
    """Claims committed in groups: one INSERT ... ON CONFLICT DO NOTHING RETURNING per batch.

    A claim of its own was a transaction of its own: about six round trips to
    aiosqlite's thread (checkout, cursor, execute, close, commit, reset) for one
    row, which made the signed-webhook benchmark 0.06x a hello world
    (docs/benchmarks.md). Claims made while a batch is being committed wait for
    the next one, so under load a batch holds every webhook in flight and costs
    one statement and one commit (two when it holds events that claim their
    message too: those rows go in a second INSERT, in the same transaction). The
    database still decides: the rows it returns are the ones it inserted, and
    nobody hears True before that commit.
    """

    def __init__(self, sessions: async_sessionmaker, loop: asyncio.AbstractEventLoop) -> None:
        self.sessions = sessions
        self.loop = loop
        self._pending: list[_PendingClaim] = []
        self._drainer: asyncio.Task[None] | None = None

    async def claim(self, key: tuple[str, str], then: tuple[str, str] | None) -> EventClaim:
        outcome: asyncio.Future[EventClaim] = self.loop.create_future()
        self._pending.append(_PendingClaim(key, then, outcome))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="inbound-claims")
        # shield: a caller that gives up must not abort a batch other callers wait for.
        return await asyncio.shield(outcome)

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:_MAX_CLAIMS_PER_STATEMENT]
            del self._pending[: len(batch)]
            try:
                async with self.sessions.begin() as session:
                    outcomes = await _decide(session, batch)
            except Exception as exc:  # the database failed: every claim in the batch fails with it, both rows
                for claim in batch:
                    if not claim.outcome.done():
                        claim.outcome.set_exception(exc)
                continue
            for claim, outcome in zip(batch, outcomes, strict=True):
                if not claim.outcome.done():
                    claim.outcome.set_result(outcome)


async def _decide(session: AsyncSession, batch: list[_PendingClaim]) -> list[EventClaim]:
    """Insert the batch's rows, the second rows only for the claims whose first row this batch inserted."""
    keys = [claim.key for claim in batch]
    firsts = _first_of_each(keys, await _insert_new(session, _unique(keys)))
    thens = [claim.then if first else None for claim, first in zip(batch, firsts, strict=True)]
    wanted = [then for then in thens if then is not None]
    then_firsts = iter(_first_of_each(wanted, await _insert_new(session, _unique(wanted)) if wanted else set()))
    return [
        EventClaim(first, next(then_firsts) if then is not None else False)
        for first, then in zip(firsts, thens, strict=True)
    ]


def _unique(keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(keys))  # a key twice in one batch: one row


def _first_of_each(keys: list[tuple[str, str]], inserted: set[tuple[str, str]]) -> list[bool]:
    """For each key in order, whether it won its row: only the first occurrence of a key given twice in a batch
    can, and a later one is a replay."""
    unclaimed = set(inserted)
    firsts = []
    for key in keys:
        firsts.append(key in unclaimed)
        unclaimed.discard(key)
    return firsts


async def _insert_new(session: AsyncSession, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Insert the (source, message_id) rows not yet stored; return the ones this call inserted.

    In sorted order: two workers' batches that share keys then take the rows' locks in the same order, so one
    waits for the other. In arrival order each could hold the row the other needs next, and PostgreSQL would
    abort one batch as a deadlock, failing every webhook in it.
    """
    now = utcnow()
    rows = [{"source": source, "message_id": message_id, "received_at": now} for source, message_id in sorted(keys)]
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert is not None:
        statement = (
            insert(InboundMessage)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(InboundMessage.source, InboundMessage.message_id)
        )
        return {(source, message_id) for source, message_id in (await session.execute(statement)).all()}
    # Any other database: a savepoint per row, the primary key still decides.
    inserted = set()
    for row in rows:
        try:
            async with session.begin_nested():
                session.add(InboundMessage(**row))
        except IntegrityError:
            continue
        inserted.add((row["source"], row["message_id"]))
    return inserted


def bare_number(address: str) -> str:
    """`whatsapp:+15551234567` -> `+15551234567`."""
    return address.strip().removeprefix("whatsapp:")


def sender_allowed(settings: Settings, address: str) -> bool:
    """WHATSAPP_ALLOWED_SENDERS decides; an empty list allows no one.

    It allowed everyone in development, with a warning in the log: behind the documented ngrok set-up (which
    runs in development), any WhatsApp user who found the number started timers on the owner's Toggl and posted
    to their Slack (found by a black-box review). `/health` says so while the list is empty.
    """
    allowed = settings.whatsapp_allowed_senders
    if not allowed:
        logger.warning(
            "WHATSAPP_ALLOWED_SENDERS is empty, so no WhatsApp sender may command the service: a message from "
            "%s was refused. Add the numbers (E.164) that may, and restart.",
            bare_number(address) or "an unknown sender",
        )
        return False
    return bare_number(address) in allowed


async def send_chat_reply(
    ledger: Ledger,
    kind: RunKind,
    *,
    trigger: str,
    input_summary: Mapping[str, Any],
    action: tuple[str, str],
    send: Callable[[], Awaitable[Any]],
) -> None:
    """Send one chat reply (a Slack thread reply, a late WhatsApp message) with `send`, recorded as a `kind` run
    with one `action` (skill, operation). A failure is raised: the send's (a ProblemError), or the database's
    once the reply has gone out.

    When the database refuses the run's start, the reply is sent without its record rather than not at all: it
    is often the one saying that the database failed and what to check (found by a review: Slack got no reply,
    while the timer may have started). The start comes before the send, so the reply still goes out once.
    """
    started = False
    try:
        async with ledger.run(kind, trigger=trigger, input_summary=input_summary) as run:
            started = True
            async with run.action(*action) as record:
                sent = await send()
                record.external_id = sent.ledger_external_id()
                record.request = sent.payload
        return
    except StoreUnavailable as exc:
        if started or exc.extras.get("nothing_sent") is not True:
            raise
        logger.warning("the %s run could not be started (%s): the reply is sent without its record", kind, exc.detail)
    await send()


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
        kind: RunKind,
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

    def track(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background with no run of its own: work that belongs to a request already answered
        and recorded (an Idempotency-Key answer stored late, `core.idempotency`). It reports its own outcome; an
        exception that escapes it is logged here. At shutdown it gets the same grace, then is cancelled."""
        if self._closing:
            coro.close()
            raise RuntimeError("shutting down: no new background work is accepted")
        task = asyncio.create_task(self._logged(coro, name=name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _logged(coro: Coroutine[Any, Any, Any], *, name: str) -> Any:
        try:
            return await coro
        except Exception:
            logger.exception("background %s failed", name)
            return None

    async def _guard(
        self, coro: Coroutine[Any, Any, Any], *, kind: RunKind, trigger: str, summary: dict[str, Any]
    ) -> Any:
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
            await self._record(
                kind, trigger, summary, status="failed", error=describe_error(exc, scrubber=self.ledger.scrubber)
            )
            return None

    async def _record(self, kind: RunKind, trigger: str, summary: dict[str, Any], *, status: str, error: str) -> None:
        try:
            run_id = await self.ledger.start_run(kind, trigger=trigger, input_summary=summary)
            await self.ledger.finish_run(run_id, status=status, error=error)
        except Exception:  # the database itself may be what failed; the log line above stands
            logger.exception("could not record the background %s outcome in the ledger", kind)

    async def aclose(self, grace_seconds: float) -> None:
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


async def open_background_tasks(ledger: Ledger, stack: AsyncExitStack, *, grace_seconds: float) -> BackgroundTasks:
    """The app's background work; at shutdown it gets `grace_seconds` (SHUTDOWN_GRACE_SECONDS) to finish.

    An LLM answer can take most of LLM_TIMEOUT_SECONDS: with too short a grace, a WhatsApp sender told "working
    on it" would never get the answer (the run is recorded `cancelled` either way).
    """
    tasks = BackgroundTasks(ledger)
    stack.push_async_callback(tasks.aclose, grace_seconds)
    return tasks
