"""Review reproductions: the benchmarks' verdicts ignore failed requests / tasks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import ingress_ack  # noqa: E402
import memory  # noqa: E402
import pipeline  # noqa: E402


def _wrk(rps: float, status_errors: int) -> dict:
    requests = int(rps * 10)
    return {
        "requests": requests, "duration_us": 10_000_000, "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0,
        "server_cpu_ms_per_req": 0.1, "redis_cpu_ms_per_req": 0.0, "failed": status_errors,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": status_errors, "timeout": 0},
        "queued": 0,
    }


def test_ingress_rps_counts_non_2xx_answers_and_still_passes() -> None:
    # mjhook answered every request with a 503 (nothing queued), yet its req/s counts them.
    results = {
        "mjhook": [_wrk(20000, 200000)],
        "bare_falcon": [_wrk(20000, 0)],
        "express": [_wrk(5000, 0)],
    }
    args = argparse.Namespace(paced_rate=0, candidate=None)
    report = ingress_ack.summarize(results, {}, args, {"aof_enabled": 1, "appendfsync": "always"})
    assert report["figures"]["mjhook_rps_vs_bare_falcon"][2] == "PASS"
    assert report["figures"]["mjhook_rps_vs_express"][2] == "PASS"
    assert report["queue"]["acked_in_rounds"] == 0  # nothing acknowledged, nothing queued


def test_pipeline_counts_failed_tasks_as_throughput() -> None:
    args = argparse.Namespace(tasks=40)
    results = {
        "mjhook": [{"seconds": 1.0, "states": {"failed": 40}, "ok": False}],
        "raw": [{"seconds": 6.0, "bytes": 1, "ok": True}],
        "naive": [{"seconds": 80.0, "ok": True}],
    }
    report = pipeline.summarize(results, args, 260_000_000)
    assert report["figures"]["mjhook_vs_raw"][2] == "PASS"
    assert report["figures"]["mjhook_vs_naive"][2] == "PASS"


def test_memory_passes_when_the_video_was_not_stored() -> None:
    args = argparse.Namespace(mb=500, processes=2)
    tree = {1: {"VmRSS": 60_000, "VmHWM": 60_000, "Pss": 50_000}}
    report = memory.summarize(args, tree, tree, {"VmRSS": 60.0, "Pss": 50.0},
                              {"state": "failed", "fields": {}, "seconds": 0.1})
    assert report["figures"]["peak_mb"][2] == "PASS"
