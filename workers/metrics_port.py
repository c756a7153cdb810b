"""Which dramatiq instance serves the workers' metrics port.

Every worker process of an instance binds the port with SO_REUSEPORT (see
:func:`workers.metrics.serve_worker_metrics`), and Linux lets any process of the same user join
them: a second instance given the same port would not be refused, and each scrape would answer
the sums of one instance or the other, at random. So the first worker process to serve a port
also holds a Linux abstract Unix socket named after it (abstract names, like ports, belong to the
network namespace, and the kernel frees one when its holder ends: nothing is left behind), and a
later process serves the port only if that socket's holder has the same parent, the instance's
dramatiq main process.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from pathlib import Path

from shared.errors import ConfigError

#: Attempts to identify the holder of a port's claim, and the pause between two, seconds: it can
#: be caught between binding its socket and listening on it, or just gone.
DEFAULT_IDENTIFY_ATTEMPTS = 20
DEFAULT_IDENTIFY_INTERVAL_S = 0.05
#: How long a probe may wait to connect to the holder, seconds. The holder never accepts: a probe
#: only needs the connection's peer credentials, and waits only if the holder's backlog is full.
DEFAULT_PROBE_TIMEOUT_S = 1.0


class PortClaim:
    """This process's part in its instance's claim on a port; :meth:`release` ends it."""

    def __init__(self, held: socket.socket | None) -> None:
        self._held = held

    def release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None


def claim_port(port: int, *, instance: int | None = None) -> PortClaim:
    """Claim ``port`` for ``instance`` (the pid of a dramatiq main process, default: this worker
    process's parent). Raise ConfigError, naming the other main process, when another instance of
    this host serves that port. Outside Linux, claim nothing."""
    if not sys.platform.startswith("linux"):
        return PortClaim(None)
    instance = os.getppid() if instance is None else instance
    name = f"\0mjhook-worker-metrics-{port}"
    for _ in range(DEFAULT_IDENTIFY_ATTEMPTS):
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            held.bind(name)
            held.listen(socket.SOMAXCONN)
        except OSError:
            held.close()
        else:
            return PortClaim(held)
        holder = _holder_pid(name)
        if holder is None:
            time.sleep(DEFAULT_IDENTIFY_INTERVAL_S)
            continue
        owner = _parent_pid(holder)
        if owner == instance:
            return PortClaim(None)
        raise ConfigError(
            f"port {port} is served by another dramatiq instance (main process {owner or 'unknown'}): "
            "give each instance on a host its own port"
        )
    raise ConfigError(f"cannot tell which dramatiq instance serves port {port}")


def _holder_pid(name: str) -> int | None:
    """The pid of the process listening on the abstract socket ``name`` (0 if it is outside this
    pid namespace); None if none does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(DEFAULT_PROBE_TIMEOUT_S)
        try:
            probe.connect(name)
        except OSError:
            return None
        credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", credentials)[0]
    return pid


def _parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (from /proc), or None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
