"""FastAPI dependencies, each named once as an `Annotated` alias.

Routes reach the lifespan's resources only through these, so a test can
replace any of them with `app.dependency_overrides`.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Query, Request

from core.errors import InvalidInput
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


_QUERY_BOOLS = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


async def get_dry_run(
    request: Request,
    settings: SettingsDep,
    dry_run: Annotated[
        bool,
        Query(description="Validate and record the exact payload that would be sent, without calling upstream."),
    ] = False,
) -> bool:
    """DRY_RUN=true applies to every request; `?dry_run=true` to one.

    Given twice with different values (`?dry_run=true&dry_run=false`) it is refused: the last one would
    win, and a request meant as a rehearsal must never act for real (found by a review).
    """
    # Every action's only query parameter is dry_run, and an unknown one was ignored: `?DRY_RUN=true` or
    # `?dry-run=true`, meant as a rehearsal, started a real timer (found by a black-box review). Refused
    # like an unknown body member is.
    unknown = sorted({name for name in request.query_params if name != "dry_run"})
    if unknown:
        raise InvalidInput(
            f"Unknown query parameter {', '.join(unknown)}; this endpoint takes only dry_run.",
            errors=[
                {"field": f"query.{name}", "message": "unknown query parameter", "type": "extra_forbidden"}
                for name in unknown
            ],
        )
    given = request.query_params.getlist("dry_run")
    # Compared as the booleans FastAPI reads them as (`true` and `1` agree); an unreadable one is its 422.
    if len(given) > 1 and len({_QUERY_BOOLS.get(value.strip().lower(), value) for value in given}) > 1:
        raise InvalidInput(
            f"dry_run is given {len(given)} times with different values; give it once.",
            errors=[{"field": "query.dry_run", "message": "given more than once with different values"}],
        )
    return settings.dry_run or dry_run


DryRunDep = Annotated[bool, Depends(get_dry_run)]
