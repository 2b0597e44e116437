"""Action skills. Adding one: a module with an INTEGRATION and `open_skill`, plus a line in each list below."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from core.registry import Integration
from core.resources import Resources
from skills import email, slack, toggl, whatsapp

SKILLS: tuple[Integration, ...] = (
    slack.INTEGRATION,
    toggl.INTEGRATION,
    email.INTEGRATION,
    whatsapp.INTEGRATION,
)


@dataclass(frozen=True)
class SkillSet:
    """One instance of each skill, opened in the lifespan and shared by routes, workflows and jobs."""

    slack: slack.SlackSkill
    toggl: toggl.TogglSkill
    email: email.EmailSkill
    whatsapp: whatsapp.WhatsAppSkill


async def open_skills(resources: Resources, stack: AsyncExitStack) -> SkillSet:
    return SkillSet(
        slack=await slack.open_skill(resources, stack),
        toggl=toggl.open_skill(resources),
        email=email.open_skill(resources),
        whatsapp=whatsapp.open_skill(resources),
    )
