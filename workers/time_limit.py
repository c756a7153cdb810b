"""A message's time limit ends when its actor returns, before any after-hook waits.

dramatiq's ``TimeLimit`` disarms a thread's deadline in its own after-hook, and after-hooks run in
reverse middleware order: those of the middleware behind it run first, while the deadline is
still armed. Two of ours wait there for as long as a broker outage lasts: ``DurableRetries``
(until Redis takes the retry) and the runtime's give-up. An outage outlasting what was left of
the time limit raised ``TimeLimitExceeded`` into that wait; it is a ``BaseException``, which
dramatiq's hook runner lets through, so the message was acknowledged without its retry (lost,
its task left ``processing``) and the worker thread died (dramatiq issue #445). Added last, this
middleware's after-hook runs first and ends the deadline."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, TimeLimit


class TimeLimitEnds(Middleware):
    """Ends the current thread's deadline of ``time_limit`` once its actor returned or the
    message was skipped. Add it after every other middleware."""

    def __init__(self, time_limit: TimeLimit) -> None:
        self._time_limit = time_limit

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._time_limit.manager.remove_timeout(threading.get_ident())  # type: ignore[no-untyped-call]

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._time_limit.manager.remove_timeout(threading.get_ident())  # type: ignore[no-untyped-call]


def end_time_limits_first(broker: dramatiq.Broker) -> None:
    """Add :class:`TimeLimitEnds` for ``broker``'s ``TimeLimit`` (none: nothing to do), last."""
    for middleware in broker.middleware:
        if isinstance(middleware, TimeLimit):
            broker.add_middleware(TimeLimitEnds(middleware))
            return
