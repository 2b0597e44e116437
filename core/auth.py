"""API-key authentication for every endpoint except health, docs and signed webhooks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from core.deps import SettingsDep
from core.errors import Unauthorized

# auto_error=False: we raise our own problem-details 401, and the schemes still
# appear in Swagger UI's "Authorize" dialog.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The value of APP_API_KEY.")
_bearer = HTTPBearer(auto_error=False, description="The value of APP_API_KEY as a bearer token.")


async def require_api_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    expected = settings.app_api_key
    if expected is None:
        return  # development without a key: open, as documented
    supplied = api_key or (bearer.credentials if bearer else None)
    if supplied is None:
        raise Unauthorized(
            "This endpoint needs the API key: send it as X-API-Key: <key> or Authorization: Bearer <key>.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(supplied.encode(), expected.get_secret_value().encode()):
        raise Unauthorized(
            "The API key is wrong. Use the value of APP_API_KEY.", headers={"WWW-Authenticate": "Bearer"}
        )


RequireApiKey = Depends(require_api_key)
ApiKeyDep = Annotated[None, RequireApiKey]
