"""``mjhook spool``: what waits in the ingress's spool on this host, and handing the callbacks
its drain set aside back to it."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from ingress.spool import Spool
from shared.callback import Callback
from tests.cli.conftest import RunCli


def callback(task_id: str) -> Callback:
    return Callback(task_id, 200, "success", None, ("https://example.com/0.png",), "2026-11-25T00:00:00.000Z")


def refuse(cb: Callback) -> None:
    raise RuntimeError("the queue refuses it for good")


def test_status_counts_what_waits_and_what_was_set_aside(tmp_path: Path, run_cli: RunCli) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 7)
    spool.append(callback("aside"))
    spool.drain(refuse)
    spool.append(callback("w1"))
    spool.append(callback("w2"))
    env = {"MJHOOK_SPOOL_DIR": str(tmp_path)}

    result = run_cli(env, "spool", "status", "--json")

    assert result.exit_code == 0, result.output
    status = orjson.loads(result.output)
    assert (status["waiting"], status["setAside"]) == (2, 1)
    assert status["waitingBytes"] == spool.depth_bytes() > 0
    text = run_cli(env, "spool", "status").output
    assert "2 callbacks waiting" in text
    assert "1 set aside" in text


def test_requeue_hands_the_set_aside_callbacks_back_to_the_drain(tmp_path: Path, run_cli: RunCli) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 7)
    for task_id in ("a", "b"):
        spool.append(callback(task_id))
    spool.drain(refuse)
    env = {"MJHOOK_SPOOL_DIR": str(tmp_path)}

    result = run_cli(env, "spool", "requeue")

    assert result.exit_code == 0, result.output
    assert "2 callbacks moved back into the spool" in result.output
    taken: list[str] = []
    spool.drain(lambda cb: taken.append(cb.task_id))
    assert taken == ["a", "b"]
    assert run_cli(env, "spool", "requeue").output.strip() == "nothing set aside"


def test_the_commands_say_when_the_spool_is_off(run_cli: RunCli) -> None:
    result = run_cli({"MJHOOK_SPOOL_DIR": ""}, "spool", "requeue")
    assert result.exit_code == 1
    assert "the spool is off" in result.output


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["requeue"]])
def test_a_spool_directory_that_does_not_exist_is_an_error_naming_its_absolute_path(
    tmp_path: Path, run_cli: RunCli, command: list[str]
) -> None:
    """Given MJHOOK_SPOOL_DIR relative (as its default is) and naming no directory from here
    When `mjhook spool status` or `requeue` runs
    Then it exits 1 with one error naming the directory as an absolute path: it said 0 callbacks
    waiting (or nothing set aside), exit 0, of a directory it never found, by a relative name."""
    missing = tmp_path / "not-the-spool"
    relative = os.path.relpath(missing)

    result = run_cli({"MJHOOK_SPOOL_DIR": relative}, "spool", *command)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: the spool directory {missing} does not exist: ")
    assert result.stderr.count("\n") == 1


def test_status_names_the_spool_by_its_absolute_path(tmp_path: Path, run_cli: RunCli) -> None:
    """Given MJHOOK_SPOOL_DIR relative to the directory the command runs in
    When `mjhook spool status` runs
    Then it names the spool by its absolute path, in text and in JSON."""
    Spool(tmp_path, max_bytes=1 << 20, pid=lambda: 7).append(callback("w1"))
    env = {"MJHOOK_SPOOL_DIR": os.path.relpath(tmp_path)}

    text = run_cli(env, "spool", "status")
    as_json = run_cli(env, "spool", "status", "--json")

    assert text.exit_code == 0, text.output
    assert text.stdout.startswith(f"spool {tmp_path}: 1 callbacks waiting")
    assert orjson.loads(as_json.stdout)["directory"] == str(tmp_path)
