"""The log formats and the taskId carried by every line of a task."""

from __future__ import annotations

import contextvars
import io
import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import orjson
import pytest
from dramatiq.brokers.stub import StubBroker

from shared.logs import (
    QUIET_LOGGERS,
    JsonFormatter,
    LogFormat,
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
    """configure_logging replaces the root logger's handlers and quiets httpx: put pytest's
    logging back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, quiet_level in quiet.items():
        logging.getLogger(name).setLevel(quiet_level)


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


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_failed_queue_message_is_logged_by_name_without_its_callback(log_format: LogFormat) -> None:
    """dramatiq logs a message whose processing failed with its arguments: the callback, whose
    promptJson carries the callBackUrl with our token (and result URLs their signatures)."""
    out = io.StringIO()
    configure_logging("INFO", log_format, stream=out)
    broker = StubBroker()
    broker.emit_after("process_boot")

    def fails(message: dict[str, str]) -> None:
        raise RuntimeError("the store is down")

    actor = dramatiq.actor(fails, actor_name="process_callback", max_retries=0, broker=broker)
    # Given a queued callback carrying our token
    sent = actor.send({"taskId": "t1", "promptJson": '{"callBackUrl": "https://me/cb?token=S3CRET"}'})
    # When a real dramatiq worker fails processing it
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        broker.join(actor.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    # Then the log names the message and the error, and holds nothing of its arguments
    logged = out.getvalue()
    assert f"process_callback[{sent.message_id}]" in logged
    assert "the store is down" in logged
    assert "S3CRET" not in logged
    assert "callBackUrl" not in logged


@pytest.mark.usefixtures("root_logging")
def test_httpx_request_lines_are_not_logged_at_info() -> None:
    """httpx logs each request's URL at INFO: a result URL's query is its signature."""
    out = io.StringIO()
    configure_logging("INFO", "text", stream=out)
    logging.getLogger("httpx").info('HTTP Request: GET http://127.0.0.1/0.png?X-Amz-Signature=abc "200 OK"')
    logging.getLogger("httpx").warning("a warning still shows")
    assert "X-Amz-Signature" not in out.getvalue()
    assert "a warning still shows" in out.getvalue()
