"""TogglSkill against respx (exact requests) and a real loopback server (timeouts, dropped connections)."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx

from core.errors import (
    InvalidInput,
    NotConfigured,
    NotFound,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from core.settings import Settings
from core.upstream import MAX_RESPONSE_BYTES
from skills.toggl import CREATED_WITH, TogglSkill
from tests.fakes.server import FakeUpstream, Reply

BASE = "https://toggl.test/api/v9"
TOKEN = "tok-1234567890"
WID = 4242
NOTHING_RUNS = httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
EXPECTED_AUTH = "Basic " + base64.b64encode(f"{TOKEN}:api_token".encode()).decode()


def entry(**fields: object) -> dict[str, object]:
    """A time entry as Toggl returns it (with fields this service ignores)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    data: dict[str, object] = {
        "id": 987654321,
        "workspace_id": WID,
        "project_id": None,
        "task_id": None,
        "billable": False,
        "start": start.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "stop": None,
        "duration": -int(start.timestamp()),
        "description": "Deep Work",
        "tags": [],
        "tag_ids": [],
        "duronly": True,
        "at": start.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "server_deleted_at": None,
        "user_id": 1,
        "uid": 1,
        "wid": WID,
    }
    data.update(fields)
    return data


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        yield client


@pytest.fixture
def make_skill(make_settings: Callable[..., Settings], http: httpx.AsyncClient) -> Callable[..., TogglSkill]:
    def _make(**overrides: object) -> TogglSkill:
        values: dict[str, object] = {
            "toggl_api_token": TOKEN,
            "toggl_workspace_id": WID,
            "toggl_base_url": BASE,
            **overrides,
        }
        return TogglSkill(make_settings(**values), http)

    return _make


@pytest.fixture
def toggl() -> respx.MockRouter:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        # Nothing runs unless a test says otherwise: a failed start reads the running timer back.
        router.get("/me/time_entries/current").mock(return_value=NOTHING_RUNS)
        yield router


# --- Start --------------------------------------------------------------------------------


async def test_start_timer_posts_a_running_entry(make_skill, toggl):
    route = toggl.post(f"/workspaces/{WID}/time_entries").mock(
        return_value=httpx.Response(200, json=entry(description="Write report", tags=["focus"], project_id=55))
    )
    before = datetime.now(UTC).replace(microsecond=0)

    started = await make_skill().start_timer(
        description="Write report", duration_minutes=90, project_id=55, tags=["focus"], billable=True
    )

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url == f"{BASE}/workspaces/{WID}/time_entries"
    assert request.headers["authorization"] == EXPECTED_AUTH
    body = json.loads(request.content)
    start_sent = body.pop("start")
    assert body == {
        "created_with": CREATED_WITH,
        "workspace_id": WID,
        "duration": -1,
        "description": "Write report",
        "project_id": 55,
        "tags": ["focus"],
        "billable": True,
    }
    assert isinstance(body["workspace_id"], int)
    # RFC 3339 in UTC with a Z, whole seconds, and "now".
    assert start_sent.endswith("Z") and len(start_sent) == 20
    sent_at = datetime.strptime(start_sent, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= sent_at <= datetime.now(UTC)

    assert started.entry_id == 987654321
    assert started.workspace_id == WID
    assert started.planned_stop == started.start + timedelta(minutes=90)
    assert started.payload == {
        "method": "POST",
        "path": f"/workspaces/{WID}/time_entries",
        "json": {**body, "start": start_sent},
    }
    assert started.ledger_external_id() == "987654321"


async def test_start_timer_minimal_body_and_explicit_workspace(make_skill, toggl):
    route = toggl.post("/workspaces/777/time_entries").mock(
        return_value=httpx.Response(200, json=entry(workspace_id=777))
    )
    started = await make_skill(toggl_workspace_id=None).start_timer(description="Deep Work", workspace_id=777)
    body = json.loads(route.calls.last.request.content)
    assert set(body) == {"created_with", "workspace_id", "start", "duration", "description"}
    assert body["workspace_id"] == 777
    assert body["duration"] == -1
    assert started.planned_stop is None


async def test_an_explicit_workspace_wins_over_the_configured_one(make_skill, toggl):
    """TOGGL_WORKSPACE_ID is only the default: a caller's workspace_id is where the timer starts and stops."""
    configured = toggl.post(f"/workspaces/{WID}/time_entries").mock(return_value=httpx.Response(200, json=entry()))
    route = toggl.post("/workspaces/777/time_entries").mock(
        return_value=httpx.Response(200, json=entry(workspace_id=777))
    )
    stop = toggl.patch("/workspaces/777/time_entries/5/stop").mock(
        return_value=httpx.Response(409, json="Time entry already stopped")
    )
    skill = make_skill()  # TOGGL_WORKSPACE_ID=4242

    started = await skill.start_timer(description="Deep Work", workspace_id=777)
    stopped = await skill.stop_timer(workspace_id=777, entry_id=5)

    assert not configured.called
    assert json.loads(route.calls.last.request.content)["workspace_id"] == 777
    assert started.workspace_id == 777
    assert stop.call_count == 1 and stopped is not None and stopped.workspace_id == 777


async def test_an_explicit_billable_false_is_sent(make_skill, toggl):
    """False is the caller's choice, not "unset": it reaches Toggl rather than leaving Toggl's default."""
    route = post_route(toggl).mock(return_value=httpx.Response(200, json=entry()))
    await make_skill().start_timer(description="Deep Work", billable=False)
    body = json.loads(route.calls.last.request.content)
    assert body["billable"] is False


async def test_the_started_timer_reports_the_entry_toggl_recorded(make_skill, toggl):
    """Toggl's answer is what exists: its description and tags, not our request's, are reported."""
    post_route(toggl).mock(
        return_value=httpx.Response(200, json=entry(description="Deep Work (imported)", tags=["focus", "auto"]))
    )
    started = await make_skill().start_timer(description="Deep Work", tags=["focus"])
    assert (started.description, started.tags) == ("Deep Work (imported)", ["focus", "auto"])


async def test_start_timer_without_any_workspace_is_not_configured(make_skill, toggl):
    with pytest.raises(NotConfigured, match="TOGGL_WORKSPACE_ID"):
        await make_skill(toggl_workspace_id=None).start_timer(description="x")
    assert not toggl.calls


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"description": "Deep\x00Work"}, "description"),
        ({"description": "Deep Work", "tags": ["ok", "a\u202eb"]}, "A tag"),
    ],
    ids=["description", "tag"],
)
async def test_control_characters_are_refused_before_any_call(make_skill, toggl, fields, what):
    """The workflows call the skill directly, without the router's check: the skill refuses them itself."""
    with pytest.raises(InvalidInput) as caught:
        await make_skill().start_timer(**fields)
    assert what in caught.value.detail
    assert not toggl.calls


