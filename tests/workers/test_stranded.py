"""Stranded messages in a live worker: ids in its ack set that the process never received or lost
are requeued and run once; a message the process still holds is never requeued. A real Redis and
a real dramatiq worker; the rescuer's checks are run by the test, each after a fetch of every live
consumer thread (what the rescuer's confirmation waits for), not after a guessed time."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Middleware

from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from shared.redis_client import connect_redis
from tests.support.servers import RedisServer
from workers.stranded import MessagesInHand, StrandedMessageRescuer


@pytest.fixture
def in_hand() -> MessagesInHand:
    return MessagesInHand()


@pytest.fixture
def broker(redis_server: RedisServer, in_hand: MessagesInHand) -> Iterator[RedisBroker]:
    """As workers/tasks.py makes it: the record of worker threads' messages first."""
    broker = RedisBroker(
        client=connect_redis(redis_server.url), namespace=BROKER_NAMESPACE, middleware=[in_hand]
    )
    yield broker
    broker.close()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_for_a_fetch(thread: Any) -> None:
    """Until the consumer thread's current consumer has completed a fetch (a new cache list)."""
    seen: list[tuple[object, object]] = []

    def fetched() -> bool:
        consumer = thread.consumer
        if not seen or seen[-1][0] is not consumer:
            seen.append((consumer, consumer.message_cache))
            return False
        return consumer.message_cache is not seen[-1][1]

    wait_for(fetched)


def look(rescuer: StrandedMessageRescuer, worker: dramatiq.Worker, times: int) -> list[int]:
    """``times`` checks, each once every live consumer thread of ``worker`` has completed a fetch
    since the check before (a dead one fetches nothing more); what each requeued."""
    requeued = []
    for _ in range(times):
        for thread in worker.consumers.values():
            if thread.is_alive():
                wait_for_a_fetch(thread)
        requeued.append(rescuer.check())
    return requeued


def strand(broker: RedisBroker, message: dramatiq.Message[Any], queue_name: str) -> str:
    """What Redis holds once it ran this worker's fetch of ``message`` and the reply was lost:
    the id in the worker's ack set and the body in the queue's hash, not in the queue's list."""
    redis_id = str(uuid.uuid4())
    body = message.copy(queue_name=queue_name, options={"redis_message_id": redis_id}).encode()
    broker.client.hset(keys.broker_messages(BROKER_NAMESPACE, queue_name), redis_id, body)
    broker.client.sadd(keys.broker_acks(BROKER_NAMESPACE, broker.broker_id, queue_name), redis_id)
    return redis_id


def acked(broker: RedisBroker, queue_name: str) -> set[bytes]:
    return broker.client.smembers(keys.broker_acks(BROKER_NAMESPACE, broker.broker_id, queue_name))


def recording_actor(broker: RedisBroker, ran: list[str], done: threading.Event) -> dramatiq.Actor[Any, Any]:
    def record(name: str) -> None:
        ran.append(name)
        done.set()

    return dramatiq.actor(record, actor_name="record", queue_name=CALLBACK_QUEUE, broker=broker)


@pytest.mark.parametrize(
    ("queue_name", "options"),
    [
        # a fetch on the queue whose reply never reached the worker
        (CALLBACK_QUEUE, {}),
        # a retry past its backoff, fetched from the delay queue and dropped on a connection error
        (dq_name(CALLBACK_QUEUE), {"eta": current_millis() - 1000}),
    ],
    ids=["queue", "delay-queue"],
)
def test_a_message_a_live_worker_lost_is_requeued_and_runs_once(
    broker: RedisBroker,
    in_hand: MessagesInHand,
    start_worker: Callable[[], dramatiq.Worker],
    queue_name: str,
    options: dict[str, Any],
) -> None:
    # Given a live worker, and an id in its ack set that the process does not hold
    ran: list[str] = []
    done = threading.Event()
    actor = recording_actor(broker, ran, done)
    worker = start_worker()
    strand(broker, actor.message("lost").copy(options=options), queue_name)
    rescuer = StrandedMessageRescuer(broker, worker.consumers, in_hand)
    # When the rescuer looks: missed; missed with the consumer's next fetch done; missed again
    assert look(rescuer, worker, 3) == [0, 0, 1]
    # Then the message runs, once, and nothing is left pending
    assert done.wait(10)
    worker.join()
    assert look(rescuer, worker, 3) == [0, 0, 0]
    assert ran == ["lost"]
    assert acked(broker, queue_name) == set()
    assert broker.client.hlen(keys.broker_messages(BROKER_NAMESPACE, queue_name)) == 0


def test_a_message_in_flight_is_not_requeued_even_once_its_consumer_was_rebuilt(
    redis_server: RedisServer,
    broker: RedisBroker,
    in_hand: MessagesInHand,
    start_worker: Callable[[], dramatiq.Worker],
) -> None:
    # Given a message a worker thread is processing
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def hold() -> None:
        runs.append(1)
        started.set()
        release.wait(30)

    actor = dramatiq.actor(hold, actor_name="hold", queue_name=CALLBACK_QUEUE, broker=broker)
    worker = start_worker()
    message = actor.send()
    assert started.wait(10)
    in_flight = acked(broker, CALLBACK_QUEUE)
    assert len(in_flight) == 1
    # And its consumer rebuilt meanwhile (a fetch failed: Redis refused writes for a moment),
    # so that only the worker thread knows the message
    thread = worker.consumers[CALLBACK_QUEUE]
    first = thread.consumer
    admin = redis_server.client()
    admin.config_set("min-replicas-to-write", "1")
    try:
        wait_for(lambda: thread.consumer is not first)
    finally:
        admin.config_set("min-replicas-to-write", "0")
    wait_for_a_fetch(thread)  # by a consumer built after writes came back
    assert message.message_id not in thread.consumer.queued_message_ids
    rescuer = StrandedMessageRescuer(broker, worker.consumers, in_hand)
    # When the rescuer looks, again and again
    assert look(rescuer, worker, 6) == [0] * 6
    # Then the id stays in the ack set, and the message runs once
    assert acked(broker, CALLBACK_QUEUE) == in_flight
    assert broker.client.llen(keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)) == 0
    release.set()
    worker.join()
    assert runs == [1]
    wait_for(lambda: acked(broker, CALLBACK_QUEUE) == set())


