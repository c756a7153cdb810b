"""``mjhook submit / upscale / vary / recover`` against the simulated provider and a real Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import dramatiq
import orjson
import pytest
import redis

from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from shared.settings import Settings
from shared.submit import callback_url
from shared.taskstate import TaskState, TaskStore
from simulator import FaultConfig, RunningSimulator
from tests.cli.conftest import RunCli, submit_env
from tests.support.procs import free_port
from tests.support.provider import StartSimulator
from tests.support.servers import start_redis

PUBLIC_URL = "https://hooks.example.com/"


def cli_env(redis_server: Any, sim: RunningSimulator, **overrides: str) -> dict[str, str]:
    env = {
        "MJHOOK_REDIS_URL": redis_server.url,
        "MJHOOK_PROVIDER_URL": sim.base_url,
        "MJHOOK_PROVIDER_API_KEY": sim.api_key,
        "MJHOOK_PUBLIC_URL": PUBLIC_URL,
        "MJHOOK_CALLBACK_TOKEN": "tok/new,tok-old",
    }
    env.update(overrides)
    return {key: value for key, value in env.items() if value}


def record(client: redis.Redis, task_id: str) -> dict[str, str]:
    raw = client.hgetall(keys.task(task_id))
    return {key.decode(): value.decode() for key, value in raw.items()}


def wait_finished(sim: RunningSimulator, task_id: str) -> None:
    deadline = time.monotonic() + 5
    while sim.task(task_id).completed_at is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_submit_prints_the_task_id_and_records_it_as_submitted(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    result = run_cli(
        cli_env(redis_server, sim), "submit", "a red fox", "--aspect-ratio", "16:9", "--speed", "fast"
    )
    assert result.exit_code == 0, result.output
    task_id = result.stdout.strip()
    # The provider was told to call back our public URL with the first token
    assert sim.task(task_id).callback_url == "https://hooks.example.com/callbacks/midjourney?token=tok%2Fnew"
    fields = record(client, task_id)
    assert fields["state"] == "submitted"
    assert fields["taskType"] == "mj_txt2img"
    assert orjson.loads(fields["params"]) == {"prompt": "a red fox", "aspectRatio": "16:9", "speed": "fast"}
    assert fields["submittedAt"].endswith("Z")
    assert client.zscore(keys.SUBMITTED, task_id) is not None


def test_upscale_and_vary_submit_new_tasks_from_a_grid(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    env = cli_env(redis_server, sim)
    grid = run_cli(env, "submit", "a grid").stdout.strip()
    wait_finished(sim, grid)
    upscaled = run_cli(env, "upscale", grid, "3")
    varied = run_cli(env, "vary", grid, "1")
    assert (upscaled.exit_code, varied.exit_code) == (0, 0), upscaled.output + varied.output
    for result, task_type in ((upscaled, "mj_upscale"), (varied, "mj_vary")):
        fields = record(client, result.stdout.strip())
        assert fields["state"] == "submitted"
        assert fields["taskType"] == task_type
        assert orjson.loads(fields["params"])["taskId"] == grid
    assert run_cli(env, "upscale", grid, "4").exit_code == 2  # index 0-3


def test_a_rate_limited_submission_waits_and_succeeds(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    # Given a provider taking one submission per 3 s (longer than a CLI takes to start, however
    # busy the machine), which took a first one without a 429
    sim = start_simulator(rate_limit=1, rate_window_s=3.0, faults=FaultConfig(drop_share=1.0))
    env = cli_env(redis_server, sim)
    first = run_cli(env, "submit", "one")
    assert sim.provider.admission.rate_limited == 0
    # When a second comes at once
    second = run_cli(env, "submit", "two")
    # Then it was answered 429 and taken on a retry after the back-off
    assert (first.exit_code, second.exit_code) == (0, 0), second.output
    assert sim.provider.admission.rate_limited >= 1
    assert [task.task_id for task in sim.provider.tasks()] == [first.stdout.strip(), second.stdout.strip()]
    assert {record(client, r.stdout.strip())["state"] for r in (first, second)} == {"submitted"}


@pytest.mark.parametrize(
    ("config", "overrides", "exit_code", "words"),
    [
        ({}, {"MJHOOK_PROVIDER_API_KEY": "revoked"}, 3, "401 (unauthorized: check MJHOOK_PROVIDER_API_KEY)"),
        ({"credits": 0}, {}, 3, "402 (no credits left"),
        ({"maintenance": True}, {"MJHOOK_PROVIDER_RETRIES": "0"}, 4, "455"),
        ({}, {"MJHOOK_PUBLIC_URL": ""}, 2, "MJHOOK_PUBLIC_URL"),
        ({}, {"MJHOOK_PROVIDER_API_KEY": ""}, 2, "MJHOOK_PROVIDER_API_KEY is not set"),
        ({}, {"MJHOOK_REDIS_URL": "redis://127.0.0.1:1/0"}, 1, "Redis unavailable, nothing submitted"),
    ],
    ids=["bad-key", "no-credits", "maintenance", "no-public-url", "no-api-key", "redis-down"],
)
def test_failures_say_why_with_their_exit_code_and_record_nothing(
    run_cli: RunCli,
    redis_server: Any,
    start_simulator: StartSimulator,
    client: redis.Redis,
    config: dict[str, Any],
    overrides: dict[str, str],
    exit_code: int,
    words: str,
) -> None:
    sim = start_simulator(**config)
    result = run_cli(cli_env(redis_server, sim, **overrides), "submit", "x")
    assert result.exit_code == exit_code, result.output
    assert words in result.output
    assert result.stdout == ""
    assert client.zcard(keys.SUBMITTED) == 0
    assert sim.provider.tasks() == []


def test_recover_queues_the_finished_results_of_tasks_not_stored(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    # Given three tasks submitted whose callbacks never came, one of them stored meanwhile
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    env = cli_env(redis_server, sim)
    waiting, failed, stored = (run_cli(env, "submit", f"task {i}").stdout.strip() for i in range(3))
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move(failed, TaskState.FAILED, reason="no result")
    tasks.move(stored, TaskState.STORED)
    for task_id in (waiting, failed, stored):
        wait_finished(sim, task_id)
    # When recover runs
    result = run_cli(env, "recover", "--since", "1h", "--json")
    # Then the two not stored are queued for the workers, the stored one skipped
    assert result.exit_code == 0, result.output
    rows = {row["taskId"]: row for row in orjson.loads(result.stdout)}
    assert {task_id: row["outcome"] for task_id, row in rows.items()} == {
        waiting: "queued",
        failed: "queued",
        stored: "skipped",
    }
    raw = client.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE))
    assert sorted(dramatiq.Message.decode(body).args[0]["taskId"] for body in raw) == sorted(
        [waiting, failed]
    )
    assert record(client, waiting)["state"] == "received"
    assert record(client, failed)["state"] == "failed"  # the workers process a success after a failure


def test_recover_takes_only_the_window_and_says_so_in_text(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    env = cli_env(redis_server, sim)
    old = run_cli(env, "submit", "old").stdout.strip()
    client.zadd(keys.SUBMITTED, {old: 1000})  # submitted in 1970
    result = run_cli(env, "recover", "--since", "90s")
    assert result.exit_code == 0, result.output
    assert "0 task(s)" in result.stdout
    assert run_cli(env, "recover", "--since", "soon").exit_code == 2


def test_recover_stops_at_a_queue_that_refuses_with_the_rows_so_far_and_one_error_line(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    """Given two tasks submitted whose callbacks never came, the older one stored meanwhile
    When recover runs while the queue (MJHOOK_BROKER_URL, a Redis of its own) is down
    Then it lists the stored one, stops at the other with one `Error:` line saying the queue refused,
    exit code 1, and that task stays submitted: no traceback."""
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    env = cli_env(redis_server, sim, MJHOOK_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    stored, waiting = (run_cli(env, "submit", f"task {i}").stdout.strip() for i in range(2))
    now_ms = int(time.time() * 1000)
    client.zadd(keys.SUBMITTED, {stored: now_ms - 2000, waiting: now_ms - 1000})
    TaskStore(client, ttl_s=3600).move(stored, TaskState.STORED)
    wait_finished(sim, waiting)

    result = run_cli(env, "recover", "--since", "1h")

    assert result.exit_code == 1, result.output
    assert f"{stored}  stored -> skipped: already stored" in result.stdout
    assert waiting not in result.stdout
    assert "1 task(s): 0 queued" in result.stdout
    assert result.stderr.startswith("Error: stopped: the queue refused: cannot enqueue: ConnectionError")
    assert result.stderr.count("\n") == 1
    assert record(client, waiting)["state"] == "submitted"


def test_recover_lists_the_rows_so_far_when_redis_fails_on_the_way(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis, tmp_path: Path
) -> None:
    """Given two tasks submitted whose callbacks never came, the older one stored meanwhile, and a
    queue in a Redis of its own, when recover runs while the task Redis refuses writes (a replica
    gone: reads work), then it lists the stored one, and the other as queued with the mark that
    failed, before its `Error:` line: the operator learns what was handled (it printed nothing,
    then left out the task whose result was queued just before Redis failed)."""
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    queue = start_redis(tmp_path / "queue")
    try:
        env = cli_env(redis_server, sim, MJHOOK_BROKER_URL=queue.url)
        stored, waiting = (run_cli(env, "submit", f"task {i}").stdout.strip() for i in range(2))
        now_ms = int(time.time() * 1000)
        client.zadd(keys.SUBMITTED, {stored: now_ms - 2000, waiting: now_ms - 1000})
        TaskStore(client, ttl_s=3600).move(stored, TaskState.STORED)
        wait_finished(sim, waiting)
        client.config_set("min-replicas-to-write", "1")
        try:
            result = run_cli(env, "recover", "--since", "1h")
        finally:
            client.config_set("min-replicas-to-write", "0")
        queued = redis.Redis.from_url(queue.url)
        try:
            raw = cast(list[bytes], queued.hvals(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)))
        finally:
            queued.close()
    finally:
        queue.stop()

    assert result.exit_code == 1, result.output
    assert f"{stored}  stored -> skipped: already stored" in result.stdout
    assert [dramatiq.Message.decode(body).args[0]["taskId"] for body in raw] == [waiting]
    assert f"{waiting}  submitted -> queued: Redis failed marking it received: " in result.stdout
    assert "2 task(s): 1 queued" in result.stdout
    assert result.stderr.startswith("Error: Redis refused: ResponseError: NOREPLICAS ")
    assert record(client, waiting)["state"] == "submitted"


def test_recover_leaves_out_a_task_submitted_before_the_task_ttl_and_says_so(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    """Given a task stored 40 days ago whose record expired (MJHOOK_TASK_TTL_S: 30 days) while its
    entry in the submitted index stays (trimmed only when a task is submitted)
    When recover runs with --since 60d
    Then it is not polled (it was queued again, its manifest rewritten), and a note on stderr says
    the window is capped at MJHOOK_TASK_TTL_S."""
    sim = start_simulator(faults=FaultConfig(drop_share=1.0))
    env = cli_env(redis_server, sim)
    old = run_cli(env, "submit", "stored 40 days ago").stdout.strip()
    wait_finished(sim, old)
    client.delete(keys.task(old))
    client.zadd(keys.SUBMITTED, {old: int((time.time() - 40 * 86400) * 1000)})

    result = run_cli(env, "recover", "--since", "60d", "--json")

    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == []
    assert client.hlen(keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)) == 0
    assert "capped at MJHOOK_TASK_TTL_S (2592000s)" in result.stderr
    within = run_cli(env, "recover", "--since", "30d", "--json")
    assert (within.exit_code, within.stdout.strip(), within.stderr) == (0, "[]", "")


def test_a_providers_message_reaches_the_terminal_without_its_controls(
    run_cli: RunCli, redis_server: Any, provider_answering: Any
) -> None:
    url = provider_answering({"code": 401, "msg": "bad key\x1b[2J\x1b]0;pwned\x07", "data": None})
    env = {**submit_env(redis_server, url), "MJHOOK_PUBLIC_URL": PUBLIC_URL}
    result = run_cli(env, "submit", "x")
    assert result.exit_code == 3, result.output
    assert "bad key\\x1b[2J\\x1b]0;pwned\\x07" in result.output
    assert not {"\x1b", "\x07"} & set(result.output)


@pytest.mark.parametrize("since", ["9" * 400 + "d", "116d", "10000000000000000000s"])
def test_recover_refuses_a_window_longer_than_any_duration_option_takes(
    run_cli: RunCli, redis_server: Any, since: str
) -> None:
    """Given a --since beyond MAX_SECONDS (~115 days; a task record lives 30 by default)
    When `mjhook recover` runs
    Then it is a usage error naming the longest one: one past what a float holds was an
    OverflowError traceback."""
    env = {
        "MJHOOK_REDIS_URL": redis_server.url,
        "MJHOOK_PROVIDER_API_KEY": "k",
        "MJHOOK_PROVIDER_URL": f"http://127.0.0.1:{free_port()}",  # not reached
    }
    result = run_cli(env, "recover", "--since", since)
    assert result.exit_code == 2, result.output
    assert "the duration must be at most 115d" in result.stderr
    assert run_cli(env, "recover", "--since", "115d").exit_code == 0


def test_a_task_id_mjhook_cannot_use_is_printed_once_shortened_and_said_to_be_lost(
    run_cli: RunCli, redis_server: Any, provider_answering: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a provider answering a taskId of a megabyte that starts with terminal controls
    When a generation is submitted
    Then stdout is that id escaped and cut to 200 characters, and the error says the ingress
    refuses its callback: the id was printed whole twice, with "its callback is still
    processed" though no callback with such an id is taken."""
    task_id = "\x1b]0;pwned\x07" + "A" * 1_000_000
    url = provider_answering({"code": 200, "msg": "success", "data": {"taskId": task_id}})

    result = run_cli(submit_env(redis_server, url), "submit", "a cat")

    assert result.exit_code == 5, result.output[:500]
    assert result.stdout == "\\x1b]0;pwned\\x07" + "A" * 189 + "\u2026\n"
    assert result.stderr.count("\n") == 1
    assert "AAAA" not in result.stderr
    assert "the ingress refuses its callback" in result.stderr
    assert "still processed" not in result.stderr
    logged = [
        record.getMessage()
        for record in caplog.records
        if "submitted but not recorded" in record.getMessage()
    ]
    assert len(logged) == 1
    assert len(logged[0]) < 500


def test_a_public_url_whose_scheme_is_in_upper_case_makes_the_callback_url() -> None:
    """The settings take HTTPS://, as httpx reads it: submitting must too (it refused it)."""
    settings = Settings(public_url="HTTPS://hooks.example/", callback_token="tok")
    assert callback_url(settings) == "HTTPS://hooks.example/callbacks/midjourney?token=tok"
