"""With the worker registry (workers/heartbeat.py) and recorded reasons (workers/runtime.py): an
idle real worker counts as live until it stops, and a dead letter carries the worker's reason."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.cli.conftest import RunCli, dead_letters_from_real_workers
from tests.support.pipeline import queued_callback
from tests.support.procs import wait_until
from tests.support.stack import start_workers

pytestmark = pytest.mark.integration


def test_an_idle_worker_counts_until_it_stops(
    app_env: dict[str, str], tmp_path: Path, run_cli: RunCli
) -> None:
    workers = start_workers(app_env, tmp_path, processes=2, threads=1)
    try:
        assert json.loads(run_cli(app_env, "status", "--json").stdout)["workers"] == 2
        # SIGTERM to dramatiq's main process only, as `kill PID` or `docker stop` do
        os.kill(workers.pid, signal.SIGTERM)
        wait_until(lambda: not workers.is_running(), 20, what="the workers to stop")
    finally:
        workers.terminate()
    assert json.loads(run_cli(app_env, "status", "--json").stdout)["workers"] == 0


def test_a_dead_letter_carries_the_reason_the_worker_gave_up(
    app_env: dict[str, str], tmp_path: Path, run_cli: RunCli
) -> None:
    dead_letters_from_real_workers(app_env, tmp_path, [queued_callback("dlq-1", code="oops")])
    (message,) = json.loads(run_cli(app_env, "dlq", "list", "--json").stdout)["messages"]
    assert message["reasonSource"] == "worker"
    assert message["reason"] == "gave up: InvalidCallback: 'code' must be an integer"
