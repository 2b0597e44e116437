"""Toggl Track skill: running timers over the v9 API."""

from __future__ import annotations

import httpx

from core.registry import Integration
from core.resources import Resources
from core.settings import Settings

INTEGRATION = Integration(
    name="toggl",
    kind="skill",
    description="Start, stop and read running Toggl Track timers.",
    required=("TOGGL_API_TOKEN",),
    optional=("TOGGL_WORKSPACE_ID", "TOGGL_BASE_URL"),
    operations=("start_timer", "stop_timer", "current_timer"),
)


class TogglSkill:
    """Toggl Track API v9 over the shared httpx client."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http


def open_skill(resources: Resources) -> TogglSkill:
    return TogglSkill(resources.settings, resources.http)