async def test_unconfigured_skill_names_the_variable(make_skill, toggl):
    with pytest.raises(NotConfigured) as caught:
        await make_skill(toggl_api_token=None).start_timer(description="x")
    assert caught.value.status == 503
    assert caught.value.extras["missing_settings"] == ["TOGGL_API_TOKEN"]
    assert not toggl.calls


async def test_dry_run_builds_the_payload_without_calling(make_skill, toggl):
    started = await make_skill().start_timer(description="Plan", duration_minutes=30, dry_run=True)
    assert not toggl.calls
    assert started.dry_run is True
    assert started.entry_id is None
    assert started.payload["json"]["duration"] == -1
    assert started.payload["path"] == f"/workspaces/{WID}/time_entries"
    assert started.planned_stop == started.start + timedelta(minutes=30)


# --- Current and stop ---------------------------------------------------------------------


async def test_current_timer_null_means_nothing_running(make_skill, toggl):
    toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
    )
    assert await make_skill().current_timer() is None


@pytest.mark.parametrize("shape", ["minus start", "minus one"])
async def test_current_timer_elapsed_from_negative_duration(make_skill, toggl, shape):
    """Running entries: `-start_epoch` in older docs, `-1` in Toggl's current v9 docs; both run since `start`."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=600)
    duration = -int(start.timestamp()) if shape == "minus start" else -1
    route = toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(200, json=entry(start=start.strftime("%Y-%m-%dT%H:%M:%SZ"), duration=duration))
    )
    running = await make_skill().current_timer()
    assert route.calls.last.request.headers["authorization"] == EXPECTED_AUTH
    assert running is not None
    assert running.entry_id == 987654321
    assert 600 <= running.elapsed_seconds <= 603
    assert running.start == start


async def test_a_running_entry_started_ahead_of_our_clock_has_run_zero_seconds(make_skill, toggl):
    """Clock skew: Toggl's start a little after our "now" is no negative elapsed time."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30)
    toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(200, json=entry(start=start.strftime("%Y-%m-%dT%H:%M:%SZ"), duration=-1))
    )
    running = await make_skill().current_timer()
    assert running is not None and running.elapsed_seconds == 0


