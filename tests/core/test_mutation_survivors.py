"""Tests pinning behaviour that a hand mutation review of core/ledger.py, core/ratelimit*.py, core/upstream.py,
core/middleware.py and core/auth.py found unpinned: each test fails with one surviving mutant and passes on the
code as it is (the mutant is named in the docstring)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from core import ledger as ledger_module
from core.errors import StoreUnavailable
from core.ledger import note_external_id, redact

# --- Session factories that misbehave on cue ---------------------------------------------------------------


class _ScriptedSessions:
    """The ledger's write sessions, where each `begin()` does what `script` says next, then behaves: "refused"
    (connection refused before anything is sent), "oserror" (a refused connect the driver did not wrap),
    "rejected" (a row refused, not transient), "ack-lost" (committed, then the connection drops before the
    answer), or "ok"."""

    def __init__(self, real, script=()) -> None:
        self.real, self.script, self.begun = real, list(script), 0
        self.down = False  # while True, every begin() is refused

    def __call__(self, *args, **kwargs):
        return self.real(*args, **kwargs)

    @asynccontextmanager
    async def begin(self):
        self.begun += 1
        step = self.script.pop(0) if self.script else ("refused" if self.down else "ok")
        if step == "refused":
            raise OperationalError("INSERT", {}, ConnectionRefusedError("the database is restarting"))
        if step == "oserror":
            raise ConnectionRefusedError("connect call failed")
        if step == "rejected":
            raise IntegrityError("INSERT", {}, ValueError("a refused row"))
        async with self.real.begin() as session:
            yield session
        if step == "ack-lost":
            raise OperationalError("COMMIT", {}, ConnectionResetError("the connection was reset"))


async def _detail(client, run_id: str) -> dict:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


# --- What is stored -----------------------------------------------------------------------------------------


def test_a_string_exactly_at_the_cap_is_stored_whole():
    """Mutant: `len(value) <= _MAX_STRING` -> `<`."""
    assert redact("x" * ledger_module._MAX_STRING) == "x" * ledger_module._MAX_STRING


def test_an_empty_secret_field_is_stored_as_it_is_not_masked():
    """Mutant: masking a secret-named key whatever its value. "***" for a token that was never sent says one was."""
    assert redact({"token": None, "password": "", "api_key": "k"}) == {"token": None, "password": "", "api_key": "***"}


async def test_a_long_error_is_stored_cut_to_the_cap(client):
    """Mutant: `describe_error` without `[:_MAX_ERROR]`: one exception quoting a whole body bloats every row."""
    ledger = client.app.state.resources.ledger
    with pytest.raises(RuntimeError):
        async with ledger.run("test.long", trigger="api") as run:
            async with run.action("slack", "post_message"):
                raise RuntimeError("x" * 5000)
    detail = await _detail(client, run.id)
    assert len(detail["error"]) == ledger_module._MAX_ERROR
    assert len(detail["actions"][0]["error"]) == ledger_module._MAX_ERROR


async def test_an_external_id_noted_before_a_failure_is_kept(client):
    """Mutant: `note_external_id` a no-op: a message whose part 2 failed lost part 1's id, and its delivery
    callbacks could no longer find the run."""
    ledger = client.app.state.resources.ledger
    with pytest.raises(RuntimeError):
        async with ledger.run("whatsapp.send", trigger="api") as run:
            async with run.action("whatsapp", "send_message"):
                note_external_id("SM1")
                raise RuntimeError("part 2 refused")
    [action] = (await _detail(client, run.id))["actions"]
    assert (action["status"], action["external_id"]) == ("failed", "SM1")
    assert await ledger.find_run_by_external_id(skill="whatsapp", operation="send_message", external_id="SM1") == run.id


async def test_a_skipped_step_is_recorded(client):
    """Mutant: `RunHandle.skip` writing nothing: a briefing's not-configured step vanished from its run."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("briefing", trigger="api") as run:
        await run.skip("slack", "post_message", status="not_configured", error="SLACK_BOT_TOKEN is not set")
    [action] = (await _detail(client, run.id))["actions"]
    assert (action["skill"], action["status"], action["error"], action["attempts"]) == (
        "slack",
        "not_configured",
        "SLACK_BOT_TOKEN is not set",
        0,
    )


