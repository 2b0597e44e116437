"""A late planned stop whose PATCH reached Toggl in a firing that failed is set back at a later firing's 409.

The gap (documented when the 409 path learnt to read the entry): a firing whose every attempt lost its answer
(timeouts after Toggl had stopped the entry) kept the stop `pending`, and the next firing met Toggl's 409. The
evidence that it was our stop was "stopped no earlier than this call's first attempt", and that call was the later
firing's: the entry, stopped by the earlier one, was taken for stopped by hand and kept its late stop, silently.

Now each failed firing's span (when its first attempt began, when it failed) is kept in the stop row's payload
(`failed_firings`) and passed to the skill (`earlier_attempts`): the entry is set back when it stopped within one
of those spans (less or plus STOP_CLOCK_SKEW) or during the current call. Spans, not "since the first firing": no
PATCH of ours is in flight between firings, so a timer stopped by hand then keeps its stop, whatever the failed
firing met (a 503, or a timeout that never reached Toggl).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import time_machine

from tests.workflows.test_late_stop_after_lost_answer import (
    ENTRY_PATH,
    moment,
    serve_entry_reads,
    toggl_entry,
)
from tests.workflows.test_scheduler import attempts_are, stop_row
from tests.workflows.world import (
    TOGGL_BASE,
    WORKSPACE,
    World,
    finished_runs,
    iso,
    post_whatsapp,
    wait_for,
    whatsapp_form,
    world,
)

#: The stop row's payload key (`workflows.scheduler.FAILED_FIRINGS`), spelled out: the scenarios below then run,
#: and fail on what Toggl received, against a scheduler without it.
FAILED_FIRINGS = "failed_firings"


def spans(payload: dict) -> list[tuple[datetime, datetime]]:
    """The failed firings the stop row keeps, as (began, failed)."""
    return [
        (datetime.fromisoformat(began), datetime.fromisoformat(failed)) for began, failed in payload[FAILED_FIRINGS]
    ]


LOST = "lost"  # the fake stops the entry (or answers 409), then the answer times out
UNSENT = "unsent"  # times out without reaching the fake


class StopPatch:
    """Takes over the fake Toggl's stop PATCH for every attempt. `mode`: None answers as the fake does, LOST and
    UNSENT time out as above, a status answers it without touching the fake."""

    def __init__(self, w: World, mode: str | int | None) -> None:
        self.mode = mode
        answer = w.toggl._stop

        def stop(request: httpx.Request) -> httpx.Response:
            if self.mode is None:
                return answer(request)
            if self.mode == LOST:
                answer(request)
                raise httpx.ReadTimeout("the answer to the stop was lost", request=request)
            if self.mode == UNSENT:
                raise httpx.ReadTimeout("no answer; the request never reached Toggl", request=request)
            return httpx.Response(int(self.mode), json="Toggl is having a bad day")

        w.toggl.mock.patch(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+/stop$").mock(side_effect=stop)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.upstream.BASE_DELAY_SECONDS", 0)  # the skill's in-call backoff: not under test here


async def fire_until_done(client, patch: StopPatch, modes: list[str | int | None], *, between=None):
    """Fire the 5-minute timer's planned stop five minutes late, then again at each retry, the PATCH meeting
    `modes[n]` at firing n; `between(row)` runs after the first firing failed. The finished row, the runs, and
    the stop as GET /schedule lists it."""
    scheduler = client.app.state.scheduler
    planned = (await stop_row(client)).run_at
    patch.mode = modes[0]
    with time_machine.travel(planned + timedelta(minutes=5), tick=True) as clock:
        scheduler.aps.wakeup()
        for fired, mode in enumerate(modes[1:], start=1):
            row = await stop_row(client, until=attempts_are(fired))
            assert row.status == "pending"
            if fired == 1 and between is not None:
                between(row)
            patch.mode = mode
            clock.move_to(row.run_at + timedelta(seconds=1))
            scheduler.aps.wakeup()
        done = await stop_row(client, until=lambda row: row.status != "pending")
        runs = await finished_runs(client, "schedule.stop_timer", count=len(modes))
        [listed] = (await client.get("/schedule")).json()["stops"]
    return done, runs, listed


@pytest.mark.parametrize(
    "modes",
    [[LOST, None], [LOST, 503, None]],
    ids=["409 at the second firing", "409 at the third, after a firing Toggl refused"],
)
async def test_a_stop_landed_by_a_firing_whose_answers_were_all_lost_is_set_back_at_a_later_firings_409(
    make_client, modes
):
    async with world() as w:
        reads = serve_entry_reads(w.toggl)
        patch = StopPatch(w, None)
        async with make_client(**w.settings()) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
            planned = (await stop_row(client)).run_at.astimezone(UTC)
            done, runs, listed = await fire_until_done(client, patch, modes)
    # The first firing's first PATCH stopped the entry, five minutes late; its answer, and its retries', were lost.
    assert w.toggl.stops == ["9001"] * 4  # three attempts of the first firing, one of the last (the 409)
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    # The exact update the fake Toggl received: the stop back to the planned time, with the matching duration.
    assert w.toggl.updates == [("9001", {"stop": iso(planned), "duration": 5 * 60})]
    assert moment(w.toggl.stopped["9001"]["stop"]) == planned
    assert (done.status, done.error, done.payload["attempts"]) == ("done", None, len(modes))
    kept = spans(done.payload)
    assert len(kept) == len(modes) - 1
    by_attempt = sorted(runs, key=lambda run: run["input_summary"]["attempt"])
    assert [run["status"] for run in by_attempt] == ["failed"] * (len(modes) - 1) + ["ok"]
    result = by_attempt[-1]["result"]
    assert result["already_stopped"] is True and "backdate_error" not in result
    assert datetime.fromisoformat(result["stop"]) == planned
    late = datetime.fromisoformat(result["stopped_late_at"])
    began, failed = kept[0]
    assert began - timedelta(seconds=1) <= late <= failed  # Toggl keeps whole seconds, cut down
    assert timedelta(minutes=4) < late - planned < timedelta(minutes=6)
    # Bookkeeping, as `attempts`: neither in a run's input nor in GET /schedule's listing.
    assert all(FAILED_FIRINGS not in run["input_summary"] for run in runs)
    assert FAILED_FIRINGS not in listed and (listed["status"], listed["attempts"]) == ("done", len(modes))


async def test_a_timer_stopped_by_hand_before_the_first_firing_is_never_rewritten(make_client):
    """Stopped by hand two minutes after the plan, while the service was down; the first firing's PATCH reached
    Toggl (its 409) and every answer was lost; the second firing meets the 409 and leaves the stop alone."""
    async with world() as w:
        reads = serve_entry_reads(w.toggl)
        patch = StopPatch(w, None)
        async with make_client(**w.settings()) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
            planned = (await stop_row(client)).run_at.astimezone(UTC)
            entry, w.toggl.running = w.toggl.running, None
            assert entry is not None
            by_hand = planned + timedelta(minutes=2)
            w.toggl.stopped["9001"] = {**entry, "stop": iso(by_hand), "duration": 7 * 60}
            done, runs, _ = await fire_until_done(client, patch, [LOST, None])
    assert w.toggl.stops == ["9001"] * 4
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    assert w.toggl.updates == []  # no update request reached the fake
    assert not [call for call in w.toggl.mock.calls if call.request.method == "PUT"]
    assert w.toggl.stopped["9001"]["stop"] == iso(by_hand)
    assert (done.status, done.error) == ("done", None)
    last = max(runs, key=lambda run: run["input_summary"]["attempt"])
    assert last["result"]["already_stopped"] is True
    assert not {"stopped_late_at", "stop", "backdate_error"} & last["result"].keys()


@pytest.mark.parametrize("first", [503, UNSENT], ids=["Toggl refused (503)", "timed out before reaching Toggl"])
async def test_a_timer_stopped_by_hand_between_firings_is_never_rewritten(make_client, first):
    """The risk a window "from the first firing on" would open: the first firing failed without stopping the
    entry, the timer was stopped by hand 30 s after that firing gave up (in Toggl, which cancels nothing), and
    the retry meets the 409. No PATCH of ours was in flight then: the stop is the user's, and keeps its time."""
    async with world() as w:
        reads = serve_entry_reads(w.toggl)
        patch = StopPatch(w, None)
        stopped_by_hand: list[str] = []

        def stop_by_hand(row) -> None:
            entry, w.toggl.running = w.toggl.running, None
            assert entry is not None  # the first firing did not stop it
            by_hand = row.run_at - timedelta(seconds=30)  # the failed firing plus 30 s, before the retry
            stopped_by_hand.append(iso(by_hand))
            start = moment(entry["start"])
            w.toggl.stopped["9001"] = {
                **entry,
                "stop": iso(by_hand),
                "duration": int((by_hand - start).total_seconds()),
            }

        async with make_client(**w.settings()) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
            done, runs, _ = await fire_until_done(client, patch, [first, None], between=stop_by_hand)
    [by_hand] = stopped_by_hand
    [(_, failed)] = spans(done.payload)
    assert moment(by_hand) - failed > timedelta(seconds=20)
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    assert w.toggl.updates == []
    assert w.toggl.stopped["9001"]["stop"] == by_hand
    assert (done.status, done.error) == ("done", None)
    last = max(runs, key=lambda run: run["input_summary"]["attempt"])
    assert last["result"]["already_stopped"] is True and "stopped_late_at" not in last["result"]


