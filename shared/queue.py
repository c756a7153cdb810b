"""The queue between the ingress and the workers: one dramatiq queue, one actor.

The ingress enqueues a message for the actor by name, so it never imports the worker code."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq
import orjson
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import xq_name
from dramatiq.middleware import Middleware

from shared import keys
from shared.callback import Callback
from shared.errors import ConfigError, QueueUnavailable
from shared.redis_broker import RedisClockBroker
from shared.redis_client import connect_redis
from shared.setting_urls import AMQP_SCHEMES, REDIS_SCHEMES
from shared.settings import Settings
from shared.taskstate import QueuedMessage, TaskStore

#: The dramatiq queue holding callbacks to process.
CALLBACK_QUEUE = "callbacks"
#: The actor (declared in workers/tasks.py) that processes one callback.
PROCESS_CALLBACK = "process_callback"
#: The dramatiq queue of the polling fallback's passes (workers/polling.py): apart from callbacks,
#: so a backlog does not delay them.
POLL_QUEUE = "poll"
#: Every queue the workers consume, as ``mjhook status`` shows them.
QUEUES = (CALLBACK_QUEUE, POLL_QUEUE)
#: dramatiq's key namespace in Redis.
BROKER_NAMESPACE = "dramatiq"


def queue_is_in_redis(settings: Settings) -> bool:
    """Whether the queue (``MJHOOK_BROKER_URL``) is a Redis broker; otherwise it is RabbitMQ."""
    return settings.queue_url.startswith(REDIS_SCHEMES)


def create_broker(
    settings: Settings,
    *,
    client: redis.Redis | None = None,
    middleware: Sequence[Middleware] | None = None,
) -> dramatiq.Broker:
    """A broker for ``settings.queue_url``: Redis (``redis://``, ``rediss://``) or RabbitMQ
    (``amqp://``, ``amqps://``). ``middleware=None``
    keeps dramatiq's defaults; the ingress passes ``[]`` because it only enqueues."""
    url = settings.queue_url
    if queue_is_in_redis(settings):
        return RedisClockBroker(
            url=None if client else url,
            client=client,
            namespace=BROKER_NAMESPACE,
            middleware=None if middleware is None else list(middleware),
            heartbeat_timeout=settings.redelivery_s * 1000,
            dead_message_ttl=settings.dead_message_ttl_s * 1000,
        )
    if url.startswith(AMQP_SCHEMES):
        # Publisher confirms: enqueue returns only once RabbitMQ has the message (durably queued).
        return _RabbitmqBroker(
            url=url,
            confirm_delivery=True,
            middleware=None if middleware is None else list(middleware),
            dead_message_ttl_ms=settings.dead_message_ttl_s * 1000,
        )
    raise ConfigError(f"unsupported broker URL scheme: {url.split(':', 1)[0]!r}")


class _RabbitmqBroker(RabbitmqBroker):
    """dramatiq's RabbitMQ broker with our dead-letter TTL (its own is fixed at import time from
    an environment variable). RabbitMQ fixes a queue's TTL when the queue is first declared:
    changing it later means deleting ``callbacks.XQ`` once."""

    def __init__(self, *, dead_message_ttl_ms: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dead_message_ttl_ms = dead_message_ttl_ms

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name),
            durable=True,
            arguments={"x-message-ttl": self._dead_message_ttl_ms},
        )


def callback_message(callback: Callback) -> dramatiq.Message[None]:
    return dramatiq.Message(
        queue_name=CALLBACK_QUEUE,
        actor_name=PROCESS_CALLBACK,
        args=(callback.to_message(),),
        kwargs={},
        options={},
    )


def redis_queued_message(broker: RedisBroker, callback: Callback) -> QueuedMessage:
    """The message ``RedisBroker.enqueue`` would write for ``callback`` (its fields, its keys: see
    dispatch.lua's "enqueue"), for :meth:`TaskStore.mark_received` to write together with the
    task's state in one round trip. Built as a plain dict and encoded with orjson, which the
    workers' JSON decoder reads like dramatiq's own encoding, at a fifth of the cost of building a
    ``Message`` (this is on the ingress's hot path). The id is both the message id and the
    broker's ``redis_message_id``: a fresh uuid4 either way."""
    message_id = str(uuid.uuid4())
    body = orjson.dumps(
        {
            "queue_name": CALLBACK_QUEUE,
            "actor_name": PROCESS_CALLBACK,
            "args": [callback.to_message()],
            "kwargs": {},
            "options": {"redis_message_id": message_id},
            "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        }
    )
    return QueuedMessage(
        queue_key=keys.broker_queue(broker.namespace, CALLBACK_QUEUE),
        messages_key=keys.broker_messages(broker.namespace, CALLBACK_QUEUE),
        message_id=message_id,
        body=body,
    )


def enqueue_callback(broker: dramatiq.Broker, callback: Callback) -> None:
    """Put ``callback`` on the queue; raise :class:`QueueUnavailable` when the broker refuses."""
    try:
        broker.enqueue(callback_message(callback))
    except (redis.RedisError, dramatiq.errors.BrokerConnectionError, OSError) as exc:
        raise QueueUnavailable(f"cannot enqueue: {type(exc).__name__}") from exc


def enqueue_broker_beside(settings: Settings, task_client: redis.Redis) -> dramatiq.Broker:
    """A broker that only enqueues (no middleware), on ``task_client`` (the task store's Redis
    client) when the queue lives in that Redis, so that a task's state and its message can be
    written in one call (:func:`writes_with_state`)."""
    if settings.queue_url == settings.redis_url:
        client = task_client
    elif queue_is_in_redis(settings):
        # A queue in a Redis of its own waits no longer than the task store's (redis-py's own
        # default, 5 s per try, would hold the provider past its answer deadline while it hangs).
        client = connect_redis(settings.queue_url, timeout_s=settings.redis_timeout_s)
    else:
        client = None
    return create_broker(settings, client=client, middleware=[])


def writes_with_state(broker: dramatiq.Broker, tasks: TaskStore) -> bool:
    """Whether ``broker``'s queue is on ``tasks``'s own Redis client: a task's state and its
    message then go in one call (``TaskStore.mark_received(enqueue=...)``)."""
    return isinstance(broker, RedisBroker) and broker.client is tasks.client


def queue_callback(broker: dramatiq.Broker, tasks: TaskStore, callback: Callback) -> None:
    """Record ``callback``'s task as received and put the callback on the queue, blocking; raise
    :class:`QueueUnavailable` when Redis or the broker refuses. When the queue is a Redis broker
    on the task store's own client, both go in one call."""
    try:
        if writes_with_state(broker, tasks):
            assert isinstance(broker, RedisBroker)
            message = redis_queued_message(broker, callback)
            tasks.mark_received(callback.task_id, callback.received_at, enqueue=message)
            return
        tasks.mark_received(callback.task_id, callback.received_at)
    except (redis.RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot record the task: {type(exc).__name__}") from exc
    enqueue_callback(broker, callback)
