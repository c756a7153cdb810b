"""Log set-up shared by every process, so ingress and workers log in one shape.

Two formats, chosen by ``MJHOOK_LOG_FORMAT``: ``json`` (one JSON object per line, for log
pipelines; the default) and ``text`` (one readable line, for a terminal; ``make up``). Both add
the ``taskId`` of the callback being handled, which the ingress resource and the worker bind with
:func:`task_context` / :func:`bind_task_id` for the duration of the work.

The JSON is made by a small stdlib :class:`logging.Formatter` rather than structlog or
python-json-logger: the lines that matter come through stdlib logging anyway (ours, gunicorn's,
dramatiq's), the task id is one context variable, and orjson is already a dependency.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import IO, Any, Literal

import orjson

from shared.clock import utc_iso
from shared.printable import printable_json, printable_lines

#: The text format: time, level, process, logger, task (when there is one), message.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s%(task)s: %(message)s"

LogFormat = Literal["json", "text"]

#: What the text format puts before each line of a record after its first.
CONTINUATION = "  "

#: The taskId of the callback this thread (or task copied from it) is handling, if any.
TASK_ID: ContextVar[str | None] = ContextVar("mjhook_task_id", default=None)

#: Attributes every LogRecord has: anything else on a record came from ``extra=`` and is logged.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "task",
    "taskId",
}


@contextmanager
def task_context(task_id: str) -> Iterator[None]:
    """Every line logged in the ``with`` block (in this thread, or in work submitted with a copy
    of its context) carries ``taskId``."""
    token = TASK_ID.set(task_id)
    try:
        yield
    finally:
        TASK_ID.reset(token)


def bind_task_id(task_id: str | None) -> Token[str | None]:
    """Set the current task id until :func:`unbind_task_id` (for hooks that begin and end a task
    in two calls, such as dramatiq's middleware)."""
    return TASK_ID.set(task_id)


def unbind_task_id(token: Token[str | None]) -> None:
    TASK_ID.reset(token)


def current_task_id(record: logging.LogRecord) -> str | None:
    """The record's own ``taskId`` (given with ``extra=``), else the context's."""
    given = record.__dict__.get("taskId")
    return str(given) if given else TASK_ID.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601 UTC, ms), ``level``, ``logger``, ``message``,
    ``process``, ``thread``, then ``taskId`` when known, any ``extra=`` fields, and ``exception``
    (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        task_id = current_task_id(record)
        if task_id:
            entry["taskId"] = task_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # orjson escapes C0 controls; DEL, C1 and bidi controls, which a terminal acts on too, as well.
        return printable_json(orjson.dumps(entry, default=repr).decode())


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`, with `` [taskId]`` after the logger name when there is a task. Meant for
    a terminal, and a record may quote outside text (a callback's ``msg``, a result URL, a
    provider's message, in the message or in an exception): every control but newline is shown
    as its escape (:mod:`shared.printable`), and every line after a record's first is indented by
    :data:`CONTINUATION`, so no quoted line can pass for a record of its own (those start at the
    line's start)."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        task_id = current_task_id(record)
        record.task = f" [{task_id}]" if task_id else ""
        return super().format(record).replace("\n", "\n" + CONTINUATION)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable_lines(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return printable_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return printable_lines(super().formatStack(stack_info))


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


#: Loggers that write each request's URL at INFO (httpx: "HTTP Request: GET <url>"): a result URL's
#: query string is the provider's signature for the file, and mjhook logs what it fetched itself.
QUIET_LOGGERS = ("httpx", "httpcore")


class QueueMessageNames(logging.Filter):
    """A queue message given as a log argument is logged as ``actor[message id]``, not with its
    arguments. dramatiq logs a message whose processing failed with ``%s``, which prints the whole
    callback: its ``promptJson`` holds the ``callBackUrl`` with our callback token, and the result
    URLs their signatures. Told by shape (``actor_name`` and ``message_id``), so that this module
    needs no dramatiq."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_queue_message(arg) for arg in record.args):
            record.args = tuple(_message_name(arg) if _is_queue_message(arg) else arg for arg in record.args)
        return True


def _is_queue_message(value: object) -> bool:
    return hasattr(value, "actor_name") and hasattr(value, "message_id") and hasattr(value, "args")


def _message_name(message: Any) -> str:
    return f"{message.actor_name}[{message.message_id}]"


def configure_logging(
    level: str = "INFO", log_format: LogFormat = "text", *, stream: IO[str] | None = None
) -> None:
    """Send every logger of this process through one handler on ``stream`` (default: stderr as it
    is now) in ``log_format``, replacing handlers set before (dramatiq's worker processes have one
    already, writing to the same stderr). A queue message in a record is named, not printed
    (:class:`QueueMessageNames`); httpx's request lines are left out (:data:`QUIET_LOGGERS`)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(QueueMessageNames())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
