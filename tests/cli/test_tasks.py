"""``mjhook tasks``: the most recently changed tasks from the task state records."""

from __future__ import annotations

import json

import pytest
import redis

from shared import keys
from shared.callback import Callback
from shared.settings import Settings
from shared.taskstate import TaskState, TaskStore
from tests.cli.conftest import RunCli
from tests.support.clock import FakeClock
from tests.support.pipeline import queued_callback
from tests.support.servers import RedisServer
from tests.support.stack import ready_bucket
from workers.runtime import build_parts


@pytest.fixture
def env(redis_server) -> dict[str, str]:
    client = redis.Redis.from_url(redis_server.url)
    clock = FakeClock(1_800_000_000.0)
    tasks = TaskStore(client, ttl_s=86_400 * 365, clock=clock)
    # Given tasks changed one second apart, in this order
    for task_id, state, fields in [
        ("t-old", TaskState.STORED, {}),
        ("t-failed", TaskState.FAILED, {"reason": "generation failed [nsfw]", "code": "500"}),
        ("t-new", TaskState.PROCESSING, {}),
    ]:
        clock.now += 1
        tasks.move(task_id, state, **fields)
    client.close()
    return {"MJHOOK_REDIS_URL": redis_server.url}


def test_tasks_are_listed_newest_first_with_state_time_and_reason(
    env: dict[str, str], run_cli: RunCli
) -> None:
    result = run_cli(env, "tasks", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["taskId"] for row in rows] == ["t-new", "t-failed", "t-old"]
    assert rows[1] == {
        "taskId": "t-failed",
        "state": "failed",
        "updatedAt": "2027-01-15T08:00:02.000Z",
        "receivedAt": None,
        "code": "500",
        "reason": "generation failed [nsfw]",
    }


def test_tasks_can_be_filtered_by_state_and_limited(env: dict[str, str], run_cli: RunCli) -> None:
    failed = json.loads(run_cli(env, "tasks", "--state", "failed", "--json").stdout)
    assert [row["taskId"] for row in failed] == ["t-failed"]
    latest = json.loads(run_cli(env, "tasks", "--limit", "2", "--json").stdout)
    assert [row["taskId"] for row in latest] == ["t-new", "t-failed"]
    assert run_cli(env, "tasks", "--state", "lost").exit_code == 2


def test_tasks_for_people_is_a_table(env: dict[str, str], run_cli: RunCli) -> None:
    result = run_cli(env, "tasks")
    assert result.exit_code == 0, result.output
    assert "t-failed" in result.stdout
    assert "generation failed [nsfw]" in result.stdout


HOSTILE_MSG = "generation failed\x1b[2J\x1b]0;pwned\x07\u202e"


def test_a_reason_from_a_callback_reaches_the_terminal_without_its_controls(
    app_env: dict[str, str], run_cli: RunCli
) -> None:
    # Given a failed generation whose msg carries terminal controls, processed by the worker pipeline
    parts = build_parts(Settings.from_env(app_env))
    ready_bucket(parts.store)
    failed = Callback.from_message(queued_callback("t-hostile", code=500, msg=HOSTILE_MSG))
    assert parts.processor.process(failed) is TaskState.FAILED
    # When an operator lists the tasks
    result = run_cli(app_env, "tasks")
    # Then the reason is there, each control shown as its escape, none of them sent
    assert result.exit_code == 0, result.output
    assert "generation failed\\x1b[2J\\x1b]0;pwned\\x07\\u202e" in result.stdout
    assert not {"\x1b", "\x07", "\u202e"} & set(result.stdout)
    # and the JSON form keeps the reason exactly (JSON escapes controls itself)
    [row] = json.loads(run_cli(app_env, "tasks", "--json").stdout)
    assert row["reason"] == HOSTILE_MSG


@pytest.mark.parametrize(
    "updated_at",
    ["\u00b2", "99999999999999999999", "9" * 5000],
    ids=["superscript-digit", "beyond-the-calendar", "beyond-int-digit-limit"],
)
def test_a_record_time_no_clock_can_show_is_listed_without_one(
    env: dict[str, str], redis_server: RedisServer, run_cli: RunCli, updated_at: str
) -> None:
    """Given a record whose updatedAt is a superscript digit (``str.isdigit`` takes it, ``int``
    does not), a time past datetime's years, or more digits than ``int`` reads
    When the tasks are listed, as JSON and as a table
    Then that task is listed with no time (null, "-") and the others as ever: each was a
    traceback, so one odd record hid every task."""
    client = redis.Redis.from_url(redis_server.url)
    client.hset(keys.task("t-failed"), "updatedAt", updated_at)
    client.close()

    listed = run_cli(env, "tasks", "--json")
    table = run_cli(env, "tasks")

    assert listed.exit_code == 0, listed.output
    rows = {row["taskId"]: row for row in json.loads(listed.stdout)}
    assert rows["t-failed"]["updatedAt"] is None
    assert rows["t-new"]["updatedAt"] == "2027-01-15T08:00:03.000Z"
    assert table.exit_code == 0, table.output
    [line] = [line for line in table.stdout.splitlines() if "t-failed" in line]
    assert line.split("│")[3].strip() == "-"
