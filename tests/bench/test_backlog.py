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


class RacingBacklog(backlog.Backlog):
    """backlog.Backlog's top-up, with a fill the workers drain ``lost`` of while it runs."""

    def __init__(self, size: int, client: DrainingRedis, lost: float) -> None:  # no servers
        self.size = size
        self.client = client
        self.lost = lost
        self.fills: list[int] = []

    def fill(self, count: int) -> float:
        self.fills.append(count)
        self.client.queued += count - round(count * self.lost)
        return 0.0


def test_a_top_up_fills_again_what_the_workers_drained_while_it_filled() -> None:
    """Given a backlog of 1000, empty, whose workers drain half of each fill while it runs
    When it is topped up
    Then it fills what they took again, until within 2 % of its size or after 5 fills: 969 queued,
    where one fill left 500 (a window then left out as below 80 %); with nothing drained, one fill."""
    racing = RacingBacklog(1000, DrainingRedis(per_s=0.0), lost=0.5)
    racing.top_up()
    assert racing.fills == [1000, 500, 250, 125, 62]
    assert racing.client.queued == 969

    still = RacingBacklog(1000, DrainingRedis(per_s=0.0), lost=0.0)
    still.top_up()
    assert (still.fills, still.client.queued) == ([1000], 1000)

    nearly = RacingBacklog(1000, DrainingRedis(per_s=0.0), lost=0.0)
    nearly.client.queued = 985
    nearly.top_up()
    assert nearly.fills == []


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


class EndingRedis:
    """The final-state indexes a full drain reads: each poll (one fake sleep) ``per_poll`` more
    callbacks end in ``state``, up to ``count``."""

    def __init__(self, count: int, per_poll: int, state: str) -> None:
        self.count = count
        self.per_poll = per_poll
        self.key = backlog.FINAL_STATE_KEYS[state]
        self.ended = 0
        self.now = 0.0

    def zcard(self, key: str) -> int:
        assert key in backlog.FINAL_STATE_KEYS.values()
        return self.ended if key == self.key else 0

    def sleep(self, seconds: float) -> None:
        self.ended = min(self.count, self.ended + self.per_poll)
        self.now += seconds


def full_drain_result(**changes: Any) -> dict[str, Any]:
    """A full drain of 1000 callbacks, all ended failed in 10 s (100/s in each tenth)."""
    tenths = [
        {"backlog_from_pct": 100 - 10 * tenth, "backlog_at_start": 1000 - 100 * tenth, "per_s": 100.0}
        for tenth in range(10)
    ]
    drain = {
        "callbacks": 1000,
        "timeout_s": 3600.0,
        "enqueued_per_s": 3000.0,
        "seconds": 10.0,
        "done": 1000,
        "ended": {"failed": 1000, "partial": 0, "stored": 0},
        "left_queued": 0,
        "dead": 0,
        "tenths": tenths,
    }
    return drain | changes


FULL_DRAIN_ARGS = argparse.Namespace(count=1000, rounds=1, window=2.0, full_drain=True, drain_timeout=3600.0)


def test_the_drain_wait_ends_when_every_callback_ended_in_any_final_state() -> None:
    """Given 1000 callbacks that all end stored, not failed, 250 per poll
    When the full drain waits for them (a timeout of an hour)
    Then it stops after 4 polls, not at the timeout, and counts them stored."""
    redis = EndingRedis(1000, per_poll=250, state="stored")

    marks, ended = backlog.await_drain(
        redis, 1000, poll_s=1.0, timeout_s=3600.0, clock=lambda: redis.now, sleep=redis.sleep
    )

    assert marks == [(0.0, 0), (1.0, 250), (2.0, 500), (3.0, 750), (4.0, 1000)]
    assert ended == {"failed": 0, "partial": 0, "stored": 1000}


def test_a_full_drain_that_timed_out_fails_its_figures() -> None:
    """Given a full drain that hit its timeout with 400 of 1000 callbacks ended (600 queued)
    When it is summarized
    Then both figures say FAILED and the failure says what was left (so main exits 1)."""
    drain = full_drain_result(
        done=400, ended={"failed": 400, "partial": 0, "stored": 0}, left_queued=600, tenths=[]
    )

    report = backlog.summarize_full_drain(drain, FULL_DRAIN_ARGS)

    assert math.isnan(report["figures"]["drain_full_large_vs_small"][0])
    assert report["figures"]["drain_full_large_vs_small"][2] == "FAILED"
    assert report["figures"]["drained_completely"] == [False, True, "FAILED"]
    assert report["failures"] == [
        "full drain: 400 of 1000 callbacks ended within 3600 s; 600 messages left queued;"
        " the tenths of the drain were not timed"
    ]


def test_callbacks_of_a_full_drain_that_ended_otherwise_than_failed_fail_it() -> None:
    """Given a full drain in which every callback ended, 3 stored, 2 partial, 1 dead-lettered
    When it is summarized
    Then the figures say FAILED and the failure names each."""
    drain = full_drain_result(ended={"failed": 995, "partial": 2, "stored": 3}, dead=1)

    report = backlog.summarize_full_drain(drain, FULL_DRAIN_ARGS)

    assert report["figures"]["drain_full_large_vs_small"][2] == "FAILED"
    assert report["failures"] == [
        "full drain: 2 callbacks ended partial, not failed; 3 callbacks ended stored, not failed;"
        " 1 messages dead-lettered"
    ]


def test_a_complete_full_drain_is_judged_on_its_ratio() -> None:
    """Given a full drain in which every callback ended failed at 100/s throughout
    When it is summarized
    Then the figure is 1.0x, PASS, and no failure is listed."""
    report = backlog.summarize_full_drain(full_drain_result(), FULL_DRAIN_ARGS)

    assert report["figures"]["drain_full_large_vs_small"] == [1.0, 0.9, "PASS"]
    assert report["figures"]["drained_completely"] == [True, True, "PASS"]
    assert report["failures"] == []


def test_drain_phases_in_which_nothing_drained_fail_the_figure() -> None:
    """Given both phases at their backlogs (every window kept) but nothing recorded in any window
    (0 callbacks/s: the workers retried every message, say)
    When the rounds are summarized
    Then the figure is FAILED, not a MISS, and both phases are listed."""
    args = argparse.Namespace(count=10_000, rounds=1, window=2.0, full_drain=False, drain_timeout=60.0)
    results = {
        "small": [backlog.phase_rate([window(1000, 0.0)] * backlog.WINDOWS, 1000)],
        "large": [backlog.phase_rate([window(10_000, 0.0)] * backlog.WINDOWS, 10_000)],
    }

    report = backlog.summarize(results, args, memory={})

    assert report["figures"]["drain_large_vs_small"][2] == "FAILED"
    assert report["failures"] == [
        "small phase 1: nothing drained (median 0 callbacks/s)",
        "large phase 1: nothing drained (median 0 callbacks/s)",
    ]
