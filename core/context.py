"""Per-request context shared by logging, errors and the ledger."""

from __future__ import annotations

from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> object:
    return _request_id.set(value)


def reset_request_id(token: object) -> None:
    _request_id.reset(token)  # type: ignore[arg-type]


#: The `Idempotency-Key` whose first request is running in this context (`core.idempotency` sets it around the
#: action): the ledger writes it on every run the action starts, so a claim whose answer was never stored can
#: still name the run that answered it.
_idempotency_key: ContextVar[str | None] = ContextVar("idempotency_key", default=None)


def current_idempotency_key() -> str | None:
    return _idempotency_key.get()


def set_idempotency_key(value: str | None) -> object:
    return _idempotency_key.set(value)


def reset_idempotency_key(token: object) -> None:
    _idempotency_key.reset(token)  # type: ignore[arg-type]
