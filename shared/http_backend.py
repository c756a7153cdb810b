"""An httpx transport whose connections go through a network backend of our own (the workers'
SSRF guard, the simulator's deadline): httpx builds its pool with httpcore's own sockets, and
offers no argument to pass another backend.

:class:`WaitLimitedBackend` bounds every socket operation of an exchange by a limit the caller
sets for its thread (:func:`limited_waits`): httpx's timeouts bound each connect, read and write
on its own, so a server sending one byte per second never trips them, however long it goes on."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

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


class WaitLimit(Protocol):
    """What bounds the socket operations of one exchange beyond httpx's own timeouts."""

    def wait(self, timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
        """How long the next socket operation may wait, in seconds, given httpx's ``timeout`` for
        it (None: no bound); raises ``late`` (or an error of its own) once nothing is left."""


#: The limit of the exchange this thread is making, if any.
_LIMIT: ContextVar[WaitLimit | None] = ContextVar("mjhook_http_wait_limit", default=None)


@contextmanager
def limited_waits(limit: WaitLimit) -> Iterator[None]:
    """Socket operations of a :class:`WaitLimitedBackend` made in this block, on this thread, wait
    no longer than ``limit`` allows."""
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def _bounded(timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
    limit = _LIMIT.get()
    return timeout if limit is None else limit.wait(timeout, late)


class WaitLimitedStream(httpcore.NetworkStream):
    """A connection whose every operation waits no longer than the thread's limit allows (an
    operation cut short by it times out as httpcore's own timeouts do)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _bounded(timeout, httpcore.ConnectTimeout)
        return WaitLimitedStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class WaitLimitedBackend(httpcore.NetworkBackend):
    """``backend``'s connections (connecting included) bounded by the thread's limit."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _bounded(timeout, httpcore.ConnectTimeout)
        return WaitLimitedStream(self._backend.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _bounded(timeout, httpcore.ConnectTimeout)
        return WaitLimitedStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
