"""``mjhook status`` against a Redis holding a known state: tasks in every state, callbacks queued
through the real broker, a dead letter made by a real worker, a live and a dead worker."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.common import current_millis

from cli.status import status_reader
from shared import keys
from shared.callback import Callback
from shared.queue import (
    BROKER_NAMESPACE,
    CALLBACK_QUEUE,
    POLL_QUEUE,
    callback_message,
    create_broker,
    enqueue_callback,
)
from shared.rejected import Rejection, RejectLog
from shared.settings import Settings
from shared.submitted import SubmittedTasks
from shared.taskstate import TaskState, TaskStore
from tests.cli.conftest import RunCli, dead_letters_from_real_workers
from tests.support.clock import FakeClock
from tests.support.pipeline import queued_callback
from tests.support.procs import ManagedProcess, free_port, venv_bin, wait_until
from tests.support.servers import RedisServer
from tests.support.stack import REPO_ROOT

pytestmark = pytest.mark.integration

CONTRACT_QUEUE_KEYS = ("ready", "delayed", "in_flight", "dead")
TASK_STATES = {"received": 1, "processing": 1, "stored": 2, "partial": 1, "failed": 1}


def callback(task_id: str) -> Callback:
    return Callback.from_message(queued_callback(task_id))


def put_tasks_in_every_state(settings: Settings, client: redis.Redis) -> None:
    """:data:`TASK_STATES` in the task store, every task reaching its state just now."""
    tasks = TaskStore(client, ttl_s=settings.task_ttl_s)
    for state, count in TASK_STATES.items():
        for i in range(count):
            tasks.move(f"{state}-{i}", TaskState(state))


def rabbitmq_env(redis_url: str) -> dict[str, str]:
    """Task state in ``redis_url``, the queue in a RabbitMQ where nothing listens: ``mjhook
    status`` must answer without it."""
    return {
        "MJHOOK_REDIS_URL": redis_url,
        "MJHOOK_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }


def build_known_state(env: dict[str, str], log_dir: Path) -> None:
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(settings.redis_url)
    # A callback the real workers refused for good (a dead letter); the workers stopped longer
    # ago than the redelivery timeout
    dead_letters_from_real_workers(env, log_dir, [queued_callback("dead-1", code="oops")])
    long_ago = current_millis() - 3 * settings.redelivery_s * 1000
    heartbeats = keys.broker_heartbeats(BROKER_NAMESPACE)
    client.zadd(heartbeats, dict.fromkeys(client.zrange(heartbeats, 0, -1), long_ago))
    # A callback the ingress refused, kept for inspection
    RejectLog(client, keep=10, body_bytes=1024).record(
        Rejection(
            status=400, reason="body is not valid JSON", body=b"{", size=1, remote_addr="", content_type=""
        )
    )
    put_tasks_in_every_state(settings, client)
    # Three callbacks queued the ingress's way, and a retry waiting for its backoff
    ingress = create_broker(settings, client=client, middleware=[])
    for i in range(3):
        enqueue_callback(ingress, callback(f"queued-{i}"))
    ingress.enqueue(callback_message(callback("retry-1")), delay=600_000)
    # A live worker busy with one of them: a real dramatiq consumer, which beats as it fetches
    busy = create_broker(settings, client=client, middleware=[])
    assert next(busy.consume(CALLBACK_QUEUE, prefetch=1)) is not None
    # A dead worker: silent for longer than the redelivery timeout, still holding a message
    client.zadd(heartbeats, {"dead-worker": long_ago})
    client.sadd(keys.broker_acks(BROKER_NAMESPACE, "dead-worker", CALLBACK_QUEUE), "lost-message")
    # The polling fallback's next pass, waiting in its own queue
    ingress.enqueue(
        dramatiq.Message(
            queue_name=POLL_QUEUE, actor_name="poll_silent_tasks", args=(), kwargs={}, options={}
        ),
        delay=30_000,
    )


def assert_known_state(document: dict[str, Any]) -> None:
    queue = document["queues"][CALLBACK_QUEUE]
    assert {key: queue[key] for key in CONTRACT_QUEUE_KEYS} == {
        "ready": 2,  # 3 queued, 1 taken by the busy worker
        "delayed": 1,
        "in_flight": 2,  # the busy worker's and the dead worker's
        "dead": 1,
    }
    assert queue["held_by_dead"] == 1
    assert 0 <= queue["oldest_ready_age_s"] < 120
    poll = document["queues"][POLL_QUEUE]
    assert {key: poll[key] for key in CONTRACT_QUEUE_KEYS} == {
        "ready": 0,
        "delayed": 1,
        "in_flight": 0,
        "dead": 0,
    }
    # The busy worker; not the stopped one, the dead one, nor the enqueue-only brokers
    assert document["workers"] == 1
    assert document["tasks"] == TASK_STATES
    assert document["rejected"] == 1
    # Everything reached its state just now: the last minute
    assert document["per_minute"]["stored"] == [0] * 9 + [2]
    assert document["per_minute"]["partial"] == [0] * 9 + [1]
    assert document["per_minute"]["failed"] == [0] * 9 + [1]


def test_status_reports_the_queue_workers_and_tasks_from_redis_alone(
    app_env: dict[str, str], tmp_path: Path, run_cli: RunCli
) -> None:
    build_known_state(app_env, tmp_path)

    # In-process, as JSON
    result = run_cli(app_env, "status", "--json")
    assert result.exit_code == 0, result.output
    assert_known_state(json.loads(result.stdout))

    # Through the console script
    done = subprocess.run(
        [venv_bin("mjhook"), "status", "--json"], env=app_env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert_known_state(json.loads(done.stdout))

    # For people
    result = run_cli(app_env, "status")
    assert result.exit_code == 0, result.output
    assert CALLBACK_QUEUE in result.stdout
    assert "Workers alive: 1" in result.stdout
    assert "Rejected callbacks kept: 1 (mjhook rejected list)" in result.stdout


def test_with_the_queue_in_rabbitmq_status_shows_the_task_counts_from_redis(
    redis_server: RedisServer, run_cli: RunCli
) -> None:
    # Given the queue in RabbitMQ and tasks in every state in Redis
    env = rabbitmq_env(redis_server.url)
    settings = Settings.from_env(env)
    put_tasks_in_every_state(settings, redis.Redis.from_url(settings.redis_url))

    # When, as JSON
    result = run_cli(env, "status", "--json")
    # Then the task counts, no queues and the workers unknown (only Redis workers register)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["queues"] == {}
    assert document["workers"] is None
    assert document["tasks"] == TASK_STATES
    assert document["per_minute"]["stored"] == [0] * 9 + [2]

    # When, for people
    result = run_cli(env, "status")
    # Then the same counts, and where the queue depths are to be seen instead
    assert result.exit_code == 0, result.output
    assert "Queue depths not shown: the queue is in RabbitMQ" in result.stdout
    assert "RabbitMQ's own management tools" in result.stdout
    assert "Workers alive: unknown" in result.stdout
    assert task_counts_shown(result.stdout) == {**TASK_STATES, "submitted": 0, "overdue": 0}


def task_counts_shown(output: str) -> dict[str, int]:
    """The Tasks table of ``mjhook status``: its header row's names with the row below's numbers."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if "received" in line and "failed" in line)
    names = re.findall(r"[a-z]+", lines[header])
    counts = [int(count) for count in re.findall(r"\d+", lines[header + 2])]
    return dict(zip(names, counts, strict=True))


