"""What another program (or a hand) may leave in the keys ``mjhook status`` and the dashboard read
(dramatiq's heartbeat set, the worker registry, the rejected lists), and a Redis that refuses
TIME: each reads as what it is, never as an error that hides every other number."""

from __future__ import annotations

import redis
from dramatiq.common import current_millis

from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from shared.queue_stats import read_brokers, read_status
from shared.taskstate import TaskStore
from shared.worker_registry import registered_workers
from tests.support.servers import RedisServer

TIMEOUT_MS = 20_000


def brokers_now(client: redis.Redis) -> dict[str, tuple[int | None, bool, bool, int]]:
    """Each broker read: its last beat, whether alive, whether registered, messages it holds."""
    return {
        broker.broker_id: (broker.last_beat_ms, broker.alive, broker.registered, sum(broker.held.values()))
        for broker in read_brokers(
            client,
            namespace=BROKER_NAMESPACE,
            queues=[CALLBACK_QUEUE],
            now_ms=current_millis(),
            timeout_ms=TIMEOUT_MS,
        )
    }


def status_now(queue_client: redis.Redis, tasks_client: redis.Redis) -> dict[str, object]:
    return read_status(
        queue_client,
        TaskStore(tasks_client, ttl_s=3600),
        namespace=BROKER_NAMESPACE,
        queues=[CALLBACK_QUEUE],
        heartbeat_timeout_ms=TIMEOUT_MS,
        now_ms=current_millis(),
        poll_grace_s=300,
    ).to_json()


def test_a_heartbeat_scored_infinity_is_a_broker_that_is_not_alive(client: redis.Redis) -> None:
    # Given a live worker, and two brokers whose scores are no time (Redis takes +inf and -inf)
    now = current_millis()
    client.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {"live": now, "ahead": float("inf")})
    client.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {"behind": float("-inf")})
    client.zadd(keys.WORKERS, {"live": now, "ahead": now, "behind": now})
    # When the brokers are read
    brokers = brokers_now(client)
    # Then neither infinity counts as alive (+inf beat "in the future" passed for alive), and no
    # last beat is made of it (int(inf) raised OverflowError)
    assert brokers == {
        "behind": (None, False, True, 0),
        "live": (now, True, True, 0),
        "ahead": (None, False, True, 0),
    }
    assert status_now(client, client)["workers"] == 1


def test_a_broker_id_that_is_no_utf8_is_shown_escaped_and_its_messages_counted(client: redis.Redis) -> None:
    # Given a broker of another program whose id is no UTF-8 text, registered, holding a message
    now = current_millis()
    odd = b"\xff-broker"
    client.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {odd: now})
    client.zadd(keys.WORKERS, {odd: now, b"\xfe-gone": now - 60_000})
    client.sadd(b"%s:__acks__.\xff-broker.%s" % (BROKER_NAMESPACE.encode(), CALLBACK_QUEUE.encode()), "m-1")
    # When the brokers and the registry are read
    brokers = brokers_now(client)
    # Then its bytes are shown as \xNN escapes (decoding it raised UnicodeDecodeError), and what it
    # holds is found under its own bytes
    assert brokers == {"\\xff-broker": (now, True, True, 1)}
    assert registered_workers(client) == {"\\xff-broker", "\\xfe-gone"}
    status = status_now(client, client)
    assert status["workers"] == 1
    assert status["queues"] == {
        CALLBACK_QUEUE: {
            "ready": 0,
            "delayed": 0,
            "in_flight": 1,
            "dead": 0,
            "held_by_dead": 0,
            "oldest_ready_age_s": None,
        }
    }


def test_a_rejected_list_of_another_type_is_an_unknown_count(client: redis.Redis) -> None:
    # Given mjhook:rejected holding a string (another program's key)
    client.set(keys.REJECTED, "x")
    # When the status is read
    status = status_now(client, client)
    # Then the count is unknown (null), and everything else is there (WRONGTYPE failed it all)
    assert status["rejected"] is None
    assert status["workers"] == 0
    assert CALLBACK_QUEUE in status["queues"]  # type: ignore[operator]


def test_status_with_a_redis_refusing_time_reads_the_heartbeats_against_this_host(
    redis_server: RedisServer,
) -> None:
    # Given a Redis account that may not run TIME (an ACL; some proxies do not forward it), as
    # the workers' brokers then stamp their heartbeats with their host's clock, and a live worker
    admin = redis_server.client()
    admin.acl_setuser(
        "worker", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-time"]
    )
    refusing = redis.Redis.from_url(redis_server.url.replace("redis://", "redis://worker:pw@", 1))
    admin.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {"live": current_millis()})
    admin.zadd(keys.WORKERS, {"live": current_millis()})
    # When the status is read through it (the dashboard reads it so too)
    status = status_now(refusing, refusing)
    # Then the worker is alive on this host's clock (TIME's NoPermissionError failed it all)
    assert status["workers"] == 1
