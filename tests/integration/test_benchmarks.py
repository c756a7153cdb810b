"""Each benchmark of bench/ runs end to end in a tiny configuration, as a user runs it (its own
redis-server, SeaweedFS, gunicorn, dramatiq and simulator), and writes a report with its figures.
No figure is judged here (timings belong in bench/RESULTS.md, not in tests): what is checked is
that the benchmark's machinery works, so that a change elsewhere cannot silently break it, and that
its runs did the work they time (a benchmark exits with status 1 when one did not: tests/bench
checks that logic)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import process_tree

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Generous: each run takes 10-20 s here.
RUN_TIMEOUT_S = 240
#: How long a benchmark interrupted at RUN_TIMEOUT_S gets to stop the servers it started.
STOP_GRACE_S = 60
#: pytest-timeout's limit per test (pyproject's 180 s would cut a run short, killing nothing it
#: started): above a run and its stop, so that the run's own timeout cleans up first.
TEST_TIMEOUT_S = RUN_TIMEOUT_S + STOP_GRACE_S + 30

pytestmark = [pytest.mark.integration, pytest.mark.timeout(TEST_TIMEOUT_S)]


def run_benchmark(script: str, *args: str) -> dict[str, Any]:
    """Run ``bench/<script>`` with ``args``; its JSON report (the path it prints as ``results:``)."""
    stdout, stderr, returncode = run_script([sys.executable, str(REPO_ROOT / "bench" / script), *args])
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    found = re.search(r"^results: (\S+)$", stdout, re.MULTILINE)
    assert found, stdout[-3000:]
    report: dict[str, Any] = json.loads((REPO_ROOT / found.group(1)).read_text())
    return report


def run_script(argv: list[str], *, timeout_s: float = RUN_TIMEOUT_S) -> tuple[str, str, int]:
    """Run ``argv`` in a process group of its own; its stdout, stderr and exit status. One that
    runs over ``timeout_s`` (or is left running by a failure here) is stopped by
    :func:`stop_script`, and then the test fails."""
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_script(proc)
        pytest.fail(f"{argv[1]} ran over {timeout_s} s and was stopped:\n{stdout[-3000:]}{stderr[-3000:]}")
    finally:
        if proc.poll() is None:  # pytest-timeout or Ctrl-C interrupted the wait
            stop_script(proc)
    return stdout, stderr, proc.returncode


def stop_script(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Interrupt ``proc`` as Ctrl-C would (SIGINT to its process group): a benchmark unwinds and
    stops the servers it started, which run in sessions of their own. After ``STOP_GRACE_S``, kill
    whatever of its process tree is left, those servers too. Its remaining stdout and stderr."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        for pid in process_tree(proc.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.communicate(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:  # a process it let go of holds its pipes
        proc.kill()
        proc.wait()
        return "", "(its output was not read: a process it started still holds its pipes)"


#: A stand-in for a benchmark that hangs: it starts a server in a session of its own, its output
#: elsewhere (as tests/support's ManagedProcess does), stops it when its ExitStack unwinds, writes
#: the server's pid to the file it is given, then waits.
HANGING_SCRIPT = """
import subprocess, sys, time
from contextlib import ExitStack
from pathlib import Path

with ExitStack() as stack:
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stack.callback(server.wait)
    stack.callback(server.terminate)
    Path(sys.argv[1]).write_text(str(server.pid))
    time.sleep(300)
