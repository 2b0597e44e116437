"""LLM providers and the AIRouter. Adding a provider: a module with an INTEGRATION, one line below."""

from core.registry import Integration
from services import claude, gemini, local_llm
from services.ai_router import AIRouter, open_ai_router

PROVIDERS: tuple[Integration, ...] = (
    gemini.INTEGRATION,
    claude.INTEGRATION,
    local_llm.INTEGRATION,
)

__all__ = ["PROVIDERS", "AIRouter", "open_ai_router"]
