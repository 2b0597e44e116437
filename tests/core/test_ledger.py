"""The run ledger: recording, redaction, GET /runs paging and filters, GET /runs/{id}."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import OUTCOME_UNKNOWN, UpstreamError
from core.ledger import Ledger, note_attempt, note_request, redact
from tests.conftest import running_app


async def test_runs_and_actions_are_recorded_and_listed(client):
    ledger = client.app.state.resources.ledger
    async with ledger.run("slack.notify", trigger="api", input_summary={"message": "hi", "token": "xoxb-1"}) as run:
        async with run.action("slack", "post_message", request={"channel": "#general"}) as action:
            note_attempt()
            note_attempt()
            action.external_id = "1700000000.000100"
    with pytest.raises(UpstreamError):
        async with ledger.run("toggl.start_timer", trigger="whatsapp", input_summary={}) as failing:
            async with failing.action("toggl", "start_timer"):
                raise UpstreamError("Toggl answered 500", upstream="toggl")

    page = (await client.get("/runs")).json()
    assert page["total"] == 2
    assert [item["id"] for item in page["items"]] == [failing.id, run.id]  # newest first

    detail = (await client.get(f"/runs/{run.id}")).json()
    assert detail["status"] == "ok" and detail["trigger"] == "api" and detail["finished_at"]
    assert detail["input_summary"] == {"message": "hi", "token": "***"}
    [action] = detail["actions"]
    assert action["skill"] == "slack" and action["external_id"] == "1700000000.000100"
    assert action["attempts"] == 2 and action["status"] == "ok"

    failed = (await client.get(f"/runs/{failing.id}")).json()
    assert failed["status"] == "failed"
    assert "Toggl answered 500" in failed["error"]
    assert failed["actions"][0]["status"] == "failed"
    assert failed["actions"][0]["error"] == "502 upstream-error: Toggl answered 500"


async def test_filters_and_pagination(client):
    ledger = client.app.state.resources.ledger
    for index in range(5):
        async with ledger.run("email.send" if index % 2 else "slack.notify", trigger="api") as run:
            run.status = "ok" if index < 4 else "dry_run"
        await asyncio.sleep(0.002)  # distinct created_at ordering

    emails = (await client.get("/runs", params={"kind": "email.send"})).json()
    assert emails["total"] == 2 and {item["kind"] for item in emails["items"]} == {"email.send"}
    dry = (await client.get("/runs", params={"status": "dry_run"})).json()
    assert dry["total"] == 1
    first = (await client.get("/runs", params={"limit": 2})).json()
    second = (await client.get("/runs", params={"limit": 2, "offset": first["next_offset"]})).json()
    last = (await client.get("/runs", params={"limit": 2, "offset": second["next_offset"]})).json()
    assert first["next_offset"] == 2 and second["next_offset"] == 4 and last["next_offset"] is None
    ids = [item["id"] for page in (first, second, last) for item in page["items"]]
    assert len(set(ids)) == 5
    created = [item["created_at"] for page in (first, second, last) for item in page["items"]]
    assert created == sorted(created, reverse=True)


async def test_unknown_run_is_404_problem(client):
    response = await client.get("/runs/does-not-exist")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "GET /runs" in response.json()["detail"]


def test_redact_masks_secret_keys_and_truncates():
    cleaned = redact(
        {"api_key": "k", "nested": {"Authorization": "Bearer x", "ok": "fine"}, "list": [{"password": "p"}]}
    )
    assert cleaned == {
        "api_key": "***",
        "nested": {"Authorization": "***", "ok": "fine"},
        "list": [{"password": "***"}],
    }
    assert redact("x" * 600) == "x" * 600
    assert redact("x" * 20_001).endswith("(20001 chars)")


def test_redact_keeps_counts_that_merely_mention_tokens():
    cleaned = redact(
        {"input_tokens": 12, "max_tokens": 300, "slack_bot_token": "xoxb-1", "X-API-Key": "k", "smtp_password": "p"}
    )
    assert cleaned == {
        "input_tokens": 12,
        "max_tokens": 300,
        "slack_bot_token": "***",
        "X-API-Key": "***",
        "smtp_password": "***",
    }


async def test_a_durable_start_is_committed_before_the_action_runs(client):
    """A crash mid-action must leave a `running` row, never an action with no record."""
    from sqlalchemy import select

    from core.store import Run

    resources = client.app.state.resources
    seen_during_action = {}
    for durable in (True, False):
        async with resources.ledger.run("slack.notify", trigger="api", durable_start=durable) as run:
            async with resources.sessions() as session:  # a separate connection: only committed rows
                row = await session.scalar(select(Run).where(Run.id == run.id))
            seen_during_action[durable] = row.status if row else None
    assert seen_during_action[True] == "running"


async def test_the_finishes_of_a_batch_are_one_executemany(client):
    """Runs finishing together are written as one UPDATE executemany, each row with its own status and result."""
    from sqlalchemy import event

    resources = client.app.state.resources
    ledger = resources.ledger
    engine = resources.engine.sync_engine
    updates: list[int] = []

    def count(_conn, _cursor, statement, parameters, _context, executemany) -> None:
        if statement.startswith("UPDATE runs"):
            updates.append(len(parameters) if executemany else 1)

    async def one(n: int) -> str:
        # Durable starts: committed before the finishes, so the finishes are UPDATEs (not folded into the INSERT).
        async with ledger.run("bench.run", trigger="api", durable_start=True) as run:
            if n % 2:
                run.status, run.result = "partial", {"n": n}
        return run.id

    event.listen(engine, "before_cursor_execute", count)
    try:
        ids = await asyncio.gather(*(one(n) for n in range(10)))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert updates == [10]  # one statement carrying ten finishes, not ten statements
    for n, run_id in enumerate(ids):
        detail = (await client.get(f"/runs/{run_id}")).json()
        assert detail["finished_at"]
        assert (detail["status"], detail["result"]) == (("partial", {"n": n}) if n % 2 else ("ok", None))


async def test_runs_started_and_finished_in_one_batch_are_one_insert(client):
    """A non-durable start rides with its finish: the row is inserted finished, with no UPDATE, for a whole batch."""
    from sqlalchemy import event

    resources = client.app.state.resources
    ledger = resources.ledger
    engine = resources.engine.sync_engine
    statements: list[tuple[str, int]] = []

    def record(_conn, _cursor, statement, parameters, _context, executemany) -> None:
        if statement.startswith(("INSERT INTO runs", "INSERT INTO actions", "UPDATE runs")):
            statements.append((statement.split(" (")[0].split(" SET")[0], len(parameters) if executemany else 1))

    async def one(n: int) -> str:
        async with ledger.run("bench.run", trigger="api", input_summary={"n": n}, durable_start=False) as run:
            async with run.action("fake", "call") as action:
                await asyncio.sleep(0)  # a real await between start and finish, as around an upstream call
                action.external_id = f"ext-{n}"
            if n % 2:
                run.status, run.result = "partial", {"n": n}
        return run.id

    event.listen(engine, "before_cursor_execute", record)
    try:
        ids = await asyncio.gather(*(one(n) for n in range(10)))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements == [("INSERT INTO runs", 10), ("INSERT INTO actions", 10)]
    for n, run_id in enumerate(ids):
        detail = (await client.get(f"/runs/{run_id}")).json()
        assert detail["finished_at"] and detail["input_summary"] == {"n": n}
        assert (detail["status"], detail["result"]) == (("partial", {"n": n}) if n % 2 else ("ok", None))
        assert [(a["skill"], a["external_id"]) for a in detail["actions"]] == [("fake", f"ext-{n}")]


async def test_a_cancelled_run_is_recorded_cancelled_not_failed(client):
    """Found by a black-box run: work cut off at shutdown read `failed` with the error "CancelledError: "."""
    ledger = client.app.state.resources.ledger
    entered = asyncio.Event()

    async def work() -> None:
        async with ledger.run("inbound.chat", trigger="whatsapp") as run:
            async with run.action("ai", "generate"):
                entered.set()
                await asyncio.sleep(30)  # the LLM call in flight

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [stored] = (await client.get("/runs", params={"kind": "inbound.chat"})).json()["items"]
    detail = (await client.get(f"/runs/{stored['id']}")).json()
    assert (detail["status"], detail["actions"][0]["status"]) == ("cancelled", "cancelled")
    assert detail["error"].startswith("cancelled before it finished")
    assert "may or may not have taken effect" in detail["actions"][0]["error"]
    assert (await client.get("/runs", params={"status": "cancelled"})).json()["total"] == 1


async def test_a_lone_surrogate_is_stored_replaced_and_the_ledger_stays_readable(client):
    """A JSON body can carry "\\ud800" anywhere; stored as is, it made GET /runs fail to serialise (a 500)."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("slack.notify", trigger="api", input_summary={"message": "a\ud800b"}) as run:
        async with run.action("slack", "post_message", request={"text": "x\udfffy"}) as action:
            action.external_id = "ts\ud800"
    listing = await client.get("/runs")
    detail = (await client.get(f"/runs/{run.id}")).json()
    assert listing.status_code == 200
    assert detail["input_summary"] == {"message": "a?b"}
    assert (detail["actions"][0]["request"], detail["actions"][0]["external_id"]) == ({"text": "x?y"}, "ts?")


