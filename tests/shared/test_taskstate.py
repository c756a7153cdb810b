"""Task state records in a real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from shared import keys, taskstate
from shared.errors import LeaseHeld, TaskBusy, TaskRecordUnusable
from shared.taskstate import (
    FINAL_STATES,
    OUTCOME_FIELD,
    GiveUp,
    QueuedMessage,
    Received,
    TaskState,
    TaskStore,
)
from tests.support.acks import with_ack_connection
from tests.support.clock import FakeClock
from tests.support.servers import RedisServer


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
    clock = FakeClock(1_000_000.0)
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


def test_move_from_several_states_moves_a_task_in_any_of_them(client: redis.Redis) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    unfinished = {TaskState.RECEIVED, TaskState.PROCESSING}
    tasks.move("received", TaskState.RECEIVED)
    tasks.move("stored", TaskState.STORED)
    assert tasks.move_from("received", unfinished, TaskState.FAILED, reason="r") is TaskState.RECEIVED
    assert tasks.move_from("stored", unfinished, TaskState.FAILED, reason="r") is TaskState.STORED
    assert tasks.move_from("new", unfinished, TaskState.FAILED, reason="r") is None
    assert {task_id: tasks.get(task_id).state for task_id in ("received", "stored", "new")} == {  # type: ignore[union-attr]
        "received": TaskState.FAILED,
        "stored": TaskState.STORED,
        "new": TaskState.FAILED,
    }
    assert tasks.counts()["stored"] == 1


def test_a_final_state_is_kept_as_the_outcome_while_the_task_is_processed_again(client: redis.Redis) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", TaskState.PARTIAL, reason="#1: gone")
    tasks.move("t1", TaskState.PROCESSING)
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, record.fields[OUTCOME_FIELD]) == (TaskState.PROCESSING, "partial")


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_giving_up_keeps_a_final_state_and_its_reason(client: redis.Redis, state: TaskState) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", state, reason="earlier")
    assert tasks.give_up("t1", "gave up: X") == GiveUp(state, failed_now=False)
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, record.fields["reason"]) == (state, "earlier")


@pytest.mark.parametrize("outcome", [TaskState.STORED, TaskState.PARTIAL])
@pytest.mark.parametrize("replaced", [False, True], ids=["files kept", "a file replaced"])
def test_giving_up_on_a_task_processed_again_brings_back_its_outcome_unless_a_file_was_replaced(
    client: redis.Redis, outcome: TaskState, replaced: bool
) -> None:
    """Its files and manifest are still those of that outcome, unless one of its files was
    replaced since (the outcome forgotten): then its manifest no longer describes them."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", outcome, reason="earlier")
    tasks.move("t1", TaskState.PROCESSING)
    if replaced:
        client.set(keys.lease("t1"), "token")
        assert tasks.forget_outcome("t1", holder="token") is TaskState.PROCESSING
        client.delete(keys.lease("t1"))
    expected = (TaskState.FAILED, "gave up: X") if replaced else (outcome, "earlier")
    assert tasks.give_up("t1", "gave up: X") == GiveUp(expected[0], failed_now=replaced)
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, record.fields["reason"]) == expected
    assert tasks.counts()[outcome.value] == (0 if replaced else 1)
    assert tasks.counts()["processing"] == 0


def test_a_file_replaced_between_the_give_ups_read_and_its_move_fails_the_task(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a task processed again after it ended stored, when a whole attempt of another worker
    (its lease taken, the outcome forgotten as it replaces a file, the attempt failing, the lease
    released) runs between the give-up's read of the record and its move, then the give-up does
    not bring back the stored outcome over the replaced file: the task fails with its reason."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", TaskState.STORED, reason="earlier")
    tasks.move("t1", TaskState.PROCESSING)
    read_record = taskstate._record
    attempts: list[str] = []

    def read_then_another_attempt(task_id: str, raw: Any) -> Any:
        record = read_record(task_id, raw)
        if not attempts:
            attempts.append(task_id)
            other_worker = TaskStore(client, ttl_s=3600)  # through another connection of the pool
            client.set(keys.lease(task_id), "other worker")
            other_worker.forget_outcome(task_id, holder="other worker")
            client.delete(keys.lease(task_id))
        return record

    monkeypatch.setattr(taskstate, "_record", read_then_another_attempt)

    assert tasks.give_up("t1", "gave up: X") == GiveUp(TaskState.FAILED, failed_now=True)
    assert attempts == ["t1"]
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, record.fields["reason"]) == (TaskState.FAILED, "gave up: X")


