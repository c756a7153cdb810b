"""shared/redis_durability.py against real redis-servers configured each way, and where its
warnings show: a worker process's boot and the ingress's start."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import redis

from shared import keys
from shared.callback import Callback
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, create_broker, enqueue_callback
from shared.redis_durability import CANNOT_BE_CHECKED, clients_to_check, durability_problems, problems_of
from shared.settings import Settings
from shared.taskstate import TaskStore
from tests.support.pipeline import queued_callback
from tests.support.procs import free_port, wait_until
from tests.support.servers import RedisServer, start_redis
from tests.support.stack import start_ingress
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.integration

DURABLE = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}


def configure(client: redis.Redis, **values: str) -> None:
    """CONFIG SET on this test's own server (names with ``_`` for ``-``)."""
    for name, value in values.items():
        client.config_set(name.replace("_", "-"), value)


def test_a_redis_run_as_required_has_no_problems(client: redis.Redis) -> None:
    configure(client, appendonly="yes", appendfsync="always", maxmemory_policy="noeviction")
    assert durability_problems(client) == []


def test_the_aof_off_loses_every_queued_callback_on_a_restart(client: redis.Redis) -> None:
    # Given the fixture's Redis as redis-server starts without a config file: the AOF off
    assert client.config_get("appendonly") == {"appendonly": "no"}
    # Then that is the one problem (appendfsync does nothing without the AOF)
    assert durability_problems(client) == [
        "appendonly is no: a Redis restart or crash loses every acknowledged callback still queued "
        "(set appendonly yes, appendfsync always)"
    ]


@pytest.mark.parametrize(
    ("appendfsync", "said"),
    [
        ("everysec", "appendfsync is everysec: a host crash or power loss can lose the last second"),
        ("no", "appendfsync is no: the AOF reaches the disk when the OS flushes it"),
    ],
)
def test_an_aof_not_fsyncd_at_each_write_loses_the_last_acks_in_a_host_crash(
    client: redis.Redis, appendfsync: str, said: str
) -> None:
    configure(client, appendonly="yes", appendfsync=appendfsync)
    [problem] = durability_problems(client)
    assert problem.startswith(said)
    assert problem.endswith("(use always)")


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_an_allkeys_eviction_policy_may_drop_queued_callbacks(client: redis.Redis, policy: str) -> None:
    configure(client, **{**DURABLE, "maxmemory-policy": policy, "maxmemory": "1gb"})
    assert durability_problems(client) == [
        f"maxmemory-policy is {policy}: at maxmemory Redis evicts keys, queued callbacks among them "
        "(use noeviction)"
    ]


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl"])
def test_a_volatile_eviction_policy_spares_the_queue_but_not_the_task_records(
    client: redis.Redis, policy: str
) -> None:
    configure(client, **{**DURABLE, "maxmemory-policy": policy, "maxmemory": "1gb"})
    [problem] = durability_problems(client)
    assert problem.startswith(f"maxmemory-policy is {policy}: at maxmemory Redis evicts keys that have a TTL")
    assert "not the queued callbacks" in problem
    assert "task records" in problem
    assert problem.endswith("(use noeviction)")


def test_an_eviction_policy_without_a_memory_limit_evicts_nothing(client: redis.Redis) -> None:
    """With maxmemory 0 (no limit, redis-server's default) Redis never evicts, whatever its policy:
    no problem to report (a false alarm on every such Redis)."""
    configure(client, **{**DURABLE, "maxmemory-policy": "allkeys-lru", "maxmemory": "0"})
    assert durability_problems(client) == []


class OddPipeline:
    """A pipeline whose CONFIG GET answers are not Redis's shape (a server that only looks like
    Redis): a null, a number, a mapping of numbers."""

    def config_get(self, name: str) -> None:
        pass

    def execute(self) -> list[object]:
        return [None, 5, {"appendfsync": 1}, {b"maxmemory": b"0"}]


class OddRedis:
    def pipeline(self, transaction: bool = True) -> OddPipeline:
        return OddPipeline()


def test_answers_not_of_redis_shape_cannot_be_checked_and_raise_nothing() -> None:
    [note] = durability_problems(OddRedis())  # type: ignore[arg-type]
    assert note.startswith("cannot be checked (CONFIG GET gave no appendonly, appendfsync, maxmemory-policy)")


