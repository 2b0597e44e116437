"""Fixtures shared by router tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.smtp import SmtpServer, make_certificate

SMTP_USER, SMTP_PASSWORD = "bot@example.com", "smtp-pass-987654"


@pytest.fixture
def smtp_login(tmp_path) -> Iterator[tuple[SmtpServer, dict[str, Any]]]:
    """A STARTTLS SMTP server on 127.0.0.1 that wants a login, and the settings that point the service at it."""
    cert = make_certificate(tmp_path)
    with SmtpServer(mode="starttls", cert=cert, users={SMTP_USER: SMTP_PASSWORD}) as server:
        yield (
            server,
            {
                "smtp_host": "127.0.0.1",
                "smtp_port": server.port,
                "smtp_user": SMTP_USER,
                "smtp_password": SMTP_PASSWORD,
                "smtp_from": "Orchestrator <bot@example.com>",
                "smtp_ca_file": str(cert.cert_path),
                "smtp_timeout_seconds": 5,
            },
        )
