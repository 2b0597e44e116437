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
