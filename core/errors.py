"""Domain errors and their one mapping to RFC 9457 problem details.

Code anywhere raises a `ProblemError` subclass that says what went wrong in
domain terms (`UpstreamRateLimited(retry_after=30)`); `add_exception_handlers`
is the only place that turns errors into HTTP responses.

Every body built here (`problem_body`, `problem_response`) is passed through the
serving app's secret scrubber (core/secrets.py), members and extras included: a
detail may quote an upstream that echoed the credential it was sent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.context import current_request_id
from core.problem_types import PROBLEM_TYPES
from core.secrets import current_scrubber

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"

logger = logging.getLogger("orchestrator.errors")


#: How every "did it happen?" failure's detail says so (`core.upstream.outcome_unknown`); the ledger finds such
#: failures by it (`Ledger.unsettled_starts`).
OUTCOME_UNKNOWN = "The outcome is unknown"

#: Who reads a message: an HTTP API caller (curl, Swagger UI, GET /runs) or a person in a chat (WhatsApp, Slack).
#: The facts are the same for both; how to act on them is not: an API caller can send `GET /timers/current` or
#: pass `workspace_id`, a chat user can only send a command of `workflows.commands`' grammar or ask the operator.
Audience = Literal["api", "chat"]


@dataclass(frozen=True)
class PerAudience:
    """The one clause of a sentence that differs by reader (`Audience`): what to do about it."""

    api: str
    chat: str

    def words(self, audience: Audience) -> str:
        return self.api if audience == "api" else self.chat

    def capitalized(self) -> PerAudience:
        """The clause opening a sentence: each reader's wording with its first letter upper-cased."""
        return PerAudience(api=self.api[:1].upper() + self.api[1:], chat=self.chat[:1].upper() + self.chat[1:])


@dataclass(frozen=True)
class Phrase:
    """A sentence written once, with its reader-dependent clauses as `PerAudience` parts, worded by `words`.

    Joins with `+` to text and to other phrases, so an error's detail is built as before (`detail +
    outcome_unknown(...)`) and the whole detail stays one source for both readers.
    """

    parts: tuple[str | PerAudience, ...]

    def words(self, audience: Audience) -> str:
        return "".join(part if isinstance(part, str) else part.words(audience) for part in self.parts)

    def __add__(self, other: str | PerAudience | Phrase) -> Phrase:
        return Phrase(self.parts + (other.parts if isinstance(other, Phrase) else (other,)))

    def __radd__(self, other: str | PerAudience) -> Phrase:
        return Phrase((other, *self.parts))


def worded(text: str | PerAudience | Phrase, audience: Audience) -> str:
    """`text` as `audience` reads it; plain text reads the same to everyone."""
    return text if isinstance(text, str) else text.words(audience)


class ConfigurationError(Exception):
    """Settings are invalid; the service must not start. The message is safe to print."""


class ProblemError(Exception):
    """Base class of every error that becomes a problem-details response."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"
    #: Whether the same call may succeed if tried again (read by core.upstream.with_retries).
    retryable: bool = False
    #: Seconds the upstream asked us to wait before trying again, when it said.
    retry_after: float | None = None

    def __init__(
        self,
        detail: str | Phrase,
        *,
        status: int | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
        **extras: Any,
    ) -> None:
        super().__init__(worded(detail, "api"))
        self._detail = detail
        if retryable is not None:
            self.retryable = retryable
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.headers = headers or {}
        self.extras = {key: value for key, value in extras.items() if value is not None}

    @property
    def detail(self) -> str:
        """The problem body's `detail`: worded for an API caller (the HTTP answer, the ledger, the logs)."""
        return worded(self._detail, "api")

    @detail.setter
    def detail(self, value: str) -> None:
        # A detail rewritten after the raise (a WhatsApp part's note) reads the same to every reader.
        self._detail = value

    def words(self, audience: Audience) -> str:
        """The detail as `audience` reads it: a chat reply relays `words("chat")`, never `detail`, since only the
        API caller can send the API calls a detail may name (`GET /timers/current`, `POST /start-timer`)."""
        return worded(self._detail, audience)

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def wait(self, retry_after: float | None) -> ProblemError:
        """Say when to try again, as the upstream did: the attribute (read by the retry loop), the `Retry-After`
        header and the `retry_after` member. Nothing when it did not say."""
        if retry_after is not None:
            self.retry_after = retry_after
            self.headers["Retry-After"] = str(_whole_seconds(retry_after))
            self.extras["retry_after"] = _whole_seconds(retry_after)
        return self


class BadRequest(ProblemError):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ProblemError):
    status, slug, title = 401, "unauthorized", "Authentication required"


