"""bench/memory.py: the peak, in decimal MB like its target, counts only when the video was
stored whole in time."""

from __future__ import annotations

import argparse
from typing import Any

import memory

MIB = 1024 * 1024
ARGS = argparse.Namespace(mb=500, processes=2)
#: One worker process well under the 200 MB target (KiB: 61.44 MB), idle and after.
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


def test_the_peak_is_in_decimal_mb_like_its_target() -> None:
    """Given a worker tree whose VmHWM sums to 200,000 KiB: 204.8 MB (195.3 MiB), the video
    stored whole
    When the run is summarized
    Then the peak is 204.8 MB, over the <= 200 MB target: MISS."""
    tree = {1: {"VmRSS": 200_000, "VmHWM": 200_000, "Pss": 190_000}}
    task = {"state": "stored", "stored_bytes": 500 * MIB, "fields": {}, "seconds": 5.0}

    report = memory.summarize(ARGS, tree, tree, {"VmRSS": 204.8, "Pss": 194.6}, task)

    assert report["peak_mb"] == 204.8
    assert report["figures"]["peak_mb"] == [204.8, 200.0, "MISS"]
    assert report["unit"] == "MB = 10**6 bytes"


class Clock:
    """A fake clock that ``sleep`` advances."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_video_task_that_never_ends_is_watched_until_the_timeout_only() -> None:
    """Given a video task that stays processing
    When the tree is watched with a timeout of 1 s
    Then the watch returns (the report can still be saved) with the task timed out, the last
    state read and the peak of the samples."""
    clock = Clock()
    taken: list[float] = []

    def sample() -> dict[str, float]:
        taken.append(50.0 + len(taken) % 3)
        return {"VmRSS": taken[-1]}

    task = memory.watch_video(
        lambda: "processing", sample, timeout_s=1.0, clock=lambda: clock.now, sleep=clock.sleep
    )

    assert (task["state"], task["timed_out"]) == ("processing", True)
    assert task["peaks"] == {"VmRSS": 52.0}


def test_a_video_task_that_timed_out_fails_the_figure() -> None:
    """Given a video task still processing when the watch timed out
    When the run is summarized
    Then the peak's verdict is FAILED and the failure says it did not end in time."""
    report = summarize({"state": "processing", "timed_out": True, "stored_bytes": None})

    assert report["figures"]["peak_mb"][2] == "FAILED"
    assert report["failures"] == ["the video task did not end within 600 s (left processing)"]
