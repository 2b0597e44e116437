"""A late planned stop whose PATCH reached Toggl but whose answer was lost is still set back to the planned time.

Found by a review: the stop's retry met Toggl's 409 (already stopped, by that first PATCH), and the 409 path
skipped the late-stop correction, so a 5-minute timer fired ten minutes late kept its late stop (10 minutes
recorded). On such a 409 the entry is now read (`GET /me/time_entries/{id}`) and set back only when the evidence
says this stop ended it: the same entry, stopped, more than a minute after the planned time and not before this
fire's first stop attempt was sent (less `STOP_CLOCK_SKEW`). A timer stopped by hand before that is left alone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx
import time_machine

from tests.workflows.test_scheduler import stop_row
from tests.workflows.world import (
    TOGGL_BASE,
    WORKSPACE,
    FakeToggl,
    finished_runs,
    iso,
    post_whatsapp,
    wait_for,
    whatsapp_form,
    world,
)

ENTRY_PATH = "/api/v9/me/time_entries/9001"


def serve_entry_reads(toggl: FakeToggl) -> respx.Route:
    """`GET /me/time_entries/{id}` on the fake: the entry as the fake holds it, running or stopped; 404 if none."""

    def read(request: httpx.Request) -> httpx.Response:
        entry_id = request.url.path.split("/")[-1]
        running = toggl.running if toggl.running is not None and str(toggl.running["id"]) == entry_id else None
        entry = toggl.stopped.get(entry_id, running)
        if entry is None:
            return httpx.Response(404, json="Time entry not found")
        return httpx.Response(200, json=entry)

    return toggl.mock.get(url__regex=rf"{TOGGL_BASE}/me/time_entries/\d+$").mock(side_effect=read)


def lose_the_first_stop_answer(toggl: FakeToggl, lost: type[httpx.TransportError]) -> None:
    """The first stop PATCH is applied by the fake, then its answer is lost (`lost`); later ones answer as usual,
    so the retry meets the 409 of an entry already stopped."""
    answer = toggl._stop
    calls = 0

    def stop(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        response = answer(request)
        if calls == 1:
            raise lost("the answer to the stop was lost", request=request)
        return response

    toggl.mock.patch(url__regex=rf"{TOGGL_BASE}/workspaces/\d+/time_entries/\d+/stop$").mock(side_effect=stop)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    "lost", [httpx.ReadTimeout, httpx.ReadError], ids=["timed out after sending", "connection reset"]
)
async def test_a_late_stop_whose_answer_was_lost_is_set_back_after_the_retrys_409(make_client, lost):
    async with world() as w:
        settings = w.settings()
        reads = serve_entry_reads(w.toggl)
        async with make_client(**settings) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
            planned = (await stop_row(client)).run_at.astimezone(UTC)
        lose_the_first_stop_answer(w.toggl, lost)
        # Down past the planned stop: it fires at start-up, five minutes late.
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=True):
            async with make_client(**settings) as client:
                [run] = await finished_runs(client, "schedule.stop_timer")
                row = await stop_row(client, until=lambda row: row.status != "pending")
    start = moment(w.toggl.starts[0]["start"])
    assert planned - start == timedelta(minutes=5)
    # The stop reached Toggl, its retry met the 409, the entry was read, then set back to the planned time.
    assert w.toggl.stops == ["9001", "9001"]
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    assert w.toggl.updates == [("9001", {"stop": iso(planned), "duration": 5 * 60})]
    assert moment(w.toggl.stopped["9001"]["stop"]) == planned
    # Recorded as the late-stop correction is: when Toggl first stopped it, and the stop it now has.
    assert (run["status"], row.status) == ("ok", "done")
    assert run["result"]["already_stopped"] is True
    assert datetime.fromisoformat(run["result"]["stop"]) == planned
    late = datetime.fromisoformat(run["result"]["stopped_late_at"])
    assert timedelta(minutes=4) < late - planned < timedelta(minutes=6)
    assert "backdate_error" not in run["result"]


async def test_an_entry_that_cannot_be_read_after_the_409_is_left_and_the_run_says_why(make_client):
    """The read is retried like any read (503 three times), then the stop ends `done` with the reason: not `failed`,
    and not tried again, which would only meet the 409 and the read again."""
    async with world() as w:
        settings = w.settings()
        reads = w.toggl.mock.get(url__regex=rf"{TOGGL_BASE}/me/time_entries/\d+$").mock(
            return_value=httpx.Response(503, json="Toggl is down for maintenance")
        )
        async with make_client(**settings) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
        lose_the_first_stop_answer(w.toggl, httpx.ReadTimeout)
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=True):
            async with make_client(**settings) as client:
                [run] = await finished_runs(client, "schedule.stop_timer")
                row = await stop_row(client, until=lambda row: row.status != "pending")
                [listed] = (await client.get("/schedule")).json()["stops"]
    assert w.toggl.stops == ["9001", "9001"]
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH] * 3
    # GET /schedule lists it `done` with the reason, not `error: null` (found by the session-10 integration review).
    assert (listed["status"], listed["error"]) == ("done", run["result"]["backdate_error"])
    assert w.toggl.updates == []
    assert (run["status"], row.status, row.payload["attempts"]) == ("ok", "done", 1)
    assert run["result"]["already_stopped"] is True and "stopped_late_at" not in run["result"]
    assert run["result"]["backdate_error"].startswith(
        "Toggl answered 409 (already stopped) to this late planned stop, and the entry could not be read to tell "
        "whether this stop ended it late: Toggl answered 503."
    )
    assert run["result"]["backdate_error"].endswith("Check its stop in Toggl.")


async def test_a_timer_stopped_by_hand_before_the_late_stop_keeps_its_stop(make_client):
    """Stopped by hand two minutes after the planned time, while the service was down (its planned stop was not
    cancelled): the stop that fires at start-up meets the 409, reads the entry, and leaves its stop alone."""
    async with world() as w:
        settings = w.settings()
        reads = serve_entry_reads(w.toggl)
        async with make_client(**settings) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
            planned = (await stop_row(client)).run_at.astimezone(UTC)
        entry, w.toggl.running = w.toggl.running, None
        assert entry is not None
        by_hand = planned + timedelta(minutes=2)
        w.toggl.stopped["9001"] = {**entry, "stop": iso(by_hand), "duration": 7 * 60}
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=True):
            async with make_client(**settings) as client:
                await wait_for(lambda: w.toggl.stops == ["9001"])
                [run] = await finished_runs(client, "schedule.stop_timer")
    assert [call.request.url.path for call in reads.calls] == [ENTRY_PATH]
    assert w.toggl.updates == []
    assert w.toggl.stopped["9001"]["stop"] == iso(by_hand)
    assert run["status"] == "ok" and run["result"]["already_stopped"] is True
    assert not {"stopped_late_at", "stop", "backdate_error"} & run["result"].keys()


# --- The evidence, in the skill, under a frozen clock ---------------------------------------------------------

SENT = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # when the stop's first attempt began
PLANNED = SENT - timedelta(hours=2)
STARTED = PLANNED - timedelta(minutes=25)


def toggl_entry(*, stop: datetime | None, start: datetime = STARTED, **fields: object) -> dict[str, object]:
    """Entry 77 as `GET /me/time_entries/77` answers: stopped at `stop`, or running when it is None."""
    duration = int((stop - start).total_seconds()) if stop is not None else -int(start.timestamp())
    return {
        "id": 77,
        "workspace_id": WORKSPACE,
        "description": "Deep Work",
        "start": iso(start),
        "stop": iso(stop) if stop is not None else None,
        "duration": duration,
        **fields,
    }


# Literal seconds, not STOP_CLOCK_SKEW: the five seconds are the documented allowance.
@pytest.mark.parametrize("before", [timedelta(0), timedelta(seconds=5)], ids=["at the attempt", "5 s before"])
async def test_a_stop_from_the_first_attempt_on_less_the_skew_is_set_back(stop_skill, before):
    skill, toggl = stop_skill
    stopped_at = SENT - before
    read = toggl.get("/me/time_entries/77").mock(return_value=httpx.Response(200, json=toggl_entry(stop=stopped_at)))
    put = toggl.put(f"/workspaces/{WORKSPACE}/time_entries/77").mock(
        return_value=httpx.Response(200, json=toggl_entry(stop=PLANNED))
    )
    with time_machine.travel(SENT, tick=False):
        stopped = await skill.stop_timer(entry_id=77, stop_at=PLANNED)
    assert [call.request.method for call in toggl.calls] == ["PATCH", "GET", "PUT"]
    assert read.calls.last.request.headers["authorization"] == put.calls.last.request.headers["authorization"]
    assert json.loads(put.calls.last.request.content) == {"stop": iso(PLANNED), "duration": 25 * 60}
    assert stopped is not None and stopped.already_stopped
    assert (stopped.stop, stopped.stopped_late_at, stopped.backdate_error) == (PLANNED, stopped_at, None)
    assert stopped.payload == {"method": "PATCH", "path": f"/workspaces/{WORKSPACE}/time_entries/77/stop"}


@pytest.mark.parametrize(
    "entry",
    [
        toggl_entry(stop=SENT - timedelta(seconds=6)),  # stopped by hand just before our first attempt
        toggl_entry(stop=PLANNED + timedelta(minutes=30)),  # stopped by hand long before it
        toggl_entry(stop=None),  # running again (Toggl said 409: not ours to decide)
        toggl_entry(stop=SENT, workspace_id=WORKSPACE + 1),  # another workspace's entry
        toggl_entry(stop=SENT, id=78),  # another entry
        toggl_entry(stop=SENT, start=PLANNED + timedelta(minutes=10)),  # its start edited to after the plan
    ],
    ids=["6 s before", "30 min after the plan", "running", "other workspace", "other entry", "start moved"],
)
async def test_an_entry_this_stop_did_not_end_late_is_not_touched(stop_skill, entry):
    skill, toggl = stop_skill
    toggl.get("/me/time_entries/77").mock(return_value=httpx.Response(200, json=entry))
    put = toggl.put(f"/workspaces/{WORKSPACE}/time_entries/77")
    with time_machine.travel(SENT, tick=False):
        stopped = await skill.stop_timer(entry_id=77, stop_at=PLANNED)
    assert not put.called
    assert [call.request.method for call in toggl.calls] == ["PATCH", "GET"]
    assert stopped is not None and stopped.already_stopped
    assert (stopped.stop, stopped.stopped_late_at, stopped.backdate_error) == (None, None, None)


async def test_an_entry_this_stop_stopped_within_the_tolerance_is_not_touched(stop_skill):
    """Fired late, but Toggl's stop is within a minute of the plan (ours or not): nothing to set back."""
    skill, toggl = stop_skill
    toggl.get("/me/time_entries/77").mock(
        return_value=httpx.Response(200, json=toggl_entry(stop=SENT, start=SENT - timedelta(minutes=25)))
    )
    put = toggl.put(f"/workspaces/{WORKSPACE}/time_entries/77")
    with time_machine.travel(SENT, tick=False):
        await skill.stop_timer(entry_id=77, stop_at=SENT - timedelta(seconds=60))
    assert not put.called


