"""GET /health: liveness, database reachability and which integrations are configured."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from core import __version__
from core.deps import RegistryDep, ResourcesDep
from core.store import ping

router = APIRouter(tags=["health"])


class IntegrationHealth(BaseModel):
    configured: bool
    kind: Literal["skill", "llm", "inbound"]
    missing_settings: list[str] = Field(default_factory=list, description="Variable names only, never values.")
    advice: list[str] = Field(
        default_factory=list, description="Settings it works without but may need (behind a proxy, say)."
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    environment: str
    database: Literal["ok", "error"]
    integrations: dict[str, IntegrationHealth]

    model_config = {
        "json_schema_extra": {
            "example": {
                "status": "ok",
                "version": __version__,
                "environment": "development",
                "database": "ok",
                "integrations": {
                    "gemini": {"configured": True, "kind": "llm", "missing_settings": []},
                    "slack": {"configured": False, "kind": "skill", "missing_settings": ["SLACK_BOT_TOKEN"]},
                },
            }
        }
    }


# HEAD too: uptime monitors often probe with HEAD, and got a 405 (found by a black-box review). Kept out of
# the schema: the same operation twice would need two operation ids, and HEAD is GET without the body.
@router.head("/health", include_in_schema=False)
@router.get(
    "/health",
    summary="Service health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "The database is unreachable (status: degraded)"}},
)
async def health(resources: ResourcesDep, registry: RegistryDep) -> JSONResponse:
    """Never needs the API key and never contains a secret value."""
    settings = resources.settings
    database_ok = await ping(resources.engine)
    body = HealthResponse(
        status="ok" if database_ok else "degraded",
        version=__version__,
        environment=settings.app_env,
        database="ok" if database_ok else "error",
        integrations={
            item.name: IntegrationHealth(
                configured=item.configured(settings),
                kind=item.kind,
                missing_settings=item.missing(settings),
                advice=item.advise(settings),
            )
            for item in registry
        },
    )
    return JSONResponse(body.model_dump(), status_code=200 if database_ok else 503)
