"""Tests that kill mutants of this session's production changes which the suite let survive (core/)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine

from core import ratelimit_store
from core.auth import host_refusal
from core.cron import crontab_trigger
from core.ratelimit_store import PURGE_EVERY_SECONDS, MemoryStorage

BERLIN = ZoneInfo("Europe/Berlin")
TROLL = ZoneInfo("Antarctica/Troll")  # UTC+0 to UTC+2 at 01:00 UTC on the last Sunday of March: a 2-hour gap


# --- core/cron.py: WallClockCronTrigger -------------------------------------------------------------


def test_with_a_previous_fire_time_after_the_spring_jump_the_next_one_after_it_is_answered():
    """APScheduler's contract: with a previous fire time, the one after it, even when it is before `now` (its
    run-time loop lists missed runs so). The walk for the skipped hour is only for a first question (None)."""
    trigger = crontab_trigger("*/15 * * * *", "Europe/Berlin")
    previous = datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)  # 01:00 UTC, just after the jump
    answer = trigger.get_next_fire_time(previous, datetime(2026, 3, 29, 3, 40, tzinfo=BERLIN))
    assert answer is not None
    assert answer.astimezone(UTC) == datetime(2026, 3, 29, 1, 15, tzinfo=UTC)  # 03:15 CEST, not 03:45


def test_a_skipped_time_two_hours_after_a_two_hour_jump_is_still_due_that_day():
    """Antarctica/Troll skips 01:00-03:00: 02:30 is due at 02:30 UTC (04:30 local). Asked at 04:10 local, the
    jump was 1 h 10 min before: looked for only 1 h back, the day's briefing was skipped."""
    trigger = crontab_trigger("30 2 * * *", "Antarctica/Troll")
    answer = trigger.get_next_fire_time(None, datetime(2026, 3, 29, 2, 10, tzinfo=UTC))
    assert answer is not None
    assert answer.astimezone(UTC) == datetime(2026, 3, 29, 2, 30, tzinfo=UTC)


def test_the_walk_back_before_a_two_hour_jump_is_in_real_time():
    """`now - 2 h` on a Troll wall clock at 04:06 lands in the skipped hours (02:06), which APScheduler reads
    after the day's 01:45: the next 01:45 (tomorrow's) was answered as the day after's."""
    trigger = crontab_trigger("45 1 * * *", "Antarctica/Troll")
    answer = trigger.get_next_fire_time(None, datetime(2026, 3, 29, 4, 6, 13, tzinfo=TROLL))
    assert answer is not None
    assert answer.astimezone(UTC) == datetime(2026, 3, 29, 23, 45, tzinfo=UTC)  # 01:45 local on the 30th


# --- core/ratelimit_store.py: MemoryStorage -----------------------------------------------------------

WALL = 1_800_000_000.0


async def test_the_memory_windows_run_on_the_monotonic_clock_which_a_step_of_the_system_clock_does_not_move():
    """time_machine steps time.time() everywhere, also where it was bound to another name, but not the monotonic
    clock: a window kept on time.time() (`monotonic = time.time`) reported its start an hour ahead after the clock
    was set back an hour, and every recent client was told to retry in an hour."""
    storage = MemoryStorage()
    with time_machine.travel(WALL, tick=False):
        assert await storage.acquire_entry("k", 2, 60)
    with time_machine.travel(WALL - 3600, tick=False):
        start, hits = await storage.get_moving_window("k", 2, 60)
    assert hits == 1
    assert abs(start - (WALL - 3600)) < 5  # the hit was just now, on the clock the limiter reads


async def test_an_empty_window_starts_at_the_wall_clock_time(monkeypatch):
    """The limiter adds the window's length to its start and compares it with time.time(): an empty window's
    start in monotonic time (seconds since boot) read as a reset in 1970."""
    monkeypatch.setattr(ratelimit_store, "monotonic", lambda: 5_000.0)
    monkeypatch.setattr(ratelimit_store.time, "time", lambda: WALL)
    assert await MemoryStorage().get_moving_window("nobody", 2, 60) == (WALL, 0)


async def test_the_purge_forgets_expired_counters_by_their_wall_clock_expiry(monkeypatch):
    """The fixed-window counters expire in wall-clock time (get_expiry answers it): compared with the monotonic
    clock (seconds since boot) no counter ever looked expired, and each key stayed in memory for good."""
    mono, wall = [5_000.0], [WALL]
    monkeypatch.setattr(ratelimit_store, "monotonic", lambda: mono[0])
    monkeypatch.setattr(ratelimit_store.time, "time", lambda: wall[0])
    storage = MemoryStorage()
    assert await storage.acquire_entry("window", 2, 60)  # the first purge, at monotonic 5,000
    await storage.incr("counter", 60)
    mono[0] += PURGE_EVERY_SECONDS + 120
    wall[0] += PURGE_EVERY_SECONDS + 120
    assert await storage.acquire_entry("window", 2, 60)  # purges
    assert "counter" not in storage._counters


# --- core/auth.py: host_refusal (no APP_API_KEY: the DNS-rebinding guard) ----------------------------------


@pytest.mark.parametrize(
    "host",
    ["localhost.:8000", "app.localhost.", "127.0.0.1.", "localhost.localdomain", "localhost.localdomain:8000"],
)
def test_this_machines_names_are_served_also_with_the_trailing_dot_of_a_fully_qualified_name(make_settings, host):
    """`localhost.` is `localhost` (the root's trailing dot), and `localhost.localdomain` is this machine in many
    /etc/hosts: none is a name an attacker's DNS answers."""
    assert host_refusal(make_settings(), host) is None


@pytest.mark.parametrize("api_host", ["box.lan", "Box.Lan"])
def test_the_name_the_service_is_bound_to_is_served(make_settings, api_host):
    """API_HOST names this machine by definition (it listens there), in whatever case it was written."""
    settings = make_settings(api_host=api_host)
    assert host_refusal(settings, "box.lan:8000") is None
    assert host_refusal(settings, "rebind.attacker.example") is not None


# --- core/openapi.py: the host refusal's 403 -------------------------------------------------------------------


async def test_only_key_protected_operations_document_the_host_refusal(client):
    """/health and /problems take no key and answer any Host; the webhooks' 403 is their signature's."""
    schema = (await client.get("/openapi.json")).json()
    for path in ("/health", "/problems", "/problems/{slug}"):
        assert "403" not in schema["paths"][path]["get"]["responses"], path
    for path in ("/whatsapp-webhook", "/whatsapp-status", "/slack/events"):
        assert "APP_API_KEY" not in schema["paths"][path]["post"]["responses"]["403"]["description"], path
