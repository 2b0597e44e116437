"""Email skill: send mail over SMTP with aiosmtplib.

One connection per message: mail is rare here, and a pooled SMTP connection
would time out on the server between sends anyway.

Everything before DATA (connect, TLS, AUTH, EHLO, MAIL FROM, RCPT TO) hands
nothing over: a dropped or stalled connection there is retried, and any failure
there says `nothing_sent`. Once DATA has begun, a failure may mean the message
was delivered, so it is reported, never retried.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import socket
import ssl
import threading
import time
import unicodedata
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any

import aiosmtplib
from email_validator import EmailNotValidError, validate_email
from pydantic import Field

from core.errors import InvalidInput, ProblemError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from core.ledger import note_request
from core.outcome import ActionOutcome
from core.registry import Integration
from core.resources import Resources
from core.settings import Settings, is_ehlo_domain, is_mail_address
from core.upstream import with_retries

UPSTREAM = "smtp"
CONNECT_ATTEMPTS = 3
MAX_RECIPIENTS = 50
LEDGER_EXCERPT_CHARS = 500
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit; a longer subject would have to be folded anyway.
#: What EHLO names when this host has no fully qualified name to give, or none in time: an address literal, which
#: RFC 5321 4.1.4 asks for then, the loopback one as Python's smtplib sends it. A server may check it against the
#: connection's address but "MUST NOT refuse to accept a message on that basis" (4.1.4).
FALLBACK_EHLO_NAME = "[127.0.0.1]"


def _also_missing(settings: Settings) -> list[str]:
    """A sender (SMTP_FROM, else SMTP_USER when that is an address), and a password for the login SMTP_USER asks
    for: without one the login was tried with an empty password, refused by the server, while a dry run answered
    200. A login that is not an address (SendGrid's `apikey`) went out as `From: apikey` and `MAIL FROM:<apikey>`."""
    user_is_sender = bool(settings.smtp_user) and is_mail_address(settings.smtp_user or "")
    missing = [] if (settings.smtp_from or user_is_sender) else ["SMTP_FROM"]
    if settings.smtp_user and settings.smtp_password is None:
        missing.append("SMTP_PASSWORD")
    return missing


INTEGRATION = Integration(
    name="email",
    kind="skill",
    description="Send plain-text (and optional HTML) email over SMTP.",
    required=("SMTP_HOST",),
    # SMTP_FROM is needed unless SMTP_USER is an address (`_also_missing`): listed, or GET /skills named it only
    # once missing, never among the settings to set (found by a user review).
    optional=(
        "SMTP_FROM",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_SECURITY",
        "SMTP_CA_FILE",
        "SMTP_LOCAL_HOSTNAME",
    ),
    operations=("send_email",),
    extra_check=_also_missing,
)


class EmailSent(ActionOutcome):
    """The message was accepted by the SMTP server (or, in a dry run, would have been sent)."""

    message_id: str = Field(description="The Message-ID header, generated here, so it is known in a dry run too.")
    recipients: list[str] = Field(description="Addresses the server accepted (all of them in a dry run).")
    refused: dict[str, str] = Field(
        default_factory=dict, description="Addresses the server refused while accepting others, with its answer."
    )

    def ledger_external_id(self) -> str | None:
        return self.message_id


def _excerpt(value: str) -> str:
    if len(value) <= LEDGER_EXCERPT_CHARS:
        return value
    return value[:LEDGER_EXCERPT_CHARS] + f"… ({len(value)} chars)"


def _has_line_break_or_control(value: str) -> bool:
    """CR, LF and every other control or line/paragraph separator: the ways to inject a header."""
    return any(ch != "\t" and unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value)


def normalise_recipients(to: str | list[str]) -> list[str]:
    """Validate each address (syntax only, no DNS: no blocking lookups) and return them normalised, an
    internationalised domain as its ASCII (IDNA) form."""
    addresses = [to] if isinstance(to, str) else list(to)
    if not addresses:
        raise InvalidInput("Give at least one recipient address.")
    if len(addresses) > MAX_RECIPIENTS:
        raise InvalidInput(f"At most {MAX_RECIPIENTS} recipients per message.")
    normalised: list[str] = []
    for address in addresses:
        if _has_line_break_or_control(address):
            raise InvalidInput("A recipient address contains a line break or control character.")
        if "=?" in address:
            # RFC 2047 (section 5) forbids encoded words in an address, but the email policy decodes them when the
            # To header is built: "=?utf-8?b?...?=@example.com" passed the syntax check and wrote a raw control
            # character, or a second address, into To (found by a black-box review).
            raise InvalidInput(f"{address!r} contains an RFC 2047 encoded word (=?...?=), which no address may hold.")
        try:
            valid = validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:
            raise InvalidInput(f"{address!r} is not a valid email address: {exc}") from None
        # An internationalised domain travels as its IDNA A-label (xn--...): only a non-ASCII local part needs
        # SMTPUTF8 (RFC 6531), and aiosmtplib converts nothing, so anna@bücher.example was refused by every server
        # without SMTPUTF8 (found by an API review). `ascii_email` is None when the local part is not ASCII.
        address = valid.ascii_email or valid.normalized
        if address not in normalised:
            normalised.append(address)
    return normalised


def check_content(body: str, html: str | None) -> None:
    """NUL is the one character no email body may carry (RFC 5322 text is %d1-127 and beyond): sent as is under
    7bit, servers reject, strip or truncate at it, so what arrives is not what the ledger says was sent."""
    for name, value in (("body", body), ("html", html)):
        if value is not None and "\x00" in value:
            raise InvalidInput(
                f"The {name} contains a NUL character (U+0000), which email cannot carry; remove it.",
                errors=[{"field": name}],
            )


def effective_html(html: str | None) -> str | None:
    """The HTML alternative to send, or None. A blank one is none: mail clients show the HTML part when there
    is one, so an empty part made the recipient see a blank message (found by a mutation review)."""
    return html if html is not None and html.strip() else None


def normalise_subject(subject: str) -> str:
    """One line, surrounding spaces and tabs removed: mail parsers drop them from plain-ASCII headers anyway,
    so stripping here makes what is recorded equal to what the recipient sees."""
    if _has_line_break_or_control(subject):
        raise InvalidInput("The subject contains a line break or control character; it must be one line.")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidInput(f"The subject is longer than {MAX_SUBJECT_CHARS} characters.")
    return subject.strip(" \t")


def _is_fully_qualified(name: str) -> bool:
    """A name EHLO may carry for this host: a domain with a dot. A bare host name (a container's id) is a local
    alias, which RFC 5321 2.3.5 says MUST NOT appear in an SMTP transaction."""
    return "." in name and is_ehlo_domain(name)


def _looked_up_ehlo_name() -> str:
    """This host's name as Python's smtplib picks it: its FQDN, else an address literal of its host name's address.

    Both may ask the resolver (getfqdn does a reverse lookup), so this only ever runs in `EhloName`'s thread.
    """
    try:
        fqdn = socket.getfqdn()
        if _is_fully_qualified(fqdn):
            return fqdn
        address = socket.gethostbyname(socket.gethostname())  # IPv4 dotted quad, always
    except (OSError, UnicodeError):  # no such name; a host name that is not ASCII
        return FALLBACK_EHLO_NAME
    return f"[{address}]"


def _ehlo_name_without_lookup() -> str:
    """The name to give while the lookup is late: the kernel's host name (no resolver involved) when it is fully
    qualified, as on a server named mail1.example.com, else the address literal."""
    try:
        name = socket.gethostname()
    except (OSError, UnicodeError):
        return FALLBACK_EHLO_NAME
    return name if _is_fully_qualified(name) else FALLBACK_EHLO_NAME


class EhloName:
    """The name this host gives in EHLO: SMTP_LOCAL_HOSTNAME, else its name, looked up once and never waited on
    past a deadline.

    Given no `local_hostname`, aiosmtplib calls `socket.getfqdn()` in a thread before each connection, with no
    timeout. getfqdn does a reverse DNS lookup, so a slow or hanging resolver (a container's, a laptop's off its
    VPN) stalled every send, up to once per connection, outside SMTP_TIMEOUT_SECONDS and the run's bound. Here
    the lookup runs once per skill (one per process: the lifespan opens it), and a send waits on it only until
    `timeout` after it began; from then on sends give `_ehlo_name_without_lookup()` at once, and the looked-up
    name once it has come (a slow resolver is paid for once, a dead one never again).

    The lookup has a daemon thread of its own, not asyncio's default executor: a lookup that never returns would
    hold an executor thread, which `asyncio.run` joins at shutdown and the interpreter at exit, so the service
    would never stop.
    """

    def __init__(self, configured: str | None, timeout: float) -> None:
        self._configured = configured
        self._timeout = timeout
        self._lookup: concurrent.futures.Future[str] | None = None
        self._deadline = 0.0

    async def get(self) -> str:
        if self._configured is not None:
            return self._configured
        if self._lookup is None:
            self._lookup = _start_lookup()
            self._deadline = time.monotonic() + self._timeout
        if self._lookup.done():
            return self._lookup.result()
        remaining = self._deadline - time.monotonic()
        if remaining > 0:
            try:
                # Concurrent first sends share the one lookup and its one deadline.
                return await asyncio.wait_for(asyncio.wrap_future(self._lookup), remaining)
            except TimeoutError:
                pass
        return _ehlo_name_without_lookup()


def _start_lookup() -> concurrent.futures.Future[str]:
    lookup: concurrent.futures.Future[str] = concurrent.futures.Future()
    # Running, so a waiter that gives up (wait_for cancels its wrapped future) cannot cancel it for the others.
    lookup.set_running_or_notify_cancel()

    # An error the lookup does not catch is printed by threading's excepthook and leaves the future pending: sends
    # until the deadline wait for it and every send gives the fallback, as for a hanging resolver.
    threading.Thread(
        target=lambda: lookup.set_result(_looked_up_ehlo_name()), name="smtp-ehlo-name", daemon=True
    ).start()
    return lookup


class EmailSkill:
    """SMTP with aiosmtplib; one connection per message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ehlo_name = EhloName(settings.smtp_local_hostname, settings.smtp_timeout_seconds)

    async def send_email(
        self,
        *,
        to: str | list[str],
        subject: str,
        body: str,
        html: str | None = None,
        dry_run: bool = False,
    ) -> EmailSent:
        """Validate, build and send one message; every header check happens before any connection."""
        INTEGRATION.require(self.settings)
        recipients = normalise_recipients(to)
        subject = normalise_subject(subject)
        html = effective_html(html)
        check_content(body, html)
        sender = self.settings.smtp_from or self.settings.smtp_user
        assert sender is not None  # INTEGRATION.require checked SMTP_FROM, or SMTP_USER as an address
        envelope_from = parseaddr(sender)[1]  # "Name <addr>" -> addr, for MAIL FROM and the Message-ID domain
        message = self._build(sender, envelope_from, recipients, subject, body, html)
        payload = self._payload(message, envelope_from, recipients, body, html)

        if dry_run:
            return EmailSent(dry_run=True, payload=payload, message_id=message["Message-ID"], recipients=recipients)

        note_request(payload)
        refused = await self._deliver(message, envelope_from, recipients)
        accepted = [address for address in recipients if address not in refused]
        return EmailSent(payload=payload, message_id=message["Message-ID"], recipients=accepted, refused=refused)

    # --- Building -------------------------------------------------------------------

    def _build(
        self, sender: str, envelope_from: str, recipients: list[str], subject: str, body: str, html: str | None
    ) -> EmailMessage:
        message = EmailMessage()
        try:
            message["From"] = sender
            message["To"] = ", ".join(recipients)
            message["Subject"] = subject
            message["Date"] = format_datetime(datetime.now(UTC))
            message["Message-ID"] = make_msgid(domain=envelope_from.rpartition("@")[2] or None)
        except ValueError as exc:
            # The default policy refuses a raw CR/LF in any header: a last line of defence after the checks above.
            raise InvalidInput(f"A header value is not allowed: {exc}") from None
        # ...but not one hidden in an RFC 2047 encoded word: the policy decodes `=?utf-8?b?...?=` when the header
        # is set and writes the decoded CR/LF raw when the message is serialised, so a subject could add headers
        # and replace the body (found by a black-box review). What counts is the header as it will be written.
        if _has_line_break_or_control(str(message["To"])):  # the same rule, in case an address still decodes
            raise InvalidInput("A recipient address decodes to a line break or control character.")
        if _has_line_break_or_control(str(message["Subject"])):
            raise InvalidInput(
                "The subject decodes (an RFC 2047 encoded word, =?charset?b?...?=) to a line break or control "
                "character; it must be one line. Send the subject as plain text."
            )
        message.set_content(body)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    def _payload(
        self, message: EmailMessage, envelope_from: str, recipients: list[str], body: str, html: str | None
    ) -> dict[str, Any]:
        """What the ledger records: server, envelope, headers and content; never the password.

        Message content is personal: the ledger keeps its first `LEDGER_EXCERPT_CHARS` characters, its length
        and a SHA-256 (to show which exact text went out without keeping it).
        """
        settings = self.settings
        return {
            "server": f"{settings.smtp_host}:{settings.effective_smtp_port}",
            "security": settings.smtp_security,
            "login": settings.smtp_user,
            "envelope": {"from": envelope_from, "to": recipients},
            "headers": {name: str(message[name]) for name in ("From", "To", "Subject", "Date", "Message-ID")},
            "text": _excerpt(body),
            "text_chars": len(body),
            "text_sha256": hashlib.sha256(body.encode()).hexdigest(),
            "html": _excerpt(html) if html is not None else None,
            "html_chars": len(html) if html is not None else None,
        }

    # --- Sending --------------------------------------------------------------------

    async def _deliver(self, message: EmailMessage, sender: str, recipients: list[str]) -> dict[str, str]:
        """Send; return the recipients the server refused while it accepted others."""
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        use_tls = settings.smtp_security == "tls"
        local_hostname = await self.ehlo_name.get()  # once per send, not per connection (see EhloName)

        def client() -> _SMTP:
            return _SMTP(
                hostname=settings.smtp_host,
                port=settings.effective_smtp_port,
                use_tls=use_tls,
                # `none` means none: aiosmtplib would otherwise upgrade whenever the server offers STARTTLS.
                start_tls=settings.smtp_security == "starttls",
                username=settings.smtp_user,
                password=password if settings.smtp_user else None,
                timeout=settings.smtp_timeout_seconds,
                cert_bundle=settings.smtp_ca_file,
                local_hostname=local_hostname,
            )

        async def connect() -> _SMTP:
            smtp = client()
            try:
                await smtp.connect()
            except BaseException as exc:
                smtp.close()
                if isinstance(exc, Exception):
                    error = connection_error(exc)
                    # Before MAIL FROM: certainly nothing sent. The member tells the caller, and releases an
                    # Idempotency-Key, so a fixed retry sends (a 502 for a TLS or login failure was replayed
                    # for 24 hours; found by a black-box review).
                    error.extras["nothing_sent"] = True
                    raise error from None
                raise
            return smtp

        non_ascii = [address for address in (sender, *recipients) if not address.isascii()]

        async def send() -> dict[str, str]:
            smtp = await connect()
            try:
                errors, _ = await smtp.send_message(message, sender=sender, recipients=recipients)
            except aiosmtplib.SMTPNotSupported as exc:
                if not non_ascii:
                    smtp.close()
                    raise sending_error(exc) from None
                # aiosmtplib refuses before MAIL FROM when an address needs SMTPUTF8 and the server's EHLO did
                # not offer it: nothing was handed over, the connection is in a known state, and no retry can
                # change it.
                await _quit(smtp)
                raise smtputf8_unsupported(non_ascii) from None
            except BaseException as exc:
                smtp.close()  # no QUIT on a connection in an unknown state (or while being cancelled)
                if isinstance(exc, Exception):
                    raise (sending_error(exc) if smtp.data_started else envelope_error(exc)) from None
                raise
            await _quit(smtp)
            return {address: f"{response.code} {response.message}" for address, response in errors.items()}

        # Only failures that handed nothing over are retryable (connect, and a connection lost before DATA).
        return await with_retries(send, attempts=CONNECT_ATTEMPTS)


class _SMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, noting when DATA began: until then the server holds no message.

    Without it every failure after connecting read "may or may not have been delivered": a connection reset at
    EHLO or MAIL FROM was never retried, and its 502 was replayed for an Idempotency-Key's 24 hours, so that
    key could never send (found by a fault-injection audit).
    """

    data_started = False

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_started = True
        return await super().data(message, **kwargs)


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """QUIT politely; the message is already accepted, so a failure here changes nothing."""
    try:
        if smtp.is_connected:
            await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


def connection_error(exc: Exception) -> ProblemError:
    """Map a failure while connecting, upgrading to TLS or logging in; nothing was sent yet."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return UpstreamError(
            f"The SMTP server refused the login ({exc.code}): check SMTP_USER and SMTP_PASSWORD.", upstream=UPSTREAM
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return UpstreamError(
            f"The SMTP server does not support what was asked ({exc.message}): "
            "check SMTP_SECURITY, SMTP_PORT and whether it offers AUTH on this connection.",
            upstream=UPSTREAM,
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return UpstreamTimeout(
            "The SMTP server did not answer within SMTP_TIMEOUT_SECONDS. Check SMTP_HOST, SMTP_PORT and SMTP_SECURITY: "
            "a server that is silent from the start is often on the wrong port or mode (port 465 expects "
            "SMTP_SECURITY=tls; an HTTP server waits for a request).",
            upstream=UPSTREAM,
        )
    if _is_tls_failure(exc):
        return UpstreamError(
            "TLS with the SMTP server failed: check SMTP_SECURITY and SMTP_PORT (465 is tls, 587 is starttls) "
            "and the server's certificate (SMTP_CA_FILE for a private CA).",
            upstream=UPSTREAM,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code < 0:
        # aiosmtplib's code for a line that is not SMTP at all (an HTTP server, TLS bytes on a plain port).
        return UpstreamError(
            "The server at SMTP_HOST/SMTP_PORT did not answer like an SMTP server: "
            "check SMTP_PORT and SMTP_SECURITY (465 is tls, 587 is starttls).",
            upstream=UPSTREAM,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # A 4xx greeting or EHLO answer is the server saying "not now"; 5xx says "never".
        if 400 <= exc.code < 500:
            return UpstreamUnavailable(
                f"The SMTP server is temporarily refusing connections ({exc.code}).", upstream=UPSTREAM
            )
        return UpstreamError(f"The SMTP server refused the connection ({exc.code}).", upstream=UPSTREAM)
    if isinstance(exc, (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError)):
        return UpstreamUnavailable(
            "The SMTP server could not be reached: check SMTP_HOST and SMTP_PORT.", upstream=UPSTREAM
        )
    if isinstance(exc, aiosmtplib.SMTPException):
        # For example "STARTTLS extension not supported by server": aiosmtplib's words, never a secret.
        return UpstreamError(
            f"SMTP failed while connecting: {exc.message} Check SMTP_SECURITY and SMTP_PORT.", upstream=UPSTREAM
        )
    return UpstreamError(f"SMTP failed while connecting ({type(exc).__name__}).", upstream=UPSTREAM)


def envelope_error(exc: Exception) -> ProblemError:
    """Map a failure after connecting but before DATA (EHLO, MAIL FROM, RCPT TO): nothing was handed over.

    A reply refusing something is read as while sending (a deferral, a refused recipient or sender); a
    connection dropped, stalled or answered in a non-SMTP line as while connecting, so a drop is retried.
    """
    replied = isinstance(exc, aiosmtplib.SMTPRecipientsRefused) or (
        isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 0
    )
    if replied or isinstance(exc, ValueError):
        error = sending_error(exc)
    elif isinstance(exc, TimeoutError):  # aiosmtplib's SMTPTimeoutError is one (and an OSError)
        # Not connection_error's "silent from the start: check the port": this server greeted (found by a review).
        error = UpstreamTimeout(
            "The SMTP server stopped answering (SMTP_TIMEOUT_SECONDS) before the message was handed over.",
            upstream=UPSTREAM,
        )
    elif isinstance(exc, (aiosmtplib.SMTPServerDisconnected, OSError)):
        error = UpstreamUnavailable(
            "The SMTP server closed the connection before the message was handed over.", upstream=UPSTREAM
        )
    else:
        error = connection_error(exc)
    error.extras["nothing_sent"] = True
    return error


def smtputf8_unsupported(addresses: list[str]) -> InvalidInput:
    """An internationalised address (non-ASCII, RFC 6531) meets a server without SMTPUTF8: the caller must change
    something (the address, or the server), so this is a 422 and is never retried."""
    return InvalidInput(
        "The configured SMTP server (SMTP_HOST) does not support internationalised email addresses (SMTPUTF8), "
        f"needed for {', '.join(addresses)}. Nothing was sent: use an ASCII address, or an SMTP server that "
        "supports SMTPUTF8.",
        upstream=UPSTREAM,
        settings=["SMTP_HOST"],
    )


def sending_error(exc: Exception) -> ProblemError:
    """Map a failure after the connection was up: never retried, the message may have gone out."""
    # A 4xx reply is "try again later" (RFC 5321 4.2.1: greylisting, a full queue): nothing was accepted, so
    # it is a 503 that releases an Idempotency-Key, never "invalid input" or a stored 502 (found by a code
    # review: a greylisted address was answered as a wrong one).
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = ", ".join(f"{error.recipient} ({error.code})" for error in exc.recipients)
        if all(_transient(error.code) for error in exc.recipients):
            return _deferred(f"The SMTP server deferred every recipient for now: {refused}.")
        return InvalidInput(f"The SMTP server refused every recipient: {refused}.", upstream=UPSTREAM)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        if _transient(exc.code):
            return _deferred(f"The SMTP server deferred {exc.recipient} for now ({exc.code}).")
        return InvalidInput(f"The SMTP server refused {exc.recipient} ({exc.code}).", upstream=UPSTREAM)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused) and _transient(exc.code):
        return _deferred(f"The SMTP server deferred the sender {exc.sender} for now ({exc.code}).")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and _transient(exc.code):
        return _deferred(f"The SMTP server deferred the message for now ({exc.code}).")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return UpstreamError(
            f"The SMTP server refused the sender {exc.sender} ({exc.code}): check SMTP_FROM.", upstream=UPSTREAM
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return UpstreamTimeout(
            "The SMTP server stopped answering while the message was sent; it may or may not have been delivered.",
            upstream=UPSTREAM,
            retryable=False,
            outcome_unknown=True,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code < 200:
        # aiosmtplib's -1: a reply that is not SMTP or is too long to read. It refused nothing we can tell, and
        # the server may have queued the message (found by a crash-consistency review: it read "refused").
        return UpstreamError(
            "The SMTP server's reply could not be read while the message was sent; it may or may not have been "
            "delivered.",
            upstream=UPSTREAM,
            outcome_unknown=True,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return UpstreamError(f"The SMTP server refused the message ({exc.code}).", upstream=UPSTREAM)
    if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, OSError)):
        return UpstreamError(
            "The SMTP connection dropped while the message was sent; it may or may not have been delivered.",
            upstream=UPSTREAM,
            outcome_unknown=True,
        )
    if isinstance(exc, ValueError):
        return InvalidInput(f"The message could not be encoded for SMTP: {exc}")
    return UpstreamError(f"SMTP failed while sending ({type(exc).__name__}).", upstream=UPSTREAM)


def _transient(code: int) -> bool:
    return 400 <= code < 500


def _deferred(detail: str) -> UpstreamUnavailable:
    """A 4xx SMTP reply: the message was not accepted, and the same message may be accepted later."""
    return UpstreamUnavailable(
        f"{detail} Nothing was sent; try again in a few minutes (greylisting and full queues pass).",
        upstream=UPSTREAM,
        retryable=False,  # not within the request: a deferral lasts minutes
    )


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def open_skill(resources: Resources) -> EmailSkill:
    return EmailSkill(resources.settings)
