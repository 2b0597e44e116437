"""POST /send-email through the real app against a real aiosmtpd server (STARTTLS + AUTH)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.smtp import Certificate, SmtpServer, free_port, make_certificate

USER = "bot@example.com"
PASSWORD = "smtp-pass-987654"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("smtp-cert"))


@pytest.fixture
def smtp(cert: Certificate) -> Iterator[SmtpServer]:
    with SmtpServer(mode="starttls", cert=cert, users={USER: PASSWORD}) as server:
        yield server


def config(port: int, cert: Certificate, **extra: Any) -> dict[str, Any]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_user": USER,
        "smtp_password": PASSWORD,
        "smtp_from": "Orchestrator <bot@example.com>",
        "smtp_ca_file": str(cert.cert_path),
        "smtp_timeout_seconds": 5,
        **extra,
    }


MAIL = {"to_address": "ann@example.com", "subject": "Plan", "body": "Deep work first.", "html": "<p>Deep work</p>"}


async def get_run(client, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    return response.json()


async def latest_run(client) -> dict[str, Any]:
    page = (await client.get("/runs", params={"kind": "email.send"})).json()
    assert page["items"], "no email.send run recorded"
    return await get_run(client, page["items"][0]["id"])


async def test_send_email_end_to_end(make_client, smtp, cert):
    async with make_client(**config(smtp.port, cert)) as client:
        response = await client.post("/send-email", json=MAIL)
        assert response.status_code == 200, response.text
        body = response.json()
        run = await get_run(client, body["run_id"])

    [received] = smtp.messages
    message = received.message
    assert received.tls and received.login == USER
    assert received.rcpt_tos == ["ann@example.com"]
    assert message["From"] == "Orchestrator <bot@example.com>"
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Plan"
    assert message["Message-ID"] == body["message_id"]
    assert message.get_body(("plain",)).get_content().strip() == "Deep work first."
    assert message.get_body(("html",)).get_content().strip() == "<p>Deep work</p>"

    assert body == {
        "run_id": run["id"],
        "dry_run": False,
        "message_id": body["message_id"],
        "recipients": ["ann@example.com"],
        "refused": {},
    }
    assert run["kind"] == "email.send" and run["trigger"] == "api" and run["status"] == "ok"
    assert run["input_summary"] == {"to": ["ann@example.com"], "subject": "Plan", "body_chars": 16, "html": True}
    [action] = run["actions"]
    assert (action["skill"], action["operation"], action["status"]) == ("email", "send_email", "ok")
    assert action["external_id"] == body["message_id"]
    assert action["attempts"] == 1
    assert action["request"]["headers"]["Message-ID"] == body["message_id"]
    assert action["request"]["envelope"] == {"from": "bot@example.com", "to": ["ann@example.com"]}
    assert action["request"]["headers"]["From"] == "Orchestrator <bot@example.com>"
    assert received.mail_from == "bot@example.com"
    assert body["message_id"].endswith("@example.com>") and not body["message_id"].endswith(">>")
    assert PASSWORD not in json.dumps(run)


async def test_dry_run_sends_nothing_and_records_the_payload(make_client, smtp, cert):
    async with make_client(**config(smtp.port, cert)) as client:
        response = await client.post("/send-email?dry_run=true", json=MAIL)
        body = response.json()
        run = await get_run(client, body["run_id"])
    assert response.status_code == 200
    assert body["dry_run"] is True
    assert smtp.connections == 0
    assert run["status"] == "dry_run"
    [action] = run["actions"]
    assert action["status"] == "dry_run"
    request = action["request"]
    assert request["server"] == f"127.0.0.1:{smtp.port}"
    assert request["security"] == "starttls"
    assert request["text"] == MAIL["body"]
    assert request["html"] == MAIL["html"]
    assert request["headers"]["Subject"] == "Plan"
    assert request["headers"]["To"] == "ann@example.com"
    assert PASSWORD not in json.dumps(run)


async def test_long_bodies_are_not_kept_in_full(make_client, smtp, cert):
    secret_tail = "TAIL-" + "x" * 20
    mail = {**MAIL, "body": "a" * 5000 + secret_tail}
    async with make_client(**config(smtp.port, cert)) as client:
        response = await client.post("/send-email", json=mail)
        run = await get_run(client, response.json()["run_id"])
    assert smtp.messages[0].message.get_body(("plain",)).get_content().strip().endswith(secret_tail)
    stored = json.dumps(run)
    assert secret_tail not in stored
    assert run["input_summary"]["body_chars"] == len(mail["body"])
    assert "body" not in run["input_summary"]
    request = run["actions"][0]["request"]
    assert request["text"].startswith("a" * 500) and request["text"].endswith(f"({len(mail['body'])} chars)")
    assert request["text_chars"] == len(mail["body"])
    assert request["text_sha256"] == hashlib.sha256(mail["body"].encode()).hexdigest()


@pytest.mark.parametrize(
    "mail",
    [
        {**MAIL, "subject": "Hi\r\nBcc: victim@example.org"},
        {**MAIL, "to_address": "ann@example.com\nBcc: victim@example.org"},
        {**MAIL, "to_address": ["ann@example.com", "bob@example.com\r\nX-Evil: 1"]},
        {**MAIL, "to_address": "not an address"},
        {**MAIL, "to_address": []},
    ],
)
async def test_injection_and_bad_addresses_are_422_before_connecting(make_client, smtp, cert, mail):
    async with make_client(**config(smtp.port, cert)) as client:
        response = await client.post("/send-email", json=mail)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert smtp.connections == 0


async def test_wrong_password_is_502_and_recorded(make_client, smtp, cert):
    async with make_client(**config(smtp.port, cert, smtp_password="nope-nope")) as client:
        response = await client.post("/send-email", json=MAIL)
        run = await latest_run(client)
    assert response.status_code == 502
    detail = response.json()["detail"]
    assert "SMTP_USER" in detail and "SMTP_PASSWORD" in detail
    assert run["status"] == "failed"
    assert run["actions"][0]["status"] == "failed"
    assert "SMTP_PASSWORD" in run["actions"][0]["error"]
    assert "nope-nope" not in json.dumps(run)


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ([], "give 1 to 50 addresses; this list has 0"),
        (["a@example.com"] * 51, "give 1 to 50 addresses; this list has 51"),
        (7, "must be one address (3 to 320 characters) or a list of 1 to 50 of them"),
    ],
    ids=["none", "51", "a-number"],
)
async def test_a_wrong_recipient_list_is_one_clear_error(make_client, smtp, cert, to, message):
    """Found by a black-box review: the 422 named a pydantic-internal field ("body.to_address.constrained-str:
    Input should be a valid string") beside the real reason."""
    async with make_client(**config(smtp.port, cert)) as client:
        response = await client.post("/send-email", json={**MAIL, "to_address": to})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "body.to_address", "message": message, "type": "invalid_recipients"}]
    assert smtp.connections == 0


