"""The simulator's HTTP resources: the provider's API under ``/api/v1`` and the result files."""

from __future__ import annotations

import fcntl
import logging
import math
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import falcon

from simulator.bodies import read_json
from simulator.config import DEFAULT_REQUEST_TIMEOUT_S
from simulator.errors import CODE_BAD_REQUEST, CODE_OK, CODE_SERVER_ERROR, ProviderError
from simulator.faults import FileFault
from simulator.links import FILE_NAME_PATTERN, FileRef, LinkCheck
from simulator.provider import Provider

log = logging.getLogger(__name__)

#: A slow file is sent in this many pieces, spread over the configured delay.
SLOW_FILE_PIECES = 20
#: A file body goes out in writes of at most this many bytes. The connection's timeout bounds each
#: write (one ``sendall``), not the whole body: a client reading steadily, however slowly, is not
#: hung up on because the file took longer than ``request_timeout_s`` to send.
SEND_SLICE_BYTES = 256 * 1024
#: How often, once the last byte was written, the connection's send queue is looked at, seconds.
SEND_QUEUE_POLL_S = 0.01
#: The WSGI environ key under which the simulator's server passes the client's socket.
CONNECTION_ENV = "simulator.connection"
#: Where the provider's API is; what is not under it (the result files) is plain HTTP.
API_ROOT = "/api/"


def _answer(resp: falcon.Response, data: Any) -> None:
    resp.media = {"code": CODE_OK, "msg": "success", "data": data}


class GenerateResource:
    """``POST /api/v1/mj/generate``."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._provider.authorize(req.auth)
        task = self._provider.generate(read_json(req))
        _answer(resp, {"taskId": task.task_id})


class DeriveResource:
    """``POST /api/v1/mj/generateUpscale`` and ``/generateVary``: a new task from one image."""

    def __init__(self, provider: Provider, *, task_type: str) -> None:
        self._provider = provider
        self._task_type = task_type

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._provider.authorize(req.auth)
        task = self._provider.derive(read_json(req), task_type=self._task_type)
        _answer(resp, {"taskId": task.task_id})


class RecordInfoResource:
    """``GET /api/v1/mj/record-info?taskId=``."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._provider.authorize(req.auth)
        task_id = req.get_param("taskId")
        if not task_id:
            raise ProviderError(CODE_BAD_REQUEST, "taskId is required")
        _answer(resp, self._provider.details(task_id))


