"""Dead letters in a real Redis, made by a real dramatiq consumer's nack: their reasons, replay
and purge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dramatiq
import orjson
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import keys
from shared.dead_letters import (
    ReasonSource,
    fresh_copy,
    list_dead,
    purge_dead,
    record_dead_reason,
    replay_dead,
)
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, PROCESS_CALLBACK, create_broker
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from tests.support.pipeline import queued_callback
from tests.support.procs import free_port
from tests.support.servers import start_redis

DEAD = keys.broker_dead(BROKER_NAMESPACE, CALLBACK_QUEUE)
DEAD_BODIES = keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)
READY = keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1\nshared.errors.DownloadFailed: reset\n'


@pytest.fixture
def broker(client: redis.Redis) -> RedisBroker:
    broker = create_broker(Settings(redis_url="redis://unused"), client=client, middleware=[])
    assert isinstance(broker, RedisBroker)
    return broker


def kill(broker: RedisBroker, args: dict[str, Any], **options: Any) -> str:
    """Enqueue a message and dead-letter it as a worker does (fetch, then nack); its dead id."""
    sent = broker.enqueue(
        dramatiq.Message(
            queue_name=CALLBACK_QUEUE, actor_name=PROCESS_CALLBACK, args=(args,), kwargs={}, options=options
        )
    )
    consumer = broker.consume(CALLBACK_QUEUE, prefetch=1)
    taken = next(consumer)
    assert taken is not None
    consumer.nack(taken)
    return str(sent.options["redis_message_id"])


def test_each_dead_letter_has_its_task_and_the_best_reason_known(
    client: redis.Redis, broker: RedisBroker
) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    retried = kill(broker, queued_callback("retried"), retries=3, traceback=TRACEBACK)
    invalid = kill(broker, queued_callback("invalid", code="oops"))
    recorded = kill(broker, queued_callback("recorded"), traceback=TRACEBACK)
    record_dead_reason(client, recorded, "gave up: DownloadRefused: 403", ttl_s=60)
    from_task = kill(broker, queued_callback("from-task"))
    tasks.move("from-task", TaskState.FAILED, reason="gave up: TaskBusy: held")
    unknown = kill(broker, queued_callback("unknown"))

    letters = {
        letter.id: letter
        for letter in list_dead(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, tasks=tasks)
    }

    def seen(dead_id: str) -> tuple[str | None, str, ReasonSource]:
        return letters[dead_id].task_id, letters[dead_id].reason, letters[dead_id].reason_source

    assert seen(retried) == ("retried", "shared.errors.DownloadFailed: reset", ReasonSource.TRACEBACK)
    assert letters[retried].retries == 3
    assert seen(invalid) == ("invalid", "InvalidCallback: 'code' must be an integer", ReasonSource.VALIDATION)
    assert seen(recorded) == ("recorded", "gave up: DownloadRefused: 403", ReasonSource.WORKER)
    assert seen(from_task) == ("from-task", "gave up: TaskBusy: held", ReasonSource.TASK)
    assert seen(unknown) == ("unknown", "no reason recorded", ReasonSource.UNKNOWN)


def test_the_list_is_newest_first_and_limited(client: redis.Redis, broker: RedisBroker) -> None:
    ids = [kill(broker, queued_callback(f"t{i}")) for i in range(3)]
    for score, dead_id in enumerate(ids):
        client.zadd(DEAD, {dead_id: 1_000 + score})
    listed = list_dead(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, limit=2)
    assert [letter.id for letter in listed] == [ids[2], ids[1]]


def test_replay_enqueues_a_fresh_copy_and_only_then_drops_the_dead_letter(
    client: redis.Redis, broker: RedisBroker
) -> None:
    dead_id = kill(broker, queued_callback("again"), retries=5, traceback=TRACEBACK, requeue_timestamp=1)
    keep = kill(broker, queued_callback("stay"))
    record_dead_reason(client, dead_id, "gave up", ttl_s=60)

    result = replay_dead(
        client, broker, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, ids=[dead_id, "nope"]
    )

    assert [old for old, _ in result.replayed] == [dead_id]
    assert result.missing == ["nope"]
    new_id = result.replayed[0][1]
    assert client.lrange(READY, 0, -1) == [new_id.encode()]
    body = orjson.loads(client.hget(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE), new_id))
    assert body["args"][0]["taskId"] == "again"
    assert body["options"] == {"redis_message_id": new_id}
    assert client.zscore(DEAD, dead_id) is None
    assert client.hget(DEAD_BODIES, dead_id) is None
    assert client.get(keys.dead_reason(dead_id)) is None
    assert client.zscore(DEAD, keep) is not None


def test_replay_keeps_the_dead_letter_when_the_broker_refuses(
    client: redis.Redis, broker: RedisBroker
) -> None:
    dead_id = kill(broker, queued_callback("again"))
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    refusing = create_broker(Settings(redis_url="redis://unused"), client=nowhere, middleware=[])

    result = replay_dead(client, refusing, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE)

    assert result.replayed == []
    assert result.error is not None
    assert "ConnectionError" in result.error
    assert client.zscore(DEAD, dead_id) is not None
    assert client.hget(DEAD_BODIES, dead_id) is not None


class RefusingOnce:
    """A broker that refuses its first enqueue (Redis gone for a moment), then takes them."""

    def __init__(self, inner: RedisBroker) -> None:
        self._broker = inner
        self.refused = 0

    def enqueue(self, message: dramatiq.Message[Any], **options: Any) -> dramatiq.Message[Any]:
        if not self.refused:
            self.refused += 1
            raise redis.ConnectionError("Connection refused")
        return self._broker.enqueue(message, **options)


def test_a_replay_stops_at_the_first_enqueue_the_broker_refuses(
    client: redis.Redis, broker: RedisBroker
) -> None:
    """Given two dead letters, and a broker refusing the first enqueue
    Then the replay stops there: both stay dead letters, nothing is queued, and the error says
    why (the command then says "stopped"; going on would replay letters behind the one refused,
    out of their order, under an error line saying it stopped)."""
    first = kill(broker, queued_callback("first"))
    second = kill(broker, queued_callback("second"))

    result = replay_dead(
        client,
        RefusingOnce(broker),  # type: ignore[arg-type]
        namespace=BROKER_NAMESPACE,
        queue=CALLBACK_QUEUE,
        ids=[first, second],
    )

    assert result.error is not None
    assert "ConnectionError" in result.error
    assert result.replayed == []
    assert client.llen(READY) == 0
    assert client.zscore(DEAD, first) is not None
    assert client.zscore(DEAD, second) is not None


def test_a_body_left_without_its_dead_letter_entry_is_not_replayed(
    client: redis.Redis, broker: RedisBroker
) -> None:
    """Given a message body in the dead letters' hash whose entry in the dead letters' sorted set
    is gone (removed by another program, or a purge between the replay's two reads)
    Then a replay naming it reports it missing and queues nothing."""
    dead_id = kill(broker, queued_callback("ghost"))
    client.zrem(DEAD, dead_id)
    assert client.hget(DEAD_BODIES, dead_id) is not None

    result = replay_dead(client, broker, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, ids=[dead_id])

    assert result.missing == [dead_id]
    assert result.replayed == []
    assert client.llen(READY) == 0


def test_a_fresh_copy_keeps_the_message_id_and_drops_retry_state() -> None:
    old = dramatiq.Message(
        queue_name=CALLBACK_QUEUE + ".DQ",
        actor_name=PROCESS_CALLBACK,
        args=({"taskId": "t"},),
        kwargs={},
        options={"retries": 2, "traceback": "x", "eta": 5, "redis_message_id": "r", "max_retries": 3},
        message_timestamp=1,
    )
    copy = fresh_copy(old, now_ms=99)
    assert (copy.queue_name, copy.message_id, copy.message_timestamp) == (CALLBACK_QUEUE, old.message_id, 99)
    assert copy.options == {"max_retries": 3}


def test_purge_drops_the_given_dead_letters_or_all(client: redis.Redis, broker: RedisBroker) -> None:
    first, second, third = (kill(broker, queued_callback(f"t{i}")) for i in range(3))
    result = purge_dead(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, ids=[first, "nope"])
    assert (result.removed, result.missing) == ([first], ["nope"])
    assert client.zcard(DEAD) == 2
    result = purge_dead(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE)
    assert sorted(result.removed) == sorted([second, third])
    assert client.zcard(DEAD) == 0
    assert client.hlen(DEAD_BODIES) == 0


def test_an_id_named_twice_is_replayed_once(client: redis.Redis, broker: RedisBroker) -> None:
    """Given one dead letter
    When a replay names its id twice, and an id that is not dead twice
    Then one message is back on the queue, the replay lists it once, and the other id is missing
    once."""
    dead_id = kill(broker, queued_callback("twice"))

    named = [dead_id, "nope", dead_id, "nope"]
    result = replay_dead(client, broker, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, ids=named)

    assert [old for old, _ in result.replayed] == [dead_id]
    assert result.missing == ["nope"]
    assert client.llen(READY) == 1
    assert client.zcard(DEAD) == 0


def test_an_id_named_twice_is_purged_and_counted_once(client: redis.Redis, broker: RedisBroker) -> None:
    """Given two dead letters
    When a purge names them with repeats, in an order of its own
    Then each is removed and counted once, in the order first named."""
    first, second = (kill(broker, queued_callback(f"t{i}")) for i in range(2))

    result = purge_dead(
        client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, ids=[second, first, second, "nope", "nope"]
    )

    assert (result.removed, result.missing) == ([second, first], ["nope"])
    assert client.zcard(DEAD) == 0


def test_a_replay_redis_fails_midway_reports_what_it_replayed_before(
    client: redis.Redis, broker: RedisBroker, tmp_path: Path
) -> None:
    """Given two dead letters, and a broker that takes messages (a queue of its own)
    When a replay has queued the first and Redis then refuses to drop it from the dead letters
    (it takes no more writes: a replica gone)
    Then the replay reports the first replayed, and why it stopped: it raised, and the operator
    learned nothing of the message already back on the queue."""
    first, second = (kill(broker, queued_callback(f"t{i}")) for i in range(2))
    queue = start_redis(tmp_path / "queue")
    queue_client = queue.client()
    try:
        taking = create_broker(Settings(redis_url="redis://unused"), client=queue_client, middleware=[])
        client.config_set("min-replicas-to-write", "1")
        try:
            result = replay_dead(
                client, taking, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, ids=[first, second]
            )
        finally:
            client.config_set("min-replicas-to-write", "0")
        assert [old for old, _ in result.replayed] == [first]
        assert queue_client.llen(READY) == 1  # the first is on the queue, the second was not tried
    finally:
        queue_client.close()
        queue.kill()
    assert result.error is not None
    assert result.error.startswith(f"{first} was replayed but is still a dead letter: ")
    assert client.zcard(DEAD) == 2


def test_a_replay_leaves_a_letter_of_the_wrong_shape_in_place_and_goes_on(
    client: redis.Redis, broker: RedisBroker
) -> None:
    """Given a dead letter whose options are no object (written by hand), then a good one
    When all are replayed
    Then the good one is, and the odd one is reported unreadable and still dead: the replay
    raised AttributeError at it, and the good one was never tried."""
    client.zadd(DEAD, {"odd": 1})
    body = {"queue_name": CALLBACK_QUEUE, "actor_name": PROCESS_CALLBACK, "args": [], "kwargs": {}}
    client.hset(DEAD_BODIES, "odd", orjson.dumps({**body, "options": [1], "message_id": "m"}))
    good = kill(broker, queued_callback("good"))

    result = replay_dead(client, broker, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE)

    assert [old for old, _ in result.replayed] == [good]
    assert (result.unreadable, result.error) == (["odd"], None)
    assert client.llen(READY) == 1
    assert client.zrange(DEAD, 0, -1) == [b"odd"]
    assert client.hget(DEAD_BODIES, "odd") is not None


def test_the_reason_of_a_task_that_did_not_fail_is_no_dead_letters_reason(
    client: redis.Redis, broker: RedisBroker
) -> None:
    """Given a dead letter with no reason of its own, whose task ended partial (another message
    of it was processed), its record's reason saying which file failed
    Then the letter's reason is unknown: the partial task's reason says nothing of why this
    message died."""
    tasks = TaskStore(client, ttl_s=3600)
    dead_id = kill(broker, queued_callback("partial-task"))
    tasks.move("partial-task", TaskState.PARTIAL, reason="1 file not stored: #1 DownloadFailed")

    [letter] = list_dead(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, tasks=tasks)

    assert letter.id == dead_id
    assert (letter.reason, letter.reason_source) == ("no reason recorded", ReasonSource.UNKNOWN)
