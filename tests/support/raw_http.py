"""HTTP/1.1 on a bare socket, for tests that must control the bytes on the wire (a body cut short,
a connection kept or closed) where an HTTP client would hide them."""

from __future__ import annotations

import socket

#: Bytes asked of one ``recv``.
RECV_BYTES = 65536


def post_head(path: str, content_length: int, *, close: bool = False) -> bytes:
    """The head of a JSON POST to ``path`` announcing ``content_length`` bytes of body, with
    ``Connection: close`` when ``close`` (else the connection is kept, as HTTP/1.1's default)."""
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\n%s"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (path.encode(), connection, content_length)
    )


def send_post(sock: socket.socket, path: str, body: bytes, *, close: bool = False) -> None:
    """Send a JSON POST of ``body`` to ``path`` on ``sock`` (see :func:`post_head`)."""
    sock.sendall(post_head(path, len(body), close=close) + body)


def content_length(head: bytes) -> int | None:
    """The Content-Length a message's head announces; None when it has none."""
    return next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )


def read_message(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """Read one request or answer from ``sock``: its head (without the blank line) and its body
    of Content-Length bytes (none when the head has no Content-Length); None when the peer closes
    before all of it came."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = content_length(head) or 0
    while len(body) < length:
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            return None
        body += chunk
    return head, body


def read_until_closed(sock: socket.socket) -> bytes:
    """All ``sock`` receives until the peer closes its end."""
    received = b""
    while chunk := sock.recv(RECV_BYTES):
        received += chunk
    return received
