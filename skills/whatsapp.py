"""WhatsApp skill: send messages through Twilio's REST API.

twilio-python's async client runs on aiohttp and has no base-URL setting, so
this module posts the form itself over the shared httpx client: one request
per message part, Basic auth `SID:token`, errors mapped from Twilio's
`{"code", "message", "more_info", "status"}` body to domain errors.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import regex
from pydantic import Field

from core.errors import (
    OPERATOR_CHECKS,
    Conflict,
    InvalidInput,
    Phrase,
    ProblemError,
    UpstreamError,
    UpstreamRateLimited,
)
from core.ledger import note_external_id, note_request
from core.outcome import ActionOutcome
from core.registry import Integration
from core.resources import Resources
from core.secrets import without_credentials
from core.settings import Settings
from core.upstream import (
    bounded_request,
    parse_retry_after,
    server_error,
    transport_error,
    unreadable_create,
    with_retries,
)

INTEGRATION = Integration(
    name="whatsapp",
    kind="skill",
    description="Send WhatsApp messages through Twilio.",
    required=("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
    optional=("TWILIO_WHATSAPP_NUMBER", "TWILIO_BASE_URL", "WHATSAPP_ALLOWED_SENDERS"),
    operations=("send_message",),
)

UPSTREAM = "twilio"
PREFIX = "whatsapp:"
#: Twilio refuses a Body over 1,600 characters (error 21617).
MAX_BODY_CHARS = 1600
#: A longer text is refused rather than sent as dozens of paid messages.
MAX_PARTS = 10
#: Attempts per message part, counting the first. Creating a message is not replay-safe, so only failures that
#: prove Twilio did not act are retried: 429 / 20429 and a connection that was never made.
ATTEMPTS = 3
MAX_RETRY_WAIT_SECONDS = 10.0
#: Where Twilio reports what happened to each message after accepting it (routers/whatsapp_status.py).
STATUS_CALLBACK_PATH = "/whatsapp-status"

_GRAPHEME = regex.compile(r"\X")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")  # used with fullmatch: `$` would also match before a final newline
_CREDENTIALS = ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]


class WhatsAppSent(ActionOutcome):
    """The messages Twilio accepted (or, in a dry run, would have been asked to send)."""

    to: str = Field(description="The recipient as sent to Twilio: whatsapp:+E164.")
    sids: list[str] = Field(default_factory=list, description="Twilio message SIDs, one per part, in order.")
    parts: int = Field(description="How many messages the body was split into (1,600 characters each at most).")

    def ledger_external_id(self) -> str | None:
        # Every part's SID, so a status callback for any part finds the run that sent it (workflows.deliveries).
        return ",".join(self.sids) or None


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fitting_prefix(text: str, limit: int) -> int:
    """How many code points of `text` fit in `limit` UTF-16 code units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def _grapheme_cut(text: str, fit: int) -> int:
    """The last grapheme-cluster boundary at or before code point `fit` (0 if the first cluster is longer).

    A flag is two regional indicators, a family emoji several code points joined by U+200D, a skin tone a
    modifier after its emoji: cut between them, each half shows as something else (found by a review).
    """
    cut = 0
    for cluster in _GRAPHEME.finditer(text):
        if cluster.end() > fit:
            break
        cut = cluster.end()
    return cut


