"""A real SMTP server on 127.0.0.1 for email tests: aiosmtpd with STARTTLS or implicit TLS, AUTH and a recorder.

    cert = make_certificate(tmp_path)
    with SmtpServer(mode="starttls", cert=cert, users={"bot@example.com": "s3cret"}) as smtp:
        ... point SMTP_HOST/SMTP_PORT at smtp.port, SMTP_CA_FILE at cert.cert_path ...
        message = smtp.messages[0].message   # parsed email.message.EmailMessage

The certificate is self-signed for `localhost` and `127.0.0.1`, made with `cryptography` per test session.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Certificate:
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def make_certificate(directory: Path) -> Certificate:
    """A self-signed certificate valid for localhost and 127.0.0.1 (EC keys: fast to make)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Certificate(cert_path, key_path)


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class RecordingHandler:
    """aiosmtpd handler: records accepted messages; can refuse recipients, stall or refuse DATA."""

    messages: list[Received] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    #: Recipients answered "try again later" (greylisting), as a 4xx.
    defer: set[str] = field(default_factory=set)
    data_delay: float = 0.0
    data_reply: str | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such mailbox"
        if address in self.defer:
            return "451 4.7.1 Greylisted, try again in 5 minutes"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply:
            return self.data_reply
        auth = session.auth_data
        self.messages.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.original_content or envelope.content,
                # session.ssl is only set after STARTTLS; implicit TLS shows on the transport.
                tls=session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            )
        )
        return "250 2.0.0 Message accepted"


class _CountingController(Controller):
    """Counts connections: each one builds a protocol through `factory`."""

    connections = 0
    implicit_tls = False

    def factory(self) -> Any:
        self.connections += 1
        protocol = super().factory()
        if self.implicit_tls:
            # aiosmtpd only counts STARTTLS as TLS when it guards AUTH; over implicit TLS the connection is
            # already encrypted. Passing auth_require_tls=False instead would warn on every connection.
            protocol._auth_require_tls = False
        return protocol


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SmtpServer:
    """Context manager running aiosmtpd in its thread on 127.0.0.1."""

    def __init__(
        self,
        *,
        mode: Literal["starttls", "tls", "none"] = "starttls",
        cert: Certificate | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.handler = RecordingHandler()
        self.users = users or {}
        self.logins: list[tuple[str, bool]] = []
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if mode == "starttls":
            assert cert is not None
            kwargs.update(tls_context=cert.server_context(), require_starttls=True, auth_require_tls=True)
        elif mode == "tls":
            assert cert is not None
            kwargs.update(ssl_context=cert.server_context(), auth_require_tls=True)
        else:
            kwargs.update(auth_require_tls=False)
        if users:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        self.controller = _CountingController(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.implicit_tls = mode == "tls"
        self._baseline = 0

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self.users.get(auth_data.login.decode()) == (
            auth_data.password.decode()
        )
        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login.decode(), ok))
        # handled=False: aiosmtpd itself answers 535 to a failed login.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def connections(self) -> int:
        """Client connections since start (the controller's own readiness probe excluded)."""
        return self.controller.connections - self._baseline

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        self._baseline = self.controller.connections
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
