"""Outside text for a terminal: controls shown as escapes, never sent."""

from __future__ import annotations

import json

import pytest

from shared.printable import printable, printable_json, printable_lines


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


def test_printable_json_escapes_what_json_encoders_leave_raw_and_stays_the_same_document() -> None:
    document = {"msg": "del\x7f c1\x9b2J rlo\u202e esc\x1b", "ok": "风景 🌄"}
    text = printable_json(json.dumps(document, ensure_ascii=False))
    assert json.loads(text) == document
    assert not {"\x7f", "\x9b", "\u202e", "\x1b"} & set(text)
    assert "风景 🌄" in text