# --- Starts whose outcome is unknown --------------------------------------------------------


async def check_unsettled_starts(ledger: Ledger) -> None:
    """Only a Toggl start that failed saying the outcome is unknown, or was cancelled mid-call, is listed, until
    it is settled once."""
    body = {"workspace_id": 7, "description": "50% done_", "start": "2026-11-26T07:00:00Z", "duration": -1}
    unknown = f"502 upstream-error: Toggl answered 503. {OUTCOME_UNKNOWN}: check Toggl before retrying."
    ids = {}
    for name, error in (("unknown", unknown), ("known", "502 upstream-error: Toggl answered 500.")):
        with pytest.raises(UpstreamError):
            async with ledger.run("toggl.start_timer", trigger="api", input_summary={"duration_minutes": 25}) as run:
                ids[name] = run.id
                async with run.action("toggl", "start_timer"):
                    note_request({"method": "POST", "path": "/workspaces/7/time_entries", "json": body})
                    raise UpstreamError(error.split(": ", 1)[1], upstream="toggl")
    # A start cut off mid-call by a graceful shutdown: its run ends `cancelled`, and the timer may be running.
    with pytest.raises(asyncio.CancelledError):
        async with ledger.run("command.start", trigger="whatsapp", input_summary={"duration_minutes": 5}) as run:
            ids["cancelled"] = run.id
            async with run.action("toggl", "start_timer"):
                note_request({"method": "POST", "path": "/workspaces/7/time_entries", "json": body})
                raise asyncio.CancelledError
    since = datetime.now(UTC) - timedelta(hours=1)

    # Newest first: an unmatched start stays listed for 12 hours, and oldest first 50 of them pushed out the
    # newest, the one most likely to own the running timer (found by a code review).
    cancelled, start = await ledger.unsettled_starts(since)
    assert (start.run_id, start.kind, start.request["json"]) == (ids["unknown"], "toggl.start_timer", body)
    assert start.input_summary == {"duration_minutes": 25}
    assert (cancelled.run_id, cancelled.kind, cancelled.request["json"]) == (ids["cancelled"], "command.start", body)
    assert await ledger.unsettled_starts(datetime.now(UTC) + timedelta(minutes=1)) == []
    await ledger.settle(cancelled, external_id="77", note="Found running later as entry 77.")

    await ledger.settle(start, external_id="4242", note="Found running later as entry 4242.")
    await ledger.settle(start, external_id="5555", note="Found twice?")  # settled once only
    assert await ledger.unsettled_starts(since) == []
    run = await ledger.get_run(ids["unknown"])
    assert run is not None
    [action] = run.actions
    assert (action.status, action.external_id) == ("failed", "4242")
    assert action.error == unknown + " Found running later as entry 4242."


