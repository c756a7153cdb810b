"""Tasks mjhook submitted itself, in a real Redis: the ``submitted`` state, its moves, the indexes
the poller and ``mjhook recover`` read, and the counts for ``mjhook status``."""

from __future__ import annotations

import pytest
import redis

from shared import keys
from shared.submitted import MAX_POLL_HANDOFFS, SubmittedTasks
from shared.taskstate import TaskState, TaskStore
from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def tasks(client: redis.Redis, clock: FakeClock) -> TaskStore:
    return TaskStore(client, ttl_s=3600, clock=clock)


@pytest.fixture
def submitted(client: redis.Redis, tasks: TaskStore, clock: FakeClock) -> SubmittedTasks:
    return SubmittedTasks(client, tasks, ttl_s=3600, clock=clock)


def test_a_submitted_task_moves_to_received_when_its_callback_comes(
    tasks: TaskStore, submitted: SubmittedTasks, client: redis.Redis
) -> None:
    submitted.record("t1", {"taskType": "mj_txt2img", "params": '{"prompt":"p"}'})
    assert tasks.mark_received("t1", "now") is TaskState.SUBMITTED
    record = tasks.get("t1")
    assert record is not None
    assert record.state is TaskState.RECEIVED
    assert record.fields["receivedAt"] == "now"
    assert record.fields["params"] == '{"prompt":"p"}'
    assert record.fields["submittedAt"].endswith("Z")
    assert client.zcard(keys.state_index("submitted")) == 0
    assert client.zcard(keys.state_index("received")) == 1


@pytest.mark.parametrize(
    "state", [TaskState.PROCESSING, TaskState.STORED, TaskState.PARTIAL, TaskState.FAILED]
)
def test_received_never_replaces_a_state_past_submitted(tasks: TaskStore, state: TaskState) -> None:
    tasks.move("t1", state)
    assert tasks.mark_received("t1", "late") is state
    assert tasks.get("t1").state is state  # type: ignore[union-attr]


def test_a_task_whose_callback_came_first_is_not_set_back_to_submitted(
    tasks: TaskStore, submitted: SubmittedTasks, client: redis.Redis
) -> None:
    tasks.mark_received("t1", "early")
    submitted.record("t1", {"taskType": "mj_txt2img"})
    assert tasks.get("t1").state is TaskState.RECEIVED  # type: ignore[union-attr]
    # It is still one of the tasks mjhook submitted (for recover), but not waiting
    assert [task_id for task_id, _ in submitted.since(60)] == ["t1"]
    assert client.zcard(keys.state_index("submitted")) == 0


def test_move_from_moves_only_a_task_still_in_the_expected_state(tasks: TaskStore) -> None:
    tasks.mark_submitted("waiting")
    tasks.mark_submitted("called-back")
    tasks.mark_received("called-back", "now")
    assert (
        tasks.move_from("waiting", TaskState.SUBMITTED, TaskState.FAILED, reason="r") is TaskState.SUBMITTED
    )
    assert tasks.move_from("called-back", TaskState.SUBMITTED, TaskState.FAILED) is TaskState.RECEIVED
    assert tasks.get("waiting").state is TaskState.FAILED  # type: ignore[union-attr]
    assert tasks.get("called-back").state is TaskState.RECEIVED  # type: ignore[union-attr]


def test_state_counts_keep_their_shape_and_submitted_ones_are_counted_apart(
    tasks: TaskStore, submitted: SubmittedTasks, client: redis.Redis, clock: FakeClock
) -> None:
    # Given two tasks submitted 100 s ago, one 10 s ago, and one received
    for task_id in ("old-1", "old-2"):
        submitted.record(task_id, {})
    clock.now += 90
    submitted.record("new", {})
    tasks.mark_received("other", "now")
    clock.now += 10
    # Then the contract's counts are unchanged, and submitted ones come from submitted_counts()
    assert tasks.counts() == {"received": 1, "processing": 0, "stored": 0, "partial": 0, "failed": 0}
    assert TaskStore(client, ttl_s=3600).submitted_counts(clock.now, 50) == {"submitted": 3, "overdue": 2}
    assert TaskStore(client, ttl_s=3600).submitted_counts(clock.now, 5) == {"submitted": 3, "overdue": 3}


