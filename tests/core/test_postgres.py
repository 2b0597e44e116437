"""The same store on PostgreSQL: migrations, ledger, idempotency across two app instances."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from pydantic import BaseModel

from core.idempotency import IdempotencyDep
from core.store import create_engine, current_revision, migrate
from tests.conftest import running_app
from tests.core.test_ledger import LostAcknowledgements, check_unsettled_starts

pytestmark = pytest.mark.postgres


class Body(BaseModel):
    text: str


async def test_two_instances_migrate_concurrently_and_share_the_ledger(postgres_url, make_settings):
    settings = make_settings(database_url=postgres_url)
    async with AsyncExitStack() as stack_a, AsyncExitStack() as stack_b:
        # Two workers starting at once: the advisory lock serialises their migrations.
        (app_a, client_a), (_, client_b) = await asyncio.gather(
            stack_a.enter_async_context(running_app(settings)), stack_b.enter_async_context(running_app(settings))
        )
        ledger = app_a.state.resources.ledger
        async with ledger.run("slack.notify", trigger="api", input_summary={"message": "hello"}) as run:
            async with run.action("slack", "post_message") as action:
                action.external_id = "1700000000.000200"
        seen_by_b = (await client_b.get(f"/runs/{run.id}")).json()
        assert seen_by_b["actions"][0]["external_id"] == "1700000000.000200"
        assert (await client_a.get("/health")).json()["database"] == "ok"


async def test_concurrent_idempotent_requests_on_two_instances_act_once(postgres_url, make_settings):
    calls: list[str] = []

    async def act(body: Body, idem: IdempotencyDep):
        async def side_effect():
            calls.append(body.text)
            await asyncio.sleep(0.2)
            return {"echo": body.text}

        return await idem.execute(body, side_effect)

    settings = make_settings(database_url=postgres_url)
    async with running_app(settings) as (app_a, client_a), running_app(settings) as (app_b, client_b):
        for app in (app_a, app_b):
            app.add_api_route("/act", act, methods=["POST"])
        responses = await asyncio.gather(
            *(
                client.post("/act", json={"text": "x"}, headers={"Idempotency-Key": "pg-1"})
                for client in (client_a, client_b) * 10
            )
        )
    assert calls == ["x"]
    assert {response.status_code for response in responses} == {200}


async def test_worker_processes_migrate_at_once(postgres_url):
    """Separate processes, as uvicorn --workers starts them: the advisory lock serialises migrations."""
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = (
        "import asyncio\n"
        "from core.store import create_engine, migrate\n"
        "async def main():\n"
        f"    engine = create_engine({postgres_url!r})\n"
        "    await migrate(engine)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
    )
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=repo, stderr=asyncio.subprocess.PIPE)
        for _ in range(3)
    ]
    results = [await process.communicate() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err.decode()[-500:] for _, err in results]
    engine = create_engine(postgres_url)
    try:
        assert await current_revision(engine) not in (None, "0001")
    finally:
        await engine.dispose()


async def test_upgrade_keeps_existing_rows(postgres_url):
    import sqlalchemy as sa

    engine = create_engine(postgres_url)
    try:
        await migrate(engine, "0001")
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO runs (id, kind, trigger, status, created_at, input_summary) "
                    "VALUES ('kept', 'email.send', 'api', 'ok', now(), '{}')"
                )
            )
        await migrate(engine)
        async with engine.connect() as conn:
            kinds = (await conn.execute(sa.text("SELECT kind FROM runs WHERE id = 'kept'"))).scalars().all()
        assert kinds == ["email.send"]
        assert await current_revision(engine) not in (None, "0001")
    finally:
        await engine.dispose()


async def test_a_nul_byte_is_a_422_or_escaped_never_a_500(postgres_url, make_settings):
    """Found by a black-box review: `GET /runs?kind=%00` and `/runs/ab%00cd` were 500s on PostgreSQL."""
    from core.errors import UpstreamError

    async with running_app(make_settings(database_url=postgres_url)) as (app, client):
        by_kind = await client.get("/runs", params={"kind": "\x00"})
        by_id = await client.get("/runs/ab%00cd")
        ledger = app.state.resources.ledger
        with pytest.raises(UpstreamError):
            async with ledger.run("slack.notify", trigger="api") as run:
                async with run.action("slack", "post_message") as action:
                    action.external_id = "ts\x00"
                    raise UpstreamError("Slack said 'bad\x00channel'", upstream="slack")
        stored = (await client.get(f"/runs/{run.id}")).json()
    assert (by_kind.status_code, by_id.status_code) == (422, 422)
    assert stored["error"] == "502 upstream-error: Slack said 'bad\\x00channel'"
    assert stored["actions"][0]["external_id"] == "ts\\x00"


async def test_starts_with_an_unknown_outcome_are_found_and_settled(postgres_url, make_settings):
    """The prune's query (a LIKE on the error) and its update (the note appended with ||) on PostgreSQL."""
    async with running_app(make_settings(database_url=postgres_url)) as (app, _):
        await check_unsettled_starts(app.state.resources.ledger)


async def test_writes_whose_commit_was_not_acknowledged_are_found_not_repeated(postgres_url, make_settings):
    """The lost-acknowledgement check compares the stored timestamptz with the ledger's own creation time."""
    async with running_app(make_settings(database_url=postgres_url)) as (app, client):
        ledger = app.state.resources.ledger
        # Commit 0: the durable start, 1: its retry, which finds it; 2: the action, 3: the action's retry.
        ledger._writes.sessions = LostAcknowledgements(ledger.sessions, {0, 2})
        async with ledger.run("briefing", trigger="api") as run:  # the durable start: not acknowledged
            async with run.action("toggl", "start_timer") as action:  # nor the action
                action.external_id = "5000000007"
        detail = (await client.get(f"/runs/{run.id}")).json()
    assert ledger._writes.sessions.commits >= 4
    assert detail["status"] == "ok"
    assert [a["external_id"] for a in detail["actions"]] == ["5000000007"]
