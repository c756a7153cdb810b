"""The ingress's metrics: counting requests, the ``GET /metrics`` endpoint, and the intake's
parts made to count what they do (enqueue failures, spooled and rejected callbacks).

The metrics themselves are declared in :mod:`shared.metrics`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import falcon

from ingress.intake import CallbackIntake
from ingress.spool import Spool
from shared.callback import Callback
from shared.metrics import IngressMetrics, render
from shared.rejected import Rejection, RejectLog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

#: Methods counted under their own name; any other is counted as ``other`` (the label's values
#: must stay few whatever clients send).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The endpoint label of a request that matched no route.
UNMATCHED = "unmatched"


class RequestMetrics:
    """falcon middleware: counts every answer by route, method and status, and times the answers
    of ``ack_path``. ``timer`` returns seconds from an arbitrary origin."""

    def __init__(
        self, metrics: IngressMetrics, *, ack_path: str, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self._requests = metrics.requests
        self._ack = metrics.callback_ack
        self._ack_path = ack_path
        self._timer = timer
        # Label lookups cost a lock and a few allocations; these children are looked up once.
        self._children: dict[tuple[str, str, int], Any] = {}

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = self._timer()

    async def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        endpoint = req.uri_template or UNMATCHED
        key = (endpoint, req.method if req.method in KNOWN_METHODS else "other", resp.status_code)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, self._requests.labels(key[0], key[1], str(key[2])))
        child.inc()
        if endpoint == self._ack_path:
            started = getattr(req.context, "metrics_started", None)
            if started is not None:
                self._ack.observe(self._timer() - started)


class MetricsResource:
    """``GET /metrics``: ``registry`` in the Prometheus text format (or OpenMetrics, on request)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = render(self._registry, req.get_header("Accept"))


class CountingIntake(CallbackIntake):
    """A :class:`CallbackIntake` that counts the enqueue attempts Redis refused."""

    def __init__(self, *, enqueue_failures: Counter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._enqueue_failures = enqueue_failures

    def _failed(self) -> None:
        self._enqueue_failures.inc()


class CountingSpool(Spool):
    """A :class:`Spool` that counts the callbacks written to it."""

    def __init__(self, *args: Any, spooled: Counter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spooled = spooled

    def append(self, callback: Callback) -> None:
        super().append(callback)
        self._spooled.inc()


class CountingRejectLog(RejectLog):
    """A :class:`RejectLog` that counts the rejections by status."""

    def __init__(self, *args: Any, rejected: Counter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rejected = rejected

    def record(self, rejection: Rejection) -> None:
        self._rejected.labels(str(rejection.status)).inc()
        super().record(rejection)
