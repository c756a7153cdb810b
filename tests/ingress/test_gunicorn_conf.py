"""ingress/gunicorn_conf.py: the settings gunicorn reads, and its hooks."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import httpx
import orjson
import pytest
from gunicorn.config import Config
from gunicorn.workers.gasgi import ASGIWorker

from ingress import gunicorn_conf
from ingress.gunicorn_worker import BoundedASGIWorker
from shared.callback import CALLBACK_PATH
from tests.support.pipeline import callback
from tests.support.procs import wait_until
from tests.support.servers import RedisServer
from tests.support.stack import start_ingress


def test_the_ingress_runs_on_gunicorns_asyncio_worker_with_uvloop() -> None:
    config = Config()
    for name in ("worker_class", "asgi_loop", "workers", "worker_connections", "timeout", "keepalive"):
        config.set(name, getattr(gunicorn_conf, name))
    assert config.worker_class is BoundedASGIWorker
    assert issubclass(BoundedASGIWorker, ASGIWorker)  # gunicorn's own asyncio worker
    assert config.asgi_loop == "uvloop"
    assert config.worker_connections == 1000


def test_a_worker_freezes_what_it_loaded_so_full_collections_skip_it() -> None:
    gc.unfreeze()
    loaded = [[n] for n in range(1000)]  # stands for the modules and the app: tracked objects
    assert gc.get_freeze_count() == 0
    try:
        gunicorn_conf.post_worker_init(worker=None)
        assert gc.get_freeze_count() > len(loaded)
        assert all(gc.is_tracked(item) for item in loaded)
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000\n", 2),  # docker --cpus 2 on a host of 8
        ("150000 100000\n", 2),  # 1.5 CPUs: rounded up
        ("50000 100000\n", 1),
        ("max 100000\n", 8),  # no quota
        ("1600000 100000\n", 8),  # a quota above the CPUs allowed
        (None, 8),  # no cgroup v2 file
        ("garbage\n", 8),
        ("100000 0\n", 8),
    ],
)
def test_the_ingress_starts_a_process_per_cpu_its_container_may_use(
    tmp_path: Path, cpu_max: str | None, expected: int
) -> None:
    """A container allowed 2 of a host's 8 CPUs gets 2 processes, not 8 (cpu_count reads the
    host's)."""
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert gunicorn_conf.available_cpus(cpu_max=path, affinity=set(range(8))) == expected


@pytest.mark.integration
def test_an_access_log_turned_on_leaves_out_query_strings_and_referrers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """gunicorn's default access line is the whole request line: the callback token (and the
    dashboard's API token, also in its pages' Referer) would be written to the log."""
    # Given the ingress with a callback token and its access log turned on
    env = {name: value for name, value in os.environ.items() if not name.startswith("MJHOOK_")}
    env |= {"MJHOOK_REDIS_URL": redis_server.url, "MJHOOK_CALLBACK_TOKEN": "tok-s3cret"}
    proc, base_url = start_ingress(env, tmp_path, extra_args=["--workers", "1", "--access-logfile", "-"])
    try:
        # When a callback comes with the token, and a page with a referrer carrying it
        with httpx.Client(base_url=base_url, timeout=10) as http:
            answer = http.post(
                f"{CALLBACK_PATH}?token=tok-s3cret",
                content=orjson.dumps(callback("t-access", ["http://127.0.0.1:9/0.png"])),
                headers={
                    "Content-Type": "application/json",
                    "Referer": f"{base_url}/dashboard?token=tok-s3cret",
                },
            )
            assert answer.status_code == 200
        wait_until(
            lambda: f"POST {CALLBACK_PATH} HTTP/1.1" in proc.log_since_start(), 10, what="the access line"
        )
        log = proc.log_since_start()
    finally:
        proc.terminate()
    # Then the access line has the path and the status, and neither token
    [line] = [line for line in log.splitlines() if f"POST {CALLBACK_PATH} HTTP/1.1" in line]
    assert '" 200 ' in line
    assert "tok-s3cret" not in log
