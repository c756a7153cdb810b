"""A message's time limit ends before any after-hook waits (workers/time_limit.py), against a real
Redis that goes away for longer than the limit."""

from __future__ import annotations

import subprocess
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries, default_middleware

from shared import keys
from shared.queue import BROKER_NAMESPACE
from shared.redis_client import connect_redis
from tests.support.procs import free_port, venv_bin
from tests.support.servers import RedisServer
from tests.support.stack import REPO_ROOT
from workers.retries import DurableRetries
from workers.time_limit import end_time_limits_first

QUEUE = "time-limited"


def test_a_retry_waiting_for_redis_outlives_the_time_limit(aof_redis_server: RedisServer) -> None:
    """Given an attempt that fails because Redis went away, with a 1 s time limit
    When Redis stays away 3 s, while the retry waits to be queued
    Then the retry is queued once Redis is back and runs, and the worker thread lives on. The
    time limit interrupted that wait: the message was acknowledged without its retry (lost, its
    task left processing) and the thread died."""
    client = connect_redis(aof_redis_server.url, timeout_s=0.5)
    broker = RedisBroker(
        client=client,
        namespace=BROKER_NAMESPACE,
        middleware=[DurableRetries() if m is Retries else m() for m in default_middleware],
    )
    end_time_limits_first(broker)
    broker.emit_after("process_boot")  # starts TimeLimit's deadline thread, as dramatiq's CLI does
    attempts: list[float] = []

    @dramatiq.actor(
        actor_name="time_limited",
        queue_name=QUEUE,
        broker=broker,
        max_retries=3,
        min_backoff=100,
        time_limit=1000,
    )
    def time_limited() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            aof_redis_server.stop()
            raise ConnectionError("Redis went away mid-task")

    time_limited.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not attempts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert attempts, "the message was never processed"
        time.sleep(3)  # the outage outlasts the 1 s time limit
        aof_redis_server.start()
        deadline = time.monotonic() + 15
        while len(attempts) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)

        assert len(attempts) == 2, "the retry never ran"
        assert worker.workers[0].is_alive(), "the worker thread died of TimeLimitExceeded"
        dead = aof_redis_server.client().zcard(keys.broker_dead(BROKER_NAMESPACE, QUEUE))
        assert dead == 0
    finally:
        worker.stop(timeout=5000)
        broker.close()


def test_the_worker_entry_point_ends_time_limits_before_every_other_after_hook() -> None:
    """workers/tasks.py's broker has TimeLimitEnds last (after-hooks run in reverse order)."""
    env = {"MJHOOK_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "PATH": "/usr/bin:/bin"}
    names = subprocess.run(
        [
            venv_bin("python"),
            "-c",
            "import workers.tasks as t; print(type(t.broker.middleware[-1]).__name__)",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert names[-1] == "TimeLimitEnds"
