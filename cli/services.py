"""What the commands talk to, opened from the settings, and their failures turned into one-line
errors (exit code 1) instead of tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import dramatiq
import redis
from minio.error import S3Error

from shared.errors import MjhookError
from shared.printable import printable
from shared.queue import create_broker, queue_is_in_redis
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.taskstate import TaskStore

#: Seconds a command waits for Redis before it says Redis is unavailable.
DEFAULT_REDIS_TIMEOUT_S = 5.0


def queue_redis(settings: Settings) -> redis.Redis:
    """The broker's Redis, where the queues and the dead letters live."""
    if not queue_is_in_redis(settings):
        raise click.ClickException("the queue is not in Redis (MJHOOK_BROKER_URL): this needs a Redis broker")
    return connect_redis(settings.queue_url, timeout_s=DEFAULT_REDIS_TIMEOUT_S)


def task_store(settings: Settings) -> TaskStore:
    """The task state records (``MJHOOK_REDIS_URL``)."""
    client = connect_redis(settings.redis_url, timeout_s=DEFAULT_REDIS_TIMEOUT_S)
    return TaskStore(client, ttl_s=settings.task_ttl_s)


def enqueue_broker(settings: Settings, client: redis.Redis) -> dramatiq.Broker:
    """A broker that only enqueues (no middleware, like the ingress's)."""
    return create_broker(settings, client=client, middleware=[])


@contextmanager
def reported_failures() -> Iterator[None]:
    """Redis or object storage unavailable or refusing, or a bad configuration: say so in one
    line (:func:`redis_failure`), exit code 1."""
    try:
        yield
    except redis.RedisError as exc:
        raise click.ClickException(redis_failure(exc)) from exc
    except MjhookError as exc:
        raise click.ClickException(printable(exc)) from exc
    except S3Error as exc:
        raise click.ClickException(f"object storage refused: {exc.code}: {printable(exc.message)}") from exc


def redis_failure(exc: redis.RedisError) -> str:
    """What one line says of a Redis error: ``Redis refused: ...`` when Redis is up but answered
    with an error (a wrong password, an ACL refusing a command, a key holding another type than this version
    writes there, out of memory, read-only, too few replicas); ``Redis unavailable: ...`` when
    it did not answer (connection refused or lost, timeout)."""
    # A wrong password is a ConnectionError subclass in redis-py; Redis answered it all the same.
    what = "refused" if isinstance(exc, redis.ResponseError | redis.AuthenticationError) else "unavailable"
    return f"Redis {what}: {type(exc).__name__}: {printable(exc)}"
