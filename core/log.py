"""Logging set-up: text or JSON lines, request ids, and secret scrubbing.

Secrets are `SecretStr` everywhere, so they should never reach a log record.
`SecretScrubber` is the second line of defence: it replaces any configured
secret value that still slips into a message (an upstream echoing a token,
a traceback holding a URL with credentials) before the record is written.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from core.context import current_request_id

REDACTED = "***"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


class SecretScrubber(logging.Filter):
    """Replace known secret values in the formatted message and traceback text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields given with `extra={...}` are kept."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in vars(record).items():
            if key not in self._standard and not key.startswith("_"):
                payload[key] = value
        if record.exc_info or record.exc_text:
            payload["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(payload, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(*, level: str, fmt: str, secrets: Iterable[str]) -> None:
    """Configure the root logger once per app start; idempotent across test apps."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_orchestrator", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._orchestrator = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.addFilter(SecretScrubber(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's own access log would duplicate our request line.
    logging.getLogger("uvicorn.access").disabled = True
    # Library chatter that would drown the request lines at INFO.
    for noisy in ("httpx", "httpx2", "httpcore", "alembic", "aiosqlite", "slack_sdk", "google_genai", "anthropic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