async def test_unsettled_starts_are_listed_until_settled(make_settings):
    async with running_app(make_settings()) as (app, _):
        await check_unsettled_starts(app.state.resources.ledger)


async def test_a_record_nested_deeper_than_any_api_reads_back(make_settings):
    """Found by a code review: a 300-level document stored whole made GET /runs/{id} a 500 for good."""
    from core.ledger import MAX_STORED_DEPTH

    deep: dict = {"leaf": "x"}
    for _ in range(300):
        deep = {"next": deep}
    async with running_app(make_settings()) as (app, client):
        async with app.state.resources.ledger.run("test.deep", trigger="api", input_summary={}) as run:
            async with run.action("slack", "post_message") as action:
                action.request = {"blocks": [deep]}
            run.result = deep
        response = await client.get(f"/runs/{run.id}")
    assert response.status_code == 200
    stored = response.json()["actions"][0]["request"]
    for _ in range(MAX_STORED_DEPTH - 2):  # the request object and the list are two levels
        stored = stored["blocks"][0] if "blocks" in stored else stored["next"]
    assert stored == {"next": f"… (nested deeper than {MAX_STORED_DEPTH} levels)"}


# --- A database that does not answer for a moment (found by a review) ---------------------------------------


class _FlakySessions:
    """The ledger's session factory, with `begin()` refused (connection refused) while `down()` says so."""

    def __init__(self, real, down) -> None:
        self.real, self.down, self.refused = real, down, 0

    def __call__(self, *args, **kwargs):
        return self.real(*args, **kwargs)

    def begin(self):
        if self.down():
            from sqlalchemy.exc import OperationalError

            self.refused += 1
            raise OperationalError("INSERT INTO actions ...", {}, ConnectionRefusedError("the database is restarting"))
        return self.real.begin()


