"""Schemathesis against the app's own OpenAPI schema: every operation, API key configured, upstreams faked.

Checks, per generated example: no 5xx, the status code is documented, the
content type is documented, the body matches the documented schema, and so
does every documented response header sent (`Idempotent-Replayed`, ...).
The budget is fixed (EXAMPLES_PER_OPERATION) so the run stays short on CI.
"""

from __future__ import annotations

import atexit

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.adversarial.world import API_KEY, FakeWorld

EXAMPLES_PER_OPERATION = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# Module level because schemathesis parametrizes at collection time. The fake
# upstreams and the app's lifespan run on their own event-loop thread for the
# whole module and are stopped at interpreter exit (or by the fixture below).
_world = FakeWorld.start()
atexit.register(_world.stop)
schema = schemathesis.openapi.from_asgi("/openapi.json", _world.app)


@pytest.fixture(scope="module", autouse=True)
def _stop_world_after_module():
    yield
    asgi.shutdown_lifespans()
    _world.stop()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_every_operation_conforms(case):
    case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=CHECKS)


def test_generated_requests_reached_every_upstream():
    """Runs after the generated cases (file order): the zero-5xx result covered real upstream calls,
    not only requests refused at validation."""
    if _world.counts == {}:
        pytest.skip("run together with test_every_operation_conforms")
    for vendor in ("anthropic", "gemini", "slack", "toggl", "twilio"):
        assert _world.counts.get(vendor, 0) > 0, (vendor, _world.counts)
    assert _world.smtp is not None and _world.smtp.messages, "no email reached the SMTP server"
