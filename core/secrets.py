"""Every form a configured secret can take, and the one scrubber that removes them.

Secrets are `SecretStr` and should never reach a log line, an error body or the
ledger. This is the second line of defence for the text that still can: an
upstream that echoes the credential it was sent (Slack's `invalid_auth Bearer
xoxb-...`, a Toggl 400 quoting `Authorization: Basic ...`). Logs
(`core.log`), problem-details bodies (`core.errors`) and the ledger
(`core.ledger`) all replace the same forms with `***`:

- the raw value, and its URL-encoded forms when encoding changes it;
- the base64 credentials the service itself sends: Toggl's HTTP Basic
  `token:api_token` (skills/toggl.py), Twilio's `ACCOUNT_SID:AUTH_TOKEN`
  (skills/whatsapp.py), SMTP `AUTH PLAIN` (`\\0user\\0password`) and `AUTH LOGIN`
  (`password` alone) as aiosmtplib encodes them (skills/email.py);
- the secret base64-encoded inside any longer value (another Basic pairing, a
  re-encoded header): wherever the secret sits, its base64 text contains one of
  three fixed strings, one per alignment. Only for secrets long enough
  (`_MIN_CORE` characters of base64) that a chance match is negligible.

A base64 form takes the whole base64 run around it (padding included), so no
fragment of an encoded credential is left behind. CRAM-MD5, the Slack signing
secret and Twilio's webhook SharedKey (`TWILIO_WEBHOOK_SHARED_KEY`) only ever
serve as an HMAC key, which reveals nothing; their raw forms are scrubbed like
every `SecretStr` setting's.

URL settings carry credentials too (`Settings.secret_values`, `url_secrets`): the
password of a `*_BASE_URL`'s or DATABASE_URL's user part
(`https://user:password@proxy/...`), a query value named as a credential
(`?key=...`), a `*_BASE_URL`'s user name given alone (`https://TOKEN@host`) and,
only when long enough to be a key, its other query values; and a `*_BASE_URL`'s
`user:password` as HTTP clients send it, base64 in a Basic header
(`url_basic_credentials`). Where the service prints such a URL itself, it prints it
`without_credentials`.

`Settings.secret_scrubber` builds the one instance an app uses: the ledger gets
it from `core.resources`, problem bodies through `current_scrubber()` (set per
request by `RequestContextMiddleware`, like the request id).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from core.settings import Settings

REDACTED = "***"

_BASE64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
#: Shortest base64 text of a secret searched for inside longer base64 values (64**8 ≈ 3e14 to one).
_MIN_CORE = 8


#: A query parameter whose name says it holds a credential: `?key=` (Google), `?api_key=`, `?access_token=`,
#: `?code=` (Azure Functions), `?sig=` (a SAS), `?password=` and `?sslpassword=` (asyncpg). Anchored at the end,
#: like the ledger's credential-looking keys: `max_tokens` is a count.
_CREDENTIAL_PARAMETER = re.compile(
    r"(key|token|secret|pass|password|passwd|pwd|sig|signature|auth|code|credentials?)$", re.I
)


def _base64(value: bytes) -> str:
    """`value` base64-encoded, without the `=` padding (a match takes the padding with it)."""
    return base64.b64encode(value).decode("ascii").rstrip("=")


def _url_forms(secret: str) -> set[str]:
    """The secret as a URL path or query would carry it, when encoding changes it."""
    return {form for form in (quote(secret, safe=""), quote_plus(secret, safe="")) if form != secret}


def _base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that encode only `secret`'s bits, for each of its three possible alignments.

    In the base64 of any value containing `secret` at byte offset `p`, the characters that
    encode bits of `secret` alone are exactly the core for alignment `p % 3`.
    """
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode("ascii")
        first = -(-offset * 8 // 6)  # the first character with no bit of the prefix
        end = (offset + len(secret)) * 8 // 6  # past the last character with no padding bit
        core = encoded[first:end]
        if len(core) >= _MIN_CORE:
            cores.add(core)
    return cores


def _as_written_and_decoded(text: str) -> list[str]:
    """A URL part as the setting spells it (`p%40ss`) and as a client sends it (`p@ss`): a message may quote either."""
    decoded = unquote(text)
    return [decoded] if decoded == text else [decoded, text]


def url_secrets(url: str, *, min_length: int, others_from: int | None, user_alone: bool = True) -> list[str]:
    """What in `url` can be a credential, as written and percent-decoded, to be scrubbed like a secret.

    - From `min_length` characters, like every secret: the password of the user part; the value of a query
      parameter named as a credential (`_CREDENTIAL_PARAMETER`: `?key=`, `?token=`, `?password=`...); with
      `user_alone`, a user name given without a password, which is then the credential (`https://TOKEN@host`,
      `https://TOKEN:@host`). A user name beside a password is a name, and stays.
    - From `others_from` characters (never when None): every other query value, since a gateway may name its
      key anything. Most are plain options (`v=2`, `region=eu-west-1`), and scrubbing them would garble every
      line that holds the word; keys and tokens are longer.

    A length is the decoded value's. A URL that cannot be split has nothing taken from it.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[tuple[str, int]] = []
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at:
        user, _colon, password = userinfo.partition(":")
        if password:
            found.append((password, min_length))
        elif user_alone:
            found.append((user, min_length))
    for pair in parts.query.split("&"):
        name, equals, value = pair.partition("=")
        if not equals:
            continue
        if _CREDENTIAL_PARAMETER.search(unquote(name)):
            found.append((value, min_length))
        elif others_from is not None:
            found.append((value, others_from))
    return [
        form for text, shortest in found if len(unquote(text)) >= shortest for form in _as_written_and_decoded(text)
    ]


def url_basic_credentials(url: str) -> bytes | None:
    """`user:password` of `url`'s user part as httpx and aiohttp send it (percent-decoded, base64 in a Basic
    header) when no other credentials are given; None without a user part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    userinfo, at, _host = parts.netloc.rpartition("@")
    if not at:
        return None
    user, _colon, password = userinfo.partition(":")
    return f"{unquote(user)}:{unquote(password)}".encode()


