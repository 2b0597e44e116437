"""A run still `running` is taken for a dead worker's on the cutoff of its kind, not on one shared by all.

A WhatsApp message (ten Twilio parts, each up to three attempts) can run longer than the cutoff every other run
shares: the prune closed a live reply as "interrupted", and a retry of POST /whatsapp-send with its
Idempotency-Key was told the worker had stopped. Raising the shared cutoff instead would have delayed every
crash recovery, a killed worker's timer stop among them. The worst cases are worked out in
`Settings.longest_run_seconds`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import time_machine
from pydantic import BaseModel
from sqlalchemy import select

from core import idempotency
from core.idempotency import IdempotencyDep, request_fingerprint
from core.resources import build_http_client
from core.store import IdempotencyKey, Run, ScheduledJob, utcnow
from routers.whatsapp_send import WhatsAppSendRequest
from skills import whatsapp
from skills.toggl import RunningTimer
from tests.workflows.test_scheduler import RecordingSlack, RunningToggl, scheduler_for
from tests.workflows.world import (
    MESSAGES_PATH,
    OWNER,
    TWILIO_BASE,
    WAIT_SECONDS,
    post_whatsapp,
    runs_of,
    whatsapp_form,
    world,
)

HTTP_30 = {"http_timeout_seconds": 30}
SHORT = {"http_timeout_seconds": 1, "smtp_timeout_seconds": 1, "llm_timeout_seconds": 1, "llm_max_attempts": 1}
#: (timeouts, the cutoff every other kind keeps, a WhatsApp message's worst case, its cutoff), in seconds.
BOUNDS = [
    # Ten parts of 3 x (10 s for a connection + 5 + 5 to connect and for TLS + 10 s for the answer) + 2 x 10 s.
    ({}, 13 * 60, 1100, 2200),
    # Ten parts of 3 x (30 + 5 + 5 + 30) + 2 x 10: 2,300 s; ten at the call bound once used (120 s) passed 16 min.
    (HTTP_30, 16 * 60, 2300, 4600),
    # Ten parts of 3 x (1 + 1 + 1 + 1) + 2 x 10: 320 s, its double just over the 10-minute floor.
    (SHORT, 10 * 60, 320, 640),
]
BOUND_IDS = ["defaults", "HTTP_TIMEOUT_SECONDS=30", "one-second timeouts"]
OTHER_KINDS = ["toggl.start_timer", "command.start", "briefing", "schedule.stop_timer", "inbound.chat", "slack.reply"]


@pytest.mark.parametrize(("timeouts", "shared", "message", "message_cutoff"), BOUNDS, ids=BOUND_IDS)
def test_each_kind_has_the_cutoff_of_its_own_worst_case(make_settings, timeouts, shared, message, message_cutoff):
    settings = make_settings(**timeouts)
    for kind in ("whatsapp.reply", "whatsapp.send"):
        assert settings.longest_run_seconds(kind) == message
        assert settings.abandoned_after_for(kind) == timedelta(seconds=message_cutoff)
    # Every other kind keeps the cutoff it had: a killed worker's timer start is recovered as soon as before.
    assert settings.abandoned_after == timedelta(seconds=shared)
    for kind in OTHER_KINDS:
        assert settings.longest_run_seconds(kind) == settings.longest_request_seconds
        assert settings.abandoned_after_for(kind) == timedelta(seconds=shared)
    # An email has a cutoff of its own too, checked in tests/core/test_email_run_bound.py.
    assert settings.abandoned_after_by_kind == {
        "email.send": settings.abandoned_after_for("email.send"),
        "whatsapp.reply": timedelta(seconds=message_cutoff),
        "whatsapp.send": timedelta(seconds=message_cutoff),
    }


@pytest.mark.parametrize("timeouts", [{}, HTTP_30, SHORT, {"http_timeout_seconds": 3}], ids=[*BOUND_IDS, "3 s"])
def test_the_whatsapp_bound_counts_what_the_skill_and_the_client_do(make_settings, timeouts):
    """The bound repeats the skill's constants (core cannot import a skill) and the shared client's timeouts: if
    either changes, the bound must too."""
    settings = make_settings(**timeouts)
    timeout = build_http_client(settings).timeout
    assert timeout.connect == min(5.0, settings.http_timeout_seconds)
    # Each step of one attempt: a free connection, connecting, the TLS handshake, then the answer (the deadline).
    attempt = timeout.pool + 2 * timeout.connect + settings.http_timeout_seconds
    part = whatsapp.ATTEMPTS * attempt + (whatsapp.ATTEMPTS - 1) * whatsapp.MAX_RETRY_WAIT_SECONDS
    assert whatsapp.MAX_PARTS * part == settings.longest_whatsapp_message_seconds


async def _running(ledger, sessions, kind: str, age: timedelta, summary: dict | None = None) -> str:
    """A `running` run of `kind` created `age` ago: what a killed (or a still busy) worker leaves."""
    run_id = await ledger.start_run(kind, trigger="whatsapp", input_summary=summary or {})
    async with sessions.begin() as session:
        (await session.get(Run, run_id)).created_at = datetime.now(UTC).replace(microsecond=0) - age
    return run_id


@pytest.mark.parametrize(("timeouts", "shared", "message", "message_cutoff"), BOUNDS[:2], ids=BOUND_IDS[:2])
async def test_the_prune_closes_a_timer_start_on_the_shared_cutoff_and_a_whatsapp_message_only_on_its_own(
    make_settings, sessions, ledger, timeouts, shared, message, message_cutoff
):
    settings = make_settings(**timeouts)
    past_shared = timedelta(seconds=shared, minutes=1)
    reply = await _running(ledger, sessions, "whatsapp.reply", past_shared, {"to": OWNER})
    send = await _running(ledger, sessions, "whatsapp.send", past_shared, {"to": OWNER, "body_chars": 16_000})
    dead_reply = await _running(ledger, sessions, "whatsapp.reply", timedelta(seconds=message_cutoff, minutes=1))
    summary = {"task_name": "Deep Work", "duration_minutes": 25}
    start = await _running(ledger, sessions, "toggl.start_timer", past_shared, summary)
    started = (await ledger.get_run(start)).created_at.replace(tzinfo=UTC)
    timer = RunningTimer(entry_id=4242, workspace_id=7, description="Deep Work", start=started, elapsed_seconds=1)
    scheduler = scheduler_for(settings, sessions, ledger, slack=RecordingSlack(), worker_id="w1")
    scheduler.deps().skills.toggl = RunningToggl(timer)

    await scheduler.prune()

    statuses = {run_id: (await ledger.get_run(run_id)).status for run_id in (reply, send, dead_reply, start)}
    # Past the shared cutoff but within their own: alive as far as anyone can tell, so left running.
    assert (statuses[reply], statuses[send]) == ("running", "running")
    # The timer start is recovered on the shared cutoff, as before: its stop planned, its run closed.
    async with sessions() as session:
        [stop] = (await session.scalars(select(ScheduledJob))).all()
    assert stop.id == "stop:4242" and stop.run_at.replace(tzinfo=UTC) == started + timedelta(minutes=25)
    assert statuses[start] == "failed"
    assert (await ledger.get_run(start)).error.startswith(f"interrupted: {_stopped_after(shared)}")
    # Past its own cutoff a WhatsApp message was left by a dead worker too, and says after how long it was closed.
    assert statuses[dead_reply] == "failed"
    assert (await ledger.get_run(dead_reply)).error.startswith(f"interrupted: {_stopped_after(message_cutoff)}")


def _stopped_after(seconds: int) -> str:
    return (
        "the worker running this stopped without finishing it (killed or crashed), so it was closed as failed "
        f"after {seconds // 60} minutes;"
    )


async def test_a_live_late_whatsapp_reply_outlasting_the_shared_cutoff_is_not_closed_by_the_prune(
    make_client, monkeypatch
):
    """The reply's run is live (Twilio has not answered its part yet) when the prune runs past the shared cutoff:
    it was closed as "interrupted", and rewritten `ok` when it finished."""
    from routers import whatsapp_webhook

    monkeypatch.setattr(whatsapp_webhook, "REPLY_BUDGET_SECONDS", 0.0)  # every answer goes out as a late reply
    answered = asyncio.Event()
    async with world() as w:
        plain_create = w.twilio._create

        async def held_create(request: httpx.Request) -> httpx.Response:
            await answered.wait()
            return plain_create(request)

        w.twilio.mock.post(f"{TWILIO_BASE}{MESSAGES_PATH}").mock(side_effect=held_create)
        async with make_client(**w.settings()) as client:
            settings = client.app.state.settings
            working = await post_whatsapp(client, whatsapp_form("what should I focus on today?"))
            assert "Working on it" in working.text
            replies: list[dict] = []

            async def reply_running() -> bool:
                replies[:] = await runs_of(client, "whatsapp.reply")
                return bool(replies) and replies[0]["status"] == "running"

            await _until(reply_running)
            [reply] = replies
            with time_machine.travel(datetime.now(UTC) + settings.abandoned_after + timedelta(minutes=1), tick=True):
                await client.app.state.scheduler.prune()
                during = (await client.get(f"/runs/{reply['id']}")).json()
            answered.set()

            async def reply_finished() -> bool:
                return (await client.get(f"/runs/{reply['id']}")).json()["status"] != "running"

            await _until(reply_finished)
            after = (await client.get(f"/runs/{reply['id']}")).json()
        assert (during["status"], during["error"]) == ("running", None)
        assert after["status"] == "ok" and after["error"] is None
        assert [form["Body"] for form in w.twilio.sent] == [w.claude.answer]


async def _until(condition) -> None:
    """Poll the async `condition` until it holds: background work finishes after the webhook answered."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the reply's run")
        await asyncio.sleep(0.05)