@pytest.mark.parametrize(
    "history",
    [[], [TaskState.RECEIVED], [TaskState.RECEIVED, TaskState.PROCESSING]],
    ids=["no record", "received", "processing"],
)
def test_giving_up_on_a_task_without_an_outcome_fails_it(
    client: redis.Redis, history: list[TaskState]
) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    for state in history:
        tasks.move("t1", state)
    assert tasks.give_up("t1", "gave up: X") == GiveUp(TaskState.FAILED, failed_now=True)
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, record.fields["reason"]) == (TaskState.FAILED, "gave up: X")


@pytest.mark.parametrize("outcome", ["", "partial"], ids=["new", "processed again"])
def test_giving_up_on_a_task_submitted_again_leaves_it_to_the_polling_fallback(
    client: redis.Redis, outcome: str
) -> None:
    """A message of a task another message handed back to polling (one that had ended partial
    too): the fallback ends it."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", TaskState.SUBMITTED, **{OUTCOME_FIELD: outcome})
    assert tasks.give_up("t1", "gave up: X") == GiveUp(TaskState.SUBMITTED, failed_now=False)
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, "reason" in record.fields) == (TaskState.SUBMITTED, False)


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_forgetting_the_outcome_leaves_a_task_that_ended_alone(client: redis.Redis, state: TaskState) -> None:
    """Another worker settled the task meanwhile: its outcome stands."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", state, reason="earlier")
    client.set(keys.lease("t1"), "token")
    assert tasks.forget_outcome("t1", holder="token") is state
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, record.fields[OUTCOME_FIELD]) == (state, state.value)


def test_a_record_written_before_outcomes_fails_when_given_up(client: redis.Redis) -> None:
    """A task that ended stored before outcomes were recorded cannot say so once processed again."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", TaskState.STORED)
    client.hdel(keys.task("t1"), OUTCOME_FIELD)
    tasks.move("t1", TaskState.PROCESSING)
    assert tasks.give_up("t1", "gave up: X") == GiveUp(TaskState.FAILED, failed_now=True)


def test_giving_up_on_a_failed_task_processed_again_records_the_new_reason(client: redis.Redis) -> None:
    """A success after a failure is processed; given up, the task is failed again, for that."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", TaskState.FAILED, reason="generation failed")
    tasks.move("t1", TaskState.PROCESSING)
    assert tasks.give_up("t1", "gave up: X") == GiveUp(TaskState.FAILED, failed_now=True)
    assert tasks.get("t1").fields["reason"] == "gave up: X"  # type: ignore[union-attr]


def test_a_move_with_a_lease_token_happens_only_while_the_lease_holds_it(client: redis.Redis) -> None:
    """The worker's final move checks its lease in the same script call: between its own check
    and the move, another worker may have taken the task."""
    tasks = TaskStore(client, ttl_s=3600)
    client.set(keys.lease("t1"), "mine")
    assert tasks.move("t1", TaskState.PROCESSING, holder="mine") is None

    client.set(keys.lease("t1"), "theirs")
    with pytest.raises(LeaseHeld) as refused:
        tasks.move("t1", TaskState.STORED, holder="mine", reason="")
    client.delete(keys.lease("t1"))
    with pytest.raises(TaskBusy):
        tasks.move("t1", TaskState.STORED, holder="mine", reason="")

    assert refused.value.state == TaskState.PROCESSING
    record = tasks.get("t1")
    assert record is not None
    assert record.state is TaskState.PROCESSING
    assert OUTCOME_FIELD not in record.fields
    assert tasks.counts()["stored"] == 0


