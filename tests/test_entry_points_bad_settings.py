"""The contract's entry points, `gunicorn ingress.wsgi:app` and `dramatiq workers.tasks`, started
with a bad setting: each stops with one line naming it, not the traceback of an import (gunicorn
printed "Failed to read config file" and 12 lines; a setting create_app checked, 55 lines per worker
process; dramatiq, 32)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.procs import free_port, venv_bin
from tests.support.stack import REPO_ROOT

pytestmark = pytest.mark.integration

#: Nothing listens there: nothing here may reach a Redis.
NO_REDIS = "redis://127.0.0.1:1/0"


def run(argv: list[str], **settings: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MJHOOK_", "GUNICORN_"))}
    env |= {"MJHOOK_REDIS_URL": NO_REDIS, "MJHOOK_SPOOL_DIR": "", **settings}
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def gunicorn() -> list[str]:
    return [venv_bin("gunicorn"), "ingress.wsgi:app", "-b", f"127.0.0.1:{free_port()}", "--no-control-socket"]


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        # read by gunicorn's config (ingress/gunicorn_conf.py), in the master
        ("MJHOOK_MAX_RETRIES", "abc", "MJHOOK_MAX_RETRIES: Input should be a valid integer"),
        # a check of two settings (once made as each worker process built its app, where two
        # workers failing at once made gunicorn's master print a traceback now and then)
        ("MJHOOK_TRUSTED_PROXY_HEADER", "X-Forwarded-For", "MJHOOK_TRUSTED_PROXIES"),
        ("MJHOOK_CALLBACK_ALLOW_FROM", "10.0.0.0/8,not-a-net", "'not-a-net' is not an IP address"),
    ],
)
def test_the_ingress_stops_with_one_line_naming_a_bad_setting(setting: str, value: str, named: str) -> None:
    result = run(gunicorn(), **{setting: value})
    assert result.returncode != 0
    assert "Error: " in result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_the_workers_stop_with_one_line_naming_a_bad_setting() -> None:
    argv = [venv_bin("dramatiq"), "workers.tasks", "--processes", "1", "--threads", "1"]
    result = run(argv, MJHOOK_MAX_RETRIES="abc")
    assert result.returncode != 0
    assert "Error: invalid configuration: MJHOOK_MAX_RETRIES" in result.stderr
    assert "Traceback" not in result.stderr
