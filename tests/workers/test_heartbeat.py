"""The worker's own heartbeat: fresh while alive, and dead workers' messages requeued on time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from shared.queue import CALLBACK_QUEUE, create_broker
from shared.settings import Settings
from tests.support.procs import free_port
from workers import heartbeat
from workers.heartbeat import beat
from workers.stranded import MessagesInHand

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


def test_the_first_beat_after_an_outage_takes_no_live_worker_for_dead(broker: RedisBroker) -> None:
    """Given a worker whose heartbeat went stale during an outage (Redis refusing writes), with a
    message in hand, and this worker's beat failing in that outage
    When Redis takes writes again
    Then this worker's next beat leaves that worker's message alone (its own beat is due within an
    interval), and only the one after requeues it, if the worker is still silent. The first beat
    took every live worker for dead and requeued what they held: processed twice."""
    client = broker.client
    client.hset(f"dramatiq:{CALLBACK_QUEUE}.msgs", "m1", b"{}")
    client.sadd(f"dramatiq:__acks__.other-worker.{CALLBACK_QUEUE}", "m1")
    client.zadd(HEARTBEATS, {"other-worker": client.time()[0] * 1000 - 60_000})
    beats = heartbeat.Beats(broker)
    client.replicaof("127.0.0.1", str(free_port()))  # a master nobody answers for: READONLY
    try:
        with pytest.raises(redis.ResponseError, match="read only replica"):
            beats()
    finally:
        client.replicaof("NO", "ONE")

    beats()
    assert client.smembers(f"dramatiq:__acks__.other-worker.{CALLBACK_QUEUE}") == {b"m1"}
    beats()
    assert client.lrange(f"dramatiq:{CALLBACK_QUEUE}", 0, -1) == [b"m1"]


def test_the_heartbeat_goes_on_after_a_beat_raised_an_error_nobody_foresaw(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a first beat that raises an error outside Redis's (a bug, an odd reply)
    Then the beats go on: the heartbeat thread ended there, and the live worker, its beat stale,
    looked dead, its messages handed to other workers while it still worked on them."""
    attempts: list[int] = []

    def flaky_beat(broker: RedisBroker, *, maintenance: bool = True) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("an odd reply")
        beat(broker, maintenance=maintenance)

    monkeypatch.setattr(heartbeat, "beat", flaky_beat)
    middleware = heartbeat.BrokerHeartbeat(interval_s=0.05, in_hand=MessagesInHand())
    middleware.after_worker_boot(broker, SimpleNamespace(consumers={}))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while len(attempts) < 3:
            assert time.monotonic() < deadline, f"the heartbeat stopped after {len(attempts)} beat(s)"
            time.sleep(0.02)
    finally:
        middleware.before_worker_shutdown(broker, SimpleNamespace(consumers={}))  # type: ignore[arg-type]
    assert broker.client.zscore(HEARTBEATS, broker.broker_id) is not None