class Forbidden(ProblemError):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ProblemError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(ProblemError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ProblemError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class InvalidInput(ProblemError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class _ComeBackLater(ProblemError):
    """A refusal of ours that says when to try again: the Retry-After header, the `retry_after` member, and the
    attribute (read by code that words its own notice: it said "Wait None s" before; found by a review)."""

    def __init__(self, detail: str, *, retry_after: int | None = None, **extras: Any) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(detail, headers=headers, retry_after=retry_after, **extras)
        self.retry_after = retry_after


class RateLimited(_ComeBackLater):
    """Our own per-client limit was hit."""

    status, slug, title = 429, "rate-limited", "Too many requests"


class StoreUnavailable(_ComeBackLater):
    """The service's own database did not answer, so a request that must be counted or recorded first was refused."""

    status, slug, title = 503, "store-unavailable", "Database unavailable"


#: "not configured" is the operator's word; a chat user reads that the integration is not set up yet.
CONFIGURED = PerAudience(api="configured", chat="set up yet")


#: Who sets a missing setting, by reader: an API caller is told to set it; a chat user, that the operator must.
OPERATOR_SETS = PerAudience(api="set", chat="the operator must set")


#: Who checks a setting an upstream rejected (a key or token refused, a scope missing), by reader: an API caller is
#: told to check it; a chat user, to ask the operator, who alone can change it (a WhatsApp `start` whose Toggl token
#: was refused told them to "check TOGGL_API_TOKEN"). `.capitalized()` where it opens a sentence.
OPERATOR_CHECKS = PerAudience(api="check", chat="ask the operator to check")


def operator_checks(what: str) -> Phrase:
    """A sentence asking to check a setting, by reader: "Check X" to an API caller, "Ask the operator to check X"
    to a chat user (`OPERATOR_CHECKS`). For the address hints ("Check GEMINI_BASE_URL."): a Gemini that could not
    be reached told a person on WhatsApp to check a base URL only the operator can change. `what` follows the
    verb, its full stop included."""
    return Phrase((OPERATOR_CHECKS.capitalized(), f" {what}"))


def set_and_restart(names: str) -> Phrase:
    """The remedy of a missing setting, by reader: "set X in the environment or .env and restart." to an API
    caller; "the operator must set X ... and restart the service." to a chat user, who can set no environment
    variable (a WhatsApp `start` without Toggl's token told them to). Names the settings, never their values."""
    return Phrase(
        (
            OPERATOR_SETS,
            f" {names} in the environment or .env and restart",
            PerAudience(api=".", chat=" the service."),
        )
    )


class NotConfigured(ProblemError):
    """A skill or provider is missing settings. Names the variables, never their values; the default detail's
    remedy is worded per reader (`set_and_restart`)."""

    status, slug, title = 503, "not-configured", "Integration not configured"

    def __init__(self, integration: str, missing: Sequence[str], detail: str | Phrase | None = None) -> None:
        names = ", ".join(missing)
        super().__init__(
            detail or Phrase((f"{integration} is not ", CONFIGURED, ": ")) + set_and_restart(names),
            integration=integration,
            missing_settings=list(missing),
        )


class UpstreamError(ProblemError):
    """An upstream API failed or answered something we cannot use."""

    status, slug, title = 502, "upstream-error", "Upstream service failed"

    def __init__(self, detail: str | Phrase, *, upstream: str, status: int | None = None, **extras: Any) -> None:
        super().__init__(detail, status=status, upstream=upstream, **extras)


class UpstreamTimeout(UpstreamError):
    status, slug, title = 504, "upstream-timeout", "Upstream service timed out"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    """Connection refused or reset, or an HTTP 503: the upstream could not serve the call."""

    status, slug, title = 503, "upstream-unavailable", "Upstream service unreachable"
    retryable = True


class UpstreamRateLimited(UpstreamError):
    status, slug, title = 429, "upstream-rate-limited", "Upstream rate limit reached"
    retryable = True

    def __init__(self, detail: str | Phrase, *, upstream: str, retry_after: float | None = None, **extras: Any) -> None:
        super().__init__(detail, upstream=upstream, retry_after=_whole_seconds(retry_after), **extras)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers["Retry-After"] = str(_whole_seconds(retry_after))


def _whole_seconds(value: float | None) -> int | None:
    if value is None:
        return None
    return max(0, int(-(-value // 1)))  # ceiling without importing math


# --- Problem-details body, also used to document errors in OpenAPI ------------


class ProblemDetails(BaseModel):
    """RFC 9457 problem details. Extra members carry machine-readable context."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "type": "/problems/not-configured",
                "title": "Integration not configured",
                "status": 503,
                "detail": "toggl is not configured: set TOGGL_API_TOKEN in the environment or .env and restart.",
                "instance": "/start-timer",
                "request_id": "5f0c8a0e2b7e4c1d9a3b6e1f2d4c8b7a",
                "missing_settings": ["TOGGL_API_TOKEN"],
            }
        },
    )

    type: str = Field(description="A URI reference that identifies the problem type.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing or wrong API key (X-API-Key or Authorization: Bearer)",
    403: "Signature missing or invalid",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request too large",
    422: "Invalid input; `errors` lists the failing fields",
    429: "Rate limited; see Retry-After",
    502: "Upstream service failed",
    503: "Integration not configured, upstream unreachable, or the service's database unavailable",
    504: "Upstream service timed out",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries documenting problem-details errors in OpenAPI."""
    return {
        status: {
            "model": ProblemDetails,
            "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }


# --- The one mapping from errors to responses ---------------------------------


def problem_title(type_: str, title: str) -> str:
    """The one title of a problem type (RFC 9457 3.1.3: the same for every occurrence of the type), from the
    catalogue that `GET /problems/{slug}` serves; `title` for a type not in it (about:blank)."""
    entry = PROBLEM_TYPES.get(type_.removeprefix(PROBLEM_BASE)) if type_.startswith(PROBLEM_BASE) else None
    return entry.title if entry is not None else title


def problem_body(exc: ProblemError, instance: str | None = None) -> dict[str, Any]:
    """The JSON body for a domain error, as the handler sends it and the idempotency store keeps it: scrubbed."""
    body: dict[str, Any] = {
        "type": exc.type,
        "title": problem_title(exc.type, exc.title),
        "status": exc.status,
        "detail": exc.detail,
    }
    if instance is not None:
        body["instance"] = instance
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    for key, value in exc.extras.items():
        body.setdefault(key, value)
    return current_scrubber().scrub_value(body)


def problem_response(
    *,
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extras: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": problem_title(type_, title), "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    for key, value in (extras or {}).items():
        body.setdefault(key, value)
    body = current_scrubber().scrub_value(body)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


SEND_JSON = "Send a JSON object with Content-Type: application/json."


def _unparsable_because(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body (it chains the cause): every case read "it must be UTF-8", also deep
    nesting and a 5,000-digit number (found by a security review)."""
    if isinstance(cause, RecursionError):
        return "it is nested more deeply than the JSON parser allows"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"it has a number with more than {sys.get_int_max_str_digits()} digits"
    return "it must be UTF-8"


def _validation_errors(errors: Iterable[dict[str, Any]], *, content_type: str = "") -> list[dict[str, Any]]:
    # Only location, message and type: echoing the rejected input could echo a secret.
    return [_validation_error(error, content_type) for error in errors]


def _validation_error(error: dict[str, Any], content_type: str) -> dict[str, Any]:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    message = error.get("msg", "")
    if kind == "json_invalid":
        # FastAPI puts the character offset in the location ("body.11"): it is not a field.
        position = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "")
        return {
            "field": "body",
            "message": f"Malformed JSON{position}" + (f": {reason}" if reason else "") + f". {SEND_JSON}",
            "type": kind,
        }
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type") and "json" not in content_type:
        # A form or text body reaches a JSON endpoint as a string; "a valid dictionary" does not say why.
        shown = content_type.split(";")[0].strip()
        sent = f"The body was sent as {shown}." if shown else "The body was sent without a Content-Type."
        return {"field": "body", "message": f"{sent} {SEND_JSON}", "type": kind}
    return {"field": ".".join(str(part) for part in loc), "message": message, "type": kind}


def _refused_before_body(request: Request) -> JSONResponse | None:
    """The 401 or 403 `require_api_key` would give, for a body that could not be parsed on a route that needs
    the key: the key missing or wrong, or (no APP_API_KEY) a Host naming a domain (DNS rebinding).

    FastAPI parses the body before any dependency runs, so those checks would otherwise come second.
    """
    from core.auth import refusal_before_body  # core.auth imports this module

    refusal = refusal_before_body(request)
    if refusal is None:
        return None
    return JSONResponse(
        problem_body(refusal, request.url.path),
        status_code=refusal.status,
        headers=refusal.headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def from_the_database(exc: BaseException) -> bool:
    """Whether `exc` was raised by the database layer (SQLAlchemy, or a driver: asyncpg's connect raises a plain
    ConnectionRefusedError, which SQLAlchemy does not wrap)."""
    if isinstance(exc, SQLAlchemyError):
        return True
    traceback = exc.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("sqlalchemy.", "asyncpg.", "aiosqlite.")):
            return True
        traceback = traceback.tb_next
    return False


def database_failed(exc: BaseException, *, acted: bool = True) -> StoreUnavailable:
    """The 503 for the service's own database failing; `acted=False` where nothing can have been done yet."""
    reason = f"The service's database did not answer ({type(exc).__name__})"
    if not acted:
        return StoreUnavailable(
            f"{reason}, so the request was not attempted. Check DATABASE_URL and the database, then retry.",
            retry_after=5,
            nothing_sent=True,
        )
    return StoreUnavailable(
        f"{reason} while the request ran, so what it did may not be recorded. {OUTCOME_UNKNOWN}: check "
        "GET /runs once the database is back before retrying.",
        retry_after=5,
        outcome_unknown=True,
    )


def delivery_database_failed(exc: BaseException, *, delivery: str, redelivery: str) -> StoreUnavailable:
    """The 503 for a webhook delivery whose claim the database did not take: nothing ran, since the claim comes
    first. `redelivery` says what a resend of it will meet.

    The generic mapping of a database error on a POST said "the outcome is unknown: check GET /runs", for a
    delivery that had done nothing and left nothing in GET /runs (found by a review).
    """
    return StoreUnavailable(
        f"The service's database did not answer ({type(exc).__name__}) before the {delivery} could be acted on, "
        f"so nothing was done. {redelivery}",
        retry_after=5,
        nothing_sent=True,
    )


def _routed(request: Request, path: str) -> bool:
    """Whether some route answers `path` (with any method): Starlette's own matching, as the router does it."""
    scope = {**request.scope, "path": path}
    return any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes)


def add_exception_handlers(app: FastAPI) -> None:
    """Install the mapping. Unexpected exceptions are handled by RequestContextMiddleware."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        body = problem_body(exc, request.url.path)
        if exc.status >= 500:
            logger.warning("%s %s -> %s %s: %s", request.method, request.url.path, exc.status, exc.slug, body["detail"])
        headers = exc.headers
        if headers and body.get("outcome_unknown") is True:
            # The detail says to check before retrying; a Retry-After header invites clients to retry at once
            # (found by a black-box review: a Toggl 503 "check before retrying" carried Retry-After: 5).
            headers = {name: value for name, value in headers.items() if name.lower() != "retry-after"}
        return JSONResponse(body, status_code=exc.status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)
    async def _store(request: Request, exc: Exception) -> JSONResponse:
        # The service's own database did not answer mid-request. It was a 500 "a bug" (found by a review), and
        # docs/errors.md says a 500 may have acted. Where nothing can have acted yet (the Idempotency-Key claim,
        # a durable run start) the refusal is raised as a StoreUnavailable with `nothing_sent` there instead.
        if isinstance(exc, OSError) and not from_the_database(exc):
            raise exc  # another OSError: a bug, answered as a 500 by RequestContextMiddleware
        # A read (GET /runs, /schedule) acted on nothing: it told the caller its outcome was unknown and to check
        # GET /runs before retrying, on GET /runs itself (found by a user review). A plain retry is safe.
        return await _problem(request, database_failed(exc, acted=request.method not in ("GET", "HEAD")))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(error.get("type") == "json_invalid" for error in exc.errors()) and (
            refused := _refused_before_body(request)
        ):
            return refused
        errors = _validation_errors(exc.errors(), content_type=request.headers.get("content-type", "").lower())
        fields = ", ".join(error["field"] for error in errors) or "request"
        return problem_response(
            status=422,
            title="Invalid input",
            detail=f"The request is invalid: check {fields}.",
            type_=PROBLEM_BASE + "invalid-input",
            instance=request.url.path,
            extras={"errors": errors},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            # Starlette's words for a body it cannot decode (invalid UTF-8, a broken multipart form).
            if refused := _refused_before_body(request):
                return refused
            return problem_response(
                status=400,
                title="Malformed request",
                detail=f"The body could not be parsed ({_unparsable_because(exc.__cause__)}). {SEND_JSON}",
                type_=PROBLEM_BASE + "bad-request",
                instance=request.url.path,
            )
        if exc.status_code == 404 and detail is None:
            detail = f"No route matches {request.url.path}. See /docs for the available endpoints."
            bare = request.url.path.rstrip("/")
            if bare and bare != request.url.path and _routed(request, bare):
                detail = f"No route matches {request.url.path}: the endpoint is {bare}, without the trailing slash."
        elif exc.status_code == 405 and detail is None:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
            detail = f"{request.method} is not allowed on {request.url.path}" + (
                f"; use {allowed}." if allowed else "."
            )
        return problem_response(
            status=exc.status_code,
            title=phrase,
            detail=detail or phrase,
            instance=request.url.path,
            headers=exc.headers,
        )
