"""The operator's dashboard: ``GET /dashboard`` (one static HTML page whose script polls the read
API every few seconds) and ``GET /dashboard/status`` (queue depths, live workers and task counts,
the ``mjhook status --json`` object, ``redis_durability`` included).

Both sit behind ``MJHOOK_API_TOKEN`` (:class:`ingress.tasks_api.ApiTokenGuard`). The page alone
also takes the token as ``?token=<value>`` (once: a URL naming it twice is refused), because a
browser cannot send a header when it opens a URL; the page's script then sends it as a Bearer
header to ``/dashboard/status`` and ``/tasks``, which accept the header only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from importlib import resources
from urllib.parse import urlsplit

import dramatiq
import falcon
import falcon.asgi
import redis
from dramatiq.brokers.redis import RedisBroker
from minio.error import S3Error

from ingress.tasks_api import keep_private
from ingress.threaded import Threaded
from shared.errors import StorageUnavailable
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE
from shared.queue_stats import StatusReading, read_status
from shared.redis_durability import clients_to_check
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.taskstate import TaskStore

log = logging.getLogger(__name__)

#: The page; the only path under which ``?token=`` stands in for the Authorization header.
DASHBOARD_PATH = "/dashboard"
#: Queue depths, workers and task counts as JSON.
STATUS_PATH = "/dashboard/status"
#: The page, a package resource of ``ingress``.
PAGE_RESOURCE = "static/dashboard.html"
#: The image origins on AWS S3 when its URLs' host could not be learnt (the bucket's region).
AWS_ORIGINS = "https://*.amazonaws.com"
#: A key presigned once at start-up to learn the origin presigned URLs name (on AWS S3 the host
#: names the bucket: ``https://<bucket>.s3.<region>.amazonaws.com``). With the region configured,
#: presigning is computed locally: no request.
ORIGIN_PROBE_KEY = "tasks/origin-probe/0.png"

_INLINE_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


class DashboardPage:
    """``GET /dashboard``: the page, with a Content-Security-Policy that lets it run its own inline
    script and style (by hash), talk to this origin only, and show images and videos from
    ``image_origins`` (where presigned URLs point)."""

    def __init__(self, html: bytes, *, image_origins: Iterable[str]) -> None:
        self._html = html
        self._headers = {
            "Content-Security-Policy": content_security_policy(html.decode(), image_origins),
            # The page's URL may carry the token: no Referer to the object store, no caching.
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
        }

    @classmethod
    def from_package(cls, *, image_origins: Iterable[str]) -> DashboardPage:
        return cls(
            resources.files("ingress").joinpath(PAGE_RESOURCE).read_bytes(), image_origins=image_origins
        )

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._html
        resp.content_type = "text/html; charset=utf-8"
        resp.set_headers(self._headers)


def content_security_policy(html: str, image_origins: Iterable[str]) -> str:
    """A policy allowing exactly the inline ``<script>`` and ``<style>`` blocks of ``html`` (by
    their sha256), requests to the page's own origin, and images and videos from
    ``image_origins``."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for match in _INLINE_BLOCK.finditer(html):
        digest = base64.b64encode(hashlib.sha256(match.group(2).encode()).digest()).decode()
        hashes[match.group(1)].append(f"'sha256-{digest}'")
    directives = {
        "default-src": ["'none'"],
        "script-src": hashes["script"] or ["'none'"],
        "style-src": hashes["style"] or ["'none'"],
        "connect-src": ["'self'"],
        "img-src": ["'self'", *image_origins],
        "media-src": [*image_origins] or ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def presigned_origin(presigner: ObjectStore, *, fallback: str) -> str:
    """The origin of the URLs ``presigner`` makes, learnt from one it makes now (the endpoint's
    origin is not it on AWS S3). Presigning sends no request when the region is configured;
    without one, minio asks the store for it, and a store that does not answer leaves
    ``fallback``'s origin (logged); on AWS, whose later URLs name a regional host the fallback
    does not, any of its hosts over https. A store that refuses the region lookup (wrong keys, a
    policy without GetBucketLocation) is the same: the dashboard's detail must never stop the
    ingress from starting, and taking callbacks."""
    try:
        return origin(presigner.presigned_url(ORIGIN_PROBE_KEY, expires_s=60))
    except (StorageUnavailable, S3Error) as exc:
        chosen = origin(fallback)
        if (urlsplit(fallback).hostname or "").endswith(".amazonaws.com"):
            chosen = AWS_ORIGINS
        log.warning("dashboard: no presigned URL to learn the image origin from (%s); using %s", exc, chosen)
        return chosen


class DashboardStatusResource:
    """``GET /dashboard/status``: the object ``mjhook status --json`` prints (queues, workers,
    tasks, per_minute, taken_at_ms, redis_durability). With a broker that is not Redis
    (``queue_client`` None), ``queues`` is empty and ``workers`` null (see
    :func:`shared.queue_stats.read_status`). ``redis_durability`` is what in
    ``durability_clients`` (:func:`shared.redis_durability.clients_to_check`) can lose
    acknowledged callbacks; a Redis refusing CONFIG is a sentence there, not an error. 503 while
    Redis is unreachable."""

    def __init__(
        self,
        *,
        queue_client: redis.Redis | None,
        tasks: TaskStore,
        durability_clients: Mapping[str, redis.Redis],
        heartbeat_timeout_ms: int,
        poll_grace_s: float,
        queues: Sequence[str] = (CALLBACK_QUEUE,),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue_client = queue_client
        self._tasks = tasks
        self._durability_clients = durability_clients
        self._heartbeat_timeout_ms = heartbeat_timeout_ms
        self._poll_grace_s = poll_grace_s
        self._queues = queues
        self._clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            resp.media = self._read()
        except redis.RedisError as exc:
            raise falcon.HTTPServiceUnavailable(title="Redis unavailable") from exc
        keep_private(resp)

    def _read(self) -> dict[str, object]:
        snapshot = read_status(
            self._queue_client,
            self._tasks,
            namespace=BROKER_NAMESPACE,
            queues=self._queues,
            heartbeat_timeout_ms=self._heartbeat_timeout_ms,
            now_ms=int(self._clock() * 1000),
            poll_grace_s=self._poll_grace_s,
        )
        return StatusReading.of(snapshot, self._durability_clients).to_json()


def add_dashboard_routes(
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response],
    settings: Settings,
    *,
    broker: dramatiq.Broker,
    tasks: TaskStore,
    presigner: ObjectStore,
    read_pool: Executor | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Register the page and its status endpoint. Queue depths are read from the Redis of the
    ingress's own ``broker``, in ``read_pool`` (None: the loop's default pool), with the
    durability of that Redis and of ``tasks``'s, as ``mjhook status`` reads them; images and videos
    come from the origin of the URLs ``presigner`` makes."""
    queue_client = broker.client if isinstance(broker, RedisBroker) else None
    image_origin = presigned_origin(presigner, fallback=settings.s3_public_endpoint or settings.s3_endpoint)
    app.add_route(DASHBOARD_PATH, Threaded(DashboardPage.from_package(image_origins=[image_origin])))
    app.add_route(
        STATUS_PATH,
        Threaded(
            DashboardStatusResource(
                queue_client=queue_client,
                tasks=tasks,
                durability_clients=clients_to_check(settings, tasks.client, queue_client),
                heartbeat_timeout_ms=settings.redelivery_s * 1000,
                poll_grace_s=settings.poll_grace_s,
                clock=clock,
            ),
            executor=read_pool,
        ),
    )
