"""EmailSkill against a real aiosmtpd server: STARTTLS with a self-signed certificate, implicit TLS, AUTH."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterator
from email.header import Header
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidInput, NotConfigured, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from core.settings import Settings
from skills.email import EmailSkill
from tests.fakes.raw_tcp import raw_tcp_server
from tests.fakes.smtp import Certificate, SmtpServer, free_port, make_certificate

USER = "bot@example.com"
PASSWORD = "app-password-123"


@pytest.fixture(autouse=True)
async def _let_closing_sockets_close() -> AsyncIterator[None]:
    """aiosmtplib's close() only schedules the socket's closing; in the service the event loop runs on and
    finishes it. A test's loop ends right after the call, so give it a moment, or the socket is reported
    unclosed (a ResourceWarning, an error here) in whichever test runs next."""
    yield
    await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("smtp-cert"))


@pytest.fixture
def smtp(cert: Certificate) -> Iterator[SmtpServer]:
    with SmtpServer(mode="starttls", cert=cert, users={USER: PASSWORD}) as server:
        yield server


def email_settings(server_port: int, cert: Certificate | None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": server_port,
        "smtp_user": USER,
        "smtp_password": PASSWORD,
        "smtp_security": "starttls",
        "smtp_timeout_seconds": 5,
        "smtp_ca_file": str(cert.cert_path) if cert else None,
        "database_url": "sqlite+aiosqlite:///:memory:",
        **overrides,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture
def make_skill(smtp: SmtpServer, cert: Certificate) -> Callable[..., EmailSkill]:
    return lambda **overrides: EmailSkill(email_settings(smtp.port, cert, **overrides))


# --- Delivery ---------------------------------------------------------------------------


async def test_starttls_auth_and_the_exact_message(make_skill, smtp):
    sent = await make_skill(smtp_from="Orchestrator <bot@example.com>").send_email(
        to="Ann@Example.com", subject="Daily plan ✓", body="Deep work 9-10:30.\n", html="<p>Deep work</p>"
    )

    assert smtp.logins == [(USER, True)]
    [received] = smtp.messages
    assert received.tls is True
    assert received.login == USER
    assert received.mail_from == "bot@example.com"
    assert received.rcpt_tos == ["Ann@example.com"]
    message = received.message
    assert message["From"] == "Orchestrator <bot@example.com>"
    assert message["To"] == "Ann@example.com"
    assert message["Subject"] == "Daily plan ✓"
    assert message["Message-ID"] == sent.message_id
    assert sent.message_id.startswith("<") and sent.message_id.endswith("@example.com>")
    assert message["Date"]
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Deep work 9-10:30.\n"
    assert message.get_body(("html",)).get_content().strip() == "<p>Deep work</p>"
    assert message.get_content_type() == "multipart/alternative"
    assert sent.recipients == ["Ann@example.com"]
    assert sent.refused == {}
    assert sent.dry_run is False


@pytest.mark.parametrize("html", ["", " \n "])
async def test_a_blank_html_alternative_is_not_sent(make_skill, smtp, html):
    """Clients show the HTML part when there is one: an empty one made the recipient see a blank message."""
    sent = await make_skill().send_email(to="a@example.com", subject="Hi", body="Just text", html=html)
    [received] = smtp.messages
    assert received.message.get_content_type() == "text/plain"
    assert received.message.get_content().replace("\r\n", "\n") == "Just text\n"
    assert sent.payload["html"] is None and sent.payload["html_chars"] is None


async def test_plain_text_only_and_from_falls_back_to_user(make_skill, smtp):
    await make_skill().send_email(to=["a@example.com", "b@example.org"], subject="Hi", body="Just text")
    [received] = smtp.messages
    assert received.rcpt_tos == ["a@example.com", "b@example.org"]
    message = received.message
    assert message["From"] == USER
    assert message["To"] == "a@example.com, b@example.org"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().replace("\r\n", "\n") == "Just text\n"


async def test_implicit_tls(cert):
    with SmtpServer(mode="tls", cert=cert, users={USER: PASSWORD}) as server:
        skill = EmailSkill(email_settings(server.port, cert, smtp_security="tls"))
        sent = await skill.send_email(to="a@example.com", subject="TLS", body="x")
    [received] = server.messages
    assert received.tls is True
    assert received.login == USER
    assert received.message["Message-ID"] == sent.message_id


#: The headers of a plain-text message the skill builds: nothing else may appear.
PLAIN_HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
}


def plain_skill(port: int) -> EmailSkill:
    """The skill against a local server with no TLS and no login."""
    return EmailSkill(
        email_settings(
            port, None, smtp_security="none", smtp_user=None, smtp_password=None, smtp_from="noreply@example.com"
        )
    )


async def test_no_security_and_no_auth(cert):
    with SmtpServer(mode="none") as server:
        skill = plain_skill(server.port)
        await skill.send_email(to="a@example.com", subject="Plain", body="x")
    [received] = server.messages
    assert received.tls is False
    assert received.login is None
    assert received.mail_from == "noreply@example.com"


async def test_dry_run_connects_to_nothing_and_never_records_the_password(make_skill, smtp):
    sent = await make_skill().send_email(to="a@example.com", subject="S", body="B", html="<b>B</b>", dry_run=True)
    assert smtp.connections == 0
    assert sent.dry_run is True
    assert sent.payload is not None
    assert PASSWORD not in repr(sent.payload)
    assert sent.payload["envelope"] == {"from": USER, "to": ["a@example.com"]}
    assert sent.payload["headers"]["Subject"] == "S"
    assert sent.payload["headers"]["Message-ID"] == sent.message_id
    assert sent.payload["text"] == "B"
    assert sent.payload["html"] == "<b>B</b>"
    assert sent.payload["login"] == USER


async def test_unconfigured_names_the_variables(cert):
    skill = EmailSkill(Settings(_env_file=None, smtp_host=None, smtp_user=None))
    with pytest.raises(NotConfigured) as caught:
        await skill.send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.extras["missing_settings"] == ["SMTP_HOST", "SMTP_FROM"]


async def test_a_login_that_is_not_an_address_needs_smtp_from(make_skill, smtp):
    # SendGrid's login is the word "apikey": as the fallback sender it went out as `From: apikey` and
    # `MAIL FROM:<apikey>`. Without SMTP_FROM, email is not configured, for a dry run too, and nothing connects.
    for dry_run in (True, False):
        with pytest.raises(NotConfigured) as caught:
            await make_skill(smtp_user="apikey", smtp_from=None).send_email(
                to="a@example.com", subject="s", body="b", dry_run=dry_run
            )
        assert caught.value.extras["missing_settings"] == ["SMTP_FROM"]
    assert smtp.connections == 0

    smtp.users["apikey"] = PASSWORD
    await make_skill(smtp_user="apikey", smtp_from="Bot <bot@example.com>").send_email(
        to="a@example.com", subject="s", body="b"
    )
    [received] = smtp.messages
    assert received.login == "apikey"
    assert received.mail_from == "bot@example.com"
    assert received.message["From"] == "Bot <bot@example.com>"


# --- Validation before any connection -----------------------------------------------------


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        ("a@example.com", "Hello\r\nBcc: victim@example.org"),
        ("a@example.com", "Hello\nX-Injected: 1"),
        ("a@example.com", "Hello\rX"),
        ("a@example.com\r\nBcc: victim@example.org", "Hello"),
        (["a@example.com", "b@example.com\nBcc: v@example.org"], "Hello"),
        ("a@example.com", "Hello\u2028there"),
        ("a@example.com", "nul\x00byte"),
        # RFC 2047 encoded words that decode to a line break (found by a black-box review: the policy decodes
        # them and wrote the CR/LF raw, so the subject could add headers and replace the body).
        (
            "a@example.com",
            "=?utf-8?b?" + base64.b64encode(b"Invoice\r\nReply-To: attacker@evil.example").decode() + "?=",
        ),
        ("a@example.com", "Hi =?utf-8?q?there=0D=0ABcc:_victim@example.org?="),
        ("a@example.com", "=?iso-8859-1?q?a=0Ab?="),
        # ...and in an address (email-validator accepts `=` and `?` in a local part; the To header decoded it).
        ("=?utf-8?b?" + base64.b64encode(b"x\x0bBcc: evil@evil.com").decode() + "?=@example.com", "Hello"),
        ("=?utf-8?b?" + base64.b64encode(b"victim@other.org, y").decode() + "?=@example.com", "Hello"),
        (["a@example.com", "=?utf-8?q?x=00y?=@example.com"], "Hello"),
        ("not-an-address", "Hello"),
        ([], "Hello"),
    ],
)
async def test_bad_headers_are_422_before_connecting(make_skill, smtp, to, subject):
    with pytest.raises(InvalidInput) as caught:
        await make_skill().send_email(to=to, subject=subject, body="b")
    assert caught.value.status == 422
    assert smtp.connections == 0
    assert smtp.messages == []


@pytest.mark.parametrize(("body", "html", "field"), [("a\x00b", None, "body"), ("fine", "<p>\x00</p>", "html")])
async def test_a_nul_in_the_body_is_422_before_connecting(make_skill, smtp, body, html, field):
    """Sent under 7bit, a NUL is refused, dropped or cut at by servers: what arrived would not be what was sent."""
    with pytest.raises(InvalidInput) as caught:
        await make_skill().send_email(to="a@example.com", subject="s", body=body, html=html)
    assert caught.value.extras["errors"] == [{"field": field}]
    assert f"The {field} contains a NUL character" in caught.value.detail
    assert (smtp.connections, smtp.messages) == (0, [])


async def test_other_control_characters_in_the_body_arrive_as_sent(make_skill, smtp):
    body = "tab\tbell\x07escape\x1b[0m end\n"
    await make_skill().send_email(to="a@example.com", subject="s", body=body)
    [received] = smtp.messages
    assert received.message.get_content().replace("\r\n", "\n") == body


async def test_body_may_hold_newlines_and_smtp_commands(make_skill, smtp):
    body = "line one\r\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nlast\n"
    await make_skill().send_email(to="a@example.com", subject="s", body=body)
    [received] = smtp.messages  # one message, the "commands" stayed inside its body
    assert received.rcpt_tos == ["a@example.com"]
    assert "MAIL FROM:<evil@example.org>" in received.message.get_content()


# --- Error mapping ------------------------------------------------------------------------


async def test_wrong_password_is_502_naming_the_settings(make_skill, smtp):
    with pytest.raises(UpstreamError) as caught:
        await make_skill(smtp_password="wrong").send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 502
    assert "SMTP_USER" in caught.value.detail and "SMTP_PASSWORD" in caught.value.detail
    assert "wrong" not in caught.value.detail
    assert caught.value.extras["nothing_sent"] is True  # before MAIL FROM: an Idempotency-Key is released
    # aiosmtplib tries each offered mechanism (PLAIN, LOGIN) on one connection; no new connection is made.
    assert smtp.logins and all(login == (USER, False) for login in smtp.logins)
    assert smtp.connections == 1
    assert smtp.messages == []


async def test_every_recipient_refused_is_422(make_skill, smtp):
    smtp.handler.refuse = {"nobody@example.com"}
    with pytest.raises(InvalidInput) as caught:
        await make_skill().send_email(to="nobody@example.com", subject="s", body="b")
    assert caught.value.status == 422
    assert "nobody@example.com" in caught.value.detail
    assert smtp.messages == []


async def test_some_recipients_refused_sends_to_the_others(make_skill, smtp):
    smtp.handler.refuse = {"nobody@example.com"}
    sent = await make_skill().send_email(to=["a@example.com", "nobody@example.com"], subject="s", body="b")
    assert sent.recipients == ["a@example.com"]
    assert list(sent.refused) == ["nobody@example.com"]
    assert sent.refused["nobody@example.com"].startswith("550")
    assert smtp.messages[0].rcpt_tos == ["a@example.com"]


async def test_data_refused_is_502_and_not_retried(make_skill, smtp):
    smtp.handler.data_reply = "554 5.7.1 Message rejected as spam"
    with pytest.raises(UpstreamError) as caught:
        await make_skill().send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 502
    assert "554" in caught.value.detail
    assert smtp.connections == 1


async def test_a_greylisted_recipient_is_a_503_deferral_not_invalid_input(make_skill, smtp):
    """Found by a code review: a 451 at RCPT was a 422 "invalid input", telling the client the address was wrong."""
    smtp.handler.defer = {"new@example.com"}
    with pytest.raises(UpstreamUnavailable) as caught:
        await make_skill().send_email(to="new@example.com", subject="s", body="b")
    assert caught.value.status == 503 and caught.value.retryable is False
    assert caught.value.detail.startswith("The SMTP server deferred every recipient for now: new@example.com (451).")
    assert "Nothing was sent; try again in a few minutes" in caught.value.detail
    assert "outcome_unknown" not in caught.value.extras
    assert (smtp.connections, smtp.messages) == (1, [])


async def test_a_deferred_and_a_refused_recipient_is_still_invalid_input(make_skill, smtp):
    smtp.handler.defer, smtp.handler.refuse = {"new@example.com"}, {"nobody@example.com"}
    with pytest.raises(InvalidInput) as caught:
        await make_skill().send_email(to=["new@example.com", "nobody@example.com"], subject="s", body="b")
    assert "nobody@example.com (550)" in caught.value.detail and "new@example.com (451)" in caught.value.detail


async def test_data_deferred_is_a_503_deferral(make_skill, smtp):
    smtp.handler.data_reply = "451 4.3.0 Mail queue full, try again later"
    with pytest.raises(UpstreamUnavailable) as caught:
        await make_skill().send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.detail.startswith("The SMTP server deferred the message for now (451).")
    assert smtp.connections == 1 and smtp.messages == []


async def test_server_stalls_after_data_is_504_and_not_retried(make_skill, smtp):
    smtp.handler.data_delay = 1.5
    with pytest.raises(UpstreamTimeout) as caught:
        await make_skill(smtp_timeout_seconds=0.5).send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 504
    assert "may or may not" in caught.value.detail
    assert smtp.connections == 1  # the message may have been accepted: never sent twice


def _smtputf8_server(cert: Certificate, *, enabled: bool) -> SmtpServer:
    """The usual STARTTLS + AUTH server, offering SMTPUTF8 in its EHLO or not (aiosmtpd's `enable_SMTPUTF8`)."""
    server = SmtpServer(mode="starttls", cert=cert, users={USER: PASSWORD})
    server.controller.SMTP_kwargs["enable_SMTPUTF8"] = enabled
    return server


async def test_internationalised_address_without_smtputf8_is_422_and_nothing_is_sent(cert):
    with _smtputf8_server(cert, enabled=False) as server:
        skill = EmailSkill(email_settings(server.port, cert))
        with pytest.raises(InvalidInput) as caught:
            await skill.send_email(to="José@exämple.com", subject="s", body="b")
    assert caught.value.status == 422
    assert caught.value.retryable is False
    assert caught.value.detail == (
        "The configured SMTP server (SMTP_HOST) does not support internationalised email addresses (SMTPUTF8), "
        "needed for José@exämple.com. Nothing was sent: use an ASCII address, or an SMTP server that supports "
        "SMTPUTF8."
    )
    assert server.connections == 1  # not retried
    assert server.logins == [(USER, True)]  # it got as far as a logged-in session, then stopped before MAIL FROM
    assert server.messages == []


async def test_internationalised_address_is_delivered_when_the_server_offers_smtputf8(cert):
    with _smtputf8_server(cert, enabled=True) as server:
        skill = EmailSkill(email_settings(server.port, cert))
        sent = await skill.send_email(to="José@exämple.com", subject="s", body="b")
    [received] = server.messages
    assert received.rcpt_tos == ["José@exämple.com"]
    assert received.message["To"] == "José@exämple.com"
    assert sent.recipients == ["José@exämple.com"]


async def test_connection_refused_is_503_after_bounded_retries(cert):
    port = free_port()  # nothing listens here
    skill = EmailSkill(email_settings(port, cert))
    with pytest.raises(UpstreamUnavailable) as caught:
        await skill.send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 503
    assert "SMTP_HOST" in caught.value.detail


async def test_silent_server_is_504_after_bounded_retries(cert):
    async def never_greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # say nothing until the client gives up and closes

    async with raw_tcp_server(never_greet) as (port, connections):
        skill = EmailSkill(email_settings(port, cert, smtp_timeout_seconds=0.3))
        with pytest.raises(UpstreamTimeout) as caught:
            await skill.send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 504
    assert len(connections) == 3
    # A silent server is most often the wrong port or mode (465 expects TLS first; an HTTP server waits for a
    # request): a user review found the 504 named only SMTP_TIMEOUT_SECONDS, and the docs promised a 502 for it.
    for setting in ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SMTP_TIMEOUT_SECONDS"):
        assert setting in caught.value.detail


async def test_connection_reset_at_greeting_is_503(cert):
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async with raw_tcp_server(hang_up) as (port, connections):
        skill = EmailSkill(email_settings(port, cert))
        with pytest.raises(UpstreamUnavailable):
            await skill.send_email(to="a@example.com", subject="s", body="b")
    assert len(connections) == 3


async def test_busy_greeting_is_503_after_bounded_retries(cert):
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 Too busy, try later\r\n")
        await writer.drain()
        await reader.read()

    async with raw_tcp_server(busy) as (port, connections):
        skill = EmailSkill(email_settings(port, cert))
        with pytest.raises(UpstreamUnavailable) as caught:
            await skill.send_email(to="a@example.com", subject="s", body="b")
    assert "temporarily" in caught.value.detail
    assert len(connections) == 3


async def test_a_port_that_speaks_http_is_502_not_a_crash(cert):
    async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>no</html>\r\n")
        await writer.drain()
        await reader.read()

    async with raw_tcp_server(http_server) as (port, connections):
        skill = EmailSkill(email_settings(port, cert))
        with pytest.raises(UpstreamError) as caught:
            await skill.send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 502
    assert "SMTP_PORT" in caught.value.detail
    assert "<html>" not in caught.value.detail
    assert len(connections) == 1


async def test_untrusted_certificate_is_502_about_tls(smtp, cert):
    skill = EmailSkill(email_settings(smtp.port, None))  # no SMTP_CA_FILE: the self-signed cert is not trusted
    with pytest.raises(UpstreamError) as caught:
        await skill.send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 502
    assert "TLS" in caught.value.detail
    assert smtp.messages == []


async def test_starttls_wanted_but_not_offered_is_502_naming_security(cert):
    with SmtpServer(mode="none") as server:
        skill = EmailSkill(
            email_settings(server.port, cert, smtp_user=None, smtp_password=None, smtp_from="noreply@example.com")
        )
        with pytest.raises(UpstreamError) as caught:
            await skill.send_email(to="a@example.com", subject="s", body="b")
    assert caught.value.status == 502
    assert "SMTP_SECURITY" in caught.value.detail
    assert server.messages == []


# --- Property: header injection never reaches the server ----------------------------------

_BREAKS = st.sampled_from(["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@st.composite
def _injected(draw: st.DrawFn) -> str:
    return (
        draw(_TEXT) + draw(_BREAKS) + draw(st.sampled_from(["Bcc: victim@example.org", "X-Evil: 1", ""])) + draw(_TEXT)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["subject", "to", "to_list"]),
    injected=_injected(),
)
async def test_line_breaks_in_any_header_field_never_reach_the_server(field, injected, cert, tmp_path: Path):
    with SmtpServer(mode="none") as server:
        skill = plain_skill(server.port)
        to: str | list[str] = "a@example.com"
        subject = "ok"
        if field == "subject":
            subject = injected
        elif field == "to":
            to = "a@example.com" + injected
        else:
            to = ["a@example.com", injected + "b@example.com"]
        with pytest.raises(InvalidInput):
            await skill.send_email(to=to, subject=subject, body="body")
        assert server.connections == 0
        assert server.messages == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(injected=_injected(), encoding=st.sampled_from(["b", "q"]))
async def test_line_breaks_hidden_in_an_encoded_word_never_reach_the_server(injected, encoding, cert):
    word = (
        Header(injected, "utf-8").encode()
        if encoding == "q"
        else ("=?utf-8?b?" + base64.b64encode(injected.encode()).decode() + "?=")
    )
    with SmtpServer(mode="none") as server:
        skill = plain_skill(server.port)
        try:
            await skill.send_email(to="a@example.com", subject=word, body="body")
        except InvalidInput:
            assert server.connections == 0
            return
        [received] = server.messages
    # Sent only if it decoded without a line break; then it is one Subject header and nothing more.
    assert set(received.message.keys()) == PLAIN_HEADERS
    assert received.message.get_content().strip() == "body"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=120))
async def test_any_one_line_subject_arrives_intact_as_one_header(subject, cert):
    with SmtpServer(mode="none") as server:
        skill = plain_skill(server.port)
        await skill.send_email(to="a@example.com", subject=subject, body="body")
        [received] = server.messages
    message = received.message
    assert message["Subject"] == subject.strip(" \t")
    assert set(message.keys()) == PLAIN_HEADERS
    assert received.rcpt_tos == ["a@example.com"]