def test_forgetting_the_outcome_needs_the_lease(client: redis.Redis) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", TaskState.STORED)
    tasks.move("t1", TaskState.PROCESSING)
    client.set(keys.lease("t1"), "theirs")
    with pytest.raises(LeaseHeld):
        tasks.forget_outcome("t1", holder="mine")
    assert tasks.get("t1").fields[OUTCOME_FIELD] == "stored"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "outcome", [None, TaskState.STORED, TaskState.PARTIAL], ids=["new", "stored", "partial"]
)
def test_giving_up_leaves_a_task_a_worker_holds_alone(client: redis.Redis, outcome: TaskState | None) -> None:
    """Given a task a worker holds (processing another message of it, maybe again after an
    outcome), when the queue gives up on a message of it, then the task keeps its state and
    outcome: the holder settles it. Checked in the same script call as the move, so a worker that
    takes the task between give_up's read and its move is not overruled either."""
    tasks = TaskStore(client, ttl_s=3600)
    if outcome is not None:
        tasks.move("t1", outcome, reason="earlier")
    tasks.move("t1", TaskState.PROCESSING)
    client.set(keys.lease("t1"), "a worker")

    assert tasks.give_up("t1", "gave up: X") == GiveUp(TaskState.PROCESSING, failed_now=False)

    record = tasks.get("t1")
    assert record is not None
    assert record.state is TaskState.PROCESSING
    assert record.fields.get(OUTCOME_FIELD) == (outcome.value if outcome else None)
    assert tasks.counts()["failed"] == 0

    client.delete(keys.lease("t1"))
    assert tasks.give_up("t1", "gave up: X") == GiveUp(
        outcome or TaskState.FAILED, failed_now=outcome is None
    )


def test_only_the_give_up_that_fails_a_task_says_it_did(client: redis.Redis) -> None:
    """Given two give-ups of one task's messages (a duplicate's, say), the first moves it to
    failed and says so; the second finds it failed already and says it did not: the answer comes
    from the move's own script call, so no caller counts one failure twice."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", TaskState.PROCESSING)
    assert tasks.give_up("t1", "gave up: X") == GiveUp(TaskState.FAILED, failed_now=True)
    assert tasks.give_up("t1", "gave up: Y") == GiveUp(TaskState.FAILED, failed_now=False)
    assert tasks.get("t1").fields["reason"] == "gave up: X"  # type: ignore[union-attr]


def _dump(client: redis.Redis) -> dict[str, object]:
    """Every key's type and content, and whether it expires."""
    dumped: dict[str, object] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key).decode()
        content: object
        if kind == "hash":
            content = client.hgetall(key)
        elif kind == "list":
            content = client.lrange(key, 0, -1)
        elif kind == "string":
            content = client.get(key)
        else:
            content = client.zrange(key, 0, -1, withscores=True)
        dumped[key.decode()] = (kind, content, client.ttl(key) > 0)
    return dumped


def test_the_batched_received_call_does_what_one_call_per_task_does(redis_server: RedisServer) -> None:
    """The ingress's group commit records a round of tasks in one script call (received.lua). Its
    effects, key by key, and its answers are those of mark_received (transition.lua) called once
    per task in the same order: new tasks, a duplicate within the round, a submitted task moving
    on, a stored one kept, a task without a message, the indexes pruned and capped."""
    queue = keys.broker_queue("dramatiq", "callbacks")
    messages = keys.broker_messages("dramatiq", "callbacks")

    def message(n: int) -> QueuedMessage:
        return QueuedMessage(queue, messages, f"m{n}", b'{"n": %d}' % n)

    batch = [
        Received("new-a", "t1", message(1)),
        Received("submitted", "t2", message(2)),
        Received("stored", "t3", message(3)),
        Received("new-a", "t4", message(4)),
        Received("bare", "t5"),
        Received("new-b", "t6", message(6)),
    ]
    outcomes = []
    for db, batched in ((1, False), (2, True)):
        client = redis.Redis.from_url(f"{redis_server.url}/{db}")
        clock = FakeClock(1_000_000.0)
        tasks = TaskStore(client, ttl_s=3600, recent_keep=4, clock=clock)
        tasks.mark_received("old", "t0")
        tasks.mark_submitted("submitted", prompt="p")
        tasks.mark_received("stored", "t0")
        tasks.move("stored", TaskState.STORED)
        clock.now += 3700  # "old" falls out of the received index's window
        if batched:
            answers = with_ack_connection(
                f"{redis_server.url}/{db}",
                lambda connection, tasks=tasks: tasks.mark_received_many(batch, connection=connection),
            )
        else:
            answers = [
                tasks.mark_received(item.task_id, item.received_at, enqueue=item.enqueue) for item in batch
            ]
        outcomes.append((answers, _dump(client)))
        client.close()
    assert outcomes[0][0] == [None, TaskState.SUBMITTED, TaskState.STORED, TaskState.RECEIVED, None, None]
    assert outcomes[1] == outcomes[0]
    dumped = outcomes[1][1]
    assert dumped[queue] == ("list", [b"m1", b"m2", b"m3", b"m4", b"m6"], False)
    received_index = dumped[keys.state_index(TaskState.RECEIVED)][1]  # type: ignore[index]
    assert sorted(member for member, _ in received_index) == [b"bare", b"new-a", b"new-b", b"submitted"]


