"""Outside text for a terminal: controls shown as escapes, never sent."""

from __future__ import annotations

import pytest

from shared.printable import printable, printable_lines


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("clear\x1b[2Jscreen", "clear\\x1b[2Jscreen"),  # CSI: erase the screen
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: set the window title, ended by BEL
        ("line\roverwritten", "line\\x0doverwritten"),  # CR: rewrite the line
        ("two\nlines", "two\\x0alines"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("c1\x9b2J", "c1\\x9b2J"),  # the one-byte CSI of C1
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("iso\u2066late\u2069", "iso\\u2066late\\u2069"),
    ],
)
def test_terminal_controls_are_shown_as_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@pytest.mark.parametrize("text", ["plain ascii", "tab\tstays", "风景 一幅 🌄", "[bold]not markup[/bold]", ""])
def test_printable_text_is_left_as_it_is(text: str) -> None:
    assert printable(text) == text


def test_printable_lines_keeps_newlines_and_escapes_the_rest() -> None:
    assert printable_lines("Traceback\n  line\x1b[2J\r\n") == "Traceback\n  line\\x1b[2J\\x0d\n"
