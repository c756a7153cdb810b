"""Each benchmark of bench/ runs end to end in a tiny configuration, as a user runs it (its own
redis-server, SeaweedFS, gunicorn, dramatiq and simulator), and writes a report with its figures.
No figure is judged here (timings belong in bench/RESULTS.md, not in tests): what is checked is
that the benchmark's machinery works, so that a change elsewhere cannot silently break it, and that
its runs did the work they time (a benchmark exits with status 1 when one did not: tests/bench
checks that logic)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Generous: each run takes 10-20 s here.
RUN_TIMEOUT_S = 240


def run_benchmark(script: str, *args: str) -> dict[str, Any]:
    """Run ``bench/<script>`` with ``args``; its JSON report (the path it prints as ``results:``)."""
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    found = re.search(r"^results: (\S+)$", completed.stdout, re.MULTILINE)
    assert found, completed.stdout[-3000:]
    report: dict[str, Any] = json.loads((REPO_ROOT / found.group(1)).read_text())
    return report


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
    report = run_benchmark("backlog.py", "--count", "10000", "--rounds", "1", "--window", "0.5")
    for kind in ("small", "large", "grids"):
        assert report["memory"][kind]["bytes_per_callback"] > 0, kind
    for phase in ("small", "large"):
        assert report["phases"][phase][0]["per_s"] > 0, phase
        # Topped up before each window: every window measures the backlog near its size.
        assert report["phases"][phase][0]["windows_kept"] == 5, phase
    assert report["failures"] == []
    assert math.isfinite(report["figures"]["drain_large_vs_small"][0])


def test_the_full_drain_drains_every_callback_and_times_each_tenth() -> None:
    report = run_benchmark("backlog.py", "--full-drain", "--count", "2000", "--drain-timeout", "120")
    drain = report["full_drain"]
    assert (drain["done"], drain["left_queued"], drain["dead"]) == (2000, 0, 0)
    assert [tenth["backlog_from_pct"] for tenth in drain["tenths"]] == list(range(100, 0, -10))
    assert all(tenth["per_s"] > 0 for tenth in drain["tenths"])
    assert report["figures"]["drained_completely"][0] is True


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
    # Every request mjhook answered in the round sits in the durable queue (wrk may count a few
    # answers fewer than the server sent, never more).
    [run] = report["runs"]["mjhook"]
    assert run["queued"] >= run["acked"]
    assert report["queue"]["aof_enabled"] == 1
    assert report["failures"] == []
