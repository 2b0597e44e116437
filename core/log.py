"""Logging set-up: text or JSON lines, request ids, and secret scrubbing.

Secrets are `SecretStr` everywhere, so they should never reach a log record.
`SecretScrubbingFilter` is the second line of defence: it replaces every form
of a configured secret (core/secrets.py: raw, URL-encoded, base64 credentials)
that still slips into a record (an upstream echoing a token, a traceback
holding a URL with credentials) before the record is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from core.context import current_request_id
from core.secrets import SecretScrubber

#: Attributes every record has; the others were given with `extra={...}` (and JSON lines show them).
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


class SecretScrubbingFilter(logging.Filter):
    """Scrub the formatted message, the traceback text and the `extra` fields of each record.

    Every `extra` value, not only strings: the JSON formatter writes a dict or a list whole (a security review
    found a nested value would have gone out raw; no call passes one today)."""

    def __init__(self, scrubber: SecretScrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.scrubber:
            return True
        scrub = self.scrubber.scrub
        # Formatted once here, scrubbed, and kept formatted: the formatter does not format it again.
        record.msg, record.args = scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                setattr(record, key, self.scrubber.scrub_value(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields given with `extra={...}` are kept."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value
        if record.exc_info or record.exc_text:
            payload["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(payload, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

#: Line breaks and other control characters (tab excepted), including Unicode's line separators.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class TextFormatter(logging.Formatter):
    """One line per record: control characters in the message are escaped (`\\n`, `\\x00`).

    Messages carry what clients chose (a request path): unescaped, `GET /x%0a<fake line>` wrote a forged
    line of any level into the log (found by a black-box review). A traceback, added after the message,
    keeps its own lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        if _CONTROL.search(record.message):
            record.message = _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), record.message)
        return super().formatMessage(record)


def configure_logging(*, level: str, fmt: str, secrets: SecretScrubber | Iterable[str]) -> None:
    """Configure the root logger once per app start; idempotent across test apps.

    `secrets` is best the settings' `secret_scrubber`, the one errors and the ledger use; raw values
    (`secret_values()`) get every form derivable from a value alone, not the exact Basic pairs.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_orchestrator", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._orchestrator = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    scrubber = secrets if isinstance(secrets, SecretScrubber) else SecretScrubber(secrets)
    handler.addFilter(SecretScrubbingFilter(scrubber))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's own access log would duplicate our request line.
    logging.getLogger("uvicorn.access").disabled = True
    # Library chatter that would drown the request lines at INFO. APScheduler logs every run of the 30-second
    # stop sync; orchestrator.scheduler logs what matters (a stop planned, fired, taken over).
    noisy_loggers = ("httpx", "httpx2", "httpcore", "alembic", "aiosqlite", "slack_sdk", "google_genai", "anthropic")
    for noisy in (*noisy_loggers, "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