def test_what_the_volatile_sentence_says_holds_queued_callbacks_have_no_ttl_task_records_do(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    # Given a callback queued and recorded the ingress's way
    settings = Settings.from_env({"MJHOOK_REDIS_URL": redis_server.url})
    tasks = TaskStore(client, ttl_s=settings.task_ttl_s)
    enqueue_callback(
        create_broker(settings, client=client, middleware=[]), Callback.from_message(queued_callback("ttl-1"))
    )
    tasks.mark_received("ttl-1", "2024-01-01T00:00:00Z")
    # Then the queue's keys never expire (volatile-* leaves them), the task record does
    assert client.ttl(keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)) == -1
    assert client.ttl(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)) == -1
    assert client.ttl(keys.task("ttl-1")) > 0


def test_every_problem_is_listed_at_once(client: redis.Redis) -> None:
    configure(
        client, appendonly="yes", appendfsync="everysec", maxmemory_policy="allkeys-lru", maxmemory="1gb"
    )
    problems = durability_problems(client)
    assert [problem.split(":")[0] for problem in problems] == [
        "appendfsync is everysec",
        "maxmemory-policy is allkeys-lru",
    ]


def test_a_redis_with_config_renamed_cannot_be_checked_and_raises_nothing(tmp_path: Path) -> None:
    # Given a Redis that refuses CONFIG, as managed services do
    server = start_redis(tmp_path / "no-config", extra_args=["--rename-command", "CONFIG", ""])
    try:
        client = server.client()
        with pytest.raises(redis.ResponseError):
            client.config_get("appendonly")
        # When checked
        problems = durability_problems(client)
    finally:
        server.kill()
    # Then one note saying so, and what to make sure of by other means
    [note] = problems
    assert note.startswith(f"{CANNOT_BE_CHECKED} (ResponseError:")
    assert note.endswith(
        "make sure it runs with appendonly yes, appendfsync always, maxmemory-policy noeviction"
    )


def test_an_unreachable_redis_cannot_be_checked_and_raises_nothing() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1.0, socket_timeout=1.0)
    [note] = durability_problems(client)
    assert note.startswith(f"{CANNOT_BE_CHECKED} (ConnectionError:")


def test_a_queue_in_a_redis_of_its_own_is_checked_too_and_named(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    # Given task state in a durable Redis and the queue in one with the AOF off
    configure(client, **DURABLE)
    queue_server = start_redis(tmp_path / "queue-redis")
    try:
        settings = Settings.from_env(
            {"MJHOOK_REDIS_URL": redis_server.url, "MJHOOK_BROKER_URL": queue_server.url}
        )
        # Then the queue's problem, after its setting's name
        [problem] = problems_of(clients_to_check(settings, client, queue_server.client()))
    finally:
        queue_server.kill()
    assert problem.startswith("MJHOOK_BROKER_URL: appendonly is no:")


def test_a_worker_process_warns_of_its_redis_at_boot(
    redis_server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker on a Redis that evicts, with the AOF off
    configure(client, maxmemory_policy="allkeys-lru", maxmemory="1gb")
    settings = Settings.from_env({"MJHOOK_REDIS_URL": redis_server.url})
    runtime = WorkerRuntime(settings)
    # When it boots
    with caplog.at_level(logging.WARNING, logger="workers.runtime"):
        problems = runtime.warn_of_redis_durability(create_broker(settings, middleware=[]))
    # Then each problem is in its log, at WARNING
    assert [problem.split(":")[0] for problem in problems] == [
        "appendonly is no",
        "maxmemory-policy is allkeys-lru",
    ]
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warned == [f"Redis durability: {problem}" for problem in problems]


def test_the_ingress_warns_of_its_redis_once_as_it_starts(redis_server: RedisServer, tmp_path: Path) -> None:
    # Given an ingress of two processes on a Redis with the AOF off
    env = {name: value for name, value in os.environ.items() if not name.startswith("MJHOOK_")}
    env |= {"MJHOOK_REDIS_URL": redis_server.url, "MJHOOK_SPOOL_DIR": ""}
    proc, _ = start_ingress(env, tmp_path, extra_args=["--workers", "2"])
    try:
        wait_until(lambda: "Redis durability:" in proc.log_since_start(), 10, what="the warning", proc=proc)
        log = proc.log_since_start()
    finally:
        proc.terminate()
    # Then its master said so once, in gunicorn's log, at WARNING
    [line] = [line for line in log.splitlines() if "Redis durability:" in line]
    assert "WARNING" in line
    assert "Redis durability: appendonly is no: a Redis restart or crash loses every acknowledged" in line
