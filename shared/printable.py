"""Outside text made safe to show on a terminal (the CLI's tables, the text log format).

Callback bodies, a callback's ``msg``, result URLs and the provider's messages come from the
internet. Printed as they are, an ESC in them starts a sequence the operator's terminal acts on
(clear the screen, set the window title, rewrite lines), a newline forges a log line, and the
bidirectional overrides make text display in another order than it reads."""

from __future__ import annotations

import re

#: C0 controls but tab, DEL, C1 controls, bidirectional overrides and isolates.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: The same, newline aside (a traceback's lines).
_UNPRINTABLE_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: What JSON encoders leave raw but a terminal acts on (they escape C0 controls themselves).
_UNPRINTABLE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` as text: each character a terminal would act on, newline included, shown as its
    escape (``\\x1b``, ``\\x0a``, ``\\u202e``) instead."""
    return _UNPRINTABLE.sub(_escape, str(value))


def printable_lines(value: str) -> str:
    """:func:`printable`, keeping newlines: for text whose every line after the first is marked
    as a continuation (the text log format indents them)."""
    return _UNPRINTABLE_IN_LINES.sub(_escape, value)


def printable_json(text: str) -> str:
    """JSON text with the characters a terminal acts on written as JSON escapes (``\\u009b``):
    the same document, safe to print. Those characters can only stand inside its strings."""
    return _UNPRINTABLE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def shortened(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
