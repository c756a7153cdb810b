"""Give up a message whose worker dies during it, instead of redelivering it for ever.

A worker process that dies (killed by the kernel out of memory, a crash inside a library) holds
its messages unacknowledged; the broker hands them to another worker (``MJHOOK_REDELIVERY_S``),
and dramatiq's main process stops the dead one's siblings and exits. A message that itself kills
its worker would go round like this for good: no retry is counted on a redelivery, so it is never
dead-lettered, its task stays ``processing`` and the workers restart again and again. Each attempt
is therefore counted in Redis as it starts (one pipelined round trip); one started more than
``MJHOOK_MAX_ATTEMPT_STARTS`` times raises :class:`AttemptNeverEnds`, a permanent error: the
message is dead-lettered and its task failed, with that reason, like any other give-up."""

from __future__ import annotations

import redis

from shared import keys
from shared.errors import AttemptNeverEnds


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
