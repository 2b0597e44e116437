"""`Idempotency-Key` for every POST action endpoint, with Stripe's semantics.

- The same key and the same body within 24 hours replays the stored status and
  body with `Idempotent-Replayed: true`; nothing runs twice.
- The same key with a different body, or on another endpoint, is a 422: a key
  names one request, whatever the endpoint (KEY_SCOPE).
- Concurrent duplicates: the first INSERT of (scope, key) wins, in the
  database, so it holds across workers. The others wait for its outcome and
  replay it, or get a 409 if it is still running after `WAIT_SECONDS`.
- A claim still in progress after `ABANDONED_AFTER` was left by a worker that
  died: a 409 at once says its outcome is unknown (never a second run). Older
  than the longest a request usually runs but not yet that old: after the wait,
  a 409 says the worker most likely stopped, with Retry-After until that verdict.

What is stored: a success, and any failure whose outcome upstream is unknown
(502, 504, 500: the action may have happened). A refusal that certainly did
nothing (4xx, 429, 503 not configured or unreachable) releases the key, so the
caller can fix the cause and retry with the same key. An answer kept for replay
(a success, or such a failure) that the database fails to store is still answered
as it is, with `Idempotent-Replayable: false`; the key stays claimed, so a retry
with it never acts again, and the answer is stored in the background as soon as
the database is back (for `LATE_SAVE_SECONDS`, the ledger's window for writes
nobody waits for): a retry then gets the replay. If it never is, a retry's 409
names the run that answered (the ledger records each run's key) instead of saying
the first request never finished. A refusal whose release fails is released late
the same way (only while the row is still its claim): it is answered as itself,
without the header (nothing is ever replayed for it), and a retry once the key
is freed runs afresh; before then, a 409 says the key is not settled yet. A crash
keeps its key as a 500, stored late too if need be; the crash is what is raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Annotated, Any, NamedTuple, Protocol

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from core.context import current_request_id, reset_idempotency_key, set_idempotency_key
from core.deps import ResourcesDep
from core.errors import (
    PROBLEM_CONTENT_TYPE,
    Conflict,
    InvalidInput,
    ProblemError,
    database_failed,
    from_the_database,
    problem_body,
)
from core.ledger import INTERRUPTED, UNWAITED_RETRY_SECONDS, RunStatus
from core.secrets import NO_SECRETS, SecretScrubber
from core.store import IdempotencyKey, Run, utcnow

logger = logging.getLogger("orchestrator.idempotency")

TTL = timedelta(hours=24)
WAIT_SECONDS = 30.0
#: A claim still `in_progress` after this long was left by a worker that died mid-request. The app uses
#: `Settings.abandoned_after` (or its route's kind's, `idempotency_for`), derived from the timeouts so that no
#: live request is ever taken for dead.
ABANDONED_AFTER = timedelta(minutes=10)
POLL_SECONDS = 0.05
#: The request header that names a request (`IdempotencyKeyHeader`); core/openapi.py finds its operations by it.
KEY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
#: Sent (`false`) only with an answer kept for replay (a success, or a problem `_stores_outcome` keeps) that the
#: database failed to store for its key: not stored yet, so a retry with the key gets a 409 until it is
#: (docs/errors.md). Kept under this name, meaning "not replayable yet", since the answer is now stored late
#: (`LATE_SAVE_SECONDS`). Never on a refusal whose release failed: it is released late, never replayed.
REPLAYABLE_HEADER = "Idempotent-Replayable"
#: How long an answer the database failed to store (or a key it failed to release) is tried again in the
#: background: the ledger's window for the writes nobody waits for (`core.ledger.UNWAITED_RETRY_SECONDS`), so one
#: outage loses both or neither.
LATE_SAVE_SECONDS = UNWAITED_RETRY_SECONDS
#: The first wait between those tries, doubled up to `LATE_SAVE_MAX_DELAY` (the ledger's backoff: 0.25 s to 4 s).
LATE_SAVE_FIRST_DELAY = 0.25
LATE_SAVE_MAX_DELAY = 4.0
#: Added to `LATE_SAVE_SECONDS` before a retry takes the late save for given up: its last try may still be running
#: (a connection timing out), and the run's `finished_at` is the clock of the worker that answered.
LATE_SAVE_MARGIN_SECONDS = 10.0
#: Headers kept with an answer for its replays. Not Retry-After: a replay is final for its key, and a client
#: that honours Retry-After on a replayed 429 or 503 (a WhatsApp message whose later part was rate limited)
#: retried with the same key for the key's 24 hours, getting the same replay each time (found by a review).
_STORED_HEADERS = ("location",)
#: Every key lives in one scope: reused on another endpoint it is refused (the request fingerprint holds the
#: method and path), as Stripe does. Scoped per endpoint before, a key used for /start-timer stopped the timer
#: on /stop-timer (found by a black-box review). Migration 0006 moved the rows written before into it. Workers
#: of a release before it and of this one must not serve the same database at once (they look in different
#: scopes): upgrade by stopping the old workers first.
KEY_SCOPE = "*"


def _stores_outcome(status: int, body: Any) -> bool:
    """Whether an answer is kept for the key's replays, or the key released for a fresh try.

    Released whatever its status: a problem saying `nothing_sent` (it failed before anything went out).
    Kept: successes, 500/502/504, a problem naming parts already sent (`sent_sids`), and any problem saying
    `outcome_unknown` (a create that may have happened:
    a Toggl or Slack 503 after the request went out, a connection dropped mid-answer). Released: refusals
    that acted on nothing (4xx, a 503 such as not-configured or a refused connection), so a fixed retry runs.
    Before `outcome_unknown` was read, a 503 "may have been created" released the key, and a retry with the
    same key started a second timer (found by a black-box review).
    """
    if isinstance(body, dict) and body.get("nothing_sent") is True:
        return False  # a failure that certainly acted on nothing, whatever its status (an SMTP login refused)
    if status < 400 or status in (500, 502, 504):
        return True
    # `sent_sids`: a long WhatsApp message whose later part failed; the parts it names were sent. Released, the
    # key let a retry send them again (found by a review).
    return isinstance(body, dict) and (body.get("outcome_unknown") is True or bool(body.get("sent_sids")))


def request_fingerprint(method: str, path: str, payload: Any) -> str:
    canonical = json.dumps([method, path, jsonable_encoder(payload)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json_body(result: Any, scrubber: SecretScrubber) -> Any:
    """The JSON-able form of a route's result, configured secrets scrubbed (`Settings.answer_scrubber`).

    A result carries upstream text (an LLM's answer, a Toggl description) and the caller's own, and this is the
    body answered, stored for replays and replayed: a success echoing a key was all three (found by a security
    review). A pydantic model is dumped by pydantic-core directly: `jsonable_encoder` walks it again in Python,
    ~2 % of /ai-process's CPU (docs/benchmarks.md)."""
    body = result.model_dump(mode="json", by_alias=True) if isinstance(result, BaseModel) else jsonable_encoder(result)
    return scrubber.scrub_value(body)


async def key_already_answered(sessions: async_sessionmaker, *, key: str) -> bool:
    """Whether `key` has a stored answer: the request will replay it (or be refused for another request or
    body: every key shares one scope), acting on nothing, so the rate limiter does not count it (a client
    retrying for its stored answer was refused 429). Only `done` counts: an in-progress claim can still be
    released (a refusal), and the request waiting on it would then run, uncounted."""
    async with sessions() as session:
        answered = await session.scalar(
            select(IdempotencyKey.key).where(
                IdempotencyKey.scope == KEY_SCOPE,
                IdempotencyKey.key == key,
                IdempotencyKey.state == "done",
                IdempotencyKey.created_at > utcnow() - TTL,
            )
        )
    return answered is not None


class BackgroundWork(Protocol):
    """Where an answer stored late runs: the app's tracked background tasks (workflows.inbound.BackgroundTasks),
    given their shutdown grace and then cancelled, never a task nobody holds."""

    def track(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]: ...


class ClaimRun(NamedTuple):
    """The ledger run a claim's first request started (`runs.idempotency_key`), as a retry's 409 describes it."""

    id: str
    status: str
    finished_at: datetime | None
    error: str | None

    @property
    def ended_by_itself(self) -> bool:
        """Whether it finished on its own, with an outcome the ledger knows: not still `running`, not cut off by
        shutdown (`cancelled`), not closed by the prune after its worker died (INTERRUPTED)."""
        interrupted = (self.error or "").startswith(INTERRUPTED.split(":", 1)[0] + ":")
        return self.status not in ("running", "cancelled") and not interrupted and self.finished_at is not None


def _database_failure(exc: BaseException) -> bool:
    return isinstance(exc, (SQLAlchemyError, OSError)) and from_the_database(exc)


class Idempotency:
    """Bound to one request; `execute` runs the action at most once per key."""

    def __init__(
        self,
        sessions: async_sessionmaker,
        *,
        key: str | None,
        method: str,
        path: str,
        abandoned_after: timedelta = ABANDONED_AFTER,
        longest_request: timedelta | None = None,
        scrubber: SecretScrubber = NO_SECRETS,
        background: BackgroundWork | None = None,
    ) -> None:
        self.sessions = sessions
        #: Where an answer the database failed to store is stored late; None: it is not (logged).
        self.background = background
        #: Our claim's `created_at`, once inserted: a settle changes the row only while it is still that claim.
        self._claimed_at: datetime | None = None
        self.abandoned_after = abandoned_after
        self.scrubber = scrubber
        #: The longest a live request can run (Settings.longest_request_seconds); half the cutoff by default.
        self.longest_request = abandoned_after / 2 if longest_request is None else longest_request
        self.key = key
        self.scope = KEY_SCOPE
        self.method = method
        self.path = path

    async def execute(
        self, payload: Any, action: Callable[[], Awaitable[Any]], *, status_code: int = 200
    ) -> JSONResponse:
        """Run `action` (returning a pydantic model or JSON-able value) under the key."""
        if self.key is None:
            return JSONResponse(_json_body(await action(), self.scrubber), status_code=status_code)

        fingerprint = request_fingerprint(self.method, self.path, payload)
        try:
            existing = await self._claim(fingerprint)
        except (SQLAlchemyError, OSError) as exc:
            if not from_the_database(exc):
                raise
            raise database_failed(exc, acted=False) from exc  # nothing has run: a plain retry is safe
        if existing is not None:
            return await self._replay_when_done(existing, fingerprint)

        try:
            result = await self._act(action)
        except ProblemError as exc:
            body = problem_body(exc, self.path)
            try:
                await self._settle(exc.status, body, exc.headers)
            except (SQLAlchemyError, OSError) as settle_failure:
                # The database failed again (it is what failed, for a StoreUnavailable): the caller still gets
                # this problem, not the database's error in its place, which read as "outcome unknown" for a
                # request that did nothing (found by a review).
                if not _database_failure(settle_failure):
                    logger.exception("the Idempotency-Key of a failed request could not be settled")
                else:
                    # Settled late, as a success is. A problem kept for replay (it may have acted): left claimed
                    # without it, a retry got "still in progress", then "finished (run X, failed)" instead of the
                    # replay. A refusal that acted on nothing: its key stayed claimed for 24 hours, and a retry
                    # once the database was back got a 409 instead of running afresh.
                    self._settle_late_in_background(exc.status, body, exc.headers, settle_failure)
                    if _stores_outcome(exc.status, body):
                        # Not on a refusal: the header promises a replay once stored, and a released answer
                        # is never replayed (a retry runs afresh).
                        exc.headers = {**exc.headers, REPLAYABLE_HEADER: "false"}
            raise exc from exc.__cause__
        except BaseException:
            # Unknown outcome (a crash or a cancelled request): keep the key
            # claimed as a 500 so a retry cannot repeat what may have happened.
            crashed = problem_body(
                ProblemError("The original request failed unexpectedly; its outcome is unknown. Check GET /runs."),
                self.path,
            )
            try:
                await asyncio.shield(self._settle(500, crashed, {}))
            except Exception as settle_failure:
                # The original error is what the caller's 500 and the log must tell: raised from here, the store's
                # error took its place (a 503 "database did not answer" for a bug, its traceback only as context).
                if _database_failure(settle_failure):
                    self._settle_late_in_background(500, crashed, {}, settle_failure)
                else:
                    logger.exception("the Idempotency-Key of a crashed request could not be settled")
            raise
        body = _json_body(result, self.scrubber)
        try:
            await self._settle(status_code, body, {})
        except (SQLAlchemyError, OSError) as exc:
            if not from_the_database(exc):
                raise
            return self._answer_not_stored(body, status_code, exc)
        return JSONResponse(body, status_code=status_code)

    async def _act(self, action: Callable[[], Awaitable[Any]]) -> Any:
        """The action, with its key in context: the ledger writes it on the runs it starts (`ClaimRun`)."""
        token = set_idempotency_key(self.key)
        try:
            return await action()
        finally:
            reset_idempotency_key(token)

    def _answer_not_stored(self, body: Any, status_code: int, exc: BaseException) -> JSONResponse:
        """The action's own answer, for an action that succeeded but whose answer the database failed to store.

        It was the 503 for a database failing mid-request, "outcome unknown: check GET /runs before retrying",
        while the run was recorded `ok` (found by a review). The action happened and its answer is here (the
        entry id, the message ts the caller needs), so it is answered as it is, with `Idempotent-Replayable:
        false`: the key stays claimed, so a retry with it never acts again. A 5xx would have withheld that answer
        from a caller who got it, and invited exactly that retry.

        Left at that, the retry got "still in progress", then, past the abandoned cutoff, "never finished", for an
        answer the database could take again a second later. So it is stored in the background (`_settle_late`),
        and a retry once the database is back gets the replay, as for any other answer.
        """
        self._settle_late_in_background(status_code, body, {}, exc)
        return JSONResponse(body, status_code=status_code, headers={REPLAYABLE_HEADER: "false"})

    def _settle_late_in_background(self, status: int, body: Any, headers: dict[str, str], exc: BaseException) -> None:
        """Hand a settle the database failed to `_settle_late` in the app's tracked background work: the store of
        an answer kept for replay (a success, a problem `_stores_outcome` keeps, a crash's 500), or the release of
        a refusal's key. Without that work (or at shutdown) it is only logged, and the key stays claimed: a retry
        with it gets a 409, naming the run if there is one."""
        run_id = body.get("run_id") if isinstance(body, dict) else None
        late = self.background is not None
        what = "stored" if _stores_outcome(status, body) else "released"
        logger.warning(
            "the %d answer of %s %s (run %s) could not be %s for its Idempotency-Key (%s): %s",
            status,
            self.method,
            self.path,
            run_id or "-",
            what,
            type(exc).__name__,
            f"trying again for {LATE_SAVE_SECONDS:g} s" if late else "a retry with that key gets a 409",
        )
        if self.background is None:
            return
        try:
            self.background.track(
                self._settle_late(status, body, headers, run_id),
                name=f"idempotency late {'save' if what == 'stored' else 'release'} of run {run_id or '-'}",
            )
        except RuntimeError:  # shutting down: no new background work
            logger.warning("shutting down: the answer of run %s is not %s for its key", run_id or "-", what)

    async def _settle_late(self, status_code: int, body: Any, headers: dict[str, str], run_id: str | None) -> None:
        """Settle a key whose first settle failed, while the database does not answer, for LATE_SAVE_SECONDS:
        store the answer kept for replay, or release the key of a refusal (`_stores_outcome`), so a retry
        replays the one and runs the other afresh.

        Through `_settle`, which changes the row only while it is still our claim in progress: if the failed
        settle went through after all, or the key was released or claimed again meanwhile, nothing is
        overwritten, and no other request's claim is freed.
        """
        if _stores_outcome(status_code, body):
            what, verb, now = "the answer of run %s", "stored", "a retry replays it"
            after = "a retry with that key gets a 409 naming the run"
        else:
            what, verb, now = "the key of run %s", "released", "a retry runs afresh"
            after = "it stays claimed, and a retry with it gets a 409"
        pending, done, gave_up = f"{what} was {verb}", f"{what} is {verb}", f"{what} could not be {verb}"
        retrying = AsyncRetrying(
            stop=stop_after_delay(LATE_SAVE_SECONDS),
            wait=wait_exponential(multiplier=LATE_SAVE_FIRST_DELAY, min=LATE_SAVE_FIRST_DELAY, max=LATE_SAVE_MAX_DELAY),
            retry=retry_if_exception(_database_failure),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._settle(status_code, body, headers)
        except asyncio.CancelledError:
            logger.warning(f"shutting down before {pending} for its Idempotency-Key: {after}", run_id or "-")
            raise
        except Exception as exc:
            if not _database_failure(exc):
                raise
            logger.error(
                f"{gave_up} for its Idempotency-Key in %g s (%s): {after}",
                run_id or "-",
                LATE_SAVE_SECONDS,
                type(exc).__name__,
            )
            return
        logger.info(f"{done} for its Idempotency-Key: {now}", run_id or "-")

    async def _claim(self, fingerprint: str) -> IdempotencyKey | None:
        """Insert our claim; on conflict return the existing row (expired rows are replaced)."""
        for _ in range(3):
            claimed_at = utcnow()
            try:
                async with self.sessions.begin() as session:
                    session.add(
                        IdempotencyKey(
                            scope=self.scope,
                            key=self.key,
                            request_hash=fingerprint,
                            state="in_progress",
                            created_at=claimed_at,
                        )
                    )
                self._claimed_at = claimed_at
                return None
            except IntegrityError:
                row = await self._load()
                if row is None:
                    continue  # released between our insert and our read: try again
                if utcnow() - row.created_at > TTL:
                    await self._delete(only_if_created=row.created_at)
                    continue
                return row
        raise Conflict("The Idempotency-Key is being reused too fast; retry in a moment.", headers={"Retry-After": "1"})

    async def _replay_when_done(self, row: IdempotencyKey, fingerprint: str) -> JSONResponse:
        if row.request_hash != fingerprint:
            raise InvalidInput(
                "This Idempotency-Key was already used with a different request (its body, a query parameter "
                "such as dry_run, or another endpoint). Use a new key for a new request.",
                idempotency_key=self.key,
            )
        if row.state != "done":
            run = await self._run_of_claim(row)
            if run is not None and run.ended_by_itself and self._late_save_over(run):
                raise self._answer_lost(run)
        if row.state != "done" and utcnow() - row.created_at > self.abandoned_after:
            # Waiting would only end in "still in progress" (found by a black-box review: 30 s, then that 409,
            # for 24 hours). Nothing can tell whether the first request acted, so it is not run again either.
            raise Conflict(
                f"The first request with this Idempotency-Key started at {row.created_at.isoformat()} and never "
                "finished (the service stopped while it ran), so its outcome is unknown. Check GET /runs for what "
                "it did, then send the request with a new Idempotency-Key if it is still wanted.",
                idempotency_key=self.key,
                outcome_unknown=True,  # the member every "it may have happened" answer carries (docs/errors.md)
            )
        deadline = time.monotonic() + WAIT_SECONDS
        while row.state != "done":
            if time.monotonic() > deadline:
                run = await self._run_of_claim(row)
                if run is not None and run.ended_by_itself:
                    raise self._answer_lost(run) if self._late_save_over(run) else self._answer_not_stored_yet(run)
                raise self._still_in_progress(row)
            await asyncio.sleep(POLL_SECONDS)
            reloaded = await self._load()
            if reloaded is None:
                raise Conflict(
                    "The first request with this Idempotency-Key was refused without effect; send it again.",
                    headers={"Retry-After": "0"},
                )
            row = reloaded
        headers = {**(row.response_headers or {}), REPLAY_HEADER: "true"}
        status = row.response_status or 200
        media_type = PROBLEM_CONTENT_TYPE if status >= 400 else "application/json"
        body = row.response_body
        if isinstance(body, dict) and "request_id" in body:
            # A replayed problem keeps matching this response's X-Request-ID and log line, as every problem does;
            # the first request's id stays findable too.
            body = {**body, "request_id": current_request_id(), "original_request_id": body["request_id"]}
        return JSONResponse(body, status_code=status, headers=headers, media_type=media_type)

    async def _run_of_claim(self, row: IdempotencyKey) -> ClaimRun | None:
        """The first run the claim's request started, if the ledger has one (runs written since migration 0008).

        Only runs started after the claim: a run with the same key before it was an earlier claim's, expired
        or released; a later claim of the key needs this one gone first."""
        async with self.sessions() as session:
            found = (
                await session.execute(
                    select(Run.id, Run.status, Run.finished_at, Run.error)
                    .where(Run.idempotency_key == self.key, Run.created_at >= row.created_at)
                    .order_by(Run.created_at)
                    .limit(1)
                )
            ).first()
        if found is None:
            return None
        return ClaimRun(found.id, found.status, found.finished_at, found.error)

    @staticmethod
    def _late_save_over(run: ClaimRun) -> bool:
        """Whether the late save of the run's answer (`_settle_late`) has given up, had there been one."""
        assert run.finished_at is not None
        window = timedelta(seconds=LATE_SAVE_SECONDS + LATE_SAVE_MARGIN_SECONDS)
        return utcnow() > run.finished_at + window

    def _answer_lost(self, run: ClaimRun) -> Conflict:
        """The 409 for a first request that finished, whose key the database failed to settle (`_settle_late`).

        Past the abandoned cutoff it said "never finished (the service stopped while it ran)", outcome unknown,
        while the run read `ok` (found by a review): the outcome is known, only its answer is not here. A failed
        run may instead have been a refusal whose key was never freed (`_answer_not_stored_yet`)."""
        if run.status == RunStatus.FAILED:
            return Conflict(
                f"The first request with this Idempotency-Key finished (run {run.id}, {run.status}), but the "
                "database failed to settle this key: to store its answer for replay if the request may have acted, "
                "or to free the key if it was refused without effect. Either way it is not run again with this key: "
                f"see GET /runs/{run.id} for what it did, and send the request with a new Idempotency-Key if it is "
                "still wanted.",
                idempotency_key=self.key,
                run_id=run.id,
            )
        return Conflict(
            f"The first request with this Idempotency-Key finished (run {run.id}, {run.status}), but the database "
            "failed to store its answer for this key, so it cannot be replayed. It is not run again: see "
            f"GET /runs/{run.id} for what it did, and send the request with a new Idempotency-Key only if it is "
            "wanted a second time.",
            idempotency_key=self.key,
            run_id=run.id,
        )

    def _answer_not_stored_yet(self, run: ClaimRun) -> Conflict:
        """The 409 for a first request that finished, whose key is still being settled (`_settle_late`).

        A failed run's may be either settle: a failure that may have acted is stored for replay, a refusal that
        acted on nothing has its key freed (`_stores_outcome`). Which, only the request that answered knew: the
        database was down when it would have been written, and the run's error does not carry the members that
        decide it (`nothing_sent`, `outcome_unknown`). "Not stored yet; retry shortly to get it replayed" was
        untrue for a refusal, whose key is freed and whose retry runs afresh."""
        if run.status == RunStatus.FAILED:
            return Conflict(
                f"The first request with this Idempotency-Key finished (run {run.id}, {run.status}), but the "
                "database has not settled this key yet: it is storing its answer for replay if the request may have "
                f"acted, or freeing the key if it was refused without effect (GET /runs/{run.id} says which failure "
                "it was). Retry shortly: that answer is then replayed, or the request runs afresh.",
                headers={"Retry-After": "1"},
                idempotency_key=self.key,
                run_id=run.id,
            )
        return Conflict(
            f"The first request with this Idempotency-Key finished (run {run.id}, {run.status}), but the database "
            "has not stored its answer for this key yet; retry shortly to get it replayed.",
            headers={"Retry-After": "1"},
            idempotency_key=self.key,
            run_id=run.id,
        )

    def _still_in_progress(self, row: IdempotencyKey) -> Conflict:
        """The 409 for a first request still running after WAIT_SECONDS.

        Past the longest a request usually runs with these timeouts, its worker most likely died, and "retry
        shortly" sent clients back every 30 s for minutes (found by a multi-worker review). So it says so, with
        Retry-After up to `abandoned_after`, when a retry is told the outcome is unknown; a first request that
        does finish meanwhile is replayed to that retry as usual. Only after the wait: a request can outrun the
        estimate while alive (a long WhatsApp send did, before /whatsapp-send had its own; found by a review).
        """
        if utcnow() - row.created_at <= self.longest_request:
            return Conflict(
                "A request with this Idempotency-Key is still in progress; retry shortly.", headers={"Retry-After": "1"}
            )
        known_at = row.created_at + self.abandoned_after
        wait = max(1, math.ceil((known_at - utcnow()).total_seconds()))
        return Conflict(
            f"The first request with this Idempotency-Key started at {row.created_at.isoformat()} and has run "
            f"longer than a request usually can with these timeouts ({self.longest_request.total_seconds():.0f} s), "
            "so the service most likely stopped while it ran. Retry after Retry-After: the stored answer if it "
            f"finished, else, from {known_at.isoformat()}, that its outcome is unknown. GET /runs shows what it did.",
            headers={"Retry-After": str(wait)},
            idempotency_key=self.key,
        )

    async def _settle(self, status: int, body: Any, headers: dict[str, str]) -> None:
        """Store the answer on our claim, or release the key; either only while the row is still our claim in
        progress (compare-and-set), so a late or repeated settle (`_settle_late`) never overwrites another's."""
        if not _stores_outcome(status, body):
            await self._release()
            return
        kept = {name: value for name, value in headers.items() if name.lower() in _STORED_HEADERS}
        async with self.sessions.begin() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.scope == self.scope,
                    IdempotencyKey.key == self.key,
                    IdempotencyKey.created_at == self._claimed_at,
                    IdempotencyKey.state == "in_progress",
                )
                .values(state="done", response_status=status, response_body=body, response_headers=kept)
                .execution_options(synchronize_session=False)
            )

    async def _release(self) -> None:
        """Free our claim for a fresh try, compare-and-set as the store is: only the row we inserted, still in
        progress. Not through `_delete`, which without a creation time deletes whatever row holds the key: a late
        release (`_settle_late`) can run seconds after the key was freed and claimed by another request, and must
        leave that claim alone (a claim of ours it never found matches nothing, as the store's UPDATE does)."""
        async with self.sessions.begin() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.scope == self.scope,
                    IdempotencyKey.key == self.key,
                    IdempotencyKey.created_at == self._claimed_at,
                    IdempotencyKey.state == "in_progress",
                )
            )

    async def _load(self) -> IdempotencyKey | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(IdempotencyKey).where(IdempotencyKey.scope == self.scope, IdempotencyKey.key == self.key)
            )

    async def _delete(self, only_if_created: datetime) -> None:
        """Delete the key's row created at `only_if_created`: an expired one (`_claim`), whatever its state."""
        query = delete(IdempotencyKey).where(
            IdempotencyKey.scope == self.scope,
            IdempotencyKey.key == self.key,
            IdempotencyKey.created_at == only_if_created,
        )
        async with self.sessions.begin() as session:
            await session.execute(query)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=KEY_HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique string (a UUID is best). A retry with the same key and body replays the "
        "first answer instead of acting twice; valid for 24 hours.",
    ),
]