async def test_stop_without_id_stops_the_running_entry(make_skill, toggl):
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=entry(workspace_id=99)))
    stopped_entry = entry(workspace_id=99, stop="2026-11-25T09:30:00Z", duration=5400)
    route = toggl.patch("/workspaces/99/time_entries/987654321/stop").mock(
        return_value=httpx.Response(200, json=stopped_entry)
    )
    stopped = await make_skill().stop_timer()
    request = route.calls.last.request
    assert request.method == "PATCH"
    assert request.content == b""
    assert request.headers["authorization"] == EXPECTED_AUTH
    assert stopped is not None
    assert (stopped.entry_id, stopped.workspace_id, stopped.elapsed_seconds) == (987654321, 99, 5400)
    assert stopped.already_stopped is False
    assert stopped.stop == datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


async def test_stop_with_nothing_running_returns_none(make_skill, toggl):
    toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
    )
    assert await make_skill().stop_timer() is None
    assert [call.request.method for call in toggl.calls] == ["GET"]


async def test_stop_409_means_already_stopped(make_skill, toggl):
    route = toggl.patch(f"/workspaces/{WID}/time_entries/5/stop").mock(
        return_value=httpx.Response(409, json="Time entry already stopped")
    )
    stopped = await make_skill().stop_timer(entry_id=5)
    assert route.call_count == 1
    assert stopped is not None
    assert stopped.already_stopped is True
    assert stopped.entry_id == 5


@pytest.mark.parametrize("dry_run", [False, True])
async def test_a_stopped_entrys_description_is_shown_scrubbed(make_skill, toggl, dry_run):
    """Toggl's description is upstream text: one echoing the API token (a gateway echoing headers) reached the
    answer and the chat replies raw on the stop paths (found by a review)."""
    echoed = entry(description=f"Deep work; Authorization: {TOKEN}")
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=echoed))
    toggl.patch(f"/workspaces/{WID}/time_entries/987654321/stop").mock(
        return_value=httpx.Response(200, json={**echoed, "stop": "2026-11-25T09:30:00Z", "duration": 60})
    )
    stopped = await make_skill().stop_timer(dry_run=dry_run)
    assert stopped is not None and stopped.description == "Deep work; Authorization: ***"


async def test_stop_dry_run_reads_but_never_patches(make_skill, toggl):
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=entry()))
    patch = toggl.patch(f"/workspaces/{WID}/time_entries/987654321/stop")
    stopped = await make_skill().stop_timer(dry_run=True)
    assert not patch.called
    assert stopped is not None and stopped.dry_run
    assert stopped.payload == {"method": "PATCH", "path": f"/workspaces/{WID}/time_entries/987654321/stop"}


# --- The ledger keeps the request of a failed call ------------------------------------------


async def test_a_failed_start_and_stop_leave_their_exact_requests_on_the_ledger(client, make_skill, toggl):
    """Whoever checks a failed call by hand needs what was sent: the start's body, the stop's entry."""
    create = post_route(toggl).mock(
        return_value=httpx.Response(400, json="Start time year must be between 2006 and 2030")
    )
    toggl.patch(f"/workspaces/{WID}/time_entries/5/stop").mock(return_value=httpx.Response(400, json="nope"))
    ledger = client.app.state.resources.ledger
    skill = make_skill()
    with pytest.raises(InvalidInput):
        async with ledger.run("toggl.start_timer", trigger="api") as run:
            async with run.action("toggl", "start_timer") as start:
                await skill.start_timer(description="Deep Work")
    with pytest.raises(InvalidInput):
        async with ledger.run("toggl.stop_timer", trigger="api") as run:
            async with run.action("toggl", "stop_timer") as stop:
                await skill.stop_timer(entry_id=5)

    sent = json.loads(create.calls.last.request.content)
    assert start.request == {"method": "POST", "path": f"/workspaces/{WID}/time_entries", "json": sent}
    assert stop.request == {"method": "PATCH", "path": f"/workspaces/{WID}/time_entries/5/stop"}


# --- A start whose answer was lost is confirmed from the running timer ----------------------------


