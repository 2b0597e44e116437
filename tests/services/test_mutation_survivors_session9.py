"""Tests for mutants of the ninth session's services changes that survived the existing suite.

Each test names the mutant it kills; the commit that adds this file lists every mutant tried.
"""

from __future__ import annotations

from tests.fakes.llm import OPENAI_PATH, openai_completion
from tests.fakes.server import Reply
from tests.services.conftest import ANTHROPIC_KEY


async def test_a_stop_reason_echoing_a_configured_key_is_scrubbed_like_the_answer(make_router, fakes):
    """Kills passing the provider's stop reason through unscrubbed (services/ai_router.py `_generation`): it is
    upstream text, repeated in the /ai-process answer, the ledger and the briefing's Slack note, and a gateway that
    echoes the request's headers puts the key wherever it writes."""
    body = openai_completion("half a pl")
    body["choices"][0]["finish_reason"] = f"length key={ANTHROPIC_KEY}"
    fakes.local.queue("POST", OPENAI_PATH, Reply(200, json=body))
    router = await make_router(local=True)

    generation = await router.generate(text="plan my day", provider="local", max_tokens=5)

    assert generation.stop_reason == "length key=***"
    assert ANTHROPIC_KEY not in generation.model_dump_json()


async def test_a_stop_reason_spread_over_lines_is_given_on_one(make_router, fakes):
    """Kills keeping the vendor's whitespace (`stop_reason_of`): the reason is repeated inside one line of a chat
    reply and of the briefing's Slack note, where a newline from upstream would break the line in two."""
    body = openai_completion("half a pl")
    body["choices"][0]["finish_reason"] = "length\n\t  (max_tokens)  "
    fakes.local.queue("POST", OPENAI_PATH, Reply(200, json=body))
    router = await make_router(local=True)

    generation = await router.generate(text="plan my day", provider="local", max_tokens=5)

    assert generation.stop_reason == "length (max_tokens)"
