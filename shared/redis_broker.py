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
from collections.abc import Callable
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

from shared.redis_client import redis_millis

log = logging.getLogger(__name__)


class RedisClockBroker(RedisBroker):
    """A :class:`RedisBroker` whose commands carry Redis's time (:meth:`now_ms`). Random
    maintenance is off (``maintenance_chance`` 0): the workers' heartbeats run it
    (workers/heartbeat.py), and after a Redis outage they hold it back until every live worker
    beat again; a command drawing it by chance then requeued live workers' messages.
    ``local_millis``: this host's clock, in Unix milliseconds."""

    def __init__(self, *, local_millis: Callable[[], int] = current_millis, **options: Any) -> None:
        super().__init__(maintenance_chance=0, **options)  # type: ignore[no-untyped-call]
        self._local_millis = local_millis
        #: Redis's time minus this host's, in ms; None until measured.
        self._offset_ms: int | None = None

    def sync_clock(self) -> int:
        """Measure the offset of Redis's clock from this host's (``TIME``, taken as read halfway
        through the round trip), keep it and return it, in ms. Redis errors raise."""
        before = self._local_millis()
        redis_now = redis_millis(self.client)
        after = self._local_millis()
        self._offset_ms = redis_now - (before + after) // 2
        return self._offset_ms

    def now_ms(self) -> int:
        """Redis's time now, in Unix ms, from this host's clock and the last offset measured (the
        first call measures it; Redis away then: this host's own time, measured again next call)."""
        if self._offset_ms is None:
            try:
                self.sync_clock()
            except (redis.RedisError, OSError) as exc:
                log.debug("Redis's clock not read: %s", exc)
                return self._local_millis()
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
