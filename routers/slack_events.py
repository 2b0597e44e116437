"""POST /slack/events: the Slack Events API, signed, deduplicated, acknowledged at once.

The sender is the Slack workspace itself, verified by the signing secret. Who
may use the commands: the members in SLACK_ALLOWED_USERS, or, while it is
empty, anyone who can mention or message the bot there.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from slack_sdk.signature import SignatureVerifier
from sqlalchemy.exc import SQLAlchemyError

from core.deps import ResourcesDep, SettingsDep
from core.errors import (
    BadRequest,
    Forbidden,
    NotConfigured,
    ProblemError,
    delivery_database_failed,
    problem_responses,
)
from core.ledger import RunKind, encodable
from core.ratelimit import STRANGER_NOTICE, RateLimiterDep, admit_chat_message
from core.registry import Integration
from core.resources import Resources
from routers import webhook_docs
from routers.briefing import BackgroundTasksDep, WorkflowDepsDep
from skills.slack import escape_text, unescape_text
from workflows.briefing import WorkflowDeps
from workflows.commands import respond, strip_mentions
from workflows.inbound import EventClaim, claim_event_and_message, claim_message, send_chat_reply

logger = logging.getLogger("orchestrator.slack_events")

router = APIRouter(tags=["inbound"])


INTEGRATION = Integration(
    name="slack_events",
    kind="inbound",
    description="Answer @mentions and direct messages in Slack (POST /slack/events).",
    # The signing secret verifies the events; the bot token posts the answers (the slack skill).
    required=("SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN"),
    optional=("SLACK_ALLOWED_USERS", "PUBLIC_BASE_URL"),
    advice=lambda settings: (
        []
        if settings.slack_allowed_users or not settings.slack_signing_secret
        else [
            "SLACK_ALLOWED_USERS is empty, so anyone who can mention or message the bot commands the service "
            "(your timers, your LLM credit), guests and Slack Connect users included: list the member IDs who may."
        ]
    ),
)

#: What the resend of an event the database could not claim meets (`delivery_database_failed`). Slack resends
#: an event it got no 2xx for, three times over about five minutes, with the same event_id.
SLACK_RESENDS = (
    "Slack resends the event (up to three times, over about five minutes); one that arrives once the database "
    "is back is answered."
)

#: The reply, at most once an hour per person, to a mention from someone not in SLACK_ALLOWED_USERS.
REFUSAL = "Sorry, you are not allowed to use this service (SLACK_ALLOWED_USERS)."


class SlackEventsAck(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"ok": True, "challenge": None}})

    ok: bool = True
    challenge: str | None = Field(None, description="Echoed for `url_verification` only.")


# Slack's ids and timestamps (`Ev0PV52K25`, `U012AB3CD`, `1764057600.000100`): printable ASCII. Anything else
# in one of them is not Slack's shape, and it would become a database key (a lone surrogate cannot be encoded).
SlackId = Annotated[str, StringConstraints(max_length=255, pattern=r"^[!-~]*$")]
# Bounded so that the message claim "channel:ts" fits its 255-character column (PostgreSQL enforces it).
SlackMessageKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[!-~]*$")]


class SlackUrlVerification(BaseModel):
    """The handshake Slack sends when the Request URL is saved: echo `challenge`."""

    model_config = ConfigDict(strict=True)

    type: Literal["url_verification"]
    challenge: SlackId = Field(min_length=1)


class SlackAuthorization(BaseModel):
    """One entry of `authorizations`: who the app is installed as (the bot's own user id)."""

    model_config = ConfigDict(strict=True)

    user_id: SlackId | None = None
    is_bot: bool = False


class SlackEventCallback(BaseModel):
    """The `event_callback` envelope: only the members read here, each of its documented type.

    Slack adds members without notice, so unknown ones are ignored. The inner event stays a mapping
    here: its shape depends on its type, and only the types acted on are read (`SlackMessageEvent`).
    """

    model_config = ConfigDict(strict=True)

    type: Literal["event_callback"]
    event_id: SlackId = Field(min_length=1)
    event: dict[str, Any]
    authorizations: list[SlackAuthorization] | None = None


class SlackMessageEvent(BaseModel):
    """An `app_mention` or `message` event: the members read here, each a string when present.

    `channel` and `ts` are in every such event Slack documents, and are required: without a channel the
    reply would go to SLACK_DEFAULT_CHANNEL, telling a public channel the answer to a direct message.
    """

    model_config = ConfigDict(strict=True)

    type: Literal["app_mention", "message"]
    user: SlackId | None = None
    bot_id: SlackId | None = None
    subtype: SlackId | None = None
    channel_type: SlackId | None = None
    channel: SlackMessageKey
    ts: SlackMessageKey
    thread_ts: SlackId | None = None
    text: str | None = None

    @field_validator("text")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        # JSON may carry a lone surrogate ("\\ud800"): it cannot be encoded for Toggl or the ledger, and the
        # command failed in the background with no reply (found by a code review). Replaced, like bad UTF-8.
        return encodable(value) if value is not None else None


ACTED_ON = ("app_mention", "message")
# Subtypes that are still a person's message: one with a file attached, and a thread reply also sent to the
# channel. Every other subtype is an edit, a deletion, a join or a bot's post (a file-sharing DM was ignored;
# found by a review).
PEOPLES_SUBTYPES = frozenset({"file_share", "thread_broadcast"})


def should_act(callback: SlackEventCallback, event: SlackMessageEvent) -> bool:
    """An app_mention or a direct message from a person; never bots (ourselves included) or edits."""
    if event.bot_id or (event.subtype and event.subtype not in PEOPLES_SUBTYPES) or not event.user:
        return False  # bot_message, message_changed, message_deleted, channel_join, ...
    own_ids = {auth.user_id for auth in callback.authorizations or [] if auth.is_bot}
    if event.user in own_ids:
        return False
    if event.type == "app_mention":
        return True
    return event.type == "message" and event.channel_type == "im"


def parse_event(payload: dict[str, Any]) -> tuple[SlackEventCallback, SlackMessageEvent | None]:
    """The envelope, and the inner event when it is of a type acted on; ValidationError for any other shape."""
    callback = SlackEventCallback.model_validate(payload)
    if callback.event.get("type") not in ACTED_ON:
        return callback, None  # reaction_added, user_change, ...: never read, so never validated
    return callback, SlackMessageEvent.model_validate(callback.event)


@router.post(
    "/slack/events",
    summary="Receive Slack events (Events API)",
    response_model=SlackEventsAck,
    response_model_exclude_none=True,
    responses=problem_responses(400, 403, 413, 503),
    openapi_extra=webhook_docs.SLACK_EVENT,
)
async def slack_events(
    request: Request,
    settings: SettingsDep,
    resources: ResourcesDep,
    deps: WorkflowDepsDep,
    tasks: BackgroundTasksDep,
    limiter: RateLimiterDep,
) -> SlackEventsAck:
    """Set the app's Event Subscriptions Request URL to `PUBLIC_BASE_URL/slack/events` and subscribe to
    `app_mention` and `message.im`. Mention the bot with a command (`@bot start writing for 30 min`) or a
    question; the answer is posted in the thread. Acknowledged at once; the work runs in the background.
    """
    # The settings GET /health names (the bot token posts the answers): an event that cannot be answered is
    # refused, not acknowledged and dropped, and the two never disagree (found by a black-box review).
    missing = INTEGRATION.missing(settings)
    if missing:
        raise NotConfigured("slack events", missing)
    secret = settings.slack_signing_secret
    assert secret is not None
    raw = await request.body()
    timestamp = request.headers.get("x-slack-request-timestamp")
    signature = request.headers.get("x-slack-signature")
    verifier = SignatureVerifier(secret.get_secret_value())
    # is_valid also rejects a timestamp more than 5 minutes from now (replayed captures). It calls int() on
    # the timestamp and raises on anything else ("abc", "1e3"): found by schemathesis once the header was
    # documented, an unauthenticated 500. Slack's timestamps are whole Unix seconds. hmac.compare_digest
    # raises on a non-ASCII signature, so that is checked too. At most 12 digits: int() refuses a string of
    # over 4,300 digits (CPython's limit), and 5,000 digits was a 500 again (found by a black-box review).
    if (
        not timestamp
        or not timestamp.isascii()
        or not timestamp.isdigit()
        or len(timestamp) > 12
        or not signature
        or not signature.isascii()
        or not verifier.is_valid(raw, timestamp, signature)
    ):
        logger.warning("rejected a Slack event with a missing, stale or bad signature")
        raise Forbidden("X-Slack-Signature is missing, older than 5 minutes, or does not match SLACK_SIGNING_SECRET.")
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise BadRequest("The body is not JSON.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The body is not a JSON object.")

    if payload.get("type") == "url_verification":
        try:
            handshake = SlackUrlVerification.model_validate(payload)
        except ValidationError:
            # A 400 here, unlike an odd event below: the handshake is answered while someone watches the
            # app's settings page, and Slack shows the failure there.
            raise BadRequest(
                "url_verification needs a `challenge` to echo: a token of 1-255 printable ASCII characters, no spaces."
            ) from None
        return SlackEventsAck(challenge=handshake.challenge)
    if payload.get("type") != "event_callback":
        return SlackEventsAck()
    try:
        callback, event = parse_event(payload)
    except ValidationError as exc:
        # Signed, so Slack sent it, but not in a shape it documents. A 200 and a warning, not a 400: Slack
        # retries any non-2xx (three times, and counts failures towards disabling the subscription), and
        # the retry carries the same body. Checked before the claim, so nothing is held for it either.
        logger.warning(
            "Slack event %s ignored: not shaped like a documented event (%s)",
            repr(payload.get("event_id"))[:80],  # repr: any value, on one line
            "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())[:500],
        )
        return SlackEventsAck()
    event_id = callback.event_id
    acting = event is not None and should_act(callback, event)
    try:
        claim = await _claim(resources, event_id, event if acting else None)
    except (SQLAlchemyError, OSError) as exc:  # OSError: asyncpg's refused connection is not wrapped
        raise delivery_database_failed(exc, delivery=f"Slack event {event_id}", redelivery=SLACK_RESENDS) from exc
    if not claim.first_delivery:
        logger.info(
            "Slack event %s is a redelivery (retry %s): ignored", event_id, request.headers.get("x-slack-retry-num")
        )
        return SlackEventsAck()
    if event is None or not acting:
        return SlackEventsAck()  # its own claim only, so that its redeliveries are ignored
    if not claim.first_for_message:
        logger.info("Slack event %s is a second event for message %s: ignored", event_id, event.ts)
        return SlackEventsAck()
    summary = {"event_id": event_id, "user": event.user, "channel": event.channel}
    assert event.user is not None  # should_act: only people's messages are acted on
    allowed = settings.slack_allowed_users
    if allowed and event.user not in allowed:
        # Anyone in the workspace, guests and Slack Connect users included, could start the owner's timers and
        # spend their LLM credit (found by a security review). Told once an hour, like a WhatsApp stranger.
        logger.warning("Slack event %s from a user not in SLACK_ALLOWED_USERS: refused", event_id)
        if await limiter.first_in(STRANGER_NOTICE, "chat:slack", f"slack:{event.user}"):
            tasks.spawn(
                _post_reply(deps, event, REFUSAL), kind=RunKind.SLACK_NOTICE, trigger="slack", input_summary=summary
            )
        return SlackEventsAck()
    admission = await admit_chat_message(limiter, source="slack", sender=event.user)
    if not admission.allowed:
        logger.warning("Slack event %s not acted on: its sender is over RATE_LIMIT_PER_MINUTE", event_id)
        if admission.notice:
            tasks.spawn(
                _post_reply(deps, event, admission.notice),
                kind=RunKind.SLACK_NOTICE,
                trigger="slack",
                input_summary=summary,
            )
        return SlackEventsAck()
    tasks.spawn(_answer(deps, event), kind=RunKind.SLACK_EVENT, trigger="slack", input_summary=summary)
    return SlackEventsAck()


async def _claim(resources: Resources, event_id: str, acted_on: SlackMessageEvent | None) -> EventClaim:
    """Claim the event, and the message itself when the event is one we act on (`acted_on`).

    One message can arrive as two events with two event_ids: a direct message
    that also mentions the bot is both `message.im` and `app_mention`. Claiming
    (channel, ts) in the same table makes it one answer and one action, across
    workers too. The two claims are one transaction: a database failure between
    them left the event claimed and nothing done, so Slack's resend was ignored
    as a redelivery and the message never answered. The message claim is taken
    only for events we act on, so an ignored event never hides the one we want.
    """
    if acted_on is None:
        first_delivery = await claim_message(resources.sessions, source="slack", message_id=event_id)
        return EventClaim(first_delivery, first_for_message=False)
    return await claim_event_and_message(
        resources.sessions,
        source="slack",
        event_id=event_id,
        message_source="slack-message",
        message_id=f"{acted_on.channel}:{acted_on.ts}",
    )


async def _answer(deps: WorkflowDeps, event: SlackMessageEvent) -> None:
    # Slack escapes &, < and > in what people type ("R&D" arrives as "R&amp;D"); mentions first, as they are markup.
    text = unescape_text(strip_mentions(event.text or ""))
    await _post_reply(deps, event, await respond(deps, text, trigger="slack", sender=event.user))


async def _post_reply(deps: WorkflowDeps, event: SlackMessageEvent, reply: str) -> None:
    """Post `reply` in the thread of `event` (recorded as a `slack.reply` run, unless the database refuses it).

    Escaped: a reply echoes the sender's words and the LLM's, and neither may become `<!channel>`.
    """
    thread_ts = event.thread_ts or event.ts
    try:
        await send_chat_reply(
            deps.ledger,
            RunKind.SLACK_REPLY,
            trigger="slack",
            input_summary={"channel": event.channel, "thread_ts": thread_ts},
            action=("slack", "post_message"),
            send=lambda: deps.skills.slack.post_message(
                text=escape_text(reply), channel=event.channel, thread_ts=thread_ts
            ),
        )
    except ProblemError as exc:
        logger.warning("Slack reply in %s not posted: %s", event.channel, exc.detail)
