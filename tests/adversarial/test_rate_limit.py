"""Per-client rate limit (core/ratelimit.py): 429 problem with Retry-After, keyed by API key or client IP."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from core.errors import PROBLEM_CONTENT_TYPE, RateLimited, add_exception_handlers
from core.idempotency import IdempotencyDep
from core.ratelimit import (
    STRANGER_NOTICE,
    ClientRateLimiter,
    RateLimitDep,
    admit_chat_message,
    client_identity,
    limiter_for,
)
from core.ratelimit_store import MemoryStorage
from core.settings import Settings


def _app(per_minute: int, **settings: object) -> FastAPI:
    """A bare app with one limited route; the real costly routes are covered in test_costly_routes_limited."""
    app = FastAPI()
    app.state.settings = Settings(_env_file=None, rate_limit_per_minute=per_minute, **settings)
    add_exception_handlers(app)

    @app.post("/spend/{item}", dependencies=[RateLimitDep])
    async def spend(item: str) -> dict[str, str]:
        return {"spent": item}

    @app.post("/other", dependencies=[RateLimitDep])
    async def other() -> dict[str, bool]:
        return {"ok": True}

    return app


def _client(app: FastAPI, ip: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 51000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_over_the_limit_is_a_429_problem_with_retry_after():
    app = _app(3)
    async with _client(app) as client:
        ok = [await client.post(f"/spend/{n}") for n in range(3)]
        refused = await client.post("/spend/9")
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM_CONTENT_TYPE
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 60
    body = refused.json()
    assert body["type"] == "/problems/rate-limited"
    assert body["status"] == 429
    assert body["limit_per_minute"] == 3
    assert body["retry_after"] == retry_after
    # The template, not the raw path: different path parameters share one budget.
    assert "/spend/{item}" in body["detail"]


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "database"])
async def test_a_budget_spent_at_the_end_of_a_minute_is_not_spent_again_in_the_next(monkeypatch, database_url, shared):
    """At most RATE_LIMIT_PER_MINUTE in any 60 s. With the sliding-window counter before, 60 LLM calls at 0:54
    and 49 more at 1:48 all went through (found by a multi-worker review); now the second burst is refused whole,
    each refusal saying when the first burst's oldest call leaves the window."""
    import time

    from core import ratelimit_store
    from core.store import create_engine, migrate

    now = [1_800_000_054.0]  # 0:54 of a minute
    monkeypatch.setattr(time, "time", lambda: now[0])
    monkeypatch.setattr(ratelimit_store, "monotonic", lambda: now[0])
    engine = create_engine(database_url)
    await migrate(engine)
    try:
        limiter = limiter_for(
            Settings(
                _env_file=None,
                database_url=database_url,
                rate_limit_per_minute=60,
                rate_limit_storage=("database" if shared else "memory"),
            ),
            engine,
        )
        assert limiter.shared is shared
        for _ in range(60):
            await limiter.hit("key:spender", "/ai-process")
        now[0] += 54  # 1:48
        refusals = []
        for _ in range(60):
            with pytest.raises(RateLimited) as refused:
                await limiter.hit("key:spender", "/ai-process")
            refusals.append(refused.value.retry_after)
        assert set(refusals) == {6}  # the 0:54 calls leave the window at 1:54
        now[0] += 6
        await limiter.hit("key:spender", "/ai-process")
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("reset_in", "remaining", "retry_after"),
    [
        # Rounded up, not down: 30 invites a retry that is refused again (survivor of a mutation review).
        (30.5, 0, 31),
        # A reset already past (a clock step, a shared store's lag) never says "Retry-After: 0", which invites a
        # retry loop (the floor was unpinned, found by a mutation review).
        (-5, 0, 1),
        # The oldest hit left the window between the refusal and this look, which then reads as empty and
        # starting now: its "reset" is a minute away, but a retry fits at once (found by a review: it said 60).
        (60, 1, 1),
    ],
    ids=["rounded-up", "never-below-one", "window-emptied-since"],
)
async def test_retry_after_is_when_the_oldest_hit_leaves_the_window(monkeypatch, reset_in, remaining, retry_after):
    import time

    from limits.util import WindowStats

    limiter = ClientRateLimiter(1)
    await limiter.hit("ip:203.0.113.7", "/spend/{item}")

    async def stats(*_args: object) -> WindowStats:
        return WindowStats(reset_time=time.time() + reset_in, remaining=remaining)

    monkeypatch.setattr(limiter._limiter, "get_window_stats", stats)
    with pytest.raises(RateLimited) as caught:
        await limiter.hit("ip:203.0.113.7", "/spend/{item}")
    assert (caught.value.retry_after, caught.value.headers["Retry-After"]) == (retry_after, str(retry_after))


