"""Dependencies on the objects the lifespan builds above core: skills and (later) the AIRouter."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from skills import SkillSet


def get_skills(request: Request) -> SkillSet:
    return request.app.state.skills


SkillsDep = Annotated[SkillSet, Depends(get_skills)]
