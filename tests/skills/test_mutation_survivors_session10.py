"""Tests for mutants of the tenth session's skill changes that survived the existing suite.

Each test names the mutant it kills. The mutants were applied by hand to the code changed since 23c0339; the
commit that adds this file lists them all. Against the real aiosmtpd server of
tests/skills/test_email_local_hostname.py, which records each EHLO name it is given; no test asks a real resolver.
"""

from __future__ import annotations

import socket
import time

import pytest

from skills.email import EmailSkill
from tests.skills.test_email import email_settings
from tests.skills.test_email_local_hostname import (  # noqa: F401 (fixtures)
    FakeResolver,
    _let_closing_sockets_close,
    _send,
    cert,
    ehlo_names,
    smtp,
)


@pytest.mark.parametrize("failure", [OSError("no such host"), UnicodeError("a host name that is not ASCII")])
async def test_a_lookup_that_fails_gives_the_loopback_address_literal_at_once(
    smtp,  # noqa: F811
    cert,  # noqa: F811
    ehlo_names,  # noqa: F811
    monkeypatch,
    failure,
):
    """Kills catching only OSError around the lookup, and changing FALLBACK_EHLO_NAME: a host name that is not
    ASCII raises UnicodeError, which left the lookup pending, so the first send waited out SMTP_TIMEOUT_SECONDS.
    The name sent is `[127.0.0.1]`, an address literal (RFC 5321 4.1.4), not `localhost`, a local alias."""
    timeout = 3.0
    resolver = FakeResolver(fqdn="unused.example.org").install(monkeypatch)

    def failing_getfqdn(name: str = "") -> str:
        resolver.getfqdn_calls += 1
        raise failure

    monkeypatch.setattr(socket, "getfqdn", failing_getfqdn)
    took = await _send(EmailSkill(email_settings(smtp.port, cert, smtp_timeout_seconds=timeout)))
    assert took < timeout - 1  # the failed lookup is an answer, not a wait
    assert ehlo_names == ["[127.0.0.1]", "[127.0.0.1]"]
    assert resolver.getfqdn_calls == 1


async def test_a_hanging_lookup_is_waited_on_no_longer_than_the_timeout_in_its_own_daemon_thread(
    smtp,  # noqa: F811
    cert,  # noqa: F811
    ehlo_names,  # noqa: F811
    monkeypatch,
):
    """Kills a deadline past SMTP_TIMEOUT_SECONDS (the run's bound counts one S for the lookup), and a lookup
    thread that is not a daemon: a lookup that never returns would then keep the process from exiting."""
    timeout = 1.5
    resolver = FakeResolver(fqdn="late.example.org", hostname="buildbox").install(monkeypatch)
    resolver.hang = True
    try:
        started = time.monotonic()
        await _send(EmailSkill(email_settings(smtp.port, cert, smtp_timeout_seconds=timeout)))
        took = time.monotonic() - started
        [thread] = resolver.lookup_threads
        assert thread.daemon
    finally:
        resolver.release.set()
    assert timeout - 0.1 <= took < 2 * timeout - 0.3
    assert ehlo_names == ["[127.0.0.1]", "[127.0.0.1]"]
