"""Fixtures of the simulator's tests: simulators that stop at teardown, a callback receiver."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from simulator import RunningSimulator, SimulatorConfig, run_simulator
from tests.simulator.support import HOLD_LIMIT_S, Received, Receiver, SimFactory, TricklingReceiver
from tests.support.raw_http import read_message

#: Small and fast unless a test says otherwise.
TEST_CONFIG: dict[str, Any] = {
    "image_width": 64,
    "image_height": 64,
    "video_bytes": 4096,
    "generation_delay_s": 0.05,
    "time_scale": 0.001,
    "callback_timeout_s": 5.0,
    "delivery_threads": 4,
}


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no host name lookup
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.record(Received(self.path, dict(self.headers.items()), body, time.monotonic()))
            status, delay = state.next_answer()
            time.sleep(delay)
            state.released.wait(HOLD_LIMIT_S)
            payload = b'{"status": "received"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _ReceiverServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/callbacks/midjourney"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


#: A whole 200 answer: 59 bytes, about six seconds when trickled a byte every 0.1 s.
TRICKLED_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest.fixture
def trickling_receiver() -> Iterator[TricklingReceiver]:
    state = TricklingReceiver()
    stopping = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    state.url = f"http://127.0.0.1:{listener.getsockname()[1]}/callbacks/midjourney"

    def answer(conn: socket.socket) -> None:
        with conn:
            try:
                read_message(conn)  # the whole request, so closing leaves nothing unread
                if not state.next_is_slow():
                    conn.sendall(TRICKLED_ANSWER)
                    return
                for byte in TRICKLED_ANSWER:
                    if stopping.wait(state.byte_interval_s):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                pass  # the simulator hung up: what the test wants to see

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10.0)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stopping.set()
        thread.join(timeout=5.0)
        listener.close()


@pytest.fixture
def make_sim() -> Iterator[SimFactory]:
    """Start simulators with :data:`TEST_CONFIG` plus the given fields (and ``transport`` in place
    of the callback client's network); all stop at teardown."""
    started: list[RunningSimulator] = []

    def make(
        clock: Callable[[], float] = time.time, transport: httpx.BaseTransport | None = None, **fields: Any
    ) -> RunningSimulator:
        sim = run_simulator(SimulatorConfig(**{**TEST_CONFIG, **fields}), clock=clock, transport=transport)
        started.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def sim(make_sim: SimFactory) -> RunningSimulator:
    return make_sim()
