"""bench/memory.py: the peak counts only when the video was stored whole."""

from __future__ import annotations

import argparse
from typing import Any

import memory

MIB = 1024 * 1024
ARGS = argparse.Namespace(mb=500, processes=2)
#: One worker process well under the 200 MB target (KiB), idle and after.
TREE = {1: {"VmRSS": 60_000, "VmHWM": 60_000, "Pss": 50_000}}
PEAKS = {"VmRSS": 60.0, "Pss": 50.0}


def summarize(task: dict[str, Any]) -> dict[str, Any]:
    return memory.summarize(ARGS, TREE, TREE, PEAKS, {"fields": {}, "seconds": 0.1} | task)


def test_a_video_task_that_failed_is_no_pass() -> None:
    """Given a video task that ended failed (nothing in the bucket), the tree well under 200 MB
    When the run is summarized
    Then the peak's verdict is FAILED and the failure says how the task ended."""
    report = summarize({"state": "failed", "stored_bytes": None})

    assert report["figures"]["peak_mb"][2] == "FAILED"
    assert report["failures"] == ["the video task ended failed, not stored"]


def test_a_stored_video_of_the_wrong_size_is_no_pass() -> None:
    """Given a video task recorded stored whose object in the bucket is 1 MiB short
    When the run is summarized
    Then the peak's verdict is FAILED."""
    report = summarize({"state": "stored", "stored_bytes": 499 * MIB})

    assert report["figures"]["peak_mb"][2] == "FAILED"
    assert report["failures"] == [f"the stored video holds {499 * MIB} bytes, not {500 * MIB}"]


def test_a_video_stored_whole_is_judged_on_the_peak() -> None:
    """Given a video task stored with all 500 MiB in the bucket
    When the run is summarized
    Then the peak is judged against 200 MB and no failure is listed."""
    report = summarize({"state": "stored", "stored_bytes": 500 * MIB})

    assert report["figures"]["peak_mb"][2] == "PASS"
    assert report["failures"] == []
