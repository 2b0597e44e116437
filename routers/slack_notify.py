"""POST /slack-notify: post a message to Slack (the original service's path and `message` field)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.deps import DryRunDep, LedgerDep
from core.errors import problem_responses
from core.idempotency import IdempotencyDep
from core.ledger import RunKind
from core.validation import has_non_finite_number, json_depth
from routers.deps import SkillsDep
from skills.slack import MAX_BLOCKS
from workflows.actions import perform_action

router = APIRouter(tags=["slack"])

#: Block Kit nests a handful of levels (rich text: blocks, elements, elements, style); far more is not Block Kit.
MAX_BLOCK_DEPTH = 16


class SlackNotifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "message": "Deploy finished :rocket:",
                "channel": "#general",
                "thread_ts": "1732521600.000100",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deploy finished* :rocket:"}}],
            }
        },
    )

    # 40,000 characters is where Slack starts truncating text.
    message: str = Field(
        min_length=1, max_length=40_000, description="Message text; the notification fallback when blocks are given."
    )
    channel: str | None = Field(
        None, min_length=1, max_length=80, description="Channel ID or #name; defaults to SLACK_DEFAULT_CHANNEL."
    )

    @field_validator("channel")
    @classmethod
    def _channel_not_blank(cls, value: str | None) -> str | None:
        # A blank channel is a mistake, not a request for the default: omit the field for SLACK_DEFAULT_CHANNEL.
        if value is not None and not value.strip():
            raise ValueError("must not be blank; omit `channel` to use SLACK_DEFAULT_CHANNEL")
        return value.strip() if value is not None else None

    thread_ts: str | None = Field(
        None, pattern=r"^[0-9]{1,12}\.[0-9]{1,8}$", description="Reply in this thread (the parent message's ts)."
    )
    blocks: list[dict[str, Any]] | None = Field(
        None,
        max_length=MAX_BLOCKS,
        description=f"Block Kit blocks, sent as given (nesting at most {MAX_BLOCK_DEPTH} levels).",
    )

    @field_validator("blocks")
    @classmethod
    def _shallow_enough(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        # Block Kit nests a handful of levels; a 300-level document was posted, then made its own ledger record
        # unreadable (found by a code review).
        if value is not None and (depth := json_depth(value)) > MAX_BLOCK_DEPTH:
            raise ValueError(f"nest {depth} levels deep; Block Kit needs at most {MAX_BLOCK_DEPTH}")
        # `NaN`, `Infinity` or `1e400` in a block was posted to Slack as that literal, a body that is not JSON,
        # while the ledger recorded null for it (found by a black-box review).
        if value is not None and has_non_finite_number(value):
            raise ValueError("contain NaN or an infinity (such as 1e400), which JSON cannot carry; send finite numbers")
        return value


class SlackNotifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                "dry_run": False,
                "channel": "C0123456789",
                "ts": "1732521600.000200",
            }
        }
    )

    run_id: str = Field(description="The ledger run; see GET /runs/{run_id}.")
    dry_run: bool
    channel: str = Field(description="The channel Slack posted to (its ID), or the requested one in a dry run.")
    ts: str | None = Field(description="The message's timestamp (Slack's message id); null in a dry run.")


@router.post(
    "/slack-notify",
    summary="Post a message to Slack",
    response_model=SlackNotifyResponse,
    responses=problem_responses(400, 401, 404, 409, 413, 422, 429, 502, 503, 504),
)
async def slack_notify(
    body: SlackNotifyRequest, skills: SkillsDep, ledger: LedgerDep, idem: IdempotencyDep, dry_run: DryRunDep
) -> JSONResponse:
    """Post `message` (and optional `blocks`) to `channel` or SLACK_DEFAULT_CHANNEL, optionally in a thread.

    Errors: 404 unknown channel, 409 bot not in the channel (invite it) or channel archived,
    429 Slack's rate limit after bounded retries (with Retry-After), 502 token refused.
    """

    async def act() -> SlackNotifyResponse:
        run_id, posted = await perform_action(
            ledger,
            kind=RunKind.SLACK_NOTIFY,
            trigger="api",
            skill="slack",
            operation="post_message",
            input_summary={
                "channel": body.channel,
                "message_chars": len(body.message),
                "blocks": len(body.blocks or []),
                "thread_ts": body.thread_ts,
            },
            call=lambda: skills.slack.post_message(
                text=body.message,
                channel=body.channel,
                blocks=body.blocks,
                thread_ts=body.thread_ts,
                dry_run=dry_run,
            ),
            dry_run=dry_run,
        )
        return SlackNotifyResponse(run_id=run_id, dry_run=posted.dry_run, channel=posted.channel, ts=posted.ts)

    # dry_run is part of the fingerprint: a dry run must not be replayed as if it had been a real post.
    return await idem.execute({"body": body, "dry_run": dry_run}, act)
