"""A consumer thread that dies comes back: a real dramatiq worker on a real Redis that refuses
writes for a moment (READONLY, as in a failover), as workers/tasks.py builds it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name

from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from shared.redis_client import connect_redis
from tests.support.pipeline import wait_for
from tests.support.procs import free_port
from tests.support.servers import RedisServer
from workers.consumers import ConsumerSupervisor, died, revive_consumers
from workers.heartbeat import BrokerHeartbeat
from workers.stranded import MessagesInHand

#: How often the supervisor and the heartbeat (with its rescue of stranded messages) look, seconds.
LOOK_S = 0.2


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[RedisBroker]:
    """The worker's broker: the record of worker threads' messages first, the heartbeat (and its
    rescue) and, unless a test leaves it out, the consumer supervisor."""
    in_hand = MessagesInHand()
    broker = RedisBroker(
        client=connect_redis(redis_server.url), namespace=BROKER_NAMESPACE, middleware=[in_hand]
    )
    broker.add_middleware(BrokerHeartbeat(interval_s=LOOK_S, in_hand=in_hand))
    yield broker
    broker.client.replicaof("NO", "ONE")
    broker.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death
@pytest.mark.parametrize("supervised", [True, False], ids=["supervised", "as-dramatiq-leaves-it"])
def test_a_retry_held_when_redis_refused_writes_runs_once_redis_takes_them_again(
    broker: RedisBroker, start_worker: Callable[[], dramatiq.Worker], supervised: bool
) -> None:
    """Given a retry waiting out its backoff in a worker's delay-queue consumer
    When Redis refuses writes for a moment (READONLY): the consumer's fetch fails, and handing its
    retry back fails too, which ends its thread
    Then, supervised, a new consumer thread takes the delay queue, the retry (requeued by the
    rescue of stranded messages) runs, once. Left as dramatiq leaves it, the worker runs on with
    no delay-queue consumer: the retry never runs, the task stays processing for good."""
    if supervised:
        broker.add_middleware(ConsumerSupervisor(interval_s=LOOK_S))
    ran: list[str] = []
    done = threading.Event()

    def record(name: str) -> None:
        ran.append(name)
        done.set()

    actor = dramatiq.actor(record, actor_name="record", queue_name=CALLBACK_QUEUE, broker=broker)
    worker = start_worker()
    first = worker.consumers[dq_name(CALLBACK_QUEUE)]
    broker.enqueue(actor.message("retry"), delay=1500)
    wait_for(lambda: first.delay_queue.qsize() == 1, timeout_s=30, what="the retry held")

    broker.client.replicaof("127.0.0.1", str(free_port()))  # a master nobody answers for: READONLY
    wait_for(lambda: not first.is_alive(), timeout_s=30, what="the consumer's death")
    broker.client.replicaof("NO", "ONE")

    if supervised:
        assert done.wait(30)
        time.sleep(1)  # a second run would come within the rescue's next few looks
        assert ran == ["retry"]
        assert worker.consumers[dq_name(CALLBACK_QUEUE)].is_alive()
    else:
        assert not done.wait(3)  # fifteen rescues later: requeued, but nothing consumes its queue
        assert died(worker.consumers[dq_name(CALLBACK_QUEUE)])


def test_only_a_thread_that_ended_without_being_stopped_counts_as_dead(
    broker: RedisBroker, start_worker: Callable[[], dramatiq.Worker]
) -> None:
    broker.declare_queue(CALLBACK_QUEUE)
    worker = start_worker()
    assert not any(died(thread) for thread in worker.consumers.values())
    assert revive_consumers(worker) == 0
    thread = worker.consumers[dq_name(CALLBACK_QUEUE)]
    thread.stop()
    thread.join(10)
    assert not died(thread)
    assert revive_consumers(worker) == 0
