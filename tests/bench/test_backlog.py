"""bench/backlog.py: each drain window measures its backlog near its nominal size."""

from __future__ import annotations

import argparse
import math
from typing import Any

import backlog


class DrainingRedis:
    """The two counts a drain phase reads (the queue's length, the callbacks recorded failed),
    drained by ``per_s`` callbacks a second as the fake clock advances."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self.queued = 0
        self.failed = 0
        self.now = 0.0

    def llen(self, key: str) -> int:
        assert key == backlog.QUEUE_KEY
        return self.queued

    def zcard(self, key: str) -> int:
        assert key == backlog.FAILED_KEY
        return self.failed

    def sleep(self, seconds: float) -> None:
        drained = min(self.queued, round(self.per_s * seconds))
        self.queued -= drained
        self.failed += drained
        self.now += seconds


class FakeBacklog:
    def __init__(self, size: int, client: DrainingRedis) -> None:
        self.size = size
        self.client = client
        self.top_ups = 0

    def top_up(self) -> None:
        self.top_ups += 1
        self.client.queued = max(self.client.queued, self.size)


def window(queued: int, per_s: float) -> dict[str, Any]:
    return {"backlog_at_start": queued, "per_s": per_s}


def test_every_window_starts_with_the_backlog_topped_up() -> None:
    """Given a backlog of 429 that the workers drain at 100 callbacks/s
    When 5 windows of 1 s are measured
    Then each starts with 429 queued (topped up before it) and measures 100/s."""
    redis = DrainingRedis(per_s=100.0)
    small = FakeBacklog(429, redis)

    windows = backlog.measure_windows(small, 1.0, clock=lambda: redis.now, sleep=redis.sleep)

    assert [w["backlog_at_start"] for w in windows] == [429] * backlog.WINDOWS
    assert [w["per_s"] for w in windows] == [100.0] * backlog.WINDOWS
    assert small.top_ups == backlog.WINDOWS


def test_windows_below_80_percent_of_the_backlog_are_flagged_and_left_out() -> None:
    """Given windows that started with 429, 400, 300, 120 and 9 of a nominal 429 queued
    When the phase's rate is taken
    Then the last three (below 343) are flagged and the median is that of the first two."""
    windows = [
        window(429, 500.0),
        window(400, 520.0),
        window(300, 300.0),
        window(120, 200.0),
        window(9, 20.0),
    ]

    phase = backlog.phase_rate(windows, 429)

    assert [w["below_backlog"] for w in phase["windows"]] == [False, False, True, True, True]
    assert (phase["per_s"], phase["windows_kept"]) == (510.0, 2)


def test_a_phase_with_every_window_below_its_backlog_fails_the_figure() -> None:
    """Given a small-backlog phase whose windows all started below 80 % of it
    When the rounds are summarized
    Then the drain figure is FAILED and the phase is listed."""
    args = argparse.Namespace(count=10_000, rounds=1, window=2.0, full_drain=False, drain_timeout=60.0)
    results = {
        "small": [backlog.phase_rate([window(400, 50.0)] * backlog.WINDOWS, 1000)],
        "large": [backlog.phase_rate([window(9900, 500.0)] * backlog.WINDOWS, 10_000)],
    }

    report = backlog.summarize(results, args, memory={})

    assert math.isnan(report["figures"]["drain_large_vs_small"][0])
    assert report["figures"]["drain_large_vs_small"][2] == "FAILED"
    assert report["failures"] == ["small phase 1: every window started below 80% of its backlog"]


def test_phases_near_their_backlogs_are_judged_on_the_ratio() -> None:
    """Given both phases' windows at their backlogs, the large one draining at 0.95x the small
    When the rounds are summarized
    Then the figure is 0.95x, PASS, with no failure."""
    args = argparse.Namespace(count=10_000, rounds=1, window=2.0, full_drain=False, drain_timeout=60.0)
    results = {
        "small": [backlog.phase_rate([window(1000, 500.0)] * backlog.WINDOWS, 1000)],
        "large": [backlog.phase_rate([window(10_000, 475.0)] * backlog.WINDOWS, 10_000)],
    }

    report = backlog.summarize(results, args, memory={})

    assert report["figures"]["drain_large_vs_small"] == [0.95, 0.9, "PASS"]
    assert report["failures"] == []
