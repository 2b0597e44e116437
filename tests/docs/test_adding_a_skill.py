"""The worked example in docs/adding-a-skill.md is run, not only read: a contributor copies it, so it must keep
the project's rules (found by a black-box review: it retried a create's 5xx, so a copy could notify twice)."""

from __future__ import annotations

import re
import types
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import respx
from pydantic import SecretStr

from core.errors import UpstreamError, UpstreamUnavailable

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-skill.md"
URL = "https://ntfy.test/alerts"


@pytest.fixture(scope="module")
def ntfy() -> types.ModuleType:
    """The doc's `skills/ntfy.py`, loaded as a module."""
    text = DOC.read_text()
    section = text[text.index("## 2. The module: `skills/ntfy.py`") :]
    [code] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[:1]
    module = types.ModuleType("ntfy_example")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


@pytest.fixture
async def skill(ntfy):
    settings = SimpleNamespace(
        ntfy_token=SecretStr("tk_test"),
        ntfy_default_topic="alerts",
        ntfy_base_url="https://ntfy.test",
        http_timeout_seconds=2.0,
    )
    async with httpx.AsyncClient() as http:
        yield ntfy.NtfySkill(settings, http)


async def test_it_publishes_with_the_token(skill):
    with respx.mock() as upstream:
        route = upstream.post(URL).respond(200, json={"id": "abc"})
        published = await skill.publish(message="hi")
    assert published.message_id == "abc"
    assert route.calls.last.request.content == b"hi"
    assert route.calls.last.request.headers["authorization"] == "Bearer tk_test"


@pytest.mark.parametrize("status", [500, 503])
async def test_a_5xx_is_sent_once_and_says_the_outcome_is_unknown(skill, status):
    with respx.mock() as upstream:
        route = upstream.post(URL).mock(side_effect=[httpx.Response(status), httpx.Response(200, json={"id": "x"})])
        with pytest.raises(UpstreamError) as caught:
            await skill.publish(message="hi")
    assert route.call_count == 1
    assert caught.value.extras["outcome_unknown"] is True
    assert "check the topic 'alerts'" in caught.value.detail


async def test_a_read_timeout_is_sent_once(skill):
    with respx.mock() as upstream:
        route = upstream.post(URL).mock(side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json={"id": "x"})])
        with pytest.raises(UpstreamError) as caught:
            await skill.publish(message="hi")
    assert route.call_count == 1 and caught.value.extras["outcome_unknown"] is True


async def test_a_refused_connection_and_a_429_are_retried(skill):
    with respx.mock() as upstream:
        route = upstream.post(URL).mock(
            side_effect=[
                httpx.ConnectError("refused"),
                httpx.Response(429, headers={"Retry-After": "0"}),
                httpx.Response(200, json={"id": "abc"}),
            ]
        )
        published = await skill.publish(message="hi")
    assert route.call_count == 3 and published.message_id == "abc"


async def test_a_2xx_without_an_id_is_outcome_unknown(skill):
    with respx.mock() as upstream:
        upstream.post(URL).respond(200, text="<html>proxy</html>")
        with pytest.raises(UpstreamError) as caught:
            await skill.publish(message="hi")
    assert caught.value.extras["outcome_unknown"] is True


async def test_connection_refused_for_good_is_503_without_outcome_unknown(skill):
    with respx.mock() as upstream:
        upstream.post(URL).mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(UpstreamUnavailable) as caught:
            await skill.publish(message="hi")
    assert "outcome_unknown" not in caught.value.extras
