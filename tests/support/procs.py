"""Real child processes for tests: start, wait for readiness, stop, read the log.

Every wait here has a deadline and, when it fails, raises with the tail of the
process log, so a hung or crashed server shows up as a readable test failure.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path

DEFAULT_POLL_INTERVAL_S = 0.05
DEFAULT_LOG_TAIL_CHARS = 4000
DEFAULT_TERMINATE_TIMEOUT_S = 10.0


class ProcessStartError(RuntimeError):
    """A child process exited or did not become ready before its deadline."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


#: Where the tests' servers get their ports: below the kernel's ephemeral range (from which
#: ``bind(("127.0.0.1", 0))`` and every client connection take theirs), split between the
#: pytest-xdist workers and handed out in turn. A server stopped and started again on its ports (a
#: Redis restart, an S3 outage: SeaweedFS listens on nine) so finds them free: no client connection
#: and no other test took one meanwhile (one did, now and then, and the restart failed).
PORT_LOW = 10000
#: The kernel's ephemeral range (Linux).
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: The fewest ports a test process's slice may hold; with fewer (an ephemeral range starting low,
#: many workers) ports come from ``bind(("127.0.0.1", 0))`` as before.
MIN_SLICE = 1000
_next_port: int | None = None


def _port_slice() -> tuple[int, int] | None:
    """This test process's ports: its share of PORT_LOW up to the ephemeral range (or of the
    ports above it, where that leaves too few), or None when there are too few."""
    low, high = PORT_LOW, 32000
    with suppress(OSError, ValueError, IndexError):
        ephemeral = [int(bound) for bound in EPHEMERAL_RANGE.read_text().split()[:2]]
        low, high = max(
            (PORT_LOW, min(high, ephemeral[0])), (ephemeral[1] + 1, 65536), key=lambda r: r[1] - r[0]
        )
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker) % workers if worker.isdigit() else 0
    size = (high - low) // workers
    return (low + index * size, low + (index + 1) * size) if size >= MIN_SLICE else None


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free ports (all held open together while choosing), taken in turn
    from this test process's slice (see PORT_LOW): one comes back only after the whole slice went
    round."""
    global _next_port
    bounds = _port_slice()
    with ExitStack() as stack:
        if bounds is None:
            sockets = [
                stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)
            ]
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return [sock.getsockname()[1] for sock in sockets]
        low, high = bounds
        if _next_port is None or not low <= _next_port < high:
            _next_port = low + os.getpid() % (high - low)
        ports: list[int] = []
        for _ in range(high - low):
            port, _next_port = _next_port, low + (_next_port + 1 - low) % (high - low)
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken (a service of the machine, a server still running)
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free ports in {low}-{high}")


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/<pid>/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def venv_bin(name: str) -> str:
    """Path of executable `name`: next to this interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / name  # not resolved: the venv's bin/
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is neither in {beside.parent} nor on PATH")
    return found


# Every process started here, so that none outlives the interpreter (a crashed script, an
# interrupted pytest): they run in sessions of their own and would otherwise be orphaned.
_STARTED: set[ManagedProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_STARTED):
        if proc.is_running():
            proc.kill()


class ManagedProcess:
    """A child process in its own session, logging stdout and stderr to one file.

    The process starts on construction; `start()` starts it again (same argv, log
    appended) after a stop, so a test can take a server down and bring it back.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None
        self._start_offset = 0
        self.start()

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended, else None."""
        return None if self._popen is None else self._popen.poll()

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.is_running():
            raise RuntimeError(f"{self.name} (pid {self.pid}) is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._start_offset = log.tell()
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _STARTED.add(self)

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the whole process group (the child and anything it forked)."""
        if self._popen is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)

    def terminate(self, timeout_s: float = DEFAULT_TERMINATE_TIMEOUT_S) -> int | None:
        """SIGTERM the group, wait up to `timeout_s` seconds, then SIGKILL it.

        Returns the exit status (negative for a signal), or None if never started.
        """
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._append_log(f"=== did not exit {timeout_s:.1f}s after SIGTERM: SIGKILL\n")
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the group and reap the child. Also ends orphans left in the group."""
        if self._popen is None:
            return None
        self.send_signal(signal.SIGKILL)
        return self._popen.wait(timeout=DEFAULT_TERMINATE_TIMEOUT_S)

    def log_text(self, tail_chars: int | None = DEFAULT_LOG_TAIL_CHARS) -> str:
        """The process log; only its last `tail_chars` characters unless None."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        if tail_chars is not None and len(text) > tail_chars:
            return "...\n" + text[-tail_chars:]
        return text

    def log_since_start(self) -> str:
        """What the process logged since its latest `start()`, in full."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._start_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        """A failure message body: what ran, its status and its log tail."""
        status = "running" if self.is_running() else f"exited with {self.returncode}"
        return (
            f"{self.name} (pid {self._popen.pid if self._popen else '-'}, {status})\n"
            f"argv: {' '.join(self.argv)}\nlog {self.log_path}:\n{self.log_text()}"
        )

    def _append_log(self, line: str) -> None:
        with self.log_path.open("a") as log:
            log.write(line)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    *,
    what: str,
    proc: ManagedProcess | None = None,
    interval_s: float = DEFAULT_POLL_INTERVAL_S,
) -> None:
    """Call `check` until it returns True; raise ProcessStartError after `timeout_s`.

    An exception from `check` counts as "not yet" and is quoted if time runs out.
    If `proc` is given and exits meanwhile, fail at once with its log.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        if proc is not None and not proc.is_running():
            raise ProcessStartError(f"{proc.name} exited while waiting for {what}\n{proc.describe()}")
        try:
            if check():
                return
            last_error = None
        except Exception as exc:  # any failure means "not ready yet"
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            message = f"timed out after {timeout_s:.1f}s waiting for {what}{detail}"
            if proc is not None:
                message += "\n" + proc.describe()
            raise ProcessStartError(message)
        time.sleep(interval_s)


def wait_for_port(host: str, port: int, timeout_s: float, *, proc: ManagedProcess | None = None) -> None:
    """Wait until a TCP connection to host:port is accepted."""

    def accepts() -> bool:
        with socket.create_connection((host, port), timeout=1.0):
            return True

    wait_until(accepts, timeout_s, what=f"TCP {host}:{port}", proc=proc)


def wait_for_http(
    url: str,
    timeout_s: float,
    *,
    status: int = 200,
    proc: ManagedProcess | None = None,
) -> None:
    """Wait until GET `url` answers with `status` (redirects are not followed)."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    # No proxies: readiness probes target loopback only, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

    def answers() -> bool:
        try:
            with opener.open(url, timeout=2.0) as response:
                return bool(response.status == status)
        except urllib.error.HTTPError as exc:
            return exc.code == status

    wait_until(answers, timeout_s, what=f"GET {url} -> {status}", proc=proc)
