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

from core.errors import ProblemError, StoreUnavailable, delivery_database_failed, from_the_database
from core.ledger import Ledger, RunKind
from skills.whatsapp import delivery_error
from workflows.inbound import bare_number

logger = logging.getLogger("orchestrator.deliveries")

FAILED_STATUSES = frozenset({"failed", "undelivered"})
#: What a status callback the database could not record meets when Twilio sends it again.
STATUS_RETRIED = (
    "A retry of this callback (same MessageSid and status) once the database is back records it; the run's id "
    "comes from the two, so it is recorded once."
)


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
    try:
        sent_by = await ledger.find_run_by_external_id(
            skill="whatsapp", operation="send_message", external_id=message_sid
        )
    except Exception as exc:
        if not from_the_database(exc):
            raise
        raise _not_recorded(exc, message_sid=message_sid, status=status) from exc
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
    except ProblemError as exc:
        if exc is not problem:
            # The run's start refused (`nothing_sent`): nothing is recorded. Caught with the delivery's own
            # problem, it was answered 204, so Twilio never tried again and the failure was lost (found by a
            # review).
            if isinstance(exc, StoreUnavailable) and exc.extras.get("nothing_sent") is True:
                raise _not_recorded(exc.__cause__ or exc, message_sid=message_sid, status=status) from exc
            raise
        logger.warning("WhatsApp message %s to %s was %s: %s", message_sid, summary["to"], status, problem.detail)
    return run_id


def _not_recorded(exc: BaseException, *, message_sid: str, status: str) -> StoreUnavailable:
    """The 503 for a status callback the database failed before its run was written: `nothing_sent`, not the
    general "outcome unknown: check GET /runs" for a callback that left nothing there to check."""
    return delivery_database_failed(
        exc, delivery=f"'{status}' status callback of WhatsApp message {message_sid}", redelivery=STATUS_RETRIED
    )