async def test_each_client_ip_has_its_own_budget():
    app = _app(1)
    async with _client(app, "203.0.113.7") as first, _client(app, "198.51.100.2") as second:
        assert (await first.post("/spend/a")).status_code == 200
        assert (await first.post("/spend/a")).status_code == 429
        assert (await second.post("/spend/a")).status_code == 200


async def test_api_key_identifies_the_client_across_addresses():
    app = _app(1, app_api_key="k-1")
    async with _client(app, "203.0.113.7") as first, _client(app, "198.51.100.2") as second:
        assert (await first.post("/spend/a", headers={"X-API-Key": "k-1"})).status_code == 200
        # Same key from another address: same budget.
        assert (await second.post("/spend/a", headers={"Authorization": "Bearer k-1"})).status_code == 429


async def test_without_app_api_key_a_sent_key_does_not_buy_a_fresh_budget():
    """Found by a black-box review: with no APP_API_KEY (the development default) nothing checks a sent key,
    and `X-API-Key: r1`, `r2`, ... each had a budget of its own."""
    app = _app(1)
    async with _client(app, "203.0.113.7") as client, _client(app, "198.51.100.2") as elsewhere:
        assert (await client.post("/spend/a", headers={"X-API-Key": "r1"})).status_code == 200
        assert (await client.post("/spend/a", headers={"X-API-Key": "r2"})).status_code == 429
        assert (await client.post("/spend/a", headers={"Authorization": "Bearer r3"})).status_code == 429
        assert (await elsewhere.post("/spend/a", headers={"X-API-Key": "r4"})).status_code == 200  # by address


async def test_each_endpoint_has_its_own_budget():
    app = _app(1)
    async with _client(app) as client:
        assert (await client.post("/spend/a")).status_code == 200
        assert (await client.post("/spend/a")).status_code == 429
        assert (await client.post("/other")).status_code == 200


@pytest.mark.parametrize(
    ("trust", "forwarded", "expected"),
    [
        (False, "192.0.2.1", "ip:203.0.113.7"),  # untrusted header ignored
        (True, "192.0.2.1", "ip:192.0.2.1"),
        (True, "10.9.9.9, 192.0.2.1", "ip:192.0.2.1"),  # right-most hop: the one our proxy added
        (True, "", "ip:203.0.113.7"),
    ],
)
async def test_forwarded_for_only_when_trusted(trust: bool, forwarded: str, expected: str):
    app = _app(5, trust_proxy_headers=trust)
    seen: list[str] = []

    @app.get("/who")
    async def who(request: Request) -> dict[str, str]:
        seen.append(client_identity(request))
        return {}

    async with _client(app) as client:
        await client.get("/who", headers={"X-Forwarded-For": forwarded} if forwarded else {})
    assert seen == [expected]


async def test_key_is_hashed_not_kept():
    app = _app(5, app_api_key="super-secret-key")
    seen: list[str] = []

    @app.get("/who")
    async def who(request: Request) -> dict[str, str]:
        seen.append(client_identity(request))
        return {}

    async with _client(app) as client:
        await client.get("/who", headers={"X-API-Key": "super-secret-key"})
    assert seen[0].startswith("key:")
    assert "super-secret-key" not in seen[0]


