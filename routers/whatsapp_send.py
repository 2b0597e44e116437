"""POST /whatsapp-send: send a WhatsApp message through Twilio."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.deps import DryRunDep, LedgerDep
from core.errors import problem_responses
from core.idempotency import Idempotency, idempotency_for
from core.ledger import RunKind
from core.validation import skill_check
from routers.deps import SkillsDep
from skills.whatsapp import MAX_BODY_CHARS, MAX_PARTS, split_message, whatsapp_address
from workflows.actions import perform_action

router = APIRouter(tags=["whatsapp"])

#: Its ten parts can take longer than any other request, so a claim of its key is given up for dead on the cutoff
#: of its run's kind (`Settings.longest_run_seconds`), not the one the other routes share.
SendIdempotencyDep = Annotated[Idempotency, Depends(idempotency_for(RunKind.WHATSAPP_SEND))]


class WhatsAppSendRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"to": "+15551234567", "body": "Your 9:00 meeting moved to 9:30."}},
    )

    to: str = Field(
        min_length=8,
        max_length=30,
        description="E.164 number (+15551234567), optionally already prefixed with whatsapp:.",
    )
    body: str = Field(
        min_length=1,
        max_length=MAX_BODY_CHARS * MAX_PARTS,
        description=f"Message text. Over {MAX_BODY_CHARS} characters it is split on word boundaries into "
        f"several messages, sent in order (at most {MAX_PARTS}).",
    )

    @field_validator("to")
    @classmethod
    def _e164(cls, value: str) -> str:
        return skill_check(whatsapp_address, value)

    @field_validator("body")
    @classmethod
    def _sendable(cls, value: str) -> str:
        parts = split_message(value)
        if not parts:
            raise ValueError("must contain more than whitespace")
        if len(parts) > MAX_PARTS:
            raise ValueError(f"needs {len(parts)} WhatsApp messages; the limit is {MAX_PARTS}")
        return value


class WhatsAppSendResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                "dry_run": False,
                "to": "whatsapp:+15551234567",
                "sids": ["SM0123456789abcdef0123456789abcdef"],
                "parts": 1,
            }
        }
    )

    run_id: str = Field(description="The ledger run; see GET /runs/{run_id}.")
    dry_run: bool
    to: str = Field(description="The recipient as sent to Twilio.")
    sids: list[str] = Field(description="Twilio message SIDs, one per part, in order; empty in a dry run.")
    parts: int


@router.post(
    "/whatsapp-send",
    summary="Send a WhatsApp message (Twilio)",
    response_model=WhatsAppSendResponse,
    responses=problem_responses(400, 401, 409, 413, 422, 429, 502, 503, 504),
)
async def whatsapp_send(
    body: WhatsAppSendRequest, skills: SkillsDep, ledger: LedgerDep, idem: SendIdempotencyDep, dry_run: DryRunDep
) -> JSONResponse:
    """Errors: 409 the recipient has not joined the sandbox (63015) or is outside the 24-hour window (63016),
    422 invalid number, 502 Twilio refused the credentials, 429 Twilio's rate limit after bounded retries."""

    async def act() -> WhatsAppSendResponse:
        run_id, sent = await perform_action(
            ledger,
            kind=RunKind.WHATSAPP_SEND,
            trigger="api",
            skill="whatsapp",
            operation="send_message",
            input_summary={"to": body.to, "body_chars": len(body.body)},
            call=lambda: skills.whatsapp.send_message(to=body.to, body=body.body, dry_run=dry_run),
            dry_run=dry_run,
        )
        return WhatsAppSendResponse(run_id=run_id, dry_run=sent.dry_run, to=sent.to, sids=sent.sids, parts=sent.parts)

    # dry_run is part of the fingerprint: a dry run must not be replayed as if it had been a real send.
    return await idem.execute({"body": body, "dry_run": dry_run}, act)
