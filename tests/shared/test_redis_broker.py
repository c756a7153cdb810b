"""A live worker's in-flight message is never handed to another worker: not by a host whose clock
runs ahead, nor by dramatiq's random maintenance right after a Redis outage.

A real redis-server (this test's own), dramatiq's real dispatch.lua and the workers' real beats;
the fakes are one seam each: a host's clock (``local_millis``) and dramatiq's random draw."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq.common import current_millis

from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, create_broker
from shared.redis_broker import RedisClockBroker
from shared.settings import Settings
from tests.support.procs import free_port
from tests.support.servers import RedisServer
from workers.heartbeat import Beats, beat

#: The workers' heartbeat timeout: MJHOOK_REDELIVERY_S's default, in ms.
HEARTBEAT_TIMEOUT_MS = Settings().redelivery_s * 1000


def host_broker(url: str, local_millis: Callable[[], int]) -> RedisClockBroker:
    """A worker's broker, as create_broker makes it, on a host whose clock is ``local_millis``."""
    broker = RedisClockBroker(
        url=url,
        namespace=BROKER_NAMESPACE,
        middleware=[],
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        local_millis=local_millis,
    )
    broker.declare_queue(CALLBACK_QUEUE)
    return broker


def in_flight_on(broker: RedisClockBroker) -> str:
    """The id of a message ``broker``'s worker fetched and is processing (in its ack set)."""
    message = dramatiq.Message(queue_name=CALLBACK_QUEUE, actor_name="x", args=(), kwargs={}, options={})
    broker.enqueue(message)
    [body] = broker.do_fetch(CALLBACK_QUEUE, 1)
    redis_id: str = dramatiq.Message.decode(body).options["redis_message_id"]
    return redis_id


def still_held(client: redis.Redis, broker: RedisClockBroker, redis_id: str) -> bool:
    queued = client.lrange(keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE), 0, -1)
    acks = keys.broker_acks(BROKER_NAMESPACE, broker.broker_id, CALLBACK_QUEUE)
    return not queued and bool(client.sismember(acks, redis_id))


def test_a_host_whose_clock_runs_ahead_takes_no_live_worker_for_dead(redis_server: RedisServer) -> None:
    """Given worker B, whose host clock runs 4.9 s behind, beating with a message in hand
    When worker A, whose host clock runs 16 s ahead (less than the 20 s heartbeat timeout), beats
    with maintenance
    Then B's message stays B's: both stamp Redis's clock. On their own clocks, B's beat looked
    20.9 s old to A: B was taken for dead and its message requeued while B processed it (again
    at every beat of A, every 5 s)."""
    behind = host_broker(redis_server.url, lambda: current_millis() - 4_900)
    ahead = host_broker(redis_server.url, lambda: current_millis() + 16_000)
    redis_id = in_flight_on(behind)

    beat(behind)
    beat(ahead)

    assert still_held(behind.client, behind, redis_id)
    assert abs(ahead.sync_clock() + 16_000) < 1_000  # the offset says how far ahead A's clock is


def test_after_an_outage_no_command_runs_maintenance_by_chance(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a Redis outage longer than the heartbeat timeout (every worker's last beat is stale)
    When worker A's first beat after it (which holds maintenance back: Beats) is followed by a
    fetch of A drawing dramatiq's random maintenance, before worker B beat again
    Then B's message stays B's: the brokers run no maintenance by chance (the beats run it). The
    fetch requeued B's message and handed it to A while B processed it."""
    settings = Settings(redis_url=redis_server.url)
    b, a = (create_broker(settings, middleware=[]) for _ in range(2))
    assert isinstance(b, RedisClockBroker)
    assert isinstance(a, RedisClockBroker)
    for broker in (a, b):
        broker.declare_queue(CALLBACK_QUEUE)
    redis_id = in_flight_on(b)
    stale = b.now_ms() - HEARTBEAT_TIMEOUT_MS - 10_000
    b.client.zadd(f"{BROKER_NAMESPACE}:__heartbeats__", {b.broker_id: stale, a.broker_id: stale})
    beats = Beats(a)
    beats._after_failure = True  # its beat during the outage failed
    beats()
    monkeypatch.setattr("dramatiq.brokers.redis.random.randint", lambda low, high: 1)  # the draw hits

    assert a.do_fetch(CALLBACK_QUEUE, 1) == []
    assert still_held(b.client, b, redis_id)


def test_without_redis_the_broker_stamps_this_host_s_time() -> None:
    broker = RedisClockBroker(
        url=f"redis://127.0.0.1:{free_port()}/0", namespace=BROKER_NAMESPACE, middleware=[]
    )
    before = current_millis()

    assert before <= broker.now_ms() <= current_millis()
    with pytest.raises(redis.ConnectionError):
        broker.sync_clock()
