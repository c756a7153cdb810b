"""dramatiq's Retries, made to enqueue a retry before its message is acknowledged, whatever it
takes.

When an attempt fails, dramatiq's Retries middleware enqueues the retry (a delayed copy of the
message) in an after-hook, and the worker then acknowledges the original. If that enqueue fails,
dramatiq logs the hook's failure and goes on to acknowledge the original anyway: the callback is
gone from the queue, never retried and never dead-lettered. The chaos test found it with a
connection error (Redis restarting just then: a task left ``received`` for good); a review found
it again with a Redis that is up but refuses writes (a full disk under the AOF, a failover, too
few replicas: a task left ``processing``).

Here the enqueue is tried again, with a capped backoff, for as long as Redis cannot be reached or
refuses writes (both end without anything done here: Redis restarts, the disk is freed, the
failover completes); only then does the worker go on to acknowledge. If the process dies
meanwhile, the original is still in its acknowledgement set and is redelivered (the workers
deduplicate by taskId). Any other error Redis answers (a script error, a key of the wrong type)
would never pass: after a few attempts the message is dead-lettered instead of acknowledged, where
``mjhook dlq`` shows it, with that error as the reason (:func:`retry_enqueue_error`), and can
replay it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.middleware import Retries
from redis.exceptions import MasterDownError, OutOfMemoryError, ReadOnlyError

from shared.errors import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a broker raises while it cannot be reached (dramatiq's own, or redis-py's from a script).
#: redis-py's BusyLoadingError (LOADING: Redis reading its data back at start) is one of these.
CONNECTION_ERRORS = (
    dramatiq.errors.BrokerConnectionError,
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
)
#: Error codes of a Redis that is up but refuses writes until an operator or a failover mends it:
#: the AOF or RDB file cannot be written, say on a full disk (MISCONF); this is a replica, reached
#: after a failover (READONLY); fewer replicas than min-replicas-to-write (NOREPLICAS); maxmemory
#: reached under noeviction (OOM); a replica cut off from its primary (MASTERDOWN); a script
#: running past its time limit (BUSY). Nothing is written when Redis answers one of these.
WRITES_REFUSED_CODES = frozenset({"MISCONF", "READONLY", "NOREPLICAS", "OOM", "MASTERDOWN", "BUSY"})
#: redis-py's classes for some of those codes (it strips the code from their message).
_WRITES_REFUSED_CLASSES = (ReadOnlyError, OutOfMemoryError, MasterDownError)
#: Attempts in all at an enqueue that Redis answers with any other error (a script error, WRONGTYPE,
#: NOPERM, an unknown command): waiting does not mend those, but a code missing from the list
#: above gets a few seconds before the message is dead-lettered.
OTHER_ERROR_ATTEMPTS = 5
#: Seconds between two attempts: doubling from the first, up to the cap.
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 5.0
#: The option in which a message dead-lettered here carries why its retry could not be queued
#: (``"ResponseError: WRONGTYPE ..."``), for the runtime's give-up reason. Only in memory: the dead
#: letter is the message as it was last enqueued.
RETRY_ENQUEUE_ERROR_OPTION = "retry_enqueue_error"


def refuses_writes(error: redis.ResponseError) -> bool:
    """Whether Redis answered ``error`` because it takes no writes for now (see
    :data:`WRITES_REFUSED_CODES`)."""
    if isinstance(error, _WRITES_REFUSED_CLASSES):
        return True
    # redis-py keeps the code of an error it has no class for at the start of its message.
    return str(error).split(" ", 1)[0] in WRITES_REFUSED_CODES


def retry_enqueue_error(message: dramatiq.MessageProxy) -> str | None:
    """Why :class:`DurableRetries` could not queue the retry of ``message`` and dead-lettered it
    (the error's class and message), or None when it did not."""
    error = message.options.get(RETRY_ENQUEUE_ERROR_OPTION)
    return error if isinstance(error, str) else None


class DurableRetries(Retries):
    """:class:`dramatiq.middleware.Retries` whose retry enqueue outlasts a broker outage or a
    Redis that refuses writes; a retry Redis will never take dead-letters the message."""

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
        patient = _PatientBroker(
            broker, self._sleep, not_before_ms=self._not_before_ms(broker, message, exception)
        )
        try:
            super().after_process_message(  # type: ignore[no-untyped-call]
                patient, message, result=result, exception=exception
            )
        except redis.RedisError as exc:
            # Raised, it would be logged by dramatiq and the message acknowledged: lost. Failed, the
            # worker dead-letters it, and the runtime records the task failed with this error as the
            # reason: the attempt's own error is not what a replay would run into.
            error = f"{type(exc).__name__}: {exc}"
            log.error(
                "the retry of message %s cannot be enqueued (%s); dead-lettering it",
                message.message_id,
                error,
            )
            message.options[RETRY_ENQUEUE_ERROR_OPTION] = error
            message.fail()

    def _not_before_ms(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, exception: BaseException | None
    ) -> int:
        """The shortest delay of the retry: the ``Retry-After`` the attempt was answered (a
        :class:`~shared.errors.TransientError`'s ``retry_after``), at most the actor's longest
        backoff (a provider asking for days would otherwise park the message that long); 0 when
        none was given. dramatiq's own backoff stands when it is longer."""
        retry_after = exception.retry_after if isinstance(exception, TransientError) else None
        if not retry_after or retry_after <= 0:
            return 0
        actor = broker.get_actor(message.actor_name)
        longest = message.options.get("max_backoff", actor.options.get("max_backoff", self.max_backoff))
        return int(min(retry_after * 1000, longest))


class _PatientBroker:
    """``broker`` for Retries' use: its ``enqueue`` tries again until the broker takes it, and
    delays the retry by at least ``not_before_ms``."""

    def __init__(
        self, broker: dramatiq.Broker, sleep: Callable[[float], None], *, not_before_ms: int = 0
    ) -> None:
        self._broker = broker
        self._sleep = sleep
        self._not_before_ms = not_before_ms

    def get_actor(self, actor_name: str) -> dramatiq.Actor[Any, Any]:
        return self._broker.get_actor(actor_name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        """The broker's ``enqueue``, tried again while Redis cannot be reached or refuses writes
        (:func:`patiently`)."""
        if self._not_before_ms > (delay or 0):
            log.info(
                "message %s: retried in %d ms, as the provider asked (Retry-After)",
                message.message_id,
                self._not_before_ms,
            )
            delay = self._not_before_ms
        return patiently(
            lambda: self._broker.enqueue(message, delay=delay),
            what=f"enqueue the retry of message {message.message_id}",
            sleep=self._sleep,
        )


def patiently(action: Callable[[], T], *, what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """``action()``, tried again with a capped backoff (:data:`FIRST_DELAY_S` doubling up to
    :data:`MAX_DELAY_S`) for as long as Redis cannot be reached or refuses writes; any other error
    Redis answers, or a reply that cannot be read, is raised at the :data:`OTHER_ERROR_ATTEMPTS`-th
    attempt (waiting would not mend it). ``what`` names the action in the log."""
    wait_s = FIRST_DELAY_S
    other_errors = 0
    while True:
        try:
            return action()
        except CONNECTION_ERRORS as exc:
            why = type(exc).__name__
        except redis.RedisError as exc:  # an error answer, or a reply that cannot be read (InvalidResponse)
            if not (isinstance(exc, redis.ResponseError) and refuses_writes(exc)):
                other_errors += 1
                if other_errors >= OTHER_ERROR_ATTEMPTS:
                    raise
            why = f"{type(exc).__name__}: {exc}"
        log.warning("cannot %s yet (%s); trying again in %.2f s", what, why, wait_s)
        sleep(wait_s)
        wait_s = min(wait_s * 2, MAX_DELAY_S)
