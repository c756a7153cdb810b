"""The ingress application factory."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dramatiq
import falcon
import falcon.asgi
import orjson
import redis
from falcon import media
from minio.error import S3Error

from ingress.dashboard import DASHBOARD_PATH, add_dashboard_routes
from ingress.intake import CallbackIntake
from ingress.metrics import CountingIntake, CountingRejectLog, CountingSpool, MetricsResource, RequestMetrics
from ingress.resources import CallbackResource, HealthResource, ReadyResource
from ingress.signature import SignatureVerifier
from ingress.sources import SourceFilter
from ingress.spool import Spool, SpoolDrainer
from ingress.tasks_api import ApiTokenGuard, TaskListResource, TaskResource
from ingress.threaded import Threaded
from shared.callback import CALLBACK_PATH, callback_limits
from shared.metrics import (
    IngressMetrics,
    broker_queue_collectors,
    create_ingress_metrics,
    exposition_registry,
    spool_collectors,
)
from shared.queue import enqueue_broker_beside
from shared.redis_client import connect_redis, connect_redis_async
from shared.settings import Settings
from shared.storage import create_object_store
from shared.taskstate import TaskStore

log = logging.getLogger(__name__)

#: Paths that need MJHOOK_API_TOKEN (when set).
READ_PREFIXES = ("/tasks", "/dashboard")
#: Threads per worker process for the task and dashboard reads (Redis, object storage): their
#: own, so that a slow store under a busy dashboard cannot take the loop's default pool, which
#: /readyz, /metrics and the parse of large callbacks use.
DEFAULT_READ_THREADS = 8
#: Threads per worker process keeping refused callbacks in Redis: their own, so that refusals,
#: which anyone can send, waiting on a hung Redis cannot take the loop's default pool either.
KEEP_THREADS = 4
#: Seconds a read endpoint waits for object storage to answer (connect aside), with no retry.
STORE_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Ingress:
    """The ASGI app and the parts that run beside it in each gunicorn worker."""

    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]
    intake: CallbackIntake
    spool: Spool | None
    settings: Settings
    drainer: SpoolDrainer | None = None

    def start_drainer(self) -> SpoolDrainer | None:
        """Drain the spool now and then every ``spool_drain_interval_s`` (None: no spool). The app
        starts it itself at the ASGI lifespan's startup (:class:`DrainsWhileServed`); this is for
        a server that sends no lifespan events (a WSGI worker, through ingress/wsgi_bridge.py)."""
        if self.drainer is not None:
            self.drainer.start()
        return self.drainer


class DrainsWhileServed:
    """Falcon middleware: the spool's drainer runs from the ASGI lifespan's startup to its
    shutdown, so that the app from :func:`create_app` drains what it spooled under any ASGI server
    (gunicorn's asgi worker, uvicorn, ...): a callback answered 200 from the spool while Redis was
    away is queued once it is back. No per-request hook: nothing on the acknowledgement path."""

    def __init__(self, drainer: SpoolDrainer) -> None:
        self._drainer = drainer

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        self._drainer.start()

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        # Not waited for: no thread of the loop's pool (it may be held, by reads on a hung Redis),
        # and a round cut off by the process's exit leaves its file in the spool for the next
        # start (its callbacks queued once more at worst: the workers deduplicate by taskId).
        self._drainer.stop(wait=False)


def create_app(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    broker: dramatiq.Broker | None = None,
    clock: Callable[[], float] = time.time,
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """Build the ingress app (ASGI). Redis and the broker are made from ``settings`` unless
    given; the acknowledgements' own asyncio connection is always to ``settings.redis_url``. Its
    metrics are its own process's: under several gunicorn workers, ``ingress/wsgi.py`` builds it
    with :func:`build_ingress` and the directory they share their metrics in."""
    return build_ingress(settings, redis_client=redis_client, broker=broker, clock=clock).app


def build_ingress(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    broker: dramatiq.Broker | None = None,
    clock: Callable[[], float] = time.time,
    metrics: IngressMetrics | None = None,
    metrics_dir: str | None = None,
) -> Ingress:
    """The app with its intake and spool (from ``settings.spool_dir``; empty: none). ``GET /metrics``
    serves ``metrics`` (default: new ones) or, given ``metrics_dir``, those of every process
    counting there (prometheus_client's multiprocess mode)."""
    metrics = create_ingress_metrics() if metrics is None else metrics
    client = redis_client or connect_redis(settings.redis_url, timeout_s=settings.redis_timeout_s)
    if broker is None:
        broker = enqueue_broker_beside(settings, client)
    spool = (
        CountingSpool(
            Path(settings.spool_dir), max_bytes=settings.spool_max_bytes, spooled=metrics.callbacks_spooled
        )
        if settings.spool_dir
        else None
    )
    intake = CountingIntake(
        enqueue_failures=metrics.enqueue_failures,
        broker=broker,
        tasks=TaskStore(client, ttl_s=settings.task_ttl_s, clock=clock),
        acks=connect_redis_async(settings.redis_url, timeout_s=settings.redis_timeout_s),
        spool=spool,
    )
    drainer = (
        SpoolDrainer(spool, intake.drain_one, interval_s=settings.spool_drain_interval_s)
        if spool is not None
        else None
    )
    app = _falcon_app(settings, metrics, drainer)
    app.add_route(CALLBACK_PATH, _callback_resource(settings, intake, client, metrics, clock))
    _add_read_routes(app, settings, broker=broker, tasks=intake.tasks, clock=clock)
    collectors = spool_collectors(spool.depth, spool.depth_bytes, spool.unqueued) if spool is not None else []
    collectors += broker_queue_collectors(settings)
    app.add_route(
        "/metrics",
        Threaded(
            MetricsResource(
                exposition_registry(metrics.registry, multiprocess_dir=metrics_dir, collectors=collectors)
            )
        ),
    )
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(client))
    return Ingress(app=app, intake=intake, spool=spool, settings=settings, drainer=drainer)


def _falcon_app(
    settings: Settings, metrics: IngressMetrics, drainer: SpoolDrainer | None
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """The app without routes: its middleware (request metrics, the read endpoints' token, the
    spool's drainer), orjson for JSON, and the error handlers that keep every answer JSON."""
    middleware: list[Any] = [
        RequestMetrics(metrics, ack_path=CALLBACK_PATH),
        ApiTokenGuard(settings.api_token, prefixes=READ_PREFIXES, query_token_paths=(DASHBOARD_PATH,)),
    ]
    if drainer is not None:
        middleware.append(DrainsWhileServed(drainer))
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response] = falcon.asgi.App(
        media_type=falcon.MEDIA_JSON,
        middleware=middleware,
    )
    json_handler = media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(redis.RedisError, _redis_unavailable)
    app.add_error_handler(S3Error, _storage_refused)
    app.set_error_serializer(_error_json)
    return app


def _callback_resource(
    settings: Settings,
    intake: CallbackIntake,
    client: redis.Redis,
    metrics: IngressMetrics,
    clock: Callable[[], float],
) -> CallbackResource:
    """``POST /callbacks/midjourney``: who may call (token, signature, source address), the
    limits of a body, and where refused bodies are kept."""
    signature = None
    if settings.webhook_hmac_key.strip():
        signature = SignatureVerifier.from_setting(
            settings.webhook_hmac_key, window_s=settings.webhook_window_s, clock=clock
        )
    sources = SourceFilter(
        settings.callback_allow_from,
        trusted_proxy_header=settings.trusted_proxy_header or None,
        trusted_proxies=settings.trusted_proxies,
    )
    return CallbackResource(
        intake=intake,
        rejects=CountingRejectLog(
            client,
            keep=settings.rejected_keep,
            body_bytes=settings.rejected_body_bytes,
            clock=clock,
            rejected=metrics.callbacks_rejected,
        ),
        limits=callback_limits(settings),
        max_body_bytes=settings.max_body_bytes,
        tokens=settings.callback_tokens,
        signature=signature,
        sources=sources,
        keep_pool=ThreadPoolExecutor(max_workers=KEEP_THREADS, thread_name_prefix="rejects"),
        clock=clock,
    )


def _add_read_routes(
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response],
    settings: Settings,
    *,
    broker: dramatiq.Broker,
    tasks: TaskStore,
    clock: Callable[[], float],
) -> None:
    """``/tasks/{taskId}``, ``/tasks`` and the dashboard, each on a thread pool of its own kind."""
    # A read endpoint answers 503 soon rather than wait on a hung store (the workers' client
    # waits longer, and retries: their downloads are worth it, a dashboard refresh is not).
    read_store = partial(create_object_store, settings, read_timeout_s=STORE_READ_TIMEOUT_S, retries=0)
    store = read_store()
    presigner = read_store(endpoint=settings.s3_public_endpoint) if settings.s3_public_endpoint else store
    read_pool = ThreadPoolExecutor(max_workers=DEFAULT_READ_THREADS, thread_name_prefix="reads")
    # Reads of object storage on threads of their own: a hung store holding them all leaves the
    # Redis reads (the task list, the dashboard's numbers) answering.
    store_pool = ThreadPoolExecutor(max_workers=DEFAULT_READ_THREADS, thread_name_prefix="store-reads")
    app.add_route(
        "/tasks/{task_id}",
        Threaded(
            TaskResource(tasks=tasks, store=store, presigner=presigner, expiry_s=settings.presign_expiry_s),
            executor=store_pool,
        ),
    )
    app.add_route("/tasks", Threaded(TaskListResource(tasks=tasks), executor=read_pool))
    add_dashboard_routes(
        app, settings, broker=broker, tasks=tasks, presigner=presigner, read_pool=read_pool, clock=clock
    )


def _error_json(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Every error answer has the callback endpoint's shape: ``{"error": "..."}``."""
    resp.data = orjson.dumps({"error": exc.title or exc.status})
    resp.content_type = falcon.MEDIA_JSON


async def _redis_unavailable(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any, ws: Any = None
) -> None:
    """A read endpoint that could not reach Redis (the callback endpoint spools instead): 503,
    as for object storage, and a log line without a trace."""
    log.warning("%s %s: Redis unavailable: %s: %s", req.method, req.path, type(exc).__name__, exc)
    raise falcon.HTTPServiceUnavailable(title="Redis unavailable")


async def _storage_refused(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any, ws: Any = None
) -> None:
    """Object storage refused a read endpoint's request (AccessDenied: the ingress's keys or
    policy): 503 naming the S3 code, and a log line to fix the configuration by."""
    code = getattr(exc, "code", "") or type(exc).__name__
    log.warning("%s %s: object storage refused: %s", req.method, req.path, code)
    raise falcon.HTTPServiceUnavailable(title=f"object storage refused the request: {code}")


async def _internal_error(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any, ws: Any = None
) -> None:
    """Anything unexpected: log it with its trace, answer a bare 500 that echoes nothing."""
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = {"error": "internal error"}
