"""Email skill: send mail over SMTP with aiosmtplib."""

from __future__ import annotations

from core.registry import Integration
from core.resources import Resources
from core.settings import Settings


def _sender_missing(settings: Settings) -> list[str]:
    return [] if (settings.smtp_from or settings.smtp_user) else ["SMTP_FROM"]


INTEGRATION = Integration(
    name="email",
    kind="skill",
    description="Send plain-text (and optional HTML) email over SMTP.",
    required=("SMTP_HOST",),
    optional=("SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_SECURITY"),
    operations=("send_email",),
    extra_check=_sender_missing,
)


class EmailSkill:
    """SMTP with aiosmtplib; one connection per message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def open_skill(resources: Resources) -> EmailSkill:
    return EmailSkill(resources.settings)
