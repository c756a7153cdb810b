"""Every Prometheus metric of mjhook, and how several processes share them.

The ingress (several gunicorn processes) and the workers (several dramatiq processes) each count
in prometheus_client's multiprocess mode: every process writes its values to files in one
directory (``PROMETHEUS_MULTIPROC_DIR``), and whoever serves ``/metrics`` adds them up. The
directory is made by whoever starts the processes (``ingress/gunicorn_conf.py``; for dramatiq,
``workers/tasks.py`` in each worker process, see :mod:`workers.metrics`).

prometheus_client chooses between in-memory and file-backed values once, when it is first
imported, from that environment variable. So this module imports it only inside its functions,
and a process must call :func:`use_multiprocess_dir` (or inherit the variable) before the first
of them runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    import redis
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    from shared.settings import Settings

log = logging.getLogger(__name__)

#: prometheus_client's switch to multiprocess mode: the directory the processes share.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Name of the directories made when the operator sets none (see default_multiprocess_dir).
_DEFAULT_DIR_PREFIX = "mjhook-prometheus-"

#: Ack latency buckets, seconds: 1 ms to 1 s (the provider waits up to 15 s, we aim at a few ms).
ACK_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Download and upload buckets, seconds: 10 ms (a small image nearby) to 10 min (a large video).
TRANSFER_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Processing time of one message, seconds.
MESSAGE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)

#: The outcomes of a task: its final states, or ``duplicate`` for a callback that changed nothing.
TASK_OUTCOMES = ("stored", "partial", "failed", "duplicate")
#: The statuses a callback is rejected with (the resource's answers).
REJECT_STATUSES = ("400", "401", "403", "413", "415")


@dataclass(frozen=True, slots=True)
class IngressMetrics:
    """What each ingress process counts. ``registry`` holds them (for a single process)."""

    registry: CollectorRegistry
    #: Every HTTP request, by route template (``unmatched`` for none), method and status code.
    requests: Counter
    #: From the request reaching falcon to the answer of ``POST /callbacks/midjourney``.
    callback_ack: Histogram
    #: Attempts to put a callback into Redis that failed (requests and spool drains alike).
    enqueue_failures: Counter
    #: Callbacks written to the local spool because Redis could not take them.
    callbacks_spooled: Counter
    #: Callbacks refused, by HTTP status.
    callbacks_rejected: Counter


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    """What each worker process counts."""

    registry: CollectorRegistry
    #: Tasks brought to an end, by outcome (see :data:`TASK_OUTCOMES`).
    tasks: Counter
    #: Result files uploaded, and their bytes.
    files_stored: Counter
    bytes_stored: Counter
    #: Result files recorded as failed in a manifest, by error class.
    files_failed: Counter
    #: Successful downloads and uploads of one file, seconds.
    download_seconds: Histogram
    upload_seconds: Histogram
    #: Attempts that failed and will be retried, by error class (TaskBusy, DownloadFailed, ...).
    task_retries: Counter
    #: Tasks the queue gave up on (retries exhausted or a permanent error), by error class.
    task_failures: Counter
    #: Messages being processed now, by actor (summed over the live processes).
    messages_in_progress: Gauge
    #: Processing time of one message, whatever its end, by actor, seconds.
    message_seconds: Histogram


def create_ingress_metrics(registry: CollectorRegistry | None = None) -> IngressMetrics:
    """The ingress's metrics, registered in ``registry`` (default: a new one)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry() if registry is None else registry
    metrics = IngressMetrics(
        registry=registry,
        requests=Counter(
            "mjhook_http_requests",
            "HTTP requests answered by the ingress.",
            ["endpoint", "method", "status"],
            registry=registry,
        ),
        callback_ack=Histogram(
            "mjhook_callback_ack_seconds",
            "Time to answer a callback (POST /callbacks/midjourney), inside the app.",
            buckets=ACK_BUCKETS_S,
            registry=registry,
        ),
        enqueue_failures=Counter(
            "mjhook_enqueue_failures", "Callbacks Redis did not take when asked to.", registry=registry
        ),
        callbacks_spooled=Counter(
            "mjhook_callbacks_spooled", "Callbacks written to the local spool.", registry=registry
        ),
        callbacks_rejected=Counter(
            "mjhook_callbacks_rejected", "Callbacks refused, by HTTP status.", ["status"], registry=registry
        ),
    )
    for status in REJECT_STATUSES:
        metrics.callbacks_rejected.labels(status)
    return metrics


