"""dramatiq's Retries, made to enqueue a retry before its message is acknowledged, whatever it
takes.

When an attempt fails, dramatiq's Retries middleware enqueues the retry (a delayed copy of the
message) in an after-hook, and the worker then acknowledges the original. If that enqueue hits a
connection error (Redis restarting just then), dramatiq logs the hook's failure and goes on to
acknowledge the original anyway (retrying the acknowledgement until Redis is back): the callback
is gone from the queue, never retried and never dead-lettered. The chaos test found it (a task
left ``received`` for good).

Here the enqueue is tried again, with a capped backoff, until the broker takes it; only then
does the worker go on to acknowledge. If the process dies meanwhile, the original is still in
its acknowledgement set and is redelivered (the workers deduplicate by taskId)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import Retries

log = logging.getLogger(__name__)

#: What a broker raises while it cannot be reached (dramatiq's own, or redis-py's from a script).
CONNECTION_ERRORS = (
    dramatiq.errors.BrokerConnectionError,
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
)
#: Seconds between two attempts: doubling from the first, up to the cap.
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 5.0


class DurableRetries(Retries):
    """:class:`dramatiq.middleware.Retries` whose retry enqueue outlasts a broker outage."""

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep, **options: Any) -> None:
        super().__init__(**options)
        self._sleep = sleep

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        super().after_process_message(  # type: ignore[no-untyped-call]
            _PatientBroker(broker, self._sleep), message, result=result, exception=exception
        )


class _PatientBroker:
    """``broker`` for Retries' use: its ``enqueue`` tries again until the broker takes it."""

    def __init__(self, broker: dramatiq.Broker, sleep: Callable[[float], None]) -> None:
        self._broker = broker
        self._sleep = sleep

    def get_actor(self, actor_name: str) -> dramatiq.Actor[Any, Any]:
        return self._broker.get_actor(actor_name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        wait_s = FIRST_DELAY_S
        while True:
            try:
                return self._broker.enqueue(message, delay=delay)
            except CONNECTION_ERRORS as exc:
                log.warning(
                    "cannot enqueue the retry of message %s yet (%s); trying again in %.2f s",
                    message.message_id,
                    type(exc).__name__,
                    wait_s,
                )
                self._sleep(wait_s)
                wait_s = min(wait_s * 2, MAX_DELAY_S)
