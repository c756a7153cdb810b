"""The simulator's HTTP server, below the API: how it takes connections."""

from __future__ import annotations

import select
import socket
import struct
import time
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler

from simulator.server import SimulatorHTTPServer
from tests.simulator.support import SimFactory, api, result_urls, submit, wait_done

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


def _get(url: str, *, receive_buffer: int) -> socket.socket:
    """A connection that sent ``GET url`` (HTTP/1.0), with a receive buffer of ``receive_buffer``
    bytes (the client's kernel then takes no more of the answer than that ahead of its reader)."""
    parts = urlsplit(url)
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    conn.settimeout(10.0)
    conn.connect(("127.0.0.1", parts.port or 80))
    conn.sendall(f"GET {parts.path}?{parts.query} HTTP/1.0\r\n\r\n".encode())
    return conn


def test_a_file_whose_client_hung_up_after_its_first_bytes_is_not_downloaded(make_sim: SimFactory) -> None:
    # Given a full-size result file (1024x1024, ~1.4 MB) with no fault: one write took it whole
    # into the kernel's buffers, whether or not the client read it
    sim = make_sim(image_width=1024, image_height=1024)
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
    # When a client reads the first 64 bytes, stalls a moment and hangs up (a reset: a killed
    # downloader's kernel does that with data unread)
    with _get(url, receive_buffer=64 * 1024) as conn:
        head = conn.recv(64)
        time.sleep(0.5)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Then the file is not counted as downloaded
    assert head.startswith(b"HTTP/1.0 200 ")
    assert sim.provider.wait_served({(task_id, 0)}, 2.0) == set()
    # And once a client read it whole, it is
    with api(sim) as client:
        assert client.get(url).content == sim.expected_file(task_id, 0)
    assert sim.provider.wait_served({(task_id, 0)}, 5.0) == {(task_id, 0)}
    assert len(sim.provider.whole_serves()[task_id, 0]) == 1


def test_a_client_reading_a_file_steadily_is_not_hung_up_on_however_long_it_takes(
    make_sim: SimFactory,
) -> None:
    # Given a simulator that hangs up on a client stalling 1 s, and a 12 MB video
    sim = make_sim(request_timeout_s=1.0, video_bytes=12_000_000)
    with api(sim) as client:
        task_id = submit(client, taskType="mj_video", fileUrls=["http://127.0.0.1:9/in.png"])
        url = result_urls(wait_done(client, task_id))[0]
    # When a client reads it steadily, 64 KiB every 20 ms (about 4 s for the whole, never still
    # for long), until the server closes the connection
    data = b""
    with _get(url, receive_buffer=64 * 1024) as conn:
        while piece := conn.recv(64 * 1024):
            data += piece
            time.sleep(0.02)
    # Then it got the whole file, and the file counts as downloaded
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200 ")
    assert len(body) == 12_000_000
    assert body == sim.expected_file(task_id, 0)
    assert sim.provider.wait_served({(task_id, 0)}, 5.0) == {(task_id, 0)}


def test_a_file_not_counted_after_its_client_stalled_past_the_timeout_is_not_delivered_either(
    make_sim: SimFactory,
) -> None:
    """Given a client that stops reading for longer than the request timeout once the file is
    written whole (the rest waiting in the server's send queue), then reads on
    Then what the client got agrees with the count: the download, not counted, is reset, not
    delivered. (The server closed gracefully: the kernel delivered the queued bytes uncounted.)"""
    sim = make_sim(request_timeout_s=1.0, image_width=256, image_height=256)
    with api(sim) as client:
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
    data = b""
    with _get(url, receive_buffer=4096) as conn:
        time.sleep(2.5)  # past the 1 s timeout with no byte read
        try:
            while piece := conn.recv(65536):
                data += piece
        except ConnectionResetError:
            pass
    body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    assert sim.provider.wait_served({(task_id, 0)}, 2.0) == set()
    assert body != sim.expected_file(task_id, 0)
