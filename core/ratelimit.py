"""Per-client rate limit on the endpoints that spend money (LLM tokens, email, WhatsApp, the briefing).

OWASP API4 (unrestricted resource consumption): one leaked key or one looping
script must not be able to burn through LLM credit or Twilio balance. The
limit is `RATE_LIMIT_PER_MINUTE` requests per client per endpoint in any 60
seconds: an exact moving window (the `limits` library's `MovingWindowRateLimiter`
over the storages in core/ratelimit_store.py), so no burst across a minute's
boundary gets more than the limit.

Where the counts live is `RATE_LIMIT_STORAGE`: in the worker's memory (the
default on SQLite, a single worker), or in the database, where every worker
sharing PostgreSQL draws on one budget (the default on PostgreSQL; see
core/ratelimit_store.py). In memory, N workers would allow N times the limit.

A client is identified by its API key when APP_API_KEY is set (hashed: the key
itself is never kept), otherwise by its IP address. Each costly endpoint has its own
budget, so a burst of LLM calls does not block an urgent email.

Attach it where a router is included:

    app.include_router(ai.router, dependencies=[*protected, RateLimitDep])

Placed after the API-key check, so an unauthenticated caller gets its 401
before it can consume anyone's budget.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import RateLimited, StoreUnavailable
from core.idempotency import key_already_answered
from core.ratelimit_store import DatabaseStorage, MemoryStorage
from core.settings import Settings

_STATE_ATTRIBUTE = "client_rate_limiter"


class ClientRateLimiter:
    """At most `per_minute` hits per (client, endpoint) in any 60 seconds."""

    def __init__(self, per_minute: int, storage: Storage | None = None) -> None:
        self.item = RateLimitItemPerMinute(per_minute)
        self.shared = storage is not None
        # A moving window: a fixed window, or limits' sliding-window counter (which weighs the previous
        # minute as if its hits were spread evenly), lets a client that spends its budget at 0:59 spend
        # nearly all of it again by 1:58. The storages keep each key's last `per_minute` hit times.
        self._limiter = MovingWindowRateLimiter(storage or MemoryStorage())

    async def hit(self, client: str, endpoint: str) -> None:
        """Count one request; raise RateLimited (429 + Retry-After) when over the limit."""
        try:
            if await self._limiter.hit(self.item, endpoint, client):
                return
            stats = await self._limiter.get_window_stats(self.item, endpoint, client)
        except (SQLAlchemyError, OSError) as exc:  # OSError: asyncpg's refused connection is not wrapped
            raise store_unavailable(exc) from exc
        # reset_time is when the oldest hit in the window expires: the earliest a retry can succeed. If it expired
        # between the refusal and this look (the window has room again, and reads as starting now), that is now.
        wait = 1 if stats.remaining > 0 else math.ceil(stats.reset_time - time.time())
        retry_after = max(1, wait)
        raise RateLimited(
            f"Rate limit of {self.item.amount} requests per minute on {endpoint} reached for this client. "
            f"Retry after {retry_after} s.",
            retry_after=retry_after,
            limit_per_minute=self.item.amount,
        )

    async def first_in(self, item: RateLimitItem, endpoint: str, client: str) -> bool:
        """Whether this is the first hit of `client` on `endpoint` within `item`'s window (for notices).

        A store that does not answer means no: a notice is a courtesy, never worth failing over.
        """
        try:
            return await self._limiter.hit(item, "notice:" + endpoint, client)
        except (SQLAlchemyError, OSError):
            return False


# --- Chat senders ---------------------------------------------------------------------------------------
# WhatsApp messages and Slack mentions spend LLM tokens and Toggl quota like the HTTP endpoints, but their
# client is a person (a phone number, a Slack user), not an API key. Each sender draws on the same
# RATE_LIMIT_PER_MINUTE. Every notice we send back is itself a message (a billed one on WhatsApp), so a
# flooding sender is told at most once per window and otherwise ignored.
CHAT_NOTICE = RateLimitItemPerMinute(1)
#: A sender outside WHATSAPP_ALLOWED_SENDERS is told so at most once an hour.
STRANGER_NOTICE = RateLimitItemPerHour(1)


@dataclass(frozen=True)
class ChatAdmission:
    """Whether a chat message may be acted on; if not, the notice to send back (None: say nothing)."""

    allowed: bool
    notice: str | None = None


async def admit_chat_message(limiter: ClientRateLimiter, *, source: str, sender: str) -> ChatAdmission:
    """Count one message from `sender` on `source` ("whatsapp", "slack") against RATE_LIMIT_PER_MINUTE."""
    client, endpoint = f"{source}:{sender}", f"chat:{source}"
    try:
        await limiter.hit(client, endpoint)
        return ChatAdmission(allowed=True)
    except RateLimited as exc:
        notice = (
            f"You have sent more than {limiter.item.amount} messages in a minute, so this one was not acted on. "
            f"Wait {exc.retry_after} s and send it again."
        )
    except StoreUnavailable:
        # Fail closed, as the HTTP endpoints do; the notice cannot be counted either, so it is always sent.
        return ChatAdmission(
            allowed=False, notice="Sorry, this message could not be handled right now. Try again in a minute."
        )
    return ChatAdmission(
        allowed=False, notice=notice if await limiter.first_in(CHAT_NOTICE, endpoint, client) else None
    )


def store_unavailable(exc: BaseException) -> StoreUnavailable:
    """Fail closed: these endpoints spend money, and a request that cannot be counted is not attempted."""
    return StoreUnavailable(
        "The database that holds the shared rate-limit counts (RATE_LIMIT_STORAGE) did not answer "
        f"({type(exc).__name__}), so this costly request was not attempted. Check DATABASE_URL and retry.",
        retry_after=5,
        nothing_sent=True,
    )


def client_identity(request: Request) -> str:
    """The API key (hashed) when APP_API_KEY is set (the auth check has verified it), else the client address.

    Without APP_API_KEY nothing checks a sent key, so keying on it would let a client mint a fresh budget
    per request with `X-API-Key: r1`, `r2`, ... (found by a black-box review).

    When APP_API_KEY lists several keys (a rotation), each key is a client of its own: the keys are what tells
    clients apart, so two clients given two keys never share a budget, and one that sends both during a
    rotation has two. Only a listed key gets here, compared as the auth check compares it, so the budgets are as
    many as the keys, not the client's to mint.
    """
    settings = request.app.state.settings
    supplied = request.headers.get("x-api-key") if settings.app_api_key is not None else None
    if settings.app_api_key is not None and not supplied:
        authorization = request.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        supplied = credentials.strip() if scheme.lower() == "bearer" else ""
    # The key as `core.auth.key_refusal` checked it, without the blanks around it: uvicorn's httptools parser keeps
    # a trailing one, and `X-API-Key: <key> `, `<key>  `, ... each passed as the key yet had a budget of its own.
    supplied = (supplied or "").strip(" \t")
    if supplied:
        return "key:" + hashlib.sha256(supplied.encode()).hexdigest()[:32]
    if settings.trust_proxy_headers:
        forwarded = request.headers.get("x-forwarded-for", "")
        # The right-most entry is the one our own trusted proxy appended; the
        # left-most is whatever the client chose to send.
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return "ip:" + hops[-1]
    return "ip:" + (request.client.host if request.client else "unknown")


def limiter_for(settings: Settings, engine: AsyncEngine | None) -> ClientRateLimiter:
    """The limiter RATE_LIMIT_STORAGE asks for: counts in the database (shared) or in this worker's memory."""
    if settings.shared_rate_limit:
        if engine is None:
            raise RuntimeError("RATE_LIMIT_STORAGE=database needs the app's database engine")
        return ClientRateLimiter(settings.rate_limit_per_minute, DatabaseStorage(engine))
    return ClientRateLimiter(settings.rate_limit_per_minute)


