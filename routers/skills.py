"""GET /skills: every registered action skill and whether it is configured."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from core.deps import RegistryDep, SettingsDep
from core.errors import problem_responses

router = APIRouter(tags=["skills"])


class SkillInfo(BaseModel):
    name: str
    description: str
    configured: bool
    missing_settings: list[str] = Field(description="Variable names still to set; never their values.")
    required_settings: list[str]
    optional_settings: list[str]
    operations: list[str]


class SkillList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "skills": [
                    {
                        "name": "slack",
                        "description": "Post messages to Slack channels and threads.",
                        "configured": False,
                        "missing_settings": ["SLACK_BOT_TOKEN"],
                        "required_settings": ["SLACK_BOT_TOKEN"],
                        "optional_settings": ["SLACK_DEFAULT_CHANNEL", "SLACK_SIGNING_SECRET", "SLACK_BASE_URL"],
                        "operations": ["post_message"],
                    }
                ]
            }
        }
    )

    skills: list[SkillInfo]


@router.get("/skills", summary="List action skills", response_model=SkillList, responses=problem_responses(401))
async def list_skills(registry: RegistryDep, settings: SettingsDep) -> SkillList:
    """Read from the integration registry, so a new skill appears here once it is registered."""
    return SkillList(
        skills=[
            SkillInfo(
                name=item.name,
                description=item.description,
                configured=item.configured(settings),
                missing_settings=item.missing(settings),
                required_settings=list(item.required),
                optional_settings=list(item.optional),
                operations=list(item.operations),
            )
            for item in registry.of_kind("skill")
        ]
    )
