"""Task state records in a real Redis."""

from __future__ import annotations

import redis

from shared import keys
from shared.taskstate import TaskState, TaskStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_received_is_recorded_only_for_a_new_task(client: redis.Redis) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    assert tasks.mark_received("t1", "first") is None
    tasks.move("t1", TaskState.STORED)
    assert tasks.mark_received("t1", "second") is TaskState.STORED
    record = tasks.get("t1")
    assert record is not None
    assert record.state is TaskState.STORED
    assert record.fields["receivedAt"] == "first"


def test_moves_keep_the_state_counts_and_the_recent_index(client: redis.Redis) -> None:
    clock = FakeClock()
    tasks = TaskStore(client, ttl_s=3600, recent_keep=2, clock=clock)
    for task_id in ("a", "b", "c"):
        clock.now += 1
        tasks.mark_received(task_id, "now")
    clock.now += 1
    tasks.move("a", TaskState.PROCESSING)
    assert tasks.move("a", TaskState.FAILED, reason="boom") is TaskState.PROCESSING
    counts = tasks.counts()
    assert counts == {"received": 2, "processing": 0, "stored": 0, "partial": 0, "failed": 1}
    assert tasks.get("a").fields["reason"] == "boom"  # type: ignore[union-attr]
    # Capped at two: the oldest change ("b") fell out.
    assert [m.decode() for m in client.zrange(keys.RECENT, 0, -1)] == ["c", "a"]


def test_records_expire_after_the_ttl(client: redis.Redis) -> None:
    tasks = TaskStore(client, ttl_s=120)
    tasks.mark_received("t1", "now")
    assert 0 < client.ttl(keys.task("t1")) <= 120


def test_unknown_task_has_no_record(client: redis.Redis) -> None:
    assert TaskStore(client, ttl_s=60).get("nope") is None
