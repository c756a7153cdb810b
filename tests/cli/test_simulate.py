"""``mjhook simulate``: a port already taken, or a callback URL no callback can reach, is said in
one line, not a traceback; ``serve`` answers as the account and the provider are set to, and
``mjhook submit`` says why when it answers a submit call 500, 501 or 505."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared import keys
from simulator import FaultConfig, RunningSimulator, expected_file
from simulator.faults import FaultPlan
from simulator.load import CallbackRun
from tests.cli.conftest import RunCli
from tests.simulator.support import result_urls, submit, wait_done
from tests.simulator.test_load import bare_report
from tests.support.json_http import json_server
from tests.support.procs import ManagedProcess, free_port, venv_bin, wait_for_port
from tests.support.provider import StartSimulator

#: A callback URL nothing answers at: for runs refused before any callback is sent.
UNREACHED_CALLBACK_URL = "http://127.0.0.1:9/callbacks/midjourney"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 another socket is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        [
            "load",
            "--tasks",
            "1",
            "--callback-url",
            "http://127.0.0.1:9/callbacks/midjourney",
            "--store-timeout",
            "0",
        ],
    ],
    ids=["serve", "load"],
)
def test_a_port_in_use_is_one_line_error(run_cli: RunCli, taken_port: int, command: list[str]) -> None:
    # Given a port something else listens on
    # When the simulator is told to listen there
    result = run_cli({}, "simulate", *command, "--host", "127.0.0.1", "--port", str(taken_port))
    # Then it says so in one line, exit code 1, without a traceback
    assert result.exit_code == 1, result.output
    assert f"Error: cannot listen on 127.0.0.1:{taken_port}: Address already in use" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:abc/cb",
        "http://[::1",
        "http://",
        "ftp://127.0.0.1/cb",
        "http://xn--a.example/",
        f"http://{'a' * 64}.test/cb",  # a label over 63 characters
    ],
)
def test_load_refuses_a_callback_url_no_callback_can_reach(run_cli: RunCli, url: str) -> None:
    result = run_cli({}, "simulate", "load", "--tasks", "1", "--callback-url", url, "--store-timeout", "0")
    assert result.exit_code == 2, result.output  # a usage error, before the simulator starts
    assert "--callback-url" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "option",
    [
        ["--url-ttl", "0"],
        ["--settle-timeout", "-1"],
        ["--store-timeout", "-1"],
        ["--download-grace", "-1"],
        ["--concurrency", "0"],
        ["--width", "0"],
        ["--height", "8193"],
    ],
    ids=lambda option: " ".join(option),
)
def test_load_refuses_option_values_out_of_range(run_cli: RunCli, option: list[str]) -> None:
    # Given an option value the simulator cannot work with
    url = "http://127.0.0.1:9/callbacks/midjourney"
    # When load is started with it
    result = run_cli(
        {}, "simulate", "load", "--tasks", "1", "--callback-url", url, "--store-timeout", "0", *option
    )
    # Then it is a usage error naming the option, before the simulator starts
    assert result.exit_code == 2, result.output
    assert option[0] in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["load", "--callback-url", UNREACHED_CALLBACK_URL, "--store-timeout", "0"], ["--tasks", "100001"]),
        (["serve"], ["--width", "4097"]),
        (["serve"], ["--height", "4097"]),
        (["serve"], ["--concurrency", "0"]),
        (["serve"], ["--concurrency", "1025"]),
        (["serve"], ["--file-fault-repeats", "-1"]),
        (["serve"], ["--duplicate-delay", "-1"]),
        (["serve"], ["--generation-jitter", "-1"]),
        (["serve"], ["--api-error-share", "1.5"]),
    ],
    ids=lambda part: " ".join(part),
)
def test_values_beyond_the_simulators_limits_are_refused_before_it_starts(
    run_cli: RunCli, taken_port: int, command: list[str], option: list[str]
) -> None:
    # Given more tasks than a load run may have (the control route's cap too), an image side
    # beyond 4096 pixels, or a concurrency out of range
    # When the simulator is told to use it (on a taken port: one that started anyway stops there)
    result = run_cli({}, "simulate", *command, "--port", str(taken_port), *option)
    # Then it is a usage error naming the option, before anything listens
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option[0]}'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command",
    [["serve"], ["load", "--tasks", "1", "--callback-url", UNREACHED_CALLBACK_URL, "--store-timeout", "0"]],
    ids=["serve", "load"],
)
@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--host", "::"], "result URLs need public_url (--public-url)"),
        (["--public-url", "sim.example:8090"], "Invalid value for --public-url"),
    ],
    ids=["wildcard host", "no URL"],
)
def test_result_urls_no_client_can_reach_are_refused(
    run_cli: RunCli, taken_port: int, command: list[str], option: list[str], said: str
) -> None:
    # Given a wildcard address to listen on and no public URL, or a public URL that is no URL
    # When the simulator is told to issue result URLs under it (on a taken port: a simulator
    # that started anyway would stop there, rather than serve on)
    result = run_cli({}, "simulate", *command, "--port", str(taken_port), *option)
    # Then it is a usage error saying so, before anything listens
    assert result.exit_code == 2, result.output
    assert said in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("options", "code", "status"),
    [
        (["--credits", "0"], 402, 200),
        (["--maintenance"], 455, 200),
        (["--credits", "0", "--http-status-mirrors-code"], 402, 402),
        # Seeds whose first submit call draws each code (FaultPlan.for_submit_call(0))
        (["--api-error-share", "1", "--seed", "2"], 500, 200),
        (["--api-error-share", "1", "--seed", "1"], 501, 200),
        (["--api-error-share", "1", "--seed", "0"], 505, 200),
    ],
    ids=[
        "no credits",
        "maintenance",
        "status mirrors code",
        "api error 500",
        "api error 501",
        "api error 505",
    ],
)
def test_serve_answers_as_an_account_without_credits_or_a_provider_in_maintenance(
    tmp_path: Path, options: list[str], code: int, status: int
) -> None:
    # Given `mjhook simulate serve` started with the option
    port = free_port()
    argv = [venv_bin("mjhook"), "simulate", "serve", "--port", str(port), *options]
    with ManagedProcess(argv, log_path=tmp_path / "serve.log") as serve:
        wait_for_port("127.0.0.1", port, 30.0, proc=serve)
        # When a task is submitted to it
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": "Bearer sim-api-key"},
            trust_env=False,
            timeout=10.0,
        ) as client:
            answer = client.post("/api/v1/mj/generate", json={"taskType": "mj_txt2img", "prompt": "a cat"})
    # Then it is refused with the provider's code, in the body and, when told, in the status
    assert answer.json() == {"code": code, "msg": answer.json()["msg"], "data": None}
    assert answer.status_code == status


@pytest.mark.parametrize(
    ("seed", "exit_code", "words"),
    [
        (
            2,
            4,
            "provider answered 500 (provider server error) to /api/v1/mj/generate: Server error"
            " (try again later)",
        ),
        (1, 3, "provider answered 501 (generation failed) to /api/v1/mj/generate"),
        (0, 3, "provider answered 505 (feature not available) to /api/v1/mj/generate"),
    ],
    ids=["500", "501", "505"],
)
def test_submit_against_injected_api_errors_says_why_without_a_traceback(
    run_cli: RunCli,
    redis_server: Any,
    start_simulator: StartSimulator,
    client: redis.Redis,
    seed: int,
    exit_code: int,
    words: str,
) -> None:
    # Given a simulator answering every submit call with the code the seed draws first
    sim = start_simulator(faults=FaultConfig(seed=seed, api_error_share=1.0))
    # When `mjhook submit` submits to it (without retries)
    result = run_cli(_submit_env(redis_server, sim, retries=0), "submit", "a cat")
    # Then it says which code and what it means in one line, with the exit code of a refusal (501,
    # 505) or of a provider to try again later (500), and records nothing
    assert result.exit_code == exit_code, result.output
    assert f"Error: {words}" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert client.zcard(keys.SUBMITTED) == 0
    assert sim.provider.tasks() == []


def test_submit_retries_an_injected_500_and_the_next_call_makes_the_task(
    run_cli: RunCli, redis_server: Any, start_simulator: StartSimulator, client: redis.Redis
) -> None:
    # Given a simulator whose first submit call is answered 500 and second goes through (seed 3,
    # half the calls failing)
    faults = FaultConfig(seed=3, api_error_share=0.5)
    assert [FaultPlan(faults).for_submit_call(number) for number in range(2)] == [500, None]
    sim = start_simulator(faults=faults)
    # When `mjhook submit` submits to it with one retry
    result = run_cli(_submit_env(redis_server, sim, retries=1), "submit", "a cat")
    # Then the 500 was retried and the task made on the second call, recorded as submitted
    assert result.exit_code == 0, result.output
    assert [task.task_id for task in sim.provider.tasks()] == [result.stdout.strip()]
    assert client.zcard(keys.SUBMITTED) == 1


def _submit_env(redis_server: Any, sim: RunningSimulator, *, retries: int) -> dict[str, str]:
    """mjhook's settings for ``submit`` to ``sim``, retrying a transient answer ``retries`` times."""
    return {
        "MJHOOK_REDIS_URL": redis_server.url,
        "MJHOOK_PROVIDER_URL": sim.base_url,
        "MJHOOK_PROVIDER_API_KEY": sim.api_key,
        "MJHOOK_PUBLIC_URL": "https://hooks.example.com",
        "MJHOOK_PROVIDER_RETRIES": str(retries),
    }


