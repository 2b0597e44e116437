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
    calls = _install(client)
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 422
    # The column holds 255 characters; visible ASCII only (pinned by a mutation review: neither bound was tried).
    for key, status in [("x" * 255, 201), ("y" * 256, 422), ("two words", 422)]:
        response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": key})
        assert response.status_code == status, key
    assert calls == ["a"]


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

    from core import idempotency
    from core.errors import database_failed
    from core.idempotency import Idempotency

    calls = _install(client, fail_with=database_failed(ConnectionRefusedError("down"), acted=False))

    async def settle_fails(self, status, body, headers):
        raise OperationalError("DELETE", {}, ConnectionRefusedError("still down"))

    monkeypatch.setattr(Idempotency, "_settle", settle_fails)
    # The release is tried again late while the database stays down (test_idempotency_late_release.py): for long,
    # the app's shutdown waited its 15 s grace on it.
    monkeypatch.setattr(idempotency, "LATE_SAVE_SECONDS", 0.1)
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
        # Pinned by a mutation review: a 400 is a refusal too, and an empty `sent_sids` names nothing sent.
        (400, {}, False),
        (429, {"sent_sids": []}, False),
    ],
)
def test_which_answers_a_key_keeps_for_its_replays(status, body, kept):
    assert _stores_outcome(status, body) is kept


# --- Pinned by a mutation review ---------------------------------------------------------------


async def _store_key(client, key: str, *, age, state: str = "done", text: str = "a", body=None) -> None:
    """A row for `key` as a request for POST /act with `text` left it, `age` ago."""
    from core.idempotency import request_fingerprint
    from core.store import IdempotencyKey, utcnow

    async with client.app.state.resources.sessions.begin() as session:
        session.add(
            IdempotencyKey(
                scope="*",
                key=key,
                request_hash=request_fingerprint("POST", "/act", Body(text=text)),
                state=state,
                created_at=utcnow() - age,
                response_status=201 if state == "done" else None,
                response_body=body if state == "done" else None,
                response_headers={} if state == "done" else None,
            )
        )


def _columns(row) -> dict:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


async def test_a_key_reused_with_another_method_on_the_same_path_is_422(client):
    """The fingerprint holds the method too: PUT /act is another request than POST /act."""
    calls = _install(client)
    put: list[str] = []

    async def replace(body: Body, idem: IdempotencyDep):
        async def side_effect():
            put.append(body.text)
            return {"put": body.text}

        return await idem.execute(body, side_effect)

    client.app.add_api_route("/act", replace, methods=["PUT"])
    await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-method"})
    response = await client.put("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-method"})
    assert response.status_code == 422
    assert (calls, put) == (["a"], [])


async def test_a_key_past_24_hours_runs_afresh_and_one_within_them_replays(client):
    from datetime import timedelta

    calls = _install(client)
    await _store_key(client, "k-expired", age=timedelta(hours=24, minutes=1), body={"echo": "stale"})
    await _store_key(client, "k-kept", age=timedelta(hours=23, minutes=30), body={"echo": "kept"})
    expired = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-expired"})
    kept = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-kept"})
    assert (expired.status_code, expired.json()) == (201, {"echo": "a", "call": 1})
    assert "idempotent-replayed" not in expired.headers
    assert (kept.status_code, kept.json(), kept.headers["idempotent-replayed"]) == (201, {"echo": "kept"}, "true")
    assert calls == ["a"]


async def test_a_finished_key_older_than_the_abandoned_cutoff_still_replays(client):
    """The cutoff is for claims never finished; a finished answer replays for the key's 24 hours."""
    calls = _install(client)
    age = client.app.state.settings.abandoned_after * 2
    await _store_key(client, "k-done-long-ago", age=age, body={"echo": "first"})
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-done-long-ago"})
    assert (response.status_code, response.json()) == (201, {"echo": "first"})
    assert response.headers["idempotent-replayed"] == "true"
    assert calls == []


async def test_a_claim_younger_than_the_configured_cutoff_is_waited_for_not_declared_dead(make_client, monkeypatch):
    """ABANDONED_AFTER is only the default: with slow timeouts a live request may run past 10 minutes, and must
    not be taken for dead (its retry would be told "never finished" while it may still act)."""
    from datetime import timedelta

    from core import idempotency

    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
    async with make_client(llm_timeout_seconds=120, llm_max_attempts=3, http_timeout_seconds=60) as client:
        assert client.app.state.settings.abandoned_after > idempotency.ABANDONED_AFTER + timedelta(minutes=5)
        calls = _install(client)
        await _store_key(client, "k-slow", age=idempotency.ABANDONED_AFTER + timedelta(minutes=5), state="in_progress")
        response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-slow"})
    assert response.status_code == 409
    assert response.json()["detail"] == "A request with this Idempotency-Key is still in progress; retry shortly."
    assert response.headers["retry-after"] == "1"
    assert calls == []