def test_a_lost_message_is_requeued_while_the_worker_threads_are_busy_with_others(
    broker: RedisBroker, in_hand: MessagesInHand, start_worker: Callable[[], dramatiq.Worker]
) -> None:
    """Under a steady load the worker threads are never all idle: the rescue must not wait for
    that (it did until session 7), only leave alone the messages they hold."""
    # Given a lost fetch reply while the only worker thread is busy with another message
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def work(name: str) -> None:
        ran.append(name)
        started.set()
        if name == "busy":
            release.wait(30)

    actor = dramatiq.actor(work, actor_name="work", queue_name=CALLBACK_QUEUE, broker=broker)
    worker = start_worker()
    actor.send("busy")
    assert started.wait(10)
    [busy_id] = acked(broker, CALLBACK_QUEUE)
    strand(broker, actor.message("lost"), CALLBACK_QUEUE)
    rescuer = StrandedMessageRescuer(broker, worker.consumers, in_hand)
    # When the rescuer looks while the thread is busy
    assert look(rescuer, worker, 3) == [0, 0, 1]
    # Then the lost message is requeued, not the busy one, and each runs once
    assert busy_id in acked(broker, CALLBACK_QUEUE)
    release.set()
    worker.join()
    wait_for(lambda: ran == ["busy", "lost"])
    assert look(rescuer, worker, 3) == [0, 0, 0]
    assert ran == ["busy", "lost"]


def test_a_lost_message_waits_while_a_worker_thread_holds_a_message_not_recorded_yet(
    broker: RedisBroker, in_hand: MessagesInHand, start_worker: Callable[[], dramatiq.Worker]
) -> None:
    """A worker thread holds a message the record does not know by id (in production only for
    the instant between taking it and the first hook; here a middleware ahead of the record
    holds it there): any stranded id may be that one, so nothing is requeued until it is known."""
    entered, release = threading.Event(), threading.Event()

    class HoldBeforeTheRecord(Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
            if message.args == ("busy",):
                entered.set()
                release.wait(30)

    broker.add_middleware(HoldBeforeTheRecord(), before=MessagesInHand)
    ran: list[str] = []
    actor = dramatiq.actor(ran.append, actor_name="work", queue_name=CALLBACK_QUEUE, broker=broker)
    worker = start_worker()
    actor.send("busy")
    assert entered.wait(10)
    strand(broker, actor.message("lost"), CALLBACK_QUEUE)
    rescuer = StrandedMessageRescuer(broker, worker.consumers, in_hand)
    # When the rescuer looks while that message is not recorded
    assert look(rescuer, worker, 4) == [0] * 4
    # Then, once the thread is done with it, the lost message is requeued and runs once
    release.set()
    wait_for(lambda: ran == ["busy"] and worker.work_queue.unfinished_tasks == 0)
    assert look(rescuer, worker, 1) == [1]
    worker.join()
    wait_for(lambda: ran == ["busy", "lost"])
    assert ran == ["busy", "lost"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death
def test_retries_held_by_a_delay_consumer_that_died_are_requeued(
    broker: RedisBroker, in_hand: MessagesInHand, start_worker: Callable[[], dramatiq.Worker]
) -> None:
    # Given a retry waiting out its backoff in the delay-queue consumer of a live worker
    ran: list[str] = []
    actor = recording_actor(broker, ran, threading.Event())
    worker = start_worker()
    thread = worker.consumers[dq_name(CALLBACK_QUEUE)]
    broker.enqueue(actor.message("retry"), delay=60_000)
    wait_for(lambda: thread.delay_queue.qsize() == 1)
    [redis_id] = acked(broker, dq_name(CALLBACK_QUEUE))

    # And that consumer thread dies as in a Redis restart: an unexpected error, then handing its
    # delayed messages back fails on the connection, which dramatiq does not catch there
    def fail_to_requeue(messages: Iterator[dramatiq.Message[Any]]) -> None:
        list(messages)  # iter_queue empties the delay queue as it goes
        raise redis.ConnectionError("Connection refused")

    def unexpected() -> None:
        raise RuntimeError("unexpected")

    thread.requeue_messages = fail_to_requeue  # type: ignore[method-assign]
    thread.handle_delayed_messages = unexpected  # type: ignore[method-assign]
    wait_for(lambda: not thread.is_alive())
    del thread.requeue_messages  # dramatiq's own again, for the worker's stop
    rescuer = StrandedMessageRescuer(broker, worker.consumers, in_hand)
    # When the rescuer looks (no fetch of that thread can be on the way any more)
    assert look(rescuer, worker, 3) == [0, 0, 1]
    # Then the retry is back on the delay queue for a worker that still consumes it
    assert acked(broker, dq_name(CALLBACK_QUEUE)) == set()
    queued = broker.client.lrange(keys.broker_queue(BROKER_NAMESPACE, dq_name(CALLBACK_QUEUE)), 0, -1)
    assert queued == [redis_id]