#: Terminal controls: clear the screen, set the window title.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07"


def _remote_run() -> dict[str, Any]:
    """A finished load run as a running simulator's control route describes it, its report's
    strings and status labels carrying terminal controls."""
    report = bare_report(UNREACHED_CALLBACK_URL + HOSTILE, manifests={"stored": 0, HOSTILE: 1})
    run = CallbackRun(
        report=report, task_ids=frozenset(), acknowledged=frozenset(), listing="tasks/t-", started_at=0.0
    )
    return run.to_dict()


def test_a_remote_simulators_report_reaches_the_terminal_without_its_controls(run_cli: RunCli) -> None:
    """Given a `simulate serve` (or what answers as one) whose load report carries terminal controls
    When `mjhook simulate load --simulator-url` prints it as text
    Then they are shown as escapes, none of them sent: the text report was echoed as it came."""

    def answer(method: str, path: str) -> Any:
        started = {"loadId": "l-1", "settleTimeout": 0}
        return {
            "code": 200,
            "msg": "success",
            "data": started if method == "POST" else {"run": _remote_run()},
        }

    with json_server(answer) as url:
        result = run_cli(
            {"MJHOOK_PROVIDER_URL": url, "MJHOOK_PROVIDER_API_KEY": "k"},
            *("simulate", "load", "--simulator-url", url, "--api-key", "k", "--tasks", "1"),
            *("--callback-url", UNREACHED_CALLBACK_URL, "--store-timeout", "0", "--download-grace", "0"),
        )

    assert result.exit_code == 0, result.output
    assert f"-> {UNREACHED_CALLBACK_URL}\\x1b[2J\\x1b]0;pwned\\x07" in result.stdout
    assert "bucket: 0 stored, 1 \\x1b[2J\\x1b]0;pwned\\x07 after" in result.stdout
    assert not {"\x1b", "\x07"} & set(result.output)


