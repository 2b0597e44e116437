"""bench/fakes.py's Toggl answers `GET /me/time_entries/{id}`, the read a late planned stop makes after a lost
answer (`TogglSkill.time_entry`), so that path can run against the benchmark's fakes: the entry as the fake holds
it, and Toggl's 404 for an id it never started."""

from __future__ import annotations

import pytest

from core.errors import ProblemError
from tests.bench.conftest import WID


async def test_the_fake_answers_one_entry_as_it_holds_it_running_then_stopped(toggl):
    started = await toggl.skill.start_timer(description="Deep Work", duration_minutes=25)

    running = await toggl.skill.time_entry(started.entry_id)
    assert (running.id, running.workspace_id, running.stop) == (started.entry_id, WID, None)
    assert running.duration < 0

    await toggl.skill.stop_timer(workspace_id=WID, entry_id=started.entry_id)
    stopped = await toggl.skill.time_entry(started.entry_id)
    held = toggl.entries.entries[started.entry_id]
    assert stopped.stop is not None and stopped.duration == held["duration"] >= 0


async def test_an_id_the_fake_never_started_is_toggls_404(toggl):
    with pytest.raises(ProblemError) as refused:
        await toggl.skill.time_entry(424242)
    assert refused.value.status == 404
