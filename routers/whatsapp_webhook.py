"""POST /whatsapp-webhook: Twilio's inbound WhatsApp messages, signed, deduplicated and allowlisted.

Order matters: the signature is checked before anything is read from the
message, the MessageSid is claimed in the database before anything runs, and
the sender allowlist is applied before any action or LLM call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import FormData
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.twiml.messaging_response import MessagingResponse

from core.deps import ResourcesDep, SettingsDep
from core.errors import (
    Forbidden,
    NotConfigured,
    PayloadTooLarge,
    ProblemError,
    delivery_database_failed,
    problem_responses,
)
from core.ledger import RunKind
from core.ratelimit import STRANGER_NOTICE, RateLimiterDep, admit_chat_message
from core.registry import Integration
from core.secrets import without_credentials
from core.settings import Settings
from core.text import xml_safe
from routers import webhook_docs
from routers.briefing import BackgroundTasksDep, WorkflowDepsDep
from skills.whatsapp import MAX_BODY_CHARS, MAX_PARTS, split_message
from workflows.briefing import WorkflowDeps
from workflows.commands import respond
from workflows.inbound import bare_number, claim_message, send_chat_reply, sender_allowed

logger = logging.getLogger("orchestrator.whatsapp_webhook")


def _webhook_advice(settings: Settings) -> list[str]:
    advice = []
    # The signature covers the public URL Twilio called. Without a proxy the request's own URL is that URL, so
    # this is advice, not a requirement: /health called it missing while the webhook served (found by a review).
    if not (settings.public_base_url or settings.trust_proxy_headers):
        advice.append(
            "Behind ngrok or another proxy, set PUBLIC_BASE_URL (or TRUST_PROXY_HEADERS=true): Twilio signs the "
            "public URL it called, and every webhook is a 403 until the URL checked is that one."
        )
    if settings.twilio_auth_token and not settings.whatsapp_allowed_senders:
        advice.append(
            "WHATSAPP_ALLOWED_SENDERS is empty, so every sender is refused: list the E.164 numbers that may "
            "command the service (yours)."
        )
    return advice


INTEGRATION = Integration(
    name="whatsapp_webhook",
    kind="inbound",
    description="Take commands and questions by WhatsApp (POST /whatsapp-webhook, Twilio).",
    # The token verifies the webhook; the account SID (with it) sends answers slower than the 2 s TwiML budget.
    required=("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
    # TWILIO_WEBHOOK_SHARED_KEY here, not on the `whatsapp` skill: only the webhooks verify with it, never a send.
    optional=("WHATSAPP_ALLOWED_SENDERS", "PUBLIC_BASE_URL", "TRUST_PROXY_HEADERS", "TWILIO_WEBHOOK_SHARED_KEY"),
    advice=_webhook_advice,
)

router = APIRouter(tags=["inbound"])

# Twilio waits 15 s, but the issue asks for an answer within 2 s: leave room for the network.
REPLY_BUDGET_SECONDS = 1.5
TWIML_MEDIA_TYPE = "text/xml"
#: Twilio's webhooks carry about 20 to 40 fields (ten MediaUrl/MediaContentType pairs at most); far more is not
#: Twilio, and is refused before the signature is computed over it.
MAX_FORM_FIELDS = 200
#: Twilio's forms are a few kilobytes (a 1,600-character body is under 15 KB encoded); a bigger one is refused
#: before it is parsed, as MAX_BODY_BYTES alone would let 1 MiB of fields be split first.
MAX_FORM_BYTES = 64 * 1024
#: A Twilio message SID: two letters and 32 lowercase hex digits. Twilio's signature covers the fields run
#: together with no separator, so a captured signed form re-cut for MessageSid to swallow the next field
#: ("SM…" + "MessageTypetext", that field dropped) kept its signature and passed for a new message: a replay
#: that acted again (found by a security review). Every re-cut that keeps the format keeps the SID, claimed.
MESSAGE_SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")
#: What the resend of a message the database could not claim meets (`delivery_database_failed`). Whether Twilio
#: resends one it got a 5xx for depends on the webhook URL's retry settings, so the sender may have to.
TWILIO_RESENDS = (
    "A resend of this MessageSid once the database is back is acted on; if Twilio does not resend it, the "
    "sender has to send the message again."
)
#: What twilio's RequestValidator can compute. A Webhook Setting naming another algorithm fails every check, so it
#: is refused by name rather than as a signature that "does not match".
SIGNATURE_ALGORITHMS = (HMAC_SHA1, HMAC_SHA256)
#: How a name from X-Twilio-Webhooks-Signature-Settings (a key id, an algorithm) may look to be quoted in a log
#: line or a problem: the header is unsigned, so anything else is not repeated.
_QUOTABLE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
REFUSAL = "Sorry, this number is not allowed to use this service."
WORKING = "Working on it; the answer follows in a moment."
FAILED = "Sorry, something went wrong; it has been logged."
#: Sent instead of the answer when the service stops before a message told WORKING is done. It may have acted
#: (a timer started), hence the advice to look before sending the message again.
INTERRUPTED = (
    "Sorry, the service restarted before your answer was ready, so it will not come. "
    'Send "status" to see whether a timer is running, then send your message again if it is still wanted.'
)
#: How long the INTERRUPTED message may hold a shutdown.
INTERRUPTED_SEND_SECONDS = 5.0
# One part of headroom: splitting at word boundaries can need an extra part.
MAX_REPLY_CHARS = (MAX_PARTS - 1) * MAX_BODY_CHARS

TWIML_EXAMPLE = '<?xml version="1.0" encoding="UTF-8"?><Response><Message>No timer is running.</Message></Response>'


def public_url(request: Request, settings: Settings) -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL + path + query, else the request URL (proxy headers if trusted).

    Behind ngrok the app sees http://localhost:8000/... while Twilio signed
    https://abc.ngrok.app/...; without one of these two the signature never matches.
    """
    path_and_query = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + path_and_query
    url = request.url
    if settings.trust_proxy_headers:
        proto = _first(request.headers.get("x-forwarded-proto"))
        host = _first(request.headers.get("x-forwarded-host"))
        if proto:
            url = url.replace(scheme=proto)
        if host:
            url = url.replace(netloc=host)
    return str(url)