async def get_rate_limiter(request: Request) -> ClientRateLimiter:
    """One limiter per app, created on first use (no await in between, so no race)."""
    limiter = getattr(request.app.state, _STATE_ATTRIBUTE, None)
    if limiter is None:
        resources = getattr(request.app.state, "resources", None)
        limiter = limiter_for(request.app.state.settings, resources.engine if resources else None)
        setattr(request.app.state, _STATE_ATTRIBUTE, limiter)
    return limiter


async def enforce_rate_limit(
    request: Request, limiter: Annotated[ClientRateLimiter, Depends(get_rate_limiter)]
) -> None:
    route = request.scope.get("route")
    # The route template, not the raw path: /runs/1 and /runs/2 share one budget.
    endpoint = getattr(route, "path", None) or request.url.path
    key = request.headers.get("idempotency-key")
    resources = getattr(request.app.state, "resources", None)
    if key and resources is not None:
        try:
            answered = await key_already_answered(resources.sessions, key=key)
        except (SQLAlchemyError, OSError) as exc:
            raise store_unavailable(exc) from exc
        if answered:
            return  # a replay spends nothing
    await limiter.hit(client_identity(request), endpoint)


RateLimitDep = Depends(enforce_rate_limit)
#: The limiter itself, for routes that count their own clients (the chat webhooks).
RateLimiterDep = Annotated[ClientRateLimiter, Depends(get_rate_limiter)]
