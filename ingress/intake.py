"""What happens to a callback once it passed the checks, and to one that did not."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import dramatiq
import orjson
import redis

from shared import keys
from shared.callback import Callback
from shared.clock import utc_iso
from shared.errors import QueueUnavailable
from shared.queue import enqueue_callback
from shared.taskstate import TaskStore

log = logging.getLogger(__name__)


class CallbackIntake:
    """Records a valid callback as received and puts it on the queue."""

    def __init__(self, *, broker: dramatiq.Broker, tasks: TaskStore) -> None:
        self._broker = broker
        self._tasks = tasks

    def accept(self, callback: Callback) -> None:
        """Durably queue ``callback``; raise :class:`QueueUnavailable` when that is not possible."""
        try:
            self._tasks.mark_received(callback.task_id, callback.received_at)
        except (redis.RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot record the task: {type(exc).__name__}") from exc
        enqueue_callback(self._broker, callback)


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    reason: str
    #: The start of the body (what was read of it) and its whole size in bytes.
    body: bytes
    size: int
    remote_addr: str
    content_type: str


class RejectLog:
    """Keeps the latest ``keep`` rejected callbacks in Redis, each body cut to ``body_bytes``."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keep: int,
        body_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keep = keep
        self._body_bytes = body_bytes
        self._clock = clock

    def record(self, rejection: Rejection) -> None:
        """Best effort: a Redis outage must not turn a 4xx into a 5xx, so it is only logged."""
        log.info("rejected callback: %s %s", rejection.status, rejection.reason)
        if self._keep <= 0:
            return
        entry = orjson.dumps(
            {
                "at": utc_iso(self._clock()),
                "status": rejection.status,
                "reason": rejection.reason,
                "remoteAddr": rejection.remote_addr,
                "contentType": rejection.content_type,
                "bodySize": rejection.size,
                "body": rejection.body[: self._body_bytes].decode("utf-8", "replace"),
                "truncated": len(rejection.body) > self._body_bytes,
            }
        )
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.lpush(keys.REJECTED, entry)
            pipe.ltrim(keys.REJECTED, 0, self._keep - 1)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("could not keep a rejected callback for inspection: %s", type(exc).__name__)
