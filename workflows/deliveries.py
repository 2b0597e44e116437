"""What happened to a WhatsApp message after Twilio accepted it (its status callbacks).

Twilio answers the create call with `queued` and reports the message's fate
later, to the `StatusCallback` URL the skill sends with each message. Most
statuses (`sent`, `delivered`, `read`) need no record: the send is already in
the ledger. A `failed` or `undelivered` message is recorded as a failed run
(kind `whatsapp.delivery`) with the same hint the create call would have given
(63016: outside the 24-hour window, 63015: sandbox not joined, ...), linked to
the run that sent it, so a message that never arrived is never silent.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy.exc import IntegrityError

from core.errors import ProblemError
from core.ledger import Ledger, RunKind
from skills.whatsapp import delivery_error
from workflows.inbound import bare_number

logger = logging.getLogger("orchestrator.deliveries")

FAILED_STATUSES = frozenset({"failed", "undelivered"})


async def record_whatsapp_status(
    ledger: Ledger,
    *,
    message_sid: str,
    status: str,
    to: str,
    error_code: int | None,
    error_message: str | None,
) -> str | None:
    """Record a failed delivery as a failed run, once per (message, status); the run id, or None."""
    if status not in FAILED_STATUSES:
        return None
    # Twilio retries a callback it got no 2xx for. The run's id is derived from (SID, status), so the
    # run row itself is the dedupe: a redelivery meets the primary key, and a callback that failed
    # before its run was written (the database was down) is recorded by the retry, not lost.
    run_id = hashlib.sha256(f"whatsapp-status:{message_sid}:{status}".encode()).hexdigest()[:32]
    sent_by = await ledger.find_run_by_external_id(skill="whatsapp", operation="send_message", external_id=message_sid)
    summary = {
        "message_sid": message_sid,
        "status": status,
        "to": bare_number(to),
        "twilio_code": error_code,
        "send_run_id": sent_by,
    }
    problem = delivery_error(error_code, error_message)
    try:
        async with ledger.run(
            RunKind.WHATSAPP_DELIVERY, trigger="whatsapp", input_summary=summary, run_id=run_id
        ) as run:
            async with run.action("whatsapp", "delivery") as action:
                action.external_id = message_sid
                # Raised inside the run so the ledger records it the one way it records every failure.
                raise problem
    except IntegrityError:
        logger.info("WhatsApp status %s for %s is a redelivery: ignored", status, message_sid)
        return None
    except ProblemError:
        logger.warning("WhatsApp message %s to %s was %s: %s", message_sid, summary["to"], status, problem.detail)
    return run_id