@pytest.mark.parametrize(
    ("fired_after", "reads"),
    [(timedelta(seconds=55), 0), (timedelta(seconds=56), 1)],
    ids=["55 s late: not read", "56 s late: read"],
)
async def test_a_409_on_time_spends_no_read(stop_skill, fired_after, reads):
    """A stop that fires within the tolerance (with the skew) cannot have stopped the entry late: a 409 there is a
    timer stopped by hand, and reading it would only spend the `/me` quota (30 an hour on the Free plan)."""
    skill, toggl = stop_skill
    read = toggl.get("/me/time_entries/77").mock(return_value=httpx.Response(200, json=toggl_entry(stop=SENT)))
    with time_machine.travel(SENT, tick=False):
        stopped = await skill.stop_timer(entry_id=77, stop_at=SENT - fired_after)
    assert read.call_count == reads
    assert stopped is not None and stopped.already_stopped


async def test_a_stop_by_hand_never_reads_the_entry_after_a_409(stop_skill):
    """No `stop_at` (POST /stop-timer, the `stop` command): a 409 is done, however late, as before."""
    skill, toggl = stop_skill
    read = toggl.get("/me/time_entries/77")
    stopped = await skill.stop_timer(entry_id=77)
    assert not read.called
    assert stopped is not None and stopped.already_stopped and stopped.backdate_error is None


async def test_a_failed_set_back_after_the_409_still_reports_the_stop_and_says_why(stop_skill):
    skill, toggl = stop_skill
    toggl.get("/me/time_entries/77").mock(return_value=httpx.Response(200, json=toggl_entry(stop=SENT)))
    put = toggl.put(f"/workspaces/{WORKSPACE}/time_entries/77").mock(
        return_value=httpx.Response(400, json="Stop time must be after start time")
    )
    with time_machine.travel(SENT, tick=False):
        stopped = await skill.stop_timer(entry_id=77, stop_at=PLANNED)
    assert json.loads(put.calls.last.request.content) == {"stop": iso(PLANNED), "duration": 25 * 60}
    assert stopped is not None and stopped.already_stopped
    assert (stopped.stop, stopped.stopped_late_at) == (SENT, SENT)
    assert stopped.backdate_error is not None and "Stop time must be after start time" in stopped.backdate_error