def test_a_task_whose_key_is_not_a_record_fails_alone_in_its_batch(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    """A key that holds something else than a task record (written by another program) fails its
    own task, as an unusable record (not a Redis outage), with nothing of it queued; the other
    tasks of the same call are recorded."""
    client.set(keys.task("clobbered"), "not a hash")
    queue = keys.broker_queue("dramatiq", "callbacks")
    message = QueuedMessage(queue, keys.broker_messages("dramatiq", "callbacks"), "m1", b"{}")
    tasks = TaskStore(client, ttl_s=3600)

    batch = [Received("clobbered", "now", message), Received("fine", "now")]
    clobbered, fine = with_ack_connection(
        redis_server.url, lambda connection: tasks.mark_received_many(batch, connection=connection)
    )
    assert isinstance(clobbered, TaskRecordUnusable)
    assert str(clobbered) == (
        "the record of task clobbered in Redis is unusable: its key holds something else than a task record"
    )
    assert fine is None
    assert tasks.get("fine") is not None
    assert client.llen(queue) == 0


def test_one_group_commit_call_refuses_messages_for_two_queues(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    """received.lua takes one queue per call: a batch whose messages go to two queues is refused
    before anything is written, rather than every message pushed onto whichever queue came first."""
    tasks = TaskStore(client, ttl_s=3600)
    batch = [
        Received(
            "t1",
            "now",
            QueuedMessage(
                keys.broker_queue("dramatiq", "callbacks"),
                keys.broker_messages("dramatiq", "callbacks"),
                "m1",
                b"{}",
            ),
        ),
        Received(
            "t2",
            "now",
            QueuedMessage(
                keys.broker_queue("dramatiq", "poll"), keys.broker_messages("dramatiq", "poll"), "m2", b"{}"
            ),
        ),
    ]
    before = _dump(client)

    with pytest.raises(ValueError, match="one queue"):
        with_ack_connection(
            redis_server.url, lambda connection: tasks.mark_received_many(batch, connection=connection)
        )

    assert _dump(client) == before


def test_state_counts_leave_out_tasks_whose_record_has_expired(client: redis.Redis) -> None:
    """Given a failed and a partial task, and then, past the record TTL, traffic only in other
    states (no task enters ``failed`` or ``partial`` to trim their indexes)
    When the states are counted
    Then the expired ones are not (``mjhook status`` counted them for good), and a task mjhook
    submitted that expired is not counted as still waiting either."""
    now = [1_000_000.0]
    tasks = TaskStore(client, ttl_s=60, clock=lambda: now[0])
    tasks.move("t-failed", TaskState.FAILED, reason="x")
    tasks.move("t-partial", TaskState.PARTIAL)
    tasks.mark_submitted("t-submitted")
    now[0] += 61
    tasks.move("t-new", TaskState.STORED)

    counts = tasks.counts()

    assert (counts["failed"], counts["partial"], counts["stored"]) == (0, 0, 1)
    assert tasks.submitted_counts(now[0], grace_s=30) == {"submitted": 0, "overdue": 0}


@pytest.mark.parametrize(
    "unusable",
    [
        pytest.param(lambda c: c.set(keys.task("t1"), "not a hash"), id="key-of-another-type"),
        pytest.param(lambda c: c.hset(keys.task("t1"), "state", "archived"), id="unknown-state"),
    ],
)
def test_a_move_of_a_task_whose_record_is_unusable_changes_and_queues_nothing(
    client: redis.Redis, unusable: Callable[[redis.Redis], object]
) -> None:
    """Given a task whose key holds another type, or a state this version does not know
    When it is marked received with its message (the spool's drain, a threaded enqueue)
    Then TaskRecordUnusable is raised and nothing is written or queued: the message was queued
    before the record was judged, once more on each try."""
    unusable(client)
    before = _dump(client)
    queue = keys.broker_queue("dramatiq", "callbacks")
    message = QueuedMessage(queue, keys.broker_messages("dramatiq", "callbacks"), "m1", b"{}")

    with pytest.raises(TaskRecordUnusable, match="the record of task t1 in Redis is unusable"):
        TaskStore(client, ttl_s=3600).mark_received("t1", "now", enqueue=message)

    assert _dump(client) == before


@pytest.mark.parametrize(
    "shared_key",
    [
        keys.RECENT,
        keys.STATE_INDEX_PREFIX + "received",
        keys.STATE_INDEX_PREFIX + "submitted",
        keys.broker_queue("dramatiq", "callbacks"),
        keys.broker_messages("dramatiq", "callbacks"),
    ],
)
def test_a_move_with_a_key_of_another_type_changes_and_queues_nothing(
    client: redis.Redis, shared_key: str
) -> None:
    """Given a submitted task, and a key the move writes or reads holding another type than its
    own (a mistaken SET)
    When the task is marked received with its message (the spool's drain, a threaded enqueue)
    Then Redis's WRONGTYPE error is raised before anything is written or queued: the message was
    queued, and the record left submitted, before the index's write failed."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.mark_submitted("t1", callBackUrl="http://127.0.0.1/cb")
    client.set(shared_key, "not what it should be")
    before = _dump(client)
    queue = keys.broker_queue("dramatiq", "callbacks")
    message = QueuedMessage(queue, keys.broker_messages("dramatiq", "callbacks"), "m1", b"{}")

    with pytest.raises(redis.ResponseError, match=f"WRONGTYPE {shared_key} holds a "):
        tasks.mark_received("t1", "now", enqueue=message)

    assert _dump(client) == before


def test_a_round_with_a_submitted_task_and_its_index_of_another_type_writes_nothing(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    """Given a submitted task, and its state index holding another type (a mistaken SET)
    When a group-commit round marks it and a new task received
    Then the round fails whole before anything is written: the new task was recorded received
    (its callback spooled as well) before the index's removal failed."""
    tasks = TaskStore(client, ttl_s=3600)
    tasks.mark_submitted("t-submitted", callBackUrl="http://127.0.0.1/cb")
    client.set(keys.STATE_INDEX_PREFIX + "submitted", "not what it should be")
    before = _dump(client)
    queue = keys.broker_queue("dramatiq", "callbacks")
    messages = keys.broker_messages("dramatiq", "callbacks")
    batch = [
        Received("t-new", "now", QueuedMessage(queue, messages, "m1", b"{}")),
        Received("t-submitted", "now", QueuedMessage(queue, messages, "m2", b"{}")),
    ]

    outcomes = with_ack_connection(
        redis_server.url, lambda connection: tasks.mark_received_many(batch, connection=connection)
    )

    assert all(isinstance(outcome, redis.ResponseError) for outcome in outcomes), outcomes
    assert "WRONGTYPE" in str(outcomes[0])
    assert _dump(client) == before


@pytest.mark.parametrize("state", [None, TaskState.SUBMITTED])
def test_fail_submitted_puts_its_look_in_with_the_move(client: redis.Redis, state: TaskState | None) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    if state is not None:
        tasks.move("t1", state)
    assert tasks.fail_submitted("t1", "no result", look=(b"look-t1", 1_000)) is state
    record = tasks.get("t1")
    assert record is not None
    assert (record.state, record.fields["reason"]) == (TaskState.FAILED, "no result")
    assert client.zrange(keys.GIVE_UPS_PENDING, 0, -1, withscores=True) == [(b"look-t1", 1_000.0)]


@pytest.mark.parametrize("state", [TaskState.RECEIVED, TaskState.STORED, TaskState.FAILED])
def test_fail_submitted_leaves_a_task_that_moved_on_and_records_no_look(
    client: redis.Redis, state: TaskState
) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t1", state)
    assert tasks.fail_submitted("t1", "no result", look=(b"look-t1", 1_000)) is state
    assert tasks.get("t1").state is state  # type: ignore[union-attr]
    assert client.zcard(keys.GIVE_UPS_PENDING) == 0
