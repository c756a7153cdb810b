"""One way to open Redis, with timeouts: a Redis that hangs must fail fast, not hold a request."""

from __future__ import annotations

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: Retries of one command after a connection error, with a short backoff (0.05 s .. 0.5 s):
#: enough to ride over a reconnect, short enough that the provider still gets a 503 quickly.
DEFAULT_RETRIES = 1


def connect_redis(url: str, *, timeout_s: float = 5.0, retries: int = DEFAULT_RETRIES) -> redis.Redis:
    """A pooled client for ``url``; each command attempt gives up after ``timeout_s`` seconds."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
    )


def connect_redis_async(
    url: str, *, timeout_s: float = 5.0, retries: int = DEFAULT_RETRIES
) -> redis.asyncio.Redis:
    """:func:`connect_redis` for asyncio code (the ingress's acknowledgements)."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
    )


def redis_millis(client: redis.Redis) -> int:
    """Redis's own clock (``TIME``), in Unix ms: the clock dramatiq's heartbeats are stamped with
    (:class:`shared.redis_broker.RedisClockBroker`), whatever the reading host's says."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def as_text(value: bytes | str) -> str:
    """A Redis reply (bytes, unless the client decodes) as text."""
    return value.decode() if isinstance(value, bytes) else value
