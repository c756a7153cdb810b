"""A failed attempt's retry is enqueued before its message is acknowledged, even while Redis
restarts or refuses writes (workers/retries.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from redis._parsers import BaseParser

from shared import keys
from shared.errors import ProviderUnavailable
from shared.queue import BROKER_NAMESPACE
from shared.redis_client import connect_redis
from tests.support.servers import RedisServer
from workers.retries import (
    MAX_DELAY_S,
    OTHER_ERROR_ATTEMPTS,
    DurableRetries,
    refuses_writes,
    retry_enqueue_error,
)

#: CONFIG SET parameters that make a lone Redis refuse writes (and what lets it take them again):
#: one replica required and none connected (NOREPLICAS, as after losing the replicas), and a
#: memory limit already exceeded under noeviction (OOM).
WRITE_REFUSALS = {
    "NOREPLICAS": ("min-replicas-to-write", "1", "0"),
    "OOM": ("maxmemory", "1", "0"),
}


def failed_attempt(broker: dramatiq.Broker) -> dramatiq.MessageProxy:
    """A message of actor ``flaky`` whose attempt just raised."""
    message = dramatiq.Message(
        queue_name="flaky-q", actor_name="flaky", args=(), kwargs={}, options={"redis_message_id": "m-1"}
    )
    return dramatiq.MessageProxy(message)


def make_broker(redis_url: str, retries: DurableRetries) -> RedisBroker:
    client = connect_redis(redis_url, timeout_s=0.5)
    broker = RedisBroker(client=client, namespace=BROKER_NAMESPACE, middleware=[retries])
    dramatiq.actor(lambda: None, actor_name="flaky", queue_name="flaky-q", broker=broker, max_retries=3)
    return broker


def test_the_retry_is_enqueued_once_redis_is_back(aof_redis_server: RedisServer) -> None:
    """Redis is down when the attempt fails: the retry waits for it, lands in the delay queue once
    it is back, and only then does the hook return (so the worker acknowledges after it)."""
    waits: list[float] = []
    restarted = threading.Event()

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # Redis comes back after a few failed attempts
            aof_redis_server.start()
            restarted.set()

    retries = DurableRetries(sleep=sleep)
    broker = make_broker(aof_redis_server.url, retries)
    aof_redis_server.stop()
    try:
        raise RuntimeError("Redis went away mid-task")
    except RuntimeError as exc:
        retries.after_process_message(broker, failed_attempt(broker), exception=exc)
    assert restarted.is_set()
    assert waits[:3] == [0.25, 0.5, 1.0]
    delay_queue = keys.broker_queue(BROKER_NAMESPACE, "flaky-q.DQ")
    client = connect_redis(aof_redis_server.url)
    assert client.llen(delay_queue) == 1
    assert client.hlen(f"{delay_queue}.msgs") == 1


@pytest.mark.parametrize("refusal", sorted(WRITE_REFUSALS))
def test_the_retry_is_enqueued_once_redis_takes_writes_again(redis_server: RedisServer, refusal: str) -> None:
    """Given a Redis that is up but refuses writes when the attempt fails, when the retry is
    enqueued, then it is tried again until Redis takes writes again, lands in the delay queue,
    and only then does the hook return."""
    parameter, refuse, accept = WRITE_REFUSALS[refusal]
    admin = redis_server.client()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # an operator mends it after a few refused attempts
            admin.config_set(parameter, accept)

    retries = DurableRetries(sleep=sleep)
    broker = make_broker(redis_server.url, retries)
    admin.config_set(parameter, refuse)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        retries.after_process_message(broker, failed_attempt(broker), exception=exc)
    assert waits == [0.25, 0.5, 1.0]
    delay_queue = keys.broker_queue(BROKER_NAMESPACE, "flaky-q.DQ")
    assert admin.llen(delay_queue) == 1
    assert admin.hlen(f"{delay_queue}.msgs") == 1


def test_a_retry_redis_will_never_take_dead_letters_the_message(redis_server: RedisServer) -> None:
    """Given a delay queue Redis answers WRONGTYPE for (no wait mends that), when the retry is
    enqueued, then it is tried OTHER_ERROR_ATTEMPTS times and the message is failed (the worker
    dead-letters it) instead of the hook raising (the worker would acknowledge it: lost), carrying
    the enqueue error for the runtime's reason."""
    waits: list[float] = []
    retries = DurableRetries(sleep=waits.append)
    broker = make_broker(redis_server.url, retries)
    admin = redis_server.client()
    admin.set(keys.broker_messages(BROKER_NAMESPACE, "flaky-q.DQ"), "not a hash")
    message = failed_attempt(broker)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        retries.after_process_message(broker, message, exception=exc)
    assert len(waits) == OTHER_ERROR_ATTEMPTS - 1
    assert message.failed
    assert (retry_enqueue_error(message) or "").startswith("ResponseError: WRONGTYPE ")


