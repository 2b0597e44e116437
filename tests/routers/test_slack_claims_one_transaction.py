"""A Slack event we act on claims its event_id and its message ("channel:ts") in one transaction.

They were two: when the database failed between the two claims and again when the event's claim was given
back, the event stayed claimed with nothing done, so Slack's resend was ignored as a redelivery and the message
was never answered (the 503 said so). Now a failure leaves neither claim, and the resend is acted on. What the
two claims meant is kept: a redelivery is ignored, a second event for the message keeps its own claim but does
not act, an event we do not act on never takes the message's claim, and concurrent events for one message
(on several workers too) give exactly one answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.store import InboundMessage, create_engine, migrate, session_factory
from tests.routers.test_slack_events import callback, mention, post
from tests.routers.test_webhooks_database_down import _assert_nothing_done_answer
from tests.workflows.test_chat_database_failures import DatabaseDown, _down_after_the_claim
from tests.workflows.world import finished_runs, runs_of, slack_headers, world
from workflows import inbound
from workflows.inbound import EventClaim, claim_event_and_message, claim_message

THREAD = "1764057600.000100"  # the `ts` of tests.routers.test_slack_events.mention
MESSAGE = f"C0000000002:{THREAD}"  # ... and its channel: the message's claim


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


@pytest.fixture
def database(monkeypatch) -> Iterator[DatabaseDown]:
    database = DatabaseDown(monkeypatch)
    yield database
    database.close()


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator:
    engine = create_engine(database_url)
    await migrate(engine)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def claims_held(sessions) -> set[tuple[str, str]]:
    async with sessions() as session:
        return set((await session.execute(select(InboundMessage.source, InboundMessage.message_id))).all())


def claim(sessions, event_id: str, message_id: str = MESSAGE):
    return claim_event_and_message(
        sessions, source="slack", event_id=event_id, message_source="slack-message", message_id=message_id
    )


# --- Through the webhook ----------------------------------------------------------------------------------


async def test_the_database_failing_between_the_two_claims_holds_neither_and_slacks_resend_is_answered(
    w, make_client, database, monkeypatch
):
    """The database goes away once the event's row is in, before the message's, and stays away for anything
    else (a give-back of the event's claim included) until it is back. Slack's resend must then be answered."""
    _down_after_the_claim(database, monkeypatch, "slack")
    body = callback(mention("<@UBOT> start planning for 20 min"), event_id="EvBetweenClaims")
    async with make_client(**w.settings()) as client:
        first = await post(client, body)
        database.down = False
        _assert_nothing_done_answer(first, says="Slack resends")
        assert "ignored" not in first.json()["detail"]
        assert await claims_held(client.app.state.resources.sessions) == set()
        retry = await post(client, body, {**slack_headers(body), "X-Slack-Retry-Num": "1"})
        await finished_runs(client, "slack.reply")
    assert retry.status_code == 200
    assert len(w.toggl.starts) == 1
    assert [post["thread_ts"] for post in w.slack.posts if "thread_ts" in post] == [THREAD]


async def test_a_second_event_for_the_message_keeps_its_own_claim_and_does_nothing(w, make_client):
    """The DM that mentions the bot, one event after the other: the second is claimed (its redelivery is a
    replay) and not acted on."""
    same_message = {"user": "UHUMAN", "text": "<@UBOT> start planning for 20 min", "ts": THREAD, "channel": "D01"}
    as_dm = callback({"type": "message", "channel_type": "im", **same_message}, event_id="EvFirst")
    as_mention = callback({"type": "app_mention", **same_message}, event_id="EvSecond")
    async with make_client(**w.settings()) as client:
        responses = [await post(client, as_dm), await post(client, as_mention)]
        await finished_runs(client, "slack.reply")
        retry = await post(client, as_mention, {**slack_headers(as_mention), "X-Slack-Retry-Num": "1"})
        await asyncio.sleep(0.3)
        held = await claims_held(client.app.state.resources.sessions)
        assert len(await runs_of(client, "slack.reply")) == 1
    assert [response.status_code for response in [*responses, retry]] == [200, 200, 200]
    assert held == {("slack", "EvFirst"), ("slack", "EvSecond"), ("slack-message", f"D01:{THREAD}")}
    assert len(w.toggl.starts) == 1


async def test_an_event_we_do_not_act_on_never_hides_the_message_from_the_one_we_do(w, make_client):
    """An edit of the message arrives first, with the message's channel and ts: it takes its own event's claim
    only, so the mention that follows is still answered."""
    edit = {"type": "message", "subtype": "message_changed", "channel": "C0000000002", "ts": THREAD}
    async with make_client(**w.settings()) as client:
        await post(client, callback(edit, event_id="EvEdit"))
        assert await claims_held(client.app.state.resources.sessions) == {("slack", "EvEdit")}
        await post(client, callback(mention("<@UBOT> start planning for 20 min"), event_id="EvMention"))
        await finished_runs(client, "slack.reply")
    assert len(w.toggl.starts) == 1


# --- The claim itself --------------------------------------------------------------------------------------


@pytest.mark.parametrize("insert", ["one statement", "savepoint per row"])
async def test_an_event_its_redelivery_and_a_second_event_for_its_message(sessions, monkeypatch, insert):
    if insert == "savepoint per row":  # a database without INSERT ... ON CONFLICT in SQLAlchemy's dialects
        monkeypatch.setattr(inbound, "sqlite", SimpleNamespace(insert=None))
    assert await claim(sessions, "EvA") == EventClaim(first_delivery=True, first_for_message=True)
    assert await claim(sessions, "EvA") == EventClaim(first_delivery=False, first_for_message=False)
    assert await claim(sessions, "EvB") == EventClaim(first_delivery=True, first_for_message=False)
    assert await claim(sessions, "EvB") == EventClaim(first_delivery=False, first_for_message=False)
    assert await claims_held(sessions) == {("slack", "EvA"), ("slack", "EvB"), ("slack-message", MESSAGE)}


async def test_a_redelivery_does_not_claim_a_message_nobody_claimed(sessions):
    """An event already claimed on its own (as one not acted on) and delivered again: the message stays free."""
    assert await claim_message(sessions, source="slack", message_id="EvA") is True
    assert await claim(sessions, "EvA") == EventClaim(first_delivery=False, first_for_message=False)
    assert await claims_held(sessions) == {("slack", "EvA")}


async def test_concurrent_events_for_one_message_in_one_batch_make_one_answer(sessions):
    outcomes = await asyncio.gather(
        claim(sessions, "EvA"),
        claim(sessions, "EvB"),
        claim(sessions, "EvA"),
        claim_message(sessions, source="slack", message_id="EvIgnored"),
        claim(sessions, "EvC", "C1:1.0"),
    )
    assert outcomes == [
        EventClaim(first_delivery=True, first_for_message=True),
        EventClaim(first_delivery=True, first_for_message=False),
        EventClaim(first_delivery=False, first_for_message=False),
        True,
        EventClaim(first_delivery=True, first_for_message=True),
    ]


async def test_a_failure_at_the_messages_row_leaves_the_events_row_out_too(sessions, monkeypatch):
    real = inbound._insert_new
    down = True

    async def messages_fail(session, keys):
        if down and any(source == "slack-message" for source, _ in keys):
            raise OperationalError("INSERT INTO inbound_messages", {}, ConnectionRefusedError("connection refused"))
        return await real(session, keys)

    monkeypatch.setattr(inbound, "_insert_new", messages_fail)
    with pytest.raises(OperationalError):
        await claim(sessions, "EvA")
    assert await claims_held(sessions) == set()
    down = False
    assert await claim(sessions, "EvA") == EventClaim(first_delivery=True, first_for_message=True)


async def test_ids_over_255_characters_are_cut_alike_each_time(sessions):
    """The column holds 255: an event's redelivery and a second event must meet the rows the first one wrote."""
    long_event, long_message = "Ev" + "x" * 300, "C1:" + "9" * 300
    assert await claim(sessions, long_event, long_message) == EventClaim(True, True)
    assert await claim(sessions, long_event, long_message) == EventClaim(False, False)
    assert await claim(sessions, "EvOther", long_message) == EventClaim(True, False)


@pytest.mark.postgres
async def test_two_workers_claiming_the_same_messages_on_postgresql_give_one_answer_each(postgres_url):
    """Two engines are two workers. Each round, both get every message of the round as an event of its own,
    in opposite orders, amid claims of events not acted on: every event is a first delivery, each message has
    exactly one winner, and no batch is aborted as a deadlock."""
    engines = [create_engine(postgres_url), create_engine(postgres_url)]
    try:
        await migrate(engines[0])
        workers = [session_factory(engine) for engine in engines]
        for round_ in range(30):
            messages = [f"C1:{round_}.{n}" for n in range(4)]

            def claims(worker: int, order: list[str]) -> list:
                sessions = workers[worker]
                return [
                    *(claim(sessions, f"Ev{worker}-{message}", message) for message in order),
                    claim_message(sessions, source="slack", message_id=f"EvIgnored{worker}-{round_}"),
                ]

            outcomes = await asyncio.gather(*claims(0, messages), *claims(1, messages[::-1]))
            by_worker = [
                dict(zip(messages, outcomes[:4], strict=True)),
                dict(zip(messages[::-1], outcomes[5:9], strict=True)),
            ]
            for message in messages:
                pair = [by_worker[0][message], by_worker[1][message]]
                assert all(outcome.first_delivery for outcome in pair)
                assert sorted(outcome.first_for_message for outcome in pair) == [False, True], message
            assert (outcomes[4], outcomes[9]) == (True, True)  # the events not acted on
        async with workers[1]() as session:
            held = set((await session.execute(select(InboundMessage.source, InboundMessage.message_id))).all())
        assert len([row for row in held if row[0] == "slack-message"]) == 30 * 4
    finally:
        for engine in engines:
            await engine.dispose()
