"""WhatsApp skill: send messages through Twilio's REST API."""

from __future__ import annotations

from core.registry import Integration

INTEGRATION = Integration(
    name="whatsapp",
    kind="skill",
    description="Send WhatsApp messages through Twilio.",
    required=("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
    optional=("TWILIO_WHATSAPP_NUMBER", "TWILIO_BASE_URL", "WHATSAPP_ALLOWED_SENDERS"),
    operations=("send_message",),
)
