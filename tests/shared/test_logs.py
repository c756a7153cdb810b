"""The log formats and the taskId carried by every line of a task."""

from __future__ import annotations

import contextvars
import io
import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from shared.logs import (
    JsonFormatter,
    TextFormatter,
    bind_task_id,
    configure_logging,
    task_context,
    unbind_task_id,
)


def record(message: str = "task %s stored", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("workers.pipeline", logging.INFO, __file__, 1, message, args or ("t1",), None)
    made.__dict__.update(extra)
    return made


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_json_line_has_the_fixed_fields_and_no_task_outside_a_task() -> None:
    line = orjson.loads(JsonFormatter().format(record()))
    assert set(line) == {"time", "level", "logger", "message", "process", "thread"}
    assert line["message"] == "task t1 stored"
    assert line["level"] == "INFO"
    assert line["logger"] == "workers.pipeline"
    assert line["time"].endswith("Z")


def test_inside_a_task_context_every_line_carries_the_task_id() -> None:
    with task_context("mj_task_1"):
        line = orjson.loads(JsonFormatter().format(record()))
    assert line["taskId"] == "mj_task_1"
    assert "taskId" not in orjson.loads(JsonFormatter().format(record()))


def test_bind_and_unbind_nest() -> None:
    outer = bind_task_id("a")
    inner = bind_task_id("b")
    assert orjson.loads(JsonFormatter().format(record()))["taskId"] == "b"
    unbind_task_id(inner)
    assert orjson.loads(JsonFormatter().format(record()))["taskId"] == "a"
    unbind_task_id(outer)
    assert "taskId" not in orjson.loads(JsonFormatter().format(record()))


def test_extra_fields_and_exceptions_are_kept() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info())
    failing.__dict__.update({"files": 3, "taskId": "given"})
    line = orjson.loads(JsonFormatter().format(failing))
    assert line["files"] == 3
    assert line["taskId"] == "given"
    assert "ValueError: boom" in line["exception"]


def test_the_text_format_shows_the_task_after_the_logger() -> None:
    with task_context("mj_task_1"):
        text = TextFormatter().format(record())
    assert "workers.pipeline [mj_task_1]: task t1 stored" in text
    assert "workers.pipeline: task t1 stored" in TextFormatter().format(record())


def test_a_text_record_quoting_a_fake_record_cannot_pass_for_one() -> None:
    # Given a message quoting a forged callback's msg: a fake log line and a terminal sequence
    forged = "oops\n2026-11-25 00:00:00 INFO [1] ingress: all good\x1b[2J"
    text = TextFormatter().format(record("task failed: %s", forged))
    first, second = text.split("\n")
    assert first.endswith("task failed: oops")
    # the quoted line is a continuation of the record, with its controls escaped
    assert second == "  2026-11-25 00:00:00 INFO [1] ingress: all good\\x1b[2J"


def test_a_text_traceback_is_indented_and_escapes_the_controls_it_quotes() -> None:
    try:
        raise ValueError("bad url http://x/\x1b]0;pwned\x07\n2026-11-25 00:00:00 INFO forged")
    except ValueError:
        failed = record("download of %s failed", exc_info=sys.exc_info())
    text = TextFormatter().format(failed)
    lines = text.splitlines()
    assert lines[0].endswith("download of t1 failed")
    assert lines[1] == "  Traceback (most recent call last):"
    assert lines[-2] == "  ValueError: bad url http://x/\\x1b]0;pwned\\x07"
    assert lines[-1] == "  2026-11-25 00:00:00 INFO forged"
    assert all(line.startswith("  ") for line in lines[1:])
    assert not {"\x1b", "\x07"} & set(text)


def test_a_json_line_writes_every_terminal_control_as_an_escape() -> None:
    line = JsonFormatter().format(record("task failed: %s", "esc\x1b del\x7f csi\x9b rlo\u202e"))
    assert orjson.loads(line)["message"] == "task failed: esc\x1b del\x7f csi\x9b rlo\u202e"
    assert not {"\x1b", "\x7f", "\x9b", "\u202e"} & set(line)


def test_downloads_submitted_with_a_copy_of_the_context_log_with_the_task_id() -> None:
    """Threads of a pool do not inherit context variables: the pipeline submits each download
    with ``copy_context().run``."""
    formatter = JsonFormatter()
    with ThreadPoolExecutor(max_workers=1) as pool, task_context("mj_task_1"):
        copied = pool.submit(contextvars.copy_context().run, formatter.format, record()).result()
        bare = pool.submit(formatter.format, record()).result()
    assert orjson.loads(copied)["taskId"] == "mj_task_1"
    assert "taskId" not in orjson.loads(bare)


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_replaces_earlier_handlers_with_one_in_the_chosen_format() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "text", stream=first)
    configure_logging("INFO", "json", stream=second)
    with task_context("mj_task_1"):
        logging.getLogger("ingress.resources").info("callback %s queued", "mj_task_1")
    logging.getLogger("ingress.resources").debug("not at INFO")
    assert first.getvalue() == ""
    [line] = second.getvalue().splitlines()
    assert orjson.loads(line)["taskId"] == "mj_task_1"
