"""API-fact review of the skills: each test pins a vendor or protocol behaviour the service relied on wrongly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core.settings import Settings
from skills.email import EmailSkill
from tests.fakes.smtp import Certificate, SmtpServer, make_certificate

SMTP_USER = "bot@example.com"
SMTP_PASSWORD = "app-password-123"


@pytest.fixture(autouse=True)
async def _let_closing_sockets_close() -> AsyncIterator[None]:
    """As in test_email.py: aiosmtplib's close() only schedules the socket's closing."""
    yield
    await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("smtp-cert"))


def _email_skill(server: SmtpServer, cert: Certificate) -> EmailSkill:
    return EmailSkill(
        Settings(
            _env_file=None,
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_user=SMTP_USER,
            smtp_password=SMTP_PASSWORD,
            smtp_security="starttls",
            smtp_timeout_seconds=5,
            smtp_ca_file=str(cert.cert_path),
            database_url="sqlite+aiosqlite:///:memory:",
        )
    )


async def test_an_internationalised_domain_needs_no_smtputf8(cert):
    """Only a non-ASCII local part needs SMTPUTF8 (RFC 6531): a domain travels as its IDNA A-label ("xn--"), which
    email_validator gives as `ascii_email` ("immediately prior to mail submission you must replace the email
    address with its ASCII-ized form"); aiosmtplib converts nothing. anna@bücher.example was refused as a 422 by
    every server without SMTPUTF8."""
    server = SmtpServer(mode="starttls", cert=cert, users={SMTP_USER: SMTP_PASSWORD})
    server.controller.SMTP_kwargs["enable_SMTPUTF8"] = False
    with server:
        sent = await _email_skill(server, cert).send_email(to="anna@bücher.example", subject="s", body="b")
    [received] = server.messages
    assert received.rcpt_tos == ["anna@xn--bcher-kva.example"]
    assert received.message["To"] == "anna@xn--bcher-kva.example"
    assert sent.recipients == ["anna@xn--bcher-kva.example"]
