"""Pure-ASGI middleware: request id, secret scrubber, one access-log line, body limits, last-resort 500.

Written as raw ASGI rather than `BaseHTTPMiddleware` because it sits on every
request and the raw form adds no task or stream copies.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import NoReturn

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.context import reset_request_id, set_request_id
from core.errors import problem_response
from core.secrets import reset_scrubber, scrubber_of, use_scrubber

access_log = logging.getLogger("orchestrator.access")
error_log = logging.getLogger("orchestrator.errors")

# A caller-supplied id is echoed into logs and headers: keep it short and inert.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: `$` also matches before a final newline


class _BodyRefused(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_seconds: float = 30.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds

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
        body_done = False
        # The whole body must arrive by then. Uvicorn bounds each wait for a byte only by its keep-alive, and not
        # while a body is pending: one byte every 20 s held a request (and its task and buffer) open for good,
        # before any API key was checked (found by a security review).
        body_deadline = asyncio.get_running_loop().time() + self.body_timeout_seconds

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # waiting for a disconnect, which may rightly take as long as the answer
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                await refuse(self._too_slow(scope))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > max_body:
                    await refuse(self._too_large(scope, max_body))
            return message

        async def refuse(response: Response) -> NoReturn:
            # Answered here and now: FastAPI's body parser catches any exception raised from receive() and
            # would turn it into a 400. Whatever the app sends after this is dropped by send_with_id.
            if not status_holder["started"]:
                await response(scope, receive, send_with_id)
            status_holder["refused"] = True
            raise _BodyRefused

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
        encoding = headers.get(b"content-encoding", b"").strip().lower()
        try:
            if declared is not None and declared.isdigit() and int(declared) > max_body:
                # Refused before reading a byte of it.
                await self._too_large(scope, max_body)(scope, receive, send_with_id)
                return
            if encoding not in (b"", b"identity") and (declared not in (None, b"0") or b"transfer-encoding" in headers):
                # Nothing here decodes a compressed body: a gzipped JSON body was a 400 "must be UTF-8", naming
                # the wrong cause (found by a black-box review). RFC 9110 15.5.16: 415, and say what is accepted.
                await self._compressed(scope, encoding)(scope, receive, send_with_id)
                return
            await self.app(scope, limited_receive, send_with_id)
        except _BodyRefused:
            pass  # answered in limited_receive
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

    @staticmethod
    def _too_large(scope: Scope, limit: int) -> Response:
        return problem_response(
            status=413,
            title="Payload too large",
            detail=f"The request body exceeds the {limit}-byte limit (MAX_BODY_BYTES).",
            type_="/problems/payload-too-large",
            instance=scope.get("path"),
            extras={"limit_bytes": limit},
        )

    @staticmethod
    def _compressed(scope: Scope, encoding: bytes) -> Response:
        return problem_response(
            status=415,
            title="Unsupported Content-Encoding",
            detail=f"The body is sent with Content-Encoding: {encoding.decode('latin-1')[:40]}; this service reads "
            "only uncompressed bodies. Send it without a Content-Encoding header.",
            type_="/problems/unsupported-content-encoding",
            instance=scope.get("path"),
            headers={"Accept-Encoding": "identity"},
        )

    def _too_slow(self, scope: Scope) -> Response:
        return problem_response(
            status=408,
            title="Request body too slow",
            detail=f"The request body did not arrive within {self.body_timeout_seconds:g} s "
            "(REQUEST_BODY_TIMEOUT_SECONDS); nothing ran. Send the whole body at once.",
            type_="/problems/request-timeout",
            instance=scope.get("path"),
            extras={"limit_seconds": self.body_timeout_seconds},
        )

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