def create_worker_metrics(registry: CollectorRegistry | None = None) -> WorkerMetrics:
    """The workers' metrics, registered in ``registry`` (default: a new one)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry() if registry is None else registry
    metrics = WorkerMetrics(
        registry=registry,
        tasks=Counter("mjhook_tasks", "Tasks brought to an end, by outcome.", ["outcome"], registry=registry),
        files_stored=Counter("mjhook_files_stored", "Result files stored.", registry=registry),
        bytes_stored=Counter("mjhook_bytes_stored", "Bytes of result files stored.", registry=registry),
        files_failed=Counter(
            "mjhook_files_failed", "Result files given up, by error class.", ["reason"], registry=registry
        ),
        download_seconds=Histogram(
            "mjhook_download_seconds",
            "Time to download one result file.",
            buckets=TRANSFER_BUCKETS_S,
            registry=registry,
        ),
        upload_seconds=Histogram(
            "mjhook_upload_seconds",
            "Time to upload one result file.",
            buckets=TRANSFER_BUCKETS_S,
            registry=registry,
        ),
        task_retries=Counter(
            "mjhook_task_retries",
            "Task attempts to be retried, by error class.",
            ["reason"],
            registry=registry,
        ),
        task_failures=Counter(
            "mjhook_task_failures",
            "Callback messages the queue gave up on (dead-lettered), by error class;"
            " their task may keep another state.",
            ["reason"],
            registry=registry,
        ),
        messages_in_progress=Gauge(
            "mjhook_messages_in_progress",
            "Messages being processed, by actor.",
            ["actor"],
            registry=registry,
            multiprocess_mode="livesum",
        ),
        message_seconds=Histogram(
            "mjhook_message_seconds",
            "Time to process one message, by actor.",
            ["actor"],
            buckets=MESSAGE_BUCKETS_S,
            registry=registry,
        ),
    )
    for outcome in TASK_OUTCOMES:
        metrics.tasks.labels(outcome)
    return metrics


# --- collectors read when scraped ----------------------------------------------------------------


class ScrapeGauges:
    """A collector of gauges read when scraped (not counted by any process), so several processes
    serving the same number do not add it up. ``read`` returns ``(labelvalues, value)`` pairs;
    when it raises, the scrape goes on without these gauges and the error is logged."""

    def __init__(
        self,
        name: str,
        documentation: str,
        read: Callable[[], Iterable[tuple[Sequence[str], float]]],
        *,
        labels: Sequence[str] = (),
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read
        self._labels = list(labels)

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            samples = list(self._read())
        except Exception as exc:
            log.warning("metric %s unavailable: %s: %s", self._name, type(exc).__name__, exc)
            return []
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        for labelvalues, value in samples:
            family.add_metric(list(labelvalues), value)
        return [family]


def spool_collectors(
    depth: Callable[[], int], depth_bytes: Callable[[], int], set_aside: Callable[[], int]
) -> list[Collector]:
    """The ingress's spool, read from its directory when scraped: what waits for a drain, and
    what a drain set aside (acknowledged callbacks the queue refused for good: an alert)."""
    return [
        ScrapeGauges("mjhook_spool_callbacks", "Callbacks waiting in the spool.", lambda: [((), depth())]),
        ScrapeGauges("mjhook_spool_bytes", "Bytes waiting in the spool.", lambda: [((), depth_bytes())]),
        ScrapeGauges(
            "mjhook_spool_set_aside",
            "Acknowledged callbacks the spool's drain set aside: the queue refused them for good.",
            lambda: [((), set_aside())],
        ),
    ]


#: How long a scrape waits for Redis to read the queue's depths, in seconds.
DEFAULT_SCRAPE_TIMEOUT_S = 2.0


def queue_collectors(
    client: redis.Redis,
    *,
    namespace: str,
    queues: Sequence[str],
    heartbeat_timeout_ms: int,
    clock: Callable[[], float] = time.time,
) -> list[Collector]:
    """The queue's depths (ready, delayed, in_flight, dead) and the live worker processes, read
    from Redis when scraped (see :mod:`shared.queue_stats`)."""
    from shared.queue_stats import read_brokers, read_queue

    def read_messages() -> list[tuple[Sequence[str], float]]:
        now_ms = int(clock() * 1000)
        brokers = read_brokers(
            client, namespace=namespace, queues=queues, now_ms=now_ms, timeout_ms=heartbeat_timeout_ms
        )
        samples: list[tuple[Sequence[str], float]] = []
        for queue in queues:
            stats = read_queue(client, namespace=namespace, queue=queue, brokers=brokers, now_ms=now_ms)
            for state in ("ready", "delayed", "in_flight", "dead"):
                samples.append(((queue, state), getattr(stats, state)))
        return samples

    return [
        ScrapeGauges(
            "mjhook_queue_messages",
            "Messages in the queue, by state (read from Redis).",
            read_messages,
            labels=("queue", "state"),
        ),
    ]


def broker_queue_collectors(settings: Settings) -> list[Collector]:
    """:func:`queue_collectors` of the callback queue when the broker is Redis (none for RabbitMQ,
    which shows its queues itself), on a client of its own that waits at most
    ``DEFAULT_SCRAPE_TIMEOUT_S``. Served by the ingress and the workers alike: with every worker
    down, the queue growing must still show."""
    from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, queue_is_in_redis
    from shared.redis_client import connect_redis

    if not queue_is_in_redis(settings):
        return []
    return queue_collectors(
        connect_redis(settings.queue_url, timeout_s=DEFAULT_SCRAPE_TIMEOUT_S),
        namespace=BROKER_NAMESPACE,
        queues=[CALLBACK_QUEUE],
        heartbeat_timeout_ms=settings.redelivery_s * 1000,
    )


# --- serving and the multiprocess directory ------------------------------------------------------


def exposition_registry(
    own: CollectorRegistry | None, *, multiprocess_dir: str | None, collectors: Iterable[Collector] = ()
) -> CollectorRegistry:
    """What ``/metrics`` serves: the values of every process writing to ``multiprocess_dir`` or,
    without one, this process's ``own``; plus ``collectors``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    elif own is not None:
        registry.register(own)
    for collector in collectors:
        registry.register(collector)
    return registry


