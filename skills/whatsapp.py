"""WhatsApp skill: send messages through Twilio's REST API."""

from __future__ import annotations

import httpx

from core.registry import Integration
from core.resources import Resources
from core.settings import Settings

INTEGRATION = Integration(
    name="whatsapp",
    kind="skill",
    description="Send WhatsApp messages through Twilio.",
    required=("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
    optional=("TWILIO_WHATSAPP_NUMBER", "TWILIO_BASE_URL", "WHATSAPP_ALLOWED_SENDERS"),
    operations=("send_message",),
)


class WhatsAppSkill:
    """Twilio's REST API over the shared httpx client."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http


def open_skill(resources: Resources) -> WhatsAppSkill:
    return WhatsAppSkill(resources.settings, resources.http)
