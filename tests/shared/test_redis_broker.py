"""A live worker's in-flight message is never handed to another worker: not by a host whose clock
runs ahead, nor by dramatiq's random maintenance right after a Redis outage.

A real redis-server (this test's own), dramatiq's real dispatch.lua and the workers' real beats;
the fakes are one seam each: a host's clock (``local_millis``) and dramatiq's random draw."""

from __future__ import annotations

import time
from collections.abc import Callable

import dramatiq
import dramatiq.common
import pytest
import redis
from dramatiq.common import current_millis

from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, create_broker
from shared.redis_broker import MAX_CLOCK_READ_MS, RedisClockBroker
from shared.redis_client import redis_millis
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
    assert abs(ahead.sync_clock().offset_ms + 16_000) < 1_000  # the offset says how far ahead A's clock is


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


def test_a_step_of_this_host_s_clock_moves_no_stamp(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a worker's broker that measured Redis's clock
    When NTP steps its host's clock back 30 s, before its next beat
    Then its commands still carry Redis's time: the offset is kept against a monotonic clock.
    Against the host's clock, each command stamped the worker's heartbeat 30 s in the past (ZADD
    over its fresh beat), and another worker's beat requeued its in-flight message."""
    broker = create_broker(Settings(redis_url=redis_server.url), middleware=[])
    assert isinstance(broker, RedisClockBroker)
    broker.sync_clock()
    stepped = time.time() - 30

    monkeypatch.setattr(time, "time", lambda: stepped)
    monkeypatch.setattr(dramatiq.common, "time", lambda: stepped)  # its `from time import time`

    assert abs(broker.now_ms() - redis_millis(broker.client)) < 1_000


def test_a_step_of_redis_s_clock_holds_maintenance_back_for_a_beat(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given workers A and B beating, B with a message in hand
    When Redis's clock steps 30 s forward (a VM resumed, a failover to another host): TIME's answer
    moves, while B still stamps on its old offset until its own next beat
    Then A's next beat and the one after it run no maintenance, and B's message stays B's; once B
    beat again, A's beats run it again. (A's first beat after the step took B for dead.)"""
    a = host_broker(redis_server.url, current_millis)
    b = host_broker(redis_server.url, current_millis)
    redis_id = in_flight_on(b)
    beats_a = Beats(a)
    beats_a()
    beat(b)
    real_time = redis.Redis.time

    def stepped_time(self: redis.Redis) -> tuple[int, int]:
        seconds, micros = real_time(self)
        return seconds + 30, micros

    monkeypatch.setattr(redis.Redis, "time", stepped_time)

    beats_a()
    assert still_held(a.client, b, redis_id)
    beats_a()
    assert still_held(a.client, b, redis_id)

    # A dead worker's messages come back once the clocks are steady again.
    a.client.zadd(
        keys.broker_heartbeats(BROKER_NAMESPACE), {b.broker_id: a.now_ms() - 2 * HEARTBEAT_TIMEOUT_MS}
    )
    beats_a()
    assert not still_held(a.client, b, redis_id)


def test_a_slow_read_of_redis_s_clock_keeps_the_offset_and_runs_no_maintenance(
    redis_server: RedisServer,
) -> None:
    """Given a broker that measured Redis's clock
    When Redis stops answering for longer than MAX_CLOCK_READ_MS (a stall, a partition healing)
    and its next measurement waits it out
    Then that measurement keeps the last offset (one taken across the stall is off by half of it)
    and says it is not steady: the beat that made it runs no maintenance."""
    broker = host_broker(redis_server.url, current_millis)
    offset = broker.sync_clock().offset_ms
    redis_server.client().client_pause(MAX_CLOCK_READ_MS + 500, all=True)

    reading = broker.sync_clock()

    assert not reading.steady
    assert abs(reading.offset_ms - offset) < 100


def test_a_redis_refusing_time_still_returns_a_dead_worker_s_messages(redis_server: RedisServer) -> None:
    """Given a Redis account that may not run TIME (an ACL; some proxies do not forward it) and a
    worker that died holding a message
    When a live worker beats
    Then the dead worker's message is requeued: the beats stamp this host's clock, as dramatiq's
    own broker does, and run maintenance. (Every beat failed in TIME, so none ever ran it.)"""
    admin = redis_server.client()
    admin.acl_setuser(
        "worker", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-time"]
    )
    url = redis_server.url.replace("redis://", "redis://worker:pw@", 1)
    dead = host_broker(url, current_millis)
    redis_id = in_flight_on(dead)
    admin.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {dead.broker_id: current_millis() - 60_000})

    Beats(host_broker(url, current_millis))()

    assert admin.lrange(keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE), 0, -1) == [redis_id.encode()]


def test_a_redis_busy_with_a_script_is_no_refusal_of_time(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a broker that measured Redis's clock
    When TIME answers BUSY (a slow script running: a ResponseError like a refusal)
    Then the measurement fails (the beat with it) and the offset stays Redis's: taken for a
    refusal, the host's clock replaced it, and a host whose clock is off stamped its heartbeat
    that far off until its next beat."""
    broker = host_broker(redis_server.url, current_millis)
    offset = broker.sync_clock().offset_ms

    def busy(self: redis.Redis) -> tuple[int, int]:
        raise redis.ResponseError("BUSY Redis is busy running a script.")

    monkeypatch.setattr(redis.Redis, "time", busy)
    with pytest.raises(redis.ResponseError, match="BUSY"):
        broker.sync_clock()
    assert broker._offset_ms == offset
