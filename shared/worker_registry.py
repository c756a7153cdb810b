"""Which dramatiq brokers are worker processes. dramatiq's own heartbeat set also holds the
ingress's enqueue-only brokers, and an idle worker holds no messages, so nothing in dramatiq's keys
tells a live idle worker from an ingress process: each worker says so here, in the broker's Redis."""

from __future__ import annotations

from typing import cast

import redis

from shared import keys

#: Entries not renewed for this long are dropped on every write, in ms: a worker killed before
#: its shutdown hook ran leaves its entry behind.
DEFAULT_KEEP_MS = 86_400_000


def record_worker_beat(client: redis.Redis, broker_id: str, *, now_ms: int) -> None:
    """Say that the worker process owning ``broker_id`` is alive at ``now_ms`` (Unix ms)."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.WORKERS, {broker_id: now_ms})
    pipe.zremrangebyscore(keys.WORKERS, "-inf", now_ms - DEFAULT_KEEP_MS)
    pipe.execute()


def forget_worker(client: redis.Redis, broker_id: str) -> None:
    """Take a stopping worker out of the registry, so it stops counting at once."""
    client.zrem(keys.WORKERS, broker_id)


def registered_workers(client: redis.Redis) -> set[str]:
    """The broker ids of every registered worker, live or not; the bytes of one that is no UTF-8
    text (written by another program) as ``\\xNN`` escapes (:func:`shown_broker_id`)."""
    members = cast(list[bytes], client.zrange(keys.WORKERS, 0, -1))
    return {shown_broker_id(member) for member in members}


def shown_broker_id(member: bytes | str) -> str:
    """A broker id read from Redis as text: the bytes of one that is no UTF-8 text as ``\\xNN``
    escapes, as the CLI shows other odd ids (dramatiq's own ids are UUIDs)."""
    return member.decode("utf-8", "backslashreplace") if isinstance(member, bytes) else member