def _first(header: str | None) -> str | None:
    """The client-most value of a comma-separated forwarding header."""
    if not header:
        return None
    return header.split(",")[0].strip() or None


async def verified_twilio_form(request: Request, settings: Settings, *, what: str) -> FormData:
    """The posted form, once its X-Twilio-Signature matches; 403 otherwise, 503 without TWILIO_AUTH_TOKEN.

    Signed with the auth token (HMAC-SHA1), or, when X-Twilio-Webhooks-Signature-Settings says a Webhook
    Setting's SharedKey signed it, with TWILIO_WEBHOOK_SHARED_KEY and the algorithm it names (`signing_key`).
    Nothing is read from the form before this returns.
    """
    # Never run unsigned: without the token no request can be verified. The same settings as GET /health
    # names (the account SID sends the answers that miss the TwiML budget), so the two never disagree.
    missing = INTEGRATION.missing(settings)
    if missing:
        raise NotConfigured(what, missing)
    raw = await request.body()
    # Both checked before the form is parsed and signed, whose costs grow with the fields: anyone can post a
    # forged form, and 1 MiB of "a=&a=&..." held the event loop for 0.4 s per request (found by a security
    # review). A form has at most one field more than it has '&'.
    if len(raw) > MAX_FORM_BYTES:
        raise PayloadTooLarge(
            f"The form is {len(raw)} bytes; a Twilio webhook is at most {MAX_FORM_BYTES}.", limit_bytes=MAX_FORM_BYTES
        )
    if raw.count(b"&") >= MAX_FORM_FIELDS:
        raise PayloadTooLarge(
            f"The form has more than {MAX_FORM_FIELDS} fields; a Twilio webhook has fewer.",
            limit_fields=MAX_FORM_FIELDS,
        )
    fields = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    signature = request.headers.get("x-twilio-signature")
    url = public_url(request, settings)
    key = signing_key(request, settings, what=what, url=url)
    params = _Params(fields)
    try:
        # A list, not any() over a generator: every secret is tried, so the time of the 403 or 200 does not say
        # which of a rotation's keys (the old or the new) signed it.
        signed = bool(signature) and any(
            [
                RequestValidator(secret.get_secret_value()).validate(url, params, signature, algorithm=key.algorithm)
                for secret in key.secrets
            ]
        )
    except ValueError:
        # A Host (or trusted X-Forwarded-Host) whose port is not a number (`example.com:abc`): the validator reads
        # the port to try the URL with and without it, and raised. No URL Twilio signs looks like that, so it is
        # the 403 of any other mismatch; it was a 500 for anyone's unsigned POST (found by a review).
        signed = False
    if not signed:
        logger.warning(
            "rejected a %s with a %s signature%s (checked for %s)",
            what,
            "bad" if signature else "missing",
            key.described,
            without_credentials(url),
        )
        raise _mismatch(settings, key)
    return FormData(fields)


