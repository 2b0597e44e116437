"""Hostile bodies against every endpoint: over-size (declared and chunked), malformed JSON, malformed forms.

The routes are discovered from the app itself, so a new endpoint is covered
the day it is added. Expected: 413 for too large, some 4xx for malformed,
never a 5xx, and always a problem-details body.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI

from bench.fakes import build_vendor_app, vendor_settings
from core.errors import PROBLEM_CONTENT_TYPE
from core.middleware import RequestContextMiddleware

API_KEY = "hostile-test-key"
LIMIT = 4096


@pytest.fixture
async def vendors() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """Every vendor faked on 127.0.0.1, in case a malformed request ever got as far as an upstream call."""
    counts: dict[str, int] = {}
    runner = web.AppRunner(build_vendor_app(counts=counts), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", counts
    finally:
        await runner.cleanup()


@pytest.fixture
async def hostile_client(make_client, vendors) -> AsyncIterator[httpx.AsyncClient]:
    base_url, _ = vendors
    settings = {**vendor_settings(base_url), "app_api_key": API_KEY, "max_body_bytes": LIMIT}
    async with make_client(**settings) as client:
        client.headers["X-API-Key"] = API_KEY
        yield client


def _body_routes(app: FastAPI, *, required_only: bool = False) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation that takes a request body, read from the app's OpenAPI."""
    found = []
    for template, operations in app.openapi()["paths"].items():
        path = re.sub(r"\{[^}]+\}", "x", template)
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if method in ("post", "put", "patch") and body and (body.get("required") or not required_only):
                found.append((method.upper(), path))
    return found


def _assert_problem(response: httpx.Response, method: str, path: str) -> None:
    where = f"{method} {path} -> {response.status_code}: {response.text[:300]}"
    assert 400 <= response.status_code < 500, where
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE), where
    body = response.json()
    assert body["status"] == response.status_code, where
    assert isinstance(body["title"], str) and isinstance(body["detail"], str), where


MALFORMED = [
    pytest.param("application/json", b'{"task": ', id="json-truncated"),
    pytest.param("application/json", b"\xff\xfe\x00garbage", id="json-not-utf8"),
    pytest.param("application/json", b"[1, 2, 3]", id="json-wrong-type"),
    pytest.param("application/json", b'"just a string"', id="json-scalar"),
    # Empty, and NaN in an ignored field, are fine where the body is optional: tested where it is required.
    pytest.param("application/json", b"", id="json-empty"),
    pytest.param("application/json", b'{"a": NaN, "b": Infinity}', id="json-nan"),
    # Under LIMIT (4 KiB), so it reaches the parser: 5,000 levels were refused as too large (413) before parsing.
    pytest.param("application/json", b"[" * 1100 + b"]" * 1100, id="json-deep-nesting"),
    pytest.param("application/x-www-form-urlencoded", b"%zz=%%&&==&Body=%E0%A4%A", id="form-bad-percent"),
    pytest.param("application/x-www-form-urlencoded", b"\xff\xfe\xfd=\x00", id="form-not-utf8"),
    pytest.param("multipart/form-data; boundary=xyz", b"--xyz\r\nbroken", id="multipart-broken"),
    pytest.param("multipart/form-data", b"no boundary at all", id="multipart-no-boundary"),
    pytest.param("text/plain", b"hello", id="wrong-content-type"),
]


@pytest.mark.parametrize(("content_type", "body"), MALFORMED)
async def test_malformed_bodies_get_a_4xx_problem_everywhere(hostile_client, vendors, content_type, body):
    routes = _body_routes(hostile_client.app, required_only=body in (b"", b'{"a": NaN, "b": Infinity}'))
    assert routes, "the app has no endpoint that takes a body"
    for method, path in routes:
        response = await hostile_client.request(method, path, content=body, headers={"Content-Type": content_type})
        _assert_problem(response, method, path)
    # Nothing malformed may have reached an upstream.
    _, counts = vendors
    assert counts == {}


