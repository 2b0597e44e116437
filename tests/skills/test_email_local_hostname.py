"""The name this host gives in EHLO: SMTP_LOCAL_HOSTNAME, else looked up once per process, never waited on past
SMTP_TIMEOUT_SECONDS.

Given no `local_hostname`, aiosmtplib called `socket.getfqdn()` (a reverse DNS lookup, in a thread) before every
connection with no timeout: a hanging resolver stalled every send, up to once per connection, outside every timeout
the service sets and outside the email run's bound. Against a real aiosmtpd server, which records each EHLO name it
is given; `socket.getfqdn` and friends are replaced, so no test asks a real resolver.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from core.errors import ConfigurationError
from core.settings import load_settings
from skills import email
from skills.email import EmailSkill
from tests.fakes.smtp import Certificate, SmtpServer, make_certificate
from tests.skills.test_email import PASSWORD, USER, email_settings


@pytest.fixture(autouse=True)
async def _let_closing_sockets_close() -> AsyncIterator[None]:
    """As in tests/skills/test_email.py: aiosmtplib's close() only schedules the socket's closing."""
    yield
    await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("smtp-cert"))


@pytest.fixture
def smtp(cert: Certificate) -> Iterator[SmtpServer]:
    server = SmtpServer(mode="starttls", cert=cert, users={USER: PASSWORD})
    # aiosmtpd looks up its own name with socket.getfqdn for each connection unless given one: the fake resolver
    # below would answer it too (and hang it).
    server.controller.SMTP_kwargs["hostname"] = "mx.example.test"
    with server:
        yield server


@pytest.fixture
def ehlo_names(smtp: SmtpServer) -> list[str]:
    """Every EHLO name the server is given, in order (each connection sends two: before and after STARTTLS)."""
    names: list[str] = []

    async def handle_EHLO(server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        names.append(hostname)
        session.host_name = hostname  # what aiosmtpd does itself when no hook takes EHLO over
        return responses

    smtp.handler.handle_EHLO = handle_EHLO  # type: ignore[attr-defined]
    return names


class FakeResolver:
    """Stands in for `socket.getfqdn`, `gethostname` and `gethostbyname`, counting the lookups and noting threads."""

    def __init__(self, fqdn: str, hostname: str = "buildbox", address: str = "10.1.2.3") -> None:
        self.fqdn, self.hostname, self.address = fqdn, hostname, address
        self.getfqdn_calls = 0
        self.lookup_threads: list[threading.Thread] = []
        #: When set, getfqdn hangs until `release` is set (at most 8 s, so the test run ends either way).
        self.hang = False
        self.release = threading.Event()

    def getfqdn(self, name: str = "") -> str:
        self.getfqdn_calls += 1
        self.lookup_threads.append(threading.current_thread())
        if self.hang:
            self.release.wait(8)
        return self.fqdn

    def gethostname(self) -> str:
        return self.hostname

    def gethostbyname(self, name: str) -> str:
        assert name == self.hostname
        return self.address

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeResolver:
        monkeypatch.setattr(socket, "getfqdn", self.getfqdn)
        monkeypatch.setattr(socket, "gethostname", self.gethostname)
        monkeypatch.setattr(socket, "gethostbyname", self.gethostbyname)
        return self


async def _send(skill: EmailSkill, to: str = "ann@example.com") -> float:
    started = time.monotonic()
    sent = await skill.send_email(to=to, subject="Plan", body="Deep work first.")
    assert sent.recipients == [to]
    return time.monotonic() - started


# --- SMTP_LOCAL_HOSTNAME --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["relay-client.example.net", "[192.0.2.1]", "[IPv6:2001:db8::1]"])
async def test_smtp_local_hostname_is_the_name_the_server_sees_and_nothing_is_looked_up(
    smtp, cert, ehlo_names, monkeypatch, name
):
    resolver = FakeResolver(fqdn="looked-up.example.org").install(monkeypatch)
    skill = EmailSkill(email_settings(smtp.port, cert, smtp_local_hostname=f" {name} "))

    await _send(skill)

    assert ehlo_names == [name, name]  # before and after STARTTLS, sent as given (surrounding blanks dropped)
    assert len(smtp.messages) == 1
    assert resolver.getfqdn_calls == 0


@pytest.mark.parametrize(
    "value",
    [
        "mail.example.com",
        "MAIL.Example.COM",
        "localhost",
        "xn--bcher-kva.example",
        "a" * 63 + ".example.com",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "[ipv6:::ffff:192.0.2.1]",
    ],
)
def test_a_domain_or_an_address_literal_is_a_valid_smtp_local_hostname(value):
    assert load_settings(_env_file=None, smtp_local_hostname=value).smtp_local_hostname == value


@pytest.mark.parametrize(
    "value",
    [
        "mail example.com",  # would add a parameter to EHLO
        "mail.example.com\r\nRSET",  # would add a command
        "under_score.example.com",
        "-lead.example.com",
        "trail-.example.com",
        "mail..example.com",
        ".example.com",
        "a" * 64 + ".example.com",  # a label is 63 octets at most
        "bücher.example",  # EHLO is ASCII: give the xn-- form
        "192.0.2.1",  # an address goes in brackets
        "[192.0.2.256]",
        "[2001:db8::1]",  # an IPv6 literal is tagged IPv6:
        "[IPv6:fe80::1%eth0]",  # no scope id in the grammar
        "[X-tag:content]",  # a General-address-literal needs a tag registered with IANA
        "[]",
    ],
)
def test_anything_else_stops_start_up_naming_smtp_local_hostname(value):
    with pytest.raises(ConfigurationError) as caught:
        load_settings(_env_file=None, smtp_local_hostname=value)
    assert "SMTP_LOCAL_HOSTNAME: " in str(caught.value)
    assert "RFC 5321" in str(caught.value)


def test_a_blank_smtp_local_hostname_is_unset():
    assert load_settings(_env_file=None, smtp_local_hostname="  ").smtp_local_hostname is None


# --- Looked up -------------------------------------------------------------------------------


async def test_the_fqdn_is_looked_up_once_per_skill_off_the_event_loop(smtp, cert, ehlo_names, monkeypatch):
    """aiosmtplib looked it up before every connection; the skill is opened once per process (the lifespan)."""
    resolver = FakeResolver(fqdn="box.example.org").install(monkeypatch)
    skill = EmailSkill(email_settings(smtp.port, cert))

    await _send(skill, "ann@example.com")
    await _send(skill, "bob@example.com")

    assert ehlo_names == ["box.example.org"] * 4
    assert len(smtp.messages) == 2
    assert resolver.getfqdn_calls == 1
    assert resolver.lookup_threads[0] is not threading.main_thread()  # pytest-asyncio's loop runs on the main one


async def test_a_host_without_a_fully_qualified_name_gives_an_address_literal(smtp, cert, ehlo_names, monkeypatch):
    """getfqdn gives back the bare host name when it finds nothing better (a container named by its id): a local
    alias, which RFC 5321 2.3.5 forbids in EHLO. As smtplib does, the address literal of its address is sent."""
    FakeResolver(fqdn="buildbox", hostname="buildbox", address="10.1.2.3").install(monkeypatch)

    await _send(EmailSkill(email_settings(smtp.port, cert)))

    assert ehlo_names == ["[10.1.2.3]", "[10.1.2.3]"]


async def test_a_hanging_resolver_costs_one_wait_cut_at_the_timeout_then_the_fallback(
    smtp, cert, ehlo_names, monkeypatch
):
    """Two first sends at once, while getfqdn hangs: both wait for the one lookup, only until SMTP_TIMEOUT_SECONDS
    after it began, and give the fallback; the event loop runs on meanwhile. A later send does not wait again, and
    once the lookup answers (late) its name is used."""
    timeout = 2.0
    resolver = FakeResolver(fqdn="late.example.org", hostname="buildbox").install(monkeypatch)
    resolver.hang = True
    settings = email_settings(smtp.port, cert, smtp_timeout_seconds=timeout)
    skill = EmailSkill(settings)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        started = time.monotonic()
        await asyncio.gather(_send(skill, "ann@example.com"), _send(skill, "bob@example.com"))
        first = time.monotonic() - started
        second = await _send(skill, "cy@example.com")
    finally:
        resolver.release.set()
        ticker.cancel()

    # Within the bound the run is given (which counts this wait), and in fact within one timeout and the sends.
    assert first < settings.longest_email_seconds
    assert timeout - 0.1 <= first < timeout + 3
    assert ticks >= 10  # the loop was never blocked on the lookup
    assert second < timeout / 2  # no second wait
    assert resolver.getfqdn_calls == 1
    # The host name `buildbox` is no FQDN, so the fallback is the address literal, valid for EHLO (RFC 5321 4.1.4).
    assert ehlo_names == [email.FALLBACK_EHLO_NAME] * 6
    assert len(smtp.messages) == 3

    resolver.lookup_threads[0].join(5)  # released: the lookup answers, late
    assert not resolver.lookup_threads[0].is_alive()
    assert await _send(skill, "dee@example.com") < timeout / 2
    assert ehlo_names[6:] == ["late.example.org"] * 2
    assert resolver.getfqdn_calls == 1


async def test_a_late_lookup_falls_back_to_a_fully_qualified_host_name(smtp, cert, ehlo_names, monkeypatch):
    """gethostname asks no resolver: a server named mail1.example.com gives that while the lookup is late."""
    resolver = FakeResolver(fqdn="late.example.org", hostname="mail1.example.com").install(monkeypatch)
    resolver.hang = True
    try:
        await _send(EmailSkill(email_settings(smtp.port, cert, smtp_timeout_seconds=0.5)))
    finally:
        resolver.release.set()
    assert ehlo_names == ["mail1.example.com", "mail1.example.com"]


# --- The run's bound -------------------------------------------------------------------------


def test_the_email_bound_counts_the_lookup_unless_smtp_local_hostname_names_this_host(make_settings):
    """It was named as an uncounted wait; cut at SMTP_TIMEOUT_SECONDS and waited on once per send, it is one S."""
    looked_up = make_settings(smtp_timeout_seconds=15)
    configured = make_settings(smtp_timeout_seconds=15, smtp_local_hostname="mail.example.com")
    assert looked_up.longest_email_seconds == 190 * 15 + 0.75
    assert looked_up.longest_email_seconds - configured.longest_email_seconds == 15
