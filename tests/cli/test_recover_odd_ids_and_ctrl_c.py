"""``mjhook recover`` with what another program may leave in the index of submitted tasks (an id
that is no UTF-8 text, one with terminal controls), and interrupted by the operator (Ctrl-C)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from shared import keys
from shared.polling import PollResult, ResultPoller
from tests.cli.conftest import RunCli
from tests.support.servers import RedisServer

#: What the provider answers every poll: the task is still generating (nothing is queued).
GENERATING = {"code": 200, "msg": "success", "data": {"taskId": "x", "successFlag": 0}}


def recover_env(redis_server: RedisServer, provider_url: str) -> dict[str, str]:
    return {
        "MJHOOK_REDIS_URL": redis_server.url,
        "MJHOOK_PROVIDER_URL": provider_url,
        "MJHOOK_PROVIDER_API_KEY": "k",
    }


def test_an_id_that_is_no_utf8_is_skipped_and_said(
    redis_server: RedisServer, client: redis.Redis, provider_answering: Any, run_cli: RunCli
) -> None:
    # Given the index naming a task mjhook submitted and, before it, bytes that are no UTF-8 text
    now_ms = int(time.time() * 1000)
    client.zadd(keys.SUBMITTED, {b"\xff\xfe-odd": now_ms - 2000, b"t-ok": now_ms - 1000})
    env = recover_env(redis_server, provider_answering(GENERATING))
    # When recover runs
    text = run_cli(env, "recover", "--since", "1h")
    as_json = run_cli(env, "recover", "--since", "1h", "--json")
    # Then the good task is polled, the odd one skipped and said, its bytes escaped (one such
    # member was a UnicodeDecodeError: nothing was recovered)
    assert text.exit_code == 0, text.stderr
    assert text.stdout.splitlines() == [
        "\\xff\\xfe-odd  unreadable id -> skipped: its id in the index is no UTF-8 text",
        "t-ok  expired -> generating: successFlag 0",
        "2 task(s): 0 queued, 1 still generating, 0 unknown to the provider, 0 already stored,"
        " 1 skipped (id not UTF-8)",
    ]
    assert as_json.exit_code == 0, as_json.stderr
    assert [(row["taskId"], row["outcome"]) for row in json.loads(as_json.stdout)] == [
        ("\\xff\\xfe-odd", "skipped"),
        ("t-ok", "generating"),
    ]


def test_a_task_id_with_terminal_controls_is_printed_escaped(
    redis_server: RedisServer, client: redis.Redis, provider_answering: Any, run_cli: RunCli
) -> None:
    # Given the index naming a task whose id would set the terminal's title
    client.zadd(keys.SUBMITTED, {"t\x1b]0;owned\x07": int(time.time() * 1000)})
    # When recover runs
    result = run_cli(recover_env(redis_server, provider_answering(GENERATING)), "recover", "--since", "1h")
    # Then the id is printed with its controls escaped (the ESC reached the terminal)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert result.stdout.startswith("t\\x1b]0;owned\\x07  expired -> generating")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ctrl_c_lists_the_tasks_handled_so_far(
    redis_server: RedisServer,
    client: redis.Redis,
    provider_answering: Any,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
    as_json: bool,
) -> None:
    # Given two tasks to recover, and the operator pressing Ctrl-C while the second is polled
    now_ms = int(time.time() * 1000)
    client.zadd(keys.SUBMITTED, {"t-first": now_ms - 2000, "t-second": now_ms - 1000})
    polled = []
    real_poll = ResultPoller.poll

    def poll(self: ResultPoller, task_id: str) -> PollResult:
        polled.append(task_id)
        if task_id == "t-second":
            raise KeyboardInterrupt
        return real_poll(self, task_id)

    monkeypatch.setattr(ResultPoller, "poll", poll)
    # When recover runs
    args = ("recover", "--since", "1h", *(["--json"] if as_json else []))
    result = run_cli(recover_env(redis_server, provider_answering(GENERATING)), *args)
    # Then the task handled before is listed, and a line says it was interrupted (only click's
    # "Aborted!" was printed, exit 1: a task queued before went unsaid), exit code 130
    assert polled == ["t-first", "t-second"]
    assert result.exit_code == 130
    if as_json:
        assert [row["taskId"] for row in json.loads(result.stdout)] == ["t-first"]
    else:
        assert result.stdout.splitlines() == [
            "t-first  expired -> generating: successFlag 0",
            "1 task(s): 0 queued, 1 still generating, 0 unknown to the provider, 0 already stored",
        ]
    assert result.stderr.startswith("Error: interrupted: the tasks listed were handled"), result.stderr
