"""Option types of the CLI beyond click's own."""

from __future__ import annotations

import math
from typing import Any

import click

from shared.printable import printable

#: The longest time any option may ask for, seconds (~116 days; the simulator keeps media 14 days
#: by default): far past a useful one, and within what a timestamp or a sleep can hold once added
#: to the clock.
MAX_SECONDS = 1e7


class FiniteFloatRange(click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``inf`` and ``nan``: ``nan`` passes its bounds
    (every comparison with it is false) and ``inf`` passes an open-ended one, and either would
    fail later as a traceback (a sleep, a rounding, a timestamp out of range)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def seconds(*, min: float = 0.0, min_open: bool = False, max: float = MAX_SECONDS) -> FiniteFloatRange:
    """A duration option's type: finite, from ``min`` to ``max`` seconds."""
    return FiniteFloatRange(min=min, min_open=min_open, max=max)


#: The largest ``--limit`` a listing takes: far past any list, and one Redis can still take as a
#: range's end (a signed 64-bit integer); a larger number is a usage error, not a Redis refusal.
MAX_LIMIT = 2**62
#: A ``--limit`` option's type: a count of entries, from 1 to :data:`MAX_LIMIT`.
LIMIT = click.IntRange(min=1, max=MAX_LIMIT)


class Utf8Text(click.types.StringParamType):
    """Text that is valid Unicode, to be sent on (a prompt, a taskId, a URL). An argument whose
    bytes are not UTF-8 reaches Python with lone surrogates in it (``b"caf\\xe9"`` is
    ``"caf\\udce9"``), which no JSON body can carry: refused here as a usage error, its bytes
    shown escaped (``caf\\xe9``), rather than failing later as a traceback."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"'{printable(escaped_bytes(text))}' is not UTF-8 text.", param, ctx)
        return text


def escaped_bytes(text: str) -> str:
    """``text`` as it came from the command line or a file name (bytes that were not UTF-8
    decoded as lone surrogates, as Python does), with those bytes written as escapes: ``caf\\xe9``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no byte decodes to: shown as one (\\ud800)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


#: Text sent on as it is: see :class:`Utf8Text`.
UTF8_TEXT = Utf8Text()
