"""How the commands print: JSON for scripts on stdout, rich tables for people; outside strings
through :func:`shared.printable.printable`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson
from rich.text import Text

from cli.params import LIMIT
from shared.printable import printable, printable_json

Command = TypeVar("Command", bound=Callable[..., Any])


#: The exit code when the operator interrupts (Ctrl-C), as a shell gives a command SIGINT ended.
EXIT_INTERRUPTED = 130


def list_options(default_limit: int) -> Callable[[Command], Command]:
    """The options of a command listing the newest entries first: ``--json`` (one JSON object)
    and ``--limit`` (at most this many, ``default_limit`` unless told)."""

    def decorate(command: Command) -> Command:
        limited = click.option(
            "--limit",
            type=LIMIT,
            default=default_limit,
            show_default=True,
            help="Show at most this many, the most recent first.",
        )(command)
        return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(limited)

    return decorate


def printable_text(value: object, style: str = "") -> Text:
    """:func:`shared.printable.printable` as a rich :class:`Text`: never read as markup either
    (``[bold]``)."""
    return Text(printable(value), style=style)


def echo_json(document: Any) -> None:
    """One JSON document on stdout, on one line, with nothing in it a terminal would act on."""
    click.echo(printable_json(orjson.dumps(document).decode()))


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
