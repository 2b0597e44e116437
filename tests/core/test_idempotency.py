"""Idempotency-Key semantics on a small action route, with a counter as the upstream."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from core.errors import UpstreamError, UpstreamRateLimited
from core.idempotency import IdempotencyDep, _stores_outcome


class Body(BaseModel):
    text: str


def _install(client, *, fail_with=None, delay=0.0):
    calls = []

    async def act(body: Body, idem: IdempotencyDep):
        async def side_effect():
            calls.append(body.text)
            await asyncio.sleep(delay)
            if fail_with is not None:
                raise fail_with
            return {"echo": body.text, "call": len(calls)}

        return await idem.execute(body, side_effect, status_code=201)

    client.app.add_api_route("/act", act, methods=["POST"])
    return calls


async def test_same_key_same_body_replays(client):
    calls = _install(client)
    first = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k1"})
    second = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json() == {"echo": "a", "call": 1}
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert calls == ["a"]


async def test_same_key_different_body_is_422(client):
    calls = _install(client)
    await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k2"})
    response = await client.post("/act", json={"text": "b"}, headers={"Idempotency-Key": "k2"})
    assert response.status_code == 422
    assert (
        "different request (its body, a query parameter such as dry_run, or another endpoint)"
        in (response.json()["detail"])
    )
    assert calls == ["a"]


async def test_a_key_reused_on_another_endpoint_is_422_and_acts_on_nothing(client):
    """Found by a black-box review: keys were scoped per endpoint, so a key used for /start-timer stopped the
    timer when reused on /stop-timer; the README promises Stripe's semantics, where a key names one request."""
    calls = _install(client)
    other: list[str] = []

    async def act_elsewhere(body: Body, idem: IdempotencyDep):
        async def side_effect():
            other.append(body.text)
            return {"other": body.text}

        return await idem.execute(body, side_effect)

    client.app.add_api_route("/other", act_elsewhere, methods=["POST"])
    await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-shared"})
    response = await client.post("/other", json={"text": "a"}, headers={"Idempotency-Key": "k-shared"})
    assert response.status_code == 422
    assert "already used with a different request" in response.json()["detail"]
    assert (calls, other) == (["a"], [])


async def test_without_key_every_call_acts(client):
    calls = _install(client)
    await client.post("/act", json={"text": "a"})
    await client.post("/act", json={"text": "a"})
    assert calls == ["a", "a"]


async def test_concurrent_duplicates_act_once(client):
    calls = _install(client, delay=0.2)
    responses = await asyncio.gather(
        *(client.post("/act", json={"text": "c"}, headers={"Idempotency-Key": "k3"}) for _ in range(20))
    )
    assert calls == ["c"]
    assert {r.status_code for r in responses} == {201}
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19


async def test_ambiguous_upstream_failure_is_stored_and_replayed(client):
    calls = _install(client, fail_with=UpstreamError("Toggl answered 500", upstream="toggl"))
    first = await client.post("/act", json={"text": "d"}, headers={"Idempotency-Key": "k4"})
    second = await client.post("/act", json={"text": "d"}, headers={"Idempotency-Key": "k4"})
    assert first.status_code == second.status_code == 502
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["content-type"] == "application/problem+json"
    assert calls == ["d"]
    # The replay's request_id is this response's (as the README promises); the first one's is kept beside it.
    assert second.json()["request_id"] == second.headers["x-request-id"] != first.headers["x-request-id"]
    assert second.json()["original_request_id"] == first.headers["x-request-id"]


async def test_refusal_without_effect_releases_the_key(client):
    calls = _install(client, fail_with=UpstreamRateLimited("slow down", upstream="slack", retry_after=5))
    first = await client.post("/act", json={"text": "e"}, headers={"Idempotency-Key": "k5"})
    second = await client.post("/act", json={"text": "e"}, headers={"Idempotency-Key": "k5"})
    assert first.status_code == second.status_code == 429
    assert "idempotent-replayed" not in second.headers
    assert calls == ["e", "e"]