def idempotency_for(run_kind: str | None = None) -> Callable[..., Awaitable[Idempotency]]:
    """The Idempotency-Key dependency of a route whose run is of `run_kind`: its claims are given up for dead
    only past that kind's own cutoff (`Settings.abandoned_after_for`), and said to be most likely dead only past
    the longest such a run can take. None: the cutoff every route shares but those whose kind has its own.

    A retry reaches these checks only on the route of the first request (on another, its fingerprint differs: a
    422), so the route's kind is the first request's. POST /whatsapp-send and POST /send-email need their own:
    ten parts, or dozens of SMTP commands each with its own timeout, can run for longer than the shared cutoff, and
    a retry was told the worker had stopped while the send went on.
    """

    async def get_idempotency(
        request: Request, resources: ResourcesDep, idempotency_key: IdempotencyKeyHeader = None
    ) -> Idempotency:
        # Only the first header was read: a client whose retry layer adds its own key before the caller's sent
        # `Idempotency-Key: a` and `Idempotency-Key: b`, and a retry carrying the same `b` acted again (found by
        # a black-box review). Which one names the request is ambiguous, so two different ones are refused.
        given = set(request.headers.getlist(KEY_HEADER))
        if len(given) > 1:
            raise InvalidInput(
                f"Idempotency-Key is given {len(given)} times with different values; give one key.",
                errors=[{"field": "header.Idempotency-Key", "message": "given more than once with different values"}],
            )
        settings = resources.settings
        if run_kind is None:
            abandoned_after, longest = settings.abandoned_after, settings.longest_request_seconds
        else:
            abandoned_after, longest = settings.abandoned_after_for(run_kind), settings.longest_run_seconds(run_kind)
        return Idempotency(
            resources.sessions,
            key=idempotency_key,
            method=request.method,
            path=request.url.path,
            abandoned_after=abandoned_after,
            longest_request=timedelta(seconds=longest),
            scrubber=settings.answer_scrubber,
            # The lifespan's tracked tasks (main.py), closed with their grace at shutdown.
            background=getattr(request.app.state, "background_tasks", None),
        )

    return get_idempotency


get_idempotency = idempotency_for()
IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
