"""Gemini provider, built on google-genai."""

from __future__ import annotations

from core.registry import Integration

INTEGRATION = Integration(
    name="gemini",
    kind="llm",
    description="Google Gemini: short prompts (at or below ROUTER_WORD_THRESHOLD words).",
    required=("GEMINI_API_KEY",),
    optional=("GEMINI_MODEL", "GEMINI_BASE_URL"),
    operations=("generate",),
)