async def test_declared_oversize_body_is_refused_everywhere(hostile_client):
    for method, path in _body_routes(hostile_client.app):
        response = await hostile_client.request(
            method, path, content=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413, f"{method} {path}: {response.status_code}"
        _assert_problem(response, method, path)
        assert response.json()["limit_bytes"] == LIMIT


async def test_a_compressed_body_is_415_everywhere_and_nothing_runs(hostile_client, vendors):
    """Found by a black-box review: a gzipped JSON body was a 400 "it must be UTF-8", naming the wrong cause.
    Refused before a byte is read, with or without the key, and before any upstream or ledger write."""
    import gzip

    body = gzip.compress(b'{"message": "hi", "task_name": "x", "text": "hi"}')
    for method, path in _body_routes(hostile_client.app):
        for key in (API_KEY, None):
            headers = {"Content-Type": "application/json", "Content-Encoding": "GZip "}
            if key is None:
                headers["X-API-Key"] = ""
            response = await hostile_client.request(method, path, content=body, headers=headers)
            assert response.status_code == 415, f"{method} {path}: {response.status_code} {response.text[:200]}"
            _assert_problem(response, method, path)
            assert response.json()["type"] == "/problems/unsupported-content-encoding"
            assert "Content-Encoding: gzip" in response.json()["detail"]
            assert response.headers["accept-encoding"] == "identity"
    _, counts = vendors
    assert counts == {}
    assert (await hostile_client.get("/runs")).json()["total"] == 0


async def test_an_identity_encoding_or_an_empty_compressed_body_is_not_refused(hostile_client):
    ok = {"Content-Type": "application/json", "Content-Encoding": "identity"}
    response = await hostile_client.post("/ai-process", json={"text": "hi"}, headers=ok)
    assert response.status_code != 415
    # No body at all: nothing to decode, so the route's own answer (here the missing body's 422).
    response = await hostile_client.post("/ai-process", headers={"Content-Encoding": "gzip", "Content-Length": "0"})
    assert response.status_code == 422


def test_every_operation_taking_a_body_documents_the_middlewares_408_and_415(hostile_client):
    schema = hostile_client.app.openapi()
    for template, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                for code in ("408", "415"):
                    assert code in operation["responses"], f"{method} {template} lacks {code}"
                    assert PROBLEM_CONTENT_TYPE in operation["responses"][code]["content"]


async def _chunks(total: int, size: int = 1000) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b" " * piece


async def test_chunked_oversize_body_without_content_length_is_refused_everywhere(hostile_client):
    for method, path in _body_routes(hostile_client.app):
        request = hostile_client.build_request(
            method, path, content=_chunks(LIMIT * 3), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in request.headers  # really chunked
        response = await hostile_client.send(request)
        # Refused while reading, before the JSON parser ever saw it. (A route that
        # answers without reading the body at all, such as a 401 or 405, is also fine.)
        assert response.status_code in (401, 403, 405, 413), f"{method} {path}: {response.status_code}"
        _assert_problem(response, method, path)


async def test_lying_content_length_cannot_smuggle_a_larger_body():
    """Content-Length says small, the stream is large: the middleware counts real bytes."""
    read: list[int] = []

    async def app(scope, receive, send):
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        read.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = RequestContextMiddleware(app, max_body_bytes=LIMIT)
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        request = client.build_request("POST", "/", content=_chunks(LIMIT * 2), headers={"Content-Length": "10"})
        response = await client.send(request)
    assert response.status_code == 413
    assert read == []  # the app never finished reading it


async def test_body_exactly_at_the_limit_is_accepted():
    async def app(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(message["body"])).encode()})

    transport = httpx.ASGITransport(app=RequestContextMiddleware(app, max_body_bytes=LIMIT))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/", content=b"x" * LIMIT)
    assert (response.status_code, response.text) == (200, str(LIMIT))


async def _counting_app(scope, receive, send):
    total = 0
    while True:
        message = await receive()
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


