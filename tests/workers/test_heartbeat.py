"""The worker's own heartbeat: fresh while alive, and dead workers' messages requeued on time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from shared.queue import CALLBACK_QUEUE, create_broker
from shared.settings import Settings
from workers.heartbeat import beat

HEARTBEATS = "dramatiq:__heartbeats__"


@pytest.fixture
def broker(redis_server) -> Iterator[RedisBroker]:
    client = redis.Redis.from_url(redis_server.url)
    broker = create_broker(Settings(redis_url=redis_server.url, redelivery_s=5), client=client, middleware=[])
    assert isinstance(broker, RedisBroker)
    broker.declare_queue(CALLBACK_QUEUE)
    yield broker
    client.close()


def test_a_beat_refreshes_this_workers_heartbeat(broker: RedisBroker) -> None:
    beat(broker)
    score = broker.client.zscore(HEARTBEATS, broker.broker_id)
    assert score is not None
    assert abs(score - broker.client.time()[0] * 1000) < 5000


def test_a_beat_requeues_the_messages_of_a_dead_worker_at_once(broker: RedisBroker) -> None:
    # Given a worker that fetched a message and then fell silent 10 s ago (timeout: 5 s)
    client = broker.client
    now_ms = client.time()[0] * 1000
    client.hset(f"dramatiq:{CALLBACK_QUEUE}.msgs", "m1", b"{}")
    client.sadd(f"dramatiq:__acks__.dead-worker.{CALLBACK_QUEUE}", "m1")
    client.zadd(HEARTBEATS, {"dead-worker": now_ms - 10_000})
    # And one that is alive
    client.hset(f"dramatiq:{CALLBACK_QUEUE}.msgs", "m2", b"{}")
    client.sadd(f"dramatiq:__acks__.live-worker.{CALLBACK_QUEUE}", "m2")
    client.zadd(HEARTBEATS, {"live-worker": now_ms})
    # When one beat runs
    beat(broker)
    # Then only the dead worker's message is back on the queue
    assert client.lrange(f"dramatiq:{CALLBACK_QUEUE}", 0, -1) == [b"m1"]
    assert client.zscore(HEARTBEATS, "dead-worker") is None
    assert client.smembers(f"dramatiq:__acks__.live-worker.{CALLBACK_QUEUE}") == {b"m2"}