def lost_start(toggl: respx.MockRouter, answer: httpx.Response, running: Callable[[dict], dict | None]) -> list[dict]:
    """POST answers `answer` (after "creating"); GET current answers running(sent body). Returns the bodies sent."""
    sent: list[dict] = []

    def create(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return answer

    def current(request: httpx.Request) -> httpx.Response:
        data = running(sent[-1]) if sent else None
        return httpx.Response(200, content=json.dumps(data).encode(), headers={"content-type": "application/json"})

    toggl.post(f"/workspaces/{WID}/time_entries").mock(side_effect=create)
    toggl.get("/me/time_entries/current").mock(side_effect=current)
    return sent


def as_created(body: dict, **changes: object) -> dict:
    fields = {
        "id": 555,
        "start": body["start"],
        "description": body["description"],
        "workspace_id": body["workspace_id"],
    }
    return entry(**{**fields, **changes})


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(500), httpx.Response(504, text="gateway"), httpx.Response(200, text="<html>ok</html>")],
    ids=["500", "504", "unreadable 2xx"],
)
async def test_a_start_whose_answer_was_lost_is_the_running_entry_when_it_matches(make_skill, toggl, answer):
    sent = lost_start(toggl, answer, as_created)
    started = await make_skill().start_timer(description="Deep Work", duration_minutes=30)
    assert len(sent) == 1  # never sent twice
    assert started.entry_id == 555 and started.description == "Deep Work"
    assert started.planned_stop == started.start + timedelta(minutes=30)
    assert started.confirmed_after_error is not None and "read back" in started.confirmed_after_error
    assert [call.request.method for call in toggl.calls] == ["POST", "GET"]


@pytest.mark.parametrize(
    "running",
    [
        lambda body: None,  # nothing runs
        lambda body: as_created(body, description="Something else"),
        lambda body: as_created(body, start="2020-01-01T00:00:00+00:00"),
        lambda body: as_created(body, workspace_id=WID + 1),
    ],
    ids=["nothing runs", "other description", "other start", "other workspace"],
)
async def test_a_lost_start_stays_outcome_unknown_unless_the_running_entry_is_exactly_ours(make_skill, toggl, running):
    lost_start(toggl, httpx.Response(502), running)
    with pytest.raises(UpstreamError) as caught:
        await make_skill().start_timer(description="Deep Work")
    assert caught.value.extras["outcome_unknown"] is True
    assert "The outcome is unknown" in caught.value.detail


async def test_a_refused_start_is_not_read_back(make_skill, toggl):
    """A 4xx acted on nothing: no extra read (Toggl's hourly quota is small)."""
    lost_start(toggl, httpx.Response(400, json="Start time year must be between 2006 and 2030"), as_created)
    with pytest.raises(InvalidInput):
        await make_skill().start_timer(description="Deep Work")
    assert [call.request.method for call in toggl.calls] == ["POST"]


async def test_a_start_answered_with_an_oversized_body_is_read_back_and_never_resent(make_skill, toggl):
    """A 2xx too large to read: the entry most likely exists, so the start is confirmed from the running timer
    (or reported as outcome unknown), never sent again."""
    sent = lost_start(toggl, httpx.Response(200, content=b" " * (MAX_RESPONSE_BYTES + 1)), as_created)
    started = await make_skill().start_timer(description="Deep Work")
    assert len(sent) == 1
    assert [call.request.method for call in toggl.calls] == ["POST", "GET"]
    assert started.entry_id == 555
    assert started.confirmed_after_error is not None and "could not be read" in started.confirmed_after_error


# --- A late planned stop is set back to the planned time --------------------------------------

PLANNED_START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
PLANNED_STOP = PLANNED_START + timedelta(minutes=25)


def stopped_at(stop: datetime) -> dict[str, object]:
    """The entry Toggl's stop PATCH answers with: stopped at `stop`, its duration the real elapsed time."""
    return entry(
        id=77,
        start="2026-11-25T09:00:00+00:00",
        stop=stop.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        duration=int((stop - PLANNED_START).total_seconds()),
    )


async def test_a_stop_landing_hours_after_stop_at_is_set_back_to_it(make_skill, toggl):
    """Found in review: a 25-minute timer whose planned stop was retried for six hours recorded 6.4 hours."""
    late = PLANNED_STOP + timedelta(hours=6)
    patch = toggl.patch(f"/workspaces/{WID}/time_entries/77/stop").mock(
        return_value=httpx.Response(200, json=stopped_at(late))
    )
    put = toggl.put(f"/workspaces/{WID}/time_entries/77").mock(
        return_value=httpx.Response(200, json=stopped_at(PLANNED_STOP))
    )
    stopped = await make_skill().stop_timer(entry_id=77, stop_at=PLANNED_STOP)

    assert [call.request.method for call in toggl.calls] == ["PATCH", "PUT"]  # stopped first, then corrected
    assert patch.call_count == 1
    request = put.calls.last.request
    assert request.headers["authorization"] == EXPECTED_AUTH
    assert json.loads(request.content) == {"stop": "2026-11-25T09:25:00Z", "duration": 25 * 60}
    assert stopped is not None
    assert (stopped.stop, stopped.elapsed_seconds) == (PLANNED_STOP, 25 * 60)
    assert stopped.stopped_late_at == late
    assert stopped.backdate_error is None


