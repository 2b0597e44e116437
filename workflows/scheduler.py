"""The durable scheduler: the BRIEFING_CRON briefing and planned timer stops, fired exactly once.

APScheduler (AsyncIOScheduler) does the timing in every worker. What makes it
durable and single-firing lives in the database:

- A planned stop is a `scheduled_jobs` row. Each worker loads the pending rows
  at start-up and every `SYNC_SECONDS`, so a stop survives a restart and one
  missed while the service was down fires at start-up (its date is past, and
  the jobs have no misfire limit).
- Before any firing runs, the worker inserts a `job_fires` row keyed by
  (job id, fire time). The primary key lets exactly one worker win; the
  others see the conflict and do nothing. This holds for several processes on
  one database, which APScheduler 3's in-memory job store alone cannot.
- A stop's claim is a lease. If the worker holding it dies hard (SIGKILL,
  power loss) before marking the stop done, the stop stays `pending`; once its
  claim is older than `STOP_CLAIM_LEASE`, the next worker to fire it (every
  worker re-arms pending stops every `SYNC_SECONDS`) takes the claim over in
  one conditional UPDATE and stops the timer. Stopping an already-stopped
  Toggl entry is harmless, so a takeover after a stop that did happen costs
  nothing but a second ledger run (and, fired late, one read of the entry,
  whose stop is set back to the planned time only if it fell while the dead
  worker's Toggl call may have been under way: `CALL_BEGAN`).
- Toggl has no auto-stop, so a stop that fails for a reason that may pass (a
  5xx, a timeout, a rate limit: `ProblemError.retryable`) stays `pending` and
  is tried again later (`STOP_RETRY_DELAYS`, then every `STOP_RETRY_EVERY`)
  until `STOP_RETRY_WINDOW` after the planned time. Each attempt moves `run_at`
  to the next one, so it has a claim key of its own and is armed by start-up
  and the sync like any pending stop; `payload` keeps the attempt count, the
  planned time, and when each failed firing was at work (`FAILED_FIRINGS`).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.cron import crontab_trigger
from core.errors import ProblemError, UpstreamRateLimited
from core.idempotency import TTL as IDEMPOTENCY_TTL
from core.ledger import AbandonedRun, Ledger, RunKind, describe_error
from core.settings import Settings
from core.store import IdempotencyKey, InboundMessage, JobFire, ScheduledJob, utcnow
from skills.toggl import RunningTimer, TimerStopped, started_by
from workflows.briefing import PLAN_STOP, BriefingRequest, WorkflowDeps, local_stop_time, local_time, run_briefing
from workflows.inbound import BackgroundTasks

logger = logging.getLogger("orchestrator.scheduler")

BRIEFING_JOB_ID = "morning-briefing"
#: An interrupted start's timer, if it exists, started this soon after its run (the start is set before the POST).
START_MATCH_WINDOW = timedelta(minutes=1)
#: How long the prune keeps trying to read Toggl for an interrupted start before closing its run regardless.
RECOVERY_WINDOW = timedelta(hours=12)
#: Run kinds that start a Toggl timer, and the input_summary field holding its description.
_STARTS_TIMER = {RunKind.TOGGL_START_TIMER: "task_name", RunKind.COMMAND_START: "task", RunKind.BRIEFING: "task"}
SYNC_JOB_ID = "sync-planned-stops"
STOP_KIND = "timer_stop"
SYNC_SECONDS = 30
PRUNE_JOB_ID = "prune-delivery-records"
# Twilio and Slack redeliver within minutes to an hour; a week of message ids is ample for Slack, whose signature
# also dates the request (5 minutes). Twilio's does not: a captured signed WhatsApp webhook replays as well a
# week later, so its claims stay a year (found by a security review; a row is ~100 bytes a message).
KEEP_INBOUND = timedelta(days=7)
KEEP_WHATSAPP_CLAIMS = timedelta(days=365)
KEEP_FIRES = timedelta(days=30)
# A stop that ended (done, failed, cancelled) is kept this long for GET /schedule (which shows a day) and for
# reading; far past RECOVERY_WINDOW, the longest any recovery looks back for a stop row. Both tables grew for
# ever before (found by a review), as did idempotency keys, which are dead after their 24 hours.
KEEP_ENDED_STOPS = timedelta(days=30)
# GET /schedule lists every pending stop, then the most recently finished of the day while it holds fewer stops
# than this.
LISTED_STOPS = 200
# A briefing more than this late (the process was paused or busy) is skipped, not sent at noon.
BRIEFING_GRACE_SECONDS = 300
# A stop claim older than this, on a stop still pending, belongs to a worker that died: with the default timeouts
# far longer than a live stop can take (220 s, `Settings.longest_timer_stop_seconds`), so a live worker is never
# overtaken. The lease is longer where the timeouts make a stop longer (`JobScheduler.claim_lease`).
STOP_CLAIM_LEASE = timedelta(minutes=10)
# After a retryable failure, the next attempt of a stop comes this long after the failed one...
STOP_RETRY_DELAYS = tuple(timedelta(minutes=m) for m in (1, 2, 5, 10, 20))
# ...then this often, while it is no later than STOP_RETRY_WINDOW after the planned stop.
STOP_RETRY_EVERY = timedelta(minutes=30)
STOP_RETRY_WINDOW = timedelta(hours=12)
#: The stop row's payload key listing, for each firing whose stop failed (or was cut short by a shutdown while its
#: Toggl call was under way, or never ended: `CALL_BEGAN`), when its first attempt began and when it failed (UTC
#: ISO pairs). Such a firing's PATCH may have stopped the entry and lost the answer; a later firing then meets
#: Toggl's 409, and the skill sets the late stop back only if the entry stopped within such a span or during its
#: own call (`TogglSkill.stop_timer`'s `earlier_attempts`). Bookkeeping like `attempts`: left out of the run's
#: input_summary, and GET /schedule lists named fields only.
FAILED_FIRINGS = "failed_firings"
#: How many spans FAILED_FIRINGS keeps at most (`_with_failed_firing`).
FAILED_FIRINGS_KEPT = 64
#: The stop row's payload key saying a firing's Toggl call is under way: when it began (UTC ISO), written just
#: before the call (`JobScheduler._mark_call_began`). Every firing that ends (done, failed, cut short) rewrites the
#: payload without it, so it is left only by a firing that never ended: its worker killed (SIGKILL, OOM, power
#: loss) or its closing write failed, after a PATCH that may have stopped the entry. The firing that takes the
#: stale claim over turns it into a FAILED_FIRINGS span (`_with_abandoned_call`). Bookkeeping like FAILED_FIRINGS.
CALL_BEGAN = "call_began"
#: The payload's bookkeeping keys, left out of a stop run's input_summary (GET /schedule lists named fields only).
_BOOKKEEPING = ("attempts", FAILED_FIRINGS, CALL_BEGAN)


#: How long shutdown waits for a running sync or prune before cancelling it (`JobScheduler.shutdown`).
MAINTENANCE_GRACE_SECONDS = 5.0

#: The width of `job_fires.worker` (VARCHAR(64), migration 0003).
WORKER_ID_LENGTH = 64


def default_worker_id(instance: int) -> str:
    """`host:pid:instance`, cut at the host name to fit `job_fires.worker`: PostgreSQL refuses a longer value, and
    every claim, of every stop and briefing, raised instead of firing (found by a review: an EC2 instance's host
    name, `ip-172-31-20-123.eu-central-1.compute.internal`, with a pid and the scheduler's id made 67 characters).
    The pid and the instance are what tell workers on one host apart, so the host name gives way."""
    suffix = f":{os.getpid()}:{instance:x}"
    return socket.gethostname()[: max(0, WORKER_ID_LENGTH - len(suffix))] + suffix


STOP_JOB_PREFIX = "stop:"


def stop_job_id(entry_id: int | str) -> str:
    return f"{STOP_JOB_PREFIX}{entry_id}"


def briefing_fire_time(trigger: BaseTrigger, now: datetime) -> datetime:
    """The cron occurrence a briefing run belongs to: the latest fire time of `trigger` up to `now`.

    APScheduler 3 does not hand the scheduled time to the job, so each worker derives it from the trigger and
    its own clock; the claim on it keeps the briefing to one run per occurrence. The minute a worker got round
    to it was the key before, and a worker running the 06:30 briefing at 06:31:10 (within the misfire grace)
    claimed "06:31" and ran a second one (found by a code review). A run is never more than
    BRIEFING_GRACE_SECONDS late, so the occurrence is found in that window; `now` floored to the minute only if
    the trigger has none there (a clock stepped back).
    """
    return missed_briefing(trigger, now) or now.replace(second=0, microsecond=0)


def missed_briefing(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """The latest cron time in the last BRIEFING_GRACE_SECONDS, up to `now`, if there is one: at start-up, a
    firing that may have been due while the service was down. Later ones APScheduler fires itself.

    The latest, not the first: with `* * * * *` the first in the window is five minutes old and long done,
    and catching it up ran a stale briefing next to the current one (found by a review).
    """
    latest = None
    # The window is in real time: `now - 5 min` on a TIMEZONE datetime is wall-clock arithmetic, which reached back
    # an hour in the hour the clocks repeat (a briefing caught up an hour late) and, just after they skip one, to a
    # time after `now` (the occurrence was missed, and a late worker claimed the minute it ran in: a second
    # briefing); found by a review.
    now = now.astimezone(UTC)  # and compared in UTC: within one zone Python compares wall times, ignoring DST
    due = trigger.get_next_fire_time(None, now - timedelta(seconds=BRIEFING_GRACE_SECONDS))
    while due is not None and due.astimezone(UTC) <= now:
        latest = due
        due = trigger.get_next_fire_time(due, due + timedelta(seconds=1))
    return latest


def _described(trigger: BaseTrigger, zone: tzinfo) -> str:
    """A job's trigger for GET /schedule: a one-off one's time in TIMEZONE (APScheduler prints it in UTC, so
    the page mixed zones; found by a black-box review), a cron one as APScheduler says it."""
    if isinstance(trigger, DateTrigger):
        return f"date[{trigger.run_date.astimezone(zone).isoformat()}]"
    return str(trigger)


def planned_stop_time(row: ScheduledJob) -> datetime:
    """When the stop was planned for: `run_at` until a retry moves it, then the time kept in the payload."""
    planned = row.payload.get("planned_stop")
    return datetime.fromisoformat(planned) if planned else row.run_at


def failed_firings(payload: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    """The stop's earlier failed firings (`FAILED_FIRINGS`), each (began, failed). One that cannot be read is
    skipped: that only costs the correction of a late stop, where raising would fail the stop itself and leave
    the timer running."""
    spans = []
    for span in payload.get(FAILED_FIRINGS) or ():
        try:
            began, failed = (datetime.fromisoformat(str(moment)) for moment in span)
        except (TypeError, ValueError):
            continue
        if began.tzinfo is not None and failed.tzinfo is not None:
            spans.append((began, failed))
    return spans


def _with_failed_firing(
    payload: dict[str, Any], began: datetime | None, ended: datetime | None
) -> dict[str, Any] | None:
    """`payload` with the span of a firing whose Toggl call began at `began` and ended (failed, or was cut short)
    at `ended` added to its `FAILED_FIRINGS`; None when the firing never called Toggl.

    At most FAILED_FIRINGS_KEPT spans, the earliest: failed firings are bounded by STOP_RETRY_WINDOW (~27), but a
    firing cut short at shutdown is not counted as an attempt, so a worker restarting in a loop would add one per
    restart. The entry is stopped once, and the first firings are the likeliest to have done it."""
    if began is None or ended is None:
        return None
    spans = [*(payload.get(FAILED_FIRINGS) or ()), [began.isoformat(), ended.isoformat()]]
    return {**payload, FAILED_FIRINGS: spans[:FAILED_FIRINGS_KEPT]}


def _with_abandoned_call(payload: dict[str, Any], longest: timedelta) -> dict[str, Any]:
    """`payload` without CALL_BEGAN, the call it tells of (a firing that never ended) added to FAILED_FIRINGS as
    a span from when it began to `longest` later.

    `longest` is `Settings.longest_timer_stop_seconds`, the bound on one stop's call of the skill (two Toggl
    calls), which the claim lease is twice of: the only PATCH that can stop the entry is the first call's, so the
    second call's worth is slack for the CALL_BEGAN write itself. Not the lease's end: that is at least twice as
    long, and a timer stopped by hand after a worker died before its PATCH would be rewritten the longer.
    An unreadable time is dropped, as in `failed_firings`: it costs only the correction of a late stop."""
    if CALL_BEGAN not in payload:
        return payload
    rest = {key: value for key, value in payload.items() if key != CALL_BEGAN}
    try:
        began = datetime.fromisoformat(str(payload[CALL_BEGAN]))
    except (TypeError, ValueError):
        return rest
    if began.tzinfo is None:
        return rest
    return _with_failed_firing(rest, began, began + longest) or rest


def next_stop_attempt(
    *, planned: datetime, attempts: int, failed_at: datetime, retry_after: float | None = None
) -> datetime | None:
    """When to try a stop again after its `attempts`-th attempt failed at `failed_at`; None past the window.

    A Retry-After from Toggl longer than the backoff is waited out.
    """
    delay = STOP_RETRY_DELAYS[attempts - 1] if attempts <= len(STOP_RETRY_DELAYS) else STOP_RETRY_EVERY
    if retry_after is not None:  # capped: past the window it only means "give up", and huge values overflow
        delay = max(delay, timedelta(seconds=min(retry_after, STOP_RETRY_WINDOW.total_seconds() + 1)))
    at = failed_at + delay
    return at if at <= planned + STOP_RETRY_WINDOW else None


def _late_stop_fields(stopped: TimerStopped | None) -> dict[str, Any]:
    """What a run's result says of a stop that landed late: when Toggl first stopped the entry, the stop it
    was set back to, and why setting it back failed, if it did. After Toggl's 409 the entry could not be read
    to tell whether it was stopped late: then only why (`backdate_error`)."""
    if stopped is None:
        return {}
    fields: dict[str, Any] = {}
    if stopped.stopped_late_at is not None:
        fields["stopped_late_at"] = stopped.stopped_late_at.isoformat()
        fields["stop"] = stopped.stop.isoformat() if stopped.stop else None
    if stopped.backdate_error:
        fields["backdate_error"] = stopped.backdate_error
    return fields


def gave_up_error(
    error: str,
    *,
    attempts: int,
    planned: datetime,
    payload: dict[str, Any],
    why: Literal["window", "retry-after", "final"] = "window",
    retry_after: float | None = None,
    zone: tzinfo = UTC,
) -> str:
    """The `error` of a stop that will not be tried again: why, that the timer may still run, and how to stop it.

    `why`: the retry window is used up, Toggl's Retry-After points past it, or the answer is final (a 403).
    `zone`: TIMEZONE, in which GET /schedule shows every time (the planned stop was given in UTC next to its
    own `planned_stop` in TIMEZONE; found by a review).
    """
    body = {"entry_id": payload.get("entry_id")}
    if payload.get("workspace_id") is not None:
        body["workspace_id"] = payload["workspace_id"]
    hours, planned_at = STOP_RETRY_WINDOW.total_seconds() / 3600, planned.astimezone(zone).isoformat()
    window = f"{hours:g} hours after the planned stop at {planned_at}"
    if why == "final":
        reason = "Not tried again: waiting would not change this answer."
    elif why == "retry-after":
        reason = f"Not tried again: Toggl asked to wait {retry_after:g} s, past the {window}."
    else:
        reason = f"Gave up after {attempts} attempt{'s' if attempts != 1 else ''} in the {window}."
    return (
        f"{error} {reason} The Toggl timer may still be running: stop it with POST /stop-timer {json.dumps(body)} "
        "(or the WhatsApp command `stop`)."
    )


class JobScheduler:
    """One per app instance; `start()` in the lifespan, `shutdown()` after it."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker,
        ledger: Ledger,
        tasks: BackgroundTasks,
        deps: Callable[[], WorkflowDeps],
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        # Twice the longest a planned stop can take, and never under STOP_CLAIM_LEASE: a live stop must never be
        # taken for a dead worker's. A stop is up to two Toggl calls (a late one is set back to the planned time;
        # three when Toggl answers 409 and the entry is read first, still under twice two),
        # and was counted as one call of a bound that left out a free connection, connecting and TLS: with
        # HTTP_TIMEOUT_SECONDS=60 a live stop (820 s) outlasted the 600 s lease, and another worker ran it again.
        self.claim_lease = max(STOP_CLAIM_LEASE, timedelta(seconds=2 * settings.longest_timer_stop_seconds))
        self.sessions = sessions
        self.ledger = ledger
        self.tasks = tasks
        self.deps = deps
        self.worker_id = worker_id or default_worker_id(id(self))
        # The sync and the prune while they run (`_maintenance`), for `shutdown` to finish.
        self._maintaining: set[asyncio.Task[Any]] = set()
        self.aps = AsyncIOScheduler(
            timezone=settings.zone,
            # No misfire limit for stops: a stop due while we were down must still happen.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    # --- Lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.briefing_cron:
            trigger = crontab_trigger(self.settings.briefing_cron, timezone=self.settings.zone)  # crontab's weekdays
            self.aps.add_job(
                self._briefing_due,
                trigger,
                id=BRIEFING_JOB_ID,
                name="Morning briefing (BRIEFING_CRON)",
                misfire_grace_time=BRIEFING_GRACE_SECONDS,
            )
            missed = missed_briefing(trigger, datetime.now(self.settings.zone))
            if missed is not None:
                # Due while no worker ran (a deploy across 08:00): APScheduler only looks forward from start-up, so
                # that day's briefing was silently skipped (found by a black-box review). Within the grace it is
                # run now; the claim on its fire time keeps it to once if it had run before the restart.
                logger.info("the briefing due at %s was missed while stopped: running it now", missed.isoformat())
                self.tasks.spawn(self.fire_briefing(missed), kind=RunKind.SCHEDULE_BRIEFING, trigger="schedule")
        self.aps.add_job(
            self._maintenance,
            IntervalTrigger(seconds=SYNC_SECONDS),
            args=[self.sync_stops],
            id=SYNC_JOB_ID,
            name="Load planned stops",
        )
        # Every 10 minutes: also closes runs a killed worker left `running` (at most 10 minutes past their cutoff).
        self.aps.add_job(
            self._maintenance,
            IntervalTrigger(minutes=10),
            args=[self.prune],
            id=PRUNE_JOB_ID,
            name="Prune old delivery records",
        )
        self.aps.start()
        await self.sync_stops()

    async def shutdown(self) -> None:
        if self.aps.running:
            self.aps.shutdown(wait=False)
            # AsyncIOScheduler.shutdown only schedules itself on the loop: let it run.
            await asyncio.sleep(0)
        # APScheduler leaves the jobs it runs running. The sync and the prune work in the database, which is closed
        # right after this: one cut by that close left SQLAlchemy's shielded connection close waiting for ever,
        # and the process never exited (found by a test that hung in its loop's teardown). They are short: given
        # MAINTENANCE_GRACE_SECONDS, then cancelled while the database is still open. Stops and briefings run in
        # the tracked task set, which has its own grace and records what it cuts short.
        if self._maintaining:
            _, late = await asyncio.wait(set(self._maintaining), timeout=MAINTENANCE_GRACE_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _maintenance(self, work: Callable[[], Awaitable[Any]]) -> None:
        """Run the sync or the prune as an APScheduler job, known to `shutdown` while it runs."""
        task = asyncio.current_task()
        if task is not None:
            self._maintaining.add(task)
        try:
            await work()
        finally:
            self._maintaining.discard(task)  # type: ignore[arg-type]

    # --- Planned stops ---------------------------------------------------------------

    async def schedule_stop(
        self,
        *,
        entry_id: int | str,
        workspace_id: int | str | None,
        description: str,
        at: datetime,
        only_if_absent: bool = False,
    ) -> str | None:
        """Persist a planned stop of Toggl entry `entry_id` at `at`, and arm it in this worker.

        `only_if_absent`: plan it only if the entry has no stop row at all (the prune's recoveries, which several
        workers run at once); None when one exists. Otherwise a second plan for the entry replaces the first.
        """
        job_id = stop_job_id(entry_id)
        # The description is shown by GET /schedule: scrubbed like the ledger's copy (found by a security review).
        payload = {
            "entry_id": entry_id,
            "workspace_id": workspace_id,
            "description": self.settings.answer_scrubber.scrub(description),
        }
        try:
            async with self.sessions.begin() as session:
                session.add(
                    ScheduledJob(
                        id=job_id, kind=STOP_KIND, run_at=at, payload=payload, status="pending", created_at=utcnow()
                    )
                )
        except IntegrityError:
            if only_if_absent:
                # Another worker's prune planned it a moment ago, or it has already fired: resetting it to
                # `pending` would stop the entry twice (found by a code review).
                return None
            # The same entry scheduled again (a retried request): the newest plan wins.
            async with self.sessions.begin() as session:
                await session.execute(
                    update(ScheduledJob)
                    .where(ScheduledJob.id == job_id)
                    .values(run_at=at, payload=payload, status="pending", finished_at=None, error=None)
                )
        self._arm_stop(job_id, at)
        logger.info("planned stop of entry %s at %s", entry_id, at.isoformat())
        return job_id

    async def cancel_stops(self, *, entry_id: int | str) -> int:
        """Cancel the pending planned stop of `entry_id` (it was stopped by hand); returns how many."""
        job_id = stop_job_id(entry_id)
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(ScheduledJob)
                .where(ScheduledJob.id == job_id, ScheduledJob.status == "pending")
                .values(status="cancelled", finished_at=utcnow())
            )
        if self.aps.get_job(job_id) is not None:
            contextvars.Context().run(self.aps.remove_job, job_id)  # see _arm_stop
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def sync_stops(self) -> int:
        """Arm every pending stop in the database that this worker has not armed yet, and drop the armed stops
        whose row is no longer pending; returns how many were armed.

        Another worker's cancel, fire or prune left this worker's job armed until its time (it then fired as a
        no-op), and GET /schedule here listed a stop that would not happen (found by a review).
        """
        # The stop jobs armed before the read. Only those are dropped: one armed while the database answered was
        # armed after its row was seen pending (a stop planned again here, a retry's new time), and the read may
        # predate that. A stop that fired has already left APScheduler, so a firing in flight is not touched.
        armed_before = {job.id: job for job in self.aps.get_jobs() if job.id.startswith(STOP_JOB_PREFIX)}
        async with self.sessions() as session:
            rows = (await session.scalars(select(ScheduledJob).where(ScheduledJob.status == "pending"))).all()
        armed = 0
        for row in rows:
            job = self.aps.get_job(row.id)
            if job is None or job.trigger.run_date != row.run_at:  # type: ignore[attr-defined]
                self._arm_stop(row.id, row.run_at)
                armed += 1
        pending = {row.id for row in rows}
        ended = [
            job_id for job_id, job in armed_before.items() if job_id not in pending and self.aps.get_job(job_id) is job
        ]
        for job_id in ended:
            contextvars.Context().run(self.aps.remove_job, job_id)  # see _arm_stop
        if ended:
            logger.info(
                "dropped %d planned stop(s) no longer pending (cancelled, fired or pruned): %s", len(ended), ended
            )
        return armed

    def _arm_stop(self, job_id: str, at: datetime) -> None:
        # APScheduler's timer callbacks, and the job tasks they create, inherit the context they were armed
        # in: armed from a request, every later firing logged that request's id. A fresh context has none.
        contextvars.Context().run(
            self.aps.add_job,
            self._stop_due,
            DateTrigger(run_date=at),
            args=[job_id],
            id=job_id,
            name="Planned timer stop",
            replace_existing=True,
        )

    async def _stop_due(self, job_id: str) -> None:
        # The work runs in the tracked task set, so shutdown waits for it and records it if cut short.
        self.tasks.spawn(self.fire_stop(job_id), kind=RunKind.SCHEDULE_STOP_TIMER, trigger="schedule")

    async def fire_stop(self, job_id: str) -> bool:
        """Try to stop the timer of pending job `job_id` if this worker wins the claim; True when it ran.

        Success (a 409 "already stopped" included) marks the stop `done`. A retryable failure keeps it
        `pending` with `run_at` moved to the next attempt (`next_stop_attempt`) and armed here; any other
        failure, or a retryable one past `STOP_RETRY_WINDOW`, marks it `failed`.
        """
        async with self.sessions() as session:
            row = await session.get(ScheduledJob, job_id)
        if row is None or row.status != "pending":
            return False
        if row.payload.get("attempts") and row.run_at > utcnow():
            # A retry is not due yet: this firing was armed for an earlier attempt (a sync that read the row just
            # before the retry moved `run_at`). Arm the retry's own time again, which that sync replaced.
            self._arm_stop(job_id, row.run_at)
            return False
        if not await self.claim(job_id, row.run_at) and not await self._take_over_stale_claim(job_id, row.run_at):
            return False
        payload = row.payload
        if CALL_BEGAN in payload:
            logger.warning(
                "planned stop %s: a firing's Toggl call that began at %s never ended (its worker died, or its closing "
                "write failed); kept as a failed firing",
                job_id,
                payload[CALL_BEGAN],
            )
            payload = _with_abandoned_call(payload, timedelta(seconds=self.settings.longest_timer_stop_seconds))
        planned = planned_stop_time(row)
        attempt = int(payload.get("attempts", 0)) + 1
        status, error, run_id, retry_at = "failed", None, None, None
        # When this firing's call of the skill began and ended: kept in the payload if it fails (`FAILED_FIRINGS`).
        began: datetime | None = None
        ended: datetime | None = None
        try:
            async with self.ledger.run(
                RunKind.SCHEDULE_STOP_TIMER,
                trigger="schedule",
                input_summary={
                    "job_id": job_id,
                    **{key: value for key, value in payload.items() if key not in _BOOKKEEPING},
                    "planned_stop": planned.isoformat(),
                    "attempt": attempt,
                },
            ) as run:
                run_id = run.id
                async with run.action("toggl", "stop_timer") as action:
                    # `stop_at`: a stop retried after an outage is set back to the planned time, so the
                    # entry records the planned length, not the outage. `earlier_attempts`: a firing whose answers
                    # were all lost may have stopped the entry; this one then meets the 409, and the entry is set
                    # back only if it stopped while one of those firings was at work, never between firings.
                    began = utcnow()
                    await self._mark_call_began(job_id, row.run_at, payload, began)
                    try:
                        stopped = await self.deps().skills.toggl.stop_timer(
                            workspace_id=payload.get("workspace_id"),
                            entry_id=payload["entry_id"],
                            stop_at=planned,
                            earlier_attempts=failed_firings(payload),
                        )
                    finally:
                        ended = utcnow()
                    action.external_id = str(payload["entry_id"])
                run.result = {
                    "entry_id": payload["entry_id"],
                    "already_stopped": stopped.already_stopped if stopped else None,
                    "elapsed_seconds": stopped.elapsed_seconds if stopped else None,
                    **_late_stop_fields(stopped),
                }
            status = "done"
            # Done, yet its entry may keep the late stop, to be corrected by hand: said on the row too, as GET
            # /schedule lists it with its `error` (it read `done`, `error: null`, the reason only in the run).
            error = stopped.backdate_error if stopped is not None else None
        except ProblemError as exc:
            error = describe_error(exc, scrubber=self.ledger.scrubber)
            # A rate limit or quota passes with time even when Toggl does not say when: its 402 (hourly quota)
            # without Retry-After is not retried for an HTTP caller who is waiting, but a stop has hours. One such
            # 402 used to fail the stop for good and leave the timer running (found by a black-box review).
            waits = exc.retryable or isinstance(exc, UpstreamRateLimited)
            failed_at = utcnow()
            if waits:
                retry_at = next_stop_attempt(
                    planned=planned, attempts=attempt, failed_at=failed_at, retry_after=exc.retry_after
                )
            if retry_at is None:
                # Toggl's Retry-After alone put the next attempt past the window (our backoff would have tried).
                too_long = waits and next_stop_attempt(planned=planned, attempts=attempt, failed_at=failed_at)
                error = gave_up_error(
                    error,
                    attempts=attempt,
                    planned=planned,
                    payload=payload,
                    why="retry-after" if too_long else "window" if waits else "final",
                    retry_after=exc.retry_after,
                    zone=self.settings.zone,
                )
            if retry_at is not None:
                logger.warning("planned stop %s failed (attempt %d), next at %s: %s", job_id, attempt, retry_at, error)
            else:
                logger.warning("planned stop %s failed: %s", job_id, error)
        except Exception as exc:
            # Marked failed too (the ledger run says why): left pending, the stale-claim takeover
            # would run it again every STOP_CLAIM_LEASE, indefinitely.
            error = describe_error(exc, scrubber=self.ledger.scrubber)
            logger.exception("planned stop %s failed unexpectedly", job_id)
        except asyncio.CancelledError:
            # Cut short at shutdown: give the claim back so the next start-up fires it (stopping an already-stopped
            # entry is harmless). A Toggl call under way may have stopped the entry: its span is kept like a failed
            # firing's, so the next firing's 409 can tell the late stop was ours and set it back. Cut short while
            # CALL_BEGAN was being written (`ended` not yet set): the span ends now, and the key is not left behind.
            cut_short = _with_failed_firing(payload, began, ended or utcnow())
            await asyncio.shield(self._release(job_id, row.run_at, payload=cut_short))
            raise
        recorded = {**payload, "attempts": attempt, "planned_stop": planned.isoformat()}
        if status == "failed":
            recorded = _with_failed_firing(recorded, began, ended) or recorded
        if retry_at is not None:
            await self._retry_later(job_id, row.run_at, at=retry_at, payload=recorded, run_id=run_id, error=error)
            return True
        finished = update(ScheduledJob).where(ScheduledJob.id == job_id)
        if status == "failed":
            # As in `_retry_later`: a stop planned anew (or cancelled) during this attempt is left alone, so the new
            # plan still fires. A success is recorded whatever happened meanwhile: the timer has stopped.
            finished = finished.where(ScheduledJob.status == "pending", ScheduledJob.run_at == row.run_at)
        async with self.sessions.begin() as session:
            await session.execute(
                finished.values(status=status, finished_at=utcnow(), run_id=run_id, error=error, payload=recorded)
            )
        return True

    async def _mark_call_began(
        self, job_id: str, fired_run_at: datetime, payload: dict[str, Any], began: datetime
    ) -> None:
        """Record on the stop that this firing's Toggl call began at `began` (CALL_BEGAN), if the stop is still
        that pending firing (as in `_retry_later`). Every way the firing ends rewrites the payload without it.

        A failure is logged and the firing goes on: without the mark, a worker killed in the call only loses
        the evidence that would set a late stop back to the planned time; not calling Toggl would leave the
        timer running, which is worse."""
        try:
            async with self.sessions.begin() as session:
                await session.execute(
                    update(ScheduledJob)
                    .where(
                        ScheduledJob.id == job_id,
                        ScheduledJob.status == "pending",
                        ScheduledJob.run_at == fired_run_at,
                    )
                    .values(payload={**payload, CALL_BEGAN: began.isoformat()})
                )
        except Exception:
            logger.warning(
                "planned stop %s: could not record that its Toggl call began; stopping it regardless",
                job_id,
                exc_info=True,
            )

    async def _retry_later(
        self,
        job_id: str,
        fired_run_at: datetime,
        *,
        at: datetime,
        payload: dict[str, Any],
        run_id: str | None,
        error: str,
    ) -> None:
        """Keep the stop pending with `run_at` moved to `at` (a new claim key), and arm it in this worker.

        Only the firing it belongs to is moved: a stop cancelled by hand or planned anew meanwhile is left alone.
        Other workers pick the new time up at their next sync; a restart arms it at start-up.
        """
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(ScheduledJob)
                .where(
                    ScheduledJob.id == job_id,
                    ScheduledJob.status == "pending",
                    ScheduledJob.run_at == fired_run_at,
                )
                .values(run_at=at, payload=payload, run_id=run_id, error=error)
            )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            self._arm_stop(job_id, at)

    # --- The briefing ----------------------------------------------------------------

    async def _briefing_due(self) -> None:
        trigger = self.aps.get_job(BRIEFING_JOB_ID).trigger
        self.tasks.spawn(
            self.fire_briefing(briefing_fire_time(trigger, datetime.now(self.settings.zone))),
            kind=RunKind.SCHEDULE_BRIEFING,
            trigger="schedule",
        )

    def _workflow_deps(self) -> WorkflowDeps:
        """The app's workflow dependencies, with this scheduler as the stop planner.

        The start-up catch-up briefing runs while the app is still storing this scheduler: read from the app,
        `scheduler` was None there, and the briefing's timer silently got no planned stop (found by a review).
        """
        deps = self.deps()
        return deps if deps.scheduler is not None else dataclasses.replace(deps, scheduler=self)

    async def fire_briefing(self, fire_time: datetime) -> str | None:
        """Run the briefing for cron time `fire_time` if this worker wins the claim; the run id, or None."""
        if not await self.claim(BRIEFING_JOB_ID, fire_time):
            logger.info("briefing for %s already claimed by another worker", fire_time.isoformat())
            return None
        # DRY_RUN=true holds for the schedule too: it ran a real briefing (found by a black-box review).
        request = BriefingRequest(dry_run=self.settings.dry_run)
        report = await run_briefing(self._workflow_deps(), request, trigger="schedule")
        logger.info("scheduled briefing %s: %s", report.run_id, report.status)
        return report.run_id

    # --- Claims ----------------------------------------------------------------------

    async def claim(self, job_id: str, fire_time: datetime) -> bool:
        """Insert the (job, fire time) claim; False when another worker already holds it."""
        try:
            async with self.sessions.begin() as session:
                session.add(JobFire(job_id=job_id, fire_time=fire_time, worker=self.worker_id, claimed_at=utcnow()))
        except IntegrityError:
            return False
        return True

    async def _take_over_stale_claim(self, job_id: str, fire_time: datetime) -> bool:
        """Take a stop's claim whose holder has not finished within `claim_lease`; True if we now hold it.

        Called only for a stop that is still `pending`. The UPDATE is a compare-and-set on `claimed_at`:
        of several workers trying at once, the first moves `claimed_at` to now and the others match nothing.
        """
        now = utcnow()
        fires = JobFire.__table__
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(fires)
                .where(
                    fires.c.job_id == job_id,
                    fires.c.fire_time == fire_time,
                    fires.c.claimed_at < now - self.claim_lease,
                )
                .values(worker=self.worker_id, claimed_at=now)
            )
            taken = result.rowcount == 1  # type: ignore[attr-defined]
        if taken:
            logger.warning("planned stop %s: its claim was older than %s; taking it over", job_id, self.claim_lease)
        return taken

    async def prune(self) -> None:
        """Delete replay records old enough that no redelivery or second firing can still arrive, and close
        the ledger runs a dead worker left `running`."""
        now = utcnow()
        async with self.sessions.begin() as session:
            for whatsapp, keep in ((True, KEEP_WHATSAPP_CLAIMS), (False, KEEP_INBOUND)):
                source = InboundMessage.source == "whatsapp" if whatsapp else InboundMessage.source != "whatsapp"
                await session.execute(delete(InboundMessage).where(source, InboundMessage.received_at < now - keep))
            await session.execute(delete(JobFire).where(JobFire.claimed_at < now - KEEP_FIRES))
            await session.execute(
                delete(ScheduledJob).where(
                    ScheduledJob.status != "pending", ScheduledJob.finished_at < now - KEEP_ENDED_STOPS
                )
            )
            await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - IDEMPOTENCY_TTL))
        settings = self.settings
        closed = 0
        # Each kind on its own cutoff: a WhatsApp message's ten parts can run for longer than the shared one, and
        # giving every kind theirs would delay each timer's recovery by as much (`Settings.longest_run_seconds`).
        for run in await self.ledger.abandoned_runs(settings.abandoned_after, by_kind=settings.abandoned_after_by_kind):
            older_than = settings.abandoned_after_for(run.kind)
            # First see to a timer the run may have started, then close it: closed first, a Toggl hiccup at this
            # moment lost the stop for good, as no later prune looked at the run again (found by a review).
            try:
                settled = await self._plan_stop_of_interrupted_start(run)
            except Exception:
                logger.exception("interrupted run %s: its timer could not be checked; trying again later", run.id)
                settled = False
            if settled or utcnow() - run.created_at > older_than + RECOVERY_WINDOW:
                closed += await self.ledger.close_interrupted(run, older_than)
        if closed:
            logger.warning("closed %d ledger run(s) left running by a worker that stopped without finishing", closed)
        try:
            await self._save_unsaved_stops()
        except Exception:
            logger.exception("unsaved planned stops could not be saved; trying again later")
        try:
            await self._plan_stops_of_unknown_starts()
        except Exception:
            logger.exception("starts with an unknown outcome could not be checked; trying again later")

    async def _plan_stop_of_interrupted_start(self, run: AbandonedRun) -> bool:
        """A start cut off by a killed worker may have started its timer and never planned its stop, and Toggl
        has no auto-stop: that timer would run for good (found by a review). If the running timer is that
        run's (same description, started within a minute of the run: the start is fixed before the POST) and
        has no planned stop, plan it now. False when Toggl could not be read for now: the run stays open and
        the next prune tries again (for up to RECOVERY_WINDOW)."""
        field = _STARTS_TIMER.get(run.kind)
        summary = run.input_summary
        minutes, task = summary.get("duration_minutes"), summary.get(field) if field else None
        if not isinstance(minutes, int) or not isinstance(task, str) or summary.get("dry_run"):
            return True
        try:
            timer = await self.deps().skills.toggl.current_timer()
        except ProblemError as exc:
            logger.warning("interrupted run %s: the running timer could not be read (%s)", run.id, exc.detail)
            return not exc.retryable and not isinstance(exc, UpstreamRateLimited)  # a 403 will not pass by waiting
        if timer is None or timer.description != task:
            return True
        if not run.created_at - timedelta(seconds=5) <= timer.start <= run.created_at + START_MATCH_WINDOW:
            return True  # a timer of the same name started by someone else, later: not this run's
        if await self._plan_stop_of_found_timer(timer, minutes):
            logger.warning("planned the stop of entry %s, started by interrupted run %s", timer.entry_id, run.id)
        return True

    async def _plan_stops_of_unknown_starts(self) -> None:
        """A start whose answer was lost, and whose read-back failed too (Toggl down), was answered "outcome
        unknown": the timer may be running, with no planned stop, for good (Toggl has no auto-stop). For such
        starts of the last RECOVERY_WINDOW, read the running timer; if it is exactly the one a start sent (same
        workspace, description and start to the second), plan its stop and record the entry on the action. One
        read per prune, and only when there is such a start."""
        starts = await self.ledger.unsettled_starts(utcnow() - RECOVERY_WINDOW)
        if not starts:
            return
        try:
            timer = await self.deps().skills.toggl.current_timer()
        except ProblemError as exc:
            logger.warning("starts with an unknown outcome: the running timer could not be read (%s)", exc.detail)
            return
        if timer is None:
            return
        for start in starts:
            body = start.request.get("json")
            if not isinstance(body, dict) or not started_by(body, timer.workspace_id, timer.description, timer.start):
                continue
            minutes = start.input_summary.get("duration_minutes")
            planned = isinstance(minutes, int) and await self._plan_stop_of_found_timer(timer, minutes)
            # The stop's day when it is not the start's (a 24-hour timer, one past midnight), as every other
            # wording of a timer's stop says it: "planned for 09:30" read as the start's day.
            note = f"Found running later as entry {timer.entry_id}" + (
                "; its stop is planned for "
                f"{local_stop_time(timer.start + timedelta(minutes=minutes), timer.start, self.settings)}."
                if isinstance(minutes, int)
                else "."
            )
            await self.ledger.settle(start, external_id=str(timer.entry_id), note=note)
            logger.warning(
                "the start of run %s (outcome unknown) had started entry %s%s",
                start.run_id,
                timer.entry_id,
                "; its stop is now planned" if planned else "",
            )
            return  # one timer runs at a time: it is at most one start's

    async def _plan_stop_of_found_timer(self, timer: RunningTimer, minutes: int) -> bool:
        """Plan the stop of a running timer found after its start lost track of it, unless one is planned."""
        return await self._plan_stop_unless_planned(
            entry_id=timer.entry_id,
            workspace_id=timer.workspace_id,
            description=timer.description or "",
            at=timer.start + timedelta(minutes=minutes),
        )

    async def _plan_stop_unless_planned(
        self, *, entry_id: int, workspace_id: int, description: str, at: datetime
    ) -> bool:
        planned = await self.schedule_stop(
            entry_id=entry_id, workspace_id=workspace_id, description=description, at=at, only_if_absent=True
        )
        return planned is not None

    async def _save_unsaved_stops(self) -> None:
        """The planned stops that runs could not save when they started their timers (the database failed then;
        each left a failed `scheduler`/`plan_stop` action holding the stop): save them now. A stop whose time
        has passed fires at once and is set back to its planned time, like any late stop."""
        for action in await self.ledger.unsettled_actions(*PLAN_STOP, since=utcnow() - RECOVERY_WINDOW):
            stop = action.request
            try:
                entry_id, workspace_id = int(stop["entry_id"]), int(stop["workspace_id"])
                at = datetime.fromisoformat(str(stop["at"]))
            except (KeyError, TypeError, ValueError):
                logger.error(
                    "run %s: its unsaved stop cannot be read (%r); stop the timer by hand", action.run_id, stop
                )
                continue
            description = str(stop.get("description") or "")
            await self._plan_stop_unless_planned(
                entry_id=entry_id, workspace_id=workspace_id, description=description, at=at
            )
            note = f"Saved by the prune at {local_time(utcnow(), self.settings)}."
            await self.ledger.settle(action, external_id=stop_job_id(entry_id), note=note)
            logger.warning("saved the planned stop of entry %s (run %s could not)", entry_id, action.run_id)

    async def _release(self, job_id: str, fire_time: datetime, *, payload: dict[str, Any] | None = None) -> None:
        """Give the claim on `fire_time` back; with `payload`, store it on the stop in the same transaction if the
        stop is still that pending firing (one cancelled or planned anew meanwhile is left alone)."""
        async with self.sessions.begin() as session:
            if payload is not None:
                await session.execute(
                    update(ScheduledJob)
                    .where(
                        ScheduledJob.id == job_id, ScheduledJob.status == "pending", ScheduledJob.run_at == fire_time
                    )
                    .values(payload=payload)
                )
            await session.execute(delete(JobFire).where(JobFire.job_id == job_id, JobFire.fire_time == fire_time))

    # --- Listing -----------------------------------------------------------------------

    async def describe(self, *, recent: timedelta = timedelta(days=1)) -> dict[str, Any]:
        """What GET /schedule shows: armed jobs with their next run, every pending stop, then the stops created
        within `recent` that ended, the most recently finished first, up to LISTED_STOPS stops in all, and how many
        of those ended ones were left out.

        Every time is shown in TIMEZONE, as the docs promise (the stops' were UTC while the cron job's were
        local; found by a review): the same instants, with the offset the reader lives in.
        """
        zone = self.settings.zone

        def local(moment: datetime | None) -> datetime | None:
            # Through UTC: astimezone() into the zone a time already has returns it untouched, and APScheduler's
            # fire time in the hour the clocks skip reads 02:30+01:00, a time that never happens that day.
            return moment.astimezone(UTC).astimezone(zone) if moment is not None else None

        jobs = [
            {
                "id": job.id,
                "name": job.name,
                "trigger": _described(job.trigger, zone),
                "next_run_time": local(job.next_run_time),
            }
            for job in self.aps.get_jobs()
            if job.id not in (SYNC_JOB_ID, PRUNE_JOB_ID)
        ]
        since = utcnow() - recent
        ended_today = (ScheduledJob.status != "pending", ScheduledJob.created_at >= since)
        async with self.sessions() as session:
            # Every pending stop, soonest first: they are what the reader looks for, and few (at most one per
            # timer with a planned stop). One cut of all rows by `run_at` left the future ones out after a day of
            # over 200 stops (found by a review).
            rows = list(
                (
                    await session.scalars(
                        select(ScheduledJob).where(ScheduledJob.status == "pending").order_by(ScheduledJob.run_at)
                    )
                ).all()
            )
            room = max(0, LISTED_STOPS - len(rows))
            # Then the day's ended stops, the most recently finished first, in what room is left.
            ended = (
                await session.scalars(
                    select(ScheduledJob)
                    .where(*ended_today)
                    .order_by(func.coalesce(ScheduledJob.finished_at, ScheduledJob.created_at).desc())
                    .limit(room)
                )
            ).all()
            not_listed = 0
            if len(ended) == room:  # full: there may be more, and the reader is told how many
                total = await session.scalar(select(func.count()).select_from(ScheduledJob).where(*ended_today))
                not_listed = int(total or 0) - room
            rows.extend(ended)
        stops = [
            {
                "id": row.id,
                "entry_id": row.payload.get("entry_id"),
                "description": row.payload.get("description"),
                "run_at": local(row.run_at),
                "planned_stop": local(planned_stop_time(row)),
                "attempts": int(row.payload.get("attempts", 0)),
                "status": row.status,
                "run_id": row.run_id,
                "error": row.error,
            }
            for row in rows
        ]
        return {
            "timezone": self.settings.timezone,
            "briefing_cron": self.settings.briefing_cron,
            "jobs": jobs,
            "stops": stops,
            "stops_not_listed": not_listed,
        }


async def open_scheduler(
    *,
    settings: Settings,
    sessions: async_sessionmaker,
    ledger: Ledger,
    tasks: BackgroundTasks,
    deps: Callable[[], WorkflowDeps],
    stack: AsyncExitStack,
) -> JobScheduler:
    scheduler = JobScheduler(settings=settings, sessions=sessions, ledger=ledger, tasks=tasks, deps=deps)
    await scheduler.start()
    stack.push_async_callback(scheduler.shutdown)
    return scheduler
