"""GET /problems and GET /problems/{slug}: what a problem `type` means, so every type URI we send resolves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from core.errors import PROBLEM_BASE, NotFound, problem_responses
from core.problem_types import PROBLEM_TYPES, ProblemType

router = APIRouter(tags=["problems"])


class ProblemTypeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "/problems/not-configured",
                "title": "Integration not configured",
                "status": [503],
                "when": "A skill or provider is missing settings; `missing_settings` names them.",
                "fix": "Set them in the environment or .env and restart.",
            }
        }
    )

    type: str = Field(description="The `type` member of the problems this page documents.")
    title: str
    status: list[int] = Field(description="The HTTP statuses this type is sent with.")
    when: str = Field(description="What happened.")
    fix: str = Field(description="What to do about it.")

    @classmethod
    def of(cls, entry: ProblemType) -> ProblemTypeOut:
        return cls(
            type=PROBLEM_BASE + entry.slug,
            title=entry.title,
            status=list(entry.statuses),
            when=entry.when,
            fix=entry.fix,
        )


@router.get(
    "/problems",
    summary="Every problem type this service sends",
    response_model=list[ProblemTypeOut],
    responses=problem_responses(500),
)
async def list_problem_types() -> list[ProblemTypeOut]:
    """No API key needed: it documents errors, including the 401 itself."""
    return [ProblemTypeOut.of(entry) for entry in PROBLEM_TYPES.values()]


@router.get(
    "/problems/{slug}",
    summary="What one problem type means and what to do about it",
    response_model=ProblemTypeOut,
    responses=problem_responses(404),
)
async def get_problem_type(slug: Annotated[str, Path(max_length=64, examples=["not-configured"])]) -> ProblemTypeOut:
    """The page a problem's relative `type` (`/problems/<slug>`) resolves to (RFC 9457, section 3.1.1)."""
    entry = PROBLEM_TYPES.get(slug)
    if entry is None:
        raise NotFound(f"No problem type {slug!r}. GET /problems lists them all.")
    return ProblemTypeOut.of(entry)