# Literals, not LATE_STOP_TOLERANCE: the one minute is the documented behaviour (a mutation review changed the
# constant and no test noticed).
@pytest.mark.parametrize("late", [timedelta(seconds=40), timedelta(seconds=60)], ids=["40 s", "exactly 1 min"])
async def test_a_stop_within_the_tolerance_of_stop_at_is_left_as_toggl_made_it(make_skill, toggl, late):
    toggl.patch(f"/workspaces/{WID}/time_entries/77/stop").mock(
        return_value=httpx.Response(200, json=stopped_at(PLANNED_STOP + late))
    )
    put = toggl.put(f"/workspaces/{WID}/time_entries/77")
    stopped = await make_skill().stop_timer(entry_id=77, stop_at=PLANNED_STOP)
    assert not put.called
    assert stopped is not None and stopped.stopped_late_at is None
    assert stopped.stop == PLANNED_STOP + late


async def test_a_stop_a_second_past_the_tolerance_is_set_back(make_skill, toggl):
    late = PLANNED_STOP + timedelta(seconds=61)
    toggl.patch(f"/workspaces/{WID}/time_entries/77/stop").mock(return_value=httpx.Response(200, json=stopped_at(late)))
    put = toggl.put(f"/workspaces/{WID}/time_entries/77").mock(
        return_value=httpx.Response(200, json=stopped_at(PLANNED_STOP))
    )
    stopped = await make_skill().stop_timer(entry_id=77, stop_at=PLANNED_STOP)
    assert json.loads(put.calls.last.request.content) == {"stop": "2026-11-25T09:25:00Z", "duration": 25 * 60}
    assert stopped is not None and stopped.stop == PLANNED_STOP and stopped.stopped_late_at == late


async def test_an_entry_whose_start_was_moved_past_stop_at_is_not_touched(make_skill, toggl):
    """Someone edited the start in Toggl to after the planned stop: setting the stop back would be nonsense."""
    late = PLANNED_STOP + timedelta(hours=1)
    moved = entry(
        id=77, start="2026-11-25T09:40:00+00:00", stop=late.strftime("%Y-%m-%dT%H:%M:%S+00:00"), duration=2700
    )
    toggl.patch(f"/workspaces/{WID}/time_entries/77/stop").mock(return_value=httpx.Response(200, json=moved))
    put = toggl.put(f"/workspaces/{WID}/time_entries/77")
    stopped = await make_skill().stop_timer(entry_id=77, stop_at=PLANNED_STOP)
    assert not put.called
    assert stopped is not None and stopped.stop == late and stopped.stopped_late_at is None


async def test_a_failed_correction_still_reports_the_stop_and_says_why(make_skill, toggl):
    late = PLANNED_STOP + timedelta(hours=2)
    toggl.patch(f"/workspaces/{WID}/time_entries/77/stop").mock(return_value=httpx.Response(200, json=stopped_at(late)))
    put = toggl.put(f"/workspaces/{WID}/time_entries/77").mock(
        return_value=httpx.Response(400, json="Stop time must be after start time")
    )
    stopped = await make_skill().stop_timer(entry_id=77, stop_at=PLANNED_STOP)
    assert put.call_count == 1  # a 400 is not retried
    assert stopped is not None
    assert stopped.stop == late and stopped.stopped_late_at == late
    assert stopped.backdate_error is not None and "Stop time must be after start time" in stopped.backdate_error


async def test_a_correction_of_an_entry_deleted_meanwhile_still_reports_the_stop(make_skill, toggl):
    """Any failed correction (here a 404: the entry was deleted in Toggl after the stop), not only a refusal,
    leaves the stop reported as done, with the reason the recorded stop is still the late one."""
    late = PLANNED_STOP + timedelta(hours=2)
    toggl.patch(f"/workspaces/{WID}/time_entries/77/stop").mock(return_value=httpx.Response(200, json=stopped_at(late)))
    put = toggl.put(f"/workspaces/{WID}/time_entries/77").mock(return_value=httpx.Response(404, json="Not found"))
    stopped = await make_skill().stop_timer(entry_id=77, stop_at=PLANNED_STOP)
    assert put.call_count == 1
    assert stopped is not None and stopped.stop == late and stopped.stopped_late_at == late
    assert stopped.backdate_error is not None and "404" in stopped.backdate_error