class DownloadUrlResource:
    """``POST /api/v1/common/download-url``."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._provider.authorize(req.auth)
        _answer(resp, self._provider.download_url(read_json(req)))


class FileResource:
    """``GET /files/{task_id}/{index}.{ext}?exp=&sig=``: 403 for a bad signature, 404 once the
    media is no longer kept (whatever the link's expiry), else 410 once expired, and the injected
    faults (503, slow, truncated). ``sleep`` makes the pauses of a slow file, in seconds."""

    def __init__(self, provider: Provider, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._provider = provider
        self._sleep = sleep

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str, name: str) -> None:
        match = FILE_NAME_PATTERN.fullmatch(name)
        if match is None:
            raise falcon.HTTPNotFound()
        ref = FileRef(task_id, int(match["index"]), match["ext"])
        answer = self._provider.open_file(
            ref, expires=req.get_param("exp") or "", signature=req.get_param("sig") or ""
        )
        if answer.check is LinkCheck.BAD_SIGNATURE:
            raise falcon.HTTPForbidden(description="invalid signature")
        if not answer.kept:
            raise falcon.HTTPNotFound(description="this file is no longer kept")
        if answer.check is LinkCheck.EXPIRED:
            raise falcon.HTTPGone(description="this link has expired")
        if answer.fault is FileFault.ERROR:
            raise falcon.HTTPServiceUnavailable(description="injected fault")
        resp.content_type = answer.content_type
        resp.content_length = len(answer.data)
        if answer.fault is FileFault.TRUNCATED:
            # Content-Length promises the whole file; the connection ends halfway.
            resp.stream = _sliced([answer.data[: len(answer.data) // 2]])
            return
        if answer.fault is FileFault.SLOW:
            pieces: Iterable[bytes] = _trickle(
                answer.data, self._provider.config.faults.file_slow_delay_s, self._sleep
            )
        else:
            pieces = [answer.data]
        # Without the socket (another WSGI server, a test client), written is all there is to go on.
        connection = req.env.get(CONNECTION_ENV)
        resp.stream = _calling_when_sent(
            _sliced(pieces),
            lambda: connection is None or _all_sent(connection),
            lambda: self._provider.sent_whole(ref, requested_at=answer.requested_at),
        )


def _trickle(data: bytes, duration_s: float, sleep: Callable[[float], None]) -> Iterator[bytes]:
    piece = max(1, -(-len(data) // SLOW_FILE_PIECES))
    for start in range(0, len(data), piece):
        sleep(duration_s / SLOW_FILE_PIECES)
        yield data[start : start + piece]


def _sliced(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``pieces`` cut into slices of at most :data:`SEND_SLICE_BYTES`, each one write."""
    for piece in pieces:
        for start in range(0, len(piece), SEND_SLICE_BYTES):
            yield piece[start : start + SEND_SLICE_BYTES]


def _calling_when_sent(
    pieces: Iterable[bytes], all_sent: Callable[[], bool], on_sent: Callable[[], None]
) -> Iterator[bytes]:
    """``pieces``, then ``on_sent()`` if ``all_sent()``: the server asks for the next piece only
    once it wrote the one before, so that runs after the last byte was written. A client hanging
    up midway makes a write fail, and the server closes this generator without running it."""
    yield from pieces
    if all_sent():
        on_sent()


def _all_sent(connection: socket.socket) -> bool:
    """Whether every byte written to ``connection`` left its send queue (the client's side took
    it) without an error, waiting while the queue shrinks, up to the connection's timeout with no
    progress (as a write does). A written byte is not yet a sent one: the kernel buffers take
    megabytes, the whole of a file whose client read the first bytes and hung up. Linux only, as
    the project: ``SIOCOUTQ`` (``TIOCOUTQ``) gives the bytes the client has not acknowledged. A
    file the client's receive buffer takes whole counts once it is there, read or not."""
    idle_s = connection.gettimeout() or DEFAULT_REQUEST_TIMEOUT_S
    last, deadline = math.inf, 0.0
    try:
        while True:
            (unsent,) = struct.unpack("i", fcntl.ioctl(connection.fileno(), termios.TIOCOUTQ, bytes(4)))
            # A client that reset the connection leaves its error on the socket, whatever the queue says.
            if connection.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return False
            if unsent == 0:
                return True
            if unsent < last:  # the client is reading
                last, deadline = unsent, time.monotonic() + idle_s
            elif time.monotonic() >= deadline:
                # Not counted, so not delivered either: closed with a reset, the queued bytes
                # dropped (a client reading on later got the file the count says it did not).
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            time.sleep(SEND_QUEUE_POLL_S)
    except OSError:  # the connection closed meanwhile
        return False


class ProviderErrorHandler:
    """Failures of API calls in the provider's body shape, ``{"code", "msg", "data": null}``,
    with HTTP status 200 (or the body code, when ``mirror_code``): Falcon's own HTTP errors under
    the API too (an unknown path, 404, or method, 405, is that body code). An unexpected error
    outside the API (a result file) is HTTP 500: a downloader would store a JSON body with status
    200 as the file; Falcon's errors there keep Falcon's shape."""

    def __init__(self, *, mirror_code: bool = False) -> None:
        self._mirror_code = mirror_code

    def __call__(self, req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
        if isinstance(exc, falcon.HTTPError):
            if not req.path.startswith(API_ROOT):
                raise exc
            code, msg = exc.status_code, exc.title
            if self._mirror_code and exc.headers:
                resp.set_headers(exc.headers)  # Allow, for a 405
        elif isinstance(exc, ProviderError):
            code, msg = exc.code, exc.msg
        else:
            log.exception("unhandled error on %s %s", req.method, req.path)
            if not req.path.startswith(API_ROOT):
                raise falcon.HTTPInternalServerError()
            code, msg = CODE_SERVER_ERROR, "Server error"
        resp.media = {"code": code, "msg": msg, "data": None}
        resp.status = code if self._mirror_code else falcon.HTTP_200