@pytest.mark.parametrize(
    "timeouts",
    [{}, {"llm_max_attempts": 1, "llm_timeout_seconds": 1, "http_timeout_seconds": 1, "smtp_timeout_seconds": 1}],
    ids=["defaults", "the-10-minute-floor"],
)
async def test_a_claim_older_than_a_request_usually_runs_says_when_to_come_back(make_client, monkeypatch, timeouts):
    """Between the longest a request usually runs and the abandoned cutoff, the first worker is most likely dead:
    each retry waited 30 s for a 409 "still in progress; retry shortly" with Retry-After: 1, for minutes (found by a
    multi-worker review). Now that 409 says so, with Retry-After up to the cutoff, and never a second run. With
    short timeouts the cutoff is its 10-minute floor, far past twice the estimate: the estimate itself is used."""
    from datetime import timedelta

    from core import idempotency

    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
    async with make_client(**timeouts) as client:
        settings = client.app.state.settings
        longest = timedelta(seconds=settings.longest_request_seconds)
        assert longest + timedelta(minutes=2) < settings.abandoned_after  # room for this case
        calls = _install(client)
        await _store_key(client, "k-dead", age=longest + timedelta(minutes=1), state="in_progress")
        response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-dead"})
    assert response.status_code == 409
    expected_wait = (settings.abandoned_after - longest - timedelta(minutes=1)).total_seconds()
    assert abs(int(response.headers["retry-after"]) - expected_wait) <= 5
    detail = response.json()["detail"]
    assert "most likely stopped" in detail and f"({settings.longest_request_seconds:.0f} s)" in detail
    assert "GET /runs" in detail
    assert "outcome_unknown" not in response.json()  # the verdict is the cutoff's, not yet
    assert calls == []


async def test_a_first_request_that_finishes_during_the_wait_is_replayed_however_old_its_claim(client, monkeypatch):
    """The estimate of a request's longest run is not a verdict: a long WhatsApp send (ten parts, each retried)
    can outrun it alive, and a retry that waits must still get its answer (found by a review)."""
    from datetime import timedelta

    from sqlalchemy import update

    from core.store import IdempotencyKey

    longest = timedelta(seconds=client.app.state.settings.longest_request_seconds)
    calls = _install(client)
    await _store_key(client, "k-long", age=longest + timedelta(minutes=1), state="in_progress")

    async def finish_soon() -> None:
        await asyncio.sleep(0.5)
        async with client.app.state.resources.sessions.begin() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.key == "k-long")
                .values(state="done", response_status=201, response_body={"echo": "first"}, response_headers={})
            )

    finishing = asyncio.create_task(finish_soon())
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-long"})
    await finishing
    assert (response.status_code, response.json()) == (201, {"echo": "first"})
    assert calls == []


async def test_a_waiter_on_a_first_request_refused_without_effect_is_told_to_send_it_again(client):
    """The first request was refused (its key released) while a duplicate waited on it: the duplicate acts on
    nothing and says to send it again."""
    calls = _install(client, fail_with=UpstreamRateLimited("slow down", upstream="slack", retry_after=5), delay=0.3)
    first, waiter = await asyncio.gather(
        client.post("/act", json={"text": "e"}, headers={"Idempotency-Key": "k-refused"}),
        client.post("/act", json={"text": "e"}, headers={"Idempotency-Key": "k-refused"}),
    )
    statuses = sorted([first, waiter], key=lambda response: response.status_code)
    assert [response.status_code for response in statuses] == [409, 429]
    assert "was refused without effect; send it again" in statuses[0].json()["detail"]
    assert statuses[0].headers["retry-after"] == "0"
    assert calls == ["e"]


async def test_a_replayed_refusal_is_a_problem_keeping_its_location_and_not_its_retry_after(client):
    """A 429 naming parts already sent is kept; its replay is a problem (application/problem+json), with the
    Location it had and without Retry-After (a replay is final for its key)."""
    from core.errors import ProblemError

    sent_before = ProblemError(
        "The second part was rate limited.",
        status=429,
        headers={"Location": "/runs/r1", "Retry-After": "5"},
        sent_sids=["SM" + "a" * 32],
    )
    calls = _install(client, fail_with=sent_before)
    first = await client.post("/act", json={"text": "g"}, headers={"Idempotency-Key": "k-sent"})
    replay = await client.post("/act", json={"text": "g"}, headers={"Idempotency-Key": "k-sent"})
    assert (first.status_code, first.headers["retry-after"]) == (429, "5")
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (429, "true")
    assert replay.headers["content-type"] == "application/problem+json"
    assert replay.headers["location"] == "/runs/r1"
    assert "retry-after" not in replay.headers
    assert replay.json()["sent_sids"] == ["SM" + "a" * 32]
    assert calls == ["g"]


