"""POST /send-email: one message over SMTP."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

from core.deps import DryRunDep, LedgerDep
from core.errors import problem_responses
from core.idempotency import Idempotency, idempotency_for
from core.ledger import RunKind
from core.validation import skill_check
from routers.deps import SkillsDep
from skills.email import MAX_RECIPIENTS, effective_html, normalise_recipients, normalise_subject
from workflows.actions import perform_action

router = APIRouter(tags=["email"])

Address = Annotated[str, Field(min_length=3, max_length=320)]

#: SMTP_TIMEOUT_SECONDS applies to each SMTP command, and a send makes dozens: a claim of its key is given up for dead
#: on the cutoff of its run's kind (`Settings.longest_run_seconds`), not the one the other routes share.
SendIdempotencyDep = Annotated[Idempotency, Depends(idempotency_for(RunKind.EMAIL_SEND))]


def _one_error_for_the_recipients(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """`to_address` is a string or a list: when both readings fail, pydantic reported one error per reading
    ("body.to_address.constrained-str: Input should be a valid string" beside the real reason). The caller
    gets one error on `to_address` saying what it may be (found by a black-box review)."""
    try:
        return handler(value)
    except ValidationError:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_RECIPIENTS:
            reason = f"give 1 to {MAX_RECIPIENTS} addresses; this list has {len(value)}"
        else:
            reason = f"must be one address (3 to 320 characters) or a list of 1 to {MAX_RECIPIENTS} of them"
        raise PydanticCustomError("invalid_recipients", reason) from None


class SendEmailRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "to_address": "ann@example.com",
                "subject": "Daily plan",
                "body": "Deep work 9-10:30, standup at 11.",
                "html": "<p>Deep work 9-10:30, standup at 11.</p>",
            }
        },
    )

    to_address: Annotated[
        Address | Annotated[list[Address], Field(min_length=1, max_length=MAX_RECIPIENTS)],
        WrapValidator(_one_error_for_the_recipients),
    ] = Field(description=f"One address or a list (at most {MAX_RECIPIENTS}).")
    subject: str = Field(max_length=998, description="One line: CR, LF and other control characters get a 422.")
    body: str = Field(max_length=200_000, description="Plain text.")
    html: str | None = Field(
        None, max_length=500_000, description="Optional HTML alternative to the text body; a blank one is not sent."
    )

    @field_validator("to_address")
    @classmethod
    def _valid_addresses(cls, value: str | list[str]) -> str | list[str]:
        return skill_check(normalise_recipients, value)

    @field_validator("subject")
    @classmethod
    def _one_line_subject(cls, value: str) -> str:
        return skill_check(normalise_subject, value)


class SendEmailResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                "dry_run": False,
                "message_id": "<176406480012.4242.1234567890@example.com>",
                "recipients": ["ann@example.com"],
                "refused": {},
            }
        }
    )

    run_id: str = Field(description="The ledger run: GET /runs/{run_id}.")
    dry_run: bool
    message_id: str
    recipients: list[str] = Field(description="Addresses the server accepted.")
    refused: dict[str, str] = Field(description="Addresses refused while others were accepted, with the reason.")


def _summary(request: SendEmailRequest) -> dict[str, Any]:
    """What the run records as its input: who and what about, not the message itself (privacy).

    The exact message (text cut at 500 characters by the ledger) is kept on the action as its request.
    """
    to = request.to_address if isinstance(request.to_address, list) else [request.to_address]
    return {
        "to": to,
        "subject": request.subject,
        "body_chars": len(request.body),
        "html": effective_html(request.html) is not None,
    }


@router.post(
    "/send-email",
    summary="Send an email over SMTP",
    response_model=SendEmailResponse,
    responses=problem_responses(400, 401, 409, 413, 422, 429, 502, 503, 504),
)
async def send_email(
    request: SendEmailRequest, skills: SkillsDep, ledger: LedgerDep, idem: SendIdempotencyDep, dry_run: DryRunDep
) -> JSONResponse:
    """Addresses are checked (syntax, no DNS) and header injection refused with a 422 before any connection.
    Returns the Message-ID. A recipient the server refuses is a 422; a failed login a 502 naming SMTP_USER and
    SMTP_PASSWORD; an unreachable server a 503; a timeout a 504."""

    async def run() -> SendEmailResponse:
        run_id, outcome = await perform_action(
            ledger,
            kind=RunKind.EMAIL_SEND,
            trigger="api",
            skill="email",
            operation="send_email",
            input_summary=_summary(request),
            call=lambda: skills.email.send_email(
                to=request.to_address,
                subject=request.subject,
                body=request.body,
                html=request.html,
                dry_run=dry_run,
            ),
            dry_run=dry_run,
        )
        return SendEmailResponse(run_id=run_id, **outcome.model_dump())

    return await idem.execute({"body": request.model_dump(mode="json"), "dry_run": dry_run}, run)
