"""Every error class answers RFC 9457 problem details from the one mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import NoReturn

import pytest

from core.errors import (
    NotConfigured,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.fakes.slack import FakeSlack

PROBLEM = "application/problem+json"
SLACK_TOKEN = "xoxb-errors-test-token"


def _assert_problem(response, status):
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_unknown_route_is_404(client):
    body = _assert_problem(await client.get("/no/such/route"), 404)
    assert "/docs" in body["detail"]


async def test_a_trailing_slash_is_a_404_naming_the_endpoint_not_a_redirect(client):
    """Found by a black-box review: /slack-notify/ was a 307 whose Location Starlette built from the request,
    http:// behind a TLS proxy or ngrok, so a client following it re-sent the API key in clear text."""
    response = await client.post("/slack-notify/", json={"message": "hi"}, headers={"X-Forwarded-Proto": "https"})
    body = _assert_problem(response, 404)
    assert "location" not in response.headers
    assert (
        body["detail"] == "No route matches /slack-notify/: the endpoint is /slack-notify, without the trailing slash."
    )
    assert (await client.get("/runs")).json()["total"] == 0
    # A path that is not an endpoint with a slash added keeps the general advice.
    assert "/docs" in _assert_problem(await client.get("/no-such-thing/"), 404)["detail"]


async def test_wrong_method_is_405_with_allow(client):
    response = await client.delete("/health")
    body = _assert_problem(response, 405)
    assert "GET" in response.headers["allow"]
    assert "DELETE" in body["detail"]


async def test_validation_lists_failing_fields(client):
    body = _assert_problem(await client.get("/runs", params={"limit": 0, "offset": -1}), 422)
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"query.limit", "query.offset"}


ERRORS = [
    (NotConfigured("toggl", ["TOGGL_API_TOKEN"]), 503, {"missing_settings": ["TOGGL_API_TOKEN"]}),
    (UpstreamError("Toggl answered 500", upstream="toggl"), 502, {"upstream": "toggl"}),
    (UpstreamTimeout("Slack did not answer", upstream="slack"), 504, {"upstream": "slack"}),
    (UpstreamUnavailable("SMTP refused", upstream="email"), 503, {"upstream": "email"}),
    (UpstreamRateLimited("slow down", upstream="slack", retry_after=2.5), 429, {"retry_after": 3}),
]


@pytest.mark.parametrize(("error", "status", "extras"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS])
async def test_domain_errors_map_to_problems(client, error, status, extras):
    async def raise_it():
        raise error

    client.app.add_api_route("/boom", raise_it)
    response = await client.get("/boom")
    body = _assert_problem(response, status)
    assert body["type"] == error.type
    for key, value in extras.items():
        assert body[key] == value
    if isinstance(error, UpstreamRateLimited):
        assert response.headers["retry-after"] == "3"
    if isinstance(error, NotConfigured):
        assert "TOGGL_API_TOKEN" in body["detail"]


async def test_unexpected_exception_is_500_with_request_id_and_no_trace(client, caplog):
    async def crash():
        raise RuntimeError("internal detail that must not leak")

    client.app.add_api_route("/crash", crash)
    with caplog.at_level(logging.ERROR, logger="orchestrator.errors"):
        response = await client.get("/crash", headers={"X-Request-ID": "req-123"})
    body = _assert_problem(response, 500)
    assert body["request_id"] == "req-123"
    assert "req-123" in body["detail"]
    assert "internal detail" not in response.text and "Traceback" not in response.text
    record = next(r for r in caplog.records if r.name == "orchestrator.errors")
    assert record.exc_info and "internal detail" in str(record.exc_info[1])


async def test_request_id_is_generated_or_honoured(client):
    generated = await client.get("/health")
    assert len(generated.headers["x-request-id"]) == 32
    honoured = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert honoured.headers["x-request-id"] == "abc-123"
    hostile = await client.get("/health", headers={"X-Request-ID": "evil value<script>"})
    assert hostile.headers["x-request-id"] != "evil value<script>"


async def test_body_over_limit_is_413_before_parsing(make_client):
    async with make_client(max_body_bytes=2048) as client:
        response = await client.post("/runs", content=b"x" * 4096, headers={"content-type": "application/json"})
    body = _assert_problem(response, 413)
    assert body["limit_bytes"] == 2048


