"""Option types of the CLI beyond click's own."""

from __future__ import annotations

import math
from typing import Any

import click

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