def test_a_failed_firing_that_cannot_be_read_is_skipped():
    """The payload is ours, but a span that does not read as two aware times only costs a correction: raising
    there would leave the stop claimed and never done."""
    from workflows.scheduler import failed_firings

    began, failed = datetime(2026, 11, 25, 9, 0, tzinfo=UTC), datetime(2026, 11, 25, 9, 1, tzinfo=UTC)
    payload = {
        FAILED_FIRINGS: [
            ["not a time", failed.isoformat()],
            [began.isoformat()],
            "2026-11-25T09:00:00+00:00",
            ["2026-11-25T09:00:00", "2026-11-25T09:01:00"],
            [began.isoformat(), failed.isoformat()],
        ]
    }
    assert failed_firings(payload) == [(began, failed)]
    assert failed_firings({}) == []


# --- The evidence, in the skill, under a frozen clock ---------------------------------------------------------

SENT = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # when this call's first attempt began
PLANNED = SENT - timedelta(hours=2)
#: An earlier call of the same planned stop that failed: its first attempt began, then it gave up.
EARLIER = (SENT - timedelta(minutes=30), SENT - timedelta(minutes=29))


# Literal seconds, not STOP_CLOCK_SKEW: the five seconds are the documented allowance, at both ends of a span.
@pytest.mark.parametrize(
    "stopped_at",
    [EARLIER[0] - timedelta(seconds=5), EARLIER[0] + timedelta(seconds=20), EARLIER[1] + timedelta(seconds=5)],
    ids=["5 s before it began", "while it ran", "5 s after it failed"],
)
async def test_a_stop_within_an_earlier_calls_span_is_set_back(stop_skill, stopped_at):
    skill, toggl = stop_skill
    toggl.get("/me/time_entries/77").mock(return_value=httpx.Response(200, json=toggl_entry(stop=stopped_at)))
    put = toggl.put(f"/workspaces/{WORKSPACE}/time_entries/77").mock(
        return_value=httpx.Response(200, json=toggl_entry(stop=PLANNED))
    )
    with time_machine.travel(SENT, tick=False):
        stopped = await skill.stop_timer(entry_id=77, stop_at=PLANNED, earlier_attempts=[EARLIER])
    assert [call.request.method for call in toggl.calls] == ["PATCH", "GET", "PUT"]
    assert json.loads(put.calls.last.request.content) == {"stop": iso(PLANNED), "duration": 25 * 60}
    assert stopped is not None and stopped.already_stopped
    assert (stopped.stop, stopped.stopped_late_at, stopped.backdate_error) == (PLANNED, stopped_at, None)


