"""An in-memory internet for download tests: no DNS, no sockets. A made-up public address (never
connected to: the connector is injected) answers with scripted raw HTTP responses, piece by
piece, optionally on a fake clock that advances with each byte sent; a connection to any other
address fails the test (the guard must refuse it first)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore

from tests.support.clock import FakeClock
from workers.fetch import FetchLimits, ResultFetcher, create_http_client
from workers.guard import FetchPolicy, create_guarded_transport

PUBLIC_V4 = "93.184.215.14"
DNS = {"cdn.example": [PUBLIC_V4], "other.example": [PUBLIC_V4]}

#: A response: raw bytes (head and body) produced piece by piece.
Responder = Callable[[], Iterable[bytes]]


class ScriptedStream(httpcore.NetworkStream):
    def __init__(self, internet: FakeInternet) -> None:
        self._internet = internet
        self._pieces: Iterator[bytes] = iter(())
        self._pending = b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._internet.requests.append(buffer)
        path = buffer.split(b" ", 2)[1].decode().split("?")[0]
        responder = self._internet.routes.get(path)
        if responder is None:
            self._pieces = iter([b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"])
        else:
            self._pieces = iter(responder())

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return b""  # the server closed the connection
            self._pending = piece
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        if self._internet.seconds_per_byte and self._internet.clock is not None:
            self._internet.clock.now += len(chunk) * self._internet.seconds_per_byte
        return chunk

    def close(self) -> None:
        pass

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        return self

    def get_extra_info(self, info: str) -> Any:
        return None


@dataclass
class FakeInternet:
    routes: dict[str, Responder] = field(default_factory=dict)
    requests: list[bytes] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)
    clock: FakeClock | None = None
    #: Fake seconds each byte the server sends takes (with ``clock``): 1/8192 is 8 KiB/s.
    seconds_per_byte: float = 0.0

    def resolve(self, host: str, port: int) -> list[str]:
        return DNS[host]

    def connect(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: Any = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        if host != PUBLIC_V4:
            raise AssertionError(f"the guard let a connection to {host}:{port} through")
        return ScriptedStream(self)

    def fetcher(self, limits: FetchLimits, *, policy: FetchPolicy | None = None) -> ResultFetcher:
        transport = create_guarded_transport(
            policy or FetchPolicy(), resolver=self.resolve, connector=self.connect
        )
        client = create_http_client(
            connect_timeout_s=5, read_timeout_s=30, max_redirects=5, max_connections=4, transport=transport
        )
        if self.clock is not None:
            return ResultFetcher(client, limits, monotonic=self.clock)
        return ResultFetcher(client, limits)


def head(status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
