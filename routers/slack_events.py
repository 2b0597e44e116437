"""POST /slack/events: the Slack Events API, signed, deduplicated, acknowledged at once.

The sender is the Slack workspace itself, verified by the signing secret:
anyone who can mention the bot there may use the commands.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from slack_sdk.signature import SignatureVerifier

from core.deps import ResourcesDep, SettingsDep
from core.errors import BadRequest, Forbidden, NotConfigured, ProblemError, problem_responses
from core.resources import Resources
from routers.briefing import BackgroundTasksDep, WorkflowDepsDep
from workflows.briefing import WorkflowDeps
from workflows.commands import respond, strip_mentions
from workflows.inbound import claim_message, release_message

logger = logging.getLogger("orchestrator.slack_events")

router = APIRouter(tags=["inbound"])


class SlackEventsAck(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"ok": True, "challenge": None}})

    ok: bool = True
    challenge: str | None = Field(None, description="Echoed for `url_verification` only.")


def should_act(payload: dict[str, Any]) -> bool:
    """An app_mention or a direct message from a person; never bots (ourselves included) or edits."""
    event = payload.get("event") or {}
    if event.get("bot_id") or event.get("subtype") or not event.get("user"):
        return False  # bot_message, message_changed, message_deleted, channel_join, ...
    own_ids = {auth.get("user_id") for auth in payload.get("authorizations") or [] if auth.get("is_bot")}
    if event.get("user") in own_ids:
        return False
    if event.get("type") == "app_mention":
        return True
    return event.get("type") == "message" and event.get("channel_type") == "im"


@router.post(
    "/slack/events",
    summary="Receive Slack events (Events API)",
    response_model=SlackEventsAck,
    response_model_exclude_none=True,
    responses=problem_responses(400, 403, 413, 503),
)
async def slack_events(
    request: Request,
    settings: SettingsDep,
    resources: ResourcesDep,
    deps: WorkflowDepsDep,
    tasks: BackgroundTasksDep,
) -> SlackEventsAck:
    """Set the app's Event Subscriptions Request URL to `PUBLIC_BASE_URL/slack/events` and subscribe to
    `app_mention` and `message.im`. Mention the bot with a command (`@bot start writing for 30 min`) or a
    question; the answer is posted in the thread. Acknowledged at once; the work runs in the background.
    """
    secret = settings.slack_signing_secret
    if secret is None:
        raise NotConfigured("slack events", ["SLACK_SIGNING_SECRET"])
    raw = await request.body()
    timestamp = request.headers.get("x-slack-request-timestamp")
    signature = request.headers.get("x-slack-signature")
    verifier = SignatureVerifier(secret.get_secret_value())
    # is_valid also rejects a timestamp more than 5 minutes from now (replayed captures).
    if not timestamp or not signature or not verifier.is_valid(raw, timestamp, signature):
        logger.warning("rejected a Slack event with a missing, stale or bad signature")
        raise Forbidden("X-Slack-Signature is missing, older than 5 minutes, or does not match SLACK_SIGNING_SECRET.")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise BadRequest("The body is not JSON.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The body is not a JSON object.")

    if payload.get("type") == "url_verification":
        return SlackEventsAck(challenge=str(payload.get("challenge", "")))
    if payload.get("type") != "event_callback":
        return SlackEventsAck()
    event_id = payload.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise BadRequest("event_callback without event_id.")
    if not await claim_message(resources.sessions, source="slack", message_id=event_id):
        logger.info(
            "Slack event %s is a redelivery (retry %s): ignored", event_id, request.headers.get("x-slack-retry-num")
        )
        return SlackEventsAck()
    if should_act(payload):
        event = payload["event"]
        try:
            first = await _first_event_for_message(resources, event)
        except Exception:
            # Nothing ran: give the event back, or Slack's retry (same event_id) would be taken for a
            # redelivery and the message never answered.
            await release_message(resources.sessions, source="slack", message_id=event_id)
            raise
        if not first:
            logger.info("Slack event %s is a second event for message %s: ignored", event_id, event.get("ts"))
            return SlackEventsAck()
        tasks.spawn(
            _answer(deps, event),
            kind="slack.event",
            trigger="slack",
            input_summary={"event_id": event_id, "user": event.get("user"), "channel": event.get("channel")},
        )
    return SlackEventsAck()


async def _first_event_for_message(resources: Resources, event: dict[str, Any]) -> bool:
    """Claim the message itself, not only the event.

    One message can arrive as two events with two event_ids: a direct message
    that also mentions the bot is both `message.im` and `app_mention`. Claiming
    (channel, ts) in the same table makes it one answer and one action, across
    workers too. The claim is taken only for events we act on, so an ignored
    event never hides the one we want.
    """
    channel, ts = event.get("channel"), event.get("ts")
    if not isinstance(channel, str) or not isinstance(ts, str) or not channel or not ts:
        return True  # nothing to key on; the event_id claim already ran
    return await claim_message(resources.sessions, source="slack-message", message_id=f"{channel}:{ts}")


async def _answer(deps: WorkflowDeps, event: dict[str, Any]) -> None:
    text = strip_mentions(str(event.get("text") or ""))
    reply = await respond(deps, text, trigger="slack", sender=event.get("user"))
    thread_ts = event.get("thread_ts") or event.get("ts")
    try:
        async with deps.ledger.run(
            "slack.reply", trigger="slack", input_summary={"channel": event.get("channel"), "thread_ts": thread_ts}
        ) as run:
            async with run.action("slack", "post_message") as action:
                posted = await deps.skills.slack.post_message(
                    text=reply, channel=event.get("channel"), thread_ts=thread_ts
                )
                action.external_id = posted.ledger_external_id()
                action.request = posted.payload
    except ProblemError as exc:
        logger.warning("Slack reply in %s not posted: %s", event.get("channel"), exc.detail)
