"""The CLI during an incident: a task record Redis holds unusable, an id that is no text, a
provider answering oddly, Ctrl-C. One `Error:` line or one row each, never a traceback, and the
rest of the work done."""

from __future__ import annotations

import time
import uuid
from typing import Any

import dramatiq
import orjson
import pytest
import redis

import cli.status
from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, PROCESS_CALLBACK
from shared.taskstate import TaskState, TaskStore
from tests.cli.conftest import RunCli, submit_env
from tests.support.pipeline import queued_callback
from tests.support.procs import free_port
from tests.support.servers import RedisServer


def test_recover_goes_on_past_an_unusable_task_record(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """A submitted task whose record holds another type ended the recovery with a traceback,
    before any row and before any other task was looked at."""
    client.zadd(keys.SUBMITTED, {"t-weird": int(time.time() * 1000)})
    client.set(keys.task("t-weird"), "not a task record")
    env = {
        "MJHOOK_REDIS_URL": redis_server.url,
        "MJHOOK_PROVIDER_API_KEY": "k",
        "MJHOOK_PROVIDER_URL": f"http://127.0.0.1:{free_port()}",  # not reached: the record comes first
    }

    result = run_cli(env, "recover", "--since", "1h", "--json")

    assert result.exit_code == 0, result.output
    [row] = orjson.loads(result.stdout)
    assert (row["taskId"], row["state"], row["outcome"]) == ("t-weird", "unusable", "skipped")


def dead_letter(client: redis.Redis, task_id: str) -> str:
    """A dead letter as dramatiq's nack leaves it: no traceback, no reason recorded."""
    dead_id = str(uuid.uuid4())
    message = dramatiq.Message(
        queue_name=CALLBACK_QUEUE,
        actor_name=PROCESS_CALLBACK,
        args=(queued_callback(task_id, resultUrls=["https://example.com/a.png"]),),
        kwargs={},
        options={"redis_message_id": dead_id},
    )
    client.zadd(keys.broker_dead(BROKER_NAMESPACE, CALLBACK_QUEUE), {dead_id: int(time.time() * 1000)})
    client.hset(keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE), dead_id, message.encode())
    return dead_id


@pytest.mark.parametrize("damage", ["wrong-type", "not-utf8"])
def test_dlq_list_shows_every_dead_letter_whatever_its_task_record_holds(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli, damage: str
) -> None:
    """The reason falls back to the task's record: an unusable one hid every dead letter (one
    Error line, or a traceback), and with them the ids replay and purge need."""
    fine, broken = dead_letter(client, "t-fine"), dead_letter(client, "t-broken")
    if damage == "wrong-type":
        client.set(keys.task("t-broken"), "a string, not a task record")
    else:
        TaskStore(client, ttl_s=3600).move("t-broken", TaskState.FAILED, reason="placeholder")
        client.hset(keys.task("t-broken"), "reason", b"caf\xe9")

    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "dlq", "list", "--json")

    assert result.exit_code == 0, result.output
    assert {message["id"] for message in orjson.loads(result.stdout)["messages"]} == {fine, broken}


@pytest.mark.parametrize("command", [["dlq", "replay"], ["dlq", "purge", "--yes"]])
def test_a_dead_letter_id_that_is_no_text_is_not_a_dead_letter(
    redis_server: RedisServer, run_cli: RunCli, command: list[str]
) -> None:
    """b"caf\\xe9" from argv (decoded with surrogateescape) crashed redis-py's packer."""
    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, *command, "caf\udce9")
    assert result.exit_code == 1, result.output
    assert "not a dead letter" in result.stderr


def test_tasks_lists_the_other_tasks_when_a_record_is_not_utf8(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    tasks = TaskStore(client, ttl_s=3600)
    tasks.move("t-good", TaskState.FAILED, reason="fine")
    tasks.move("t-latin1", TaskState.FAILED, reason="placeholder")
    client.hset(keys.task("t-latin1"), "reason", b"caf\xe9 (latin-1)")

    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "tasks", "--json")

    assert result.exit_code == 0, result.output
    assert [row["taskId"] for row in orjson.loads(result.stdout)] == ["t-good"]


def test_ctrl_c_during_a_one_shot_status_is_no_success(
    redis_server: RedisServer, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It printed nothing and exited 0: a script took the empty output for a reading."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the operator's Ctrl-C while Redis does not answer

    monkeypatch.setattr(cli.status, "read_status", interrupted)
    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, "status", "--json")
    assert result.stdout == ""
    assert result.exit_code == 1


def test_a_hostile_task_id_from_the_provider_reaches_no_terminal_raw(
    redis_server: RedisServer, run_cli: RunCli, provider_answering: Any
) -> None:
    url = provider_answering({"code": 200, "msg": "success", "data": {"taskId": "mj\x1b]0;pwned\x07\x1b[2J"}})
    result = run_cli(submit_env(redis_server, url), "submit", "a fox")
    assert result.exit_code == 5, result.output  # submitted, not recorded (no usable taskId)
    assert not {"\x1b", "\x07"} & set(result.stdout + result.stderr)


@pytest.mark.parametrize("code", ["--1", "\u00b2"])
def test_a_body_code_that_is_no_number_is_an_error_line(
    redis_server: RedisServer, run_cli: RunCli, provider_answering: Any, code: str
) -> None:
    url = provider_answering({"code": code, "msg": "?", "data": None})
    result = run_cli(submit_env(redis_server, url), "submit", "a fox")
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("Error:")
