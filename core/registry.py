"""The integration registry: what `/health` and `/skills` read.

Each skill and LLM provider declares an `Integration`: its name, what it
does, the settings it needs and its operations. An integration whose settings
are missing is reported "not configured"; it never stops start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.errors import NotConfigured
from core.settings import Settings


def _missing_fields(settings: Settings, names: Sequence[str]) -> list[str]:
    return [name for name in names if getattr(settings, name.lower(), None) in (None, "", [])]


@dataclass(frozen=True)
class Integration:
    """A skill (acts on an account), a provider (generates text), or an inbound webhook (receives messages).

    `required` lists environment variable names whose settings must be set.
    `extra_check` returns further missing names for rules that are not a
    plain "must be set" (for example "SMTP_FROM or SMTP_USER").
    `advice` returns sentences for settings it works without but may need (behind a proxy, say): shown by
    GET /health, never a reason to refuse.
    """

    name: str
    kind: Literal["skill", "llm", "inbound"]
    description: str
    required: tuple[str, ...]
    operations: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    extra_check: Callable[[Settings], list[str]] | None = field(default=None, compare=False)
    advice: Callable[[Settings], list[str]] | None = field(default=None, compare=False)

    def missing(self, settings: Settings) -> list[str]:
        missing = _missing_fields(settings, self.required)
        if self.extra_check is not None:
            missing += [name for name in self.extra_check(settings) if name not in missing]
        return missing

    def advise(self, settings: Settings) -> list[str]:
        return self.advice(settings) if self.advice is not None else []

    def configured(self, settings: Settings) -> bool:
        return not self.missing(settings)

    def require(self, settings: Settings) -> None:
        """Raise the 503 `NotConfigured` problem when settings are missing."""
        missing = self.missing(settings)
        if missing:
            raise NotConfigured(self.name, missing)


class Registry:
    def __init__(self, integrations: Iterable[Integration]) -> None:
        self._by_name: dict[str, Integration] = {}
        for integration in integrations:
            if integration.name in self._by_name:
                raise ValueError(f"integration {integration.name!r} registered twice")
            self._by_name[integration.name] = integration

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())

    def get(self, name: str) -> Integration:
        return self._by_name[name]

    def of_kind(self, kind: str) -> list[Integration]:
        return [integration for integration in self if integration.kind == kind]
