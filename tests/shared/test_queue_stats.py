"""Queue depths, live workers and task throughput, read from a real Redis that real dramatiq
brokers and consumers wrote (no worker process needed: the broker code is the same)."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name

from shared import keys
from shared.callback import Callback
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, PROCESS_CALLBACK, create_broker, enqueue_callback
from shared.queue_stats import (
    QueueStats,
    StatusSnapshot,
    count_workers,
    read_brokers,
    read_queue,
    read_status,
)
from shared.redis_client import redis_millis
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from shared.worker_registry import (
    DEFAULT_KEEP_MS,
    forget_worker,
    record_worker_beat,
    registered_workers,
)
from tests.support.clock import FakeClock
from tests.support.pipeline import queued_callback

TIMEOUT_MS = 20_000


def new_broker(client: redis.Redis) -> RedisBroker:
    """A broker of its own, as each ingress or worker process has."""
    broker = create_broker(Settings(redis_url="redis://unused"), client=client, middleware=[])
    assert isinstance(broker, RedisBroker)
    return broker


def callback(task_id: str) -> Callback:
    return Callback.from_message(queued_callback(task_id))


def message(task_id: str, *, timestamp_ms: int, options: dict[str, object] | None = None) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name=CALLBACK_QUEUE,
        actor_name=PROCESS_CALLBACK,
        args=(callback(task_id).to_message(),),
        kwargs={},
        options=options or {},
        message_timestamp=timestamp_ms,
    )


def queue_now(client: redis.Redis) -> QueueStats:
    brokers = read_brokers(
        client,
        namespace=BROKER_NAMESPACE,
        queues=[CALLBACK_QUEUE],
        now_ms=current_millis(),
        timeout_ms=TIMEOUT_MS,
    )
    return read_queue(
        client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, brokers=brokers, now_ms=current_millis()
    )


def test_ready_delayed_in_flight_and_dead_are_counted(client: redis.Redis) -> None:
    # Given 4 callbacks queued by the ingress and one retry waiting for its backoff
    ingress = new_broker(client)
    for i in range(4):
        enqueue_callback(ingress, callback(f"t{i}"))
    ingress.enqueue(message("later", timestamp_ms=current_millis()), delay=600_000)
    # When a worker takes two, finishes none, and dead-letters one
    consumer = new_broker(client).consume(CALLBACK_QUEUE, prefetch=2)
    next(consumer)
    dying = next(consumer)
    consumer.nack(dying)
    # Then
    stats = queue_now(client)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead, stats.held_by_dead) == (2, 1, 1, 1, 0)


def test_a_delayed_message_a_worker_holds_until_due_is_still_delayed(client: redis.Redis) -> None:
    new_broker(client).enqueue(message("later", timestamp_ms=current_millis()), delay=600_000)
    # dramatiq's worker takes delayed messages at once and keeps them in memory until their eta
    delay_consumer = new_broker(client).consume(dq_name(CALLBACK_QUEUE), prefetch=10)
    assert next(delay_consumer) is not None
    assert client.llen(keys.broker_queue(BROKER_NAMESPACE, dq_name(CALLBACK_QUEUE))) == 0
    stats = queue_now(client)
    assert (stats.ready, stats.delayed, stats.in_flight) == (0, 1, 0)


def test_the_oldest_ready_age_is_the_wait_of_the_message_next_in_line(client: redis.Redis) -> None:
    broker = new_broker(client)
    now = current_millis()
    broker.enqueue(message("first", timestamp_ms=now - 30_000))
    broker.enqueue(message("second", timestamp_ms=now - 5_000))
    stats = read_queue(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, brokers=[], now_ms=now)
    assert stats.oldest_ready_age_s == 30.0


def test_a_retried_message_has_waited_since_its_last_failure(client: redis.Redis) -> None:
    now = current_millis()
    retried = message("retried", timestamp_ms=now - 3_600_000, options={"requeue_timestamp": now - 2_000})
    new_broker(client).enqueue(retried)
    stats = read_queue(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, brokers=[], now_ms=now)
    assert stats.oldest_ready_age_s == 2.0


def test_an_empty_queue_has_no_oldest_age(client: redis.Redis) -> None:
    assert queue_now(client).oldest_ready_age_s is None


def test_only_live_consumers_count_as_workers(client: redis.Redis) -> None:
    now = current_millis()
    # Given an ingress process, which only enqueues (its broker beats all the same)
    ingress = new_broker(client)
    enqueue_callback(ingress, callback("t1"))
    enqueue_callback(ingress, callback("t2"))
    # a busy worker that never registered: it holds a message
    busy = new_broker(client)
    next(busy.consume(CALLBACK_QUEUE, prefetch=1))
    # an idle registered worker, and one that stopped cleanly
    idle, stopped = new_broker(client), new_broker(client)
    for worker in (idle, stopped):
        worker.do_qsize(CALLBACK_QUEUE)
        record_worker_beat(client, worker.broker_id, now_ms=now)
    forget_worker(client, stopped.broker_id)
    # and a dead worker: silent for longer than the timeout, still holding a message
    client.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {"dead-worker": now - 3 * TIMEOUT_MS})
    client.sadd(keys.broker_acks(BROKER_NAMESPACE, "dead-worker", CALLBACK_QUEUE), "m-1")
    record_worker_beat(client, "dead-worker", now_ms=now - 3 * TIMEOUT_MS)
    # When
    brokers = read_brokers(
        client, namespace=BROKER_NAMESPACE, queues=[CALLBACK_QUEUE], now_ms=now, timeout_ms=TIMEOUT_MS
    )
    # Then the busy and the idle worker count, no one else
    assert count_workers(brokers) == 2
    seen = {broker.broker_id: (broker.alive, broker.is_worker) for broker in brokers}
    assert seen[ingress.broker_id] == (True, False)
    assert seen[stopped.broker_id] == (True, False)
    assert seen["dead-worker"] == (False, True)
    # and the dead worker's message is in flight, held by the dead, until maintenance returns it
    stats = read_queue(client, namespace=BROKER_NAMESPACE, queue=CALLBACK_QUEUE, brokers=brokers, now_ms=now)
    assert (stats.ready, stats.in_flight, stats.held_by_dead) == (1, 2, 1)


def test_a_broker_silent_for_exactly_the_timeout_is_dead_as_dramatiq_counts_it(client: redis.Redis) -> None:
    """dramatiq's maintenance (dispatch.lua) takes a broker whose last beat is at or before
    ``now - heartbeat_timeout`` for dead and requeues its messages: status must not count it alive."""
    now = 1_800_000_000_000
    heartbeats = keys.broker_heartbeats(BROKER_NAMESPACE)
    client.zadd(heartbeats, {"at-the-limit": now - TIMEOUT_MS, "just-inside": now - TIMEOUT_MS + 1})
    for broker_id in ("at-the-limit", "just-inside"):
        client.sadd(keys.broker_acks(BROKER_NAMESPACE, broker_id, CALLBACK_QUEUE), "m-1")

    brokers = read_brokers(
        client, namespace=BROKER_NAMESPACE, queues=[CALLBACK_QUEUE], now_ms=now, timeout_ms=TIMEOUT_MS
    )

    assert {broker.broker_id: broker.alive for broker in brokers} == {
        "at-the-limit": False,
        "just-inside": True,
    }
    assert count_workers(brokers) == 1


def test_the_registry_drops_workers_silent_for_a_day(client: redis.Redis) -> None:
    record_worker_beat(client, "gone", now_ms=1_000)
    record_worker_beat(client, "here", now_ms=1_000 + DEFAULT_KEEP_MS + 1)
    assert registered_workers(client) == {"here"}


def status_at(now: float, queue_client: redis.Redis | None, tasks: TaskStore) -> StatusSnapshot:
    """:func:`read_status` of the callback queue at ``now`` (Unix seconds)."""
    return read_status(
        queue_client,
        tasks,
        namespace=BROKER_NAMESPACE,
        queues=[CALLBACK_QUEUE],
        heartbeat_timeout_ms=TIMEOUT_MS,
        now_ms=int(now * 1000),
        poll_grace_s=300,
    )


def test_status_has_the_contract_keys_task_counts_and_finished_per_minute(client: redis.Redis) -> None:
    # Given tasks that reached their state at known times before now
    now = 1_800_000_000.0
    clock = FakeClock(now)
    tasks = TaskStore(client, ttl_s=86_400, clock=clock)
    changes = [
        ("s1", TaskState.STORED, 10),  # seconds before now: the last minute
        ("s2", TaskState.STORED, 50),
        ("s3", TaskState.STORED, 90),  # the minute before
        ("f1", TaskState.FAILED, 570),  # the first of the 10 minutes
        ("p1", TaskState.PARTIAL, 720),  # 12 minutes ago: outside the window
        ("r1", TaskState.RECEIVED, 1),
        ("w1", TaskState.PROCESSING, 1),
    ]
    for task_id, state, seconds_ago in changes:
        clock.now = now - seconds_ago
        tasks.move(task_id, state)
    clock.now = now
    # When
    snapshot = status_at(now, client, tasks)
    # Then
    assert snapshot.tasks == {"received": 1, "processing": 1, "stored": 3, "partial": 1, "failed": 1}
    assert snapshot.per_minute["stored"] == (0, 0, 0, 0, 0, 0, 0, 0, 1, 2)
    assert snapshot.per_minute["failed"] == (1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert snapshot.per_minute["partial"] == (0,) * 10
    assert snapshot.submitted == {"submitted": 0, "overdue": 0}
    document = snapshot.to_json()
    assert set(document["queues"][CALLBACK_QUEUE]) >= {"ready", "delayed", "in_flight", "dead"}
    assert document["workers"] == 0
    assert set(document["tasks"]) == {"received", "processing", "stored", "partial", "failed"}
    assert document["rejected"] == 0


def test_without_the_queue_in_redis_status_has_the_tasks_and_no_queues_or_workers(
    client: redis.Redis,
) -> None:
    # Given a queue outside Redis (RabbitMQ) and a task stored just now
    now = 1_800_000_000.0
    tasks = TaskStore(client, ttl_s=86_400, clock=FakeClock(now))
    tasks.move("s1", TaskState.STORED)
    # When
    snapshot = status_at(now, None, tasks)
    # Then the task numbers are there, the queues and workers unknown
    assert (snapshot.queues, snapshot.workers) == (None, None)
    assert snapshot.tasks["stored"] == 1
    assert snapshot.per_minute["stored"][-1] == 1
    document = snapshot.to_json()
    assert (document["queues"], document["workers"]) == ({}, None)


def test_a_reading_host_whose_clock_is_off_counts_live_workers_by_redis_clock(client: redis.Redis) -> None:
    # Given a registered worker whose broker beat just now, on Redis's clock (as RedisClockBroker
    # stamps it), and a message its (reading) host queued 30 s ago by its own clock
    redis_now = redis_millis(client)
    ahead_ms = redis_now + 2 * TIMEOUT_MS
    worker = new_broker(client)
    worker.do_qsize(CALLBACK_QUEUE)
    client.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {worker.broker_id: redis_now})
    record_worker_beat(client, worker.broker_id, now_ms=redis_now)
    new_broker(client).enqueue(message("t1", timestamp_ms=ahead_ms - 30_000))
    # When that host, whose clock runs twice the heartbeat timeout ahead, reads the status
    tasks = TaskStore(client, ttl_s=86_400, clock=FakeClock(ahead_ms / 1000))
    snapshot = status_at(ahead_ms / 1000, client, tasks)
    # Then the worker is alive, and the message's age is read on the clock that stamped it
    assert snapshot.workers == 1
    assert snapshot.queues is not None
    assert snapshot.queues[0].oldest_ready_age_s == 30.0
