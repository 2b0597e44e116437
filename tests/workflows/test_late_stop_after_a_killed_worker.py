"""A late planned stop whose PATCH reached Toggl in a firing whose worker was then killed is set back by the worker
that takes the stale claim over.

The gap: a firing that fails, or is cut short at shutdown, keeps its span (`failed_firings`), but one whose worker
is killed (SIGKILL, OOM, power loss) in its Toggl call, or whose closing write fails, kept nothing. Its PATCH may
have stopped the entry late; the claim's lease ran out, another worker took the claim over, met Toggl's 409, found
no span the late stop fell in, and left it, silently.

Now each firing writes `call_began` to the stop row's payload before calling Toggl, and every firing that ends
rewrites the payload without it. The firing that finds it left over takes it for a failed firing whose span runs
from `call_began` to `Settings.longest_timer_stop_seconds` later (the bound on one stop's call), passes it to the
skill with the others, and keeps it in `failed_firings`.

The worker is "killed" here by leaving its Toggl call hung: the stop row and the claim are then as a dead worker
leaves them (written by the real code), and the other worker takes the claim over once the lease has run out. The
hung task is cut short only when its app shuts down, after every assertion's data was read.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import time_machine
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from tests.workflows.test_late_stop_across_firings import spans
from tests.workflows.test_late_stop_after_lost_answer import ENTRY_PATH, moment, serve_entry_reads
from tests.workflows.test_scheduler import stop_row
from tests.workflows.world import (
    TOGGL_BASE,
    World,
    finished_runs,
    iso,
    post_whatsapp,
    wait_for,
    whatsapp_form,
    world,
)

#: The payload keys (`workflows.scheduler.CALL_BEGAN`, `FAILED_FIRINGS`), spelled out: the scenarios then run, and
#: fail on what Toggl received, against a scheduler without them.
CALL_BEGAN = "call_began"
FAILED_FIRINGS = "failed_firings"
#: Past the claim lease's floor (10 minutes, `STOP_CLAIM_LEASE`), which the default timeouts leave in force.
PAST_THE_LEASE = timedelta(minutes=11)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.upstream.BASE_DELAY_SECONDS", 0)


class HungStop:
    """The fake Toggl's stop PATCH, the first one hung for good: after the fake acted on it (`lands`, the entry
    stopped) or before (it never reached Toggl). The worker making it is then as good as dead. Later PATCHes are
    answered as the fake does."""

    def __init__(self, w: World, *, lands: bool) -> None:
        self.held: list[str] = []
        healthy = w.toggl._stop

        async def answer(request: httpx.Request) -> httpx.Response:
            if self.held:
                return healthy(request)
            if lands:
                healthy(request)
            self.held.append(request.url.path.split("/")[-2])
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        w.toggl.mock.patch(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+/stop$").mock(side_effect=answer)


async def kill_in_the_call_then_take_over(make_client, w: World, *, lands: bool, before_firing=None, meanwhile=None):
    """Worker one fires the 5-minute timer's stop five minutes late and dies in its Toggl call; past the lease,
    worker two fires it. `before_firing(planned)` runs before worker one fires, `meanwhile(planned, call_began)`
    before worker two does. Returns the planned time,
    the row as worker one left it, the finished row, worker two's run, the stop as GET /schedule lists it, and the
    bound of one stop (`longest_timer_stop_seconds`)."""
    hung = HungStop(w, lands=lands)
    settings = w.settings()
    clock = None
    try:
        async with make_client(**settings) as two:
            async with make_client(**settings, shutdown_grace_seconds=0) as one:
                await post_whatsapp(one, whatsapp_form("start report for 5 min"))
                planned = (await stop_row(one)).run_at.astimezone(UTC)
                if before_firing is not None:
                    before_firing(planned)
                clock = time_machine.travel(planned + timedelta(minutes=5), tick=True)
                coordinates = clock.start()
                await one.app.state.scheduler._stop_due("stop:9001")
                await wait_for(lambda: hung.held == ["9001"])
                left = await stop_row(two)
                if meanwhile is not None:
                    meanwhile(planned, left.payload[CALL_BEGAN])
                coordinates.shift(PAST_THE_LEASE)
                await two.app.state.scheduler.fire_stop("stop:9001")
                done = await stop_row(two, until=lambda row: row.status != "pending")
                [run] = await finished_runs(two, "schedule.stop_timer")
                [listed] = (await two.get("/schedule")).json()["stops"]
                longest = timedelta(seconds=two.app.state.settings.longest_timer_stop_seconds)
    finally:
        if clock is not None:
            clock.stop()
    return planned, left, done, run, listed, longest


async def test_a_late_stop_landed_by_a_killed_worker_is_set_back_by_the_worker_that_takes_over(make_client):
    async with world() as w:
        reads = serve_entry_reads(w.toggl)
        planned, left, done, run, listed, longest = await kill_in_the_call_then_take_over(make_client, w, lands=True)
    # The dead worker's PATCH stopped the entry five minutes late; the second worker's met the 409 and read it.
    assert w.toggl.stops == ["9001", "9001"]
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    # The exact update the fake Toggl received: the stop back to the planned time, with the matching duration.
    assert w.toggl.updates == [("9001", {"stop": iso(planned), "duration": 5 * 60})]
    assert moment(w.toggl.stopped["9001"]["stop"]) == planned
    # As the killed worker left it: still pending, its call under way, no span kept.
    assert left.status == "pending" and FAILED_FIRINGS not in left.payload and "attempts" not in left.payload
    began = datetime.fromisoformat(left.payload[CALL_BEGAN])
    assert timedelta(minutes=5) <= began - planned < timedelta(minutes=5, seconds=5)
    assert (done.status, done.error, done.payload["attempts"]) == ("done", None, 1)
    # The dead call kept as a failed firing, up to the bound of one stop (220 s with the default timeouts).
    assert CALL_BEGAN not in done.payload
    assert longest == timedelta(seconds=220)
    assert spans(done.payload) == [(began, began + longest)]
    assert run["status"] == "ok" and run["result"]["already_stopped"] is True
    assert datetime.fromisoformat(run["result"]["stop"]) == planned
    assert not {CALL_BEGAN, FAILED_FIRINGS} & run["input_summary"].keys()
    assert not {CALL_BEGAN, FAILED_FIRINGS} & listed.keys() and listed["status"] == "done"


def stop_by_hand(w: World, at: datetime) -> None:
    """The user stops the running timer in Toggl at `at`."""
    entry, w.toggl.running = w.toggl.running, None
    assert entry is not None
    duration = int((at - moment(entry["start"])).total_seconds())
    w.toggl.stopped["9001"] = {**entry, "stop": iso(at), "duration": duration}


@pytest.mark.parametrize(
    "when",
    ["before", "after"],
    ids=[
        "by hand before the dead call began (its PATCH met the 409)",
        "by hand after the dead call's bound (its PATCH never reached Toggl)",
    ],
)
async def test_a_timer_stopped_by_hand_outside_the_dead_call_is_never_rewritten(make_client, when):
    """The dead call's span is kept, and only a stop within it is taken for ours: a stop made two minutes after the
    plan (while the service was down), or a minute after the dead call could have ended, keeps its time."""
    async with world() as w:
        reads = serve_entry_reads(w.toggl)
        by_hand: list[datetime] = []

        def two_minutes_after_the_plan(planned: datetime) -> None:
            by_hand.append(planned + timedelta(minutes=2))
            stop_by_hand(w, by_hand[0])

        def a_minute_after_the_bound(planned: datetime, call_began: str) -> None:
            # 220 s: the bound of one stop with the default timeouts (asserted below).
            by_hand.append(datetime.fromisoformat(call_began).replace(microsecond=0) + timedelta(seconds=220 + 60))
            stop_by_hand(w, by_hand[0])

        _, left, done, run, _, longest = await kill_in_the_call_then_take_over(
            make_client,
            w,
            lands=when == "before",
            before_firing=two_minutes_after_the_plan if when == "before" else None,
            meanwhile=a_minute_after_the_bound if when == "after" else None,
        )
    [stopped_at] = by_hand
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    assert w.toggl.updates == []  # no update request reached the fake
    assert w.toggl.stopped["9001"]["stop"] == iso(stopped_at)
    assert (done.status, done.error) == ("done", None)
    began = datetime.fromisoformat(left.payload[CALL_BEGAN])
    assert longest == timedelta(seconds=220)
    assert spans(done.payload) == [(began, began + longest)]  # kept, and the stop fell outside it
    assert run["result"]["already_stopped"] is True
    assert not {"stopped_late_at", "stop", "backdate_error"} & run["result"].keys()


async def test_a_failed_write_of_call_began_does_not_keep_the_timer_from_being_stopped(make_client):
    """Without the mark a worker killed in the call only loses the evidence for setting a late stop back; not
    calling Toggl would leave the timer running."""
    refused: list[str] = []

    def refuse_the_mark(_connection, _cursor, statement: str, parameters, *_) -> None:
        if statement.lstrip().upper().startswith("UPDATE SCHEDULED_JOBS") and CALL_BEGAN in str(parameters):
            refused.append(statement)
            raise OperationalError(statement, parameters, ConnectionRefusedError(111, "Connection refused"))

    event.listen(Engine, "before_cursor_execute", refuse_the_mark)
    try:
        async with world() as w:
            async with make_client(**w.settings()) as client:
                await post_whatsapp(client, whatsapp_form("start report for 5 min"))
                planned = (await stop_row(client)).run_at.astimezone(UTC)
                with time_machine.travel(planned + timedelta(minutes=5), tick=True):
                    fired = await client.app.state.scheduler.fire_stop("stop:9001")
                    done = await stop_row(client)
    finally:
        event.remove(Engine, "before_cursor_execute", refuse_the_mark)
    assert len(refused) == 1  # the mark was tried, and failed
    assert w.toggl.stops == ["9001"] and w.toggl.running is None  # the PATCH reached the fake
    assert w.toggl.updates == [("9001", {"stop": iso(planned), "duration": 5 * 60})]  # its late stop set back
    assert (fired, done.status, done.error) == (True, "done", None)
    assert CALL_BEGAN not in done.payload


def test_a_left_over_call_is_kept_as_a_span_within_the_bound_on_kept_spans():
    from workflows.scheduler import FAILED_FIRINGS_KEPT, _with_abandoned_call

    began = datetime(2026, 11, 25, 9, tzinfo=UTC)
    longest = timedelta(seconds=220)
    kept = {"entry_id": 9001, CALL_BEGAN: began.isoformat()}
    assert _with_abandoned_call(kept, longest) == {
        "entry_id": 9001,
        FAILED_FIRINGS: [[began.isoformat(), (began + longest).isoformat()]],
    }
    full = {FAILED_FIRINGS: [[began.isoformat(), began.isoformat()]] * FAILED_FIRINGS_KEPT, CALL_BEGAN: "x"}
    assert _with_abandoned_call({**full, CALL_BEGAN: began.isoformat()}, longest) == {
        FAILED_FIRINGS: full[FAILED_FIRINGS]
    }
    # An unreadable or naive time is dropped, never raised on: it costs only a correction.
    for unreadable in ("not a time", "2026-11-25T09:00:00", None):
        assert _with_abandoned_call({"entry_id": 9001, CALL_BEGAN: unreadable}, longest) == {"entry_id": 9001}
    assert _with_abandoned_call({"entry_id": 9001}, longest) == {"entry_id": 9001}
