"""Action skills. Adding one: a module with an INTEGRATION, and one line below."""

from core.registry import Integration
from skills import email, slack, toggl, whatsapp

SKILLS: tuple[Integration, ...] = (
    slack.INTEGRATION,
    toggl.INTEGRATION,
    email.INTEGRATION,
    whatsapp.INTEGRATION,
)