async def test_an_action_written_during_a_short_outage_is_retried_not_dropped(client):
    """A 2 s PostgreSQL restart mid-briefing dropped the Toggl start's action (written without waiting), and the
    run still finished `ok`: the timer's entry and its planned stop were nowhere."""
    ledger = client.app.state.resources.ledger
    loop = asyncio.get_running_loop()
    outage_ends = None
    ledger._writes.sessions = _FlakySessions(ledger.sessions, lambda: outage_ends and loop.time() < outage_ends)
    async with ledger.run("briefing", trigger="api") as run:
        outage_ends = loop.time() + 0.6
        async with run.action("toggl", "start_timer") as action:
            action.external_id = "5000000003"
    assert ledger._writes.sessions.refused >= 2
    detail = (await client.get(f"/runs/{run.id}")).json()
    assert detail["status"] == "ok"
    assert [(a["skill"], a["external_id"]) for a in detail["actions"]] == [("toggl", "5000000003")]


async def test_an_action_lost_after_the_retries_keeps_its_run_running_and_is_logged(client, monkeypatch, caplog):
    from core import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "UNWAITED_RETRY_SECONDS", 0.3)
    ledger = client.app.state.resources.ledger
    loop = asyncio.get_running_loop()
    outage_ends = None
    ledger._writes.sessions = _FlakySessions(ledger.sessions, lambda: outage_ends and loop.time() < outage_ends)
    with pytest.raises(ledger_module.LedgerWriteLost):
        async with ledger.run("briefing", trigger="api") as run:
            outage_ends = loop.time() + 1.0
            async with run.action("toggl", "start_timer") as action:
                action.external_id = "5000000004"
            await asyncio.sleep(1.2)  # the outage ends before the run's finish is written
    detail = (await client.get(f"/runs/{run.id}")).json()
    # Not `ok` without its action: still running, so the prune closes it as interrupted and looks for the timer.
    assert (detail["status"], detail["actions"]) == ("running", [])
    [lost] = [record for record in caplog.records if record.getMessage().startswith("a ledger write was lost")]
    assert "'external_id': '5000000004'" in lost.getMessage()
    assert ledger._writes._lost_runs == set()  # the refused finish was the run's last write: forgotten, no leak


