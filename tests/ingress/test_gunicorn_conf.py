"""ingress/gunicorn_conf.py: the settings gunicorn reads, and its hooks."""

from __future__ import annotations

import gc

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