async def test_a_correction_answered_500_is_retried_like_the_stop(make_skill, toggl):
    """The update sets the same values again when repeated, so a lost answer may be retried."""
    late = PLANNED_STOP + timedelta(hours=2)
    toggl.patch(f"/workspaces/{WID}/time_entries/77/stop").mock(return_value=httpx.Response(200, json=stopped_at(late)))
    put = toggl.put(f"/workspaces/{WID}/time_entries/77").mock(
        side_effect=[httpx.Response(500), httpx.Response(200, json=stopped_at(PLANNED_STOP))]
    )
    stopped = await make_skill().stop_timer(entry_id=77, stop_at=PLANNED_STOP)
    assert put.call_count == 2
    assert stopped is not None and stopped.stop == PLANNED_STOP and stopped.backdate_error is None


# --- Error mapping ------------------------------------------------------------------------


def post_route(toggl: respx.MockRouter) -> respx.Route:
    return toggl.post(f"/workspaces/{WID}/time_entries")


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_502_naming_the_token(make_skill, toggl, status):
    route = post_route(toggl).mock(return_value=httpx.Response(status, text=""))
    with pytest.raises(UpstreamError) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.status == 502
    assert "TOGGL_API_TOKEN" in caught.value.detail
    assert TOKEN not in caught.value.detail
    assert route.call_count == 1  # not retried


async def test_bare_json_string_error_is_shown(make_skill, toggl):
    post_route(toggl).mock(return_value=httpx.Response(400, json="Start time year must be between 2006 and 2030"))
    with pytest.raises(InvalidInput) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.status == 422
    assert "Start time year must be between 2006 and 2030" in caught.value.detail


@pytest.mark.parametrize("key", ["message", "error", "error_message"])
async def test_a_json_object_error_shows_its_message(make_skill, toggl, key):
    post_route(toggl).mock(return_value=httpx.Response(400, json={key: "Workspace is locked", "code": 7}))
    with pytest.raises(InvalidInput) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.detail == "Toggl rejected the request (400). Toggl said: Workspace is locked."


async def test_a_token_toggl_echoes_is_scrubbed_before_its_words_are_cut(make_skill, toggl):
    """The token straddles the 300-character cut: cut first, its first half would stay, unrecognisable."""
    post_route(toggl).mock(return_value=httpx.Response(400, json="x" * 290 + TOKEN + " bad"))
    with pytest.raises(InvalidInput) as caught:
        await make_skill().start_timer(description="x")
    assert TOKEN[:6] not in caught.value.detail
    assert caught.value.detail == "Toggl rejected the request (400). Toggl said: " + "x" * 290 + "*** bad."


async def test_a_long_toggl_message_is_cut(make_skill, toggl):
    post_route(toggl).mock(return_value=httpx.Response(400, json="y" * 5000))
    with pytest.raises(InvalidInput) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.detail == "Toggl rejected the request (400). Toggl said: " + "y" * 300 + "."


async def test_404_is_not_found(make_skill, toggl):
    toggl.patch(f"/workspaces/{WID}/time_entries/5/stop").mock(return_value=httpx.Response(404, json="Not found"))
    with pytest.raises(NotFound):
        await make_skill().stop_timer(entry_id=5)


@pytest.mark.parametrize("status", [402, 429])
# 30 s: past the 10 s the skill waits out (a literal, found by a mutation review: a caller must not hang 30 s).
@pytest.mark.parametrize("retry_after", ["30", "120"])
async def test_rate_limit_with_long_retry_after_is_passed_on_at_once(make_skill, toggl, status, retry_after):
    route = post_route(toggl).mock(
        return_value=httpx.Response(status, json="quota", headers={"Retry-After": retry_after})
    )
    with pytest.raises(UpstreamRateLimited) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == retry_after
    assert route.call_count == 1


@pytest.mark.parametrize("status", [402, 429])
async def test_short_retry_after_is_waited_out(make_skill, toggl, status):
    route = post_route(toggl).mock(
        side_effect=[
            httpx.Response(status, json="slow down", headers={"Retry-After": "1"}),
            httpx.Response(200, json=entry()),
        ]
    )
    began = time.monotonic()
    started = await make_skill().start_timer(description="x")
    assert time.monotonic() - began >= 0.95
    assert route.call_count == 2
    assert started.entry_id == 987654321


