"""Toggl Track skill: running timers over the v9 API.

Facts this module relies on (Toggl Track API v9):
- HTTP Basic auth with the API token as user and the literal `api_token` as password.
- `duration: -1` creates a *running* entry; Toggl then reports a negative duration (`-(start as epoch seconds)`
  or `-1`, by which docs you read), so a running entry's elapsed time is `now - start`. A positive duration
  would create a finished entry.
- Errors are bare JSON strings (`"Start time year must be between 2006 and 2030"`), not objects.
- Since September 2025 an hourly per-user quota answers 402 when exhausted; older docs describe 429.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from core.errors import (
    OPERATOR_CHECKS,
    OPERATOR_SETS,
    InvalidInput,
    NotConfigured,
    NotFound,
    PerAudience,
    Phrase,
    ProblemError,
    UpstreamError,
    UpstreamRateLimited,
)
from core.ledger import note_request
from core.outcome import ActionOutcome
from core.registry import Integration
from core.resources import Resources
from core.settings import Settings
from core.upstream import (
    bounded_request,
    parse_retry_after,
    server_error,
    transport_error,
    unreadable_create,
    with_retries,
)


def _workspace_advice(settings: Settings) -> list[str]:
    if settings.toggl_api_token is None or settings.toggl_workspace_id is not None:
        return []  # unconfigured: missing_settings says what to set first
    return [
        "TOGGL_WORKSPACE_ID is not set: POST /start-timer, and POST /stop-timer with an entry_id, need a "
        "workspace_id in each request, and the briefing and the chat `start` command cannot start a timer."
    ]


INTEGRATION = Integration(
    name="toggl",
    kind="skill",
    description="Start, stop and read running Toggl Track timers.",
    required=("TOGGL_API_TOKEN",),
    optional=("TOGGL_WORKSPACE_ID", "TOGGL_BASE_URL"),
    operations=("start_timer", "stop_timer", "current_timer"),
    advice=_workspace_advice,
)

UPSTREAM = "toggl"
CREATED_WITH = "ai-productivity-orchestrator"
#: Attempts per request, counting the first. The start POST is retried only when Toggl cannot have acted
#: (429, or 402 with a wait, and connections never made); GET, the stop PATCH and the update PUT also on 5xx
#: and lost answers.
ATTEMPTS = 3
# An HTTP caller is waiting on us: wait out a short Retry-After, pass a long one on as our own 429.
MAX_WAIT_SECONDS = 10.0
_MAX_DETAIL = 300
# The quota header name is not in Toggl's public docs; read it only when Retry-After is absent.
_QUOTA_RESET_HEADER = "X-Toggl-Quota-Resets-In"
#: A stop asked for a time (`stop_at`, a planned stop) that lands later than this is set back to that time:
#: a 25-minute timer whose stop was retried for hours after an outage must not record hours.
LATE_STOP_TOLERANCE = timedelta(minutes=1)
#: When a planned stop meets Toggl's 409 and the entry's stop is weighed against the moment this stop's first
#: attempt began, or an earlier failed call's span (`_ended_by_this_stop`): Toggl records the stop in whole seconds,
#: cut down, and on its own clock, which NTP keeps within a second or so of ours. A stop made by hand within these
#: seconds of our attempts could be taken for ours; it was made after the planned stop all the same.
STOP_CLOCK_SKEW = timedelta(seconds=5)


# Bidirectional overrides and isolates: they make a description display as something else (U+202E).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_text(value: str, what: str = "The timer's description") -> str:
    """Refuse control characters (NUL, ESC, line breaks, ...) in text Toggl shows: a description or a tag is one
    line of visible text, and a NUL cannot even be stored by PostgreSQL (found by a black-box review)."""
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS for ch in value):
        raise InvalidInput(
            f"{what} contains a control character (a line break, tab, NUL, ESC, a direction override, ...); "
            "send one line."
        )
    return value


def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, ending in `Z`: the form Toggl documents for `start`."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class TogglEntry(BaseModel):
    """The fields of a Toggl time entry this service reads; Toggl sends many more."""

    model_config = ConfigDict(extra="ignore")

    id: int
    workspace_id: int
    description: str | None = None
    # Aware only: a time without an offset cannot be placed, and subtracting it from "now" was a 500.
    start: AwareDatetime
    stop: AwareDatetime | None = None
    duration: int
    project_id: int | None = None
    tags: list[str] | None = None

    def elapsed_seconds(self, now: datetime) -> int:
        """A running entry (negative duration) has run since `start`; a finished one for its duration.

        Running entries were documented as `duration = -start_epoch` (so `now + duration`), but Toggl's current
        v9 docs show `-1` for a running entry, which made that sum about 57 years (found by a review). `start`
        is right either way.
        """
        if self.duration < 0:
            return max(0, int((now - self.start).total_seconds()))
        return self.duration


class TimerStarted(ActionOutcome):
    """A running timer was created (or, in a dry run, would be)."""

    entry_id: int | None = Field(None, description="Toggl's time entry id; null in a dry run.")
    workspace_id: int
    description: str
    start: datetime = Field(description="UTC start time.")
    planned_stop: datetime | None = Field(
        None, description="start + duration_minutes; the timer keeps running until something stops it."
    )
    project_id: int | None = None
    tags: list[str] | None = None
    confirmed_after_error: str | None = Field(
        None,
        description="Set when Toggl's answer to the start was lost or unreadable and the entry was confirmed by "
        "reading the running timer back: it says what went wrong.",
    )
    planned_stop_error: str | None = Field(
        None,
        description="Set when the timer started but its planned stop could not be saved yet (the database "
        "failed): the service saves it again within 10 minutes; it says how to stop the timer by hand.",
    )

    def ledger_external_id(self) -> str | None:
        return str(self.entry_id) if self.entry_id is not None else None


class TimerStopped(ActionOutcome):
    """A time entry was stopped, or was found already stopped (Toggl answered 409)."""

    entry_id: int
    workspace_id: int
    description: str | None = None
    start: datetime | None = Field(None, description="Null when Toggl did not return the entry (already stopped).")
    stop: datetime | None = None
    elapsed_seconds: int | None = Field(None, description="Null when Toggl did not return the entry.")
    already_stopped: bool = False
    stopped_late_at: datetime | None = Field(
        None,
        description="When a planned stop ran late: the time Toggl first stopped the entry, before its stop "
        "was set back to the planned time (`stop`).",
    )
    backdate_error: str | None = Field(
        None,
        description="When a late planned stop could not be set back to the planned time, or, after Toggl's 409, "
        "its entry could not be read to tell whether this stop had ended it late: why. The entry is stopped; its "
        "stop may be the late time, to be checked and corrected in Toggl by hand.",
    )

    def ledger_external_id(self) -> str | None:
        return str(self.entry_id)


class RunningTimer(BaseModel):
    """The timer running now."""

    entry_id: int
    workspace_id: int
    description: str | None
    start: datetime
    elapsed_seconds: int
    project_id: int | None = None
    tags: list[str] | None = None


def _toggl_message(response: httpx.Response, scrub: Callable[[str], str] = str) -> str | None:
    """Toggl's own words, when it gave any: a bare JSON string, a JSON object's message, or short plain text.

    HTML error pages (a proxy or load balancer in front of Toggl) are never echoed.
    """
    text = response.text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        content_type = response.headers.get("content-type", "")
        if "html" in content_type or text.lstrip().startswith("<"):
            return None
        return scrub(text)[:_MAX_DETAIL]
    if isinstance(data, str):
        return scrub(data)[:_MAX_DETAIL]
    if isinstance(data, dict):
        for key in ("message", "error", "error_message"):
            if isinstance(data.get(key), str):
                return scrub(data[key])[:_MAX_DETAIL]
    return None


def _retry_after(response: httpx.Response) -> float | None:
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if retry_after is None:
        retry_after = parse_retry_after(response.headers.get(_QUOTA_RESET_HEADER))
    return retry_after


#: How to find out whether a start whose outcome is unknown created an entry (`core.upstream.outcome_unknown`): an
#: API caller reads the running timer with GET /timers/current, a chat user with the `status` command (the
#: `start` and `brief` replies relayed the API call; found by a review).
_MAY_HAVE_STARTED = Phrase(
    (
        "the time entry may have been created; ",
        PerAudience(
            api="check the running timer (GET /timers/current or Toggl)",
            chat='send "status" to see whether the timer runs (or look in Toggl)',
        ),
    )
)


def error_for(response: httpx.Response, *, replay_safe: bool = True, scrub: Callable[[str], str] = str) -> ProblemError:
    """Turn a non-2xx Toggl answer into a domain error; `retryable` says whether trying again may help.

    `replay_safe=False` (the start POST): a 5xx is not retried, since Toggl may have created the entry before
    failing; the error says the outcome is unknown instead. `scrub` removes secrets from Toggl's words before
    they are cut to length (a cut first could leave half a token that no scrubber recognises).
    """
    status = response.status_code
    said = _toggl_message(response, scrub)
    # Toggl's words rarely end a sentence ("Start time year must be between 2006 and 2030"); ours may follow.
    suffix = f" Toggl said: {said}{'' if said.endswith(('.', '!', '?')) else '.'}" if said else ""
    if status in (401, 403):
        # The operator's token: a chat user (a WhatsApp or Slack `start`) reads that the operator must check it.
        return UpstreamError(
            Phrase((f"Toggl refused the credentials ({status}): ", OPERATOR_CHECKS))
            + " TOGGL_API_TOKEN and that it can use this workspace."
            + suffix,
            upstream=UPSTREAM,
            upstream_status=status,
        )
    if status in (402, 429):
        retry_after = _retry_after(response)
        what = "hourly API quota is used up" if status == 402 else "rate limit was reached"
        error = UpstreamRateLimited(
            f"Toggl's {what} ({status}); try again later." + suffix,
            upstream=UPSTREAM,
            upstream_status=status,
            retry_after=retry_after,
        )
        # The quota refills over an hour: blind backoff would only burn attempts. Retry 402 only when told when.
        if status == 402 and retry_after is None:
            error.retryable = False
        return error
    if status == 404:
        # Also what a TOGGL_BASE_URL without its /api/v9 answers, to every call (found by a user review).
        return NotFound(
            Phrase(
                ("Toggl has no such workspace or time entry (404); if every Toggl call answers this, ", OPERATOR_CHECKS)
            )
            + " TOGGL_BASE_URL (the API v9 base, https://api.track.toggl.com/api/v9)."
            + suffix,
            upstream=UPSTREAM,
        )
    if 400 <= status < 500:
        return InvalidInput(f"Toggl rejected the request ({status})." + suffix, upstream=UPSTREAM)
    if status >= 500:
        # Toggl's docs promise nothing about a 5xx: it may come after the entry was written.
        return server_error(
            status,
            f"Toggl answered {status}." + suffix,
            upstream=UPSTREAM,
            replay_safe=replay_safe,
            check=_MAY_HAVE_STARTED,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    return UpstreamError(f"Toggl answered {status}." + suffix, upstream=UPSTREAM, upstream_status=status)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UpstreamError(
            f"Toggl answered {response.status_code} with a body that is not JSON.", upstream=UPSTREAM
        ) from None


def _entry(data: Any) -> TogglEntry:
    try:
        return TogglEntry.model_validate(data)
    except ValidationError:
        raise UpstreamError("Toggl answered with a time entry this service cannot read.", upstream=UPSTREAM) from None


class TogglSkill:
    """Toggl Track API v9 over the shared httpx client."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http

    # --- Operations -----------------------------------------------------------------

    async def start_timer(
        self,
        *,
        description: str,
        workspace_id: int | None = None,
        duration_minutes: int | None = None,
        project_id: int | None = None,
        tags: list[str] | None = None,
        billable: bool | None = None,
        dry_run: bool = False,
    ) -> TimerStarted:
        """Start a running timer. `duration_minutes` only sets `planned_stop`: Toggl has no auto-stop."""
        check_text(description)
        for tag in tags or ():
            check_text(tag, "A tag")
        INTEGRATION.require(self.settings)
        wid = self._workspace(workspace_id)
        start = datetime.now(UTC).replace(microsecond=0)
        body: dict[str, Any] = {
            "created_with": CREATED_WITH,
            "workspace_id": wid,
            "start": rfc3339(start),
            "duration": -1,
            "description": description,
        }
        if project_id is not None:
            body["project_id"] = project_id
        if tags is not None:
            body["tags"] = tags
        if billable is not None:
            body["billable"] = billable
        path = f"/workspaces/{wid}/time_entries"
        request = {"method": "POST", "path": path, "json": body}

        if dry_run:
            return TimerStarted(
                dry_run=True,
                payload=request,
                workspace_id=wid,
                description=description,
                start=start,
                planned_stop=_planned_stop(start, duration_minutes),
                project_id=project_id,
                tags=tags,
            )

        note_request(request)
        # The start may have happened even when it failed: a 5xx or a lost answer after the POST went out
        # (`outcome_unknown`), or a 2xx we could not read. Then the running timer is read back (a review found
        # such timers running on for good, with no planned stop, and a retry would start a second one).
        confirmed = None
        try:
            response = await self._send("POST", path, json=body)
        except UpstreamError as exc:
            if not exc.extras.get("outcome_unknown"):
                raise
            entry, confirmed = await self._confirm_start(body, exc)
        else:
            try:
                entry = _entry(_json(response))
            except UpstreamError as exc:
                # A 2xx: the entry was most likely created. Unconfirmed, the outcome is unknown (found by a review:
                # a plain 502 that invited a second start).
                unknown = unreadable_create(
                    exc.detail, upstream=UPSTREAM, status=response.status_code, check=_MAY_HAVE_STARTED
                )
                entry, confirmed = await self._confirm_start(body, unknown)
        return TimerStarted(
            payload=request,
            confirmed_after_error=confirmed,
            entry_id=entry.id,
            workspace_id=entry.workspace_id,
            description=self._shown(entry.description if entry.description is not None else description),
            start=entry.start,
            planned_stop=_planned_stop(entry.start, duration_minutes),
            project_id=entry.project_id,
            tags=entry.tags if entry.tags is not None else tags,
        )

    async def stop_timer(
        self,
        *,
        workspace_id: int | None = None,
        entry_id: int | None = None,
        stop_at: datetime | None = None,
        earlier_attempts: Sequence[tuple[datetime, datetime]] = (),
        dry_run: bool = False,
    ) -> TimerStopped | None:
        """Stop `entry_id`, or the running timer when no id is given; None when nothing runs.

        Without an id the running timer is read first (a read, also in a dry run). A 409 from Toggl
        means the entry is already stopped: that is the state the caller wanted, so it is success.

        `stop_at` is when the stop was meant to happen (a planned stop). Toggl's stop endpoint always stops
        at "now", so a stop that lands more than LATE_STOP_TOLERANCE later is then set back to `stop_at`
        with an update of the entry: stopping first means the timer is stopped even if the update fails.

        `earlier_attempts`: for a planned stop tried again, each earlier call of it that failed, as (when its
        first attempt began, when it failed). Its PATCH may have stopped the entry and lost the answer, and then
        this call meets Toggl's 409. After such a 409 the entry is set back when its stop falls after this call's
        first attempt began or within one of these spans, either less or plus STOP_CLOCK_SKEW
        (`_ended_by_this_stop`). Spans, not "since the first attempt": between two calls (minutes to half an
        hour apart) no request of ours is in flight, so a stop made then was made by hand and keeps its time; a
        window from the first call on would rewrite it to the planned time. Every failed call counts, whatever its
        error: a 5xx, even a 503, can come after Toggl acted (a gateway's 502 or 504, a proxy's 503 on a reset
        upstream), and a call that was only refused (429) adds no more than its own seconds to the window.
        """
        INTEGRATION.require(self.settings)
        running: RunningTimer | None = None
        if entry_id is None:
            running = await self.current_timer()
            if running is None:
                return None
            entry_id, wid = running.entry_id, running.workspace_id
        else:
            wid = self._workspace(workspace_id)
        path = f"/workspaces/{wid}/time_entries/{entry_id}/stop"
        request = {"method": "PATCH", "path": path}

        if dry_run:
            now = datetime.now(UTC).replace(microsecond=0)
            return TimerStopped(
                dry_run=True,
                payload=request,
                entry_id=entry_id,
                workspace_id=wid,
                description=self._shown(running.description) if running else None,
                start=running.start if running else None,
                stop=now if running else None,
                elapsed_seconds=running.elapsed_seconds if running else None,
            )

        note_request(request)
        # When the first attempt began: a 409 to a retry may be the answer to our own first PATCH, whose answer was
        # lost after Toggl had stopped the entry (a timeout, a reset). Taken before any wait for a free connection,
        # so a stop by hand during that wait (at most HTTP_TIMEOUT_SECONDS) is taken for ours.
        first_sent = datetime.now(UTC)
        response = await self._send("PATCH", path, accept=(409,))
        if response.status_code == 409:
            unread = None
            if stop_at is not None and _may_have_stopped_late(stop_at, datetime.now(UTC)):
                try:
                    set_back = await self._set_back_lost_stop(wid, entry_id, stop_at, first_sent, earlier_attempts)
                except ProblemError as exc:
                    # Left as it is, and said why: the stop is done, and trying it again would meet the 409 again.
                    unread = (
                        "Toggl answered 409 (already stopped) to this late planned stop, and the entry could not "
                        f"be read to tell whether this stop ended it late: {exc.detail} Check its stop in Toggl."
                    )
                else:
                    if set_back is not None:
                        return set_back.model_copy(update={"payload": request})
            # Stopped by someone else between our read and our PATCH. Toggl sends no entry with a 409;
            # when we read the running timer a moment ago, its start and elapsed time are the best we know.
            return TimerStopped(
                payload=request,
                entry_id=entry_id,
                workspace_id=wid,
                description=self._shown(running.description) if running else None,
                start=running.start if running else None,
                elapsed_seconds=running.elapsed_seconds if running else None,
                already_stopped=True,
                backdate_error=unread,
            )
        entry = _entry(_json(response))
        stopped_late_at, backdate_error = None, None
        if stop_at is not None and _stopped_late(entry, stop_at):
            stopped_late_at = entry.stop
            entry, backdate_error = await self._set_back(wid, entry, stop_at)
        return self._stopped(entry, payload=request, stopped_late_at=stopped_late_at, backdate_error=backdate_error)

    async def _set_back_lost_stop(
        self,
        wid: int,
        entry_id: int,
        stop_at: datetime,
        first_sent: datetime,
        earlier: Sequence[tuple[datetime, datetime]],
    ) -> TimerStopped | None:
        """After a planned stop's 409: if this stop ended the entry late, set its stop back to `stop_at`.

        The 409 may answer a retry whose first PATCH stopped the entry and lost its answer (found by a review: the
        late-stop correction was skipped, and the entry kept the late stop), or a later call of the same planned
        stop after an earlier call's PATCH did so (`earlier`). Toggl sends no entry with a 409, so the entry is
        read, and set back only when the evidence says it was this stop (`_ended_by_this_stop`): a timer stopped
        by hand before our first attempt, or between two calls, is never rewritten. None when it is left as it
        is; the read's error when the entry cannot be read.
        """
        entry = await self.time_entry(entry_id)
        if not _ended_by_this_stop(
            entry, wid=wid, entry_id=entry_id, stop_at=stop_at, first_sent=first_sent, earlier=earlier
        ):
            return None
        stopped_late_at = entry.stop
        entry, backdate_error = await self._set_back(wid, entry, stop_at)
        return self._stopped(
            entry, already_stopped=True, stopped_late_at=stopped_late_at, backdate_error=backdate_error
        )

    def _stopped(self, entry: TogglEntry, **fields: Any) -> TimerStopped:
        """The answer for `entry`, stopped, as Toggl last sent it; `fields` are the stop's own (payload, ...)."""
        return TimerStopped(
            entry_id=entry.id,
            workspace_id=entry.workspace_id,
            description=self._shown(entry.description),
            start=entry.start,
            stop=entry.stop,
            elapsed_seconds=entry.elapsed_seconds(datetime.now(UTC)),
            **fields,
        )

    async def _set_back(self, wid: int, entry: TogglEntry, stop_at: datetime) -> tuple[TogglEntry, str | None]:
        """Set a late stop back to `stop_at`: the entry as it then stands, and why not when Toggl refused. The timer
        is stopped either way, which is what mattered; only its recorded length is off, and the answer says so."""
        try:
            return await self._set_stop(wid, entry, stop_at), None
        except ProblemError as exc:
            return entry, exc.detail

    async def _set_stop(self, wid: int, entry: TogglEntry, stop_at: datetime) -> TogglEntry:
        """Set a stopped entry's stop (and, consistently, its duration) to `stop_at`.

        Toggl's update takes the fields to change; when both are sent, start + duration must equal stop.
        Repeating it sets the same values again, so it is safe to retry.
        """
        stop_at = stop_at.astimezone(UTC).replace(microsecond=0)
        body = {"stop": rfc3339(stop_at), "duration": int((stop_at - entry.start).total_seconds())}
        response = await self._send("PUT", f"/workspaces/{wid}/time_entries/{entry.id}", json=body)
        return _entry(_json(response))

    async def _confirm_start(self, body: dict[str, Any], error: UpstreamError) -> tuple[TogglEntry, str]:
        """The entry `body` created, read back from the running timer, and a note saying why; else `error`.

        Only an exact match counts (same workspace, description and start to the second): anything less
        leaves the caller with the "outcome unknown" error and where to check.
        """
        entry = await self._running_entry_like(body)
        if entry is None:
            raise error
        note = f"Toggl's answer to the start was lost or unreadable ({error.detail[:200]}); the running timer was "
        return entry, note + "read back and is this entry."

    async def _running_entry_like(self, body: dict[str, Any]) -> TogglEntry | None:
        """The running entry, if it is the one `body` would have created (same workspace, description and start
        to the second); None when it is not, nothing runs, or Toggl cannot be read either."""
        # One plain read, not through _send: no retries or backoff on top of the failed start, and not counted
        # as another attempt of the start's ledger action.
        token = self.settings.toggl_api_token
        assert token is not None  # INTEGRATION.require ran
        url = self.settings.toggl_base_url.rstrip("/") + "/me/time_entries/current"
        try:
            response = await bounded_request(
                self.http,
                "GET",
                url,
                deadline=self.settings.http_timeout_seconds,
                auth=httpx.BasicAuth(token.get_secret_value(), "api_token"),
            )
            data = response.json() if response.is_success else None
            entry = TogglEntry.model_validate(data) if data is not None else None
        except (httpx.HTTPError, ValueError):  # ValidationError is a ValueError
            return None
        if entry is None:
            return None
        return entry if started_by(body, entry.workspace_id, entry.description, entry.start) else None

    async def current_timer(self) -> RunningTimer | None:
        """The running timer, or None: Toggl answers 200 with the body `null` when nothing runs."""
        INTEGRATION.require(self.settings)
        response = await self._send("GET", "/me/time_entries/current")
        data = _json(response)
        if data is None:
            return None
        entry = _entry(data)
        return RunningTimer(
            entry_id=entry.id,
            workspace_id=entry.workspace_id,
            description=self._shown(entry.description),
            start=entry.start,
            elapsed_seconds=entry.elapsed_seconds(datetime.now(UTC)),
            project_id=entry.project_id,
            tags=[self._shown(tag) for tag in entry.tags] if entry.tags is not None else None,
        )

    async def time_entry(self, entry_id: int) -> TogglEntry:
        """One time entry by id, running or stopped: `GET /me/time_entries/{id}`, a `/me` call (its own hourly
        quota). A read, so retried like `current_timer`; a 404 when no such entry is this user's."""
        INTEGRATION.require(self.settings)
        response = await self._send("GET", f"/me/time_entries/{entry_id}")
        return _entry(_json(response))

    def _shown(self, text: str | None) -> str | None:
        """Text Toggl sends back, as this service shows it (answers, replies, the briefing's Slack post): configured
        secrets scrubbed. An entry's description is the caller's text or whatever Toggl returns; either may carry
        a key, which the ledger already hid but the answer and the stop's row did not (found by a security review).
        """
        return None if text is None else self.settings.answer_scrubber.scrub(text)

    # --- HTTP -----------------------------------------------------------------------

    def _workspace(self, workspace_id: int | None) -> int:
        wid = workspace_id if workspace_id is not None else self.settings.toggl_workspace_id
        if wid is None:
            # Our configuration's gap, not the caller's bad input: a 503 naming the setting, as for a missing token
            # (it was a 422 while /health called Toggl configured; found by a black-box review).
            # A chat user can pass no workspace_id: only the operator's setting helps them, and the workspace and
            # the restart are the operator's, as `core.errors.set_and_restart` words them.
            raise NotConfigured(
                "toggl",
                ["TOGGL_WORKSPACE_ID"],
                detail=Phrase(("No Toggl workspace: ", OPERATOR_SETS, " TOGGL_WORKSPACE_ID (the number in "))
                + PerAudience(api="your", chat="the")
                + " Toggl workspace's URL) and restart"
                + PerAudience(api=", or pass workspace_id to POST /start-timer and /stop-timer.", chat=" the service."),
            )
        return wid

    async def _send(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, accept: tuple[int, ...] = ()
    ) -> httpx.Response:
        """One request with bounded retries; non-2xx answers (other than `accept`) become domain errors.

        Refused connections, connect timeouts and 429 answers are retried for every method. A read timeout,
        a dropped answer or a 5xx answer is retried only for GET, PATCH and PUT: Toggl may have created the entry
        before failing, and a replayed POST could start a second one, so that failure is reported with
        "outcome unknown" instead.
        """
        token = self.settings.toggl_api_token
        assert token is not None  # INTEGRATION.require ran
        url = self.settings.toggl_base_url.rstrip("/") + path
        # GET reads; the stop PATCH answers 409 when repeated; the PUT sets the same stop again.
        # Only the create POST must not be replayed.
        replay_safe = method != "POST"

        async def attempt() -> httpx.Response:
            try:
                response = await bounded_request(
                    self.http,
                    method,
                    url,
                    deadline=self.settings.http_timeout_seconds,
                    json=json,
                    auth=httpx.BasicAuth(token.get_secret_value(), "api_token"),
                )
            except httpx.TransportError as exc:
                # A POST that may have reached Toggl (read timeout, dropped answer) is not replayed: it could
                # create a second entry. GET and the stop PATCH (409 when repeated) are safe to repeat.
                raise transport_error(
                    exc, upstream=UPSTREAM, replay_safe=replay_safe, check=_MAY_HAVE_STARTED
                ) from None
            except httpx.DecodingError as exc:
                detail = f"Toggl answered with a body that could not be read ({exc})."
                if not replay_safe:  # the create may have happened: never replayed, and said so
                    raise unreadable_create(detail, upstream=UPSTREAM, status=None, check=_MAY_HAVE_STARTED) from None
                raise UpstreamError(detail, upstream=UPSTREAM) from None
            if response.is_success or response.status_code in accept:
                return response
            raise error_for(response, replay_safe=replay_safe, scrub=self.settings.secret_scrubber.scrub)

        return await with_retries(attempt, attempts=ATTEMPTS, max_wait_seconds=MAX_WAIT_SECONDS)


