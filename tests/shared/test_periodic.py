"""shared/periodic.py: the daemon thread doing one step every few seconds, whatever a step meets."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from shared.periodic import PeriodicThread

#: Long enough that no test here waits for a second interval: steps are paced by the test.
LONG_S = 60.0


def test_the_first_step_runs_at_once_when_asked_and_no_step_after_a_stop() -> None:
    ran = threading.Event()
    thread = PeriodicThread(ran.set, interval_s=LONG_S, name="t", what="the step", first_at_once=True)
    thread.start()
    thread.start()  # a second start changes nothing (the ASGI lifespan and wsgi.py both start)
    assert ran.wait(10)
    thread.stop()
    assert not thread.running


def test_without_first_at_once_a_thread_stopped_before_its_interval_runs_no_step() -> None:
    steps: list[int] = []
    thread = PeriodicThread(lambda: steps.append(1), interval_s=LONG_S, name="t", what="the step")
    thread.start()
    thread.stop()
    assert steps == []
    assert not thread.running


def test_a_step_that_raises_is_logged_and_the_next_step_comes(caplog: pytest.LogCaptureFixture) -> None:
    """Given steps raising a Redis outage, then an error nobody foresaw, then succeeding
    Then the thread goes on through both (the heartbeat's ended at the second: its worker then
    looked dead and its messages were handed to others), logging the outage in one line and the
    other error with its traceback."""
    errors: list[BaseException] = [redis.ConnectionError("Redis went away"), ValueError("odd record")]
    done = threading.Event()

    def step() -> None:
        if errors:
            raise errors.pop(0)
        done.set()

    thread = PeriodicThread(step, interval_s=0.01, name="t", what="the step", first_at_once=True)
    with caplog.at_level(logging.WARNING, logger="shared.periodic"):
        thread.start()
        try:
            assert done.wait(10), "the thread ended at an error"
        finally:
            thread.stop()
    [outage, other] = caplog.records
    assert outage.getMessage() == "the step failed: ConnectionError: Redis went away"
    assert outage.exc_info is None
    assert other.getMessage() == "the step failed"
    assert other.exc_info is not None
    assert other.exc_info[0] is ValueError


def test_a_step_returning_false_ends_the_thread() -> None:
    steps: list[int] = []

    def step() -> bool:
        steps.append(1)
        return False

    thread = PeriodicThread(step, interval_s=0.01, name="t", what="the step", first_at_once=True)
    thread.start()
    thread.stop()  # waits for the thread, which ended by itself at the first step
    assert not thread.running
    assert steps == [1]


def test_a_thread_started_again_after_a_stop_runs_steps_again() -> None:
    """An ASGI app served through a second lifespan starts its spool drainer again after its first
    lifespan's shutdown stopped it: a start after a stop did nothing, and the callbacks the app
    then acknowledged from its spool were never drained."""
    runs: list[int] = []
    ran_again = threading.Event()

    def step() -> None:
        runs.append(1)
        if len(runs) == 2:
            ran_again.set()

    thread = PeriodicThread(step, interval_s=LONG_S, name="t", what="the step", first_at_once=True)
    thread.start()
    thread.stop()
    thread.start()
    try:
        assert ran_again.wait(10)
        assert thread.running
    finally:
        thread.stop()