async def test_a_502_that_says_nothing_was_sent_releases_the_key(client):
    """An SMTP login refused is a 502, but nothing went out: replayed for 24 hours, the key kept the stale
    failure after the password was fixed (found by a black-box review)."""
    refused = UpstreamError("The SMTP server refused the login (535).", upstream="smtp", nothing_sent=True)
    calls = _install(client, fail_with=refused)
    first = await client.post("/act", json={"text": "f"}, headers={"Idempotency-Key": "k6"})
    second = await client.post("/act", json={"text": "f"}, headers={"Idempotency-Key": "k6"})
    assert first.status_code == second.status_code == 502
    assert first.json()["nothing_sent"] is True
    assert "idempotent-replayed" not in second.headers
    assert calls == ["f", "f"]


async def test_key_is_validated(client):
    _install(client)
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 422


async def test_a_claim_left_by_a_dead_worker_is_answered_at_once_and_never_rerun(client):
    """Found by a black-box review: after a kill -9 mid-request, every retry hung 30 s, then a 409 "still in
    progress; retry shortly", for 24 hours. Its outcome is unknown, so it is refused at once and not rerun."""
    import time
    from datetime import timedelta

    from core.idempotency import request_fingerprint
    from core.store import IdempotencyKey, utcnow

    calls = _install(client)
    started = utcnow() - client.app.state.settings.abandoned_after - timedelta(minutes=1)
    async with client.app.state.resources.sessions.begin() as session:
        session.add(
            IdempotencyKey(
                scope="*",
                key="crashed-1",
                request_hash=request_fingerprint("POST", "/act", Body(text="a")),
                state="in_progress",
                created_at=started,
            )
        )
    began = time.monotonic()
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "crashed-1"})
    assert time.monotonic() - began < 5
    assert response.status_code == 409
    assert "never finished" in response.json()["detail"] and "GET /runs" in response.json()["detail"]
    assert response.json()["outcome_unknown"] is True  # found by a black-box review: the member was missing
    assert "retry-after" not in response.headers
    assert calls == []


def test_the_abandoned_cutoff_outlasts_the_longest_request_the_timeouts_allow(make_settings):
    """A live request must never be taken for a dead one (its retry would then act twice): found by a code review
    of a fixed 10-minute cutoff against LLM_TIMEOUT_SECONDS=120 with three attempts."""
    from datetime import timedelta

    default = make_settings()
    assert default.abandoned_after >= timedelta(minutes=10)
    assert default.abandoned_after.total_seconds() >= 2 * default.longest_request_seconds
    slow = make_settings(llm_timeout_seconds=120, llm_max_attempts=3, http_timeout_seconds=60)
    # Three providers x three attempts x 130 s, then two skill calls: over 20 minutes.
    assert slow.longest_request_seconds > 20 * 60
    assert slow.abandoned_after.total_seconds() >= 2 * slow.longest_request_seconds


async def test_a_problem_is_answered_as_itself_when_settling_its_key_fails_too(client, monkeypatch):
    """Found by a review: a run start refused while the database was down (a 503 `nothing_sent`) was replaced by
    the database's error when the key's release failed too, and answered as "outcome unknown"."""
    from sqlalchemy.exc import OperationalError

    from core.errors import database_failed
    from core.idempotency import Idempotency

    calls = _install(client, fail_with=database_failed(ConnectionRefusedError("down"), acted=False))

    async def settle_fails(self, status, body, headers):
        raise OperationalError("DELETE", {}, ConnectionRefusedError("still down"))

    monkeypatch.setattr(Idempotency, "_settle", settle_fails)
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-down"})
    assert response.status_code == 503
    assert response.json()["nothing_sent"] is True and "outcome_unknown" not in response.json()
    assert calls == ["a"]


@pytest.mark.parametrize(
    ("status", "body", "kept"),
    [
        (200, {}, True),
        (500, {}, True),
        (502, {}, True),
        # Found by a mutation review: nothing replayed a 504, so a timed-out /ai-process could be paid for twice.
        (504, {}, True),
        (503, {}, False),  # not configured, a refused connection: nothing acted
        (503, {"outcome_unknown": True}, True),
        (429, {"sent_sids": ["SM" + "a" * 32]}, True),
        (502, {"nothing_sent": True}, False),
        (504, {"nothing_sent": True}, False),
        (422, {}, False),
    ],
)
def test_which_answers_a_key_keeps_for_its_replays(status, body, kept):
    assert _stores_outcome(status, body) is kept