async def test_refused_recipient_is_422(make_client, smtp, cert):
    smtp.handler.refuse = {"ghost@example.com"}
    async with make_client(**config(smtp.port, cert)) as client:
        response = await client.post("/send-email", json={**MAIL, "to_address": "ghost@example.com"})
    assert response.status_code == 422
    assert "ghost@example.com" in response.json()["detail"]
    assert smtp.messages == []


@pytest.mark.parametrize("to", ["José@exämple.com", ["ann@example.com", "José@exämple.com"]])
async def test_internationalised_address_without_smtputf8_is_422_once_and_recorded(make_client, cert, to):
    server = SmtpServer(mode="starttls", cert=cert, users={USER: PASSWORD})
    server.controller.SMTP_kwargs["enable_SMTPUTF8"] = False  # aiosmtpd's Controller offers it by default
    with server:
        async with make_client(**config(server.port, cert)) as client:
            response = await client.post("/send-email", json={**MAIL, "to_address": to})
            run = await latest_run(client)
    assert response.status_code == 422
    problem = response.json()
    detail = (
        "The configured SMTP server (SMTP_HOST) does not support internationalised email addresses (SMTPUTF8), "
        "needed for José@exämple.com. Nothing was sent: use an ASCII address, or an SMTP server that supports "
        "SMTPUTF8."
    )
    assert (problem["type"], problem["detail"], problem["upstream"]) == ("/problems/invalid-input", detail, "smtp")
    assert server.connections == 1
    assert server.messages == []
    assert run["status"] == "failed"
    [action] = run["actions"]
    assert (action["status"], action["attempts"]) == ("failed", 1)
    assert action["error"] == f"422 invalid-input: {detail}"


