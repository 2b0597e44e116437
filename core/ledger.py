"""The run ledger: every request or trigger that acts is a run; every skill call an action.

Usage, from a router or workflow:

    async with ledger.run(RunKind.SLACK_NOTIFY, trigger="api", input_summary={...}) as run:
        async with run.action("slack", "post_message") as action:
            result = await slack.post_message(...)
            action.external_id = result.ts

A failure inside `run.action` is recorded (status `failed`, the error's
detail) and re-raised; a failure inside `ledger.run` marks the run failed.
Retries in skills report their attempts through `note_attempt()`, which finds
the current action via a context variable, so skills never see the ledger.

Nothing secret is stored: `redact()` masks values under credential-looking keys,
and the ledger's `SecretScrubber` (core/secrets.py, the one the logs and error
bodies use) replaces every form of a configured secret in everything written:
input summary, result, error, and each action's request, external id and error.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from core.context import current_idempotency_key
from core.errors import OUTCOME_UNKNOWN, Audience, ProblemError, database_failed, from_the_database
from core.run_kinds import RETIRED_RUN_KINDS as RETIRED_RUN_KINDS  # re-exported: callers import kinds with the ledger
from core.run_kinds import RunKind as RunKind
from core.run_kinds import RunStatus as RunStatus
from core.run_kinds import RunTrigger as RunTrigger
from core.secrets import NO_SECRETS, REDACTED, SecretScrubber
from core.store import Action, Run, utcnow

logger = logging.getLogger("orchestrator.ledger")


# A key that names a credential: `token`, `slack_bot_token`, `X-API-Key`, `Authorization`...
# but not a count such as `input_tokens` or `max_tokens` (the match is anchored at the end).
_SECRET_KEY = re.compile(
    r"(^|[_-])(token|secret|password|passwd|api[_-]?key|authorization|auth|signature|cookie|credentials?)$", re.I
)
#: Longest string kept in a stored summary (a stored prompt with STORE_PROMPTS=true included);
#: longer ones are cut and their length noted, so one request cannot bloat the ledger.
_MAX_STRING = 20_000
_MAX_ERROR = 500
#: How deep a stored request or result may nest; deeper parts are replaced by a note.
MAX_STORED_DEPTH = 32


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    # Keys repeat (the same summaries and results run after run): one regex search per distinct key.
    return _SECRET_KEY.search(key) is not None


def _unchanged(text: str) -> str:
    return text


def encodable(text: str) -> str:
    """`text` with any lone surrogate (JSON's "\\ud800") replaced by "?": it cannot be stored or sent as UTF-8,
    and a stored one made GET /runs fail to serialise."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def redact(value: Any, scrub: Callable[[str], str] = _unchanged, *, depth: int = 0) -> Any:
    """A copy safe to store: secret-looking keys masked, every string (keys too) scrubbed of configured secrets
    by `scrub`, long strings truncated, nesting cut at MAX_STORED_DEPTH. One walk; each string is scrubbed
    before it is cut, so a cut never leaves half a secret."""
    if isinstance(value, str):
        value = encodable(scrub(value))
        return value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + f"… ({len(value)} chars)"
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_STORED_DEPTH:
        # Stored whole, a client's 300-level JSON made GET /runs/{id} a 500 for good (pydantic's serialiser
        # stops at its own depth limit; found by a code review).
        return f"… (nested deeper than {MAX_STORED_DEPTH} levels)"
    if isinstance(value, Mapping):
        stored = {}
        for key, val in value.items():
            name = encodable(scrub(str(key)))
            secret = _is_secret_key(name) and val not in (None, "")
            stored[name] = REDACTED if secret else redact(val, scrub, depth=depth + 1)
        return stored
    if isinstance(value, (list, tuple)):
        return [redact(item, scrub, depth=depth + 1) for item in value]
    return value


CANCELLED = (
    "cancelled before it finished (the service shut down, or the caller went away); "
    "a call already sent upstream may or may not have taken effect"
)


@dataclass(frozen=True)
class AbandonedRun:
    """A run its worker left `running`: what it was asked to do, and when."""

    id: str
    kind: str
    input_summary: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class UnsettledAction:
    """A failed action the prune still has to see to (`Ledger.unsettled_actions`): what was asked, and what was
    sent or meant (`request`)."""

    action_id: int
    run_id: str
    kind: str
    input_summary: dict[str, Any]
    request: dict[str, Any]
    created_at: datetime


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time this service stores is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


INTERRUPTED = (
    "interrupted: the worker running this stopped without finishing it (killed or crashed), so it was closed "
    "as failed after {minutes:g} minutes; a call already sent upstream may or may not have taken effect "
    "(an action cut off with it was never written: input_summary says what was asked)"
)


def outcome_of(exc: BaseException, *, scrubber: SecretScrubber = NO_SECRETS) -> tuple[str, str]:
    """(status, error) for a run or action that ended with `exc`: a cancellation is not a failure."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled", CANCELLED
    return "failed", describe_error(exc, scrubber=scrubber)


def describe_error(exc: BaseException, *, scrubber: SecretScrubber = NO_SECRETS, audience: Audience = "api") -> str:
    """One line for the ledger (or, `audience="chat"`, for a chat reply that relays it); scrubbed before it is
    cut, so a cut never leaves half a secret."""
    if isinstance(exc, ProblemError):
        return scrubber.scrub(f"{exc.status} {exc.slug}: {exc.words(audience)}")
    return scrubber.scrub(f"{type(exc).__name__}: {exc}")[:_MAX_ERROR]


@dataclass
class ActionRecord:
    """Mutable while the action runs; written when it ends."""

    skill: str
    operation: str
    status: str = "ok"
    external_id: str | None = None
    request: dict[str, Any] | None = None
    attempts: int = 0
    error: str | None = None


_current_action: ContextVar[ActionRecord | None] = ContextVar("current_action", default=None)


def note_request(request: dict[str, Any]) -> None:
    """Called by a skill with the request it is about to send: the current action records it even when the
    send fails. A failed start or post is the one whose exact request someone needs, to find out whether it
    happened (the reviews found failed actions with `request: null`)."""
    record = _current_action.get()
    if record is not None:
        record.request = request


def note_external_id(external_id: str) -> None:
    """Called by a skill as soon as an upstream object exists (a WhatsApp part's SID): the current action keeps
    it even if a later step fails. Parts 1-7 of a message whose part 8 failed were sent, and their delivery
    callbacks must find this run (found by a review: external_id stayed null)."""
    record = _current_action.get()
    if record is not None:
        record.external_id = external_id


def note_attempt() -> None:
    """Called by retry loops once per attempt; counts toward the current action."""
    record = _current_action.get()
    if record is not None:
        record.attempts += 1


@dataclass
class RunHandle:
    ledger: Ledger
    id: str
    status: str | None = None  # set to override the final status ("partial", "dry_run", ...)
    result: dict[str, Any] | None = None
    error: str | None = None  # why a run that ends without an exception still failed (a briefing whose steps all did)
    actions: list[ActionRecord] = field(default_factory=list)

    @asynccontextmanager
    async def action(
        self, skill: str, operation: str, *, request: dict[str, Any] | None = None
    ) -> AsyncIterator[ActionRecord]:
        record = ActionRecord(skill=skill, operation=operation, request=request)
        token = _current_action.set(record)
        started = time.perf_counter()
        try:
            yield record
        except BaseException as exc:
            record.status, record.error = outcome_of(exc, scrubber=self.ledger.scrubber)
            raise
        finally:
            _current_action.reset(token)
            self.actions.append(record)
            await self.ledger.record_action(self.id, record, duration_ms=int((time.perf_counter() - started) * 1000))

    async def skip(
        self,
        skill: str,
        operation: str,
        *,
        status: str,
        error: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> None:
        """Record a step that did not run (`skipped`, `not_configured`, or `failed` before it could act)."""
        record = ActionRecord(skill=skill, operation=operation, status=status, error=error, request=request)
        self.actions.append(record)
        await self.ledger.record_action(self.id, record, duration_ms=0)


class _StartRun:
    """A run's `running` row, as data: a batch inserts all of its starts in one executemany."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row


class _AddAction:
    """An action row, as data: a batch inserts all of its actions in one executemany."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row


class _FinishRun:
    """A run's finish, as data: folded into its start when both are in one batch, else one executemany."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params


class _Barrier:
    """Writes nothing; waiting for it waits for everything queued before it (`flush`)."""


_Write = _StartRun | _AddAction | _FinishRun | _Barrier

#: How long writes nobody waits for are retried while the database does not answer (a restart, a fail-over),
#: with backoff, counted from the first failure of the outage, not per write: past it, each further write gets
#: one try until one succeeds (per write, a queue of N writes held every waiting request N x 30 s; found by a
#: review). The writes queued behind wait too, so order is kept.
UNWAITED_RETRY_SECONDS = 30.0
_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)


class LedgerWriteLost(SQLAlchemyError):
    """A run's finish refused because an earlier write of the same run was lost: committed, the run would read
    `ok` without the action it took (found by a review: a Toggl start, and so its planned stop, vanished). The
    run stays `running`, so the prune closes it as interrupted and sees to a timer it may have started."""


def _run_of(write: _Write) -> str | None:
    if isinstance(write, _StartRun):
        return write.row["id"]
    if isinstance(write, _AddAction):
        return write.row["run_id"]
    if isinstance(write, _FinishRun):
        return write.params["b_id"]
    return None


def _transient(exc: BaseException) -> bool:
    """A database that did not answer (connection refused, dropped, a server restarting), not a refused row."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))
    return isinstance(exc, (OSError, TimeoutError))


# Plain table statements, not ORM units of work: the ORM's flush (identity map, per-object state
# changes, synchronize-session evaluation) was ~15 % of the event loop's CPU on /ai-process, for rows
# nobody reads back in the drain's session (docs/benchmarks.md).
_runs = Run.__table__
_actions = Action.__table__
_INSERT_RUNS = insert(_runs)
_INSERT_ACTIONS = insert(_actions)
_FINISH_RUN = (
    update(_runs)
    .where(_runs.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_finished_at"),
        result=bindparam("b_result"),
        error=bindparam("b_error"),
    )
)


async def _write_batch(session: AsyncSession, batch: list[_Write]) -> None:
    """At most three statements for a whole batch: runs, then actions, then finishes.

    A finish whose start is in the same batch is folded into the start's row, so a
    run that starts and ends between two commits (an /ai-process request) is one
    INSERT. A second start with an id already in the batch is inserted as its own
    row, so the primary key still rejects it.
    """
    starts: list[dict[str, Any]] = []
    started: dict[str, dict[str, Any]] = {}
    actions: list[dict[str, Any]] = []
    finishes: list[dict[str, Any]] = []
    for write in batch:
        if isinstance(write, _StartRun):
            starts.append(write.row)
            started.setdefault(write.row["id"], write.row)
        elif isinstance(write, _AddAction):
            actions.append(write.row)
        elif isinstance(write, _FinishRun):
            row = started.get(write.params["b_id"])
            if row is None:
                finishes.append(write.params)
            else:
                row.update(
                    status=write.params["b_status"],
                    finished_at=write.params["b_finished_at"],
                    result=write.params["b_result"],
                    error=write.params["b_error"],
                )
    if starts:
        await session.execute(_INSERT_RUNS, starts)
    if actions:
        await session.execute(_INSERT_ACTIONS, actions)
    if finishes:
        await session.execute(_FINISH_RUN, finishes)


class _GroupCommit:
    """Writes the ledger in submission order, committing concurrent writes together.

    Each ledger write used to be its own transaction: about five round trips to
    the database driver's thread (aiosqlite) and a commit, three times per run.
    Those round trips, not the upstream, capped throughput and set the latency
    floor (docs/benchmarks.md). Now writes join one FIFO queue and one drain
    task at a time commits everything queued so far in one transaction.

    A caller may wait for its write (`wait=True`) or not. Because the queue is
    FIFO, a waited write also guarantees that every write submitted before it
    is committed: `Ledger.run` submits the run's start and its actions without
    waiting and waits only for the finish, so when a route returns, its whole
    run is in the database, in one transaction when nothing else is queued.
    A write submitted with `kick=False` does not start a drain by itself; it
    rides with the next write that does (a run's finish always does).
    If a batch fails, its writes are retried one by one, so one bad write never
    takes the others down. A write someone waits for fails at once (its caller
    answers the failure). A write nobody waits for is retried for
    UNWAITED_RETRY_SECONDS while the database does not answer; given up, it is
    logged in full and its run's later writes are refused (`LedgerWriteLost`),
    so the run stays `running` instead of finishing `ok` without it. Before, it
    was dropped after one try, and a short database outage mid-briefing lost
    the timer's start action while the run read `ok` (found by a review).
    """

    def __init__(self, sessions: async_sessionmaker) -> None:
        self.sessions = sessions
        self._pending: list[tuple[_Write, asyncio.Future[None] | None]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._lost_runs: set[str] = set()
        #: When the current database outage began (the first failed try since the last success); None if none.
        self._failing_since: float | None = None

    async def submit(self, write: _Write, *, wait: bool = True, kick: bool = True) -> None:
        done: asyncio.Future[None] | None = asyncio.get_running_loop().create_future() if wait else None
        self._pending.append((write, done))
        if (kick or wait) and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.create_task(self._drain(), name="ledger-group-commit")
        if done is not None:
            # shield: a cancelled caller still gets its row written (a cancelled run must end up in the ledger).
            await asyncio.shield(done)

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (read-your-writes for ledger reads)."""
        if self._pending or (self._drainer is not None and not self._drainer.done()):
            await self.submit(_Barrier())

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            if self._lost_runs:
                batch = [(write, done) for write, done in batch if not self._refused_as_lost(write, done)]
            try:
                async with self.sessions.begin() as session:
                    await _write_batch(session, [write for write, _ in batch])
            except Exception as exc:
                # A database that stopped answering may have done so after the commit went through.
                await self._one_by_one(batch, maybe_written=_transient(exc))
            else:
                self._failing_since = None
                for _, done in batch:
                    if done is not None and not done.done():
                        done.set_result(None)

    async def _one_by_one(
        self, batch: list[tuple[_Write, asyncio.Future[None] | None]], *, maybe_written: bool
    ) -> None:
        for write, done in batch:
            if self._refused_as_lost(write, done):
                continue
            run_id = _run_of(write)
            try:
                await self._write_patiently(write, patient=done is None, maybe_written=maybe_written)
            except Exception as exc:
                if done is None:
                    logger.exception("a ledger write was lost: %s %r", type(write).__name__, _content(write))
                    if run_id is not None and not isinstance(write, _FinishRun):
                        self._lost_runs.add(run_id)
                elif not done.done():
                    done.set_exception(exc)
            else:
                if done is not None and not done.done():
                    done.set_result(None)

    def _refused_as_lost(self, write: _Write, done: asyncio.Future[None] | None) -> bool:
        """Refuse a later write of a run that lost one (see the class docstring); True when it was refused."""
        run_id = _run_of(write)
        if run_id not in self._lost_runs:
            return False
        if isinstance(write, _FinishRun):
            self._lost_runs.discard(run_id)  # a run's last write: nothing more to refuse
        lost = LedgerWriteLost(f"an earlier write of run {run_id} was lost, so it stays `running`")
        if done is None:
            logger.error("a ledger write was refused: %s", lost)
        elif not done.done():
            done.set_exception(lost)
        return True

    async def _write_patiently(self, write: _Write, *, patient: bool, maybe_written: bool) -> None:
        """One write in its own transaction; if `patient`, retried with backoff while the database does not
        answer, until UNWAITED_RETRY_SECONDS after the outage began.

        `maybe_written`: an earlier try failed as the database stopped answering, which can happen after its
        commit went through. The write is then looked for before it is tried again, so a retried INSERT
        neither records an action twice (actions have no natural key) nor calls a written start a conflict.
        """
        for attempt in itertools.count():
            try:
                async with self.sessions.begin() as session:
                    if not (maybe_written and await _already_written(session, write)):
                        await _write_batch(session, [write])
            except Exception as exc:
                if not _transient(exc):
                    raise
                maybe_written = True
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                if not patient or now + delay > self._failing_since + UNWAITED_RETRY_SECONDS:
                    raise
                logger.warning("a ledger write failed (%s); trying again in %g s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
            else:
                self._failing_since = None
                return


async def _already_written(session: AsyncSession, write: _Write) -> bool:
    """Whether this very INSERT is in the database: its row, down to the creation time the ledger gave it.

    The time tells our row from another one with the same key (a redelivered WhatsApp status callback's run
    has a derived id: that one is a conflict, not ours). A finish is an UPDATE: running it again is harmless.
    """
    row = getattr(write, "row", None)
    if isinstance(write, _StartRun):
        found = select(_runs.c.id).where(_runs.c.id == row["id"], _runs.c.created_at == row["created_at"])
    elif isinstance(write, _AddAction):
        found = select(_actions.c.id).where(
            _actions.c.run_id == row["run_id"],
            _actions.c.skill == row["skill"],
            _actions.c.operation == row["operation"],
            _actions.c.created_at == row["created_at"],
        )
    else:
        return False
    return (await session.execute(found.limit(1))).first() is not None


def _content(write: _Write) -> Any:
    """What a lost write held, for the log line that is then its only record (already scrubbed of secrets)."""
    return getattr(write, "row", None) or getattr(write, "params", None)


class Ledger:
    """Runs and actions in the database. `scrubber` removes configured secrets from everything written."""

    def __init__(self, sessions: async_sessionmaker, *, scrubber: SecretScrubber = NO_SECRETS) -> None:
        self.sessions = sessions
        self.scrubber = scrubber
        self._writes = _GroupCommit(sessions)

    def _stored(self, value: Any) -> Any:
        return redact(value, self.scrubber.scrub)

    def _stored_text(self, text: str | None) -> str | None:
        if not text:
            return text
        text = encodable(self.scrubber.scrub(text))
        # PostgreSQL text cannot hold NUL ("invalid byte sequence for encoding UTF8: 0x00"): an error quoting
        # a client's value with one would make the ledger write, and so the request, fail.
        return text.replace("\x00", "\\x00") if "\x00" in text else text

    @asynccontextmanager
    async def run(
        self,
        kind: RunKind,
        *,
        trigger: str,
        input_summary: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        durable_start: bool = True,
    ) -> AsyncIterator[RunHandle]:
        """Record a run around the block.

        `durable_start=True` (the default) commits the `running` row before the block
        acts, so a crash mid-action leaves a visible trace ("running", never finished)
        rather than an action on someone's account with no record at all. Runs that
        only read or generate text may pass False to skip that wait.
        """
        try:
            started = await self.start_run(
                kind, trigger=trigger, input_summary=input_summary, run_id=run_id, durable=durable_start
            )
        except (SQLAlchemyError, OSError) as exc:
            # IntegrityError: a `run_id` the caller chose is taken (a redelivered status callback), for the caller
            # to handle: the database answered. Made a "did not answer" 503 like the rest, it never reached the
            # status callback's redelivery check.
            if not from_the_database(exc) or isinstance(exc, IntegrityError):
                raise
            raise database_failed(exc, acted=False) from exc  # the block has not run
        handle = RunHandle(self, started)
        try:
            yield handle
        except BaseException as exc:
            status, error = outcome_of(exc, scrubber=self.scrubber)
            await self.finish_run(handle.id, status=status, error=error, result=handle.result)
            raise
        else:
            error = self.scrubber.scrub(handle.error)[:_MAX_ERROR] if handle.error else None
            await self.finish_run(handle.id, status=handle.status or RunStatus.OK, result=handle.result, error=error)

    async def start_run(
        self,
        kind: RunKind,
        *,
        trigger: str,
        input_summary: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        durable: bool = True,
    ) -> str:
        explicit_id = run_id is not None
        run_id = run_id or uuid.uuid4().hex
        row = {
            "id": run_id,
            "kind": str(kind),  # what the row holds and queries compare is the plain value, never the enum
            "trigger": trigger,
            "status": RunStatus.RUNNING.value,
            "created_at": utcnow(),
            "finished_at": None,
            "input_summary": self._stored(dict(input_summary or {})),
            "result": None,
            "error": None,
            "idempotency_key": current_idempotency_key(),
        }
        # A durable start is committed before the caller acts. A non-durable one is not even sent on its own:
        # it waits in the queue for the next write that drains (the run's finish at the latest, a ledger read
        # sooner), so a short run is one INSERT. A caller-chosen id may collide, so that caller always waits.
        wait = durable or explicit_id
        await self._writes.submit(_StartRun(row), wait=wait, kick=wait)
        return run_id

    async def finish_run(
        self, run_id: str, *, status: str, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        params = {
            "b_id": run_id,
            "b_status": str(status),  # the plain value, as for a kind, whether a member or a string was given
            "b_finished_at": utcnow(),
            "b_result": self._stored(result) if result else None,
            "b_error": self._stored_text(error),
        }
        await self._writes.submit(_FinishRun(params))

    async def abandoned_runs(
        self, older_than: timedelta, *, by_kind: Mapping[str, timedelta] | None = None, limit: int = 200
    ) -> list[AbandonedRun]:
        """The runs still `running` after `older_than`, or for a kind in `by_kind` after its own cutoff: their
        worker died (SIGKILL, power loss) and no one else will finish them. Each cutoff is longer than any live
        run of its kinds can take, so a live one is never listed. Per kind, because one for all would have to be
        the longest of all (a WhatsApp message's ten parts), and would delay every other recovery (a timer's stop)."""
        now = utcnow()
        own = dict(by_kind or {})
        old_enough = [and_(Run.kind == kind, Run.created_at < now - cutoff) for kind, cutoff in own.items()]
        others = Run.created_at < now - older_than
        old_enough.append(and_(Run.kind.not_in(list(own)), others) if own else others)
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Run.id, Run.kind, Run.input_summary, Run.created_at)
                    .where(Run.status == RunStatus.RUNNING, or_(*old_enough))
                    .order_by(Run.created_at)
                    .limit(limit)
                )
            ).all()
        return [
            AbandonedRun(
                id=row.id, kind=row.kind, input_summary=row.input_summary or {}, created_at=as_utc(row.created_at)
            )
            for row in rows
        ]

    async def unsettled_actions(
        self, skill: str, operation: str, *, since: datetime, which: ColumnElement[bool] | None = None, limit: int = 50
    ) -> list[UnsettledAction]:
        """`skill`/`operation` actions since `since` not settled yet (no external id), newest first: the failed
        ones, or those `which` selects. Newest first: an unmatched one stays listed for its whole window, and
        oldest first, 50 of them pushed out the newest, the one most likely to own the running timer (found by
        a code review)."""
        await self._writes.flush()
        conditions = [
            Action.skill == skill,
            Action.operation == operation,
            Action.status == "failed" if which is None else which,
            Action.external_id.is_(None),
            Action.created_at >= since,
        ]
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Action.id, Action.run_id, Action.request, Action.created_at, Run.kind, Run.input_summary)
                    .join(Run, Run.id == Action.run_id)
                    .where(*conditions)
                    .order_by(Action.created_at.desc(), Action.id.desc())
                    .limit(limit)
                )
            ).all()
        return [
            UnsettledAction(
                action_id=row.id,
                run_id=row.run_id,
                kind=row.kind,
                input_summary=row.input_summary or {},
                request=row.request if isinstance(row.request, dict) else {},
                created_at=as_utc(row.created_at),
            )
            for row in rows
        ]

    async def unsettled_starts(self, since: datetime) -> list[UnsettledAction]:
        """Timer starts whose entry may be running unknown to us, not found yet: those that failed with their
        outcome unknown (Toggl's answer was lost, and so was the read-back), and those cancelled mid-call (a
        graceful shutdown past its grace: the run ends `cancelled`, not `running`, so the interrupted-run
        recovery never saw it, and the timer ran on; found by a black-box review)."""
        which = or_(
            and_(Action.status == "failed", Action.error.contains(OUTCOME_UNKNOWN, autoescape=True)),
            Action.status == "cancelled",
        )
        return await self.unsettled_actions("toggl", "start_timer", since=since, which=which)

    async def settle(self, action: UnsettledAction, *, external_id: str, note: str) -> None:
        """Record what a failed action turned out to have done or been followed by: its `external_id`, and
        `note` after its error. The action stays `failed` (its caller was told so); the record says the rest.
        Conditional, so of several workers one settles it."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(Action)
                .where(Action.id == action.action_id, Action.external_id.is_(None))
                .values(external_id=self._stored_text(external_id), error=Action.error + self._stored_text(f" {note}"))
                .execution_options(synchronize_session=False)
            )

    async def close_interrupted(self, run: AbandonedRun, older_than: timedelta) -> bool:
        """Mark an abandoned run `failed` ("interrupted"), so `GET /runs?status=running` does not list it for ever
        (found by a review). Conditional on it still running: of several workers, one closes it. `older_than`:
        the cutoff of the run's kind, which its error names."""
        # In whole minutes: a WhatsApp message's cutoff is 36.67 of them with the defaults.
        error = INTERRUPTED.format(minutes=older_than // timedelta(minutes=1))
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(Run)
                .where(Run.id == run.id, Run.status == RunStatus.RUNNING)
                .values(status=RunStatus.FAILED.value, finished_at=utcnow(), error=self._stored_text(error))
                .execution_options(synchronize_session=False)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def record_action(self, run_id: str, record: ActionRecord, *, duration_ms: int) -> None:
        row = {
            "run_id": run_id,
            "skill": record.skill,
            "operation": record.operation,
            "status": record.status,
            "external_id": self._stored_text(record.external_id),
            "error": self._stored_text(record.error),
            "attempts": max(record.attempts, 1 if record.status in ("ok", "failed") else 0),
            "duration_ms": duration_ms,
            "request": self._stored(record.request) if record.request is not None else None,
            "created_at": utcnow(),
        }
        # Not waited for (the run's finish commits it at the latest), but drained now: an action on someone's
        # account must reach the database even if a later step of the same run takes long.
        await self._writes.submit(_AddAction(row), wait=False)

    async def list_runs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        trigger: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Run], int]:
        query = select(Run)
        counted = select(func.count()).select_from(Run)
        for column, value in ((Run.kind, kind), (Run.status, status), (Run.trigger, trigger)):
            if value is not None:
                query = query.where(column == value)
                counted = counted.where(column == value)
        query = query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit).offset(offset)
        await self._writes.flush()
        async with self.sessions() as session:
            runs = list((await session.scalars(query)).all())
            total = int(await session.scalar(counted) or 0)
        return runs, total

    async def find_run_by_external_id(self, *, skill: str, operation: str, external_id: str) -> str | None:
        """The newest run with a `skill`/`operation` action whose external id names `external_id`.

        Several ids may be joined in one external id ("SM1,SM2"), hence a substring match: a scan,
        acceptable for the rare lookups it serves (a failed WhatsApp delivery).
        """
        await self._writes.flush()
        query = (
            select(Action.run_id)
            .where(
                Action.skill == skill,
                Action.operation == operation,
                Action.external_id.contains(external_id, autoescape=True),
            )
            .order_by(Action.id.desc())
            .limit(1)
        )
        async with self.sessions() as session:
            return await session.scalar(query)

    async def get_run(self, run_id: str) -> Run | None:
        await self._writes.flush()
        async with self.sessions() as session:
            return await session.scalar(select(Run).where(Run.id == run_id).options(selectinload(Run.actions)))
