"""bench/common.py: the worker pool the benchmarks run, the interleaved rounds, and a script
stopped by SIGTERM stopping what it started."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import common
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "bench"
PROCFILE = REPO_ROOT / "Procfile"
#: How long the script below may take to import the app and get ready (not a measurement).
READY_TIMEOUT_S = 60.0
#: A benchmark's shape: servers stopped by its ExitStack. It writes "ready" to its second
#: argument, then waits to be stopped; unwinding writes "servers stopped" to its first.
STOPPED_SCRIPT = f"""
import sys, time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, {str(BENCH_DIR)!r})
from common import exit_on_sigterm


@exit_on_sigterm
def main() -> None:
    with ExitStack() as stack:
        stack.callback(Path(sys.argv[1]).write_text, "servers stopped")
        Path(sys.argv[2]).write_text("ready")
        time.sleep(300)


main()
"""


def test_the_worker_pool_is_the_procfiles_whatever_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given production's worker line in the Procfile (docker-compose.yml runs the same) and an
    8-core machine
    When bench/common.py is loaded
    Then the benchmarks' worker pool is production's processes and threads, not one per core."""
    found = re.search(r"^worker:.*--processes (\d+) --threads (\d+)", PROCFILE.read_text(), re.MULTILINE)
    assert found, "the Procfile's worker line gives --processes and --threads"
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    spec = importlib.util.spec_from_file_location("common_on_8_cores", BENCH_DIR / "common.py")
    assert spec is not None
    assert spec.loader is not None
    on_8_cores = importlib.util.module_from_spec(spec)

    spec.loader.exec_module(on_8_cores)

    assert (int(found[1]), int(found[2])) == (on_8_cores.WORKER_PROCESSES, on_8_cores.WORKER_THREADS)


def test_a_run_that_says_stop_ends_the_rounds() -> None:
    """Given three variants over three rounds, B's second run not finished
    When they are interleaved, stopping at a run that did not finish
    Then the rounds end there: A ran twice, B twice, C once."""
    variants = {name: (lambda number, name=name: f"{name}{number}") for name in "ABC"}

    results = common.interleave(variants, 3, stop=lambda run: run == "B1")

    assert results == {"A": ["A0", "A1"], "B": ["B0", "B1"], "C": ["C0"]}


def test_a_script_sent_sigterm_unwinds_and_stops_its_servers(tmp_path: Path) -> None:
    """Given a script whose main (wrapped by exit_on_sigterm) holds servers in an ExitStack
    When it is sent SIGTERM (as by `kill`, `timeout` or a test harness)
    Then its ExitStack unwinds, stopping them, and it exits with status 143 (128 + SIGTERM)."""
    script, stopped, ready = tmp_path / "bench.py", tmp_path / "stopped", tmp_path / "ready"
    script.write_text(STOPPED_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(stopped), str(ready)])
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the script did not get ready"

        proc.send_signal(signal.SIGTERM)

        assert proc.wait(timeout=READY_TIMEOUT_S) == 128 + signal.SIGTERM
        assert stopped.read_text() == "servers stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
