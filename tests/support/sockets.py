"""Which process holds which TCP socket, read from Linux's /proc: who listens on a port, and which
of several processes sharing a port (SO_REUSEPORT) accepted a given connection."""

from __future__ import annotations

import http.client
from collections.abc import Iterable
from pathlib import Path

from .procs import wait_until

#: ``st`` values of /proc/net/tcp.
LISTEN = "0A"
ESTABLISHED = "01"
ACCEPT_TIMEOUT_S = 5.0


def _tcp_sockets() -> list[tuple[int, int, str, int]]:
    """Every TCP socket of this network namespace: (local port, remote port, state, inode)."""
    sockets = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            sockets.append((_port(local), _port(remote), state, inode))
    return sockets


def _port(address: str) -> int:
    """The port of an address of /proc/net/tcp (``0100007F:1F8F``: hexadecimal)."""
    return int(address.rsplit(":", 1)[1], 16)


def _holders(inodes: set[int], pids: Iterable[int]) -> dict[int, int]:
    """Which of ``pids`` holds each of the socket ``inodes`` (inode -> pid)."""
    links = {f"socket:[{inode}]": inode for inode in inodes if inode}
    held = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # exited meanwhile
        for fd in fds:
            try:
                target = fd.readlink()
            except OSError:
                continue
            if str(target) in links:
                held[links[str(target)]] = pid
    return held


def listening_pids(port: int, pids: Iterable[int]) -> set[int]:
    """Those of ``pids`` that listen on TCP ``port``."""
    inodes = {inode for local, _, state, inode in _tcp_sockets() if local == port and state == LISTEN}
    return set(_holders(inodes, pids).values())


def accepting_pid(port: int, peer_port: int, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` has accepted the connection from ``peer_port`` to ``port``; None while it
    waits in a listener's queue (no process holds it yet)."""
    inodes = {
        inode
        for local, remote, state, inode in _tcp_sockets()
        if (local, remote, state) == (port, peer_port, ESTABLISHED)
    }
    held = _holders(inodes, pids)
    return next(iter(held.values()), None)


def get_from_whichever_process(host: str, port: int, path: str, pids: Iterable[int]) -> tuple[int, str]:
    """GET ``path`` on a connection of its own; return which of ``pids`` accepted it (found before
    the request is sent, while the server waits for it) and the body of its 200 answer."""
    pids = list(pids)
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.connect()
        assert connection.sock is not None
        peer_port = connection.sock.getsockname()[1]
        accepted: dict[str, int] = {}

        def accepted_by_one() -> bool:
            pid = accepting_pid(port, peer_port, pids)
            if pid is not None:
                accepted["by"] = pid
            return pid is not None

        wait_until(accepted_by_one, ACCEPT_TIMEOUT_S, what=f"one of {pids} to accept a connection on {port}")
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        return accepted["by"], body
    finally:
        connection.close()