class MetricsServer:
    """``/metrics`` served over HTTP from daemon threads of this process; :meth:`stop` ends it."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop answering and close the socket (waits up to half a second)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_registry(registry: CollectorRegistry, *, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` over HTTP on ``host``:``port`` (any path, as prometheus_client does);
    raise OSError when the port cannot be had.

    The socket is bound with SO_REUSEPORT (on Linux): several processes of one user may serve the
    same port, and the kernel hands each new connection to one of them. So each process must serve
    the same answer, which the multiprocess directory gives them."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class SharedPortServer(ThreadingWSGIServer):
        address_family = family
        allow_reuse_address = True
        allow_reuse_port = True  # socketserver sets it only where the platform has it

        def server_bind(self) -> None:
            # HTTPServer's own asks DNS for the host's name (socket.getfqdn), which can hang a
            # worker's boot for seconds where no resolver answers (0.0.0.0 in a container).
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
            self.setup_environ()

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line on stderr per scrape would drown the worker's log

    def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body, content_type = render(registry, environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    return MetricsServer(make_server(host, port, metrics_app, SharedPortServer, QuietHandler))


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """``registry`` in the format the ``Accept`` header asks for (Prometheus text 0.0.4 unless it
    asks for OpenMetrics or a newer text version), and its content type."""
    from prometheus_client.exposition import choose_encoder

    try:
        encode, content_type = choose_encoder(accept or "")
    except (TypeError, ValueError):
        # prometheus_client compares a version it cannot read ("version=abc") and raises: a
        # header anyone can send must not make a 500 (and a traceback in the log) of a scrape.
        encode, content_type = choose_encoder("")
    return encode(registry), content_type


def default_multiprocess_dir(role: str, owner_pid: int) -> Path:
    """``<tmp>/mjhook-prometheus-<role>-<owner_pid>``: one directory per running ingress or
    dramatiq instance, named after the process that started the others."""
    return Path(tempfile.gettempdir()) / f"{_DEFAULT_DIR_PREFIX}{role}-{owner_pid}"


def multiprocess_dir(environ: Mapping[str, str], *, role: str, owner_pid: int) -> Path:
    """Where an instance counts: ``PROMETHEUS_MULTIPROC_DIR`` when the operator set it, else its
    default directory. A default directory inherited from another instance (a gunicorn re-executed
    by USR2) is not shared: its owner removes it when it stops."""
    given = environ.get(MULTIPROC_ENV, "")
    if given and not Path(given).name.startswith(_DEFAULT_DIR_PREFIX):
        return Path(given)
    return default_multiprocess_dir(role, owner_pid)


def use_multiprocess_dir(directory: Path, *, clear: bool = False) -> None:
    """Make this process, and those it starts, count in ``directory`` (made if missing; with
    ``clear``, emptied of earlier values). Call it before the first metric is made."""
    directory.mkdir(parents=True, exist_ok=True)
    if clear:
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def mark_process_dead(pid: int, directory: str | Path) -> None:
    """Drop the live gauges of process ``pid`` (it exited) from ``directory``."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def remove_stale_dirs(role: str, *, alive: Callable[[int], bool] | None = None) -> list[Path]:
    """Remove the default directories of ``role`` whose owner process is gone; return them."""
    alive = _process_alive if alive is None else alive
    removed = []
    for path in default_multiprocess_dir(role, 0).parent.glob(f"{_DEFAULT_DIR_PREFIX}{role}-*"):
        owner = path.name.rsplit("-", 1)[-1]
        if owner.isdigit() and not alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