async def test_429_without_retry_after_backs_off_then_gives_up(make_skill, toggl):
    route = post_route(toggl).mock(return_value=httpx.Response(429, json="too many"))
    with pytest.raises(UpstreamRateLimited) as caught:
        await make_skill().start_timer(description="x")
    assert route.call_count == 3
    assert "Retry-After" not in caught.value.headers


async def test_402_with_only_the_quota_reset_header_passes_that_wait_on(make_skill, toggl):
    """No Retry-After: the quota's own reset header says when to come back (a long wait is passed on at once)."""
    route = post_route(toggl).mock(
        return_value=httpx.Response(402, json="quota exceeded", headers={"X-Toggl-Quota-Resets-In": "1200"})
    )
    with pytest.raises(UpstreamRateLimited) as caught:
        await make_skill().start_timer(description="x")
    assert route.call_count == 1
    assert caught.value.headers["Retry-After"] == "1200"


async def test_402_without_retry_after_is_not_retried(make_skill, toggl):
    route = post_route(toggl).mock(return_value=httpx.Response(402, json="quota exceeded"))
    with pytest.raises(UpstreamRateLimited) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.status == 429
    assert "quota" in caught.value.detail
    assert route.call_count == 1


FIVE_XX = [
    (500, UpstreamError, 502, "upstream-error"),
    (502, UpstreamError, 502, "upstream-error"),
    (503, UpstreamUnavailable, 503, "upstream-unavailable"),
    (504, UpstreamTimeout, 504, "upstream-timeout"),
]
HTML_PAGE = "<html><body>Service Unavailable</body></html>"


@pytest.mark.parametrize(("status", "problem", "answer", "slug"), FIVE_XX)
async def test_5xx_on_start_is_sent_once_and_says_the_outcome_is_unknown(
    make_skill, toggl, status, problem, answer, slug
):
    # Toggl may have created the entry before failing: a second POST could start a second timer.
    route = post_route(toggl).mock(
        side_effect=[
            httpx.Response(status, text=HTML_PAGE, headers={"content-type": "text/html"}),
            httpx.Response(200, json=entry()),
        ]
    )
    with pytest.raises(problem) as caught:
        await make_skill().start_timer(description="x")
    assert route.call_count == 1
    assert type(caught.value) is problem
    assert (caught.value.status, caught.value.slug) == (answer, slug)
    assert caught.value.retryable is False
    assert caught.value.extras["upstream_status"] == status
    assert caught.value.detail == (
        f"Toggl answered {status}. The outcome is unknown: the time entry may have been created; "
        "check the running timer (GET /timers/current or Toggl) before retrying."
    )


@pytest.mark.parametrize(("status", "problem", "answer", "slug"), FIVE_XX)
async def test_5xx_on_reads_and_stops_is_retried_a_bounded_number_of_times(
    make_skill, toggl, status, problem, answer, slug
):
    read = toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(status, text=HTML_PAGE))
    with pytest.raises(problem) as caught:
        await make_skill().current_timer()
    assert read.call_count == 3
    assert (caught.value.status, caught.value.slug) == (answer, slug)
    assert "outcome is unknown" not in caught.value.detail
    assert "<html>" not in caught.value.detail

    stop = toggl.patch(f"/workspaces/{WID}/time_entries/5/stop").mock(return_value=httpx.Response(status))
    with pytest.raises(problem):
        await make_skill().stop_timer(entry_id=5)
    assert stop.call_count == 3


async def test_5xx_then_success_recovers_on_a_read(make_skill, toggl):
    route = toggl.get("/me/time_entries/current").mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json=entry())]
    )
    running = await make_skill().current_timer()
    assert route.call_count == 2
    assert running is not None and running.entry_id == 987654321


async def test_a_stop_repeated_after_a_500_answers_409_and_counts_as_stopped(make_skill, toggl):
    # The first PATCH may have stopped the entry before failing: the repeat then gets Toggl's 409.
    route = toggl.patch(f"/workspaces/{WID}/time_entries/5/stop").mock(
        side_effect=[httpx.Response(500), httpx.Response(409, json="Time entry already stopped")]
    )
    stopped = await make_skill().stop_timer(entry_id=5)
    assert route.call_count == 2
    assert stopped is not None and stopped.already_stopped


async def test_invalid_json_on_success_is_502(make_skill, toggl):
    post_route(toggl).mock(return_value=httpx.Response(200, text="{not json"))
    with pytest.raises(UpstreamError) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.status == 502
    assert "not JSON" in caught.value.detail


