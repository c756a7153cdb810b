"""bench/pipeline.py: throughput counts stored tasks only, a run that did not store every task
(in time) fails the figures resting on it, and --only names variants that exist."""

from __future__ import annotations

import argparse
from typing import Any

import pipeline
import pytest

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


class StuckRedis:
    """The task records a run reads (HMGET state, updatedAt through a pipeline): every task
    ``processing`` for ever, but ``ended`` (stored at 1000 ms)."""

    def __init__(self, ended: set[str]) -> None:
        self.ended = ended
        self.reads: list[str] = []
        self.now = 0.0

    def pipeline(self, *, transaction: bool) -> StuckRedis:
        return self

    def hmget(self, key: str, *fields: str) -> None:
        assert fields == ("state", "updatedAt")
        self.reads.append(key)

    def execute(self) -> list[tuple[bytes, bytes]]:
        keys, self.reads = self.reads, []
        return [
            (b"stored", b"1000") if any(key.endswith(task) for task in self.ended) else (b"processing", b"0")
            for key in keys
        ]

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_run_whose_tasks_never_end_stops_waiting_and_fails_without_ending_the_benchmark() -> None:
    """Given a run of 2 tasks, one stored, one processing for ever
    When the run waits for them (a timeout of 1 s) and its outcome is taken
    Then the wait returns, the run is marked timed out and not ok, and summarizing it lists
    the failure (so main saves the report, then exits 1)."""
    grids = [pipeline.Grid("{}", ("u0",), TASK_BYTES), pipeline.Grid("{}", ("u1",), TASK_BYTES)]
    redis = StuckRedis(ended={"task-0"})

    records = pipeline.await_final(
        redis, ["task-0", "task-1"], timeout_s=1.0, clock=lambda: redis.now, sleep=redis.sleep
    )
    run = pipeline.mjhook_outcome(grids, records, started=0.0)
    report = pipeline.summarize({"mjhook": [run]}, argparse.Namespace(tasks=2), 2 * TASK_BYTES)

    assert records == [("stored", 1000), ("processing", 0)]
    assert (run["timed_out"], run["ok"], run["stored"]) == (True, False, 1)
    assert report["failures"] == [
        "mjhook round 1: 1 of 2 tasks stored ({'stored': 1, 'processing': 1}),"
        " the others not ended within 600 s"
    ]


def test_a_timed_out_run_ends_the_rounds_and_fails_the_figures() -> None:
    """Given round 2's mjhook run timed out, so raw and naive ran once only
    When the rounds are summarized
    Then the figures say FAILED (the pairs that ran are compared, nothing raises)."""
    timed_out = mjhook_run(600.0, stored=39, processing=1) | {"timed_out": True}
    results = {
        "mjhook": [mjhook_run(4.0, stored=40), timed_out],
        "raw": [baseline_run(4.0)],
        "naive": [baseline_run(8.0)],
    }

    report = pipeline.summarize(results, TASKS, RUN_BYTES)

    assert report["figures"] == {
        "mjhook_vs_raw": [1.0, 0.8, "FAILED"],
        "mjhook_vs_naive": [2.0, 5.0, "FAILED"],
    }


@pytest.mark.parametrize("only", [["--only"], ["--only", "mjhook", "rwa"]], ids=["none", "unknown"])
def test_only_must_name_known_variants(only: list[str]) -> None:
    """Given --only naming nothing, or a variant that does not exist
    When the arguments are parsed
    Then the script stops with a usage error (status 2) instead of measuring nothing."""
    with pytest.raises(SystemExit) as stopped:
        pipeline.parse_args(only)

    assert stopped.value.code == 2


def test_only_picks_the_variants_named() -> None:
    assert pipeline.parse_args(["--only", "mjhook", "raw"]).only == ["mjhook", "raw"]