@pytest.mark.parametrize(
    ("stopped_at", "earlier"),
    [
        (EARLIER[0] - timedelta(seconds=6), [EARLIER]),
        (EARLIER[1] + timedelta(seconds=6), [EARLIER]),
        (SENT - timedelta(minutes=10), [EARLIER]),  # between the calls: by hand
        (EARLIER[0] + timedelta(seconds=20), []),  # no earlier call: before this one's first attempt, by hand
    ],
    ids=["6 s before it began", "6 s after it failed", "between the calls", "no earlier call"],
)
async def test_a_stop_outside_every_call_is_not_touched(stop_skill, stopped_at, earlier):
    skill, toggl = stop_skill
    toggl.get("/me/time_entries/77").mock(return_value=httpx.Response(200, json=toggl_entry(stop=stopped_at)))
    put = toggl.put(f"/workspaces/{WORKSPACE}/time_entries/77")
    with time_machine.travel(SENT, tick=False):
        stopped = await skill.stop_timer(entry_id=77, stop_at=PLANNED, earlier_attempts=earlier)
    assert not put.called
    assert [call.request.method for call in toggl.calls] == ["PATCH", "GET"]
    assert stopped is not None and stopped.already_stopped
    assert (stopped.stop, stopped.stopped_late_at) == (None, None)


async def test_an_earlier_calls_span_does_not_excuse_a_stop_within_the_tolerance(stop_skill):
    """Within a minute of the plan, the stop is not late, whoever made it: nothing to set back."""
    skill, toggl = stop_skill
    within = EARLIER[0] + timedelta(seconds=20)
    toggl.get("/me/time_entries/77").mock(
        return_value=httpx.Response(200, json=toggl_entry(stop=within, start=within - timedelta(minutes=25)))
    )
    put = toggl.put(f"/workspaces/{WORKSPACE}/time_entries/77")
    with time_machine.travel(SENT, tick=False):
        await skill.stop_timer(entry_id=77, stop_at=within - timedelta(seconds=60), earlier_attempts=[EARLIER])
    assert not put.called