def test_due_lists_waiting_tasks_past_the_grace_never_polled_first(
    tasks: TaskStore, submitted: SubmittedTasks, clock: FakeClock
) -> None:
    submitted.record("first", {})
    clock.now += 5
    submitted.record("second", {})
    clock.now += 5
    submitted.record("third", {})
    tasks.mark_received("second", "now")
    clock.now += 3
    assert submitted.due(5, 30, limit=10) == [("first", 1_000_000.0)]
    assert [task_id for task_id, _ in submitted.due(0, 30, limit=10)] == ["first", "third"]
    submitted.mark_polled("first", keep_s=1000)
    assert [task_id for task_id, _ in submitted.due(0, 30, limit=10)] == ["third"]  # polled just now
    clock.now += 31
    assert [task_id for task_id, _ in submitted.due(0, 30, limit=10)] == ["third", "first"]
    assert [task_id for task_id, _ in submitted.due(0, 30, limit=1)] == ["third"]
    assert [task_id for task_id, _ in submitted.since(40)] == ["second", "third"]


def test_since_goes_back_no_further_than_the_task_ttl(
    client: redis.Redis, submitted: SubmittedTasks, clock: FakeClock
) -> None:
    """Given a task submitted past the TTL (3600 s), its record gone but its index entry kept (the
    index is trimmed only when a task is submitted), and one within it
    When a window longer than the TTL is asked for
    Then only the one within it is listed: nothing says whether the older one ended."""
    submitted.record("old", {})
    clock.now += 3000
    submitted.record("new", {})
    clock.now += 1000
    client.delete(keys.task("old"))
    assert [task_id for task_id, _ in submitted.since(10 * 3600)] == ["new"]
    assert [task_id for task_id, _ in submitted.since(3600)] == ["new"]
    assert client.zscore(keys.SUBMITTED, "old") is not None


def test_poll_marks_are_kept_until_forgotten_or_too_old(
    client: redis.Redis, submitted: SubmittedTasks, clock: FakeClock
) -> None:
    submitted.mark_polled("a", keep_s=100)
    clock.now += 60
    submitted.mark_polled("b", keep_s=100)
    assert client.zmscore(keys.POLLED, ["a", "b", "c"]) == [1_000_000_000.0, 1_000_060_000.0, None]
    submitted.forget_polled("b")
    clock.now += 50
    submitted.mark_polled("c", keep_s=100)  # "a" is now 110 s old: dropped
    assert client.zmscore(keys.POLLED, ["a", "b", "c"]) == [None, None, 1_000_110_000.0]


def test_due_reaches_a_task_never_polled_behind_any_number_of_polled_ones(
    client: redis.Redis, tasks: TaskStore, submitted: SubmittedTasks, clock: FakeClock
) -> None:
    """The review's case: 10,000 older tasks all polled within the interval (the old scan window
    held exactly those), and a newer one never polled: it is the one due, first."""
    old = [f"old-{i}" for i in range(10_000)]
    pipe = client.pipeline(transaction=False)
    waiting = keys.state_index(TaskState.SUBMITTED)
    pipe.zadd(waiting, {task_id: int(clock.now * 1000) for task_id in old})
    pipe.execute()
    clock.now += 1
    submitted.record("newest", {})
    clock.now += 100
    client.zadd(keys.POLLED, {task_id: int(clock.now * 1000) for task_id in old})
    clock.now += 10
    assert submitted.due(50, 30, limit=5) == [("newest", 1_000_001.0)]


def test_due_reads_no_more_than_its_limit_of_never_polled_tasks_and_leaves_no_scratch_key(
    client: redis.Redis, submitted: SubmittedTasks, clock: FakeClock
) -> None:
    """Given 20,000 tasks waiting, never polled, all due
    When a pass asks for 5
    Then it gets the 5 oldest, and Redis sent about 5 tasks' worth of bytes, not 20,000 (the old
    read sent every never-polled waiting task on each pass); the scratch set is gone."""
    waiting = keys.state_index(TaskState.SUBMITTED)
    client.zadd(waiting, {f"task-{i:05d}": int(clock.now * 1000) + i for i in range(20_000)})
    clock.now += 100
    sent_before = int(client.info("stats")["total_net_output_bytes"])

    due = submitted.due(50, 30, limit=5)

    sent = int(client.info("stats")["total_net_output_bytes"]) - sent_before
    assert [task_id for task_id, _ in due] == [f"task-{i:05d}" for i in range(5)]
    assert sent < 20_000  # the stats reply itself is a few KB; all 20,000 ids would be > 300 KB
    assert client.keys(keys.DUE_SCRATCH.format(token="*")) == []


def test_a_task_is_handed_back_to_polling_a_few_times_at_most(
    tasks: TaskStore, submitted: SubmittedTasks
) -> None:
    """Given a task whose last attempts keep handing it back to the polling fallback (the provider
    answers polls, and then keeps refusing the fresh links), then after MAX_POLL_HANDOFFS the
    hand-off is refused and the task keeps its state: its message ends it. Each hand-off reset its
    wait, so it went round for good."""
    for _ in range(MAX_POLL_HANDOFFS):
        tasks.mark_received("t1", "2026-11-25T00:00:00.000Z")  # polled: its result queued again
        assert submitted.may_wait_again("t1")
        assert submitted.wait_again("t1")
        assert tasks.get("t1").state is TaskState.SUBMITTED  # type: ignore[union-attr]
    tasks.mark_received("t1", "2026-11-25T00:00:00.000Z")
    assert not submitted.may_wait_again("t1")
    assert not submitted.wait_again("t1")
    assert tasks.get("t1").state is TaskState.RECEIVED  # type: ignore[union-attr]


