"""One way to open Redis, with timeouts: a Redis that hangs must fail fast, not hold a request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
import redis.asyncio
import redis.asyncio.retry
from dramatiq.common import current_millis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

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


def redis_or_host_millis(client: redis.Redis, *, host_millis: Callable[[], int] = current_millis) -> int:
    """:func:`redis_millis`, or this host's clock (``host_millis``, Unix ms) when Redis refuses
    ``TIME`` (an ACL, a proxy that does not forward it), as dramatiq's own broker stamps (logged
    once per process). Other Redis errors raise."""
    try:
        return redis_millis(client)
    except redis.ResponseError as exc:
        if not refuses_time(exc):
            raise  # BUSY, LOADING...: Redis cannot answer now, it does not refuse
        if not _TIME_REFUSED.is_set():
            _TIME_REFUSED.set()
            log.warning("Redis refuses TIME (%s): this host's clock is used instead", exc)
        return host_millis()


def refuses_time(exc: redis.ResponseError) -> bool:
    """Whether ``exc`` says this Redis will not run ``TIME`` for us (an ACL, a proxy that does not
    know it), not that it cannot answer now (``BUSY`` running a script, ``LOADING``...)."""
    return isinstance(exc, redis.exceptions.NoPermissionError) or "unknown command" in str(exc).lower()


#: Set once this process met a Redis refusing TIME: later refusals are not logged.
_TIME_REFUSED = threading.Event()


def as_text(value: bytes | str) -> str:
    """A Redis reply (bytes, unless the client decodes) as text."""
    return value.decode() if isinstance(value, bytes) else value