"""


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left unreaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_script_over_its_time_is_interrupted_and_stops_the_server_it_started(tmp_path: Path) -> None:
    """Given a script that started a server in a session of its own and then hangs
    When it runs over its time
    Then the test fails, and the script was interrupted as by Ctrl-C and stopped its server (a
    SIGKILL would have left the server running)."""
    script, pid_file = tmp_path / "hangs.py", tmp_path / "server.pid"
    script.write_text(HANGING_SCRIPT)

    with pytest.raises(pytest.fail.Exception, match="ran over 5 s"):
        run_script([sys.executable, str(script), str(pid_file)], timeout_s=5)

    server = int(pid_file.read_text())
    try:
        assert not is_running(server)
    finally:
        with suppress(ProcessLookupError):
            os.kill(server, signal.SIGKILL)


def test_the_pipeline_benchmark_stores_every_task_in_each_variant() -> None:
    report = run_benchmark(
        "pipeline.py", "--tasks", "2", "--rounds", "1", "--size", "64", "--file-seconds", "0"
    )
    assert report["files_per_run"] == 8
    assert set(report["runs"]) == {"mjhook", "raw", "naive"}
    for variant, runs in report["runs"].items():
        assert [run["ok"] for run in runs] == [True], variant
    assert report["runs"]["mjhook"][0]["states"] == {"stored": 2}
    assert report["runs"]["raw"][0]["bytes"] == report["bytes_per_run"]
    stored_every_task = [(2, report["bytes_per_run"])]
    for variant, runs in report["runs"].items():
        assert [(run["stored"], run["stored_bytes"]) for run in runs] == stored_every_task, variant
    assert report["failures"] == []
    assert all(math.isfinite(figure[0]) and figure[0] > 0 for figure in report["figures"].values())


def test_the_memory_benchmark_stores_the_video_and_reads_the_worker_tree() -> None:
    report = run_benchmark("memory.py", "--mb", "16", "--processes", "1")
    assert report["task"]["state"] == "stored"
    assert report["task"]["stored_bytes"] == 16 * 1024 * 1024
    assert report["failures"] == []
    # The dramatiq main process and its one worker process, before and after.
    assert len(report["processes"]["idle"]) == 2
    assert report["peak_mb"] >= report["idle_mb"] > 0


def test_the_backlog_benchmark_measures_memory_and_both_drain_phases() -> None:
    report = run_benchmark("backlog.py", "--count", "2000", "--rounds", "1", "--window", "0.5")
    for kind in ("small", "large", "grids"):
        assert report["memory"][kind]["bytes_per_callback"] > 0, kind
    for phase in ("small", "large"):
        assert report["phases"][phase][0]["per_s"] > 0, phase
        # Topped up before each window: every window measures the backlog near its size.
        assert report["phases"][phase][0]["windows_kept"] == 5, phase
    assert report["failures"] == []
    assert math.isfinite(report["figures"]["drain_large_vs_small"][0])


def test_the_full_drain_drains_every_callback_and_times_each_tenth() -> None:
    report = run_benchmark("backlog.py", "--full-drain", "--count", "500", "--drain-timeout", "120")
    drain = report["full_drain"]
    assert (drain["done"], drain["left_queued"], drain["dead"]) == (500, 0, 0)
    assert drain["ended"] == {"failed": 500, "partial": 0, "stored": 0}
    assert [tenth["backlog_from_pct"] for tenth in drain["tenths"]] == list(range(100, 0, -10))
    assert all(tenth["per_s"] > 0 for tenth in drain["tenths"])
    assert report["figures"]["drained_completely"][0] is True
    assert report["failures"] == []


def test_the_ingress_benchmark_measures_both_receivers_and_every_ack_was_queued() -> None:
    report = run_benchmark(
        "ingress_ack.py",
        *("--seconds", "1", "--rounds", "1", "--only", "mjhook", "bare_falcon"),
        *("--paced-rate", "20", "--paced-seconds", "1"),
    )
    for receiver in ("mjhook", "bare_falcon"):
        [run] = report["runs"][receiver]
        assert run["acked"] == run["requests"] > 0, receiver
        assert run["failed"] == 0, receiver
        [paced] = report["paced_runs"][receiver]
        assert paced["acknowledged"] == paced["sent"] == paced["attempts"] == 20, receiver
        assert paced["attempts_not_acknowledged"] == 0, receiver
    # Every callback the paced round acknowledged sits in the durable queue too.
    assert report["paced_runs"]["mjhook"][0]["queued"] >= 20
    # Every request mjhook answered in the round sits in the durable queue (wrk may count a few
    # answers fewer than the server sent, never more).
    [run] = report["runs"]["mjhook"]
    assert run["queued"] >= run["acked"]
    # ... and the ingress's own count of callbacks answered 200 (its metrics) was read.
    assert run["answered"] >= run["acked"]
    assert run["queued"] >= run["answered"]
    assert report["runs"]["bare_falcon"][0]["answered"] is None
    assert report["queue"]["aof_enabled"] == 1
    assert report["failures"] == []