class Body(BaseModel):
    text: str


def _send_claim(key: str, *, age: timedelta, request: WhatsAppSendRequest) -> IdempotencyKey:
    """The claim a POST /whatsapp-send of `request` left `age` ago, still in progress."""
    payload = {"body": request, "dry_run": False}
    return IdempotencyKey(
        scope="*",
        key=key,
        request_hash=request_fingerprint("POST", "/whatsapp-send", payload),
        state="in_progress",
        created_at=utcnow() - age,
    )


@pytest.mark.parametrize(
    ("age", "answer"),
    [
        ("past the shared cutoff", "still in progress"),
        ("past the longest a message can take", "most likely stopped"),
        ("past its own cutoff", "never finished"),
    ],
)
async def test_a_whatsapp_send_claim_is_given_up_for_dead_on_the_cutoff_of_its_own_kind(
    make_client, monkeypatch, age, answer
):
    """A retry of POST /whatsapp-send with its Idempotency-Key while the first request still sends its parts was
    told at once that the worker had stopped and the outcome was unknown. Never sent twice, in any case."""
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
    async with world() as w, make_client(**w.settings()) as client:
        settings = client.app.state.settings
        ages = {
            "past the shared cutoff": settings.abandoned_after + timedelta(minutes=1),
            "past the longest a message can take": timedelta(seconds=1100, minutes=1),
            "past its own cutoff": timedelta(seconds=2200, minutes=1),
        }
        sent = {"to": OWNER, "body": "The 9:00 meeting moved to 9:30."}
        async with client.app.state.resources.sessions.begin() as session:
            session.add(_send_claim("k-send", age=ages[age], request=WhatsAppSendRequest(**sent)))
        response = await client.post("/whatsapp-send", json=sent, headers={"Idempotency-Key": "k-send"})
    assert response.status_code == 409
    detail = response.json()["detail"]
    if answer == "still in progress":
        assert detail == "A request with this Idempotency-Key is still in progress; retry shortly."
        assert response.headers["retry-after"] == "1"
    elif answer == "most likely stopped":
        assert "most likely stopped" in detail and "(1100 s)" in detail
        assert abs(int(response.headers["retry-after"]) - (2200 - 1160)) <= 5  # until its own cutoff
        assert "outcome_unknown" not in response.json()
    else:
        assert "never finished" in detail and response.json()["outcome_unknown"] is True
    assert w.twilio.sent == []


async def test_the_other_routes_keep_the_shared_cutoff_for_their_claims(client):
    """The same age on a route whose run is of another kind: its claim is given up for dead as soon as before."""
    calls: list[str] = []

    async def act(body: Body, idem: IdempotencyDep):
        async def side_effect():
            calls.append(body.text)
            return {"echo": body.text}

        return await idem.execute(body, side_effect)

    client.app.add_api_route("/act", act, methods=["POST"])
    settings = client.app.state.settings
    async with client.app.state.resources.sessions.begin() as session:
        session.add(
            IdempotencyKey(
                scope="*",
                key="k-act",
                request_hash=request_fingerprint("POST", "/act", Body(text="a")),
                state="in_progress",
                created_at=utcnow() - settings.abandoned_after - timedelta(minutes=1),
            )
        )
    response = await client.post("/act", json={"text": "a"}, headers={"Idempotency-Key": "k-act"})
    assert response.status_code == 409 and response.json()["outcome_unknown"] is True
    assert settings.abandoned_after == timedelta(minutes=13)
    assert calls == []
