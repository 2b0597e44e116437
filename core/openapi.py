"""OpenAPI post-processing, in one place: every error as problem details, and the headers an answer to an
`Idempotency-Key` can carry."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from core.errors import PROBLEM_CONTENT_TYPE, ProblemDetails
from core.idempotency import KEY_HEADER, REPLAY_HEADER, REPLAYABLE_HEADER

_PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}
#: What core/middleware.py answers for any request body, before a route sees it.
_BODY_REFUSALS = {
    "408": "The request body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS; nothing ran",
    "415": "The body was sent compressed (Content-Encoding); send it uncompressed",
}

#: What core.auth answers on a key-protected route when no APP_API_KEY is set and Host is a domain name.
_HOST_REFUSAL = "Without APP_API_KEY: the request was addressed to a domain name, not to 127.0.0.1 or localhost"

#: Answered before the route runs (the API key, the Host, the body's arrival or its encoding): never an answer
#: stored for an Idempotency-Key, so never a replay. Any other status can be one: a success, a 500/502/504, and
#: a problem saying `outcome_unknown` or naming `sent_sids` whatever its status (core.idempotency).
_NEVER_REPLAYED = frozenset({"401", "403", "408", "415"})
_REPLAYED = {
    "description": "`true` when this is the stored answer of an earlier request with the same Idempotency-Key "
    "and body, replayed: nothing ran again. Kept for replay: successes, 500/502/504, and any problem with "
    "`outcome_unknown` or `sent_sids`. A replay is final for its key and never carries Retry-After.",
    "schema": {"type": "string", "enum": ["true"]},
}
_NOT_REPLAYABLE = {
    "description": "`false` when this answer is one kept for replay (a success, or a failure such as a 502 or an "
    "`outcome_unknown` problem) but the database failed to store it for its Idempotency-Key: not replayable yet. "
    "It is stored as soon as the database is back (tried for 30 s); until then a retry with that key gets a 409 "
    "(retry shortly), after it the replay; if it never is, a 409 naming the run. Never a second run. Keep this "
    "answer (or read GET /runs/{run_id}).",
    "schema": {"type": "string", "enum": ["false"]},
}


def install_problem_schema(app: FastAPI) -> None:
    """Register ProblemDetails and make FastAPI's automatic 422 entries say problem+json; document the headers
    of an Idempotency-Key's answers on the operations that take one.

    FastAPI documents request validation as `application/json` with its own
    HTTPValidationError model; our handler answers RFC 9457 instead, so the
    schema must say so or Swagger UI and schemathesis would be told a lie.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["ProblemDetails"] = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "requestBody" in operation:
                    for code, description in _BODY_REFUSALS.items():
                        operation.setdefault("responses", {}).setdefault(code, {"description": description})
                if operation.get("security"):  # the API key's routes: core.auth.host_refusal's 403
                    operation.setdefault("responses", {}).setdefault("403", {"description": _HOST_REFUSAL})
                for code, response in operation.get("responses", {}).items():
                    if code.startswith(("4", "5")):
                        response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_REF}}
                        response.setdefault("description", "Problem details")
                if _takes_idempotency_key(operation):
                    _document_idempotency_headers(operation)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _takes_idempotency_key(operation: dict[str, Any]) -> bool:
    """Whether the operation reads `Idempotency-Key` (the routes whose dependency is `idempotency_for`)."""
    return any(
        parameter.get("in") == "header" and str(parameter.get("name", "")).lower() == KEY_HEADER.lower()
        for parameter in operation.get("parameters", [])
    )


def _document_idempotency_headers(operation: dict[str, Any]) -> None:
    """Both headers on every answer a replay can be: neither was in the schema, so Swagger UI and generated
    clients did not know a replay or an unstorable answer.

    `Idempotent-Replayable` was on the successes only, while a failure kept for replay whose store failed was
    answered without it and never stored; it is now stored late like a success, with the header, so any answer
    that can be stored can also be one whose store failed."""
    for code, response in operation.get("responses", {}).items():
        headers = response.setdefault("headers", {})
        if code not in _NEVER_REPLAYED:
            headers.setdefault(REPLAY_HEADER, dict(_REPLAYED))
            headers.setdefault(REPLAYABLE_HEADER, dict(_NOT_REPLAYABLE))
        if not headers:
            del response["headers"]