COSTLY = [
    ("/ai-process", {"text": "hello", "provider": "claude"}),
    ("/send-email", {"to_address": "ann@example.com", "subject": "Hi", "body": "Hello"}),
    ("/whatsapp-send", {"to": "+15551234567", "body": "Hello"}),
    ("/morning-briefing", {"dry_run": True}),
]


@pytest.mark.parametrize(("path", "body"), COSTLY, ids=[path for path, _ in COSTLY])
async def test_costly_routes_limited(make_client, path, body):
    """The real costly routes, with nothing configured: whatever they answer, the third call in a minute is a 429."""
    async with make_client(app_api_key="k", rate_limit_per_minute=2) as client:
        headers = {"X-API-Key": "k"}
        first = await client.post(path, json=body, headers=headers)
        second = await client.post(path, json=body, headers=headers)
        third = await client.post(path, json=body, headers=headers)
        unauthenticated = await client.post(path, json=body)
        schema = client.app.openapi()
    assert first.status_code != 429 and second.status_code != 429, (first.text, second.text)
    assert third.status_code == 429, third.text
    assert third.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert 1 <= int(third.headers["retry-after"]) <= 60
    # The key check runs first: no key, no budget spent, and a 401 rather than a 429.
    assert unauthenticated.status_code == 401
    assert "429" in schema["paths"][path]["post"]["responses"], f"{path} does not document its 429"


async def test_replays_of_an_idempotency_key_are_not_counted(make_client):
    """Found by a black-box review: a client retrying for its stored answer was refused 429 by its own replays."""
    settings = {"app_api_key": "k", "rate_limit_per_minute": 2, "smtp_host": "127.0.0.1", "smtp_from": "me@example.com"}
    body = {"to_address": "ann@example.com", "subject": "Hi", "body": "Hello"}
    async with make_client(**settings) as client:
        replayed = [
            await client.post(
                "/send-email?dry_run=true", json=body, headers={"X-API-Key": "k", "Idempotency-Key": "same-1"}
            )
            for _ in range(5)
        ]
        fresh = [await client.post("/send-email?dry_run=true", json=body, headers={"X-API-Key": "k"}) for _ in range(2)]
    assert [r.status_code for r in replayed] == [200] * 5
    assert [r.headers.get("idempotent-replayed") for r in replayed] == [None] + ["true"] * 4
    # The first call of the key counted: one more fresh call fits in the budget of 2, the next does not.
    assert [r.status_code for r in fresh] == [200, 429]


async def test_an_expired_key_is_counted_like_a_fresh_request(make_client):
    """A key past its 24 hours has no answer left to replay: the request acts again, so it must be counted
    (pinned by a mutation review: without the expiry check it ran uncounted, past the limit)."""
    from datetime import timedelta

    from sqlalchemy import update

    from core.store import IdempotencyKey, utcnow

    settings = {"app_api_key": "k", "rate_limit_per_minute": 2, "smtp_host": "127.0.0.1", "smtp_from": "me@example.com"}
    body = {"to_address": "ann@example.com", "subject": "Hi", "body": "Hello"}
    keyed = {"X-API-Key": "k", "Idempotency-Key": "old-1"}
    async with make_client(**settings) as client:
        first = await client.post("/send-email?dry_run=true", json=body, headers=keyed)
        async with client.app.state.resources.sessions.begin() as session:
            await session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
        fresh = await client.post("/send-email?dry_run=true", json=body, headers={"X-API-Key": "k"})
        expired = await client.post("/send-email?dry_run=true", json=body, headers=keyed)
    assert (first.status_code, fresh.status_code) == (200, 200)
    assert expired.status_code == 429


class _Spend(BaseModel):
    text: str


