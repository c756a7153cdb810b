"""dramatiq's Redis broker on Redis's clock.

Every command dramatiq's Redis broker sends carries the sender's time: it stamps the worker's
heartbeat with it, and maintenance takes a worker whose heartbeat is older than the heartbeat
timeout (``MJHOOK_REDELIVERY_S``) for dead and requeues the messages it holds. Workers on several
hosts compare heartbeats each host stamped with its own clock, so a host whose clock runs 16 s
ahead takes every worker that beat 5 s ago for dead, and hands its messages to others while it
still processes them. This broker stamps them with Redis's clock instead: its own, corrected by
an offset measured against Redis's ``TIME`` (at its first command and at each heartbeat)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

from shared.redis_client import redis_or_host_millis

log = logging.getLogger(__name__)


#: A ``TIME`` round trip slower than this measures nothing: the offset it gives may be off by up
#: to half of it (Redis stalled, a partition healing). The last offset is kept, and the beat that
#: measured it runs no maintenance.
MAX_CLOCK_READ_MS = 1_000

#: An offset that moved by more than this since the last measurement: a clock stepped (Redis's,
#: after a VM resume or a failover to another host; or this host's wall clock, when Redis refuses
#: ``TIME``). Other workers stamp with their old offsets until their own next beat.
MAX_OFFSET_MOVE_MS = 1_000


def monotonic_millis() -> int:
    """A clock that no setting of this host's time moves, in ms from an arbitrary start."""
    return time.monotonic_ns() // 1_000_000


class ClockSync(NamedTuple):
    """What one measurement of Redis's clock found."""

    #: Redis's time minus the broker's local clock, in ms.
    offset_ms: int
    #: False when the measurement cannot be trusted to judge other workers' heartbeats by: a slow
    #: round trip, or an offset that moved (a clock stepped).
    steady: bool


class RedisClockBroker(RedisBroker):
    """A :class:`RedisBroker` whose commands carry Redis's time (:meth:`now_ms`). Random
    maintenance is off (``maintenance_chance`` 0): the workers' heartbeats run it
    (workers/heartbeat.py), and after a Redis outage they hold it back until every live worker
    beat again; a command drawing it by chance then requeued live workers' messages.
    ``local_millis``: the clock Redis's is measured against, monotonic (no step of this host's
    time moves the stamps between two measurements); ``wall_millis``: this host's time, Unix ms,
    stamped while Redis's clock cannot be read (Redis away, or refusing ``TIME``: an ACL, a
    proxy), as dramatiq's own broker does."""

    def __init__(
        self,
        *,
        local_millis: Callable[[], int] = monotonic_millis,
        wall_millis: Callable[[], int] = current_millis,
        **options: Any,
    ) -> None:
        super().__init__(maintenance_chance=0, **options)  # type: ignore[no-untyped-call]
        self._local_millis = local_millis
        self._wall_millis = wall_millis
        #: Redis's time (or this host's, see :meth:`sync_clock`) minus ``local_millis``; None
        #: until measured.
        self._offset_ms: int | None = None

    def sync_clock(self) -> ClockSync:
        """Measure the offset of Redis's clock from the local one (``TIME``, taken as read halfway
        through the round trip) and keep it, unless the round trip took longer than
        :data:`MAX_CLOCK_READ_MS` (the last offset kept, if there is one). A Redis refusing ``TIME``
        gives this host's own time instead (:func:`shared.redis_client.redis_or_host_millis`).
        Other Redis errors raise."""
        previous = self._offset_ms
        before = self._local_millis()
        # Any other error raises (BUSY, say): this beat fails, the last offset stays.
        redis_now = redis_or_host_millis(self.client, host_millis=self._wall_millis)
        after = self._local_millis()
        measured = redis_now - (before + after) // 2
        quick = after - before <= MAX_CLOCK_READ_MS
        if quick or previous is None:
            self._offset_ms = measured
        moved = previous is not None and abs(measured - previous) > MAX_OFFSET_MOVE_MS
        return ClockSync(self._offset_ms if self._offset_ms is not None else measured, quick and not moved)

    def now_ms(self) -> int:
        """Redis's time now, in Unix ms, from the local clock and the last offset measured (the
        first call measures it; Redis away then: this host's own time, measured again next call)."""
        if self._offset_ms is None:
            try:
                self.sync_clock()
            except (redis.RedisError, OSError) as exc:
                log.debug("Redis's clock not read: %s", exc)
                return self._wall_millis()
        return self._local_millis() + (self._offset_ms or 0)

    def _dispatch(self, command: str) -> Callable[..., Any]:
        # dramatiq 2.2's own (pinned in constraints.txt), with the timestamp on Redis's clock.
        dispatch = self.scripts["dispatch"]
        keys = [self.namespace]

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            arguments = [
                command,
                self.now_ms(),
                queue_name,
                self.broker_id,
                self.heartbeat_timeout,
                self.dead_message_ttl,
                self._should_do_maintenance(command),
                self._max_unpack_size(),  # type: ignore[no-untyped-call]
                *args,
            ]
            return dispatch(args=arguments, keys=keys)

        return do_dispatch


def broker_millis(broker: RedisBroker) -> int:
    """The time ``broker``'s commands carry, in Unix ms: Redis's for a :class:`RedisClockBroker`,
    this host's for another."""
    return broker.now_ms() if isinstance(broker, RedisClockBroker) else current_millis()
