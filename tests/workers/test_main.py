"""``python -m workers workers.tasks``: dramatiq, its main process logging like every mjhook
process, against a real Redis and SeaweedFS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.procs import venv_bin
from tests.support.stack import start_workers

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
