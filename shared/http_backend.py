"""An httpx transport whose connections go through a network backend of our own (the workers'
SSRF guard, the simulator's deadline): httpx builds its pool with httpcore's own sockets, and
offers no argument to pass another backend."""

from __future__ import annotations

import ssl

import httpcore
import httpx


def pool_over(
    backend: httpcore.NetworkBackend, *, ssl_context: ssl.SSLContext, limits: httpx.Limits
) -> httpcore.ConnectionPool:
    """The connection pool an ``httpx.HTTPTransport`` built with ``ssl_context`` and ``limits``
    would have, connecting through ``backend``: assign it to the transport's ``_pool``."""
    return httpcore.ConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