@dataclass(frozen=True)
class SigningKey:
    """The secrets and algorithm a webhook is checked with, and how the log and the 403 name them."""

    #: Signed with any of them is signed: every auth token TWILIO_AUTH_TOKEN lists, or every SharedKey
    #: TWILIO_WEBHOOK_SHARED_KEY lists.
    secrets: tuple[SecretStr, ...]
    algorithm: str
    #: The variable holding `secrets`.
    setting: str
    #: Appended to the log line of a rejected signature: "" for the auth token.
    described: str = ""


def signing_key(request: Request, settings: Settings, *, what: str, url: str) -> SigningKey:
    """What Twilio signed this request with, as its own middleware decides: the auth token and HMAC-SHA1, unless
    X-Twilio-Webhooks-Signature-Settings (`key=<SharedKey id>,algorithm=HMAC_SHA256`) is present. Then a Webhook
    Rule matched the URL, and the Webhook Setting's SharedKey signed it with the algorithm named there.

    Which key is trusted stays with this service, whatever the (unsigned) header says: it only picks between
    the two secrets configured, so adding it to a forged request, or taking it off a real one, gains nothing.
    """
    assert settings.twilio_auth_token is not None  # INTEGRATION.missing() was checked first
    header = (request.headers.get(SIGNATURE_SETTINGS_HEADER) or "").strip()
    if not header:  # empty counts as absent, as in Twilio's Node middleware
        # Every token listed: during a rotation Twilio signs with the primary until the secondary is promoted.
        return SigningKey(settings.twilio_auth_tokens, HMAC_SHA1, "TWILIO_AUTH_TOKEN")
    algorithm = get_signature_algorithm(header)  # HMAC_SHA1 when the header names none, as the SDK reads it
    key_id = _quotable(_header_part(header, "key"))
    shared_key = settings.twilio_webhook_shared_key
    if shared_key is None:
        # Twilio's own middleware answers 500 here; a 403 naming the setting says what to do (and a missing
        # setting must not pass for "the auth token", which would fail every such webhook as "does not match").
        logger.warning(
            "rejected a %s signed with SharedKey %s (%s): TWILIO_WEBHOOK_SHARED_KEY is not set (checked for %s)",
            what,
            key_id,
            _quotable(algorithm),
            without_credentials(url),
        )
        raise Forbidden(
            f"This request was signed with a Webhook Setting's SharedKey ({SIGNATURE_SETTINGS_HEADER}: "
            "a Webhook Rule of the Twilio account matches this URL), not with the auth token: set "
            "TWILIO_WEBHOOK_SHARED_KEY to that SharedKey's secret, or remove the Webhook Rule."
        )
    if algorithm.upper() not in SIGNATURE_ALGORITHMS:
        logger.warning(
            "rejected a %s signed with SharedKey %s: unsupported algorithm %s (checked for %s)",
            what,
            key_id,
            _quotable(algorithm),
            without_credentials(url),
        )
        raise Forbidden(
            f"{SIGNATURE_SETTINGS_HEADER} names the signature algorithm {_quotable(algorithm)}, which this service "
            f"cannot verify: set the Webhook Setting's algorithm to {HMAC_SHA256} (or {HMAC_SHA1})."
        )
    return SigningKey(
        settings.twilio_webhook_shared_keys,
        algorithm,
        "TWILIO_WEBHOOK_SHARED_KEY",
        described=f" ({_quotable(algorithm)} with SharedKey {key_id})",
    )


# Twilio error 57012 lists "a secondary token that has not been promoted" among the wrong tokens for a signature.
_PRIMARY_SIGNS = " (Twilio signs webhooks with the primary token: a secondary one signs nothing until it is promoted)"


