"""Chat grammar review: what people type on a phone or in Slack. Each test here failed on the code before its fix."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skills.slack import unescape_text
from tests.workflows.test_commands import _Recording as Recording
from workflows import commands
from workflows.commands import Command, parse_command, strip_mentions

# Unicode's spaces (category Zs) other than the ASCII one: a chat app shows each of them as a space.
UNICODE_SPACES = ["\u00a0", "\u1680", *(chr(c) for c in range(0x2000, 0x200B)), "\u202f", "\u205f", "\u3000"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Slack sends a no-break space between words of a copied or edited message, phones after a number.
        ("start\u00a0writing for 25 min", Command("start", "writing", 25)),
        ("start writing\u00a0for\u00a025\u00a0min", Command("start", "writing", 25)),
        ("start writing for 25\u00a0min", Command("start", "writing", 25)),
        ("Start deep work for 1\u00a0hour.", Command("start", "deep work", 60)),
        ("start\u00a0for\u00a030\u00a0min", Command("start", None, 30)),
        ("start\u00a02h", Command("start", None, 120)),
        ("start\u202fwriting for 5 min", Command("start", "writing", 5)),  # the narrow no-break space
        ("start\u2009writing for 5\u2009min", Command("start", "writing", 5)),  # the thin space
        ("start\u3000writing for 5 min", Command("start", "writing", 5)),  # the ideographic space
        ("start \u00a0 deep\u00a0work \u00a0for\u00a0 25 \u00a0min", Command("start", "deep work", 25)),
    ],
)
def test_a_timed_start_with_unicode_spaces_is_the_same_command(text, expected):
    """A no-break space between the words of a timed start made it chat ("start\\u00a0writing for 25 min" got an LLM
    reply instead of a timer): only the ASCII space and the tab were blanks, though a chat app shows both alike."""
    assert parse_command(text) == expected


def test_a_slack_mention_followed_by_unicode_spaces_starts_the_timer():
    slack_text = "<@U012AB3CD>\u00a0start\u00a0deep work for 1\u00a0hour"
    assert parse_command(unescape_text(strip_mentions(slack_text))) == Command("start", "deep work", 60)


@pytest.mark.parametrize(
    "text",
    [
        # Sentences stay sentences, whatever their spaces are.
        "I\u00a0will start the report tomorrow",
        "I will start\u00a0the report tomorrow",
        "don't\u00a0stop me now",
        "don\u2019t stop\u00a0me now",
        "can\u00a0you start thinking about X",
        "start\u00a0thinking about X",
        "start\u00a0writing",  # no duration
        "start\u00a0writing\u00a030\u00a0min",  # a task needs "for"
        "Start the oven\u00a0and wait 10\u00a0min",
        "stop\u00a0the\u00a0timer",
        "status\u00a0report please",
        "please\u00a0stop",
        "start\u00a0writing for 30\u00a0minutes please",
        # A line break is still one, next to a no-break space.
        "start writing\u00a0\nfor 20 min",
        "Start the oven\u00a0\u2028I will wait for 20 min",
        # Keywords stay ASCII.
        "\u017ftart\u00a0for 30 min",
        "start writing for\u00a0\u0663\u0660 min",
    ],
)
def test_unicode_spaces_make_no_sentence_a_command(text):
    assert parse_command(text) is None


SAMPLES = [
    "start writing for 25 min",
    "start deep work for 1 hour.",
    "start for 30 mins",
    "start 2 h",
    "start plan for the week for 20 min",
    "stop",
    "I will start the report tomorrow",
    "don't stop me now",
    "can you start thinking about X",
    "start writing 25 min",
    "Start the oven and wait 10 min",
    "status report please",
]


@given(st.sampled_from(SAMPLES), st.data())
def test_a_message_parses_the_same_whatever_spaces_it_is_typed_with(sample, data):
    """Two messages a chat app shows alike are the same command, or both chat."""
    spaced = re.sub(" ", lambda _: data.draw(st.sampled_from([" ", *UNICODE_SPACES])), sample)
    assert parse_command(spaced) == parse_command(sample)


def test_a_run_of_unicode_spaces_is_collapsed_before_the_timed_start_pattern(monkeypatch):
    """The pattern backtracks in quadratic time against a long run of blanks; runs of these spaces are collapsed
    like runs of ASCII ones, so it never sees one."""
    recording = Recording(commands._TIMED_START)
    monkeypatch.setattr(commands, "_TIMED_START", recording)
    assert parse_command("start" + "\u00a0" * 40_000 + "x") is None
    assert parse_command("start\u00a0\u2009 x \u202f for 5 min") == Command("start", "x", 5)
    assert all(not re.search(r"\s\s", seen) and "\u00a0" not in seen for seen in recording.seen)
