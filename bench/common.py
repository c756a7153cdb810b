"""What the benchmarks share: where their output goes, the servers they start (through the test
fixtures in tests/support), interleaved rounds, medians and ratios, and process memory.

Every figure a benchmark reports is a ratio against a baseline measured in the same run, with the
same load generator, in interleaved rounds (A, B, A, B): the machine is shared, so absolute
numbers drift; ratios of neighbours much less.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
# `python bench/x.py` puts bench/ on sys.path, not the root that holds tests/ and the app packages.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ingress.intake import CallbackIntake  # noqa: E402
from shared.queue import create_broker  # noqa: E402
from shared.redis_client import connect_redis  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.taskstate import TaskStore  # noqa: E402
from tests.support.procs import ManagedProcess, free_port, process_tree, venv_bin, wait_for_http  # noqa: E402
from tests.support.servers import RedisServer, S3Server, start_seaweedfs  # noqa: E402
from tests.support.stack import app_environment  # noqa: E402

#: Logs, server data and result JSON of each run: bench/out/<benchmark>-<timestamp>/ (git-ignored).
OUT_ROOT = REPO_ROOT / "bench" / "out"
#: The gunicorn settings of the ingress; baselines served by gunicorn use the very same file.
GUNICORN_CONF = REPO_ROOT / "ingress" / "gunicorn_conf.py"
#: The worker pool production runs: the Procfile's and docker-compose.yml's
#: `python -m workers workers.tasks --processes 2 --threads 8`, whatever this machine's core count
#: (tests/bench/test_common.py checks the Procfile agrees).
WORKER_PROCESSES = 2
WORKER_THREADS = 8
#: ... started as they start it (its main process imports the settings and the logging set-up:
#: ~11 MB more than plain ``dramatiq``'s, in the memory benchmark's figure).
WORKER_LAUNCHER = (sys.executable, "-m", "workers")
#: MJHOOK_DOWNLOAD_CONCURRENCY's default: parallel downloads per worker process.
DOWNLOAD_CONCURRENCY = 8
BUCKET = "bench"
MIB = 1024 * 1024

T = TypeVar("T")
P = ParamSpec("P")


def run_dir(name: str) -> Path:
    """A fresh output directory for one run of benchmark ``name``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        path = OUT_ROOT / (f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue  # another run started in the same second
    raise FileExistsError(f"no free run directory for {name} at {stamp}")


class DurableRedis(RedisServer):
    """redis-server persisting like production (docker-compose.yml): append-only file, each write
    fsync'd before Redis answers it (``appendfsync always``)."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--appendfsync", "always"]


def start_redis(stack: ExitStack, directory: Path) -> DurableRedis:
    """A durable Redis in ``directory``, killed (its append-only file thrown away) when ``stack``
    closes."""
    server = DurableRedis(directory, appendonly=True)
    stack.callback(shutil.rmtree, directory / "appendonlydir", ignore_errors=True)
    stack.callback(server.kill)
    server.start()
    return server


def start_s3(stack: ExitStack, directory: Path) -> S3Server:
    """SeaweedFS in ``directory``, killed (its data thrown away) when ``stack`` closes."""
    server = start_seaweedfs(directory)
    stack.callback(shutil.rmtree, directory / "data", ignore_errors=True)
    stack.callback(server.kill)
    return server


def mjhook_env(redis: RedisServer, s3: S3Server | None, out: Path, **extra: str) -> dict[str, str]:
    """The environment of mjhook's processes: these servers, the spool in ``out``, loopback
    downloads allowed, plus ``extra`` (``MJHOOK_*`` names)."""
    env = app_environment(
        redis_url=redis.url,
        s3_endpoint=s3.endpoint if s3 else "http://127.0.0.1:9",
        s3_access_key=s3.access_key if s3 else "unused",
        s3_secret_key=s3.secret_key if s3 else "unused",
        s3_bucket=BUCKET,
    )
    env["MJHOOK_SPOOL_DIR"] = str(out / "spool")
    if "worker_metrics_port" in Settings.model_fields:
        # Its default (9191) is one port per host: a second dramatiq instance on it serves no metrics.
        env["MJHOOK_WORKER_METRICS_PORT"] = str(free_port())
    env.update(extra)
    return env


def make_intake(env: Mapping[str, str]) -> tuple[CallbackIntake, TaskStore]:
    """The ingress's own path into the queue (record the task, enqueue its message: two Lua calls),
    without HTTP, for the settings in ``env``; and the task store it writes."""
    settings = Settings.from_env(env)
    client = connect_redis(settings.redis_url, timeout_s=settings.redis_timeout_s)
    tasks = TaskStore(client, ttl_s=settings.task_ttl_s)
    broker = create_broker(settings, client=client, middleware=[])
    return CallbackIntake(broker=broker, tasks=tasks), tasks


def start_gunicorn(
    stack: ExitStack,
    app: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    root: Path = REPO_ROOT,
    extra_args: Sequence[str] = (),
) -> tuple[ManagedProcess, str]:
    """Serve ``app`` ("module:attr") with the ingress's gunicorn settings (and ``extra_args``) on a
    free port; return the process (stopped when ``stack`` closes) and its base URL, once GET
    /healthz answers. ``root`` is the source tree to serve from (a scratch copy to try a change)."""
    port = free_port()
    conf = root / GUNICORN_CONF.relative_to(REPO_ROOT)
    argv = [venv_bin("gunicorn"), app, "-c", str(conf), "-b", f"127.0.0.1:{port}", *extra_args]
    env = {**env, "PYTHONPATH": os.pathsep.join((str(root), *env.get("PYTHONPATH", "").split(os.pathsep)))}
    proc = ManagedProcess(argv, log_path=log_path, cwd=root, env=env)
    stack.callback(proc.terminate)
    base_url = f"http://127.0.0.1:{port}"
    wait_for_http(base_url + "/healthz", 30.0, proc=proc)
    return proc, base_url


def interleave(
    variants: Mapping[str, Callable[[int], T]],
    rounds: int,
    *,
    stop: Callable[[T], bool] = lambda _: False,
) -> dict[str, list[T]]:
    """Run every variant once per round, in the same order (A, B, A, B ...); each gets the round
    number. Returns each variant's results in round order; a run for which ``stop`` is true ends
    the rounds there (the variants after it in that round get one run fewer)."""
    results: dict[str, list[T]] = {name: [] for name in variants}
    for number in range(rounds):
        for name, run in variants.items():
            print(f"  round {number + 1}/{rounds}: {name} ...", flush=True)
            results[name].append(result := run(number))
            if stop(result):
                print(f"  {name} round {number + 1} did not finish: no more rounds", flush=True)
                return results
    return results


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


#: The verdict of a figure whose runs did not do their work (failed requests, tasks not stored):
#: their timings say nothing about the target.
FAILED = "FAILED"


def verdict(value: float, target: float, *, at_most: bool = False, valid: bool = True) -> str:
    """'PASS' or 'MISS' for ``value`` against ``target`` (a minimum unless ``at_most``); 'FAILED'
    whatever the value when the runs behind it are not ``valid``."""
    if not valid:
        return FAILED
    met = value <= target if at_most else value >= target
    return "PASS" if met else "MISS"


def exit_if_failed(failures: Sequence[str]) -> None:
    """Print each of ``failures`` (the runs that did not do their work) and exit with status 1;
    return when there are none. Called after the report is saved, so it keeps the evidence."""
    if not failures:
        return
    print(f"{FAILED}: {len(failures)} run(s) did not do their work; their figures are not results:")
    for failure in failures:
        print(f"  {failure}")
    sys.exit(1)


def exit_on_sigterm(main: Callable[P, T]) -> Callable[P, T]:
    """``main`` with SIGTERM raising SystemExit (status 143) while it runs, as Ctrl-C raises
    KeyboardInterrupt: its ExitStack unwinds and stops the servers it started, which run in
    sessions of their own and would outlive a script killed by the default action."""

    def raise_exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        previous = signal.signal(signal.SIGTERM, raise_exit)
        try:
            return main(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return run


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "memory_gib": round(total_kib / MIB, 1),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def save(out: Path, name: str, report: Mapping[str, Any]) -> Path:
    """Write ``report`` as JSON into the run directory and print where."""
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **report}, indent=2, default=str))
    print(f"results: {path.relative_to(REPO_ROOT)}")
    return path


def print_table(rows: Sequence[Sequence[object]]) -> None:
    """Rows of cells as aligned text columns; the first row is the header."""
    cells = [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


# --- process memory -------------------------------------------------------------------------


def status_kib(pid: int, field: str, *, source: str = "status") -> int:
    """A size field of ``/proc/<pid>/status`` (VmRSS, VmHWM ...) or, with ``source="smaps_rollup"``,
    of that file (Pss: the process's share of pages it shares with others), in KiB; 0 once the
    process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, seconds (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root``'s process tree (its live processes), seconds."""
    return sum(cpu_seconds(pid) for pid in process_tree(root))
