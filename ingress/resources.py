"""The ingress's HTTP resources: one small class per endpoint."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import falcon
import falcon.asgi
import redis

from ingress.intake import CallbackIntake
from ingress.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureVerifier
from ingress.sources import SourceFilter
from shared.callback import Callback, CallbackLimits, parse_callback
from shared.clock import utc_iso
from shared.errors import InvalidCallback, TaskRecordUnusable, TransientError
from shared.logs import task_context
from shared.printable import shortened
from shared.rejected import Rejection, RejectLog

log = logging.getLogger(__name__)

#: Media types we take a callback in (parameters such as charset are allowed).
JSON_TYPES = ("application/json",)
#: A body larger than this is parsed and checked in a thread, not on the event loop: the
#: provider's callbacks are ~1 KB, and a 256 KiB body of nested arrays took ~30 ms to walk,
#: every other callback's answer waiting meanwhile. (The walk is Python: it lets the loop run.)
PARSE_ON_LOOP_MAX_BYTES = 16 * 1024


class CallbackResource:
    """``POST /callbacks/midjourney``: check, queue, answer within milliseconds."""

    def __init__(
        self,
        *,
        intake: CallbackIntake,
        rejects: RejectLog,
        limits: CallbackLimits,
        max_body_bytes: int,
        tokens: Sequence[str] = (),
        signature: SignatureVerifier | None = None,
        sources: SourceFilter | None = None,
        keep_pool: Executor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._intake = intake
        self._rejects = rejects
        self._keep_pool = keep_pool
        self._limits = limits
        self._max_body_bytes = max_body_bytes
        self._tokens = tuple(token.encode() for token in tokens)
        self._signature = signature
        self._sources = sources
        self._clock = clock

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await self._read_body(req)
        # Whether the sender passed every check of who it is configured (source, token, and the
        # signature): its refusal is kept apart from those anyone can cause (shared/rejected.py).
        vouched = False
        try:
            if self._sources is not None and not self._sources.allows_all:  # headers cost ~10 µs
                self._sources.check(req.remote_addr, req.headers)
            self._check_token(req)
            vouched = self._signature is None
            if len(body) > self._max_body_bytes:
                raise InvalidCallback(f"body larger than {self._max_body_bytes} bytes", status=413)
            if len(body) <= PARSE_ON_LOOP_MAX_BYTES:
                callback = self._parse(req, body)
            else:
                callback = await asyncio.to_thread(self._parse, req, body)
            if self._signature is not None:
                # The signed taskId is in the body, so the signature is checked after parsing.
                self._signature.verify(
                    callback.task_id, req.get_header(TIMESTAMP_HEADER), req.get_header(SIGNATURE_HEADER)
                )
        except InvalidCallback as exc:
            await self._keep(req, body, exc.status, exc.reason, vouched=vouched)
            resp.status = exc.status
            resp.media = {"error": exc.reason}
            return
        with task_context(callback.task_id):
            await self._acknowledge(callback, req, body, resp)

    async def _acknowledge(
        self, callback: Callback, req: falcon.asgi.Request, body: bytes, resp: falcon.asgi.Response
    ) -> None:
        try:
            await self._intake.accept(callback)
        except TransientError as exc:
            log.warning("callback %s not queued: %s", callback.task_id, exc)
            if isinstance(exc, TaskRecordUnusable):
                # Not an outage the provider's retries may outlast: kept, for a replay once the
                # record is mended (`mjhook rejected replay`).
                await self._keep(req, body, 503, str(exc), vouched=True)
            resp.status = falcon.HTTP_503
            resp.media = {"error": "cannot queue the callback durably right now; retry later"}
            return
        resp.media = {"status": "received", "taskId": callback.task_id}

    async def _keep(
        self, req: falcon.asgi.Request, body: bytes, status: int, reason: str, *, vouched: bool
    ) -> None:
        """Keep the refused callback for inspection, from a thread of ``keep_pool``: a slow or
        absent Redis must not stall the event loop, nor, as refusals anyone can send wait on it,
        the loop's default pool, which parses large callbacks and serves /readyz and /metrics
        (None: that default pool)."""
        rejection = Rejection(
            status=status,
            reason=reason,
            body=body,
            size=max(len(body), req.content_length or 0),
            partial=len(body) > self._max_body_bytes,
            remote_addr=self._client_address(req),
            content_type=req.content_type or "",
            vouched=vouched,
        )
        await asyncio.get_running_loop().run_in_executor(self._keep_pool, self._rejects.record, rejection)

    async def _read_body(self, req: falcon.asgi.Request) -> bytes:
        """At most ``max_body_bytes`` + 1 bytes: enough to refuse a larger body, and to keep
        its start for inspection, without ever holding more."""
        body: bytes = await req.stream.read(self._max_body_bytes + 1)
        return body

    def _client_address(self, req: falcon.Request) -> str:
        if self._sources is None:
            return req.remote_addr or ""
        return self._sources.client_address(req.remote_addr, req.headers)

    def _check_token(self, req: falcon.Request) -> None:
        if not self._tokens:
            return
        given = (req.get_param("token") or "").encode()
        # Compare against every token, always, so timing says nothing about which one matched.
        matches = [hmac.compare_digest(given, token) for token in self._tokens]
        if not any(matches):
            raise InvalidCallback("missing or wrong token", status=401)

    def _parse(self, req: falcon.Request, body: bytes) -> Callback:
        media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
        if media_type not in JSON_TYPES and not media_type.endswith("+json"):
            raise InvalidCallback("Content-Type must be application/json", status=415)
        encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            # A compressed body read as JSON would be refused as text that is not UTF-8.
            raise InvalidCallback(
                f"Content-Encoding {shortened(encoding, 40)!r} is not supported: send the JSON as it is",
                status=415,
            )
        codings = req.get_header("Transfer-Encoding")
        if codings is not None and codings.strip().lower() != "chunked":
            # The server undoes only chunked: a gzip transfer coding would be read as JSON as it is.
            raise InvalidCallback(
                f"Transfer-Encoding {shortened(codings.strip(), 40)!r} is not supported: "
                "send the JSON as it is (chunked or with a Content-Length)",
                status=415,
            )
        return parse_callback(body, received_at=utc_iso(self._clock()), limits=self._limits)


class HealthResource:
    """``GET /healthz``: the process serves requests."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """``GET /readyz``: Redis answers, so callbacks can be queued."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            await asyncio.to_thread(self._client.ping)
        except (redis.RedisError, OSError) as exc:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "redis": type(exc).__name__}
            return
        resp.media = {"status": "ready"}
