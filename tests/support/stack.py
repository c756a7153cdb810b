"""Start mjhook's own processes (gunicorn ingress, dramatiq workers) against test servers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from shared.settings import Settings
from shared.storage import ObjectStore, create_object_store
from workers.runtime import wait_for_bucket

from .procs import ManagedProcess, free_port, venv_bin, wait_for_http, wait_until
from .servers import S3Server

#: The repository root: the app packages live here and the processes run from here.
REPO_ROOT = Path(__file__).resolve().parents[2]

INGRESS_START_TIMEOUT_S = 30.0
WORKERS_START_TIMEOUT_S = 30.0
#: dramatiq logs this once per worker process when it starts consuming.
WORKER_READY_LINE = "Worker process is ready for action."


def app_environment(
    *,
    redis_url: str,
    s3_endpoint: str,
    s3_access_key: str,
    s3_secret_key: str,
    s3_bucket: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for mjhook processes: `base` (default os.environ) without its
    ``MJHOOK_*`` variables, plus the given services and a fetch allow-list for loopback."""
    base = os.environ if base is None else base
    env = {key: value for key, value in base.items() if not key.startswith("MJHOOK_")}
    env["PYTHONPATH"] = os.pathsep.join(part for part in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if part)
    # Logs reach the log files as they are written, not when a buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(
        {
            "MJHOOK_REDIS_URL": redis_url,
            "MJHOOK_S3_ENDPOINT": s3_endpoint,
            "MJHOOK_S3_ACCESS_KEY": s3_access_key,
            "MJHOOK_S3_SECRET_KEY": s3_secret_key,
            "MJHOOK_S3_BUCKET": s3_bucket,
            "MJHOOK_FETCH_ALLOW": "127.0.0.1,::1,localhost",
            # Tests that want the workers' metrics endpoint give it a free port of its own.
            "MJHOOK_WORKER_METRICS_PORT": "0",
        }
    )
    return env


def start_ingress(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    extra_args: Sequence[str] = (),
    timeout_s: float = INGRESS_START_TIMEOUT_S,
) -> tuple[ManagedProcess, str]:
    """Run gunicorn with the ingress on a free port; return it and its base URL.

    Ready when ``GET /healthz`` answers 200. `extra_args` go to gunicorn (e.g.
    ``["--workers", "1"]``); the log is ``log_dir/ingress.log``.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [
        venv_bin("gunicorn"), "ingress.wsgi:app",
        "-c", "ingress/gunicorn_conf.py",
        "-b", f"127.0.0.1:{port}",
        *_gunicorn_isolation_args(),
        *extra_args,
    ]  # fmt: skip
    proc = ManagedProcess(argv, log_path=Path(log_dir) / "ingress.log", cwd=REPO_ROOT, env=env)
    try:
        wait_for_http(f"{base_url}/healthz", timeout_s, proc=proc)
    except BaseException:
        proc.terminate()
        raise
    return proc, base_url


def _gunicorn_isolation_args() -> list[str]:
    """Newer gunicorns open a control socket at one fixed path (~/.gunicorn/gunicorn.ctl)
    shared by every instance; a test's ingress must not take over another's."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


def start_workers(
    env: Mapping[str, str],
    log_dir: Path,
    processes: int = 1,
    threads: int = 4,
    *,
    extra_args: Sequence[str] = (),
    timeout_s: float = WORKERS_START_TIMEOUT_S,
    launcher: Sequence[str] | None = None,
) -> ManagedProcess:
    """Run ``dramatiq workers.tasks``; return once every worker process is consuming.

    The log is ``log_dir/workers.log``; `extra_args` go to dramatiq. ``launcher``: the command
    in place of ``dramatiq`` (``python -m workers``, say).
    """
    argv = [
        *(launcher or [venv_bin("dramatiq")]), "workers.tasks",
        "--processes", str(processes),
        "--threads", str(threads),
        *extra_args,
    ]  # fmt: skip
    proc = ManagedProcess(argv, log_path=Path(log_dir) / "workers.log", cwd=REPO_ROOT, env=env)
    try:
        wait_until(
            lambda: proc.log_since_start().count(WORKER_READY_LINE) >= processes,
            timeout_s,
            what=f"{processes} dramatiq worker process(es) to be ready",
            proc=proc,
            interval_s=0.1,
        )
    except BaseException:
        proc.terminate()
        raise
    # The workers made the bucket at boot; its first write is this one, not two of a task's. Only
    # a head start: a test whose store cannot take it (down, another bucket) goes on as it is.
    with suppress(Exception):
        first_write(create_object_store(Settings.from_env(env), retries=0))
    return proc


def loopback_settings(redis_url: str, s3: S3Server, s3_bucket: str, **fields: object) -> Settings:
    """Settings of an in-process worker or ingress on the test's Redis and S3 store (``s3``),
    downloading from 127.0.0.1 only, with ``fields`` on top."""
    return Settings(  # type: ignore[arg-type]
        redis_url=redis_url,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket=s3_bucket,
        fetch_allow=("127.0.0.1",),
        **fields,
    )


def ready_bucket(store: ObjectStore) -> None:
    """Make ``store``'s bucket (as a worker does at start) and :func:`first_write` into it."""
    wait_for_bucket(store, timeout_s=30)
    first_write(store)


def first_write(store: ObjectStore) -> None:
    """Write one object into ``store``'s bucket, and remove it. SeaweedFS grows a new bucket's
    first volume on its first write: two first writes at once (a task's files) wait a second for
    it, in every test with a bucket of its own."""
    store.put_json(PROBE_KEY, {})
    store.remove(PROBE_KEY)


#: The object :func:`ready_bucket` writes and removes.
PROBE_KEY = "ready-probe.json"
