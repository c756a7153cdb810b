"""``python -m workers workers.tasks``: dramatiq, its main process logging like every mjhook
process, against a real Redis and SeaweedFS."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.pipeline import wait_for
from tests.support.procs import venv_bin
from tests.support.stack import REPO_ROOT, start_workers

pytestmark = pytest.mark.integration


def test_every_line_the_workers_log_in_json_format_is_a_json_object(
    app_env: dict[str, str], tmp_path: Path
) -> None:
    """With MJHOOK_LOG_FORMAT=json (compose's default) every line is one JSON object, the main
    process's too (its boot, its signals, a worker exiting unexpectedly): under plain
    `dramatiq workers.tasks` those few were in dramatiq's text format."""
    env = {**app_env, "MJHOOK_LOG_FORMAT": "json"}
    workers = start_workers(
        env, tmp_path, processes=1, threads=1, launcher=[venv_bin("python"), "-m", "workers"]
    )
    workers.terminate()

    lines = [line for line in workers.log_since_start().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("=== ")]  # the harness's own notes
    records = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    messages = [str(record.get("message") or record.get("msg") or record) for record in records]
    assert any("booting up" in message for message in messages)
    assert any("Sending signal" in message for message in messages)


#: A broker module for dramatiq without Redis: what `python -m workers` passes through is tested.
STUB_BROKER = """
import dramatiq
from dramatiq.brokers.stub import StubBroker

dramatiq.set_broker(StubBroker())
"""


def run_stub_workers(tmp_path: Path, output: Path, *extra: str) -> subprocess.Popen[bytes]:
    (tmp_path / "stub_broker_mod.py").write_text(STUB_BROKER)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MJHOOK_LOG_FORMAT": "text"}
    argv = [venv_bin("python"), "-m", "workers", "stub_broker_mod", "--path", str(tmp_path)]
    argv += ["--processes", "1", "--threads", "1", "--worker-shutdown-timeout", "1000", *extra]
    with output.open("wb") as out:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sighup_reloads_the_workers(tmp_path: Path) -> None:
    """dramatiq reloads on SIGHUP (and --watch) by exec'ing sys.argv: it was this module's
    file, no executable, so the worker service exited instead of coming back."""
    log = tmp_path / "workers.log"
    proc = run_stub_workers(tmp_path, log)
    try:
        wait_for(lambda: "ready for action" in log.read_text(), timeout_s=60, what="the workers")
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: proc.poll() is not None or log.read_text().count("ready for action") >= 2,
            timeout_s=60,
            what="a reload or an exit",
        )
        assert proc.poll() is None, log.read_text()
    finally:
        stop(proc)


def test_the_log_file_gets_the_main_process_lines(tmp_path: Path) -> None:
    """With --log-file, dramatiq's log watcher writes every process's lines there: the main
    process's went to stderr instead (its boot line, its signals, a worker's crash)."""
    log_file = tmp_path / "dramatiq.log"
    proc = run_stub_workers(tmp_path, tmp_path / "stderr.log", "--log-file", str(log_file))
    try:
        wait_for(
            lambda: log_file.exists() and "ready for action" in log_file.read_text(),
            timeout_s=60,
            what="the workers",
        )
    finally:
        stop(proc)
    assert "booting up" in log_file.read_text()
