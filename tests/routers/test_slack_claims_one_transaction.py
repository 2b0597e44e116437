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
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.store import InboundMessage, create_engine, migrate, session_factory
from workflows import inbound
from workflows.inbound import EventClaim, claim_event_and_message, claim_message

MESSAGE = "C0000000002:1764057600.000100"  # the message's claim: "channel:ts"


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
