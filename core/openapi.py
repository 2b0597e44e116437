"""OpenAPI post-processing: document every error as problem details, in one place."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from core.errors import PROBLEM_CONTENT_TYPE, ProblemDetails

_PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}
#: What core/middleware.py answers for any request body, before a route sees it.
_BODY_REFUSALS = {
    "408": "The request body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS; nothing ran",
    "415": "The body was sent compressed (Content-Encoding); send it uncompressed",
}

#: What core.auth answers on a key-protected route when no APP_API_KEY is set and Host is a domain name.
_HOST_REFUSAL = "Without APP_API_KEY: the request was addressed to a domain name, not to 127.0.0.1 or localhost"


def install_problem_schema(app: FastAPI) -> None:
    """Register ProblemDetails and make FastAPI's automatic 422 entries say problem+json.

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
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
