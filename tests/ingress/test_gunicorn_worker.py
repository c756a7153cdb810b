"""ingress/gunicorn_worker.py's protocol outside the plain HTTP/1 path: gunicorn's asgi protocol
driven by hand, on a transport that records what is done to it."""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.config import Config
from gunicorn.workers import gasgi

from ingress.gunicorn_worker import BoundedASGIProtocol, use_bounded_protocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class WorkerStandIn:
    """What the protocol reads of its worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cfg: Config) -> None:
        self.loop = loop
        self.cfg = cfg
        self.log = logging.getLogger("worker-stand-in")
        self.asgi = None
        self.nr_conns = 0
        self.nr = 0
        self.max_requests = 1 << 30
        self.alive = True
        self.headers_timeout_s = 10.0
        self.body_timeout_s = 10.0

    def may_open_another(self) -> bool:
        return True


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the uWSGI path makes a StreamReader, which takes the current one
    yield loop
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    asyncio.set_event_loop(None)
    loop.close()


def test_a_uwsgi_connection_gets_no_headers_deadline(loop: asyncio.AbstractEventLoop) -> None:
    """With `--protocol uwsgi` (nginx's uwsgi_pass in front) gunicorn never reports a request's
    headers through _on_headers_complete: a deadline armed there would close every uwsgi
    connection 10 s after it opened, whatever it was doing (and then raise AttributeError)."""
    cfg = Config()
    cfg.set("protocol", "uwsgi")
    protocol = BoundedASGIProtocol(WorkerStandIn(loop, cfg))
    transport = RecordingTransport()
    protocol.connection_made(transport)
    assert protocol._headers_deadline is None
    protocol._close_now()  # as over the cap: no AttributeError on a path without _request_ready
    assert transport.closed


def test_an_http1_connection_gets_one(loop: asyncio.AbstractEventLoop) -> None:
    protocol = BoundedASGIProtocol(WorkerStandIn(loop, Config()))
    protocol.connection_made(RecordingTransport())
    assert protocol._headers_deadline is not None


def test_with_gunicorns_c_parser_installed_the_bounded_protocol_parses_with_it(
    monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop
) -> None:
    """gunicorn caches whether gunicorn_h1c (its [fast] extra; a stand-in module here) is there
    on the class it is asked from, but reads the cache from ASGIProtocol: behind the subclass,
    `auto` fell back to the Python parser and `http_parser = "fast"` failed every connection."""
    c_parser = types.ModuleType("gunicorn_h1c")

    class H1CProtocol:
        def __init__(self, **kwargs: Any) -> None:
            pass

    class LimitRequestLine(Exception):
        pass

    c_parser.H1CProtocol = H1CProtocol  # type: ignore[attr-defined]
    c_parser.LimitRequestLine = LimitRequestLine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gunicorn_h1c", c_parser)
    monkeypatch.setattr(gasgi, "ASGIProtocol", gasgi.ASGIProtocol)
    # The caches as in a new worker process (a connection made by an earlier test filled them).
    for name in ("_h1c_available", "_h1c_protocol_class", "_h1c_has_limits", "_h1c_limit_request_line"):
        monkeypatch.setattr(ASGIProtocol, name, None if name != "_h1c_has_limits" else False)
        if name in vars(BoundedASGIProtocol):
            monkeypatch.delattr(BoundedASGIProtocol, name)
    use_bounded_protocol()
    protocol = BoundedASGIProtocol(WorkerStandIn(loop, Config()))
    protocol.transport = RecordingTransport()
    protocol._setup_callback_parser()
    assert isinstance(protocol._callback_parser, H1CProtocol)
    assert gasgi.ASGIProtocol is BoundedASGIProtocol
