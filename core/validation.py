"""Request-model validators that reuse a skill's own checks, so bad input is refused before anything runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_core import PydanticCustomError

from core.errors import InvalidInput


def skill_check(check: Callable[[Any], object], value: Any) -> Any:
    """Run a skill's validation on a request field; its InvalidInput becomes this field's 422 entry.

    Run in the request model, the check answers before the "not configured" check and before a ledger run is
    opened; the skill still runs it again on its own inputs (commands and the briefing call skills directly).
    """
    try:
        check(value)
    except InvalidInput as exc:
        # A custom error keeps the skill's sentence as the message, without pydantic's "Value error, " prefix.
        raise PydanticCustomError("invalid_value", "{reason}", {"reason": exc.detail}) from None
    return value
