"""The index of submitted tasks naming a member that is no UTF-8 text (written by hand, or another
program): left out of the window, never an error that hides every other task."""

from __future__ import annotations

import redis

from shared import keys
from shared.submitted import SubmittedTasks
from shared.taskstate import TaskState, TaskStore
from tests.support.clock import FakeClock


def test_a_member_that_is_no_utf8_is_left_out_or_kept_as_its_bytes(client: redis.Redis) -> None:
    clock = FakeClock(1_000_000.0)
    submitted = SubmittedTasks(client, TaskStore(client, ttl_s=3600), ttl_s=3600, clock=clock)
    client.zadd(keys.SUBMITTED, {b"t-old": 999_990_000, b"\xff\xfe-odd": 999_995_000, b"t-new": 999_998_000})
    # since() leaves it out (it raised UnicodeDecodeError), since_all() keeps it in its place
    assert submitted.since(60) == [("t-old", 999_990.0), ("t-new", 999_998.0)]
    assert submitted.since_all(60) == [
        ("t-old", 999_990.0),
        (b"\xff\xfe-odd", 999_995.0),
        ("t-new", 999_998.0),
    ]


def test_a_submitted_member_that_is_no_utf8_is_left_out_of_the_polling(client: redis.Redis) -> None:
    """Given the state index of submitted tasks and the poll marks each naming, beside real
    tasks, a member that is no UTF-8 text
    Then the tasks due are the real ones: that member made every pass of the polling fallback
    end in UnicodeDecodeError, no task polled."""
    clock = FakeClock(1_000_000.0)
    tasks = TaskStore(client, ttl_s=3600)
    submitted = SubmittedTasks(client, tasks, ttl_s=3600, clock=clock)
    waiting = keys.state_index(TaskState.SUBMITTED)
    client.zadd(waiting, {b"never": 999_000_000, b"\xff-odd": 999_001_000, b"polled": 999_002_000})
    client.zadd(keys.POLLED, {b"\xff-odd": 999_500_000, b"polled": 999_500_000})

    assert submitted.due(grace_s=60, interval_s=60, limit=10) == [("never", 999_000.0), ("polled", 999_002.0)]