async def test_unexpected_entry_shape_is_502(make_skill, toggl):
    post_route(toggl).mock(return_value=httpx.Response(200, json={"id": "nope"}))
    with pytest.raises(UpstreamError) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.status == 502


async def test_read_timeout_on_start_is_504_and_never_replayed(make_skill, toggl):
    # Toggl may have created the entry before the answer was lost: a retry could start a second one.
    route = post_route(toggl).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamTimeout) as caught:
        await make_skill().start_timer(description="x")
    assert caught.value.status == 504
    assert "unknown" in caught.value.detail
    assert route.call_count == 1


async def test_connect_timeout_on_start_is_retried_then_504(make_skill, toggl):
    route = post_route(toggl).mock(side_effect=httpx.ConnectTimeout("no route"))
    with pytest.raises(UpstreamTimeout):
        await make_skill().start_timer(description="x")
    assert route.call_count == 3


async def test_read_timeout_on_stop_is_retried(make_skill, toggl):
    route = toggl.patch(f"/workspaces/{WID}/time_entries/5/stop").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(409, json="already stopped")]
    )
    stopped = await make_skill().stop_timer(entry_id=5)
    assert route.call_count == 2  # the PATCH is safe to repeat: a second one answers 409
    assert stopped is not None and stopped.already_stopped


# --- Real sockets: slow answers, dropped and refused connections --------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


async def test_slow_answer_past_the_timeout_is_504(make_settings, fake):
    fake.route("GET", "/api/v9/me/time_entries/current", lambda req: Reply(json=None, delay=1.0))
    settings = make_settings(toggl_api_token=TOKEN, toggl_base_url=f"{fake.url}/api/v9")
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        with pytest.raises(UpstreamTimeout):
            await TogglSkill(settings, client).current_timer()
    assert len(fake.calls("GET", "/api/v9/me/time_entries/current")) == 3
    assert fake.requests[0].headers["authorization"] == EXPECTED_AUTH


async def test_dropped_connection_is_503(make_settings, fake):
    fake.route("GET", "/api/v9/me/time_entries/current", lambda req: Reply(drop=True))
    settings = make_settings(toggl_api_token=TOKEN, toggl_base_url=f"{fake.url}/api/v9")
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await TogglSkill(settings, client).current_timer()
    assert caught.value.status == 503
    assert len(fake.requests) == 3


async def test_html_error_page_from_a_proxy_is_502(make_settings, fake):
    fake.route(
        "GET",
        "/api/v9/me/time_entries/current",
        lambda req: Reply(502, text="<html><h1>502 Bad Gateway</h1></html>", content_type="text/html"),
    )
    settings = make_settings(toggl_api_token=TOKEN, toggl_base_url=f"{fake.url}/api/v9")
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        with pytest.raises(UpstreamError) as caught:
            await TogglSkill(settings, client).current_timer()
    assert caught.value.status == 502
    assert "Bad Gateway" not in caught.value.detail


async def test_connection_refused_is_503(make_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` any more.
    settings = make_settings(toggl_api_token=TOKEN, toggl_base_url=f"http://127.0.0.1:{port}/api/v9")
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        with pytest.raises(UpstreamUnavailable):
            await TogglSkill(settings, client).current_timer()


async def test_stop_running_timer_that_was_stopped_meanwhile(make_skill, toggl):
    toggl.get("/me/time_entries/current").mock(return_value=httpx.Response(200, json=entry()))
    toggl.patch(f"/workspaces/{WID}/time_entries/987654321/stop").mock(
        return_value=httpx.Response(409, json="Time entry already stopped")
    )
    stopped = await make_skill().stop_timer()
    assert stopped is not None
    assert stopped.already_stopped is True
    assert stopped.start is not None
    assert stopped.elapsed_seconds is not None and 300 <= stopped.elapsed_seconds <= 303


@pytest.mark.parametrize("field", ["start", "stop"])
async def test_an_entry_time_without_an_offset_is_502_not_a_crash(make_skill, toggl, field):
    """Found by a time review: a naive `start` (no offset) was accepted, and subtracting it from an aware "now"
    was a TypeError, so a 500. Toggl always sends an offset; a gateway in front of it might not."""
    times = {"start": "2026-11-25T09:00:00Z", "stop": None, field: "2026-11-25T09:30:00"}
    toggl.get("/me/time_entries/current").mock(
        return_value=httpx.Response(200, json=entry(start=times["start"], stop=times["stop"], duration=-1))
    )
    with pytest.raises(UpstreamError) as caught:
        await make_skill().current_timer()
    assert caught.value.status == 502
    assert "cannot read" in caught.value.detail
