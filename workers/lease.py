"""A worker's exclusive, expiring claim on one task.

Taken with ``SET NX PX``; renewed by a background thread while the work goes on, so only a
crashed worker's lease lapses; released only by the holder (compare-and-delete). A holder whose
lease lapsed anyway (Redis unreachable for longer than the TTL) or was taken learns it from
:class:`Lease` and must not write what the new holder writes: neither a file (:meth:`Lease.check`
before each) nor the manifest (:meth:`Lease.confirm` before it) nor the state (moved only while
Redis still holds the lease's :attr:`Lease.token`, checked atomically with the move)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from redis.commands.core import Script

from shared import keys
from shared.errors import TaskBusy

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Lease:
    """One held lease. ``lost`` is set once the holder knows the task may be another worker's: a
    renewal found the lease gone or taken, or none succeeded for a whole TTL (so it lapsed, e.g.
    while Redis was unreachable), or the holder let it go (its ``with`` block ended). Nothing
    stops the holder's work then: it must :meth:`check` the lease (what it knows, no round trip)
    before each file it writes, :meth:`confirm` it (asked of Redis) before the manifest, and move
    the task's state only with its :attr:`token` (checked in the same script call)."""

    def __init__(
        self,
        *,
        key: str,
        token: str,
        ttl_ms: int,
        renew: Script,
        clock: Callable[[], float],
        taken_at: float,
    ) -> None:
        self.key = key
        #: What the lease holds in Redis while it is ours: a state move guarded by it
        #: (``TaskStore.move(..., holder=token)``) happens only then.
        self.token = token
        self.lost = threading.Event()
        self._ttl_ms = ttl_ms
        self._renew = renew
        self._clock = clock
        # When the last renewal that succeeded was sent: the lease holds until a TTL after it.
        self._renewed_at = taken_at

    def renew(self) -> bool:
        """Extend the lease by its TTL; False once it is lost. Redis errors propagate."""
        if self.lost.is_set():
            return False
        sent_at = self._clock()
        if sent_at - self._renewed_at >= self._ttl_ms / 1000:
            self._lose("not renewed within its TTL")
            return False
        if not self._renew(keys=[self.key], args=[self.token, self._ttl_ms]):
            self._lose("gone or taken by another worker")
            return False
        self._renewed_at = max(self._renewed_at, sent_at)
        return True

    def check(self) -> None:
        """Raise :class:`TaskBusy` (retry later) when the lease is known to be lost: what the
        renewals found, or that none succeeded for a whole TTL (a renewal blocked on an unreachable
        Redis reports nothing for seconds), without asking Redis (cheap enough before every file)."""
        if self._clock() - self._renewed_at >= self._ttl_ms / 1000:
            self._lose("not renewed within its TTL")
        if self.lost.is_set():
            raise self._busy()

    def confirm(self) -> None:
        """Raise :class:`TaskBusy` (retry later) unless the lease is still ours, asked of Redis now.
        A confirmed lease is renewed too, so it stays ours for a TTL more."""
        if not self.renew():
            raise self._busy()

    def _busy(self) -> TaskBusy:
        return TaskBusy(f"lease {self.key} was lost while working: another worker may hold the task")

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            self.lost.set()
            log.warning("lease %s was lost while working: %s", self.key, why)


class LeaseManager:
    """Leases of ``ttl_s`` seconds; ``clock`` gives monotonic seconds (when a lease lapses)."""

    def __init__(
        self, client: redis.Redis, *, ttl_s: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._ttl_ms = ttl_s * 1000
        self._clock = clock
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    @contextmanager
    def hold(self, task_id: str) -> Iterator[Lease]:
        """Hold the lease on ``task_id`` for the ``with`` block; raise :class:`TaskBusy` when
        another worker holds it."""
        key = keys.lease(task_id)
        token = uuid.uuid4().hex
        taken_at = self._clock()
        if not self._client.set(key, token, nx=True, px=self._ttl_ms):
            raise TaskBusy(f"task {task_id} is being processed by another worker")
        lease = Lease(
            key=key, token=token, ttl_ms=self._ttl_ms, renew=self._renew, clock=self._clock, taken_at=taken_at
        )
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._keep_renewing, args=(lease, stop), name=f"lease-{task_id}", daemon=True
        )
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join()
            # Work still running on its behalf (a download the block left behind when it raised)
            # must not write once another worker may take the task.
            lease.lost.set()
            try:
                self._release(keys=[key], args=[token])
            except redis.RedisError:
                log.warning("could not release the lease of %s; it expires on its own", task_id)

    def _keep_renewing(self, lease: Lease, stop: threading.Event) -> None:
        while not stop.wait(self._ttl_ms / 3000):
            try:
                if not lease.renew():
                    return
            except redis.RedisError as exc:
                log.warning("could not renew lease %s: %s", lease.key, type(exc).__name__)
