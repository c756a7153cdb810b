"""The simulator's HTTP server, below the API: how it takes connections."""

from __future__ import annotations

import select
import socket
import time
from wsgiref.simple_server import WSGIRequestHandler

from simulator.server import SimulatorHTTPServer

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