async def test_a_failed_run_whose_start_and_finish_share_a_batch_keeps_its_error_and_result(client):
    """Mutants: the fold of a finish into its start's row dropping `error`, and a failed run's finish dropping
    the result set before the failure. A non-durable start is written with its finish, in one row."""
    ledger = client.app.state.resources.ledger
    with pytest.raises(RuntimeError):
        async with ledger.run("ai.process", trigger="api", durable_start=False) as run:
            run.result = {"partial": "the first half"}
            raise RuntimeError("the model went away")
    detail = await _detail(client, run.id)
    assert detail["status"] == "failed"
    assert detail["error"] == "RuntimeError: the model went away"
    assert detail["result"] == {"partial": "the first half"}


async def test_a_run_that_ends_without_an_exception_keeps_the_error_it_set(client):
    """Mutant: `handle.error` dropped: a briefing whose steps all failed read `failed` with no reason."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("briefing", trigger="api") as run:
        run.status, run.error = "failed", "every step failed"
    detail = await _detail(client, run.id)
    assert (detail["status"], detail["error"]) == ("failed", "every step failed")


async def test_a_read_waits_for_a_batch_already_being_written(client):
    """Mutant: `flush` waiting only when writes are queued, not when the drain has taken them and is writing:
    GET /runs/{id} read `running` for a run whose finish was on its way to the database."""
    ledger = client.app.state.resources.ledger
    run_id = await ledger.start_run("slack.notify", trigger="api")
    entered, gate = asyncio.Event(), asyncio.Event()
    real = ledger._writes.sessions

    class _Slow:
        def __call__(self, *args, **kwargs):
            return real(*args, **kwargs)

        @asynccontextmanager
        async def begin(self):
            entered.set()
            await gate.wait()
            async with real.begin() as session:
                yield session

    ledger._writes.sessions = _Slow()
    finishing = asyncio.create_task(ledger.finish_run(run_id, status="ok"))
    await entered.wait()  # the drain has taken the finish off the queue and is writing it
    reading = asyncio.create_task(ledger.get_run(run_id))
    # Either the read queues its barrier behind the finish (and waits), or it reads at once.
    while not (reading.done() or ledger._writes._pending):
        await asyncio.sleep(0.01)
    gate.set()
    await finishing
    run = await reading
    assert run is not None and run.status == "ok"


async def test_a_start_the_database_refused_says_nothing_was_attempted(client):
    """Mutant: `database_failed(exc, acted=True)` for a failed start: the 503 then told the client the outcome
    was unknown, when the block had not run."""
    ledger = client.app.state.resources.ledger
    ledger._writes.sessions = _ScriptedSessions(ledger.sessions)
    ledger._writes.sessions.down = True
    ran = False
    with pytest.raises(StoreUnavailable) as caught:
        async with ledger.run("slack.notify", trigger="api"):
            ran = True
    assert not ran
    assert "not attempted" in caught.value.detail
    assert caught.value.extras.get("nothing_sent") is True and "outcome_unknown" not in caught.value.extras


# --- Writes during database trouble -------------------------------------------------------------------------


async def test_a_rejected_row_is_not_retried_as_if_the_database_were_down(client, monkeypatch, caplog):
    """Mutant: `_write_patiently` retrying a non-transient error: a refused row was retried with backoff for
    UNWAITED_RETRY_SECONDS (30 s), holding every write queued behind it."""
    monkeypatch.setattr(ledger_module, "UNWAITED_RETRY_SECONDS", 1.0)
    ledger = client.app.state.resources.ledger
    async with ledger.run("briefing", trigger="api") as run:
        pass
    sessions = _ScriptedSessions(ledger.sessions, ["rejected", "rejected"])  # the batch, then the write alone
    ledger._writes.sessions = sessions
    caplog.set_level(logging.ERROR, logger="orchestrator.ledger")
    await ledger.record_action(run.id, ledger_module.ActionRecord("toggl", "start_timer"), duration_ms=1)
    await ledger._writes.flush()
    assert sessions.begun == 3  # the batch, the write alone once, the flush's barrier
    assert any(record.getMessage().startswith("a ledger write was lost") for record in caplog.records)


async def test_an_action_whose_retry_lost_its_acknowledgement_is_recorded_once(client):
    """Mutant: `maybe_written = False` after a transient failure: a batch refused for another row, then the
    action's own commit unacknowledged, and the retry inserted the action a second time."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("briefing", trigger="api") as run:
        ledger._writes.sessions = _ScriptedSessions(ledger.sessions, ["rejected", "ack-lost"])
        async with run.action("toggl", "start_timer") as action:
            action.external_id = "5000000007"
    detail = await _detail(client, run.id)
    assert detail["status"] == "ok"
    assert [(a["skill"], a["external_id"]) for a in detail["actions"]] == [("toggl", "5000000007")]


