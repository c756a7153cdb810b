"""bench/pipeline.py: throughput counts stored tasks only, and a run that did not store every task
fails the figures resting on it."""

from __future__ import annotations

import argparse
from typing import Any

import pipeline

TASKS = argparse.Namespace(tasks=40)
#: The bytes of one task's 4 files, and of a run's 40 tasks.
TASK_BYTES = 6_500_000
RUN_BYTES = 40 * TASK_BYTES


def mjhook_run(seconds: float, **states: int) -> dict[str, Any]:
    stored = states.get("stored", 0)
    return {
        "seconds": seconds,
        "states": states,
        "stored": stored,
        "stored_bytes": stored * TASK_BYTES,
        "ok": states == {"stored": 40},
    }


def baseline_run(seconds: float) -> dict[str, Any]:
    return {"seconds": seconds, "stored": 40, "stored_bytes": RUN_BYTES, "ok": True}


def test_tasks_that_ended_failed_are_no_throughput_and_fail_the_figures() -> None:
    """Given an mjhook round in which all 40 tasks ended failed, in 1 s
    When the rounds are summarized
    Then mjhook stored 0 tasks/s and 0 MB/s, both figures are FAILED, and the run is listed."""
    results = {
        "mjhook": [mjhook_run(1.0, failed=40)],
        "raw": [baseline_run(6.0)],
        "naive": [baseline_run(80.0)],
    }

    report = pipeline.summarize(results, TASKS, RUN_BYTES)

    [run] = report["runs"]["mjhook"]
    assert (run["tasks_per_s"], run["mb_per_s"]) == (0.0, 0.0)
    assert report["figures"]["mjhook_vs_raw"][2] == "FAILED"
    assert report["figures"]["mjhook_vs_naive"][2] == "FAILED"
    assert report["failures"] == ["mjhook round 1: 0 of 40 tasks stored ({'failed': 40})"]


def test_a_partly_stored_run_counts_the_stored_tasks_and_their_bytes_only() -> None:
    """Given an mjhook round that stored 30 of 40 tasks (10 partial) in 2 s
    When the rounds are summarized
    Then its throughput is 15 tasks/s and the bytes of those 30 per second, and it fails."""
    results = {"mjhook": [mjhook_run(2.0, stored=30, partial=10)], "raw": [baseline_run(2.0)]}

    report = pipeline.summarize(results, TASKS, RUN_BYTES)

    [run] = report["runs"]["mjhook"]
    assert run["tasks_per_s"] == 15.0
    assert run["mb_per_s"] == 30 * TASK_BYTES / 1e6 / 2.0
    assert report["figures"]["mjhook_vs_raw"] == [0.75, 0.8, "FAILED"]


def test_runs_that_stored_everything_keep_their_verdicts() -> None:
    """Given rounds in which every variant stored all 40 tasks
    When the rounds are summarized
    Then the figures are judged on their values and no failure is listed."""
    results = {
        "mjhook": [mjhook_run(4.0, stored=40)],
        "raw": [baseline_run(4.0)],
        "naive": [baseline_run(8.0)],
    }

    report = pipeline.summarize(results, TASKS, RUN_BYTES)

    assert report["failures"] == []
    assert report["figures"] == {"mjhook_vs_raw": [1.0, 0.8, "PASS"], "mjhook_vs_naive": [2.0, 5.0, "MISS"]}
