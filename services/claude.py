"""Claude provider, built on anthropic's AsyncAnthropic."""

from __future__ import annotations

from core.registry import Integration

INTEGRATION = Integration(
    name="claude",
    kind="llm",
    description="Anthropic Claude: long prompts (above ROUTER_WORD_THRESHOLD words).",
    required=("ANTHROPIC_API_KEY",),
    optional=("CLAUDE_MODEL", "ANTHROPIC_BASE_URL"),
    operations=("generate",),
)
