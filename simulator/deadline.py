"""One deadline for a whole HTTP exchange, as the provider has for a callback's answer.

httpx's timeouts bound each connect, read and write on its own: a receiver answering one byte
every 0.1 s never trips a 1 s timeout, however long its answer takes. Inside :func:`deadline`,
every socket operation of a :class:`DeadlineTransport` may wait at most the time left, and none
starts once it is spent (httpcore's ``ConnectTimeout``, ``ReadTimeout`` or ``WriteTimeout``,
which httpx raises as its own). Outside one, the transport is a plain ``httpx.HTTPTransport``.
The waits are bounded by :mod:`shared.http_backend`, as a worker's downloads are by their
minimum rate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpcore
import httpx

from shared.http_backend import WaitLimitedBackend, limited_waits, pool_over


class _Deadline:
    """The :class:`shared.http_backend.WaitLimit` of an exchange due by ``due`` (monotonic s)."""

    def __init__(self, due: float) -> None:
        self._due = due

    def wait(self, timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
        left = self._due - time.monotonic()
        if left <= 0:
            raise late("no complete answer before the deadline")
        return left if timeout is None else min(timeout, left)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Requests made in this block (on this thread) must be over within ``seconds`` seconds:
    connected, sent and their whole answer read."""
    with limited_waits(_Deadline(time.monotonic() + seconds)):
        yield


class DeadlineTransport(httpx.HTTPTransport):
    """An ``httpx.HTTPTransport`` (no proxy, certificates verified) whose connections honour
    :func:`deadline`. ``limits`` size its pool (a client's ``limits`` do not reach a transport
    passed to it)."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # The pool HTTPTransport built connects on its own; this one's sockets keep the deadline.
        self._pool = pool_over(
            WaitLimitedBackend(httpcore.SyncBackend()), ssl_context=ssl_context, limits=limits
        )
