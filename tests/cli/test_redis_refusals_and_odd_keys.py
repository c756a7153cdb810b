"""The CLI against a Redis that answers with an error (an ACL, a key of another type) or holds what
another program wrote: said as a refusal, not as an outage; one odd key no reason to show nothing;
a --limit past what Redis takes a usage error."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import redis
from dramatiq.common import current_millis

from shared import keys
from shared.queue import BROKER_NAMESPACE
from tests.cli.conftest import RunCli, submit_env
from tests.support.servers import RedisServer


def test_status_works_with_a_redis_refusing_time(redis_server: RedisServer, run_cli: RunCli) -> None:
    # Given a Redis account that may not run TIME (an ACL), and a live worker
    admin = redis_server.client()
    admin.acl_setuser(
        "worker", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-time"]
    )
    admin.zadd(keys.broker_heartbeats(BROKER_NAMESPACE), {"live": current_millis()})
    admin.zadd(keys.WORKERS, {"live": current_millis()})
    url = redis_server.url.replace("redis://", "redis://worker:pw@", 1)
    # When mjhook status reads through it
    result = run_cli({"MJHOOK_REDIS_URL": url}, "status", "--json")
    # Then it answers, on this host's clock (it failed as "Redis unavailable: NoPermissionError")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["workers"] == 1


def test_status_shows_the_rest_when_the_rejected_list_is_of_another_type(
    redis_server: RedisServer, run_cli: RunCli
) -> None:
    # Given mjhook:rejected holding a string (another program's key)
    redis_server.client().set(keys.REJECTED, "x")
    env = {"MJHOOK_REDIS_URL": redis_server.url}
    # When mjhook status reads it
    as_json = run_cli(env, "status", "--json")
    for_people = run_cli(env, "status")
    # Then that count is unknown and the rest is shown (WRONGTYPE read as "Redis unavailable")
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["rejected"] is None
    assert for_people.exit_code == 0, for_people.stderr
    assert "Rejected callbacks kept: unknown" in for_people.stdout
    assert "Workers alive: 0" in for_people.stdout


@pytest.mark.parametrize(
    "args",
    [pytest.param(("tasks", "--json"), id="tasks"), pytest.param(("rejected", "list"), id="rejected")],
)
def test_a_key_of_another_type_is_said_refused_not_unavailable(
    redis_server: RedisServer, run_cli: RunCli, args: tuple[str, ...]
) -> None:
    # Given the key the command reads holding another type (a hash where a list or set belongs)
    key = keys.RECENT if args[0] == "tasks" else keys.REJECTED
    redis_server.client().hset(key, "x", "y")
    # When the command runs
    result = run_cli({"MJHOOK_REDIS_URL": redis_server.url}, *args)
    # Then Redis refused, in one line: it is up, and waiting will not mend it
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Redis refused: ResponseError: "), result.stderr
    assert "WRONGTYPE" in result.stderr
    assert "unavailable" not in result.stderr


def test_a_command_redis_does_not_allow_is_said_refused(redis_server: RedisServer, run_cli: RunCli) -> None:
    # Given an account that may not read the task index (an ACL)
    redis_server.client().acl_setuser(
        "reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-zrevrange"]
    )
    url = redis_server.url.replace("redis://", "redis://reader:pw@", 1)
    # When mjhook tasks reads it
    result = run_cli({"MJHOOK_REDIS_URL": url}, "tasks")
    # Then the refusal is named as one
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Redis refused: NoPermissionError: "), result.stderr


def test_a_wrong_password_is_said_refused(redis_server: RedisServer, run_cli: RunCli) -> None:
    # Given an account whose password the operator set wrong
    redis_server.client().acl_setuser(
        "reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"]
    )
    url = redis_server.url.replace("redis://", "redis://reader:wrong@", 1)
    # When a command connects with it
    result = run_cli({"MJHOOK_REDIS_URL": url}, "tasks")
    # Then Redis refused it (redis-py's AuthenticationError is a ConnectionError, said unavailable)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Redis refused: AuthenticationError: "), result.stderr


@pytest.mark.parametrize(
    "args",
    [pytest.param(("tasks",), id="tasks"), pytest.param(("rejected", "list"), id="rejected-list")],
)
def test_a_limit_past_what_redis_takes_is_a_usage_error(
    redis_server: RedisServer, run_cli: RunCli, args: tuple[str, ...]
) -> None:
    # Given a refused callback kept, so that the listing has something to read
    redis_server.client().lpush(keys.REJECTED, orjson.dumps({"at": "", "status": 400, "reason": "r"}))
    env = {"MJHOOK_REDIS_URL": redis_server.url}
    # When the limit is past a signed 64-bit range's end (Redis refused it: "Redis unavailable")
    result = run_cli(env, *args, "--limit", "99999999999999999999")
    # Then it is a usage error, saying the range
    assert result.exit_code == 2, result.output
    assert "is not in the range 1<=x<=" in result.stderr
    # And the largest limit taken works
    assert run_cli(env, *args, "--limit", str(2**62)).exit_code == 0


def test_recover_says_redis_refused(redis_server: RedisServer, run_cli: RunCli) -> None:
    # Given the index of submitted tasks holding another type
    client: redis.Redis = redis_server.client()
    client.set(keys.SUBMITTED, "x")
    env = {
        "MJHOOK_REDIS_URL": redis_server.url,
        "MJHOOK_PROVIDER_URL": "http://127.0.0.1:9/",
        "MJHOOK_PROVIDER_API_KEY": "k",
    }
    # When mjhook recover reads it
    result = run_cli(env, "recover")
    # Then Redis refused (nothing polled: the provider, a closed port, is never asked)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Redis refused: ResponseError: "), result.stderr


def test_submit_says_redis_refused_and_nothing_submitted(
    redis_server: RedisServer, provider_answering: Any, run_cli: RunCli
) -> None:
    # Given an account that may not PING, which submit asks before it spends a credit
    redis_server.client().acl_setuser(
        "submitter", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-ping"]
    )
    url = redis_server.url.replace("redis://", "redis://submitter:pw@", 1)
    provider = provider_answering({"code": 200, "msg": "success", "data": {"taskId": "t-new"}})
    # When a task is submitted
    result = run_cli({**submit_env(redis_server, provider), "MJHOOK_REDIS_URL": url}, "submit", "a cat")
    # Then Redis refused, nothing submitted (it read "Redis unavailable")
    assert result.exit_code == 1
    said = "Error: Redis refused, nothing submitted: NoPermissionError: "
    assert result.stderr.startswith(said), result.stderr
