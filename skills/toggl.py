"""Toggl Track skill: running timers over the v9 API."""

from __future__ import annotations

from core.registry import Integration

INTEGRATION = Integration(
    name="toggl",
    kind="skill",
    description="Start, stop and read running Toggl Track timers.",
    required=("TOGGL_API_TOKEN",),
    optional=("TOGGL_WORKSPACE_ID", "TOGGL_BASE_URL"),
    operations=("start_timer", "stop_timer", "current_timer"),
)
