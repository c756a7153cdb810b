"""A worker's exclusive, expiring claim on one task.

Taken with ``SET NX PX``; renewed by a background thread while the work goes on, so only a
crashed worker's lease lapses; released only by the holder (compare-and-delete)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

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


class LeaseManager:
    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._client = client
        self._ttl_ms = ttl_s * 1000
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    @contextmanager
    def hold(self, task_id: str) -> Iterator[None]:
        """Hold the lease on ``task_id`` for the ``with`` block; raise :class:`TaskBusy` when
        another worker holds it."""
        key = keys.lease(task_id)
        token = uuid.uuid4().hex
        if not self._client.set(key, token, nx=True, px=self._ttl_ms):
            raise TaskBusy(f"task {task_id} is being processed by another worker")
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._keep_renewing, args=(key, token, stop), name=f"lease-{task_id}", daemon=True
        )
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                self._release(keys=[key], args=[token])
            except redis.RedisError:
                log.warning("could not release the lease of %s; it expires on its own", task_id)

    def _keep_renewing(self, key: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(self._ttl_ms / 3000):
            try:
                if not self._renew(keys=[key], args=[token, self._ttl_ms]):
                    log.warning("lease %s was lost while working", key)
                    return
            except redis.RedisError as exc:
                log.warning("could not renew lease %s: %s", key, type(exc).__name__)
