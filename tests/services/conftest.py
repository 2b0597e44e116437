"""Fixtures for the LLM provider and router tests: the three fakes and a router builder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from core.settings import Settings
from services.ai_router import AIRouter, build_ai_router
from tests.fakes.llm import FakeAnthropic, FakeGemini, FakeOpenAI

GEMINI_KEY = "test-gemini-key-0001"
ANTHROPIC_KEY = "test-anthropic-key-0001"
LOCAL_KEY = "test-local-key-0001"


@dataclass
class Fakes:
    claude: FakeAnthropic
    gemini: FakeGemini
    local: FakeOpenAI


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with FakeAnthropic() as claude, FakeGemini() as gemini, FakeOpenAI() as local:
        yield Fakes(claude=claude, gemini=gemini, local=local)


@pytest.fixture
def llm_settings(make_settings: Callable[..., Settings], fakes: Fakes) -> Callable[..., Settings]:
    """Settings with Gemini and Claude pointed at the fakes; `local=True` adds the local model."""

    def _make(*, local: bool = False, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "gemini_api_key": GEMINI_KEY,
            "anthropic_api_key": ANTHROPIC_KEY,
            "gemini_base_url": fakes.gemini.url,
            "anthropic_base_url": fakes.claude.url,
            "llm_timeout_seconds": 2.0,
            "llm_max_attempts": 2,
        }
        if local:
            values |= {"local_llm_base_url": fakes.local.base_url, "local_llm_model": "llama3.2"}
        values |= overrides
        return make_settings(**values)

    return _make


MakeRouter = Callable[..., Awaitable[AIRouter]]


@pytest.fixture
async def make_router(llm_settings: Callable[..., Settings]) -> AsyncIterator[MakeRouter]:
    """`await make_router(transport="httpx", gemini_api_key=None)`: a real router on the fakes, closed after."""
    async with AsyncExitStack() as stack:

        async def _make(*, transport: str = "aiohttp", max_retry_wait_seconds: float = 2.0, **overrides: Any):
            return await build_ai_router(
                llm_settings(**overrides),
                stack,
                transport=transport,  # type: ignore[arg-type]
                max_retry_wait_seconds=max_retry_wait_seconds,
            )

        yield _make
