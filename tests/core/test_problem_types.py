"""Every problem `type` the service sends resolves to a page saying what it means and what to do (RFC 9457 3.1.1)."""

from __future__ import annotations

import re
from pathlib import Path

import main  # noqa: F401  (imports every module that defines a ProblemError)
from core.errors import PROBLEM_BASE, ProblemError
from core.problem_types import PROBLEM_TYPES

REPO = Path(__file__).resolve().parents[2]
#: Types the error handlers build without a ProblemError class.
# Sent by the exception handlers and the ASGI middleware (core/middleware.py), not by a ProblemError class.
HANDLER_TYPES = {
    "invalid-input",
    "bad-request",
    "not-found",
    "internal-error",
    "payload-too-large",
    "request-timeout",
    "unsupported-content-encoding",
}


def _every_problem_class(cls: type[ProblemError] = ProblemError) -> list[type[ProblemError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _every_problem_class(sub)
    return found


def test_every_slug_the_code_can_send_has_an_entry_with_its_status():
    classes = _every_problem_class()
    for cls in classes:
        assert cls.slug in PROBLEM_TYPES, f"{cls.__name__}'s type /problems/{cls.slug} has no entry"
        assert cls.status in PROBLEM_TYPES[cls.slug].statuses, f"{cls.__name__} sends {cls.status}"
    assert set(PROBLEM_TYPES) >= HANDLER_TYPES
    # And no entry documents a type nothing sends.
    assert set(PROBLEM_TYPES) == {cls.slug for cls in classes} | HANDLER_TYPES


def test_docs_errors_md_has_a_row_for_every_type():
    documented = set(re.findall(r"`/problems/([a-z-]+)`", (REPO / "docs" / "errors.md").read_text()))
    assert set(PROBLEM_TYPES) <= documented, set(PROBLEM_TYPES) - documented


async def test_a_problems_type_uri_resolves_without_the_key(make_client):
    async with make_client(app_api_key="k" * 32) as client:
        problem = (await client.post("/ai-process", json={"text": "hi"})).json()
        page = await client.get(problem["type"])  # relative: resolved against the service itself
        listed = await client.get("/problems")
        unknown = await client.get("/problems/no-such-thing")
    assert problem["type"] == PROBLEM_BASE + "unauthorized"
    assert page.status_code == 200
    assert page.json() == {
        "type": "/problems/unauthorized",
        "title": "Unauthorized",
        "status": [401],
        "when": "APP_API_KEY is set and the request's key is missing or wrong.",
        "fix": "Send the value of APP_API_KEY as X-API-Key: <key> or Authorization: Bearer <key>.",
    }
    assert {entry["type"] for entry in listed.json()} == {PROBLEM_BASE + slug for slug in PROBLEM_TYPES}
    assert unknown.status_code == 404 and unknown.json()["type"] == "/problems/not-found"


async def test_every_occurrence_of_a_type_has_the_catalogues_title(make_client):
    """RFC 9457 3.1.3: a type's title does not change between occurrences. Found by a black-box review: five
    types had two titles ("Authentication required" and "Unauthorized", "Payload too large" and "Request too
    large", ...), from the handlers, the middleware and the classes each naming them."""
    async with make_client(app_api_key="k" * 32, max_body_bytes=1024) as client:
        key = {"X-API-Key": "k" * 32}
        answers = [
            await client.post("/ai-process", json={"text": "hi"}),  # unauthorized
            await client.post("/ai-process", content=b"\xff\xfe", headers={**key, "Content-Type": "application/json"}),
            await client.post("/ai-process", content=b"x" * 2048, headers={**key, "Content-Type": "application/json"}),
            await client.post("/ai-process", json={"text": 5}, headers=key),  # invalid-input
            await client.get("/runs/nope", headers=key),  # not-found
            await client.post("/start-timer", json={"task_name": "x"}, headers=key),  # not-configured
        ]
    seen = {}
    for response in answers:
        problem = response.json()
        slug = problem["type"].removeprefix(PROBLEM_BASE)
        assert problem["title"] == PROBLEM_TYPES[slug].title, (slug, problem["title"])
        seen[slug] = response.status_code
    assert set(seen) == {
        "unauthorized",
        "payload-too-large",
        "invalid-input",
        "not-found",
        "not-configured",
    }