async def test_internationalised_address_is_sent_when_the_server_offers_smtputf8(make_client, smtp, cert):
    async with make_client(**config(smtp.port, cert)) as client:
        response = await client.post("/send-email", json={**MAIL, "to_address": "José@exämple.com"})
    assert response.status_code == 200, response.text
    assert response.json()["recipients"] == ["José@exämple.com"]
    [received] = smtp.messages
    assert received.rcpt_tos == ["José@exämple.com"]


async def test_unreachable_server_is_503_after_bounded_retries(make_client, cert):
    async with make_client(**config(free_port(), cert)) as client:
        response = await client.post("/send-email", json=MAIL)
        run = await latest_run(client)
    assert response.status_code == 503
    assert run["actions"][0]["attempts"] == 3
    assert run["actions"][0]["error"].startswith("503 upstream-unavailable")


async def test_stalled_server_is_504_and_not_resent(make_client, smtp, cert):
    smtp.handler.data_delay = 1.5
    async with make_client(**config(smtp.port, cert, smtp_timeout_seconds=0.5)) as client:
        response = await client.post("/send-email", json=MAIL)
        run = await latest_run(client)
    assert response.status_code == 504
    assert smtp.connections == 1
    assert run["actions"][0]["attempts"] == 1


async def test_unconfigured_is_503_naming_variables(make_client):
    async with make_client() as client:
        response = await client.post("/send-email", json=MAIL)
    assert response.status_code == 503
    assert response.json()["missing_settings"] == ["SMTP_HOST", "SMTP_FROM"]


async def test_a_login_without_a_password_is_not_configured_in_a_dry_run_and_a_real_one(make_client, smtp, cert):
    """SMTP_USER makes the service log in, so without SMTP_PASSWORD it logged in with an empty one: the real send
    was the server's 502 "refused the login" while its dry run answered 200, and /health called email configured.
    The service knows before connecting: both are the 503 naming SMTP_PASSWORD (found by a dry-run review)."""
    async with make_client(**config(smtp.port, cert, smtp_password=None)) as client:
        rehearsal = await client.post("/send-email?dry_run=true", json=MAIL)
        real = await client.post("/send-email", json=MAIL)
        health = (await client.get("/health")).json()
    assert rehearsal.status_code == real.status_code == 503, rehearsal.json()
    assert rehearsal.json()["type"] == real.json()["type"] == "/problems/not-configured"
    assert rehearsal.json()["missing_settings"] == real.json()["missing_settings"] == ["SMTP_PASSWORD"]
    assert health["integrations"]["email"]["missing_settings"] == ["SMTP_PASSWORD"]
    assert smtp.connections == 0 and smtp.messages == []


async def test_same_key_sends_once_and_other_body_is_422(make_client, smtp, cert):
    headers = {"Idempotency-Key": "mail-1"}
    async with make_client(**config(smtp.port, cert)) as client:
        first = await client.post("/send-email", json=MAIL, headers=headers)
        second = await client.post("/send-email", json=MAIL, headers=headers)
        other = await client.post("/send-email", json={**MAIL, "subject": "Other"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert other.status_code == 422
    assert len(smtp.messages) == 1


async def test_a_greylisted_send_is_503_and_the_same_key_sends_once_the_greylist_passes(make_client, smtp, cert):
    """Found by a code review: a deferral was a 422 (the address taken for wrong) or a 502 the key replayed for
    24 hours, though nothing had been sent."""
    headers = {"Idempotency-Key": "mail-grey"}
    smtp.handler.defer = {MAIL["to_address"]}
    async with make_client(**config(smtp.port, cert)) as client:
        deferred = await client.post("/send-email", json=MAIL, headers=headers)
        smtp.handler.defer = set()
        retried = await client.post("/send-email", json=MAIL, headers=headers)
    assert deferred.status_code == 503
    assert deferred.json()["type"] == "/problems/upstream-unavailable"
    assert "deferred every recipient" in deferred.json()["detail"]
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    [message] = smtp.messages
    assert message.rcpt_tos == [MAIL["to_address"]]


async def test_twenty_concurrent_duplicates_send_one_message(make_client, smtp, cert):
    smtp.handler.data_delay = 0.2
    headers = {"Idempotency-Key": "mail-burst"}
    async with make_client(**config(smtp.port, cert)) as client:
        responses = await asyncio.gather(*(client.post("/send-email", json=MAIL, headers=headers) for _ in range(20)))
    assert {response.status_code for response in responses} == {200}
    assert len({response.json()["message_id"] for response in responses}) == 1
    assert len(smtp.messages) == 1
    assert smtp.connections == 1
