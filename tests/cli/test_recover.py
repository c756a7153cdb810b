"""``mjhook recover``: the window it is given, and what it does when the provider refuses the
account."""

from __future__ import annotations

import time

import pytest
import redis

from cli.recover import parse_duration
from shared import keys
from tests.cli.conftest import RunCli
from tests.cli.test_recover_odd_ids_and_ctrl_c import recover_env
from tests.support.json_http import json_server
from tests.support.servers import RedisServer


@pytest.mark.parametrize("text", ["0s", "0m", "0h0m", "00d"])
def test_a_zero_duration_is_no_window(text: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_duration(text)


def test_recover_stops_at_the_first_refusal_of_the_account_and_polls_no_other_task(
    redis_server: RedisServer, client: redis.Redis, run_cli: RunCli
) -> None:
    """Given three tasks to recover and a provider refusing our key (401) at every call
    When recover runs
    Then it asks once, stops there with exit code 3 and the refusal said: every later poll would
    be refused the same way (a provider counting them against the account)."""
    calls: list[str] = []

    def answer(method: str, path: str) -> object:
        calls.append(path)
        return {"code": 401, "msg": "You do not have access permissions", "data": None}

    client.zadd(keys.SUBMITTED, dict.fromkeys(["t-1", "t-2", "t-3"], int(time.time() * 1000)))
    with json_server(answer) as url:
        result = run_cli(recover_env(redis_server, url), "recover", "--since", "1h", "--json")

    assert result.exit_code == 3, result.output
    assert len(calls) == 1
    assert result.stdout.strip() == "[]"
    assert result.stderr.startswith("Error: stopped: ")
