"""The scheduler runs jobs when due, in due order, on a bounded pool."""

from __future__ import annotations

import threading

from simulator.scheduler import Scheduler
from tests.support.pipeline import wait_for


def test_jobs_run_in_due_order_and_the_scheduler_reports_idle() -> None:
    scheduler = Scheduler(threads=1)
    ran: list[str] = []
    lock = threading.Lock()

    def job(name: str) -> None:
        with lock:
            ran.append(name)

    try:
        scheduler.call_later(0.15, lambda: job("late"))
        scheduler.call_later(0.05, lambda: job("early"))
        scheduler.call_later(0.0, lambda: job("now"))
        assert not scheduler.idle()
        assert scheduler.wait_idle(5.0)
    finally:
        scheduler.stop()
    assert ran == ["now", "early", "late"]


def test_a_failing_job_does_not_stop_the_others() -> None:
    scheduler = Scheduler(threads=2)
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    try:
        scheduler.call_later(0.0, boom)
        scheduler.call_later(0.01, done.set)
        assert done.wait(5.0)
    finally:
        scheduler.stop()


def test_stop_drops_jobs_not_yet_due() -> None:
    scheduler = Scheduler(threads=1)
    ran = threading.Event()
    scheduler.call_later(0.2, ran.set)
    scheduler.stop()
    assert not ran.wait(0.4)


def test_jobs_cancelled_by_stop_before_they_start_no_longer_count_as_running() -> None:
    # Given one thread busy with a job, and a second job due but waiting for that thread
    scheduler = Scheduler(threads=1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def busy() -> None:
        started.set()
        release.wait(5.0)

    scheduler.call_later(0.0, busy)
    scheduler.call_later(0.0, lambda: ran.append("queued"))
    assert started.wait(5.0)
    # (in the pool's queue, not still in the timer's heap, where stop() would merely drop it)
    wait_for(lambda: scheduler.pending() == 0, timeout_s=5.0, what="the second job handed to the pool")
    # When the scheduler stops (cancelling the queued job) and the busy job finishes
    scheduler.stop()
    release.set()
    # Then the scheduler becomes idle: the cancelled job is not counted as running forever
    assert scheduler.wait_idle(5.0)
    assert ran == []
