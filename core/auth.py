"""API-key authentication for every endpoint except health, docs and signed webhooks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from core.deps import SettingsDep
from core.errors import Unauthorized
from core.settings import Settings

# auto_error=False: we raise our own problem-details 401, and the schemes still
# appear in Swagger UI's "Authorize" dialog.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The value of APP_API_KEY.")
_bearer = HTTPBearer(auto_error=False, description="The value of APP_API_KEY as a bearer token.")


def key_refusal(settings: Settings, supplied: str | None) -> Unauthorized | None:
    """The 401 for a missing or wrong key, or None when it may pass. Compared in constant time."""
    expected = settings.app_api_key
    if expected is None:
        return None  # development without a key: open, as documented
    # Whitespace around a header value is not part of it (RFC 9110 5.5), and the Bearer form was already
    # stripped; uvicorn's httptools parser keeps a trailing space, so `X-API-Key: <key> ` was "wrong" while
    # `Authorization: Bearer <key> ` passed (found by a black-box review).
    supplied = (supplied.strip(" \t") or None) if supplied is not None else None
    if supplied is None:
        return Unauthorized(
            "This endpoint needs the API key: send it as X-API-Key: <key> or Authorization: Bearer <key>.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(supplied.encode(), expected.get_secret_value().encode()):
        return Unauthorized(
            "The API key is wrong. Use the value of APP_API_KEY.", headers={"WWW-Authenticate": "Bearer"}
        )
    return None


async def require_api_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    refusal = key_refusal(settings, api_key or (bearer.credentials if bearer else None))
    if refusal is not None:
        raise refusal


def refusal_before_body(request: Request) -> Unauthorized | None:
    """The 401 a request would get, for one whose body FastAPI could not parse before any dependency ran.

    FastAPI reads the body before it runs dependencies, so malformed JSON sent without a key was answered
    422, telling an unauthenticated caller about the endpoint's input. The error handlers ask this first.
    Routes in `app.state.public_paths` (health, the signed webhooks) need no key.
    """
    settings = getattr(request.app.state, "settings", None)
    if settings is None or settings.app_api_key is None:
        return None
    route = request.scope.get("route")
    if getattr(route, "path", None) in getattr(request.app.state, "public_paths", ()):
        return None
    supplied = request.headers.get("x-api-key")
    if supplied is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        supplied = credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
    return key_refusal(settings, supplied)


RequireApiKey = Depends(require_api_key)
ApiKeyDep = Annotated[None, RequireApiKey]
