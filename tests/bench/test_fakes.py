"""bench/fakes.py's Toggl, driven by the service's own TogglSkill: the benchmark and the adversarial tests rely on
the fakes answering what the service sends in the shape it reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from skills.toggl import CREATED_WITH, TogglEntry, rfc3339
from tests.bench.conftest import WID


async def test_a_late_planned_stop_is_set_back_to_the_planned_time(toggl):
    """The timer started an hour ago and was planned to stop after 25 minutes: Toggl's stop says "now", and the
    service's update PUT sets the stop back to the planned time."""
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    body = {"created_with": CREATED_WITH, "workspace_id": WID, "start": rfc3339(started), "duration": -1}
    created = (await toggl.http.post(f"{toggl.api}/workspaces/{WID}/time_entries", json=body)).json()
    planned = started + timedelta(minutes=25)

    stopped = await toggl.skill.stop_timer(workspace_id=WID, entry_id=created["id"], stop_at=planned)

    assert stopped.backdate_error is None
    assert (stopped.entry_id, stopped.start, stopped.stop) == (created["id"], started, planned)
    assert stopped.elapsed_seconds == 25 * 60
    assert stopped.stopped_late_at is not None and stopped.stopped_late_at - planned > timedelta(minutes=30)
    assert list(toggl.entries.updates) == [(created["id"], {"stop": rfc3339(planned), "duration": 25 * 60})]
    kept = toggl.entries.entries[created["id"]]
    assert (kept["start"], kept["stop"], kept["duration"]) == (rfc3339(started), rfc3339(planned), 25 * 60)


async def test_the_started_entry_is_the_running_one_until_stopped_and_a_second_stop_is_409(toggl):
    started = await toggl.skill.start_timer(description="Deep Work", duration_minutes=25)

    running = await toggl.skill.current_timer()
    assert running is not None and running.entry_id == started.entry_id and running.start == started.start
    stopped = await toggl.skill.stop_timer()  # no id: the running timer
    again = await toggl.skill.stop_timer(workspace_id=WID, entry_id=started.entry_id)

    assert stopped is not None and stopped.entry_id == started.entry_id
    assert stopped.stop is not None and stopped.stopped_late_at is None  # on time: no update
    assert again is not None and again.already_stopped  # Toggl's 409 for an entry already stopped
    assert list(toggl.entries.updates) == []
    after = await toggl.skill.current_timer()
    assert after is not None and after.entry_id != started.entry_id  # something always runs, not the stopped one


async def test_an_update_of_an_entry_the_fake_did_not_start_is_a_consistent_entry(toggl):
    """The fake restarted between a start and its late stop (its entries live in memory): the update is still
    answered, like every path of the fakes, with the entry Toggl would return."""
    stop = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    response = await toggl.http.put(
        f"{toggl.api}/workspaces/{WID}/time_entries/123456", json={"stop": rfc3339(stop), "duration": 1500}
    )

    assert response.status_code == 200
    entry = TogglEntry.model_validate(response.json())
    assert (entry.id, entry.workspace_id, entry.stop, entry.duration) == (123456, WID, stop, 1500)
    assert entry.start == stop - timedelta(seconds=1500)