def test_a_retry_whose_enqueue_reply_cannot_be_read_dead_letters_the_message(
    redis_server: RedisServer,
) -> None:
    """Given a retry enqueue answered with a reply redis-py cannot read (InvalidResponse: a
    garbled reply, a proxy in between), neither a connection error nor an error answer
    Then it is tried OTHER_ERROR_ATTEMPTS times and the message is failed (dead-lettered, the
    task failed with this reason): the hook raised it, dramatiq logged it and acknowledged the
    message, neither retried nor dead-lettered."""
    waits: list[float] = []
    retries = DurableRetries(sleep=waits.append)
    broker = make_broker(redis_server.url, retries)
    attempts: list[object] = []

    def garbled(message: object, *, delay: int | None = None) -> object:
        attempts.append(message)
        raise redis.exceptions.InvalidResponse("Protocol Error: b'\\x00'")

    broker.enqueue = garbled  # type: ignore[method-assign]
    message = failed_attempt(broker)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        retries.after_process_message(broker, message, exception=exc)
    assert len(attempts) == OTHER_ERROR_ATTEMPTS
    assert message.failed
    assert (retry_enqueue_error(message) or "").startswith("InvalidResponse: Protocol Error")


@pytest.mark.parametrize(
    "reply",
    [
        "MISCONF Errors writing to the AOF file: No space left on device",
        "READONLY You can't write against a read only replica.",
        "NOREPLICAS Not enough good replicas to write.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    ],
)
def test_replies_of_a_redis_refusing_writes_are_waited_out(reply: str) -> None:
    error = BaseParser.parse_error(reply)  # the exception redis-py raises for this reply
    assert isinstance(error, redis.ResponseError)
    assert refuses_writes(error)


@pytest.mark.parametrize(
    "reply",
    [
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR user_script:1: Script attempted to access nonexistent global variable 'x'",
        "NOPERM User default has no permissions to run the 'evalsha' command",
        "BUSYKEY Target key name already exists.",
        "ERR unknown command 'EVALSHA'",
    ],
)
def test_other_error_replies_are_not_waited_out(reply: str) -> None:
    error = BaseParser.parse_error(reply)
    assert isinstance(error, redis.ResponseError)
    assert not refuses_writes(error)


@pytest.fixture
def worker_broker(redis_server: RedisServer) -> Iterator[RedisBroker]:
    broker = RedisBroker(
        client=connect_redis(redis_server.url), namespace=BROKER_NAMESPACE, middleware=[DurableRetries()]
    )
    yield broker
    broker.close()


def test_a_worker_retries_an_attempt_that_failed_while_redis_refused_writes(
    redis_server: RedisServer, worker_broker: RedisBroker
) -> None:
    """The review's reproduction, in a real dramatiq worker: the first attempt makes Redis refuse
    writes (min-replicas-to-write 1) and raises; writes come back 2 s later. The retry is queued
    then, runs and succeeds, and nothing is left behind: no acknowledgement pending, no message
    queued or dead-lettered."""
    admin = redis_server.client()
    attempts: list[int] = []
    done = threading.Event()
    mend = threading.Timer(2.0, admin.config_set, args=("min-replicas-to-write", "0"))

    def flaky() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            admin.config_set("min-replicas-to-write", "1")
            mend.start()
            raise RuntimeError("first attempt fails while Redis refuses writes")
        done.set()

    dramatiq.actor(
        flaky, actor_name="flaky", queue_name="flaky-q", broker=worker_broker, max_retries=3, min_backoff=100
    )
    worker = dramatiq.Worker(worker_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        worker_broker.get_actor("flaky").send()
        assert done.wait(30), f"the retry never ran (attempts: {attempts})"
        worker.join()  # returns once every queue is empty and every message acknowledged
    finally:
        mend.cancel()
        worker.stop()
    assert attempts == [1, 2]
    # Redis drops a list, set or hash once empty: only the workers' heartbeats are left.
    assert admin.keys(f"{BROKER_NAMESPACE}:*") == [keys.broker_heartbeats(BROKER_NAMESPACE).encode()]


def test_the_wait_between_attempts_is_capped() -> None:
    """Backoff doubles from FIRST_DELAY_S up to MAX_DELAY_S, and stays there."""
    waits: list[float] = []
    attempts = 0

    class Down:
        def get_actor(self, name: str) -> Any:
            return dramatiq.actor(lambda: None, actor_name=name, broker=StubBroker())

        def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
            nonlocal attempts
            attempts += 1
            if attempts < 10:
                raise dramatiq.errors.BrokerConnectionError("down")
            return message

    retries = DurableRetries(sleep=waits.append)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        retries.after_process_message(Down(), failed_attempt(Down()), exception=exc)  # type: ignore[arg-type]
    assert attempts == 10
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0] + [MAX_DELAY_S] * 4


def test_a_message_out_of_retries_is_failed_without_any_enqueue() -> None:
    class NoEnqueue:
        def get_actor(self, name: str) -> Any:
            return dramatiq.actor(lambda: None, actor_name=name, broker=StubBroker())

        def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
            pytest.fail("a message out of retries must not be enqueued again")

    message = failed_attempt(NoEnqueue())  # type: ignore[arg-type]
    message.options["retries"] = 20
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        DurableRetries().after_process_message(NoEnqueue(), message, exception=exc)  # type: ignore[arg-type]
    assert message.failed
    assert retry_enqueue_error(message) is None  # the runtime gives the attempt's error as the reason


def _retry_eta_ms(redis_url: str) -> int:
    """The eta of the one retry waiting in the delay queue of actor ``flaky``."""
    client = connect_redis(redis_url)
    (encoded,) = client.hvals(keys.broker_messages(BROKER_NAMESPACE, "flaky-q.DQ"))
    eta = dramatiq.Message.decode(encoded).options["eta"]
    assert isinstance(eta, int)
    return eta


@pytest.mark.parametrize(
    ("retry_after_s", "max_backoff_ms", "expected_delay_ms"),
    [
        (600.0, 3_600_000, 600_000),  # the provider's wait, longer than the first backoff (~15 s)
        (10 * 86_400.0, 3_600_000, 3_600_000),  # days: no longer than the actor's longest backoff
    ],
)
def test_a_retry_waits_as_long_as_the_provider_asked(
    redis_server: RedisServer, retry_after_s: float, max_backoff_ms: int, expected_delay_ms: int
) -> None:
    """Given an attempt the provider answered with a Retry-After (rate limited, in maintenance),
    when its retry is enqueued, then it is delayed that long (at most the actor's longest
    backoff), not by dramatiq's first backoff, which would ask again before the provider wants."""
    retries = DurableRetries()
    broker = make_broker(redis_server.url, retries)
    broker.get_actor("flaky").options["max_backoff"] = max_backoff_ms
    unavailable = ProviderUnavailable("provider answered 429", code=429, retry_after=retry_after_s)
    before_ms = int(time.time() * 1000)
    try:
        raise unavailable
    except ProviderUnavailable as exc:
        retries.after_process_message(broker, failed_attempt(broker), exception=exc)
    delay_ms = _retry_eta_ms(redis_server.url) - before_ms
    assert expected_delay_ms <= delay_ms <= expected_delay_ms + 60_000


def test_a_retry_the_provider_set_no_time_for_keeps_dramatiqs_backoff(redis_server: RedisServer) -> None:
    retries = DurableRetries()
    broker = make_broker(redis_server.url, retries)
    before_ms = int(time.time() * 1000)
    try:
        raise ProviderUnavailable("provider answered 503", code=503)
    except ProviderUnavailable as exc:
        retries.after_process_message(broker, failed_attempt(broker), exception=exc)
    # dramatiq's first backoff: its 15 s default, halved at most by jitter
    assert 0 < _retry_eta_ms(redis_server.url) - before_ms <= 60_000
