"""The simulator's HTTP server, below the API: how it takes connections."""

from __future__ import annotations

import select
import socket
import time
from wsgiref.simple_server import WSGIRequestHandler

from simulator.server import SimulatorHTTPServer
from tests.simulator.support import SimFactory

#: Connections opened at once: many more than socketserver's default backlog of 5.
BURST = 64


def _connected(sockets: list[socket.socket], timeout_s: float) -> int:
    """How many of the non-blocking ``sockets`` completed their handshake, waiting up to
    ``timeout_s`` seconds for all of them (a SYN the kernel dropped never completes here)."""
    pending, done = list(sockets), 0
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], max(0.0, deadline - time.monotonic()))
        for sock in writable:
            pending.remove(sock)
            done += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return done


def test_a_burst_of_connections_waits_in_the_backlog_until_accepted() -> None:
    # Given the simulator's server listening, busy elsewhere: it accepts nothing yet
    server = SimulatorHTTPServer(("127.0.0.1", 0), WSGIRequestHandler)
    burst: list[socket.socket] = []
    try:
        # When many clients connect at once
        for _ in range(BURST):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            burst.append(sock)
            sock.connect_ex(server.server_address)
        # Then the kernel completes every handshake and holds them for the server (a backlog of
        # 5 drops the SYNs beyond it, and each client waits a second or more to send it again)
        assert _connected(burst, timeout_s=5.0) == BURST
    finally:
        for sock in burst:
            sock.close()
        server.server_close()


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the other end closes (its own timeout bounds each wait)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_stalling_midway_is_hung_up_on(make_sim: SimFactory) -> None:
    # Given a simulator that waits at most 0.5 s on a client's socket
    sim = make_sim(request_timeout_s=0.5)
    with (
        socket.create_connection(("127.0.0.1", sim.port), timeout=10.0) as in_headers,
        socket.create_connection(("127.0.0.1", sim.port), timeout=10.0) as in_body,
    ):
        # When one client stops in the middle of its headers, another one byte into a 100-byte body
        in_headers.sendall(b"GET /api/v1/mj/record-info?taskId=x HTTP/1.0\r\nAuthor")
        in_body.sendall(
            b"POST /api/v1/mj/generate HTTP/1.0\r\nAuthorization: Bearer "
            + sim.api_key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        # Then the first is hung up on, and the second told its body never came, then hung up on
        assert _read_to_end(in_headers) == b""
        answer = _read_to_end(in_body)
    assert answer.startswith(b"HTTP/1.0 200 "), answer
    assert b'"code":400' in answer
    assert b"The request body could not be read" in answer
    assert sim.provider.tasks() == []


def test_beyond_max_connections_a_connection_waits_until_one_ends(make_sim: SimFactory) -> None:
    # Given a simulator serving one connection at a time, hung up on after 0.5 s of silence
    sim = make_sim(request_timeout_s=0.5, max_connections=1)
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10.0) as idle:
        # And a client connected that sends nothing
        with socket.create_connection(("127.0.0.1", sim.port), timeout=10.0) as waiting:
            # When another one asks for something
            waiting.sendall(b"GET /files/x/nothing-here HTTP/1.0\r\n\r\n")
            answer = _read_to_end(waiting)
        # Then it is answered only once the idle one was hung up on: by then the idle
        # connection's end is here already (without the cap, it is answered at once, and the
        # idle one still open)
        idle.setblocking(False)
        assert idle.recv(1) == b""
    assert answer.startswith(b"HTTP/1.0 404 "), answer