@pytest.mark.parametrize("prefix", ["a/b", "-starts-with-dash", "spa ce", "é", "x" * 101])
def test_serve_refuses_a_task_id_prefix_mjhook_would_not_accept(
    run_cli: RunCli, taken_port: int, prefix: str
) -> None:
    # When serve is given a taskId start that is not letters, digits, '_' or '-' (on a taken port:
    # a simulator that started anyway would stop there)
    result = run_cli({}, "simulate", "serve", "--port", str(taken_port), "--task-id-prefix", prefix)
    # Then it is a usage error naming the option, before anything listens
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--task-id-prefix'" in result.stderr
    assert "is no task id prefix" in result.stderr
    assert "Traceback" not in result.output


def test_serve_takes_a_task_id_prefix_and_keeps_media_past_its_links_expiry(tmp_path: Path) -> None:
    # Given `mjhook simulate serve` with a known taskId start, links valid 1 s and media kept a day
    port = free_port()
    argv = [
        venv_bin("mjhook"),
        "simulate",
        "serve",
        "--port",
        str(port),
        "--generation-delay",
        "0",
        "--task-id-prefix",
        "cli-pin-",
        "--url-ttl",
        "1",
        "--media-ttl",
        "86400",
    ]
    with (
        ManagedProcess(argv, log_path=tmp_path / "serve.log") as serve,
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": "Bearer sim-api-key"},
            trust_env=False,
            timeout=10.0,
        ) as client,
    ):
        wait_for_port("127.0.0.1", port, 30.0, proc=serve)
        # When a task is submitted and its first result link left to expire
        task_id = submit(client)
        url = result_urls(wait_done(client, task_id))[0]
        expired = _wait_for_status_other_than(client, url, 200)
        fresh = client.post("/api/v1/common/download-url", json={"url": url}).json()
        refreshed = client.get(fresh["data"])
    # Then the taskId, and so the file's bytes, are known beforehand
    assert task_id == "cli-pin-000000"
    assert refreshed.status_code == 200
    assert refreshed.content == expected_file("cli-pin-000000", 0)
    # And the expired link of a kept file asks for a fresh one (410), which download-url gives
    assert expired == 410
    assert fresh["code"] == 200


def _wait_for_status_other_than(client: httpx.Client, url: str, status: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = client.get(url).status_code
        if answer != status:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"{url} still answered {status} after {timeout_s} s")