def _mismatch(settings: Settings, key: SigningKey) -> Forbidden:
    if key.setting == "TWILIO_AUTH_TOKEN":
        if settings.public_base_url:
            # "Set PUBLIC_BASE_URL" told a user whose tunnel had a new host to set what was set, and never named
            # the token (found by a user review). The URL checked is in the log line.
            return Forbidden(
                "X-Twilio-Signature is missing or does not match: check that PUBLIC_BASE_URL is the URL Twilio calls "
                "(the webhook URL in the Twilio console, without the path) and that TWILIO_AUTH_TOKEN is (or lists) "
                f"that account's primary auth token{_PRIMARY_SIGNS}."
            )
        return Forbidden(
            "X-Twilio-Signature is missing or does not match. Behind ngrok or a proxy, set PUBLIC_BASE_URL "
            "(or TRUST_PROXY_HEADERS=true) so the URL checked is the one Twilio called; check that TWILIO_AUTH_TOKEN "
            f"is (or lists) the account's primary auth token too{_PRIMARY_SIGNS}."
        )
    signed = (
        f"X-Twilio-Signature ({key.algorithm.upper()} with a Webhook Setting's SharedKey, as "
        f"{SIGNATURE_SETTINGS_HEADER} says) is missing or does not match"
    )
    the_key = f"TWILIO_WEBHOOK_SHARED_KEY is (or lists) the secret of the SharedKey {SIGNATURE_SETTINGS_HEADER} names"
    if settings.public_base_url:
        return Forbidden(
            f"{signed}: check that PUBLIC_BASE_URL is the URL Twilio calls (the webhook URL in the Twilio console, "
            f"without the path) and that {the_key}."
        )
    return Forbidden(
        f"{signed}. Behind ngrok or a proxy, set PUBLIC_BASE_URL (or TRUST_PROXY_HEADERS=true) so the URL checked "
        f"is the one Twilio called; check that {the_key} too."
    )


def _header_part(header: str, name: str) -> str:
    """`name`'s value in a `key=...,algorithm=...` header; "" when absent."""
    for part in header.split(","):
        found, separator, value = part.partition("=")
        if separator and found.strip() == name:
            return value.strip()
    return ""


def _quotable(value: str) -> str:
    """A value from the unsigned header, fit to quote: anyone can send it, so only a plain name is repeated."""
    if not value:
        return "(none)"
    return value if _QUOTABLE.fullmatch(value) else "(unreadable)"


