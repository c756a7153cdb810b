"""How the commands print: JSON for scripts on stdout, rich tables for people."""

from __future__ import annotations

import re
from typing import Any

import click
import orjson
from rich.text import Text

#: What a terminal acts on instead of showing: C0 controls but tab (ESC starts sequences that clear
#: the screen, set the window title, rewrite lines), DEL, C1 controls, and the bidirectional
#: overrides and isolates that make text display in another order than it reads.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` as text to print on a terminal: each character a terminal would act on is shown
    as its escape (``\\x1b``, ``\\u202e``) instead. For every string that comes from outside:
    callbacks, queue messages, manifests, the provider."""
    return _UNPRINTABLE.sub(_escape, str(value))


def printable_text(value: object, style: str = "") -> Text:
    """:func:`printable` as a rich :class:`Text`: never read as markup either (``[bold]``)."""
    return Text(printable(value), style=style)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def echo_json(document: Any) -> None:
    """One JSON document on stdout, on one line."""
    click.echo(orjson.dumps(document).decode())


def format_age(seconds: float | None) -> str:
    """``95.2`` -> ``1m35s``; ``None`` -> ``-``."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"
