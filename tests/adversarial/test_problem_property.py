"""Property: every error, however it arises, is a problem-details body that matches the documented schema.

Two sources of errors: every domain error class raised with arbitrary text and
extras (through the one mapping in core/errors.py), and arbitrary requests
(method, path, query) against the real app.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import errors
from core.errors import PROBLEM_CONTENT_TYPE, ProblemDetails, ProblemError, add_exception_handlers
from core.middleware import RequestContextMiddleware
from core.settings import Settings

text = st.text(max_size=200)
upstream = st.sampled_from(["slack", "toggl", "email", "whatsapp", "gemini", "claude"])
seconds = st.none() | st.floats(min_value=0, max_value=86_400, allow_nan=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
extras = st.dictionaries(st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True), json_values, max_size=3)

SIMPLE = [
    errors.BadRequest,
    errors.Unauthorized,
    errors.Forbidden,
    errors.NotFound,
    errors.Conflict,
    errors.PayloadTooLarge,
    errors.InvalidInput,
    errors.ProblemError,
]
UPSTREAM = [errors.UpstreamError, errors.UpstreamTimeout, errors.UpstreamUnavailable]

domain_errors = st.one_of(
    st.builds(lambda cls, detail, more: cls(detail, **more), st.sampled_from(SIMPLE), text, extras),
    st.builds(
        lambda cls, detail, name, more: cls(detail, upstream=name, **more),
        st.sampled_from(UPSTREAM),
        text,
        upstream,
        extras,
    ),
    st.builds(
        lambda detail, name, wait: errors.UpstreamRateLimited(detail, upstream=name, retry_after=wait),
        text,
        upstream,
        seconds,
    ),
    st.builds(
        lambda detail, wait: errors.RateLimited(detail, retry_after=wait),
        text,
        st.none() | st.integers(0, 3600),
    ),
    st.builds(errors.NotConfigured, upstream, st.lists(st.from_regex(r"[A-Z_]{3,20}", fullmatch=True), max_size=3)),
)


def _assert_problem(response, expected_status: int | None = None) -> dict:
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    # strict: "429" is not 429, and a missing title is not a default.
    ProblemDetails.model_validate(body, strict=True)
    assert body["status"] == response.status_code
    if expected_status is not None:
        assert response.status_code == expected_status
    assert body["type"].startswith("/problems/") or body["type"] == "about:blank"
    return body


_current: list[ProblemError] = []


def _error_app() -> FastAPI:
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/raise")
    async def raise_it() -> None:
        raise _current[0]

    return RequestContextMiddleware(app, max_body_bytes=4096)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def error_client() -> Iterator[TestClient]:
    with TestClient(_error_app(), raise_server_exceptions=False) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(error=domain_errors)
def test_every_domain_error_renders_as_a_valid_problem(error_client, error):
    _current[:] = [error]
    response = error_client.get("/raise")
    body = _assert_problem(response, expected_status=error.status)
    assert body["detail"] == error.detail
    assert body["instance"] == "/raise"
    for key in ("type", "title", "status", "detail"):  # extras never overwrite the standard members
        expected = {"type": error.type, "title": errors.problem_title(error.type, error.title), "status": error.status}
        assert body[key] == expected.get(key, body[key])
    if isinstance(error, errors.UpstreamRateLimited | errors.RateLimited) and error.headers.get("Retry-After"):
        assert response.headers["retry-after"].isdigit()


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from main import create_app

    directory: Path = tmp_path_factory.mktemp("problem-property")
    settings_ = Settings(
        _env_file=None,
        app_api_key="property-key",
        database_url=f"sqlite+aiosqlite:///{directory}/app.db",
        log_level="CRITICAL",
    )
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        yield client


# Any text, percent-encoded: the app sees arbitrary Unicode (and encoded slashes) in the path.
path_segments = st.lists(st.text(max_size=12).map(lambda part: quote(part, safe="")), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    segments=path_segments,
    prefix=st.sampled_from(["", "runs", "skills", "health", "docs", "start-timer", "ai-process", "webhooks"]),
    query=st.dictionaries(st.sampled_from(["limit", "offset", "kind", "dry_run", "status"]), text, max_size=3),
    key=st.sampled_from([None, "property-key", "wrong-key"]),
)
def test_any_request_error_is_a_valid_problem(app_client, method, segments, prefix, query, key):
    path = "/" + "/".join([prefix, *segments]).strip("/")
    headers = {"X-API-Key": key} if key else {}
    response = app_client.request(method, path, params=query, headers=headers)
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        _assert_problem(response)