def without_credentials(url: str) -> str:
    """`url` as the service prints it (a log line, an error, the ledger): without `user:password@` nor the query,
    either of which may hold a credential, nor a fragment. The one way to print a `*_BASE_URL`, or a URL built on
    one; DATABASE_URL has `core.store.shown_url`, which keeps the user and the driver's options to diagnose a
    connection, and hides the password.

    A URL that cannot be split (`http://[abc/`, from a request's Host) is printed as a placeholder: this runs in
    log lines of refused requests, which must not become a 500."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that cannot be read)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class SecretScrubber:
    """Replaces every form of the given secrets with `***`.

    `secrets` are raw values (`Settings.secret_values()`). `credentials` are the exact
    values the service sends base64-encoded that one secret alone does not determine
    (a Basic `user:password` pair), before encoding; `from_settings` lists them. Text
    forms are replaced where they stand; a base64 form takes its whole base64 run with it.
    """

    def __init__(self, secrets: Iterable[str] = (), *, credentials: Iterable[bytes] = ()) -> None:
        raw = {secret for secret in secrets if secret}
        forms = set(raw)
        encoded = {_base64(value) for value in credentials if value}
        for secret in raw:
            forms |= _url_forms(secret)
            encoded.add(_base64(secret.encode()))  # as AUTH LOGIN sends a password
            encoded |= _base64_cores(secret.encode())
        # Longest first: a form that contains another is replaced whole.
        self.forms = sorted(forms, key=len, reverse=True)
        self.base64_forms = sorted(encoded, key=len, reverse=True)
        # The ledger scrubs every string of every run: one C-level scan for any form, and none at all for a
        # string shorter than every form, keep that to about a microsecond per string (bench in the commit).
        every = [*self.forms, *self.base64_forms]
        self._shortest = min(map(len, every), default=0)
        self._any = re.compile("|".join(map(re.escape, every))) if every else None

    @classmethod
    def from_settings(cls, settings: Settings, *, min_length: int = 4) -> SecretScrubber:
        """Every configured secret of at least `min_length` characters, and the credentials built from them."""
        credentials: list[bytes] = []
        if settings.toggl_api_token is not None:
            # skills/toggl.py: httpx.BasicAuth(token, "api_token").
            credentials.append(f"{settings.toggl_api_token.get_secret_value()}:api_token".encode())
        for token in settings.twilio_auth_tokens:
            # skills/whatsapp.py: auth=(TWILIO_ACCOUNT_SID or "", the first token). Every listed token is a pair:
            # the old one was sent until this restart, and an upstream may echo either.
            sid = settings.twilio_account_sid or ""
            credentials.append(f"{sid}:{token.get_secret_value()}".encode())
        if settings.smtp_password is not None and settings.smtp_user:
            # skills/email.py through aiosmtplib: AUTH PLAIN sends base64("\0user\0password");
            # AUTH LOGIN sends base64(password) on its own, a form every secret already has.
            user, password = settings.smtp_user, settings.smtp_password.get_secret_value()
            credentials.append(f"\0{user}\0{password}".encode())
        for url in settings.base_urls().values():
            # httpx and aiohttp send a URL's `user:password@` as HTTP Basic when given no other credentials.
            if (pair := url_basic_credentials(url)) is not None:
                credentials.append(pair)
        return cls(settings.secret_values(min_length=min_length), credentials=credentials)

    def __bool__(self) -> bool:
        return bool(self.forms)

    def scrub(self, text: str) -> str:
        if self._any is None or len(text) < self._shortest or self._any.search(text) is None:
            return text
        for form in self.forms:
            if form in text:
                text = text.replace(form, REDACTED)
        for encoded in self.base64_forms:
            if encoded in text:
                text = _replace_base64_runs(text, encoded)
        return text

    def scrub_value(self, value: Any) -> Any:
        """A copy of a JSON-like value (mappings, lists, strings) with every string scrubbed, keys included."""
        if not self.forms:
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        if isinstance(value, Mapping):
            scrub_key = self.scrub
            return {(scrub_key(k) if isinstance(k, str) else k): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_value(item) for item in value]
        return value


def _replace_base64_runs(text: str, encoded: str) -> str:
    """Replace each whole run of base64 characters (and its padding) that contains `encoded`.

    A scan outwards from each hit rather than a regex: `[A-Za-z0-9+/]*encoded` backtracks
    quadratically over a long base64 blob that does not contain it.
    """
    parts: list[str] = []
    done = 0
    hit = text.find(encoded)
    while hit != -1:
        start = hit
        while start > done and text[start - 1] in _BASE64_ALPHABET:
            start -= 1
        end = hit + len(encoded)
        while end < len(text) and text[end] in _BASE64_ALPHABET:
            end += 1
        for _ in range(2):
            if end < len(text) and text[end] == "=":
                end += 1
        parts += [text[done:start], REDACTED]
        done = end
        hit = text.find(encoded, done)
    parts.append(text[done:])
    return "".join(parts)


#: Scrubs nothing: the default where no settings are known (a bare Ledger in a test, a request outside an app).
NO_SECRETS = SecretScrubber()

_current: ContextVar[SecretScrubber] = ContextVar("secret_scrubber", default=NO_SECRETS)


def scrubber_of(app: Any) -> SecretScrubber:
    """The scrubber of the app's settings (`create_app` puts them on `app.state`); none scrubs nothing."""
    settings = getattr(getattr(app, "state", None), "settings", None)
    return settings.secret_scrubber if settings is not None else NO_SECRETS


def current_scrubber() -> SecretScrubber:
    """The scrubber of the app serving this request, set by `RequestContextMiddleware` like the request id."""
    return _current.get()


def use_scrubber(scrubber: SecretScrubber) -> Token[SecretScrubber]:
    return _current.set(scrubber)


def reset_scrubber(token: Token[SecretScrubber]) -> None:
    _current.reset(token)
