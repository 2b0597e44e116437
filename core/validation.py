"""Request-model validators that reuse a skill's own checks, so bad input is refused before anything runs."""

from __future__ import annotations

import math
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


def json_depth(value: Any) -> int:
    """How deep `value` (parsed JSON) nests: 0 for a scalar, 1 for a flat list or object. Iterative, so a
    hostile document cannot exhaust the stack."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def has_non_finite_number(value: Any) -> bool:
    """Whether `value` (parsed JSON) holds NaN or an infinity. Python's json reads `NaN`, `Infinity` and `1e400`
    although JSON has no such numbers, and writes them back as those same invalid literals."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
