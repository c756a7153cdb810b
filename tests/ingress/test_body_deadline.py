"""ingress/gunicorn_worker.py's deadline on a request's body: gunicorn's ``timeout`` bounds each
wait for the next piece of a body, not the whole of it, so a client sending a byte now and then
held its connection for good, and enough such clients filled the worker's connection cap."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from gunicorn.config import Config

from ingress.gunicorn_worker import BoundedASGIProtocol
from tests.ingress.test_callbacks import success
from tests.ingress.test_gunicorn_worker import RecordingTransport, WorkerStandIn
from tests.integration.test_ingress_server import ingress_only, post_on
from tests.support.raw_http import content_length, post_head, read_message, send_post
from tests.support.servers import RedisServer

#: A byte of body every this many seconds: far within gunicorn's timeout (2 s below) between two.
TRICKLE_INTERVAL_S = 0.3
#: Bytes the trickling client would send: 20 s of trickle, far beyond the 2 s deadline.
TRICKLE_BYTES = round(20 / TRICKLE_INTERVAL_S)

HEADERS = post_head("/callbacks/midjourney", TRICKLE_BYTES + 1000)


def trickle_until_closed(sock: socket.socket) -> int:
    """Send a body byte every TRICKLE_INTERVAL_S until the server closes the connection; the
    bytes sent by then (TRICKLE_BYTES when it never did)."""
    for sent in range(TRICKLE_BYTES):
        try:
            sock.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            return sent
        readable, _, _ = select.select([sock], [], [], TRICKLE_INTERVAL_S)
        if readable:
            try:
                while sock.recv(65536):  # whatever the server said, then its end of the stream
                    pass
            except ConnectionResetError:
                pass
            return sent + 1
    return TRICKLE_BYTES


def keepalive_post(sock: socket.socket, task_id: str) -> bytes:
    """POST a valid callback on ``sock``, keeping the connection; the answer's head."""
    send_post(sock, "/callbacks/midjourney", orjson.dumps(success(task_id)))
    answer = read_message(sock)
    assert answer is not None, "closed before answering"
    head, _ = answer
    # Without it the answer's end is unknown, and bytes left unread would pass for the server
    # cutting off the trickle that follows
    assert content_length(head) is not None, head
    return head


def test_a_body_trickled_a_byte_at_a_time_is_cut_off_and_callbacks_still_served(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Given the ingress with gunicorn's timeout at 2 s (so the body's deadline is 2 s too), when
    a client sends a request's headers and then a body byte every 0.3 s (each within that timeout
    of the last), then the ingress closes its connection long before the body would end, while a
    callback on another connection is answered 200."""
    proc, port = ingress_only(redis_server, tmp_path, "--timeout", "2")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(HEADERS)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                assert post_on(sock, "beside-the-trickle").startswith(b"HTTP/1.1 200")
            assert trickle_until_closed(slow) < TRICKLE_BYTES
    finally:
        proc.terminate()


def test_a_kept_alive_connections_later_request_is_cut_off_too(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Given the same ingress, when a connection's first request is a callback (answered 200, the
    connection kept) and its second one trickles its body, then the second one is cut off too."""
    proc, port = ingress_only(redis_server, tmp_path, "--timeout", "2")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert keepalive_post(sock, "first-on-the-connection").startswith(b"HTTP/1.1 200")
            sock.sendall(HEADERS)
            assert trickle_until_closed(sock) < TRICKLE_BYTES
    finally:
        proc.terminate()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def _protocol(loop: asyncio.AbstractEventLoop) -> tuple[BoundedASGIProtocol, RecordingTransport]:
    protocol = BoundedASGIProtocol(WorkerStandIn(loop, Config()))
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


def test_the_deadline_runs_from_the_headers_to_the_end_of_the_body(
    loop: asyncio.AbstractEventLoop,
) -> None:
    protocol, transport = _protocol(loop)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    assert protocol._body_deadline is not None
    protocol.data_received(b"cd")
    assert protocol._body_deadline is None
    assert not transport.closed


def test_a_request_without_a_body_leaves_no_deadline(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _protocol(loop)
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert protocol._body_deadline is None
    assert not transport.closed


def test_when_the_deadline_passes_the_connection_is_closed_and_the_app_told(
    loop: asyncio.AbstractEventLoop,
) -> None:
    received: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] != "http.disconnect":
            received.append(message["type"])
        received.append(message["type"])

    worker: Any = WorkerStandIn(loop, Config())
    worker.asgi = app
    worker.log = QuietLog(logging.getLogger("worker-stand-in"), {})
    worker.body_timeout_s = 0.05
    protocol = BoundedASGIProtocol(worker)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    deadline = time.monotonic() + 10
    while not transport.closed and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    assert transport.closed
    assert protocol._body_deadline is None
    protocol.connection_lost(None)  # as the transport reports once closed
    while "http.disconnect" not in received and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    assert received == ["http.request", "http.disconnect"]


class QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What the protocol reads of gunicorn's logger to serve a request."""

    access_log_enabled = False