class _Params(dict[str, list[str]]):
    """The form grouped by name, with the `getall` RequestValidator looks for. Given starlette's FormData, it
    called `getlist` once per name, and each call scans every field: a forged form of 10,000 fields held the
    event loop for 5 s before its 403 (found by a code review)."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__()
        for name, value in fields:
            self.setdefault(name, []).append(value)

    def getall(self, name: str) -> list[str]:
        return self[name]


def whatsapp_text(reply: str | None) -> str:
    """What a reply becomes on WhatsApp, in TwiML or sent late: XML-safe, FAILED if none, bounded in length."""
    # A reply of nothing but forbidden characters would become an empty <Message>: FAILED instead.
    return bounded(xml_safe(reply or "") or FAILED)


def twiml(*messages: str) -> Response:
    return Response(content=_twiml_text(messages), media_type=TWIML_MEDIA_TYPE)


# Most replies repeat (`<Response/>` for redeliveries and status callbacks, help, "working on it"), and
# building the XML through the SDK's element tree was ~8 % of a webhook's CPU (docs/benchmarks.md).
# Small: it holds only the last few distinct replies.
@lru_cache(maxsize=32)
def _twiml_text(messages: tuple[str, ...]) -> str:
    reply = MessagingResponse()
    for text in messages:
        # Here, where TwiML is built, so no message (a command echoing its task, an LLM answer) escapes it.
        reply.message(xml_safe(text))
    return str(reply)


def bounded(reply: str) -> str:
    return reply if len(reply) <= MAX_REPLY_CHARS else reply[: MAX_REPLY_CHARS - 1] + "…"


@router.post(
    "/whatsapp-webhook",
    summary="Receive a WhatsApp message (Twilio webhook)",
    response_class=Response,
    openapi_extra=webhook_docs.TWILIO_MESSAGE,
    responses={
        200: {
            "description": "TwiML reply (`<Response/>` means no reply)",
            "content": {"text/xml": {"example": TWIML_EXAMPLE}},
        },
        **problem_responses(403, 413, 503),
    },
)
async def whatsapp_webhook(
    request: Request,
    settings: SettingsDep,
    resources: ResourcesDep,
    deps: WorkflowDepsDep,
    tasks: BackgroundTasksDep,
    limiter: RateLimiterDep,
) -> Response:
    """Twilio posts each inbound message here (form-encoded, signed with `X-Twilio-Signature`).

    Set the sandbox's "When a message comes in" URL to `PUBLIC_BASE_URL/whatsapp-webhook`. Commands:
    `start <task> for <N> min`, `start`, `stop`, `status`, `brief`, `help`; anything else gets an AI reply.
    The answer comes back as TwiML within 2 seconds; slower work is sent afterwards with the WhatsApp skill.
    """
    form = await verified_twilio_form(request, settings, what="whatsapp webhook")
    message_sid = form.get("MessageSid") or form.get("SmsMessageSid")
    if not isinstance(message_sid, str) or not message_sid:
        return twiml()  # a signed post without a message (a status callback): nothing to do
    if not MESSAGE_SID.fullmatch(message_sid):
        logger.warning("WhatsApp webhook with a MessageSid that is not a Twilio SID (a re-cut replay?): ignored")
        return twiml()
    try:
        first_delivery = await claim_message(resources.sessions, source="whatsapp", message_id=message_sid)
    except (SQLAlchemyError, OSError) as exc:  # OSError: asyncpg's refused connection is not wrapped
        raise delivery_database_failed(
            exc, delivery=f"WhatsApp message {message_sid}", redelivery=TWILIO_RESENDS
        ) from exc
    if not first_delivery:
        logger.info("WhatsApp message %s is a redelivery: ignored", message_sid)
        return twiml()
    sender = str(form.get("From") or "")
    if not sender_allowed(settings, sender):
        logger.warning("WhatsApp message %s from a sender not in WHATSAPP_ALLOWED_SENDERS: refused", message_sid)
        # The refusal is a billed message: once an hour per stranger, not once per message.
        told = await limiter.first_in(STRANGER_NOTICE, "chat:whatsapp", f"whatsapp:{bare_number(sender)}")
        return twiml(REFUSAL) if told else twiml()
    admission = await admit_chat_message(limiter, source="whatsapp", sender=bare_number(sender))
    if not admission.allowed:
        logger.warning("WhatsApp message %s not acted on: its sender is over RATE_LIMIT_PER_MINUTE", message_sid)
        return twiml(admission.notice) if admission.notice else twiml()

    text = str(form.get("Body") or "")
    summary = {"message_sid": message_sid, "sender": bare_number(sender)}
    work = tasks.spawn(
        respond(deps, text, trigger="whatsapp", sender=bare_number(sender)),
        kind=RunKind.WHATSAPP_MESSAGE,
        trigger="whatsapp",
        input_summary=summary,
    )
    done, _ = await asyncio.wait({work}, timeout=REPLY_BUDGET_SECONDS)
    if work in done:
        return twiml(*split_message(whatsapp_text(work.result())))
    # Too slow for the webhook: the answer goes out as a separate message when ready.
    tasks.spawn(
        _send_when_ready(deps, work, to=sender),
        kind=RunKind.WHATSAPP_REPLY,
        trigger="whatsapp",
        input_summary=summary,
    )
    return twiml(WORKING)


async def _send_when_ready(deps: WorkflowDeps, work: asyncio.Task[str | None], *, to: str) -> None:
    try:
        answer = await work
    except asyncio.CancelledError:
        # The shutdown's grace ran out first. The sender was told "working on it" and would otherwise wait for
        # an answer that never comes (the run is recorded `cancelled` by the tracker either way).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(INTERRUPTED_SEND_SECONDS):
                await _send_reply(deps, INTERRUPTED, to=to)  # cancelled once, this task runs on to here
        raise
    # Twilio's API takes the same text as the TwiML would have: without characters WhatsApp cannot show.
    await _send_reply(deps, whatsapp_text(answer), to=to)


async def _send_reply(deps: WorkflowDeps, reply: str, *, to: str) -> None:
    """One late reply, recorded as a `whatsapp.reply` run (unless the database refuses it); a failure is logged,
    never raised."""
    try:
        await send_chat_reply(
            deps.ledger,
            RunKind.WHATSAPP_REPLY,
            trigger="whatsapp",
            input_summary={"to": bare_number(to)},
            action=("whatsapp", "send_message"),
            send=lambda: deps.skills.whatsapp.send_message(to=to, body=reply),
        )
    except ProblemError as exc:
        # Recorded as a failed run by the ledger (when it could start one); the sender gets nothing more we can do.
        logger.warning("late WhatsApp reply to %s not sent: %s", bare_number(to), exc.detail)