def test_status_says_redis_is_unavailable_in_one_line(run_cli: RunCli) -> None:
    result = run_cli({"MJHOOK_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "status", "--json")
    assert result.exit_code == 1
    assert "Redis unavailable" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "rabbitmq", "shows"),
    [
        pytest.param(["--watch"], False, "Workers alive", id="live-view"),
        pytest.param(["--watch", "--json"], False, '"workers"', id="json-lines"),
        pytest.param(["--watch"], True, "Workers alive: unknown", id="live-view-rabbitmq"),
        pytest.param(["--watch", "--json"], True, '"workers":null', id="json-lines-rabbitmq"),
    ],
)
def test_watch_refreshes_until_ctrl_c(
    app_env: dict[str, str], tmp_path: Path, args: list[str], rabbitmq: bool, shows: str
) -> None:
    # rich draws its live view only on a terminal; these make the log file count as one
    env = {**app_env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    if rabbitmq:
        env.update(rabbitmq_env(app_env["MJHOOK_REDIS_URL"]))
    argv = [venv_bin("mjhook"), "status", "--interval", "0.2", *args]
    proc = ManagedProcess(argv, log_path=tmp_path / "watch.log", cwd=REPO_ROOT, env=env)
    try:
        # Given two refreshes on screen
        wait_until(lambda: proc.log_since_start().count(shows) >= 2, 30, what="two refreshes", proc=proc)
        # When Ctrl-C
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: not proc.is_running(), 10, what="mjhook to exit")
        # Then it ends quietly
        assert proc.returncode == 0, proc.describe()
        assert "Traceback" not in proc.log_since_start()
    finally:
        proc.terminate()