async def test_a_crash_keeps_the_key_as_a_500_so_a_retry_never_acts_again(client):
    """Its outcome is unknown: the retry gets the 500 replayed, not a second run."""
    from core.idempotency import Idempotency

    sessions = client.app.state.resources.sessions
    calls: list[str] = []

    async def crashes():
        calls.append("run")
        raise RuntimeError("bug mid-action")

    with pytest.raises(RuntimeError):
        await Idempotency(sessions, key="k-crash", method="POST", path="/act").execute(Body(text="a"), crashes)
    replay = await Idempotency(sessions, key="k-crash", method="POST", path="/act").execute(Body(text="a"), crashes)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (500, "true")
    assert calls == ["run"]


async def test_a_request_cancelled_twice_still_settles_its_key(client):
    """Cancelled again while it settles (a cancel scope cancels every await after the first): the key is still
    kept as an unknown outcome, not left in progress for its retries to wait on."""
    from core.idempotency import Idempotency
    from core.store import IdempotencyKey

    sessions = client.app.state.resources.sessions
    started = asyncio.Event()

    async def slow():
        started.set()
        await asyncio.sleep(3600)

    request = asyncio.create_task(
        Idempotency(sessions, key="k-cancelled", method="POST", path="/act").execute(Body(text="a"), slow)
    )
    await started.wait()
    request.cancel()
    await asyncio.sleep(0)  # now settling the key
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    async with asyncio.timeout(5):
        while True:
            async with sessions() as session:
                row = await session.get(IdempotencyKey, ("*", "k-cancelled"))
            if row.state == "done":
                break
            await asyncio.sleep(0.01)
    assert row.response_status == 500


async def test_a_claim_released_between_its_insert_and_its_read_is_tried_again(client, monkeypatch):
    """The other request's row vanished before it could be read: claim again, never run without a claim."""
    from core.idempotency import Idempotency

    calls = _install(client)
    await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-vanished"})
    load = Idempotency._load
    reads: list[str] = []

    async def vanished_once(self):
        reads.append(self.key)
        return None if len(reads) == 1 else await load(self)

    monkeypatch.setattr(Idempotency, "_load", vanished_once)
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-vanished"})
    assert response.headers["idempotent-replayed"] == "true"
    assert calls == ["a"]
    assert reads == ["k-vanished", "k-vanished"]


async def test_an_expired_key_read_before_another_request_renewed_it_deletes_nothing(client, monkeypatch):
    """Two requests find one expired key; the other replaces it first. This one's delete names the expired row's
    time, so it leaves the renewed answer alone instead of deleting it and acting a second time."""
    from datetime import timedelta

    from core.idempotency import Idempotency
    from core.store import IdempotencyKey, utcnow

    calls = _install(client)
    await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-renewed"})
    load = Idempotency._load
    reads: list[str] = []

    async def stale_once(self):
        row = await load(self)
        reads.append(self.key)
        if len(reads) == 1:  # as read just before the other request renewed it
            return IdempotencyKey(**{**_columns(row), "created_at": utcnow() - timedelta(hours=25)})
        return row

    monkeypatch.setattr(Idempotency, "_load", stale_once)
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-renewed"})
    assert (response.status_code, response.headers["idempotent-replayed"]) == (201, "true")
    assert calls == ["a"]


@pytest.mark.parametrize("key", [None, "k-secret"])
async def test_a_success_body_is_scrubbed_in_the_answer_and_the_stored_replay(make_client, key):
    """Problem bodies were scrubbed, success bodies not: a caller's text or an upstream's answer holding a
    configured secret was answered, stored for replays and replayed raw (found by a security review)."""
    from sqlalchemy import select

    from core.store import IdempotencyKey

    token = "xoxb-scrubbed-in-success-0001"
    async with make_client(slack_bot_token=token) as client:
        calls = _install(client)
        headers = {"Idempotency-Key": key} if key else {}
        first = await client.post("/act", json={"text": f"rotate {token}"}, headers=headers)
        replay = await client.post("/act", json={"text": f"rotate {token}"}, headers=headers)
        async with client.app.state.resources.sessions() as session:
            stored = [row.response_body for row in await session.scalars(select(IdempotencyKey))]
    assert first.json() == {"echo": "rotate ***", "call": 1}
    assert token not in replay.text and token not in repr(stored)
    assert stored == ([{"echo": "rotate ***", "call": 1}] if key else [])
    assert calls == [f"rotate {token}"] * (1 if key else 2)  # the action itself got what was asked