async def test_a_second_action_like_the_first_is_not_taken_for_it_after_a_refusal(client):
    """Mutant: `_already_written` without the creation time: after a refused connection, a run's second Toggl
    start was taken for its first, already written, and never inserted."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("briefing", trigger="api") as run:
        async with run.action("toggl", "start_timer") as first:
            first.external_id = "1"
        await ledger._writes.flush()
        ledger._writes.sessions = _ScriptedSessions(ledger.sessions, ["refused"])
        async with run.action("toggl", "start_timer") as second:
            second.external_id = "2"
    detail = await _detail(client, run.id)
    assert sorted(a["external_id"] for a in detail["actions"]) == ["1", "2"]


async def test_a_waited_write_fails_at_once_in_an_outage(client, monkeypatch):
    """Mutant: the waited write retried like an unwaited one: a durable start (a request) waited out the whole
    UNWAITED_RETRY_SECONDS (30 s) before its 503, instead of failing at once."""
    monkeypatch.setattr(ledger_module, "UNWAITED_RETRY_SECONDS", 1.0)
    ledger = client.app.state.resources.ledger
    sessions = _ScriptedSessions(ledger.sessions)
    sessions.down = True
    ledger._writes.sessions = sessions
    with pytest.raises(OperationalError):
        await ledger.start_run("briefing", trigger="api")
    assert sessions.begun == 2  # the batch, and the write alone once


async def _outage_during_an_action(ledger, sessions, run, external_id: str, seconds: float) -> None:
    """An unwaited action whose first tries are refused for `seconds`, waited for until it is written."""
    loop = asyncio.get_running_loop()
    sessions.down = True
    loop.call_later(seconds, setattr, sessions, "down", False)
    async with run.action("toggl", "start_timer") as action:
        action.external_id = external_id
    while sessions.down or (ledger._writes._drainer is not None and not ledger._writes._drainer.done()):
        await asyncio.sleep(0.02)


async def test_a_second_outage_after_a_recovery_gets_a_budget_of_its_own(client, monkeypatch):
    """Mutants: the outage clock not reset on success (in the drain, or in the patient retry): a later, short
    outage was counted from an earlier one's start, so its action was given up at once and the run stayed
    `running` without it."""
    monkeypatch.setattr(ledger_module, "UNWAITED_RETRY_SECONDS", 1.5)  # generous: a loaded CI machine lags the loop
    ledger = client.app.state.resources.ledger
    sessions = _ScriptedSessions(ledger.sessions)
    ledger._writes.sessions = sessions

    # A waited write fails in an outage; then the run's durable start succeeds in the drain, ending that outage.
    sessions.down = True
    with pytest.raises(OperationalError):
        await ledger.start_run("briefing", trigger="api")
    sessions.down = False
    async with ledger.run("briefing", trigger="api") as run:
        await asyncio.sleep(1.8)  # past the first outage's budget
        # A short outage, ridden out by the patient retry: its success ends this one.
        await _outage_during_an_action(ledger, sessions, run, "1", 0.1)
        await asyncio.sleep(1.8)  # past this outage's budget
        await _outage_during_an_action(ledger, sessions, run, "2", 0.1)
    detail = await _detail(client, run.id)
    assert detail["status"] == "ok"
    assert sorted(a["external_id"] for a in detail["actions"]) == ["1", "2"]


async def test_a_refused_connection_the_driver_did_not_wrap_is_retried(client):
    """Mutant: `_transient` false for a plain OSError (asyncpg's refused connect is not wrapped by SQLAlchemy):
    the action was given up on its first refusal and its run stayed `running`."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("briefing", trigger="api") as run:
        ledger._writes.sessions = _ScriptedSessions(ledger.sessions, ["oserror", "oserror"])
        async with run.action("toggl", "start_timer") as action:
            action.external_id = "5000000008"
    detail = await _detail(client, run.id)
    assert detail["status"] == "ok"
    assert [a["external_id"] for a in detail["actions"]] == ["5000000008"]


# --- Ledger reads ---------------------------------------------------------------------------------------------


async def test_reads_see_a_start_still_queued(client):
    """Mutants: `list_runs` and `get_run` without their flush: a non-durable start waits in the queue, and GET
    /runs/{id} answered 404 for a run that had begun."""
    ledger = client.app.state.resources.ledger
    run_id = await ledger.start_run("ai.process", trigger="api", durable=False)
    assert (await ledger.get_run(run_id)).status == "running"
    other = await ledger.start_run("ai.process", trigger="api", durable=False)
    runs, total = await ledger.list_runs()
    assert other in {run.id for run in runs} and total == 2


async def test_an_action_with_no_attempt_noted_counts_one(client):
    """Mutant: `attempts` stored as noted: an action that ran once without a retry loop read 0 attempts."""
    ledger = client.app.state.resources.ledger
    async with ledger.run("slack.notify", trigger="api") as run:
        async with run.action("slack", "post_message"):
            pass
    assert [a["attempts"] for a in (await _detail(client, run.id))["actions"]] == [1]


async def test_a_caller_chosen_id_is_waited_for_even_when_not_durable(client):
    """Mutant: `wait = durable`: a non-durable start with an id already used returned as if it had begun, and
    the conflict surfaced nowhere (a redelivered callback recorded twice or lost)."""
    ledger = client.app.state.resources.ledger
    await ledger.start_run("whatsapp.delivery", trigger="whatsapp", run_id="e" * 32, durable=False)
    with pytest.raises(IntegrityError):
        await ledger.start_run("whatsapp.delivery", trigger="whatsapp", run_id="e" * 32, durable=False)


async def test_find_run_by_external_id_takes_the_newest_run_of_that_operation(client):
    """Mutants: oldest first, and the operation not compared: a delivery callback was pinned on the wrong run."""
    ledger = client.app.state.resources.ledger
    ids = []
    for operation in ("send_message", "send_message", "send_template"):
        async with ledger.run("whatsapp.send", trigger="api") as run:
            async with run.action("whatsapp", operation) as action:
                action.external_id = "SM7,SM8"
        ids.append(run.id)
    found = await ledger.find_run_by_external_id(skill="whatsapp", operation="send_message", external_id="SM8")
    assert found == ids[1]
    assert await ledger.find_run_by_external_id(skill="whatsapp", operation="fetch", external_id="SM8") is None


async def test_abandoned_runs_and_closing_them_leave_live_and_finished_runs_alone(client):
    """Mutants: `created_at >` for `<` in `abandoned_runs`; `close_interrupted` without its `running` condition,
    or always saying it closed one: a run that finished meanwhile was overwritten `failed`."""
    from datetime import timedelta

    ledger = client.app.state.resources.ledger
    run_id = await ledger.start_run("briefing", trigger="api")
    await asyncio.sleep(0.01)
    assert await ledger.abandoned_runs(timedelta(hours=1)) == []
    [abandoned] = await ledger.abandoned_runs(timedelta(0))
    assert abandoned.id == run_id
    await ledger.finish_run(run_id, status="ok")  # its worker finished it after all
    assert await ledger.close_interrupted(abandoned, timedelta(minutes=30)) is False
    assert (await _detail(client, run_id))["status"] == "ok"


async def test_an_unsettled_start_is_listed_before_its_run_finishes(client):
    """Mutant: `unsettled_actions` without its flush: a failed start still in the queue was missed by the prune."""
    from datetime import UTC, datetime, timedelta

    ledger = client.app.state.resources.ledger
    since = datetime.now(UTC) - timedelta(minutes=1)
    async with ledger.run("toggl.start_timer", trigger="api") as run:
        with pytest.raises(asyncio.CancelledError):
            async with run.action("toggl", "start_timer"):
                raise asyncio.CancelledError
        [unsettled] = await ledger.unsettled_starts(since)
    assert unsettled.run_id == run.id


def test_a_cookie_is_masked():
    """Mutant: `cookie` dropped from the credential-looking keys."""
    assert redact({"Cookie": "session=abc", "set-cookie": "id=1"}) == {"Cookie": "***", "set-cookie": "***"}


async def test_a_configured_secret_is_scrubbed_from_keys_too(client):
    """Mutant: keys stored unscrubbed: a client that sent a secret as a field name had it stored as is."""
    from core.ledger import Ledger
    from core.secrets import SecretScrubber

    ledger = Ledger(client.app.state.resources.sessions, scrubber=SecretScrubber(["hunter2-secret-value"]))
    async with ledger.run("test.keys", trigger="api", input_summary={"hunter2-secret-value": "x"}) as run:
        pass
    stored = (await _detail(client, run.id))["input_summary"]
    assert "hunter2-secret-value" not in str(stored) and list(stored.values()) == ["x"]


# --- Rate limit -----------------------------------------------------------------------------------------------


async def test_an_idempotency_lookup_that_fails_refuses_the_costly_call(monkeypatch):
    """Mutant: a failed replay lookup taken as "not a replay": the costly call then ran (counted, in memory)
    although its Idempotency-Key could not be checked. It is a 503, fail closed, like a rate-limit store down."""
    from types import SimpleNamespace

    import httpx
    from fastapi import FastAPI

    from core import ratelimit
    from core.errors import add_exception_handlers
    from core.settings import Settings

    async def down(*_args: object, **_kwargs: object) -> bool:
        raise OperationalError("SELECT idempotency_keys", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(ratelimit, "key_already_answered", down)
    app = FastAPI()
    app.state.settings = Settings(_env_file=None, rate_limit_per_minute=5)
    app.state.resources = SimpleNamespace(sessions=None, engine=None)
    add_exception_handlers(app)
    spent: list[int] = []

    @app.post("/spend", dependencies=[ratelimit.RateLimitDep])
    async def spend() -> dict[str, bool]:
        spent.append(1)
        return {"ok": True}

    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 51000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/spend", headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 503 and response.json()["type"] == "/problems/store-unavailable"
    assert spent == []


# --- Upstream calls -------------------------------------------------------------------------------------------


def test_a_create_that_may_have_been_sent_is_flagged_outcome_unknown():
    """Mutant: the `outcome_unknown` member dropped from a transport failure of a create: without it an
    Idempotency-Key does not keep the answer, and a retry with the key could post the message twice."""
    import httpx

    from core.upstream import transport_error

    error = transport_error(httpx.ReadTimeout("slow"), upstream="slack", replay_safe=False)
    assert error.extras.get("outcome_unknown") is True and not error.retryable
    assert "outcome_unknown" not in transport_error(httpx.ReadTimeout("slow"), upstream="slack").extras


def test_a_5xx_passes_its_retry_after_on():
    """Mutant: `server_error` dropping `retry_after`: a Toggl 503 "Retry-After: 120" was answered without one."""
    from core.upstream import server_error

    error = server_error(503, "Toggl answered 503.", upstream="toggl", replay_safe=True, retry_after=120)
    assert error.retry_after == 120 and error.headers.get("Retry-After") == "120"


async def test_with_retries_waits_the_retry_after_it_was_given():
    """Mutant: the wait ignoring Retry-After (full-jitter backoff of at most 0.25 s instead)."""
    from core.errors import UpstreamUnavailable
    from core.upstream import with_retries

    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def call() -> str:
        calls.append(loop.time())
        if len(calls) == 1:
            error = UpstreamUnavailable("busy", upstream="toggl", retryable=True)
            error.wait(1.0)
            raise error
        return "ok"

    assert await with_retries(call, attempts=2) == "ok"
    assert calls[1] - calls[0] >= 1.0


async def test_each_retry_is_counted_on_the_ledger_action(client):
    """Mutant: `with_retries` not calling `note_attempt`: a call retried once read one attempt in GET /runs."""
    from core.errors import UpstreamUnavailable
    from core.upstream import with_retries

    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) == 1:
            error = UpstreamUnavailable("busy", upstream="toggl", retryable=True)
            error.wait(0.01)
            raise error
        return "ok"

    ledger = client.app.state.resources.ledger
    async with ledger.run("toggl.start_timer", trigger="api") as run:
        async with run.action("toggl", "start_timer"):
            await with_retries(call)
    assert [a["attempts"] for a in (await _detail(client, run.id))["actions"]] == [2]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_every_redirect_status_is_refused(status):
    """Mutants: 307 left out of the refused statuses, and no status refused: a 307 from a *_BASE_URL host sent
    the API key and the prompt on to the host it named."""
    from types import SimpleNamespace

    from core.upstream import RedirectRefused, refuse_redirects

    released: list[bool] = []
    answer = SimpleNamespace(
        status=status,
        headers={"Location": "https://elsewhere.example/steal"},
        request_info=SimpleNamespace(real_url="https://api.example/v1"),
        release=lambda: released.append(True),
    )

    async def handler(_request: object) -> SimpleNamespace:
        return answer

    with pytest.raises(RedirectRefused, match=r"a redirect to elsewhere\.example"):
        await refuse_redirects(None, handler)  # type: ignore[arg-type]
    assert released == [True]
    ok = SimpleNamespace(status=200, headers={}, request_info=None, release=lambda: None)

    async def fine(_request: object) -> SimpleNamespace:
        return ok

    assert await refuse_redirects(None, fine) is ok  # type: ignore[arg-type]


async def test_a_decoded_answer_does_not_keep_the_wire_length():
    """Mutant: Content-Length kept on the answer rebuilt from the decoded body: it then named the compressed size."""
    import gzip

    import httpx

    from core.upstream import bounded_request
    from tests.fakes.raw_http import raw_http_server

    payload = b'{"ok": true, "padding": "' + b"x" * 200 + b'"}'
    async with raw_http_server(gzip.compress(payload), headers={"Content-Encoding": "gzip"}) as url:
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await bounded_request(http, "GET", url, deadline=5.0)
    assert response.content == payload
    assert response.headers.get("content-length") in (None, str(len(payload)))


# --- Request context --------------------------------------------------------------------------------------------


async def test_the_request_id_is_echoed_only_when_wholly_safe(client):
    """Mutants: the X-Request-ID header not added to answers, and the caller's id checked with `match` (a safe
    prefix let the rest, spaces or a forged log field, into the logs and the header)."""
    import re

    safe = await client.get("/health", headers={"X-Request-ID": "abc-123.x:y"})
    assert safe.headers["x-request-id"] == "abc-123.x:y"
    unsafe = await client.get("/health", headers={"X-Request-ID": "abc status=200 user=admin"})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])


async def test_an_unhandled_error_is_a_500_problem_quoting_the_request_id(client):
    """Mutant: the last-resort answer's status changed (502): a bug of ours read as an upstream's failure."""

    async def boom() -> None:
        raise RuntimeError("a bug")

    client.app.add_api_route("/boom", boom, methods=["GET"])
    response = await client.get("/boom", headers={"X-Request-ID": "req-77"})
    assert response.status_code == 500 and response.json()["status"] == 500
    assert response.json()["type"] == "/problems/internal-error" and "req-77" in response.json()["detail"]
