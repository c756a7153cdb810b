"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from shared.metrics import create_worker_metrics
from tests.support.pipeline import wait_for
from tests.support.servers import FileServer
from tests.support.stack import loopback_settings, ready_bucket
from tests.support.worker_harness import Harness
from tests.workers.test_fetch_hostile_servers import ScriptedServer, Serve
from workers.runtime import build_parts


@pytest.fixture
def start_worker(broker: RedisBroker) -> Iterator[Callable[[], dramatiq.Worker]]:
    """Start a real dramatiq worker (one thread, 100 ms fetch timeout) on the test module's
    ``broker``, once each of its consumer threads has a consumer; all are stopped at teardown."""
    workers: list[dramatiq.Worker] = []

    def start() -> dramatiq.Worker:
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
        worker.start()
        workers.append(worker)
        wait_for(
            lambda: all(thread.consumer is not None for thread in worker.consumers.values()),
            timeout_s=10,
            what="the worker's consumers",
        )
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def harness(redis_server, s3_server, s3_bucket, file_server: FileServer) -> Iterator[Harness]:
    settings = loopback_settings(redis_server.url, s3_server, s3_bucket, read_timeout_s=2)
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    metrics = create_worker_metrics()
    parts = build_parts(settings, metrics=metrics)
    ready_bucket(parts.store)
    yield Harness(parts, parts.tasks, parts.store, file_server, client, metrics, settings)
    client.close()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a server answering every request with the given raw bytes, then closing; each is
    stopped at teardown."""
    servers: list[ScriptedServer] = []

    def start(raw: bytes) -> ScriptedServer:
        servers.append(ScriptedServer([(raw, 0.0)]))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
