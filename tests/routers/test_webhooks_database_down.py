"""The two chat webhooks when the service's own database does not answer.

A Slack event (or a Twilio message) whose claim could not be written was answered 503 "what it did may not be
recorded. The outcome is unknown: check GET /runs": the generic mapping of a database error on a POST. Nothing
had run (the claim comes before anything else) and nothing was in GET /runs to check. Found by a review.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy.exc import OperationalError

from tests.routers.test_slack_events import callback, mention, post
from tests.workflows.world import finished_runs, post_whatsapp, runs_of, slack_headers, wait_for, whatsapp_form, world


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def _refused() -> OperationalError:
    return OperationalError("INSERT INTO inbound_messages", {}, ConnectionRefusedError("connection refused"))


def _refused_unwrapped() -> OSError:
    """How asyncpg's connect fails: a plain ConnectionRefusedError, raised from asyncpg's own frames, which
    SQLAlchemy does not wrap."""
    code = compile("def connect():\n    raise ConnectionRefusedError(111, 'Connection refused')\n", "asyncpg", "exec")
    namespace = {"__name__": "asyncpg.connect_utils"}
    exec(code, namespace)
    try:
        namespace["connect"]()
    except ConnectionRefusedError as exc:
        return exc
    raise AssertionError("not raised")


class ClaimsDown:
    """Makes the claim of every (source, id) whose source is in `sources` fail as a database that does not answer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception] = _refused) -> None:
        from workflows import inbound

        self.sources: set[str] = set()
        real = inbound._insert_new

        async def insert_new(session, keys):
            if any(source in self.sources for source, _ in keys):
                raise error()
            return await real(session, keys)

        monkeypatch.setattr(inbound, "_insert_new", insert_new)


def _assert_nothing_done_answer(response, *, says: str) -> dict:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["type"] == "/problems/store-unavailable"
    assert body["nothing_sent"] is True and "outcome_unknown" not in body
    assert response.headers["retry-after"] == "5" and body["retry_after"] == 5
    assert "nothing was done" in body["detail"] and says in body["detail"]
    assert "outcome is unknown" not in body["detail"] and "GET /runs" not in body["detail"]
    return body


# --- Slack ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [_refused, _refused_unwrapped], ids=["OperationalError", "ConnectionRefusedError"])
async def test_a_slack_event_whose_claim_fails_did_nothing_and_slacks_retry_is_answered(
    w, make_client, monkeypatch, error
):
    down = ClaimsDown(monkeypatch, error)
    down.sources.add("slack")
    body = callback(mention("<@UBOT> start planning for 20 min"), event_id="EvDbDown")
    async with make_client(**w.settings()) as client:
        first = await post(client, body)
        await asyncio.sleep(0.2)  # nothing runs in the background either
        assert w.toggl.starts == [] and w.slack.posts == []
        assert await runs_of(client, "command.start") == [] and await runs_of(client, "slack.reply") == []
        down.sources.clear()  # the database is back
        retry = await post(client, body, {**slack_headers(body), "X-Slack-Retry-Num": "1"})
        await finished_runs(client, "slack.reply")
    _assert_nothing_done_answer(first, says="Slack resends")
    assert first.json()["detail"].startswith("The service's database did not answer (")
    assert retry.status_code == 200
    assert len(w.toggl.starts) == 1
    assert [post["thread_ts"] for post in w.slack.posts if "thread_ts" in post] == ["1764057600.000100"]


async def test_a_slack_message_claim_that_fails_holds_neither_claim_and_says_nothing_was_done(
    w, make_client, monkeypatch
):
    """The database failed at the message's claim: the event's, in the same transaction, is not kept either, so
    the answer may say Slack's resend will be answered, and it is. (They were two transactions, and an event whose
    claim could not then be given back had its resend ignored: tests/routers/test_slack_claims_one_transaction.py.)"""
    down = ClaimsDown(monkeypatch)
    down.sources.add("slack-message")
    body = callback(mention("<@UBOT> start planning for 20 min"), event_id="EvDbDownMessage")
    async with make_client(**w.settings()) as client:
        first = await post(client, body)
        down.sources.clear()
        retry = await post(client, body, {**slack_headers(body), "X-Slack-Retry-Num": "1"})
        await finished_runs(client, "slack.reply")
    _assert_nothing_done_answer(first, says="Slack resends")
    assert retry.status_code == 200
    assert len(w.toggl.starts) == 1


# --- WhatsApp ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [_refused, _refused_unwrapped], ids=["OperationalError", "ConnectionRefusedError"])
async def test_a_whatsapp_message_whose_claim_fails_did_nothing_and_a_redelivery_is_acted_on(
    w, make_client, monkeypatch, error
):
    down = ClaimsDown(monkeypatch, error)
    down.sources.add("whatsapp")
    form = whatsapp_form("start writing for 25 min")
    async with make_client(**w.settings()) as client:
        first = await post_whatsapp(client, form)
        assert w.toggl.starts == [] and w.twilio.sent == []
        assert await runs_of(client, "command.start") == []
        down.sources.clear()
        again = await post_whatsapp(client, form)
    _assert_nothing_done_answer(first, says="resend of this MessageSid")
    assert again.status_code == 200 and "Started 'writing'" in again.text
    assert len(w.toggl.starts) == 1


# --- Past the claims: the generic answer stands ---------------------------------------------------------


def _spawn_then_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    from workflows.inbound import BackgroundTasks

    real = BackgroundTasks.spawn

    def spawn_then_database_fails(self, coro, **kwargs):
        real(self, coro, **kwargs)
        raise _refused()

    monkeypatch.setattr(BackgroundTasks, "spawn", spawn_then_database_fails)


@pytest.mark.parametrize("webhook", ["slack", "whatsapp"])
async def test_a_database_failure_once_the_work_was_handed_over_still_says_the_outcome_is_unknown(
    w, make_client, monkeypatch, webhook
):
    """No request path writes to the database once the answer's work has started (the reply is posted by that
    work, after the webhook has answered); this pins that only the claims answer `nothing_sent`, so one added
    later cannot say nothing was done while the timer starts."""
    _spawn_then_fail(monkeypatch)
    async with make_client(**w.settings()) as client:
        if webhook == "slack":
            response = await post(client, callback(mention("<@UBOT> start planning for 20 min"), event_id="EvLate"))
        else:
            response = await post_whatsapp(client, whatsapp_form("start writing for 25 min"))
        await wait_for(lambda: len(w.toggl.starts) == 1)  # the work did run
    assert response.status_code == 503
    body = response.json()
    assert (body["type"], body["outcome_unknown"]) == ("/problems/store-unavailable", True)
    assert "nothing_sent" not in body and "retry-after" not in response.headers
