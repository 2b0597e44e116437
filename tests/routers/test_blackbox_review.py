"""Problems a black-box review found by using the running service with curl, each pinned through the real app."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
import respx

from core.errors import PROBLEM_CONTENT_TYPE
from core.store import create_engine, current_revision, migrate
from tests.fakes.slack import FakeSlack

TOGGL = "https://toggl.test/api/v9"
WID = 4242
TOGGL_CONFIG: dict[str, Any] = {
    "toggl_api_token": "tok-abcdef123456",
    "toggl_workspace_id": WID,
    "toggl_base_url": TOGGL,
}


@pytest.fixture
def toggl() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=TOGGL, assert_all_called=False) as router:
        router.get("/me/time_entries/current").mock(
            return_value=httpx.Response(200, content=b"null", headers={"content-type": "application/json"})
        )
        yield router


# --- A mistyped dry_run acted for real ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["DRY_RUN=true", "dry-run=true", "dryrun=1", "dry_run=true&DRY_RUN=true"])
async def test_an_unknown_query_parameter_on_an_action_is_a_422_and_nothing_is_sent(make_client, toggl, query):
    """`?DRY_RUN=true` (the setting's spelling) was ignored as unknown and started a real Toggl timer."""
    create = toggl.post(f"/workspaces/{WID}/time_entries").mock(return_value=httpx.Response(200, json={"id": 1}))
    async with make_client(**TOGGL_CONFIG) as client:
        response = await client.post(f"/start-timer?{query}", json={"task_name": "Rehearsal"})
        runs = (await client.get("/runs")).json()
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert "takes only dry_run" in response.json()["detail"]
    assert not create.called
    assert runs["total"] == 0


async def test_dry_run_alone_is_still_accepted(make_client, toggl):
    create = toggl.post(f"/workspaces/{WID}/time_entries").mock(return_value=httpx.Response(200, json={"id": 1}))
    async with make_client(**TOGGL_CONFIG) as client:
        response = await client.post("/start-timer?dry_run=true", json={"task_name": "Rehearsal"})
    assert response.status_code == 200, response.text
    assert response.json()["dry_run"] is True
    assert not create.called


# --- Two Idempotency-Key headers -----------------------------------------------------------------------------------


async def test_two_different_idempotency_keys_are_a_422_and_nothing_is_sent(make_client, toggl):
    """Only the first key was read, so a retry carrying the second one started a second timer."""
    create = toggl.post(f"/workspaces/{WID}/time_entries").mock(return_value=httpx.Response(200, json={"id": 1}))
    async with make_client(**TOGGL_CONFIG) as client:
        both = await client.post(
            "/start-timer",
            json={"task_name": "Once"},
            headers=[("Idempotency-Key", "retry-layer-1"), ("Idempotency-Key", "caller-key")],
        )
        runs = (await client.get("/runs")).json()
    assert both.status_code == 422, both.text
    assert both.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert not create.called
    assert runs["total"] == 0


async def test_the_same_idempotency_key_twice_is_one_key(make_client, toggl):
    toggl.post(f"/workspaces/{WID}/time_entries").mock(return_value=httpx.Response(200, json={"id": 1}))
    async with make_client(**TOGGL_CONFIG) as client:
        twice = await client.post(
            "/start-timer?dry_run=true",
            json={"task_name": "Once"},
            headers=[("Idempotency-Key", "k-1"), ("Idempotency-Key", "k-1")],
        )
        replay = await client.post(
            "/start-timer?dry_run=true", json={"task_name": "Once"}, headers={"Idempotency-Key": "k-1"}
        )
    assert twice.status_code == 200, twice.text
    assert replay.headers["idempotent-replayed"] == "true"


# --- Whitespace around X-API-Key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["k-123456 ", " k-123456", "k-123456\t"])
async def test_whitespace_around_x_api_key_is_not_part_of_the_key(make_client, sent):
    """uvicorn's httptools keeps a trailing space: the right key was answered "The API key is wrong"."""
    async with make_client(app_api_key="k-123456") as client:
        response = await client.get("/runs", headers={"X-API-Key": sent})
    assert response.status_code == 200, response.text


async def test_a_blank_x_api_key_is_missing_not_wrong(make_client):
    async with make_client(app_api_key="k-123456") as client:
        response = await client.get("/runs", headers={"X-API-Key": "  "})
    assert response.status_code == 401
    assert "needs the API key" in response.json()["detail"]


# --- 409 missing from /ai-process's OpenAPI ------------------------------------------------------------------------


async def test_every_operation_taking_an_idempotency_key_documents_its_409(client):
    """/ai-process answered 409 "still in progress" to a retry while the first LLM call ran past the 30 s wait,
    a status its OpenAPI did not list."""
    schema = (await client.get("/openapi.json")).json()
    undocumented = [
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if any(parameter["name"] == "Idempotency-Key" for parameter in operation.get("parameters", []))
        and "409" not in operation["responses"]
    ]
    assert undocumented == []


# --- uvicorn --workers on a new SQLite database ---------------------------------------------------------------------


async def test_a_worker_migrating_a_new_sqlite_database_waits_for_the_one_already_migrating(tmp_path):
    """`uvicorn main:app --workers 2` on the default SQLite database, first start: both workers saw no tables,
    both created `runs`, and one stopped start-up with "table runs already exists".

    Another worker, midway through its migration, is played by a connection that holds SQLite's write lock
    and has created every table, uncommitted; it commits once this worker's migration has begun."""
    template = tmp_path / "template.db"
    engine = create_engine(f"sqlite+aiosqlite:///{template}")
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    with closing(sqlite3.connect(template)) as source:
        schema = [line for line in source.iterdump() if line not in ("BEGIN TRANSACTION;", "COMMIT;")]

    fresh = tmp_path / "workers.db"
    other_worker = sqlite3.connect(fresh, isolation_level=None, timeout=30)
    engine = create_engine(f"sqlite+aiosqlite:///{fresh}")
    try:
        other_worker.execute("PRAGMA journal_mode=WAL")
        other_worker.execute("BEGIN IMMEDIATE")
        for statement in schema:
            other_worker.execute(statement)
        this_worker = asyncio.create_task(migrate(engine))
        await asyncio.sleep(1.0)
        other_worker.execute("COMMIT")
        await asyncio.wait_for(this_worker, 30)
        assert await current_revision(engine) is not None
    finally:
        other_worker.close()
        await engine.dispose()


# --- NaN in Slack blocks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_a_non_finite_number_in_slack_blocks_is_a_422_and_nothing_is_posted(make_client, number):
    """Python's json reads these; the block went to Slack as `"x": NaN` (not JSON) and the ledger said null."""
    body = f'{{"message": "m", "blocks": [{{"type": "section", "x": {number}}}]}}'
    async with FakeSlack(token="xoxb-1") as slack:
        settings = {"slack_bot_token": "xoxb-1", "slack_base_url": slack.base_url, "slack_default_channel": "#general"}
        async with make_client(**settings) as client:
            response = await client.post(
                "/slack-notify?dry_run=false",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            runs = (await client.get("/runs")).json()
        assert slack.calls() == []
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "body.blocks"
    assert runs["total"] == 0