def _stopped_late(entry: TogglEntry, stop_at: datetime) -> bool:
    """Whether Toggl stopped `entry` well after `stop_at`, and `stop_at` is still after its start.

    An entry whose start was moved past the planned stop (edited by hand in Toggl) is left as it is.
    """
    if entry.stop is None:
        return False
    return entry.stop - stop_at > LATE_STOP_TOLERANCE and stop_at > entry.start


def _may_have_stopped_late(stop_at: datetime, answered_at: datetime) -> bool:
    """Whether a 409 answered at `answered_at` can follow a stop of ours that landed late: the entry stopped by
    then, by Toggl's clock at most STOP_CLOCK_SKEW later. A planned stop that fires on time and finds the timer
    stopped by hand (its cancel failed) spends no read of the `/me` quota on it."""
    return answered_at + STOP_CLOCK_SKEW - stop_at > LATE_STOP_TOLERANCE


def _ended_by_this_stop(
    entry: TogglEntry,
    *,
    wid: int,
    entry_id: int,
    stop_at: datetime,
    first_sent: datetime,
    earlier: Sequence[tuple[datetime, datetime]] = (),
) -> bool:
    """Whether `entry`, read after a 409, was ended late by the stop whose first attempt began at `first_sent`,
    or by one of its `earlier` calls, each (when its first attempt began, when it failed).

    It must be the entry stopped (same id and workspace), stopped, late (`_stopped_late`, its start still before
    `stop_at`), and stopped while a PATCH of ours may have been in flight: no earlier than `first_sent`, or within
    an earlier call's span, each widened by STOP_CLOCK_SKEW. A stop before our first attempt, or between two
    calls, is someone else's, made by hand, and keeps its time.
    """
    if (entry.id, entry.workspace_id) != (entry_id, wid) or entry.stop is None or not _stopped_late(entry, stop_at):
        return False
    stop = entry.stop
    if stop >= first_sent - STOP_CLOCK_SKEW:
        return True
    # An earlier call's PATCH can only have stopped the entry while it was in flight: after that call began and
    # before it failed. The skew at the end covers Toggl's clock running ahead of ours, and a request Toggl acted on
    # a moment after we had given up on its answer.
    return any(began - STOP_CLOCK_SKEW <= stop <= failed + STOP_CLOCK_SKEW for began, failed in earlier)


def started_by(body: dict[str, Any], workspace_id: int, description: str | None, start: datetime) -> bool:
    """Whether an entry is the one the start request `body` created: the same workspace, description and
    start to the second (the start is fixed before the POST). Anything less is someone else's timer."""
    try:
        sent_start = datetime.fromisoformat(str(body["start"]).replace("Z", "+00:00"))
        return (workspace_id, description, start) == (body["workspace_id"], body["description"], sent_start)
    except (KeyError, ValueError):
        return False


def _planned_stop(start: datetime, duration_minutes: int | None) -> datetime | None:
    return start + timedelta(minutes=duration_minutes) if duration_minutes is not None else None


def open_skill(resources: Resources) -> TogglSkill:
    return TogglSkill(resources.settings, resources.http)