@pytest.mark.parametrize(("size", "status"), [(LIMIT, 200), (LIMIT + 1, 413)])
async def test_a_chunked_body_is_refused_one_byte_past_the_limit(size, status):
    """Found by a mutation review: the limit on a body sent without Content-Length was untested at its edge."""
    transport = httpx.ASGITransport(app=RequestContextMiddleware(_counting_app, max_body_bytes=LIMIT))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        request = client.build_request("POST", "/", content=_chunks(size, size=LIMIT // 3))
        assert "content-length" not in request.headers
        response = await client.send(request)
    assert response.status_code == status


async def test_a_declared_oversize_body_is_refused_before_a_byte_is_read():
    """Found by a mutation review: the read-time count hid a Content-Length check that let the body be read."""
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        async for piece in _chunks(LIMIT + 1):
            pulled.append(len(piece))
            yield piece

    transport = httpx.ASGITransport(app=RequestContextMiddleware(_counting_app, max_body_bytes=LIMIT))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        request = client.build_request("POST", "/", content=body(), headers={"Content-Length": str(LIMIT + 1)})
        response = await client.send(request)
    assert response.status_code == 413
    assert pulled == []


# --- The answers say what to fix (found by a black-box review) -------------------------------------------------


async def test_malformed_json_names_the_body_and_the_position_not_a_field_called_11(hostile_client):
    response = await hostile_client.post(
        "/slack-notify", content=b'{"message":', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "body"
    assert error["message"].startswith("Malformed JSON at character 11")
    assert error["message"].endswith("Send a JSON object with Content-Type: application/json.")


@pytest.mark.parametrize(
    ("content_type", "body", "shown"),
    [
        ("text/plain", b"hello", "text/plain"),
        ("application/x-www-form-urlencoded", b"message=hi", "application/x-www-form-urlencoded"),
    ],
)
async def test_a_non_json_body_is_told_to_send_json(hostile_client, content_type, body, shown):
    response = await hostile_client.post("/slack-notify", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error == {
        "field": "body",
        "message": f"The body was sent as {shown}. Send a JSON object with Content-Type: application/json.",
        "type": error["type"],
    }


async def test_a_body_without_a_content_type_says_so(hostile_client):
    """It read "The body was sent as no Content-Type." (found by review)."""
    response = await hostile_client.post("/slack-notify", content=b"hello")  # httpx adds no Content-Type here
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["message"] == (
        "The body was sent without a Content-Type. Send a JSON object with Content-Type: application/json."
    )


async def test_an_undecodable_body_is_a_bad_request_problem_not_about_blank(hostile_client):
    response = await hostile_client.post(
        "/slack-notify", content=b'{"message":"\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "/problems/bad-request"
    assert body["detail"] == (
        "The body could not be parsed (it must be UTF-8). Send a JSON object with Content-Type: application/json."
    )


# --- A body that never finishes arriving (found by a security review) ------------------------------------------


async def _trickle(pieces: int, pause: float) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        yield b" "
        await asyncio.sleep(pause)


async def test_a_body_trickled_past_the_deadline_is_408_before_the_key_is_checked(make_client):
    """One byte every 20 s kept an unauthenticated request open for good: uvicorn bounds no wait for a pending
    body. The whole body must now arrive within REQUEST_BODY_TIMEOUT_SECONDS of the request's start."""
    from bench.fakes import Latencies

    counts: dict[str, int] = {}
    runner = web.AppRunner(build_vendor_app(Latencies({"gemini": 0.6}), counts=counts), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    settings = {**vendor_settings(base_url), "app_api_key": API_KEY, "request_body_timeout_seconds": 0.3}
    try:
        async with make_client(**settings) as client:
            started = asyncio.get_running_loop().time()
            response = await client.post(
                "/ai-process",
                content=_trickle(100, 0.05),
                headers={"Content-Type": "application/json", "Content-Length": "100"},
            )
            took = asyncio.get_running_loop().time() - started
            # An answer slower than the deadline (0.6 s upstream) is not cut: the deadline is the body's only.
            client.headers["X-API-Key"] = API_KEY
            slow_answer = await client.post("/ai-process", json={"text": "hi", "provider": "gemini"})
    finally:
        await runner.cleanup()
    assert response.status_code == 408
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert (body["type"], body["limit_seconds"]) == ("/problems/request-timeout", 0.3)
    assert body["detail"].startswith("The request body did not arrive within 0.3 s (REQUEST_BODY_TIMEOUT_SECONDS)")
    assert took < 3  # not the 5 s the trickle would take
    assert slow_answer.status_code == 200, slow_answer.text
    assert counts == {"gemini": 1}  # only the second request reached an upstream


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        pytest.param(b"[" * 5000 + b"]" * 5000, "nested more deeply than the JSON parser allows", id="deep-nesting"),
        pytest.param(b'{"message": ' + b"9" * 5000 + b"}", "a number with more than 4300 digits", id="huge-number"),
    ],
)
async def test_a_body_python_cannot_parse_names_the_real_cause(make_client, body, cause):
    """Found by a security review: deep nesting and a 5,000-digit number were a 400 "it must be UTF-8"."""
    async with make_client(app_api_key=API_KEY) as client:  # the default MAX_BODY_BYTES: hostile_client's is 4 KiB
        response = await client.post(
            "/slack-notify", content=body, headers={"Content-Type": "application/json", "X-API-Key": API_KEY}
        )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert cause in detail, detail
    assert "UTF-8" not in detail
