"""POST /whatsapp-status: Twilio's delivery status callbacks for the messages the service sent."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from core.deps import LedgerDep, SettingsDep
from core.errors import problem_responses
from routers import webhook_docs
from routers.whatsapp_webhook import MESSAGE_SID, verified_twilio_form
from workflows.deliveries import record_whatsapp_status

router = APIRouter(tags=["inbound"])


@router.post(
    "/whatsapp-status",
    summary="Receive a WhatsApp delivery status (Twilio status callback)",
    status_code=204,
    response_class=Response,
    openapi_extra=webhook_docs.TWILIO_STATUS,
    responses={204: {"description": "Received (a failed delivery is now a failed run in the ledger)"}}
    | problem_responses(403, 413, 503),
)
async def whatsapp_status(request: Request, settings: SettingsDep, ledger: LedgerDep) -> Response:
    """Twilio posts here (form-encoded, signed) each time a message the service sent changes status.

    The service asks for it on every message when `PUBLIC_BASE_URL` is set. `failed` and `undelivered`
    become a failed `whatsapp.delivery` run with Twilio's error code and what to do about it (63016: send
    a template; 63015: the recipient must join the sandbox), linked to the run that sent the message.
    A failed status the database could not record (down before its run was written) is a 503
    `store-unavailable` with `nothing_sent`: a retry of the same callback records it.
    """
    form = await verified_twilio_form(request, settings, what="whatsapp status callback")
    message_sid = str(form.get("MessageSid") or form.get("SmsSid") or "")
    status = str(form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    # MESSAGE_SID: a re-cut of a captured callback keeps its signature (see routers/whatsapp_webhook.py).
    if MESSAGE_SID.fullmatch(message_sid) and status:
        code = str(form.get("ErrorCode") or "")
        await record_whatsapp_status(
            ledger,
            message_sid=message_sid,
            status=status,
            to=str(form.get("To") or ""),
            # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
            error_code=int(code) if code.isascii() and code.isdigit() else None,
            error_message=str(form.get("ErrorMessage") or "") or None,
        )
    return Response(status_code=204)
