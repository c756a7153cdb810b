"""Every log line of a message's processing carries its callback's ``taskId``."""

from __future__ import annotations

import threading
from contextvars import Token
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from shared.logs import bind_task_id, unbind_task_id


class TaskLogContext(Middleware):
    """Binds the message's ``taskId`` (see :mod:`shared.logs`) from its first before-hook to its
    last after-hook, so our lines and dramatiq's (its retry and error lines) carry it. Put it
    first among the middleware: before-hooks run in order, after-hooks in reverse."""

    def __init__(self) -> None:
        # dramatiq runs a message's hooks and actor in one worker thread, one message at a time.
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._local.token = bind_task_id(_task_id(message.args))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        token: Token[str | None] | None = getattr(self._local, "token", None)
        if token is not None:
            self._local.token = None
            unbind_task_id(token)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.after_process_message(broker, message)


def _task_id(args: tuple[Any, ...]) -> str | None:
    """The ``taskId`` of a callback message (``Callback.to_message``), None for other messages."""
    payload = args[0] if args else None
    task_id = payload.get("taskId") if isinstance(payload, dict) else None
    return task_id if isinstance(task_id, str) else None
