"""gunicorn settings for the ingress: ``gunicorn ingress.wsgi:app -c ingress/gunicorn_conf.py``.
Each can be overridden on the command line or with GUNICORN_CMD_ARGS."""

import gc
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from shared.logs import make_formatter
from shared.metrics import (
    MULTIPROC_ENV,
    default_multiprocess_dir,
    mark_process_dead,
    multiprocess_dir,
    remove_stale_dirs,
    use_multiprocess_dir,
)
from shared.queue import queue_is_in_redis
from shared.redis_client import connect_redis
from shared.redis_durability import clients_to_check, log_durability_problems
from shared.settings import Settings

#: The master needs the log settings before the app is loaded; wsgi.py reads them again in each
#: worker process.
_settings = Settings.from_env_or_exit(os.environ)

bind = "127.0.0.1:8000"
#: gunicorn's own asyncio worker: an ack waits on Redis without holding a thread, and the acks
#: of one process share their Redis round trips (ingress/group_commit.py). uvloop runs the loop.
#: Ours adds what it lacks: a deadline on a new connection's headers and on each request's body,
#: and the connection cap (ingress/gunicorn_worker.py).
worker_class = "ingress.gunicorn_worker.BoundedASGIWorker"
asgi_loop = "uvloop"
#: ingress/wsgi.py starts the spool drainer in each worker process as it loads the app; the app's
#: own lifespan hook (which starts it under other ASGI servers) is not needed here.
asgi_lifespan = "off"
#: cgroup v2's CPU quota of this process's group: ``max 100000``, or ``200000 100000`` for 2 CPUs
#: (a container's ``--cpus``/``cpus:``).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(*, cpu_max: Path = CGROUP_CPU_MAX, affinity: set[int] | None = None) -> int:
    """The CPUs this process may use: those its affinity allows (``affinity``: read when None),
    fewer under a cgroup CPU quota, rounded up. The host's count, which ``cpu_count`` gives, would
    start a process per host CPU in a container allowed two."""
    count = len(affinity if affinity is not None else os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return max(1, min(count, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError, ZeroDivisionError):
        return count  # no cgroup v2 quota ("max", or none to read)


workers = max(2, available_cpus())
#: Open connections per worker process (a slow client holds one, not a thread); enforced by the
#: worker class, within the open-file limit.
worker_connections = 1000
#: Bounds each wait for the next piece of a request's body. The worker class bounds a new
#: connection's headers (10 s) and each request's whole body (10 s from its headers), or this when
#: shorter; the provider waits at most 15 s for an answer anyway.
timeout = 30
graceful_timeout = 20
keepalive = 5
limit_request_line = 8190
limit_request_fields = 50
limit_request_field_size = 8190
accesslog = None
#: When the access log is turned on (``--access-logfile``): gunicorn's default line without the
#: query string or the referrer, which carry ``?token=`` (the callback token, the dashboard's API
#: token): ``%(U)s`` is the path alone where gunicorn's ``%(r)s`` is the whole request line.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
#: gunicorn 27's control socket is one file per user (~/.gunicorn/gunicorn.ctl) shared by every
#: instance on the host; the ingress does not use it.
control_socket_disable = True
loglevel = _settings.log_level.lower()


class MjhookLogger(Logger):  # type: ignore[misc]
    """gunicorn's own log lines (gunicorn.error, and gunicorn.access when enabled) in
    MJHOOK_LOG_FORMAT, like the app's. A logger class rather than ``logconfig_dict``, which would
    turn the access log on (a cost on every request)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = make_formatter(_settings.log_format)
        for handler in (*self.error_log.handlers, *self.access_log.handlers):
            handler.setFormatter(formatter)


logger_class = MjhookLogger


def on_starting(server: Any) -> None:
    """Give the worker processes one fresh directory to count metrics in (see shared.metrics):
    PROMETHEUS_MULTIPROC_DIR when set, else one of this master's own under the temp directory."""
    remove_stale_dirs("ingress")
    use_multiprocess_dir(multiprocess_dir(os.environ, role="ingress", owner_pid=os.getpid()), clear=True)


def when_ready(server: Any) -> None:
    """Once, in the master, as the ingress starts: warn (in gunicorn's log) of what in its Redis
    can lose callbacks it acknowledges (shared/redis_durability.py). One try, its connect and its
    answer each of at most MJHOOK_REDIS_TIMEOUT_S per Redis (a Redis that hangs delays the first
    workers that long), and each client closed before the workers are forked. A warning never
    stops the ingress: whatever goes wrong here is logged, and it starts."""
    logger = logging.getLogger("gunicorn.error")
    task_client = connect_redis(_settings.redis_url, timeout_s=_settings.redis_timeout_s, retries=0)
    queue_client = (
        connect_redis(_settings.queue_url, timeout_s=_settings.redis_timeout_s, retries=0)
        if queue_is_in_redis(_settings)
        else None
    )
    try:
        log_durability_problems(clients_to_check(_settings, task_client, queue_client), logger)
    except Exception:
        logger.exception("Redis durability: not checked")
    finally:
        for client in (task_client, queue_client):
            if client is not None:
                client.close()


def post_worker_init(worker: Any) -> None:
    """The app is loaded: move every object made so far (the modules, the app) out of the
    collector's reach. Otherwise each full collection walks them all, a pause of tens of ms that
    set the ingress's p99 under load (19 ms; 8 ms frozen: bench/RESULTS.md)."""
    gc.collect()
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    """A worker process is gone: its live gauges no longer count."""
    mark_process_dead(worker.pid, os.environ[MULTIPROC_ENV])


def on_exit(server: Any) -> None:
    """Remove this master's own metrics directory (never one the operator gave)."""
    own = default_multiprocess_dir("ingress", os.getpid())
    if Path(os.environ.get(MULTIPROC_ENV, "")) == own:
        shutil.rmtree(own, ignore_errors=True)
