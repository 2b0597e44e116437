"""bench/fakes.py's Toggl stops the running entry when a new running one is created in its workspace, as Toggl does.

It let the old entry run on beside the new one, so a later stop of it (the service's planned stop) found it
running where Toggl answers 409, and the benchmark measured a world Toggl never shows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from skills.toggl import CREATED_WITH, rfc3339
from tests.bench.conftest import WID


async def _create(toggl, *, start: datetime, duration: int = -1, workspace_id: int = WID) -> dict:
    body = {"created_with": CREATED_WITH, "workspace_id": workspace_id, "start": rfc3339(start), "duration": duration}
    response = await toggl.http.post(f"{toggl.api}/workspaces/{workspace_id}/time_entries", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _epoch(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp())


async def test_starting_a_timer_stops_the_one_running_with_a_consistent_stop_and_duration(toggl):
    an_hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    first = await _create(toggl, start=an_hour_ago)

    before = int(time.time())
    second = await toggl.skill.start_timer(description="Deep Work", duration_minutes=25)
    after = int(time.time())

    stopped = toggl.entries.entries[first["id"]]
    assert stopped["start"] == rfc3339(an_hour_ago)
    assert stopped["stop"] is not None and before <= _epoch(stopped["stop"]) <= after
    assert stopped["duration"] == _epoch(stopped["stop"]) - _epoch(stopped["start"]) >= 3600
    assert stopped["at"] == stopped["stop"]
    # The new entry is the running timer; the old one is stopped for every route that reads it.
    running = await toggl.skill.current_timer()
    assert running is not None and running.entry_id == second.entry_id
    kept = toggl.entries.entries[second.entry_id]
    assert kept["stop"] is None and kept["duration"] == -_epoch(kept["start"])
    again = await toggl.skill.stop_timer(workspace_id=WID, entry_id=first["id"])
    assert again is not None and again.already_stopped  # Toggl's 409: nothing left to stop


async def test_a_finished_entry_or_one_in_another_workspace_leaves_the_running_timer_alone(toggl):
    now = datetime.now(UTC).replace(microsecond=0)
    running = await _create(toggl, start=now - timedelta(minutes=10))

    finished = await _create(toggl, start=now - timedelta(hours=3), duration=1800)  # a positive duration
    assert toggl.entries.entries[running["id"]]["stop"] is None
    assert (finished["stop"], finished["duration"]) == (rfc3339(now - timedelta(hours=3) + timedelta(minutes=30)), 1800)

    await _create(toggl, start=now, workspace_id=WID + 1)
    assert toggl.entries.entries[running["id"]]["stop"] is None
