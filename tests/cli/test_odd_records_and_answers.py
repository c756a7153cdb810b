"""The CLI during an incident: a task record Redis holds unusable, an id that is no text, a
provider answering oddly, Ctrl-C. One `Error:` line or one row each, never a traceback, and the
rest of the work done."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dramatiq
import orjson
import pytest
import redis

import cli.status
from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, PROCESS_CALLBACK
from shared.rejected import Rejection, RejectLog, list_rejected
from shared.taskstate import TaskState, TaskStore
from tests.cli.conftest import RunCli, submit_env
from tests.support.json_http import json_server
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


def test_rejected_replay_goes_on_past_a_task_whose_record_is_unusable(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given three rejected callbacks, the second of a task whose record holds another type
    When `mjhook rejected replay A B C` runs
    Then A and C are queued and reported, B is reported as not replayable and stays listed, exit
    code 1: the record's error escaped, with no line for A (queued and dropped from the list
    already) and C never tried."""
    log = RejectLog(client, keep=10, body_bytes=16 * 1024)
    for task_id in ("r-ok1", "r-bad", "r-ok2"):
        body = orjson.dumps(
            {
                "code": 200,
                "msg": "success",
                "data": {"taskId": task_id, "resultUrls": ["https://example.com/a.png"]},
            }
        )
        log.record(
            Rejection(401, "missing or wrong token", body, len(body), "203.0.113.9", "application/json")
        )
    ids = {orjson.loads(entry.body)["data"]["taskId"]: entry.id for entry in list_rejected(client)}
    client.set(keys.task("r-bad"), "not a task record")

    result = run_cli(
        {"MJHOOK_REDIS_URL": redis_server.url}, "rejected", "replay", ids["r-ok1"], ids["r-bad"], ids["r-ok2"]
    )

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"replayed {ids['r-ok1']}: task r-ok1 queued",
        f"replayed {ids['r-ok2']}: task r-ok2 queued",
        "2 rejected callback(s) replayed",
    ]
    assert result.stderr.startswith(
        f"Error: cannot be replayed: {ids['r-bad']}: the record of task r-bad in Redis is unusable: "
    )
    assert [entry.id for entry in list_rejected(client)] == [ids["r-bad"]]
    assert client.llen(keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)) == 2


@contextmanager
def record_info_provider(
    answers: dict[str, dict[str, Any]], before: dict[str, Callable[[], object]]
) -> Iterator[str]:
    """A provider on loopback answering record-info with ``answers[taskId]``, after running
    ``before[taskId]`` (if any); its URL."""

    def answer(method: str, path: str) -> dict[str, Any]:
        task_id = parse_qs(urlsplit(path).query)["taskId"][0]
        before.get(task_id, lambda: None)()
        return answers[task_id]

    with json_server(answer) as url:
        yield url


def test_the_recover_summary_counts_every_task_once_by_what_became_of_it(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given seven tasks submitted, each coming to another end: one finished (failed) and queued,
    one still generating, one the provider does not know, one stored already, one whose result
    cannot be used (more URLs than allowed), one whose record turns unusable while it is polled
    (queued, not marked), one whose record is unusable from the start (skipped)
    When `mjhook recover` runs
    Then its summary counts each once under its own end, and the counts add up to seven: the
    record's troubles were counted as "already stored" or not at all."""
    flag = {"code": 200, "msg": "success"}
    answers = {
        "t-failed": {**flag, "data": {"successFlag": 2, "errorMessage": "banned prompt"}},
        "t-generating": {**flag, "data": {"successFlag": 0}},
        "t-unknown": {"code": 404, "msg": "not found", "data": None},
        "t-too-many": {
            **flag,
            "data": {
                "successFlag": 1,
                "resultInfoJson": {"resultUrls": [f"https://e.com/{i}.png" for i in range(17)]},
            },
        },
        "t-turns-odd": {**flag, "data": {"successFlag": 2, "errorMessage": "banned prompt"}},
    }
    now_ms = int(time.time() * 1000)
    tasks = TaskStore(client, ttl_s=3600)
    for age, task_id in enumerate([*answers, "t-stored", "t-odd"]):
        client.zadd(keys.SUBMITTED, {task_id: now_ms - 10_000 + age})
        if task_id != "t-odd":
            tasks.move(task_id, TaskState.STORED if task_id == "t-stored" else TaskState.SUBMITTED)
    client.set(keys.task("t-odd"), "not a task record")
    turns_odd = {"t-turns-odd": lambda: client.set(keys.task("t-turns-odd"), "odd")}

    with record_info_provider(answers, before=turns_odd) as provider_url:
        env = {
            "MJHOOK_REDIS_URL": redis_server.url,
            "MJHOOK_PROVIDER_API_KEY": "k",
            "MJHOOK_PROVIDER_URL": provider_url,
        }
        result = run_cli(env, "recover", "--since", "1h")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "7 task(s): 1 queued, 1 still generating, 1 unknown to the provider, 1 already stored, "
        "1 with a result that cannot be used, 1 queued but unmarked (record unusable), "
        "1 skipped (record unusable)"
    )