def test_a_hand_off_count_that_is_no_number_counts_as_none(
    tasks: TaskStore, submitted: SubmittedTasks
) -> None:
    tasks.mark_received("t1", "2026-11-25T00:00:00.000Z")
    tasks.move("t1", TaskState.RECEIVED, pollHandOffs="²")  # a digit to str.isdigit, not to int()
    assert submitted.may_wait_again("t1")


def test_a_task_another_message_handed_back_is_left_to_the_fallback(
    tasks: TaskStore, submitted: SubmittedTasks, clock: FakeClock
) -> None:
    """Given a task whose callback and its duplicate both reach their last attempt while the
    provider cannot verify results: the first handed the task back to the polling fallback
    When the second hands it back too, and the queue gives up on that message
    Then the task stays submitted, due for a poll: the second's give-up failed it (a failed
    manifest) and the fallback never looked at it again, its result lost."""
    tasks.mark_received("t1", "2026-11-25T00:00:00.000Z")
    assert submitted.wait_again("t1")

    assert submitted.wait_again("t1")
    assert tasks.give_up("t1", "gave up: the provider answered 455").state is TaskState.SUBMITTED

    assert tasks.get("t1").state is TaskState.SUBMITTED  # type: ignore[union-attr]
    clock.now += 3600
    assert [task_id for task_id, _ in submitted.due(60, 30, limit=10)] == ["t1"]


def test_a_hand_back_cut_short_before_the_index_is_completed_by_the_next(
    tasks: TaskStore, submitted: SubmittedTasks, client: redis.Redis, clock: FakeClock
) -> None:
    # Given a task moved back to submitted whose entry in the polling index was not written (its
    # worker died between the two)
    tasks.mark_received("t1", "2026-11-25T00:00:00.000Z")
    assert submitted.wait_again("t1")
    client.zrem(keys.SUBMITTED, "t1")
    # When another message of it hands it back
    assert submitted.wait_again("t1")
    # Then it is in the index, due for a poll
    clock.now += 3600
    assert [task_id for task_id, _ in submitted.due(60, 30, limit=10)] == ["t1"]


def test_a_task_handed_back_waits_a_whole_grace_again_whatever_its_old_poll_mark(
    tasks: TaskStore, submitted: SubmittedTasks, clock: FakeClock
) -> None:
    """Given a submitted task polled once (still generating), whose callback then came, and whose
    last attempt handed it back to the polling fallback long after (submitted again, as of then)
    When a pass looks for due tasks within the grace of that hand-back
    Then the task is not due yet, though its old poll mark is older than the interval: it is
    "polled once the grace has passed" (SubmittedTasks.wait_again), as a task never polled is."""
    submitted.record("t1", {})
    clock.now += 100
    assert [task_id for task_id, _ in submitted.due(60, 30, limit=10)] == ["t1"]
    submitted.mark_polled("t1", keep_s=3000)
    tasks.mark_received("t1", "2026-11-25T00:00:00.000Z")
    clock.now += 1000
    assert submitted.wait_again("t1")

    clock.now += 30  # the mark is 1030 s old; the hand-back 30 s
    assert submitted.due(60, 30, limit=10) == []
    clock.now += 30  # the grace has passed since the hand-back
    assert [task_id for task_id, _ in submitted.due(60, 30, limit=10)] == ["t1"]


@pytest.mark.parametrize("state", [TaskState.STORED, TaskState.FAILED])
def test_a_task_that_reached_an_end_is_not_handed_back_to_polling(
    tasks: TaskStore, submitted: SubmittedTasks, client: redis.Redis, state: TaskState
) -> None:
    """Given a task already stored or failed (another message of it finished it)
    When a last attempt of a message of it asks to hand it back to the polling fallback
    Then the hand-back is refused (False: the attempt's error stands) and the task is in no
    polling index: True would have the attempt end quietly, left to a fallback that never polls
    a task that is not submitted."""
    tasks.mark_received("t1", "2026-11-25T00:00:00.000Z")
    tasks.move("t1", state)

    assert submitted.wait_again("t1") is False

    assert tasks.get("t1").state is state  # type: ignore[union-attr]
    assert client.zscore(keys.SUBMITTED, "t1") is None
