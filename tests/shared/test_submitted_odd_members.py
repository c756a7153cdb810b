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


NOW = 1_800_000_000.0


def seed_polled(client: redis.Redis, odd: list[bytes], tasks: int) -> None:
    """``tasks`` submitted tasks, each polled once long ago, after as many ``odd`` members (no
    UTF-8 text) polled before them."""
    waiting = keys.state_index(TaskState.SUBMITTED)
    old_ms = int((NOW - 10_000) * 1000)
    for i, member in enumerate(odd):
        client.zadd(waiting, {member: old_ms})
        client.zadd(keys.POLLED, {member: old_ms - 1000 + i})
    for i in range(tasks):
        client.zadd(waiting, {f"t{i:03d}": old_ms})
        client.zadd(keys.POLLED, {f"t{i:03d}": old_ms + i})


def due_now(client: redis.Redis, limit: int) -> list[str]:
    submitted = SubmittedTasks(client, TaskStore(client, ttl_s=86_400), ttl_s=86_400, clock=lambda: NOW)
    return [task_id for task_id, _ in submitted.due(60, 60, limit=limit)]


def test_odd_poll_marks_make_no_task_due_twice_nor_hide_those_after_them(client: redis.Redis) -> None:
    # One odd mark: the page offset counted only the readable ones, and a task came twice
    seed_polled(client, [b"\xff"], 150)
    due = due_now(client, 100)
    assert len(due) == len(set(due)) == 100
    # A whole page of odd marks: the walk ended there, the tasks after it never due again
    client.flushdb()
    seed_polled(client, [b"\xff" + bytes([i]) for i in range(100)], 5)
    assert due_now(client, 5) == [f"t{i:03d}" for i in range(5)]


def test_odd_never_polled_members_do_not_hide_newer_tasks(client: redis.Redis) -> None:
    # Given more odd members than a pass takes, the oldest of the never-polled
    waiting = keys.state_index(TaskState.SUBMITTED)
    old_ms = int((NOW - 10_000) * 1000)
    client.zadd(waiting, {b"\xff" + bytes([i]): old_ms - 1000 + i for i in range(10)})
    client.zadd(waiting, {f"n{i}": old_ms + i for i in range(3)})
    # Then the tasks after them are due (the batch was filled with them, every pass)
    assert due_now(client, 3) == ["n0", "n1", "n2"]
    assert client.keys(keys.DUE_SCRATCH.format(token="*")) == []
