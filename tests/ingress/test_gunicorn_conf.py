"""ingress/gunicorn_conf.py: the settings gunicorn reads, and its hooks."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.workers.gasgi import ASGIWorker

from ingress import gunicorn_conf
from ingress.gunicorn_worker import BoundedASGIWorker


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