def test_status_says_whether_redis_keeps_what_was_acknowledged(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    env = {"MJHOOK_REDIS_URL": redis_server.url}

    # Given a Redis with the AOF off and an eviction policy
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.config_set("maxmemory", "1gb")
    # When, as JSON
    result = run_cli(env, "status", "--json")
    # Then each problem, one sentence each
    assert result.exit_code == 0, result.output
    problems = json.loads(result.stdout)["redis_durability"]
    assert [problem.split(":")[0] for problem in problems] == [
        "appendonly is no",
        "maxmemory-policy is allkeys-lru",
    ]
    # When, for people
    result = run_cli(env, "status")
    # Then the same, under one heading
    assert result.exit_code == 0, result.output
    assert "Redis durability:\n" in result.stdout
    assert f"  - {problems[0]}\n" in result.stdout
    assert f"  - {problems[1]}\n" in result.stdout

    # Given the Redis run as mjhook needs it
    client.config_set("appendonly", "yes")
    client.config_set("appendfsync", "always")
    client.config_set("maxmemory-policy", "noeviction")
    # Then no problem, in either form
    assert json.loads(run_cli(env, "status", "--json").stdout)["redis_durability"] == []
    assert "Redis durability: ok" in run_cli(env, "status").stdout


def test_status_counts_a_submitted_task_overdue_only_past_the_poll_grace(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """Given a task mjhook submitted at T, and MJHOOK_POLL_GRACE_S=600
    Then `mjhook status` reads it submitted and not overdue until T+600, overdue from then, and
    stamps each reading with its clock's time in ms (taken_at_ms)."""
    settings = Settings.from_env({"MJHOOK_REDIS_URL": redis_server.url, "MJHOOK_POLL_GRACE_S": "600"})
    clock = FakeClock(1_795_000_000.0)
    tasks = TaskStore(client, ttl_s=settings.task_ttl_s, clock=clock)
    SubmittedTasks(client, tasks, ttl_s=settings.task_ttl_s, clock=clock).record("t-1", {})
    read = status_reader(settings, clock=clock)

    clock.now += 599
    early = read().to_json()
    clock.now += 1
    late = read().to_json()

    assert early["submitted"] == {"submitted": 1, "overdue": 0}
    assert late["submitted"] == {"submitted": 1, "overdue": 1}
    assert early["taken_at_ms"] == 1_795_000_599_000
    assert late["taken_at_ms"] == 1_795_000_600_000
