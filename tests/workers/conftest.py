"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from tests.support.pipeline import wait_for


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
