"""Slack skill: post messages with slack_sdk's AsyncWebClient."""

from __future__ import annotations

from core.registry import Integration

INTEGRATION = Integration(
    name="slack",
    kind="skill",
    description="Post messages to Slack channels and threads.",
    required=("SLACK_BOT_TOKEN",),
    optional=("SLACK_DEFAULT_CHANNEL", "SLACK_SIGNING_SECRET", "SLACK_BASE_URL"),
    operations=("post_message",),
)