async def test_an_outage_is_waited_out_once_not_once_per_queued_write(client, monkeypatch):
    """Found by a review: each unwaited write had its own 30 s of retries, one after another, so N queued
    writes held a waiting request (a durable start, a read's flush) N x 30 s into an outage."""
    from sqlalchemy.exc import OperationalError

    from core import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "UNWAITED_RETRY_SECONDS", 0.4)
    ledger = client.app.state.resources.ledger
    loop = asyncio.get_running_loop()
    ledger._writes.sessions = _FlakySessions(ledger.sessions, lambda: True)  # down for good
    for index in range(8):
        await ledger.start_run("ai.process", trigger="api", durable=False, run_id=None)
    started = loop.time()
    with pytest.raises(OperationalError):
        await ledger.start_run("briefing", trigger="api")  # durable: waits behind the eight
    assert loop.time() - started < 1.5  # one outage budget (0.4 s), not eight


class LostAcknowledgements:
    """The ledger's session factory, where the commits numbered in `lost` (0 = the next one) go through and then
    the connection drops, as when PostgreSQL committed but its answer never arrived."""

    def __init__(self, real, lost: set[int]) -> None:
        self.real, self.lost, self.commits = real, lost, 0

    def __call__(self, *args, **kwargs):
        return self.real(*args, **kwargs)

    @asynccontextmanager
    async def begin(self):
        from sqlalchemy.exc import OperationalError

        async with self.real.begin() as session:
            yield session
        self.commits += 1
        if self.commits - 1 in self.lost:
            raise OperationalError("COMMIT", {}, ConnectionResetError("the connection was reset"))


async def test_an_action_whose_commit_was_not_acknowledged_is_recorded_once(client):
    """Found by a review: the retry after a lost acknowledgement inserted the action again (actions have no
    natural key), so the ledger showed one Toggl start as two."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("briefing", trigger="api") as run:
        ledger._writes.sessions = LostAcknowledgements(ledger.sessions, {0})
        async with run.action("toggl", "start_timer") as action:
            action.external_id = "5000000006"
    detail = (await client.get(f"/runs/{run.id}")).json()
    assert ledger._writes.sessions.commits >= 2  # the lost one and its retry
    assert detail["status"] == "ok"
    assert [(a["skill"], a["external_id"]) for a in detail["actions"]] == [("toggl", "5000000006")]


async def test_a_durable_start_whose_commit_was_not_acknowledged_goes_ahead(client):
    """Its retry met its own row and raised IntegrityError: the briefing failed before acting, with its run
    written and left `running` for the prune to call interrupted."""
    ledger = client.app.state.resources.ledger
    ledger._writes.sessions = LostAcknowledgements(ledger.sessions, {0})
    async with ledger.run("briefing", trigger="api") as run:
        pass
    assert ledger._writes.sessions.commits >= 2
    assert (await client.get(f"/runs/{run.id}")).json()["status"] == "ok"


async def test_a_start_retried_after_an_outage_still_refuses_another_runs_id(client):
    """A derived run id (a redelivered WhatsApp status callback's) met after a transient failure is another
    run's row, not ours: still a conflict, so the redelivery is not recorded twice."""
    from sqlalchemy.exc import IntegrityError

    ledger = client.app.state.resources.ledger
    run_id = "d" * 32
    await ledger.start_run("whatsapp.delivery", trigger="whatsapp", run_id=run_id)
    refusals = iter([True])  # the next transaction is refused, as by a database restarting
    ledger._writes.sessions = _FlakySessions(ledger.sessions, lambda: next(refusals, False))
    with pytest.raises(IntegrityError):
        await ledger.start_run("whatsapp.delivery", trigger="whatsapp", run_id=run_id)
    assert ledger._writes.sessions.refused == 1
