"""Every dependency of every route is `async def`: FastAPI runs a plain `def` one in a worker thread.

A thread hop per dependency per request was measurable CPU on one core (docs/benchmarks.md); the two
sync providers in routers/briefing.py put two hops on every signed WhatsApp webhook.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi.dependencies.models import Dependant

from main import create_app


def _is_async(call: Any) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(getattr(call, "__call__", None))


def _sync_dependencies(dependant: Dependant) -> set[str]:
    found: set[str] = set()
    for sub in dependant.dependencies:
        if sub.call is not None and not _is_async(sub.call):
            found.add(getattr(sub.call, "__qualname__", repr(sub.call)))
        found |= _sync_dependencies(sub)
    return found


def test_no_route_has_a_sync_dependency_or_endpoint(make_settings):
    app = create_app(make_settings())
    # Each included router's routes as served: route dependencies plus the include's (API key, rate limit).
    routes = [
        context
        for route in app.routes
        if hasattr(route, "effective_route_contexts")
        for context in route.effective_route_contexts()
    ]
    assert any(route.path == "/whatsapp-webhook" for route in routes)
    assert all(route.dependant is not None for route in routes)
    sync = {route.path: _sync_dependencies(route.dependant) for route in routes}
    assert {path: names for path, names in sync.items() if names} == {}
    assert [route.path for route in routes if not _is_async(route.endpoint)] == []
