"""Dependencies on the objects the lifespan builds above core: skills and (later) the AIRouter."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.ai_router import AIRouter
from skills import SkillSet


async def get_skills(request: Request) -> SkillSet:
    return request.app.state.skills


SkillsDep = Annotated[SkillSet, Depends(get_skills)]


async def get_ai_router(request: Request) -> AIRouter:
    return request.app.state.ai_router


AIRouterDep = Annotated[AIRouter, Depends(get_ai_router)]
