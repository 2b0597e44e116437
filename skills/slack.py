"""Slack skill: post messages with slack_sdk's AsyncWebClient."""

from __future__ import annotations

from contextlib import AsyncExitStack

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from core.registry import Integration
from core.resources import Resources
from core.settings import Settings

INTEGRATION = Integration(
    name="slack",
    kind="skill",
    description="Post messages to Slack channels and threads.",
    required=("SLACK_BOT_TOKEN",),
    optional=("SLACK_DEFAULT_CHANNEL", "SLACK_SIGNING_SECRET", "SLACK_BASE_URL"),
    operations=("post_message",),
)


class SlackSkill:
    """Slack Web API through slack_sdk's AsyncWebClient on one shared aiohttp session."""

    def __init__(self, settings: Settings, client: AsyncWebClient) -> None:
        self.settings = settings
        self.client = client


async def open_skill(resources: Resources, stack: AsyncExitStack) -> SlackSkill:
    settings = resources.settings
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.http_timeout_seconds))
    stack.push_async_callback(session.close)
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    client = AsyncWebClient(token=token, base_url=settings.slack_base_url, session=session)
    return SlackSkill(settings, client)
