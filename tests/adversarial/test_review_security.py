"""Security review: each test here failed on the code before the fix it names."""

from __future__ import annotations

import time

from workflows.commands import strip_mentions


def test_slack_mention_stripping_is_linear() -> None:
    """`<@U|<@U|...` (40,000 characters, Slack's longest message) held the event loop for about 2 s: for each
    `<@U|`, `[^>]*` ran to the end of the text before giving up, quadratic in the length. A workspace member
    posting through the API (whose `<` Slack does not escape) could stall every request with a few DMs."""
    text = "<@U|" * 10_000
    started = time.perf_counter()
    strip_mentions(text)
    assert time.perf_counter() - started < 0.2
    assert strip_mentions("<@U12AB|ann>: status") == "status"
    assert strip_mentions("<@U12AB> <@U9|x|y> start") == "start"
