"""A failed attempt's retry is enqueued before its message is acknowledged, even while Redis
restarts (workers/retries.py)."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from shared import keys
from shared.queue import BROKER_NAMESPACE
from shared.redis_client import connect_redis
from tests.support.servers import RedisServer
from workers.retries import MAX_DELAY_S, DurableRetries


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
    retries = DurableRetries()
    broker = make_broker(aof_redis_server.url, retries)
    aof_redis_server.stop()
    waits: list[float] = []
    restarted = threading.Event()

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # Redis comes back after a few failed attempts
            aof_redis_server.start()
            restarted.set()

    retries._sleep = sleep
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


def test_the_wait_between_attempts_is_capped() -> None:
    """Backoff doubles up to MAX_DELAY_S; other errors are not retried here (dramatiq logs them)."""
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
    assert max(waits) == MAX_DELAY_S
    assert waits == sorted(waits)


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