def split_message(body: str, limit: int = MAX_BODY_CHARS) -> list[str]:
    """Split `body` into parts of at most `limit` characters, on word boundaries where possible.

    Length is counted in UTF-16 code units, as Twilio counts message length, so
    an emoji counts as two; this errs on the short side and never splits one.
    A word longer than `limit` is cut hard, between grapheme clusters, so a flag or a
    joined emoji sequence is never split either. Whitespace at a cut is dropped.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    rest = body.strip()
    while _utf16_units(rest) > limit:
        fit = _fitting_prefix(rest, limit)
        # A whitespace right after the fitting prefix is a boundary too, hence fit + 1.
        window = rest[: fit + 1]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        if cut <= 0:
            # No space to cut at: cut hard, but between grapheme clusters (a cluster longer than a whole
            # part, which no real text has, is cut where it must be).
            hard = _grapheme_cut(rest, fit) or fit
            part, rest = rest[:hard], rest[hard:]
        else:
            part, rest = rest[:cut], rest[cut + 1 :]
        part = part.rstrip()
        rest = rest.lstrip()
        if part:
            parts.append(part)
    if rest.strip():
        parts.append(rest)
    return parts


def whatsapp_address(number: str) -> str:
    """`+15551234567` or `whatsapp:+15551234567` -> `whatsapp:+15551234567`; 422 for anything else."""
    bare = number.removeprefix(PREFIX)
    if not _E164.fullmatch(bare):
        raise InvalidInput(
            "`to` must be an E.164 number such as +15551234567, optionally prefixed with whatsapp:.",
            field="to",
        )
    return PREFIX + bare


class WhatsAppSkill:
    """Twilio's REST API over the shared httpx client."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http

    @property
    def status_callback_url(self) -> str | None:
        """PUBLIC_BASE_URL + /whatsapp-status, or None: Twilio can only call back a public address.

        Twilio accepts a message and reports its fate later: 63016 (outside the 24-hour window) and
        63015 (sandbox not joined) usually arrive this way, not on the create call. Without the
        callback such a message would fail with nothing recorded.
        """
        base = self.settings.public_base_url
        return base.rstrip("/") + STATUS_CALLBACK_PATH if base else None

    @property
    def messages_url(self) -> str:
        base = self.settings.twilio_base_url.rstrip("/")
        return f"{base}/2010-04-01/Accounts/{self.settings.twilio_account_sid}/Messages.json"

    async def send_message(self, *, to: str, body: str, dry_run: bool = False) -> WhatsAppSent:
        """Send `body` to `to`, split into several messages (in order) when over 1,600 characters."""
        INTEGRATION.require(self.settings)
        recipient = whatsapp_address(to)
        sender = self.settings.twilio_whatsapp_number
        sender = sender if sender.startswith(PREFIX) else PREFIX + sender
        parts = split_message(body)
        if not parts:
            raise InvalidInput("The message body is empty.", field="body")
        if len(parts) > MAX_PARTS:
            raise InvalidInput(
                f"The body would need {len(parts)} WhatsApp messages; the limit is {MAX_PARTS} "
                f"({MAX_PARTS * MAX_BODY_CHARS} characters).",
                field="body",
            )
        forms = [{"From": sender, "To": recipient, "Body": part} for part in parts]
        shown = [dict(form) for form in forms]
        if self.status_callback_url:
            for form, shown_form in zip(forms, shown, strict=True):
                form["StatusCallback"] = self.status_callback_url
                shown_form["StatusCallback"] = without_credentials(self.status_callback_url)
        # What the ledger records (for a dry run too): the request sent, but its URLs without the credentials that
        # TWILIO_BASE_URL or PUBLIC_BASE_URL may carry (`user:password@`, `?key=`), which it recorded whole.
        payload: dict[str, Any] = {"url": without_credentials(self.messages_url), "messages": shown}
        if dry_run:
            return WhatsAppSent(dry_run=True, to=recipient, sids=[], parts=len(parts), payload=payload)

        note_request(payload)
        sids: list[str] = []
        for index, form in enumerate(forms):
            try:
                sid = await with_retries(
                    lambda form=form: self._create(form), attempts=ATTEMPTS, max_wait_seconds=MAX_RETRY_WAIT_SECONDS
                )
            except ProblemError as exc:
                if sids:
                    # Earlier parts are already delivered: say so, so a caller does not resend them blindly.
                    exc.detail = f"{exc.detail} Parts 1-{index} of {len(forms)} were sent; part {index + 1} failed."
                    exc.extras["sent_sids"] = list(sids)
                raise
            sids.append(sid)
            note_external_id(",".join(sids))  # the WhatsAppSent.ledger_external_id form, kept if a later part fails
        return WhatsAppSent(to=recipient, sids=sids, parts=len(parts), payload=payload)

    async def _create(self, form: dict[str, str]) -> str:
        """One POST to Messages.json; the new message's SID, or a domain error."""
        # The first token TWILIO_AUTH_TOKEN lists, never the list whole: during a rotation, the secondary token.
        token = self.settings.twilio_sending_token
        assert token is not None  # INTEGRATION.require checked it
        try:
            response = await bounded_request(
                self.http,
                "POST",
                self.messages_url,
                deadline=self.settings.http_timeout_seconds,
                data=form,
                auth=(self.settings.twilio_account_sid or "", token.get_secret_value()),
                headers={"Accept": "application/json"},
            )
        except httpx.TransportError as exc:
            # Creating a message is not replay-safe: after a read timeout Twilio may have sent it.
            raise transport_error(exc, upstream=UPSTREAM, replay_safe=False, check=_may_have_sent(form["To"])) from None
        except httpx.DecodingError as exc:  # an answer too large or undecodable: the message may exist
            raise unreadable_create(
                f"Twilio answered with a body that could not be read ({exc}).",
                upstream=UPSTREAM,
                status=None,
                check=_may_have_sent(form["To"]),
            ) from None
        if response.is_success:
            try:
                sid = response.json().get("sid")
            except (ValueError, AttributeError):
                sid = None
            if not isinstance(sid, str) or not sid:
                # A 2xx: Twilio (or what answered for it) most likely created the message (found by a review: a
                # plain 502 that invited a resend).
                raise unreadable_create(
                    f"Twilio answered HTTP {response.status_code} without a message SID.",
                    upstream=UPSTREAM,
                    status=response.status_code,
                    check=_may_have_sent(form["To"]),
                )
            return sid
        raise twilio_error(response, recipient=form["To"])


