"""An email run has a bound of its own, counted from what aiosmtplib does, and is taken for dead only past it.

An email shared the cutoff of every other run (twice `longest_request_seconds`, 13 minutes with the defaults), as if
it were two calls. But SMTP_TIMEOUT_SECONDS cuts each SMTP wait, not the conversation, and one send makes dozens:
up to 50 RCPT TO, three connections, 2,850.75 s with the defaults (`Settings.longest_run_seconds` works it out). A
slow server's live send could be closed as "interrupted" by the prune, and a retry of POST /send-email with its
Idempotency-Key told the worker had stopped while the message was still going out.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from aiosmtplib.protocol import SMTPProtocol

from core import idempotency, upstream
from core.idempotency import request_fingerprint
from core.ledger import RunKind
from core.store import IdempotencyKey, Run, utcnow
from routers.email import SendEmailRequest
from skills import email
from skills.email import EmailSkill
from tests.fakes.smtp import Certificate, SmtpServer, make_certificate
from tests.routers.test_email_api import MAIL, PASSWORD, USER, config, get_run

#: (timeouts, the cutoff every other kind keeps, an email's worst case, its cutoff), in seconds.
BOUNDS = [
    # The lookup of this host's name for EHLO, then 3 connections: two ending at their 50th RCPT TO (12 + 50 waits),
    # the last going on to DATA and QUIT (15 + 50): 190 waits of 15 s, and backoffs of up to 0.25 s and 0.5 s before
    # the retries.
    ({}, 13 * 60, 2850.75, 5701.5),
    # The same 190 waits of 30 s; the shared cutoff moves too, as it always did (SMTP's part of the old estimate).
    ({"smtp_timeout_seconds": 30}, 16 * 60, 5700.75, 11401.5),
    # 190 waits of 1 s: its double is under the 10-minute floor, which holds.
    ({"smtp_timeout_seconds": 1, "http_timeout_seconds": 1, "llm_timeout_seconds": 1}, 10 * 60, 190.75, 600),
]
BOUND_IDS = ["defaults", "SMTP_TIMEOUT_SECONDS=30", "one-second timeouts"]
OTHER_KINDS = [
    kind for kind in RunKind if kind not in (RunKind.EMAIL_SEND, RunKind.WHATSAPP_SEND, RunKind.WHATSAPP_REPLY)
]


@pytest.mark.parametrize(("timeouts", "shared", "worst", "cutoff"), BOUNDS, ids=BOUND_IDS)
def test_an_email_has_the_cutoff_of_its_own_worst_case(make_settings, timeouts, shared, worst, cutoff):
    settings = make_settings(**timeouts)
    assert settings.longest_email_seconds == worst
    assert settings.longest_run_seconds(RunKind.EMAIL_SEND) == worst
    assert settings.abandoned_after_for(RunKind.EMAIL_SEND) == timedelta(seconds=cutoff)
    assert settings.abandoned_after_by_kind[RunKind.EMAIL_SEND] == timedelta(seconds=cutoff)
    # Every other kind keeps the bound and the cutoff it had.
    assert settings.abandoned_after == timedelta(seconds=shared)
    for kind in OTHER_KINDS:
        assert settings.longest_run_seconds(kind) == settings.longest_request_seconds
        assert settings.abandoned_after_for(kind) == timedelta(seconds=shared)
    assert settings.longest_run_seconds(RunKind.WHATSAPP_SEND) == settings.longest_whatsapp_message_seconds


def test_the_email_bound_repeats_the_skills_and_the_retry_loops_constants():
    """Core cannot import a skill (and the settings stay clear of core.upstream's ledger): the bound repeats their
    figures, and if one changes the bound must too. The request takes no more recipients than the skill does."""
    from core import settings as bounds

    assert bounds._EMAIL_RECIPIENTS == email.MAX_RECIPIENTS
    assert SendEmailRequest.model_json_schema()["properties"]["to_address"]["anyOf"][1]["maxItems"] == (
        email.MAX_RECIPIENTS
    )
    assert bounds._EMAIL_CONNECTIONS == email.CONNECT_ATTEMPTS
    assert bounds._RETRY_BASE_DELAY_SECONDS == upstream.BASE_DELAY_SECONDS
    assert bounds._RETRY_MAX_WAIT_SECONDS == upstream.DEFAULT_MAX_WAIT_SECONDS


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("smtp-cert"))


@pytest.fixture
def smtp(cert: Certificate) -> Iterator[SmtpServer]:
    with SmtpServer(mode="starttls", cert=cert, users={USER: PASSWORD}) as server:
        yield server


async def test_one_send_to_the_most_recipients_waits_as_often_as_the_bound_counts(
    make_settings, smtp, cert, monkeypatch
):
    """Counted on a real exchange (STARTTLS, AUTH, 50 recipients): every reply aiosmtplib reads is one wait cut at
    SMTP_TIMEOUT_SECONDS. aiosmtpd offers PLAIN, accepted at once; the bound also counts connecting, the TLS
    handshake, and the four AUTH round trips of the mechanisms a server may refuse first (CRAM-MD5's two, PLAIN,
    LOGIN's second)."""
    timeouts: list[float | None] = []
    plain_read = SMTPProtocol.read_response

    async def counted_read(self: SMTPProtocol, timeout: float | None = None) -> Any:
        timeouts.append(timeout)
        return await plain_read(self, timeout=timeout)

    monkeypatch.setattr(SMTPProtocol, "read_response", counted_read)
    settings = make_settings(**config(smtp.port, cert, smtp_timeout_seconds=7))
    recipients = [f"r{n}@example.com" for n in range(email.MAX_RECIPIENTS)]

    sent = await EmailSkill(settings).send_email(to=recipients, subject="Plan", body="Deep work first.")

    assert sent.recipients == recipients and smtp.messages[0].rcpt_tos == recipients
    # Greeting, EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL FROM, 50 RCPT TO, DATA's 354, the message's 250, QUIT.
    assert len(timeouts) == 5 + 1 + email.MAX_RECIPIENTS + 2 + 1
    assert set(timeouts) == {7}
    last_connection = len(timeouts) + 2 + 4
    before_data = last_connection - 3  # the two of DATA and QUIT
    retried = (email.CONNECT_ATTEMPTS - 1) * before_data
    lookup = 1  # of this host's name for EHLO, before the first connection (tests/skills/test_email_local_hostname.py)
    assert settings.longest_email_seconds == (lookup + retried + last_connection) * 7 + 0.25 + 0.5


async def _running(resources, kind: str, age: timedelta) -> str:
    """A `running` run of `kind` created `age` ago: what a killed (or a still busy) worker leaves."""
    run_id = await resources.ledger.start_run(kind, trigger="api", input_summary={"to": ["ann@example.com"]})
    async with resources.sessions.begin() as session:
        (await session.get(Run, run_id)).created_at = datetime.now(UTC).replace(microsecond=0) - age
    return run_id


async def test_the_prune_closes_an_email_run_only_past_its_own_cutoff(make_client):
    async with make_client() as client:
        resources = client.app.state.resources
        settings = resources.settings
        alive = await _running(resources, RunKind.EMAIL_SEND, settings.abandoned_after + timedelta(minutes=1))
        dead = await _running(resources, RunKind.EMAIL_SEND, timedelta(seconds=5701.5, minutes=1))
        await client.app.state.scheduler.prune()
        alive_after, dead_after = await get_run(client, alive), await get_run(client, dead)
    # Past the shared cutoff but within its own: alive as far as anyone can tell, so left running.
    assert (alive_after["status"], alive_after["error"]) == ("running", None)
    # Past its own, left by a dead worker, and the error says after how long (5,701.5 s: 95 whole minutes).
    assert dead_after["status"] == "failed"
    assert dead_after["error"].startswith(
        "interrupted: the worker running this stopped without finishing it (killed or crashed), so it was closed as "
        "failed after 95 minutes;"
    )


async def test_a_live_email_run_outlasting_the_shared_cutoff_is_not_closed_by_the_prune(make_client, smtp, cert):
    """The send is live (the server has not answered DATA yet) when the prune runs past the shared cutoff: it was
    closed as "interrupted", then rewritten `ok` when the message went out."""
    release = threading.Event()  # the SMTP server runs its own loop in its own thread
    plain_data = smtp.handler.handle_DATA

    async def held_data(server: Any, session: Any, envelope: Any) -> str:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await plain_data(server, session, envelope)

    smtp.handler.handle_DATA = held_data  # type: ignore[method-assign]
    async with make_client(**config(smtp.port, cert)) as client:
        settings = client.app.state.settings
        sending = asyncio.create_task(client.post("/send-email", json=MAIL))
        try:
            run_id = await _until_running(client)
            with time_machine.travel(datetime.now(UTC) + settings.abandoned_after + timedelta(minutes=1), tick=True):
                await client.app.state.scheduler.prune()
                during = await get_run(client, run_id)
        finally:
            release.set()
        response = await sending
        after = await get_run(client, run_id)
    assert (during["status"], during["error"]) == ("running", None)
    assert response.status_code == 200, response.text
    assert (after["status"], after["error"]) == ("ok", None)
    assert len(smtp.messages) == 1


async def _until_running(client) -> str:
    """The id of the email run once the ledger lists it as running (its start is durable, before connecting)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        items = (await client.get("/runs", params={"kind": "email.send", "status": "running"})).json()["items"]
        if items:
            return items[0]["id"]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the email run never showed as running")
        await asyncio.sleep(0.05)


def _send_claim(key: str, *, age: timedelta) -> IdempotencyKey:
    """The claim a POST /send-email of MAIL left `age` ago, still in progress."""
    payload = {"body": SendEmailRequest(**MAIL).model_dump(mode="json"), "dry_run": False}
    return IdempotencyKey(
        scope=idempotency.KEY_SCOPE,
        key=key,
        request_hash=request_fingerprint("POST", "/send-email", payload),
        state="in_progress",
        created_at=utcnow() - age,
    )


@pytest.mark.parametrize(
    ("age", "answer"),
    [
        ("past the shared cutoff", "still in progress"),
        ("past the longest an email can take", "most likely stopped"),
        ("past its own cutoff", "never finished"),
    ],
)
async def test_a_send_email_claim_is_given_up_for_dead_on_the_cutoff_of_its_own_kind(
    make_client, smtp, cert, monkeypatch, age, answer
):
    """A retry of POST /send-email with its Idempotency-Key while the first request still talks to a slow server
    was told after 13 minutes that the worker had stopped and the outcome was unknown. Never sent twice."""
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
    async with make_client(**config(smtp.port, cert)) as client:
        settings = client.app.state.settings
        worst = settings.longest_email_seconds
        assert worst == 950.75  # config() sets SMTP_TIMEOUT_SECONDS=5: 190 x 5 s, and the backoff
        assert settings.abandoned_after == timedelta(minutes=12)  # the shared one: past it, 13 minutes
        ages = {
            "past the shared cutoff": settings.abandoned_after + timedelta(minutes=1),
            "past the longest an email can take": timedelta(seconds=worst, minutes=1),
            "past its own cutoff": timedelta(seconds=2 * worst, minutes=1),
        }
        async with client.app.state.resources.sessions.begin() as session:
            session.add(_send_claim("k-mail", age=ages[age]))
        response = await client.post("/send-email", json=MAIL, headers={"Idempotency-Key": "k-mail"})
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    if answer == "still in progress":
        assert detail == "A request with this Idempotency-Key is still in progress; retry shortly."
        assert response.headers["retry-after"] == "1"
    elif answer == "most likely stopped":
        assert "most likely stopped" in detail and "(951 s)" in detail
        assert abs(int(response.headers["retry-after"]) - (2 * worst - worst - 60)) <= 5  # until its own cutoff
        assert "outcome_unknown" not in response.json()
    else:
        assert "never finished" in detail and response.json()["outcome_unknown"] is True
    assert smtp.connections == 0 and smtp.messages == []
