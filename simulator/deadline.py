"""One deadline for a whole HTTP exchange, as the provider has for a callback's answer.

httpx's timeouts bound each connect, read and write on its own: a receiver answering one byte
every 0.1 s never trips a 1 s timeout, however long its answer takes. Inside :func:`deadline`,
every socket operation of a :class:`DeadlineTransport` may wait at most the time left, and none
starts once it is spent (httpcore's ``ConnectTimeout``, ``ReadTimeout`` or ``WriteTimeout``,
which httpx raises as its own). Outside one, the transport is a plain ``httpx.HTTPTransport``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from shared.http_backend import pool_over

#: Monotonic seconds by which the current exchange of this thread must be over, if any.
_DUE: ContextVar[float | None] = ContextVar("simulator_http_due", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Requests made in this block (on this thread) must be over within ``seconds`` seconds:
    connected, sent and their whole answer read."""
    token = _DUE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DUE.reset(token)


def _time_left(timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` (httpx's for one operation) cut to what is left of the deadline; ``late`` is
    raised when nothing is left."""
    due = _DUE.get()
    if due is None:
        return timeout
    left = due - time.monotonic()
    if left <= 0:
        raise late("no complete answer before the deadline")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation waits no longer than the deadline allows."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets (``backend``, default ``httpcore.SyncBackend()``) wrapped in
    :class:`DeadlineStream`."""

    def __init__(self, backend: httpcore.NetworkBackend | None = None) -> None:
        self._backend = backend or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """An ``httpx.HTTPTransport`` (no proxy, certificates verified) whose connections honour
    :func:`deadline`. ``limits`` size its pool (a client's ``limits`` do not reach a transport
    passed to it)."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # The pool HTTPTransport built connects on its own; this one's sockets keep the deadline.
        self._pool = pool_over(DeadlineBackend(), ssl_context=ssl_context, limits=limits)
