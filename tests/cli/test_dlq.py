"""``mjhook dlq``: dead letters made by a real worker, listed with their reason, replayed onto the
queue and purged."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import redis

from shared import keys
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from tests.cli.conftest import RunCli, dead_letters_from_real_workers
from tests.support.pipeline import queued_callback

pytestmark = pytest.mark.integration

DEAD = keys.broker_dead(BROKER_NAMESPACE, CALLBACK_QUEUE)
READY = keys.broker_queue(BROKER_NAMESPACE, CALLBACK_QUEUE)
MESSAGES = keys.broker_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)


def test_dead_letters_are_listed_with_their_reason_then_replayed_or_purged(
    app_env: dict[str, str], tmp_path: Path, run_cli: RunCli
) -> None:
    client = redis.Redis.from_url(app_env["MJHOOK_REDIS_URL"])
    # Given three callbacks a real worker refused for good
    task_ids = ["dlq-1", "dlq-2", "dlq-3"]
    dead_letters_from_real_workers(app_env, tmp_path, [queued_callback(t, code="oops") for t in task_ids])

    # list: each with its taskId and why it died
    result = run_cli(app_env, "dlq", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["total"] == 3
    by_task = {message["taskId"]: message for message in listed["messages"]}
    assert sorted(by_task) == task_ids
    for message in by_task.values():
        assert "'code' must be an integer" in message["reason"]
        assert message["retries"] == 0
        assert message["ageSeconds"] >= 0
    human = run_cli(app_env, "dlq", "list")
    assert human.exit_code == 0, human.output
    assert "dlq-1" in human.stdout
    assert "must be an integer" in human.stdout

    # replay one by id: it is back on the ready list, fresh, and no longer dead
    first = by_task["dlq-1"]["id"]
    result = run_cli(app_env, "dlq", "replay", first)
    assert result.exit_code == 0, result.output
    ready = [member.decode() for member in client.lrange(READY, 0, -1)]
    assert len(ready) == 1
    body = orjson.loads(client.hget(MESSAGES, ready[0]))
    assert body["args"][0]["taskId"] == "dlq-1"
    assert "retries" not in body["options"]
    assert client.zscore(DEAD, first) is None

    # replay of an id that is not dead: exit code 1
    result = run_cli(app_env, "dlq", "replay", first)
    assert result.exit_code == 1
    assert "not a dead letter" in result.stderr

    # purge refuses without --yes (exit code 2) and drops nothing
    result = run_cli(app_env, "dlq", "purge")
    assert result.exit_code == 2
    assert client.zcard(DEAD) == 2
    result = run_cli(app_env, "dlq", "purge", "--yes", by_task["dlq-2"]["id"])
    assert result.exit_code == 0, result.output
    assert client.zcard(DEAD) == 1

    # replay with no ids: all that is left; the dead letters are then empty
    result = run_cli(app_env, "dlq", "replay")
    assert result.exit_code == 0, result.output
    assert client.zcard(DEAD) == 0
    assert client.hlen(keys.broker_dead_messages(BROKER_NAMESPACE, CALLBACK_QUEUE)) == 0
    tasks_ready = {
        orjson.loads(client.hget(MESSAGES, m))["args"][0]["taskId"] for m in client.lrange(READY, 0, -1)
    }
    assert tasks_ready == {"dlq-1", "dlq-3"}
    client.close()


def test_a_hostile_dead_letter_is_listed_without_its_terminal_controls(
    app_env: dict[str, str], tmp_path: Path, run_cli: RunCli
) -> None:
    # Given a queued callback the workers refused, whose taskId and msg carry terminal controls
    hostile = queued_callback("t\x1b[2J", msg="\x1b]0;pwned\x07", code="oops")
    dead_letters_from_real_workers(app_env, tmp_path, [hostile])
    # When an operator lists the dead letters
    result = run_cli(app_env, "dlq", "list")
    # Then the taskId is shown with its controls as escapes, none of them sent
    assert result.exit_code == 0, result.output
    assert "t\\x1b[2J" in result.stdout
    assert not {"\x1b", "\x07"} & set(result.stdout)