# Twilio error code -> (problem class, human hint). Codes: https://www.twilio.com/docs/api/errors
_CODE_HINTS: dict[int, tuple[type[ProblemError], str]] = {
    63015: (
        Conflict,
        "The recipient has not joined your Twilio WhatsApp sandbox: they must send 'join <your-sandbox-code>' "
        "to the sandbox number first.",
    ),
    63016: (
        Conflict,
        "The recipient has not written in the last 24 hours, so WhatsApp refuses free-form text: "
        "send an approved template (ContentSid) or ask them to message you first.",
    ),
    21211: (InvalidInput, "The `to` number is not a valid phone number."),
    21614: (InvalidInput, "The `to` number is not a valid mobile number that can receive messages."),
    21610: (Conflict, "The recipient has opted out (replied STOP); they must opt in again."),
    21617: (InvalidInput, "The message body exceeds 1,600 characters."),
    21408: (InvalidInput, "Your Twilio account may not send to this country; enable it in Geo permissions."),
}


def delivery_error(code: int | None, message: str | None) -> ProblemError:
    """What a `failed`/`undelivered` status callback means, as the same problem the create call would give."""
    said = f" (Twilio {code}: {message})" if code and message else (f" (Twilio {code})" if code else "")
    context: dict[str, Any] = {"twilio_code": code, "upstream": UPSTREAM}
    lead = "Twilio accepted the message but could not deliver it."
    if code in _CODE_HINTS:
        problem, hint = _CODE_HINTS[code]
        return problem(f"{lead} {hint}{said}", **context)
    return UpstreamError(f"{lead}{said}", **context)


def _may_have_sent(recipient: str | None) -> str:
    """How to find out whether a create whose outcome is unknown sent the message (`core.upstream.outcome_unknown`)."""
    to = f" to {recipient}" if recipient else ""
    return f"the message may have been sent; check Twilio's message log (Monitor > Logs > Messaging) for messages{to}"


def twilio_error(response: httpx.Response, *, recipient: str | None = None) -> ProblemError:
    """Map a non-2xx answer to a message create to a domain error with a human hint."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    code = body.get("code") if isinstance(body.get("code"), int) else None
    message = str(body.get("message") or "").strip()
    context: dict[str, Any] = {"twilio_code": code, "more_info": body.get("more_info"), "upstream_status": status}
    said = f" (Twilio {code}: {message})" if code else (f" ({message})" if message else "")

    if status == 429 or code == 20429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return UpstreamRateLimited(
            f"Twilio's rate limit was reached.{said}", upstream=UPSTREAM, retry_after=retry_after, **context
        )
    if status >= 500:
        # Not retried: "sending an SMS [...] is not idempotent. If you get a 500 Server Error on these requests, and
        # you retry the request, it is possible for a customer to receive multiple messages"
        # (https://www.twilio.com/docs/api/errors/20500). 20503 "Service unavailable" advises back-off retries but
        # does not say the message was not created, so a 503 is not retried either.
        context.pop("upstream_status")
        return server_error(
            status,
            f"Twilio answered {status}{said}.",
            upstream=UPSTREAM,
            replay_safe=False,
            check=_may_have_sent(recipient),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            **context,
        )
    if status in (401, 403) or code == 20003:
        return UpstreamError(
            Phrase(("Twilio refused the credentials: ", OPERATOR_CHECKS))
            + f" TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.{said}",
            upstream=UPSTREAM,
            settings=_CREDENTIALS,
            **context,
        )
    if status == 404 and code is None:
        # Twilio's own 404 carries its JSON error (20404); one without it came from elsewhere: TWILIO_BASE_URL is
        # most likely not the REST root (it blamed only the SID; found by a user review).
        return UpstreamError(
            Phrase(("Twilio answered 404 without its error code: ", OPERATOR_CHECKS))
            + f" TWILIO_BASE_URL (the REST API root, https://api.twilio.com) and TWILIO_ACCOUNT_SID.{said}",
            upstream=UPSTREAM,
            settings=["TWILIO_BASE_URL", "TWILIO_ACCOUNT_SID"],
            **context,
        )
    if code == 20404:
        return UpstreamError(
            f"Twilio does not know this account: check TWILIO_ACCOUNT_SID.{said}",
            upstream=UPSTREAM,
            settings=["TWILIO_ACCOUNT_SID"],
            **context,
        )
    if code in (21606, 63007, 21212):
        return UpstreamError(
            f"The sender is not a WhatsApp number of this account: check TWILIO_WHATSAPP_NUMBER.{said}",
            upstream=UPSTREAM,
            settings=["TWILIO_WHATSAPP_NUMBER"],
            **context,
        )
    if code in _CODE_HINTS:
        problem, hint = _CODE_HINTS[code]
        return problem(f"{hint}{said}", upstream=UPSTREAM, **context)
    if not body:
        return UpstreamError(f"Twilio answered HTTP {status} without a usable JSON body.", upstream=UPSTREAM, **context)
    return UpstreamError(f"Twilio refused the message.{said}", upstream=UPSTREAM, **context)


def open_skill(resources: Resources) -> WhatsAppSkill:
    return WhatsAppSkill(resources.settings, resources.http)
