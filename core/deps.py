"""FastAPI dependencies, each named once as an `Annotated` alias.

Routes reach the lifespan's resources only through these, so a test can
replace any of them with `app.dependency_overrides`.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Query, Request

from core.ledger import Ledger
from core.registry import Registry
from core.resources import Resources
from core.settings import Settings


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_http_client(resources: Annotated[Resources, Depends(get_resources)]) -> httpx.AsyncClient:
    return resources.http


async def get_ledger(resources: Annotated[Resources, Depends(get_resources)]) -> Ledger:
    return resources.ledger


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


# Every provider here is `async def` although none awaits: FastAPI runs a plain
# `def` dependency in a worker thread, one thread hop per dependency per request,
# which showed up in the profile of every request (docs/benchmarks.md).

ResourcesDep = Annotated[Resources, Depends(get_resources)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
HttpClientDep = Annotated[httpx.AsyncClient, Depends(get_http_client)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
RegistryDep = Annotated[Registry, Depends(get_registry)]


async def get_dry_run(
    settings: SettingsDep,
    dry_run: Annotated[
        bool,
        Query(description="Validate and record the exact payload that would be sent, without calling upstream."),
    ] = False,
) -> bool:
    """DRY_RUN=true applies to every request; `?dry_run=true` to one."""
    return settings.dry_run or dry_run


DryRunDep = Annotated[bool, Depends(get_dry_run)]