async def test_a_request_waiting_on_an_in_progress_key_is_still_counted(make_client):
    """Only a stored answer is free: an in-progress claim may yet be released (a refusal), and the request
    waiting on it would then run. Found by a code review of the replay exemption."""
    import asyncio

    calls: list[str] = []

    async def act(body: _Spend, idem: IdempotencyDep):
        async def side_effect():
            calls.append(body.text)
            await asyncio.sleep(0.5)
            return {"echo": body.text}

        return await idem.execute(body, side_effect)

    async with make_client(rate_limit_per_minute=1) as client:
        client.app.add_api_route("/spend", act, methods=["POST"], dependencies=[RateLimitDep])
        headers = {"Idempotency-Key": "in-flight-1"}
        first = asyncio.create_task(client.post("/spend", json={"text": "a"}, headers=headers))
        await asyncio.sleep(0.2)  # the first holds the claim, in progress
        second = await client.post("/spend", json={"text": "a"}, headers=headers)
        assert (await first).status_code == 200
        replay = await client.post("/spend", json={"text": "a"}, headers=headers)
    assert second.status_code == 429  # counted: the budget of 1 was the first request's
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"  # a stored answer is free
    assert calls == ["a"]


# --- Chat senders (WhatsApp numbers, Slack users) -------------------------------------------------


class _DownStorage(MemoryStorage):
    """A shared store whose database does not answer."""

    async def incr(self, *args: object, **kwargs: object) -> int:
        raise OperationalError("UPDATE rate_limit_counters", {}, ConnectionRefusedError("refused"))

    async def get_moving_window(self, *args: object, **kwargs: object):  # type: ignore[override]
        raise OperationalError("SELECT rate_limit_hits", {}, ConnectionRefusedError("refused"))

    async def acquire_entry(self, *args: object, **kwargs: object) -> bool:
        raise OperationalError("INSERT rate_limit_hits", {}, ConnectionRefusedError("refused"))


async def test_a_chat_sender_over_the_limit_is_refused_and_told_once_a_minute():
    limiter = ClientRateLimiter(2)
    admitted = [await admit_chat_message(limiter, source="whatsapp", sender="+15550001") for _ in range(4)]
    other = await admit_chat_message(limiter, source="whatsapp", sender="+15550002")
    same_number_on_slack = await admit_chat_message(limiter, source="slack", sender="+15550001")
    assert [admission.allowed for admission in admitted] == [True, True, False, False]
    assert admitted[2].notice is not None
    assert re.fullmatch(
        r"You have sent more than 2 messages in a minute, so this one was not acted on\. Wait [1-9][0-9]? s and send "
        r"it again\.",
        admitted[2].notice,
    ), admitted[2].notice  # a number, not "Wait None s" (found by a review)
    assert admitted[3].notice is None
    assert other.allowed and same_number_on_slack.allowed


async def test_a_chat_message_that_cannot_be_counted_is_refused_with_an_apology():
    """Fail closed like the HTTP endpoints: the store holding the shared counts is down."""
    limiter = ClientRateLimiter(2, _DownStorage())
    admission = await admit_chat_message(limiter, source="slack", sender="U1")
    assert not admission.allowed
    assert admission.notice == "Sorry, this message could not be handled right now. Try again in a minute."
    assert await limiter.first_in(STRANGER_NOTICE, "chat:whatsapp", "whatsapp:+1555") is False


@pytest.mark.parametrize("step", [-3600, 3600], ids=["clock-set-back", "clock-set-forward"])
async def test_a_step_of_the_system_clock_neither_locks_clients_out_nor_frees_their_budget(monkeypatch, step):
    """Found by a time review: the in-memory windows ran on time.time(), so a clock set back an hour refused every
    recent client for an hour ("Retry after 3660 s"), and one set forward gave each a fresh budget at once."""
    import time

    limiter = ClientRateLimiter(2)
    await limiter.hit("ip:203.0.113.7", "/ai-process")
    await limiter.hit("ip:203.0.113.7", "/ai-process")
    wall = time.time()
    monkeypatch.setattr(time, "time", lambda: wall + step)
    with pytest.raises(RateLimited) as refused:
        await limiter.hit("ip:203.0.113.7", "/ai-process")
    assert 55 <= refused.value.retry_after <= 60
