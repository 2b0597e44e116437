"""API-key authentication for every endpoint except health, docs and signed webhooks (and, without a key, the
Host check that keeps those endpoints to this machine)."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from core.deps import SettingsDep
from core.errors import Forbidden, Unauthorized
from core.settings import Settings

# auto_error=False: we raise our own problem-details 401, and the schemes still
# appear in Swagger UI's "Authorize" dialog.
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The value of APP_API_KEY (one of them, when it lists several)."
)
_bearer = HTTPBearer(
    auto_error=False, description="The value of APP_API_KEY as a bearer token (one of them, when it lists several)."
)


def key_refusal(settings: Settings, supplied: str | None) -> Unauthorized | None:
    """The 401 for a missing or wrong key, or None when it may pass: any key APP_API_KEY lists (`matches_any`)."""
    keys = settings.app_api_keys
    if not keys:
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
    if not matches_any(supplied, keys):
        return Unauthorized(
            "The API key is wrong. Use the value of APP_API_KEY.", headers={"WWW-Authenticate": "Bearer"}
        )
    return None


def matches_any(supplied: str, keys: tuple[SecretStr, ...]) -> bool:
    """Whether `supplied` is one of `keys`, each compared in constant time.

    Every key is compared, a match or not: stopping at the first match would let the time of an answer say
    which key of a rotation (the old or the new) a request used. The time says only how many keys there are and
    how long they are, as the one comparison of a single key always told its length."""
    given = supplied.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.get_secret_value().encode())
    return matched


def host_refusal(settings: Settings, host: str | None) -> Forbidden | None:
    """Without APP_API_KEY, the 403 for a request addressed to a DNS name that may not be this machine's.

    Open without a key was meant as open to this machine only, but any web page the owner visits could use it:
    DNS rebinding points the page's own name at 127.0.0.1, and the browser then sends the page's requests here,
    same-origin, able to read GET /runs and to send email and WhatsApp (found by a security review). Such a
    request names the page's domain in Host. An IP address, a single-label name (`localhost`, a LAN host's
    name) and `*.localhost` are no domain an attacker's DNS answers, so those are still served.
    """
    if settings.app_api_key is not None or not host:
        return None
    try:
        name = (urlsplit(f"//{host}").hostname or "").rstrip(".")
    except ValueError:  # "[abc" cannot be read as a host at all (it was a 500): refused like a domain name
        return _host_refused()
    if not name or "." not in name or name.endswith(".localhost") or name == "localhost.localdomain":
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if name == settings.api_host.lower() or name == (urlsplit(settings.public_base_url or "").hostname or ""):
        return None
    return _host_refused()


def _host_refused() -> Forbidden:
    return Forbidden(
        "Without APP_API_KEY this service answers only requests addressed to this machine by an IP address or "
        "localhost, not by a domain name, which a web page could point at it (DNS rebinding). Use "
        "http://127.0.0.1:<port>, or set APP_API_KEY."
    )


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    refusal = key_refusal(settings, api_key or (bearer.credentials if bearer else None)) or host_refusal(
        settings, request.headers.get("host")
    )
    if refusal is not None:
        raise refusal


def refusal_before_body(request: Request) -> Unauthorized | Forbidden | None:
    """The refusal `require_api_key` would give a request whose body FastAPI could not parse before any
    dependency ran: the 401 for a missing or wrong key, else (no APP_API_KEY) the 403 for a domain-name Host.

    FastAPI reads the body before it runs dependencies, so malformed JSON sent without a key was answered
    422, telling an unauthenticated caller about the endpoint's input. The error handlers ask this first.
    Without a key only the key check was made here, so a DNS-rebinding page sending malformed JSON got the
    400/422 (and the endpoint's input shape) where a parseable body got the 403 (found by a review).
    Routes in `app.state.public_paths` (health, the signed webhooks) need neither.
    """
    settings = getattr(request.app.state, "settings", None)
    if settings is None:
        return None
    route = request.scope.get("route")
    if getattr(route, "path", None) in getattr(request.app.state, "public_paths", ()):
        return None
    supplied = request.headers.get("x-api-key")
    if supplied is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        supplied = credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
    return key_refusal(settings, supplied) or host_refusal(settings, request.headers.get("host"))


RequireApiKey = Depends(require_api_key)
ApiKeyDep = Annotated[None, RequireApiKey]
