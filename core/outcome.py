"""The common shape of what a skill call returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ActionOutcome(BaseModel):
    """Base for every skill result.

    `payload` is the exact request the skill sent, or would have sent in a dry
    run; the ledger stores it with secrets redacted. Subclasses override
    `ledger_external_id` to name the upstream id (Slack ts, Toggl entry id,
    Message-ID, Twilio SID).
    """

    dry_run: bool = Field(False, description="True when nothing was sent upstream.")
    payload: dict[str, Any] | None = Field(None, exclude=True)

    def ledger_external_id(self) -> str | None:
        return None
