"""Give up a message whose worker dies during it, instead of redelivering it for ever.

A worker process that dies (killed by the kernel out of memory, a crash inside a library) holds
its messages unacknowledged; the broker hands them to another worker (``MJHOOK_REDELIVERY_S``),
and dramatiq's main process stops the dead one's siblings and exits. A message that itself kills
its worker would go round like this for good: no retry is counted on a redelivery, so it is never
dead-lettered, its task stays ``processing`` and the workers restart again and again. Each attempt
is therefore counted in Redis as it starts (one pipelined round trip); one started more than
``MJHOOK_MAX_ATTEMPT_STARTS`` times raises :class:`AttemptNeverEnds`, a permanent error: the
message is dead-lettered and its task failed, with that reason, like any other give-up. An
attempt that ends, however, removes its count: only those of attempts whose worker died stay
until they expire."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from dramatiq.middleware.time_limit import TimeLimitExceeded

from shared import keys
from shared.errors import AttemptNeverEnds

log = logging.getLogger(__name__)


def count_start(client: redis.Redis, key: str, *, ttl_s: int) -> int:
    """Count one start at ``key`` and return how many there were; the count expires ``ttl_s``
    after its last start. One pipelined round trip; Redis errors raise."""
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, ttl_s)
    return int(pipe.execute()[0])


class AttemptStarts:
    """Counts the starts of each attempt at a message (by its id, its enqueue time, so that a
    replayed dead letter counts afresh, and its retry count); the counts expire after ``ttl_s``."""

    def __init__(self, client: redis.Redis, *, max_starts: int, ttl_s: int) -> None:
        self._client = client
        self._max_starts = max_starts
        self._ttl_s = ttl_s

    def start(self, message_id: str, *, enqueued_ms: int, retries: int) -> int:
        """Count one start of this attempt and return how many there were; raise
        :class:`AttemptNeverEnds` past the most allowed. Redis errors raise (the attempt is
        retried as for any other Redis trouble)."""
        starts = count_start(
            self._client, keys.attempt_starts(message_id, enqueued_ms, retries), ttl_s=self._ttl_s
        )
        if starts > self._max_starts:
            raise AttemptNeverEnds(
                f"attempt {retries + 1} at this message was started {starts} times and never ended "
                f"(its worker process died during it each time: killed, out of memory?); "
                f"not started again (MJHOOK_MAX_ATTEMPT_STARTS={self._max_starts})"
            )
        return starts

    @contextmanager
    def counted(self, message_id: str, *, enqueued_ms: int, retries: int) -> Iterator[int]:
        """:meth:`start` this attempt, then the block; once the block ends, whether it returned or
        raised, the count is removed (a worker dying in it ends nothing, so the count stays).
        Nothing that goes wrong removing it is raised over the block's own outcome: a Redis error
        is logged (the count then expires in its time), and so is the attempt's time limit
        running out meanwhile (dramatiq raises it in the thread, wherever it is: a Redis that
        hangs here would have turned a success into a retry, a permanent error into retries)."""
        starts = self.start(message_id, enqueued_ms=enqueued_ms, retries=retries)
        try:
            yield starts
        finally:
            try:
                self._client.delete(keys.attempt_starts(message_id, enqueued_ms, retries))
            except (redis.RedisError, TimeLimitExceeded) as exc:
                log.warning(
                    "the start count of message %s was not removed (%s: %s); it expires in %d s",
                    message_id,
                    type(exc).__name__,
                    exc,
                    self._ttl_s,
                )