# --- The service's own database failing (found by a review: a 500 "a bug", for a request that did nothing) ----


def _refused():
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


async def test_a_database_down_at_the_idempotency_claim_is_a_503_that_sent_nothing(make_client, monkeypatch):
    from core.idempotency import Idempotency

    async def down(self, fingerprint):
        raise _refused()

    monkeypatch.setattr(Idempotency, "_claim", down)
    async with make_client(slack_bot_token="xoxb-1", slack_default_channel="#general") as client:
        response = await client.post("/slack-notify", json={"message": "hi"}, headers={"Idempotency-Key": "k1"})
    assert response.status_code == 503
    body = response.json()
    assert (body["type"], body["nothing_sent"], response.headers["retry-after"]) == (
        "/problems/store-unavailable",
        True,
        "5",
    )
    assert body["detail"].startswith("The service's database did not answer (OperationalError), so the request")


async def test_a_database_failing_mid_request_is_a_503_whose_outcome_is_unknown(make_client, monkeypatch):
    from core.ledger import Ledger

    async def down(self, *args, **kwargs):
        raise _refused()

    monkeypatch.setattr(Ledger, "finish_run", down)
    async with make_client() as client:
        response = await client.post("/slack-notify", json={"message": "hi"}, params={"dry_run": "true"})
    assert response.status_code == 503
    body = response.json()
    assert (body["type"], body["outcome_unknown"]) == ("/problems/store-unavailable", True)
    assert "check GET /runs once the database is back before retrying" in body["detail"]


def _refusal_raised_in(module: str) -> Callable[[], NoReturn]:
    """A function that raises ConnectionRefusedError from a frame of `module`: how asyncpg's connect fails, a
    plain OSError that SQLAlchemy does not wrap."""
    code = compile("def go():\n    raise ConnectionRefusedError(111, 'Connection refused')\n", module, "exec")
    namespace = {"__name__": module}
    exec(code, namespace)
    return namespace["go"]


def test_only_an_oserror_from_the_database_layer_counts_as_the_database():
    from core.errors import from_the_database

    def raised_in(module: str) -> OSError:
        try:
            _refusal_raised_in(module)()
        except OSError as exc:
            return exc
        raise AssertionError("not raised")

    assert from_the_database(raised_in("asyncpg.connect_utils"))
    assert not from_the_database(raised_in("skills.email"))


@pytest.fixture
async def slack_fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=SLACK_TOKEN) as server:
        yield server


@pytest.fixture
def slack_client(make_client, slack_fake):
    return make_client(
        slack_bot_token=SLACK_TOKEN, slack_base_url=slack_fake.base_url, slack_default_channel="#general"
    )


async def test_a_database_driver_oserror_mid_request_is_a_503_whose_outcome_is_unknown(
    slack_client, slack_fake, monkeypatch
):
    """A raw OSError from the database driver (not wrapped by SQLAlchemy) is the database failing, as an
    OperationalError is: a 503, not a 500 "a bug"."""
    from core.ledger import Ledger

    refuse = _refusal_raised_in("asyncpg.connect_utils")

    async def down(self, *args, **kwargs):
        refuse()

    monkeypatch.setattr(Ledger, "finish_run", down)
    async with slack_client as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
    assert len(slack_fake.posts) == 1  # the post went out before the record failed
    body = _assert_problem(response, 503)
    assert (body["type"], body["outcome_unknown"]) == ("/problems/store-unavailable", True)
    assert body["detail"].startswith("The service's database did not answer (ConnectionRefusedError) while")


async def test_an_oserror_that_is_not_the_database_is_a_500_not_a_503(slack_client, slack_fake, monkeypatch):
    """Only the database's OSErrors are a 503 "store unavailable"; any other (a full disk, a refused socket of
    our own) is a bug, answered as the 500 internal error (pinned by a mutation review)."""
    from core.ledger import Ledger

    async def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Ledger, "finish_run", disk_full)
    async with slack_client as client:
        response = await client.post("/slack-notify", json={"message": "hi"})
    assert len(slack_fake.posts) == 1
    body = _assert_problem(response, 500)
    assert (body["type"], body["title"]) == ("/problems/internal-error", "Internal error")
    assert body["detail"].startswith("An unexpected error occurred. Quote request id")
    assert "store-unavailable" not in response.text and "No space left" not in response.text
    assert "retry-after" not in response.headers
