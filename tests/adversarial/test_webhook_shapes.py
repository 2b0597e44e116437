"""Property: a validly signed POST /slack/events never answers 5xx, whatever JSON it carries.

A signature proves the body came from Slack, not that it has the shape Slack
documents. The bodies are envelopes and events shaped almost like Slack's,
with any JSON value (lists for ids, numbers for timestamps, lone surrogates)
in place of a member one time in eight, and now and then any JSON value at
all; so examples reach every outcome: refused, ignored, and acted on. Nesting
deeper than the JSON parser's stack has two cases of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import PROBLEM_CONTENT_TYPE
from core.settings import Settings
from tests.workflows.world import slack_headers

SECRET = "shapes-signing-secret"

# Any text, lone surrogates included: `json.dumps` writes them as `\ud800`, which is valid JSON.
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`plausible` seven times in eight, any JSON value otherwise: most examples reach the code behind the check."""
    # Not one_of(plausible, plausible, plausible, json_values): Hypothesis merges the repeated branches.
    return st.integers(0, 7).flatmap(lambda roll: json_values if roll == 0 else plausible)


users = st.sampled_from(["UHUMAN", "UBOT", ""])
events = st.fixed_dictionaries(
    {
        "type": mostly(st.sampled_from(["app_mention", "message", "reaction_added", "user_change"])),
        "user": mostly(users),
        "channel": mostly(st.sampled_from(["C0000000002", "D0000000001"])),
        "ts": mostly(st.sampled_from(["1764057600.000100", "1764057600.000200"])),
        "text": mostly(st.sampled_from(["<@UBOT> status", "help", "hello", ""])),
    },
    optional={
        "bot_id": mostly(st.sampled_from(["", "B0001"])),
        "subtype": mostly(st.sampled_from(["", "bot_message", "message_changed"])),
        "channel_type": mostly(st.sampled_from(["im", "channel"])),
        "thread_ts": mostly(st.sampled_from(["1764057500.000100", ""])),
    },
)
authorizations = st.lists(
    mostly(st.fixed_dictionaries({}, optional={"user_id": mostly(users), "is_bot": mostly(st.booleans())})),
    max_size=2,
)
envelopes = st.fixed_dictionaries(
    {
        "type": mostly(st.sampled_from(["event_callback", "event_callback", "url_verification", "app_rate_limited"])),
        # Mostly fresh ids, so an example is not cut short as a redelivery of an earlier one.
        "event_id": mostly(st.uuids().map(lambda value: f"Ev{value.hex}")),
        "event": mostly(events),
    },
    optional={
        "authorizations": mostly(authorizations),
        "challenge": mostly(st.sampled_from(["3eZbrw1aBm2rZgRNFdxV2595E9CY"])),
    },
)


@pytest.fixture(scope="module")
def slack_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from main import create_app

    directory: Path = tmp_path_factory.mktemp("webhook-shapes")
    settings_ = Settings(
        _env_file=None,
        app_api_key="shapes-key",
        slack_signing_secret=SECRET,
        # Needed to answer, so needed to accept events; nothing listens there (answers fail, and are logged).
        slack_bot_token="xoxb-shapes-token",
        slack_base_url="http://127.0.0.1:9/api/",
        database_url=f"sqlite+aiosqlite:///{directory}/app.db",
        rate_limit_per_minute=1_000_000,
        log_level="CRITICAL",
    )
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        yield client


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=mostly(envelopes))
def test_a_signed_slack_body_of_any_shape_is_never_a_5xx(slack_client: TestClient, payload: Any) -> None:
    body = json.dumps(payload).encode()
    response = slack_client.post("/slack/events", content=body, headers=slack_headers(body, secret=SECRET))
    assert response.status_code < 500, (payload, response.text)
    if response.status_code != 200:
        # Only a body that is not an object, or a handshake without a token, is refused.
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert not isinstance(payload, dict) or payload.get("type") == "url_verification"


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"type": "event_callback", "event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    ids=["deep_array", "deep_event"],
)
def test_nesting_deeper_than_the_parser_is_a_400_not_a_500(slack_client: TestClient, body: bytes) -> None:
    response = slack_client.post("/slack/events", content=body, headers=slack_headers(body, secret=SECRET))
    assert response.status_code == 400
