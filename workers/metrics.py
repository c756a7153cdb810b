"""The workers' metrics: where a dramatiq instance's processes count, what each message's end
counts, and how every worker process serves them all.

dramatiq's own ``dramatiq.middleware.prometheus.Prometheus`` does much the same, but it cannot be
configured from our settings: its port and directory are read from ``dramatiq_prom_*``
environment variables when its module is imported, and its default directory
(``<tmp>/dramatiq-prometheus``) is shared by every dramatiq on the host and never emptied, so two
instances would add up each other's counts. And it serves from a process that dramatiq's main
process forks (``Middleware.forks``): ~41 MB of the worker tree's peak memory for one HTTP
endpoint (bench/RESULTS.md, section 3).

Here every worker process counts in per-process files, in a directory per instance (the one named
after the dramatiq main process, the parent of all the worker processes), and serves ``/metrics``
itself from a daemon thread: all of them bind the same port with SO_REUSEPORT, the kernel hands
each scrape to one of them, and each answers with the sum of every process's files plus the
queue's depths read from Redis. :mod:`workers.metrics_port` keeps a second instance off that port.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from shared.errors import ConfigError
from shared.metrics import (
    MetricsServer,
    WorkerMetrics,
    broker_queue_collectors,
    create_worker_metrics,
    exposition_registry,
    mark_process_dead,
    multiprocess_dir,
    remove_stale_dirs,
    serve_registry,
    use_multiprocess_dir,
)
from shared.queue import PROCESS_CALLBACK
from shared.settings import Settings
from workers.metrics_port import PortClaim, claim_port

log = logging.getLogger(__name__)

#: The ``role`` part of the workers' default metrics directory (see shared.metrics).
ROLE = "worker"


def worker_metrics_dir(environ: Mapping[str, str]) -> Path:
    """This dramatiq instance's metrics directory, the same in all its worker processes:
    ``PROMETHEUS_MULTIPROC_DIR``, else one named after their parent."""
    return multiprocess_dir(environ, role=ROLE, owner_pid=os.getppid())


def start_worker_metrics(environ: Mapping[str, str]) -> tuple[WorkerMetrics, Path]:
    """In a worker process, before anything counts: choose the directory, drop the live gauges a
    former process with this pid may have left there, and make the metrics."""
    directory = worker_metrics_dir(environ)
    use_multiprocess_dir(directory)
    mark_process_dead(os.getpid(), directory)
    return create_worker_metrics(), directory


class WorkerMetricsMiddleware(Middleware):
    """Times every message and counts how callback messages end when they raise: retried, or
    given up (``mjhook_task_failures_total``, per message). Whether a give-up failed the task
    (``mjhook_tasks_total{outcome="failed"}``) is :class:`workers.runtime.WorkerRuntime`'s to
    count: it often leaves the task in another state. With ``serve``, each worker process calls
    it once booted to serve the metrics of all the worker processes (see
    :func:`serve_worker_metrics`), and stops what it returned once the worker has shut down.

    Place it before Retries: after-hooks run in reverse order, so it sees a message once Retries
    has decided whether it failed for good."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        directory: Path,
        serve: Callable[[], WorkerMetricsServer | None] | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._metrics = metrics
        self._directory = directory
        self._serve = serve
        self._server: WorkerMetricsServer | None = None
        self._timer = timer
        self._started: dict[str, float] = {}

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._serve is not None:
            self._server = self._serve()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._metrics.messages_in_progress.labels(message.actor_name).inc()
        self._started[message.message_id] = self._timer()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = self._started.pop(message.message_id, None)
        if started is not None:
            self._metrics.messages_in_progress.labels(message.actor_name).dec()
            self._metrics.message_seconds.labels(message.actor_name).observe(self._timer() - started)
        if exception is None or message.actor_name != PROCESS_CALLBACK:
            return
        reason = type(exception).__name__
        if message.failed:
            self._metrics.task_failures.labels(reason).inc()
        else:
            self._metrics.task_retries.labels(reason).inc()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.after_process_message(broker, message)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Served until here: the other processes may still be finishing their messages.
        if self._server is not None:
            self._server.stop()
            self._server = None
        mark_process_dead(os.getpid(), self._directory)


class WorkerMetricsServer:
    """This worker process's part in serving its instance's metrics: the HTTP server and the
    claim on the port."""

    def __init__(self, server: MetricsServer, claim: PortClaim) -> None:
        self._server = server
        self._claim = claim

    def stop(self) -> None:
        self._server.stop()
        self._claim.release()


def serve_worker_metrics(settings: Settings, directory: Path) -> WorkerMetricsServer | None:
    """In a worker process: serve, until stopped, on ``settings.worker_metrics_host``:``_port``
    the metrics of this dramatiq instance's worker processes (the files in ``directory``) and the
    queue's depths read from Redis. Every worker process of the instance serves the same port.
    When the port cannot be had, log why and return None: the worker works on, unwatched."""
    for stale in remove_stale_dirs(ROLE):
        log.info("removed the metrics of a stopped dramatiq instance: %s", stale)
    registry = exposition_registry(
        None, multiprocess_dir=str(directory), collectors=broker_queue_collectors(settings)
    )
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    claim: PortClaim | None = None
    try:
        claim = claim_port(port)
        server = serve_registry(registry, host=host, port=port)
    except (OSError, ConfigError) as exc:
        if claim is not None:
            claim.release()
        log.error("not serving the worker metrics on %s:%d: %s", host, port, exc)
        return None
    log.info("serving the worker metrics on http://%s:%d/metrics", host, server.port)
    return WorkerMetricsServer(server, claim)
