"""Pure-ASGI middleware: request id, secret scrubber, one access-log line, body limit, last-resort 500.

Written as raw ASGI rather than `BaseHTTPMiddleware` because it sits on every
request and the raw form adds no task or stream copies.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.context import reset_request_id, set_request_id
from core.errors import problem_response
from core.secrets import reset_scrubber, scrubber_of, use_scrubber

access_log = logging.getLogger("orchestrator.access")
error_log = logging.getLogger("orchestrator.errors")

# A caller-supplied id is echoed into logs and headers: keep it short and inert.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: `$` also matches before a final newline


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = dict(scope.get("headers") or [])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _SAFE_REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        token = set_request_id(request_id)
        # Like the request id, the app's scrubber travels with the request: every problem body uses it.
        scrubber_token = use_scrubber(scrubber_of(scope.get("app")))
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}
        max_body = self.max_body_bytes

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    # Answer 413 here and now: FastAPI's body parser catches any exception
                    # raised from receive() and would turn it into a 400. Whatever the app
                    # sends after this is dropped by send_with_id.
                    if not status_holder["started"]:
                        await self._too_large(scope, receive, send_with_id, max_body)
                    status_holder["refused"] = True
                    raise _BodyTooLarge
            return message

        async def send_with_id(message: Message) -> None:
            if status_holder.get("refused"):
                return  # the 413 is already on the wire
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        declared = headers.get(b"content-length")
        try:
            if declared is not None and declared.isdigit() and int(declared) > max_body:
                raise _BodyTooLarge  # refuse before reading a byte of it
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            if not status_holder["started"]:
                await self._too_large(scope, receive, send_with_id, max_body)
        except Exception:
            error_log.exception("Unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not status_holder["started"]:
                response = problem_response(
                    status=500,
                    title="Internal Server Error",
                    detail=f"An unexpected error occurred. Quote request id {request_id} when reporting it.",
                    type_="/problems/internal-error",
                    instance=scope.get("path"),
                )
                await response(scope, receive, send_with_id)
            else:  # pragma: no cover - the response is already on the wire
                raise
        finally:
            self._log(scope, status_holder["status"], started, request_id)
            reset_scrubber(scrubber_token)
            reset_request_id(token)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            status=413,
            title="Payload too large",
            detail=f"The request body exceeds the {limit}-byte limit (MAX_BODY_BYTES).",
            type_="/problems/payload-too-large",
            instance=scope.get("path"),
            extras={"limit_bytes": limit},
        )
        await response(scope, receive, send)

    @staticmethod
    def _log(scope: Scope, status: int, started: float, request_id: str) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        access_log.info(
            "%s %s %s %.1fms",
            scope.get("method"),
            scope.get("path"),
            status,
            duration_ms,
            extra={
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round(duration_ms, 2),
                "request_id": request_id,
            },
        )
