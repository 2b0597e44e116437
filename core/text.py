"""Text made safe to send as a chat message."""

from __future__ import annotations

import re

# Everything XML 1.0 forbids (its `Char` production): C0 controls but tab, LF and CR, lone surrogates,
# U+FFFE and U+FFFF. Escaping does not help (`&#1;` is not well-formed either): Twilio cannot parse the
# TwiML and the sender gets nothing, so these characters are dropped. No chat message needs them.
_NOT_XML_CHAR = re.compile(r"[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 does not allow; a message body never needs them."""
    return _NOT_XML_CHAR.sub("", text)


def cut_between_words(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters (plus " …") at a space, never inside a word.

    For upstream text cut before the secret scrubber sees it: a key echoed across a cut in the middle of a
    word left a prefix no scrubber recognises (found by a code review). Cut at a space, the word holding it
    goes whole.
    """
    if len(text) <= limit:
        return text
    head = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[: limit + 1] else ""
    return (head[:limit].rstrip() + " …").lstrip()
