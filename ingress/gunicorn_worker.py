"""gunicorn's asgi worker, with the bounds it lacks on clients that connect and say nothing.

gunicorn 27's asgi worker (``gunicorn.workers.gasgi``) waits for a connection's first request
headers without any deadline (``timeout`` bounds a body, ``keepalive`` the wait for a second
request), and does not enforce ``worker_connections``: connections that send nothing, or half a
request line, are held for good, and enough of them use up the worker's file descriptors, after
which a genuine callback cannot even connect. :class:`BoundedASGIWorker` adds:

- a deadline on the first request's headers (:data:`HEADERS_TIMEOUT_S` from the connection's
  start, or gunicorn's ``timeout`` when shorter; the provider waits 15 s for the whole answer
  anyway): a connection without them by then is closed. Later requests' headers on a connection
  are bounded by ``keepalive`` as before;
- a deadline on every request's body (:data:`BODY_TIMEOUT_S` from the end of its headers, or
  gunicorn's ``timeout`` when shorter): a request whose body is not all in by then has its
  connection closed (its app call sees ``http.disconnect``). gunicorn's ``timeout`` bounds only
  each wait for the next piece of a body, so a client sending a byte now and then held its
  connection for good;
- a cap on open connections: ``worker_connections``, and never more than the process's open-file
  limit leaves room for (less :data:`FD_RESERVE` for Redis, the spool, metrics and logs); one
  over it is closed as soon as it is accepted. The soft open-file limit is raised to the hard
  one at start, as servers do.

This bounds what idle connections cost; a flood of connections is still a proxy's or a
firewall's to stop (see SECURITY.md)."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi
from gunicorn.workers.gasgi import ASGIWorker

#: Seconds a new connection has to send its first request's headers.
HEADERS_TIMEOUT_S = 10.0
#: Seconds a request has, from the end of its headers, to send all of its body. The provider sends
#: a small body in one go and gives up on the answer after 15 s anyway: a body still arriving
#: 10 s on is a client holding the connection, not a callback.
BODY_TIMEOUT_S = 10.0
#: File descriptors kept free of connections for the process's own use.
FD_RESERVE = 64
#: Seconds between two log lines about connections refused over the cap.
CAP_WARNING_INTERVAL_S = 10.0


class BoundedASGIProtocol(ASGIProtocol):  # type: ignore[misc]
    """gunicorn's asgi protocol with a deadline on the first request's headers and one on each
    request's body; a connection over the worker's cap is closed as it is made."""

    _headers_deadline: asyncio.TimerHandle | None = None
    _body_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        worker: BoundedASGIWorker = self.worker
        if not worker.may_open_another():
            self._close_now()
            return
        if self._callback_parser is not None:
            # HTTP/1 only: uWSGI and HTTP/2 connections never report their headers through
            # _on_headers_complete (h2c waiting for its preface has gunicorn's own timer).
            self._headers_deadline = worker.loop.call_later(worker.headers_timeout_s, self._headers_too_late)

    def _on_headers_complete(self) -> Any:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None
        skip_body = super()._on_headers_complete()
        # Every request's, the first's and each kept-alive or pipelined one's (the parser reports
        # each through here); a body-less one completes at once, in the same feed.
        self._cancel_body_deadline()
        self._body_deadline = self.worker.loop.call_later(self.worker.body_timeout_s, self._body_too_late)
        return skip_body

    def _on_message_complete(self) -> None:
        self._cancel_body_deadline()
        super()._on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None
        self._cancel_body_deadline()
        super().connection_lost(exc)

    def _headers_too_late(self) -> None:
        self._headers_deadline = None
        self._close_now()

    def _cancel_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_too_late(self) -> None:
        """The request's body is not all in: close the connection. No 408: the app is already
        running, and may have started its answer."""
        self._body_deadline = None
        self.log.debug("Request body not complete within %.1f s, closing", self.worker.body_timeout_s)
        self._close_now()

    def _close_now(self) -> None:
        """Close the connection and wake its handler, which then ends (as gunicorn's own
        keepalive timeout does)."""
        self._close_transport()
        if self._request_ready is not None:
            self._request_ready.set()


class BoundedASGIWorker(ASGIWorker):  # type: ignore[misc]
    """``worker_class = "ingress.gunicorn_worker.BoundedASGIWorker"``: gunicorn's asgi worker,
    its connections made by :class:`BoundedASGIProtocol`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_cap = self.worker_connections
        self.headers_timeout_s = min(HEADERS_TIMEOUT_S, self.cfg.timeout or HEADERS_TIMEOUT_S)
        self.body_timeout_s = min(BODY_TIMEOUT_S, self.cfg.timeout or BODY_TIMEOUT_S)
        self._last_cap_warning = 0.0

    def init_process(self) -> None:
        self.connection_cap = min(self.worker_connections, _open_file_limit() - FD_RESERVE)
        use_bounded_protocol()
        super().init_process()

    def may_open_another(self) -> bool:
        """Whether a connection just made (already counted) is within the cap; says so in the
        log, now and then, when it is not."""
        if self.nr_conns <= self.connection_cap:
            return True
        now = time.monotonic()
        if now - self._last_cap_warning >= CAP_WARNING_INTERVAL_S:
            self._last_cap_warning = now
            self.log.warning(
                "%d connections open, the cap of this worker: closing new ones until some end "
                "(worker_connections, and the open-file limit)",
                self.connection_cap,
            )
        return False


def use_bounded_protocol() -> None:
    """Make this process's asgi connections :class:`BoundedASGIProtocol`'s."""
    # gasgi builds each connection's protocol by this module-level name.
    gasgi.ASGIProtocol = BoundedASGIProtocol
    # gunicorn caches whether its C parser (gunicorn_h1c, its [fast] extra) is there on the class
    # it is asked from, and reads the cache from ASGIProtocol: asked first from ours, it would
    # miss it (and fall back to the Python parser).
    ASGIProtocol._check_h1c_protocol_available()


def _open_file_limit() -> int:
    """The soft open-file limit, raised to the hard one first where it is lower (and the kernel
    lets it be: an unlimited hard limit may not)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
