"""One way to open Redis, with timeouts: a Redis that hangs must fail fast, not hold a request."""

from __future__ import annotations

import redis


def connect_redis(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A pooled client for ``url``; every command gives up after ``timeout_s`` seconds."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )
