"""How the CLI prints outside strings in its tables."""

from __future__ import annotations

import io

from rich.console import Console

from cli.output import printable_text


def test_printable_text_is_neither_markup_nor_controls_on_a_real_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=80)
    console.print(printable_text("[red]x[/red]\x1b[2J"))
    assert out.getvalue() == "[red]x[/red]\\x1b[2J\n"