async def test_a_firing_cut_short_at_shutdown_after_its_patch_landed_keeps_its_span_for_the_next_worker(make_client):
    """A worker shut down while its PATCH was in flight, after Toggl had stopped the entry five minutes late. The
    claim was given back, but the span was not kept (a cut-short firing is not a failed one), so the next worker's
    409 took the late stop for a stop by hand and left it. Now the span is kept with the released claim."""
    async with world() as w:
        reads = serve_entry_reads(w.toggl)
        held: list[str] = []
        healthy = w.toggl._stop

        async def answer(request: httpx.Request) -> httpx.Response:
            response = healthy(request)  # Toggl stops the entry (a later PATCH: its 409)
            if held:
                return response
            held.append(request.url.path.split("/")[-2])
            await asyncio.Event().wait()  # the answer never comes: the worker is shut down in the call
            raise AssertionError("unreachable")

        w.toggl.mock.patch(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+/stop$").mock(side_effect=answer)
        settings = w.settings()
        clock = None
        try:
            async with make_client(**settings) as two:
                async with make_client(**settings, shutdown_grace_seconds=0) as one:
                    await post_whatsapp(one, whatsapp_form("start report for 5 min"))
                    planned = (await stop_row(one)).run_at.astimezone(UTC)
                    # Five minutes late, until after the second firing: the shutdown below included.
                    clock = time_machine.travel(planned + timedelta(minutes=5), tick=True)
                    coordinates = clock.start()
                    await one.app.state.scheduler._stop_due("stop:9001")
                    await wait_for(lambda: held == ["9001"])
                left = await stop_row(two)
                # The next worker fires two minutes on: far past the skew before its own first attempt.
                coordinates.shift(timedelta(minutes=2))
                await two.app.state.scheduler.fire_stop("stop:9001")
                done = await stop_row(two, until=lambda row: row.status != "pending")
        finally:
            if clock is not None:
                clock.stop()
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    # The exact update the fake Toggl received: the stop back to the planned time.
    assert w.toggl.updates == [("9001", {"stop": iso(planned), "duration": 5 * 60})]
    assert moment(w.toggl.stopped["9001"]["stop"]) == planned
    assert (done.status, done.error) == ("done", None)
    assert (left.status, left.payload.get("attempts")) == ("pending", None)  # released, not counted as an attempt
    [(began, cut_short)] = spans(left.payload)
    assert began <= cut_short and timedelta(minutes=4) < began - planned < timedelta(minutes=6)


def test_the_kept_spans_are_bounded_and_the_earliest_stay():
    """A firing cut short at shutdown is not an attempt, so nothing else bounds the list: a worker restarting in a
    loop added a span per restart to the row's payload."""
    from workflows.scheduler import FAILED_FIRINGS_KEPT, _with_failed_firing

    payload: dict = {"entry_id": 9001}
    first = datetime(2026, 11, 25, 9, tzinfo=UTC)
    for n in range(FAILED_FIRINGS_KEPT + 10):
        payload = _with_failed_firing(payload, first + timedelta(minutes=n), first + timedelta(minutes=n, seconds=9))
    kept = spans(payload)
    assert len(kept) == FAILED_FIRINGS_KEPT == 64
    assert kept[0] == (first, first + timedelta(seconds=9))
    assert kept[-1][0] == first + timedelta(minutes=63)
    assert payload["entry_id"] == 9001


async def test_a_failed_firings_span_runs_from_its_first_attempt_to_its_failure(make_client):
    """The span's two ends as the row keeps them (a mutation review: recording the failure as the start, or the
    two swapped, went unnoticed, as every failed firing above took under the skew). Each attempt here takes 20 s."""
    async with world() as w:
        async with make_client(**w.settings()) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
            planned = (await stop_row(client)).run_at.astimezone(UTC)
            with time_machine.travel(planned + timedelta(minutes=5), tick=True) as clock:

                def slow_timeout(request: httpx.Request) -> httpx.Response:
                    clock.shift(timedelta(seconds=20))
                    raise httpx.ReadTimeout("no answer in 20 s", request=request)

                w.toggl.mock.patch(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+/stop$").mock(
                    side_effect=slow_timeout
                )
                await client.app.state.scheduler.fire_stop("stop:9001")
                row = await stop_row(client, until=attempts_are(1))
    [(began, failed)] = spans(row.payload)
    assert timedelta(minutes=5) <= began - planned < timedelta(minutes=5, seconds=5)  # before the first attempt
    assert failed - began >= timedelta(seconds=40)  # after the attempts (20 s each), not when they began
