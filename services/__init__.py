"""LLM providers and the AIRouter. Adding a provider: a module with an INTEGRATION, one line below."""

from core.registry import Integration
from services import claude, gemini

PROVIDERS: tuple[Integration, ...] = (
    gemini.INTEGRATION,
    claude.INTEGRATION,
)
