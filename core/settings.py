"""Service configuration, read from the environment and `.env`.

Every integration is optional: a missing token only marks that integration
"not configured". An invalid value (a malformed URL, a non-integer port, an
unknown enum) stops start-up with one message that names the variable and
never echoes the value, because the value may be a secret (a base URL is shown
`without_credentials`, which drops the user part and the query).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.errors import ConfigurationError
from core.run_kinds import RunKind
from core.secrets import SecretScrubber, url_secrets, without_credentials


def _http_url(value: str) -> str:
    """Accept only absolute http(s) URLs; keep the string exactly as given."""
    try:
        url = httpx.URL(value)
    except Exception as exc:  # httpx raises several types for garbage input
        raise ValueError("must be an absolute http:// or https:// URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


HttpUrlStr = Annotated[str, AfterValidator(_http_url)]


@dataclass(frozen=True)
class BaseUrlShape:
    """What a `*_BASE_URL` may carry besides scheme, host, port and path, decided by what its client does with it.

    Each field is the reason a part is refused, which the start-up message gives; None: the client keeps it and
    the request works. A query or `user:password@` that a client drops or misplaces broke every request with
    nothing said at start-up (Toggl, Twilio, the local model, Claude: the path landed inside the query), and URL
    credentials beside a client's own Authorization header made aiohttp raise on every request (found by a
    review). A fragment is refused for every one (`_base_url_shape`).
    """

    query: str | None
    credentials: str | None
    #: A setting that, when set, puts an Authorization header of its own beside the URL's credentials, which
    #: aiohttp refuses; the reason is `credentials_beside_reason`.
    credentials_unless: str | None = None
    credentials_beside_reason: str | None = None


_PATH_INTO_QUERY = "each request's path is appended to it, so the path would land inside the query"


def _beside_authorization(sender: str) -> str:
    return (
        f"{sender} in an Authorization header, and aiohttp refuses credentials in a URL beside one: every request fails"
    )


#: The one table of what each base URL allows, read from the installed clients (pinned in requirements.txt) and
#: checked against a fake upstream in tests/core/test_base_url_validation.py. A base URL not listed gets
#: `_STRICTEST_BASE_URL`: most clients append paths to it and send credentials of their own.
BASE_URL_SHAPES: dict[str, BaseUrlShape] = {
    # google-genai's join_url_path puts the path before the query and keeps the user part; the key goes in
    # x-goog-api-key, no Authorization header, so aiohttp (and httpx) send `user:password@` as HTTP Basic.
    "gemini_base_url": BaseUrlShape(query=None, credentials=None),
    # The SDK appends the path to the raw path, query included; the key goes in an Authorization header, which
    # aiohttp will not combine with URL credentials (and httpx sends the URL's Basic in the key's place).
    "anthropic_base_url": BaseUrlShape(
        query=_PATH_INTO_QUERY,
        credentials=_beside_authorization("the Anthropic SDK sends ANTHROPIC_API_KEY"),
    ),
    # base.rstrip("/") + "/chat/completions" (services/local_llm.py). Without LOCAL_LLM_API_KEY aiohttp sends
    # `user:password@` as HTTP Basic: a gateway in front of the server may want that.
    "local_llm_base_url": BaseUrlShape(
        query=_PATH_INTO_QUERY,
        credentials=None,
        credentials_unless="local_llm_api_key",
        credentials_beside_reason=_beside_authorization("the local model's client sends LOCAL_LLM_API_KEY"),
    ),
    # slack_sdk joins each method name to it as a relative URL (urljoin), which drops the query; the token goes
    # in an Authorization header.
    "slack_base_url": BaseUrlShape(
        query="slack_sdk joins each method name to it as a relative URL, which drops the query unsent",
        credentials=_beside_authorization("slack_sdk sends SLACK_BOT_TOKEN"),
    ),
    # base.rstrip("/") + path, with httpx's auth= (skills/toggl.py, skills/whatsapp.py): httpx sends the URL's
    # credentials only when a request gives none.
    "toggl_base_url": BaseUrlShape(
        query=_PATH_INTO_QUERY,
        credentials="TOGGL_API_TOKEN is sent as the requests' own HTTP Basic auth, so httpx never sends these",
    ),
    "twilio_base_url": BaseUrlShape(
        query=_PATH_INTO_QUERY,
        credentials="TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are sent as the requests' own HTTP Basic auth, so "
        "httpx never sends these",
    ),
    # The URL Twilio signed and the status callback are base.rstrip("/") + path. Twilio authenticates to a
    # callback URL's `user:password@` (HTTP Basic), so a proxy in front of the service may ask for them.
    "public_base_url": BaseUrlShape(
        query="the webhook paths are appended to it (the URL Twilio signs, the status callback), so the path would "
        "land inside the query",
        credentials=None,
    ),
}
_STRICTEST_BASE_URL = BaseUrlShape(
    query=_PATH_INTO_QUERY,
    credentials="its client sends credentials of its own, which replace or clash with these",
)


def _base_url_shape(url: str, shape: BaseUrlShape) -> str | None:
    """Why `url` cannot be a base URL of this shape, or None. The URL is shown only `without_credentials`."""
    before_fragment, hash_sign, _fragment = url.partition("#")
    if hash_sign:
        # Never sent by any client. After a base URL that paths are appended to, it takes every path with it; in
        # a query or a password it is most often a '#' that belongs to the key, which was cut short silently.
        return (
            "has a fragment ('#...'), which is never sent and takes with it whatever follows: remove it, and write "
            "a '#' that belongs to a password or key as %23"
        )
    has_credentials = "@" in urlsplit(url).netloc
    query_refused = "?" in before_fragment and shape.query is not None
    credentials_refused = has_credentials and shape.credentials is not None
    if not (query_refused or credentials_refused):
        return None
    refused = [f"a query string ('?...'): {shape.query}"] if query_refused else []
    refused += [f"credentials (user:password@): {shape.credentials}"] if credentials_refused else []
    remove = "both" if query_refused and credentials_refused else "it" if query_refused else "them"
    kept = " (shown without its user:password@, which may stay)" if has_credentials and not credentials_refused else ""
    return f"has {'; and '.join(refused)}. Remove {remove}: {without_credentials(url)}{kept}"


DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/orchestrator.db"
#: The shortest APP_API_KEY accepted where the service is exposed (APP_ENV=production or a public PUBLIC_BASE_URL).
MIN_API_KEY_CHARS = 16
#: Shortest secret scrubbed out of answers (`Settings.answer_scrubber`); logs, errors and the ledger take every
#: secret of 4 characters or more.
ANSWER_SECRET_MIN_CHARS = 12
#: The secrets that may hold several values separated by commas, so that one can be rotated without a window of
#: refusals: add the new value, move the clients (or Twilio's Webhook Setting) over to it, then drop the old one.
#: Any value listed is accepted; each is held to the rules of a single value and scrubbed like any secret.
#: TWILIO_AUTH_TOKEN also sends (HTTP Basic to Twilio's REST API), with its FIRST token only
#: (`Settings.twilio_sending_token`): Twilio's secondary Auth Token authenticates API requests as soon as it is
#: created and stays valid once promoted, while webhooks stay signed with the primary until the promotion, so
#: `<secondary>,<primary>` sends with the new token and verifies signatures made with either. Not
#: SLACK_SIGNING_SECRET: Slack documents no overlap for a regenerated signing secret, which is known only once
#: Slack signs with it, so listing the old one beside the new would bridge nothing.
ROTATABLE_SECRETS = ("app_api_key", "twilio_auth_token", "twilio_webhook_shared_key")
_A_LONG_RANDOM_KEY = (
    "a long random value, e.g. the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
)
#: A Slack member ID: U (or W, on Enterprise Grid) and upper-case letters and digits.
_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")

#: The ledger run kinds that send one whole WhatsApp message, up to ten Twilio creates in one run: the late reply to
#: an inbound message (routers/whatsapp_webhook.py) and POST /whatsapp-send. A run of theirs can take far longer than
#: any other (`Settings.longest_run_seconds`), so it is taken for a dead worker's only past a cutoff of its own.
WHATSAPP_MESSAGE_RUNS = frozenset({RunKind.WHATSAPP_REPLY, RunKind.WHATSAPP_SEND})
#: The ledger run kinds whose cutoff is their own (`Settings.abandoned_after_by_kind`): a WhatsApp message's, and an
#: email's (POST /send-email), whose SMTP_TIMEOUT_SECONDS applies to each of its dozens of SMTP commands. Every other
#: kind shares `Settings.abandoned_after`.
OWN_CUTOFF_RUNS = WHATSAPP_MESSAGE_RUNS | {RunKind.EMAIL_SEND}
# skills/whatsapp.py's MAX_PARTS, and its ATTEMPTS and MAX_RETRY_WAIT_SECONDS, which are skills/toggl.py's ATTEMPTS
# and MAX_WAIT_SECONDS too: core cannot import a skill, so they are repeated here, and
# tests/workflows/test_abandonment_per_kind.py and tests/core/test_call_bounds.py check that they agree.
_WHATSAPP_PARTS = 10
_CALL_ATTEMPTS = 3
_CALL_RETRY_WAIT_SECONDS = 10.0
# skills/email.py's MAX_RECIPIENTS and CONNECT_ATTEMPTS, and core/upstream.py's BASE_DELAY_SECONDS and
# DEFAULT_MAX_WAIT_SECONDS (the backoff of `with_retries`, which the email skill uses as is): repeated, as core.upstream
# would bring in the ledger's database layer, which the settings stay free of (core/run_kinds.py), and checked by
# tests/core/test_email_run_bound.py.
_EMAIL_RECIPIENTS = 50
_EMAIL_CONNECTIONS = 3
_RETRY_BASE_DELAY_SECONDS = 0.25
_RETRY_MAX_WAIT_SECONDS = 30.0
#: SMTP waits of one connection, each cut at SMTP_TIMEOUT_SECONDS, up to its last RCPT TO: connect, greeting, EHLO,
#: STARTTLS, the TLS handshake, EHLO again, five of AUTH and MAIL FROM (worked out in `longest_email_seconds`).
_SMTP_WAITS_BEFORE_RECIPIENTS = 12
#: ...and from DATA on: the 354 to DATA, the reply to the message, then QUIT (or RSET after a refusal).
_SMTP_WAITS_FROM_DATA = 3
#: However short the timeouts, a run is never taken for a dead worker's before this.
_ABANDONED_FLOOR = timedelta(minutes=10)


def listed_secrets(value: SecretStr | None) -> tuple[SecretStr, ...]:
    """The values of a ROTATABLE_SECRETS setting, in the order given; () when it is unset. A single value is the
    one value it always was. The validator (`Settings._each_listed_secret`) has made every value non-empty."""
    if value is None:
        return ()
    return tuple(SecretStr(item) for item in value.get_secret_value().split(","))


#: One label of an RFC 5321 Domain (4.1.2: `sub-domain = Let-dig [Ldh-str]`): ASCII letters, digits and inner
#: hyphens, at most 63 octets (RFC 1035 2.3.4).
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_ehlo_domain(value: str) -> bool:
    """Whether `value` is a Domain as EHLO takes it (RFC 5321 4.1.1.1, 4.1.2): ASCII labels, 255 octets at most. A
    dotted quad matches the labels but is no domain (a top-level label is never all digits, RFC 3696 2): an
    address goes in brackets, `is_address_literal`."""
    labels = value.split(".")
    return len(value) <= 255 and all(_DOMAIN_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def is_address_literal(value: str) -> bool:
    """Whether `value` is an RFC 5321 address literal (4.1.3): `[192.0.2.1]` or `[IPv6:2001:db8::1]`. The third
    form, a General-address-literal, needs a tag registered with IANA, and none but IPv6 is."""
    if len(value) < 3 or value[0] != "[" or value[-1] != "]":
        return False
    inner = value[1:-1]
    address_type: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.IPv4Address
    if inner[:5].lower() == "ipv6:":  # ABNF strings are case-insensitive (RFC 5234 2.3)
        inner, address_type = inner[5:], ipaddress.IPv6Address
    if "%" in inner:  # ipaddress takes a scope id (fe80::1%eth0); the grammar has none
        return False
    try:
        address_type(inner)
    except ValueError:
        return False
    return True


def is_mail_address(value: str) -> bool:
    """Whether `value` is shaped like a sender: `local@domain`, or `Name <local@domain>`. Only the shape: a relay's
    own names (bot@localhost, bot@mailhog, bot@corp.local) are fine."""
    from email.utils import parseaddr

    address = parseaddr(value)[1]
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(ch.isspace() or not ch.isprintable() for ch in address)


class Settings(BaseSettings):
    """All settings. Field names are the environment variable names, lower-cased."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        # `SLACK_BOT_TOKEN=` copied from .env.example means "not set", not "empty token".
        env_ignore_empty=True,
    )

    # --- Core -------------------------------------------------------------
    app_env: Literal["development", "production"] = "development"
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    app_api_key: SecretStr | None = None
    database_url: str = DEFAULT_DATABASE_URL
    public_base_url: HttpUrlStr | None = None
    trust_proxy_headers: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    timezone: str = "UTC"
    dry_run: bool = False
    http_timeout_seconds: float = Field(10.0, gt=0)
    http_max_connections: int = Field(100, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    request_body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    rate_limit_per_minute: int = Field(60, ge=1)
    rate_limit_storage: Literal["auto", "memory", "database"] = "auto"
    shutdown_grace_seconds: float = Field(15.0, ge=0, le=600)

    # --- LLM --------------------------------------------------------------
    gemini_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY"))
    gemini_model: str = "gemini-3.8-flash"  # GA Flash; 1.5/2.0 Flash and 3 Flash preview are retired
    gemini_base_url: HttpUrlStr = "https://generativelanguage.googleapis.com"
    # Unset: the model's own default. Gemini 3 models think, and max_output_tokens caps thoughts and answer together.
    gemini_thinking_level: Literal["minimal", "low", "medium", "high"] | None = None
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "CLAUDE_API_KEY")
    )
    claude_model: str = "claude-haiku-4-5"
    anthropic_base_url: HttpUrlStr = "https://api.anthropic.com"
    local_llm_base_url: HttpUrlStr | None = None
    local_llm_model: str | None = None
    local_llm_api_key: SecretStr | None = None
    local_llm_context_tokens: int = Field(8192, ge=512)
    router_word_threshold: int = Field(500, ge=1)
    llm_timeout_seconds: float = Field(30.0, gt=0)
    llm_max_attempts: int = Field(2, ge=1, le=10)
    llm_max_tokens: int = Field(1024, ge=1)
    max_input_chars: int = Field(200_000, ge=1)
    store_prompts: bool = False

    # --- Slack ------------------------------------------------------------
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_allowed_users: Annotated[list[str], NoDecode] = Field(default_factory=list)
    slack_default_channel: str | None = None
    slack_base_url: HttpUrlStr = "https://slack.com/api/"

    # --- Toggl ------------------------------------------------------------
    toggl_api_token: SecretStr | None = Field(None, validation_alias=AliasChoices("TOGGL_API_TOKEN", "TOGGL_API_KEY"))
    toggl_workspace_id: int | None = Field(None, ge=1)
    toggl_base_url: HttpUrlStr = "https://api.track.toggl.com/api/v9"

    # --- Email ------------------------------------------------------------
    smtp_host: str | None = None
    smtp_port: int | None = Field(None, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout_seconds: float = Field(15.0, gt=0)
    smtp_ca_file: str | None = None
    smtp_local_hostname: str | None = None

    # --- WhatsApp (Twilio) -------------------------------------------------
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    # The secret of a Webhook Setting's SharedKey: Twilio signs with it instead of the auth token when one of the
    # account's Webhook Rules matches the URL, and says so in X-Twilio-Webhooks-Signature-Settings.
    twilio_webhook_shared_key: SecretStr | None = None
    twilio_whatsapp_number: str = "whatsapp:+14155238886"
    twilio_base_url: HttpUrlStr = "https://api.twilio.com"
    whatsapp_allowed_senders: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- Briefing and scheduler -------------------------------------------
    briefing_cron: str | None = None
    briefing_channel: str | None = None
    briefing_task: str = "Deep Work"
    briefing_timer_minutes: int = Field(90, ge=1, le=24 * 60)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("must be an IANA time zone name such as UTC or Europe/Berlin") from exc
        return value

    @field_validator("*")
    @classmethod
    def _base_url_keeps_its_shape(cls, value: object, info: ValidationInfo) -> object:
        """A `*_BASE_URL` carries a query or credentials only where its client uses them (`BASE_URL_SHAPES`)."""
        name = info.field_name or ""
        if name.endswith("_base_url") and isinstance(value, str):
            problem = _base_url_shape(value, BASE_URL_SHAPES.get(name, _STRICTEST_BASE_URL))
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("database_url")
    @classmethod
    def _async_database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if value.startswith("postgresql") and value.partition("://")[2].count("@") > 1:
            # An "@" in the password ends it early: the rest was read as the host, path or query and printed in
            # errors, most of the password with it (found by two reviews). A file path may hold one (SQLite).
            raise ValueError("has more than one '@': percent-encode an '@' in the user, password or options as %40")
        try:
            url = make_url(value)
        except (ArgumentError, ValueError) as exc:
            # Not the parser's message: for "user:pa@ss:word@host" it quoted part of the password (a bad port).
            raise ValueError("must be an SQLAlchemy URL such as sqlite+aiosqlite:///./data/app.db") from exc
        if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError("must use an async driver: sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("*")
    @classmethod
    def _strip_line_breaks_from_secrets(cls, value: object) -> object:
        """A key file or a Kubernetes secret ends in a newline, which is never part of the secret: it went out in
        a header and failed as a 500 (found by a security review). Only line breaks: a password may begin or end
        with a space. Nothing but line breaks is an error, not "not set", which would drop APP_API_KEY's lock."""
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            stripped = raw.strip("\r\n")
            if not stripped:
                raise ValueError("is empty or only line breaks: give the secret, or leave the variable unset")
            if stripped != raw:
                return SecretStr(stripped)
        return value

    @field_validator(*ROTATABLE_SECRETS)
    @classmethod
    def _each_listed_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """Several values (ROTATABLE_SECRETS): each is a whole secret, so an empty one (`old,`, `old,,new`, a
        value of only line breaks) is an error rather than dropped: it is a key someone meant to give. Spaces
        and line breaks around each are the list's layout (`old, new`), never part of a key: X-API-Key is
        compared stripped, and Twilio's secrets have none. So a single value loses them too: `APP_API_KEY=" key "`
        started, and no request could ever match it (a header's value is read without its blanks)."""
        if value is None:
            return None
        items = value.get_secret_value().split(",")
        stripped = [item.strip(" \t\r\n") for item in items]
        if len(items) == 1 and not stripped[0]:
            raise ValueError("is only blanks: give the key, or leave the variable unset")
        for position, item in enumerate(stripped, 1):
            if not item:
                raise ValueError(
                    f"value {position} of {len(items)} (separated by commas) is empty or only blanks: a comma at "
                    "the start or the end, or two in a row. List each key once, separated by single commas"
                )
        return SecretStr(",".join(stripped))

    @field_validator("app_api_key")
    @classmethod
    def _api_key_a_header_carries(cls, value: SecretStr | None) -> SecretStr | None:
        """Each key is sent in a header and compared byte for byte: a character outside printable ASCII (`é`, a
        no-break space, a control character) goes out as UTF-8 bytes (curl) that the server reads as Latin-1, or
        not at all (httpx, browsers), so the key started and no request could ever match it. Refused, naming the
        value's position only. Spaces inside a key are fine: a header keeps them."""
        if value is None:
            return None
        keys = value.get_secret_value().split(",")
        for position, key in enumerate(keys, 1):
            if not all(" " <= character <= "~" for character in key):
                which = "the key" if len(keys) == 1 else f"value {position} of {len(keys)} (separated by commas)"
                raise ValueError(
                    f"{which} holds a character other than printable ASCII (a letter such as é, a no-break space, "
                    "a control character): a client sends it in the X-API-Key header as bytes this service reads "
                    f"otherwise, so no request could match it. Set it to {_A_LONG_RANDOM_KEY}"
                )
        return value

    @field_validator("whatsapp_allowed_senders", "slack_allowed_users", mode="before")
    @classmethod
    def _split_senders(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("slack_allowed_users")
    @classmethod
    def _slack_user_ids(cls, value: list[str]) -> list[str]:
        for user in value:
            if not _SLACK_USER_ID.fullmatch(user):
                raise ValueError("must be a comma-separated list of Slack member IDs such as U0123ABCD")
        return value

    @field_validator("whatsapp_allowed_senders")
    @classmethod
    def _e164_senders(cls, value: list[str]) -> list[str]:
        normalised = []
        for number in value:
            bare = number.removeprefix("whatsapp:")
            if not (bare.startswith("+") and bare[1:].isdigit() and 8 <= len(bare) <= 16):
                raise ValueError("must be a comma-separated list of E.164 numbers such as +15551234567")
            normalised.append(bare)
        return normalised

    @field_validator("smtp_from")
    @classmethod
    def _sender_address(cls, value: str | None) -> str | None:
        # Unchecked, "not an address" went out as From, with MAIL FROM:<not> (found by a black-box review). Only
        # the shape is checked: a relay's own names (bot@localhost, bot@mailhog, bot@corp.local) are fine, and
        # email-validator refuses those special-use domains whatever its options (found by a code review).
        if value is None or not value.strip():
            return None
        if not is_mail_address(value):
            raise ValueError("must be an address such as bot@example.com or 'Bot <bot@example.com>'")
        return value.strip()

    @field_validator("smtp_ca_file")
    @classmethod
    def _readable_ca_file(cls, value: str | None) -> str | None:
        # Read only once TLS starts, a missing file made the send a 503 "the SMTP server could not be reached"
        # naming neither the file nor the cause, while a dry run answered 200 (found by a dry-run review).
        if value is None or not value.strip():
            return None
        try:
            ssl.create_default_context().load_verify_locations(cafile=value)
        except OSError as exc:  # ssl.SSLError is an OSError: a file that is not PEM certificates
            raise ValueError(f"must be a readable file of PEM CA certificates ({exc.strerror or exc})") from None
        return value

    @field_validator("smtp_local_hostname")
    @classmethod
    def _ehlo_argument(cls, value: str | None) -> str | None:
        # Sent as is in EHLO (skills/email.py): anything else there is refused by strict servers (Postfix's
        # reject_invalid_helo_hostname), and a space or line break would add to the command.
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not (is_ehlo_domain(value) or is_address_literal(value)):
            raise ValueError(
                "must be a domain name such as mail.example.com (an internationalised one in its xn-- form) or an "
                "address literal such as [192.0.2.1] or [IPv6:2001:db8::1], as EHLO takes (RFC 5321 4.1.1.1)"
            )
        return value

    @field_validator("twilio_whatsapp_number")
    @classmethod
    def _whatsapp_sender(cls, value: str) -> str:
        if not value.strip():  # `TWILIO_WHATSAPP_NUMBER=` as .env files leave it: the default, Twilio's sandbox
            return cls.model_fields["twilio_whatsapp_number"].default
        bare = value.strip().removeprefix("whatsapp:")
        if not (bare.startswith("+") and bare[1:].isdigit() and bare[1:2] != "0" and 8 <= len(bare) <= 16):
            raise ValueError("must be an E.164 number such as whatsapp:+14155238886 (or +14155238886)")
        return f"whatsapp:{bare}"

    @field_validator("briefing_cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from core.cron import crontab_trigger

        try:
            trigger = crontab_trigger(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(
                f"must be a five-field crontab expression such as '0 8 * * 1-5' (Monday to Friday): {exc}"
            ) from exc
        if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
            raise ValueError(f"{value!r} never fires (a date such as 30 February does not exist)")
        return value

    @model_validator(mode="after")
    def _base_url_credentials_beside_a_key(self) -> Settings:
        """URL credentials where another setting makes the client send an Authorization header of its own."""
        for name, shape in BASE_URL_SHAPES.items():
            url = getattr(self, name)
            key = shape.credentials_unless
            if key is None or getattr(self, key) is None or not isinstance(url, str) or "@" not in urlsplit(url).netloc:
                continue
            setting, other = env_name(name), env_name(key)
            raise ValueError(
                f"{setting} has credentials (user:password@) and {other} is set: {shape.credentials_beside_reason}. "
                f"Remove user:password@ from {setting} ({without_credentials(url)}), or unset {other} to send the "
                "URL's credentials as HTTP Basic"
            )
        return self

    @model_validator(mode="after")
    def _production_guards(self) -> Settings:
        if self.app_env == "production" and self.app_api_key is None:
            raise ValueError(
                "APP_API_KEY must be set when APP_ENV=production: every action endpoint would be open to anyone"
            )
        if self.public_base_url_is_remote and not self.app_api_key:
            # The documented ngrok set-up published every action endpoint and /runs to whoever found the tunnel,
            # with nothing said (found by a security review): binding to 127.0.0.1 does not help behind ngrok.
            raise ValueError(
                "APP_API_KEY must be set when PUBLIC_BASE_URL names another host: the service is reachable "
                "from the internet there, and every action endpoint (email, WhatsApp, timers) and /runs would "
                f"be open to anyone who finds the URL. Set APP_API_KEY to {_A_LONG_RANDOM_KEY}"
            )
        exposed = "APP_ENV=production" if self.app_env == "production" else "PUBLIC_BASE_URL names another host"
        if self.app_api_key and (self.app_env == "production" or self.public_base_url_is_remote):
            # A key is only a guard if it cannot be guessed: the README's `change-me` or a one-letter key started
            # in production (found by a black-box review). Length is the one property checked, of every key
            # listed: any of them opens the service.
            keys = self.app_api_keys
            for position, key in enumerate(keys, 1):
                length = len(key.get_secret_value().strip())
                if length >= MIN_API_KEY_CHARS:
                    continue
                which = "" if len(keys) == 1 else f"value {position} of {len(keys)}: "
                raise ValueError(
                    f"APP_API_KEY is too short for {exposed} ({which}{length} characters; at least "
                    f"{MIN_API_KEY_CHARS}): set it to {_A_LONG_RANDOM_KEY}"
                )
        if self.app_env == "production" and self.twilio_auth_token and not self.whatsapp_allowed_senders:
            raise ValueError(
                "WHATSAPP_ALLOWED_SENDERS must list the E.164 numbers allowed to command the service "
                "when APP_ENV=production and WhatsApp is configured"
            )
        if self.smtp_security == "none" and self.smtp_user and self.smtp_password and not _is_loopback(self.smtp_host):
            raise ValueError(
                f"SMTP_SECURITY=none would send SMTP_PASSWORD in clear text to {self.smtp_host}: set SMTP_SECURITY "
                "to starttls (port 587) or tls (port 465), or unset SMTP_USER and SMTP_PASSWORD for a relay that "
                "needs no login"
            )
        return self

    # --- Derived values ----------------------------------------------------
    @property
    def public_base_url_is_remote(self) -> bool:
        """PUBLIC_BASE_URL names a host other than this machine: the service is reachable from the internet."""
        return bool(self.public_base_url) and not _is_loopback(urlsplit(self.public_base_url).hostname)

    @property
    def app_api_keys(self) -> tuple[SecretStr, ...]:
        """Every key APP_API_KEY lists (`listed_secrets`): a request with any of them passes (`core.auth`)."""
        return listed_secrets(self.app_api_key)

    @property
    def twilio_auth_tokens(self) -> tuple[SecretStr, ...]:
        """Every auth token TWILIO_AUTH_TOKEN lists: a webhook whose X-Twilio-Signature any of them made passes."""
        return listed_secrets(self.twilio_auth_token)

    @property
    def twilio_sending_token(self) -> SecretStr | None:
        """The auth token requests to Twilio's REST API are sent with (HTTP Basic): the first TWILIO_AUTH_TOKEN
        lists, never the list whole. During a rotation that is the secondary token, which Twilio accepts from its
        creation on and which is the primary once promoted; the old primary stops working at the promotion."""
        tokens = self.twilio_auth_tokens
        return tokens[0] if tokens else None

    @property
    def twilio_webhook_shared_keys(self) -> tuple[SecretStr, ...]:
        """Every SharedKey secret TWILIO_WEBHOOK_SHARED_KEY lists: a webhook signed with any of them passes."""
        return listed_secrets(self.twilio_webhook_shared_key)

    @property
    def unguarded_on_network(self) -> bool:
        """Listening beyond this machine with no APP_API_KEY: said at start-up (PUBLIC_BASE_URL is refused)."""
        return self.app_api_key is None and not _is_loopback(self.api_host)

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def connect_timeout_seconds(self) -> float:
        """The limit on connecting, and again on the TLS handshake, of the shared HTTP client (core/resources.py)
        and of Slack's session (skills/slack.py): HTTP_TIMEOUT_SECONDS, capped at 5 s. The one definition, which
        the bounds below read too."""
        return min(5.0, self.http_timeout_seconds)

    @property
    def longest_attempt_seconds(self) -> float:
        """The longest one attempt of the shared HTTP client (Toggl, Twilio) can take: 2T + 2c, a free connection,
        connecting, TLS, then the answer (30 s with the defaults). Worked out in `longest_run_seconds`."""
        return 2 * self.http_timeout_seconds + 2 * self.connect_timeout_seconds

    @property
    def longest_call_seconds(self) -> float:
        """An upper bound on one skill call: a Toggl call or one Twilio part (a message create), the longest of any
        skill's over HTTP: 3 attempts (`longest_attempt_seconds`) and a wait of up to 10 s before each retry,
        6T + 6c + 20 (110 s with the defaults; 230 s with HTTP_TIMEOUT_SECONDS=30, 410 s with 60). A Slack post
        is shorter, 3T + 3c + 20. The one formula of a call: `longest_run_seconds` works it out, and every bound
        built of calls (a WhatsApp message, a timer stop, `longest_request_seconds`) reads it.

        It was 3 x (max(T, SMTP_TIMEOUT_SECONDS) + 10), which counted neither the wait for a free connection nor
        connecting nor TLS: 75 s with the defaults, 210 s with HTTP_TIMEOUT_SECONDS=60, where a planned stop's two
        calls can take 820 s, past the 600 s lease of its claim (workflows/scheduler.py). An email is no call of
        this kind: SMTP_TIMEOUT_SECONDS limits each SMTP command, not their number (`longest_email_seconds`)."""
        return _CALL_ATTEMPTS * self.longest_attempt_seconds + (_CALL_ATTEMPTS - 1) * _CALL_RETRY_WAIT_SECONDS

    @property
    def longest_timer_stop_seconds(self) -> float:
        """An upper bound on one timer stop, POST /stop-timer's or a planned one (workflows/scheduler.py): two Toggl
        calls, the running timer read then stopped (no entry id given), or the entry stopped then its late stop set
        back to the planned time (`TogglSkill.stop_timer`): 220 s with the defaults, 820 s with
        HTTP_TIMEOUT_SECONDS=60.

        Not a bound on one path: a late planned stop answered 409 reads the entry before setting it back, three
        calls (330 s with the defaults). That is under the claim lease and the run's cutoff, each at least twice
        this (four calls), so no live stop is taken for a dead worker's; counting three here would have raised
        every kind's cutoff for a rare path."""
        return 2 * self.longest_call_seconds

    @property
    def longest_request_seconds(self) -> float:
        """An upper bound on one request, and on a run of every kind but a WhatsApp message and an email
        (OWN_CUTOFF_RUNS, `longest_run_seconds`). An Idempotency-Key's first request still running past it most
        likely stopped (the 409 of `core.idempotency`); claims and runs older than twice it were left by a worker
        that died (`abandoned_after`). The longer of two figures, each kind's worst case being under one of them:

        - the estimate this bound began as: an LLM answer through every provider, 3 x LLM_MAX_ATTEMPTS x
          (LLM_TIMEOUT_SECONDS + 10), and two calls of 3 x (max(HTTP, SMTP timeout) + 10) (390 s with the
          defaults; 480 s with HTTP_TIMEOUT_SECONDS=30). Over every kind whose LLM answer outlasts its Toggl calls:
          the briefing's worst case is then the answer and a Slack post (275 s with the defaults). Kept as it was,
          SMTP_TIMEOUT_SECONDS included, so the cutoffs stay what they were (13 min with the defaults), though an
          email, which it once stood for, now has a bound of its own (`longest_email_seconds`);
        - a timer stop, two Toggl calls (`longest_timer_stop_seconds`): over every kind whose Toggl calls outlast
          its LLM answer (a start, its read-back and a Slack post, 11T + 11c + 40, are under 12T + 12c + 40), and
          the longer figure past HTTP_TIMEOUT_SECONDS of about 33 s. At 60 s the estimate (660 s) was the bound
          alone, and a retry of a /stop-timer still at work at 700 s was told the service most likely stopped."""
        llm = 3 * self.llm_max_attempts * (self.llm_timeout_seconds + 10)  # up to three providers
        estimate = llm + 2 * 3 * (max(self.http_timeout_seconds, self.smtp_timeout_seconds) + 10)
        return max(estimate, self.longest_timer_stop_seconds)

    @property
    def longest_whatsapp_message_seconds(self) -> float:
        """The worst case of one WhatsApp message run (WHATSAPP_MESSAGE_RUNS): ten parts, one after the other,
        each a Twilio create (`longest_call_seconds`). Worked out in `longest_run_seconds`."""
        return _WHATSAPP_PARTS * self.longest_call_seconds

    @property
    def longest_email_seconds(self) -> float:
        """The worst case of one email run (`email.send`): the lookup of this host's name for EHLO, then up to
        three connections, each of dozens of SMTP waits cut at SMTP_TIMEOUT_SECONDS, which aiosmtplib applies to
        each wait, not to the whole conversation. Worked out in `longest_run_seconds`: (40 + 3R)S plus 0.75 s
        (2,850.75 s with the defaults), one S less with SMTP_LOCAL_HOSTNAME set."""
        before_data = _SMTP_WAITS_BEFORE_RECIPIENTS + _EMAIL_RECIPIENTS
        # Only a failure before DATA is retried (a timeout or a dropped connection): every connection but the last
        # ends at its last RCPT TO at the latest, and only the last goes on to DATA and QUIT.
        waits = (_EMAIL_CONNECTIONS - 1) * before_data + before_data + _SMTP_WAITS_FROM_DATA
        if self.smtp_local_hostname is None:
            waits += 1  # a send waits on the host-name lookup once at most, never past S (skills/email.py EhloName)
        backoff = sum(
            min(_RETRY_MAX_WAIT_SECONDS, _RETRY_BASE_DELAY_SECONDS * 2**retry)
            for retry in range(_EMAIL_CONNECTIONS - 1)
        )
        return waits * self.smtp_timeout_seconds + backoff

    def longest_run_seconds(self, kind: str) -> float:
        """The longest a live ledger run of `kind` can take with these timeouts; twice it, a run still `running`
        was left by a worker that died (`abandoned_after_for`).

        Worked out from the code, with T = HTTP_TIMEOUT_SECONDS, c = min(5, T) (`connect_timeout_seconds`),
        L = LLM_TIMEOUT_SECONDS, A = LLM_MAX_ATTEMPTS, S = SMTP_TIMEOUT_SECONDS; the figures are for the defaults
        (T 10, L 30, A 2, S 15), then for HTTP_TIMEOUT_SECONDS=30.

        - One attempt of the shared HTTP client (Toggl, Twilio): up to T waiting for a free connection (httpx's
          pool timeout), c to connect and c again for the TLS handshake (httpcore times each), then T from the
          first byte sent to the last byte of the answer (`bounded_request`'s deadline): 2T + 2c (30 s; 70 s),
          `longest_attempt_seconds`.
        - One Twilio part or Toggl call: 3 attempts, and before each retry a wait of up to 10 s (a 429's
          Retry-After; a longer one is not waited out, a connection never made waits under a second):
          6T + 6c + 20 (110 s; 230 s), `longest_call_seconds`. A Toggl start whose answer was lost reads the timer
          back once: 2T + 2c.
        - One Slack post: aiohttp's total of c + T per attempt covers its pool wait too; 3 attempts and two waits
          of up to 10 s: 3T + 3c + 20 (65 s; 125 s).
        - One LLM answer: up to three providers, each A attempts cut at L and A - 1 waits of up to 10 s:
          3(AL + 10(A - 1)) (210 s; the same).
        - One SMTP connection (skills/email.py, aiosmtplib 5.1): aiosmtplib gives S to each wait, never to the
          whole. The longest is SMTP_SECURITY=starttls with SMTP_USER (implicit TLS and `none` skip STARTTLS, its
          handshake and the second EHLO; without a login the second EHLO may be refused and HELO sent instead,
          two waits where AUTH has five): connecting (DNS and TCP, and the handshake too under implicit TLS: one
          `wait_for`), the greeting, EHLO, STARTTLS, the TLS handshake (`ssl_handshake_timeout`), EHLO again,
          AUTH, MAIL FROM, one RCPT TO per recipient, DATA's 354, the reply to the message (written whole without
          waiting, so sending it is inside that wait), QUIT; after a refusal, RSET in QUIT's place. AUTH tries
          every mechanism the server offers of CRAM-MD5 (two round trips), PLAIN (one) and LOGIN (two), in that
          order, going on to the next when one is refused: five. With R = 50 recipients (MAX_RECIPIENTS, the most
          POST /send-email's `to_address` takes; it has no Cc or Bcc, and the skill refuses more from any
          caller): 12 + R waits up to the last RCPT TO, 15 + R in all.
        - One email: up to three connections. Only a failure that handed nothing over is retried (a timeout, a
          dropped connection, a 4xx greeting: DATA not begun), so each connection but the last ends at its last
          RCPT TO at the latest; before each retry a jittered backoff of up to 0.25 s, then 0.5 s (SMTP gives no
          Retry-After): 2(12 + R)S + (15 + R)S + 0.75 = (39 + 3R)S + 0.75 = 189S + 0.75. Before the first
          connection, unless SMTP_LOCAL_HOSTNAME names it, the lookup of this host's name for EHLO
          (`socket.getfqdn`, a reverse DNS lookup): one per process, in a thread, which a send waits on once at
          most and never past S from when the lookup began (skills/email.py `EhloName`; aiosmtplib's own ran once
          per connection with no timeout, uncounted). In all (40 + 3R)S + 0.75 = 190S + 0.75 (2,850.75 s, about
          48 min; with SMTP_TIMEOUT_SECONDS=30, 5,700.75 s). Not counted, as no setting bounds it: aiosmtplib's
          reading of SMTP_CA_FILE (a local file).

        So, per kind:

        - A WhatsApp message (`whatsapp.reply`, `whatsapp.send`): ten parts, 60T + 60c + 200 (1,100 s, about
          18 min; 2,300 s, about 38 min). Only the sending: the LLM's answer is an `inbound.chat` run of its own,
          finished before the reply's run starts. Its cutoff is twice that, about 37 min (77 min).
        - An email (`email.send`): one email, 190S + 0.75 (2,850.75 s; the same, since only S counts). Its cutoff
          is twice that, about 95 min (5,701.5 s).
        - Everything else is under `longest_request_seconds` (390 s; 480 s), its cutoff `abandoned_after` twice
          that, at least 10 minutes (13 min; 16 min): the briefing, max(LLM, Toggl start and read-back) + Slack
          post (275 s; 425 s); `command.start`, start, read-back and Slack post (205 s; 425 s); a stop without an
          entry id or a late planned stop, two Toggl calls (220 s; 460 s, `longest_timer_stop_seconds`); an LLM
          answer (210 s); one Slack post. With still longer HTTP timeouts (over about 33 s) two Toggl calls are the
          longest, and `longest_request_seconds` is theirs (820 s with HTTP_TIMEOUT_SECONDS=60).

        An email used to share that cutoff, as if its SMTP commands were two calls: its worst case (2,850.75 s with
        the defaults) was past it (780 s), so a slow server's live send could be closed as "interrupted" and a
        retry of POST /send-email with its Idempotency-Key told the worker had stopped.

        A WhatsApp message used to share that cutoff. With the defaults its worst case (1,100 s) already passed
        it (780 s), and with HTTP_TIMEOUT_SECONDS=30 even ten parts at the call bound then used (3 x (T + 10),
        120 s) did: the prune
        closed a live message as "interrupted", and a retry of POST /whatsapp-send with its Idempotency-Key was
        told the worker had stopped. Raising the one cutoff instead would have delayed every crash recovery, a
        killed worker's timer stop among them, by as much.
        """
        if kind in WHATSAPP_MESSAGE_RUNS:
            return self.longest_whatsapp_message_seconds
        if kind == RunKind.EMAIL_SEND:
            return self.longest_email_seconds
        return self.longest_request_seconds

    @cached_property
    def abandoned_after(self) -> timedelta:  # read on every request with an Idempotency-Key dependency
        """When an Idempotency-Key claim still in progress, or a ledger run still `running`, is taken as abandoned:
        never under 10 minutes, and always past twice the longest a request can run with these timeouts (a live
        request is never cut off). For every run kind but those of `abandoned_after_by_kind`."""
        return max(_ABANDONED_FLOOR, timedelta(seconds=2 * self.longest_request_seconds))

    @cached_property
    def abandoned_after_by_kind(self) -> dict[str, timedelta]:
        """The run kinds whose cutoff is their own, not `abandoned_after`: never under 10 minutes, and past twice
        the longest a run of theirs can take (`longest_run_seconds`)."""
        return {
            kind: max(_ABANDONED_FLOOR, timedelta(seconds=2 * self.longest_run_seconds(kind)))
            for kind in sorted(OWN_CUTOFF_RUNS)
        }

    def abandoned_after_for(self, kind: str) -> timedelta:
        """When a run of `kind` still `running` (or a claim of a route that records one) was left by a dead worker."""
        return self.abandoned_after_by_kind.get(kind, self.abandoned_after)

    @property
    def shared_rate_limit(self) -> bool:
        """Whether rate-limit counts live in the database (shared by workers) rather than in each worker's memory."""
        if self.rate_limit_storage == "auto":
            return self.database_url.startswith("postgresql")
        return self.rate_limit_storage == "database"

    @property
    def effective_smtp_port(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return {"starttls": 587, "tls": 465, "none": 25}[self.smtp_security]

    def base_urls(self) -> dict[str, str]:
        """Every `*_BASE_URL` that is set, by variable name: the URLs of the upstreams (and PUBLIC_BASE_URL)."""
        return {
            env_name(name): value
            for name in type(self).model_fields
            if name.endswith("_base_url") and isinstance(value := getattr(self, name), str)
        }

    def secret_values(self, *, min_length: int = 4) -> list[str]:
        """Every configured secret of at least `min_length` characters, unwrapped; used only to scrub them.

        With the credentials the URL settings carry (`core.secrets.url_secrets`), which reached log lines, problem
        details and the ledger (`TOGGL_BASE_URL=https://user:password@proxy/api/v9?key=...`):

        - of every `*_BASE_URL`, the password of its user part, a user name given alone (`https://TOKEN@host`) and
          a query value named as a credential (`?key=`, `?token=`), from `min_length` like any secret; any other
          query value only from ANSWER_SECRET_MIN_CHARS, the length of a key (most are plain options, `v=2`);
        - of DATABASE_URL, its password (in the user part or `?password=`) only from ANSWER_SECRET_MIN_CHARS. It is
          hidden wherever the service prints the URL (`core.store.shown_url`), and a development database's is often
          a word: `user:pass@` garbled "pass" everywhere (found by a review), `postgres:postgres@` the scheme of
          every `postgresql://`. Its user is a name, and its other query values are the driver's options
          (`ssl=require`).
        """
        values = [
            item.get_secret_value()
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), SecretStr)
            # Each key of a list on its own: the list whole ("old,new") is not what a request or a log carries.
            for item in (listed_secrets(value) if name in ROTATABLE_SECRETS else (value,))
        ]
        secrets = [raw for raw in values if len(raw) >= min_length]
        long_enough = max(min_length, ANSWER_SECRET_MIN_CHARS)
        for url in self.base_urls().values():
            secrets += url_secrets(url, min_length=min_length, others_from=long_enough)
        secrets += url_secrets(self.database_url, min_length=long_enough, others_from=None, user_alone=False)
        return secrets

    @cached_property
    def secret_scrubber(self) -> SecretScrubber:
        """Every form of the configured secrets (core/secrets.py): one for the logs, errors and the ledger."""
        return SecretScrubber.from_settings(self)

    @cached_property
    def answer_scrubber(self) -> SecretScrubber:
        """The same, for text people read as an answer (an LLM's, a Toggl description, an action's result) or that
        goes on to another service (the briefing's Slack post): only secrets of at least ANSWER_SECRET_MIN_CHARS.
        A short one (an SMTP password "password", a development APP_API_KEY "test") would garble ordinary words;
        vendor keys and tokens are all longer (found by a review)."""
        return SecretScrubber.from_settings(self, min_length=ANSWER_SECRET_MIN_CHARS)


def env_name(field: str) -> str:
    """The primary environment variable name of a settings field."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field.upper()


def describe_validation_error(error: ValidationError) -> str:
    """One readable line per bad variable; never includes the rejected value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        loc = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if not loc:  # a check across variables: its message names them itself
            lines.append(message)
            continue
        name = env_name(loc[0]) if loc[0] in Settings.model_fields else loc[0].upper()
        lines.append(f"{name}: {message}")
    return "Invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and `.env`; raise ConfigurationError on bad values."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(describe_validation_error(exc)) from None


def _is_loopback(host: str | None) -> bool:
    """Whether `host` names this machine: a password sent in clear text to it never crosses a network."""
    if not host:
        return True
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
