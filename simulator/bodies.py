"""The JSON body of an API request, read within limits: by its Content-Length, or chunk by chunk
(``Transfer-Encoding: chunked``, which wsgiref, the simulator's server, passes on undecoded)."""

from __future__ import annotations

from typing import Any, BinaryIO

import falcon
import orjson

from shared.errors import InvalidCallback
from shared.json_limits import check_depth, max_nesting
from simulator.errors import CODE_BAD_REQUEST, CODE_VALIDATION, ProviderError

#: The largest API request body kept, bytes (a prompt is at most 2000 characters).
MAX_BODY_BYTES = 1024 * 1024
#: Deepest nesting of a request body: a generate request is 2 deep; orjson reads up to 1024
#: levels but writes at most 254, so a deeper ``paramJson`` could not even be recorded.
MAX_BODY_DEPTH = 64
#: Longest chunk-size line (the size in hex, extensions) or trailer line, bytes.
MAX_CHUNK_LINE_BYTES = 1024
#: Most trailer lines after the last chunk.
MAX_TRAILERS = 64


def read_json(req: falcon.Request) -> Any:
    """The JSON request body; code 400 when it is no JSON (or its chunks are malformed, or it
    stalls past the server's socket timeout), 422 beyond :data:`MAX_BODY_BYTES` (read to its end
    piece by piece, not kept, so the client gets the answer rather than a reset connection) or
    :data:`MAX_BODY_DEPTH`."""
    try:
        body = _read_body(req)
    except OSError as exc:  # the server's socket timeout: a client stalling midway through its body
        raise ProviderError(CODE_BAD_REQUEST, f"The request body could not be read: {exc}") from None
    if len(body) > MAX_BODY_BYTES:
        raise ProviderError(CODE_VALIDATION, f"The request body is larger than {MAX_BODY_BYTES} bytes")
    too_deep = ProviderError(CODE_VALIDATION, f"The request body nests deeper than {MAX_BODY_DEPTH} levels")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses more than 1024 levels itself: too deep still, whether valid or not.
        if max_nesting(body) > MAX_BODY_DEPTH:
            raise too_deep from None
        raise ProviderError(CODE_BAD_REQUEST, "The request body is not valid JSON") from None
    try:
        check_depth(document, MAX_BODY_DEPTH)
    except InvalidCallback:
        raise too_deep from None
    return document


def _read_body(req: falcon.Request) -> bytes:
    """The request body, at most :data:`MAX_BODY_BYTES` + 1 bytes of it (a longer one by its
    Content-Length is read to its end)."""
    chunked = "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
    if chunked and req.env.get("wsgi.input_terminated"):
        # A server that decodes chunks itself (gunicorn) says so: its input ends with the body.
        body: bytes = req.stream.read(MAX_BODY_BYTES + 1)
    elif chunked:
        # wsgiref's input is the connection itself, and Falcon reads a body only by its length.
        body = _read_chunked(req.env["wsgi.input"], MAX_BODY_BYTES + 1)
    else:
        body = req.bounded_stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            req.bounded_stream.exhaust()
    return body


def _read_chunked(stream: BinaryIO, limit: int) -> bytes:
    """A chunked body, decoded: at most ``limit`` bytes of it (the rest is not read: the server
    closes the connection after each request)."""
    pieces: list[bytes] = []
    size = 0
    while size < limit:
        line = stream.readline(MAX_CHUNK_LINE_BYTES + 1)
        digits = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not digits or any(c not in b"0123456789abcdefABCDEF" for c in digits):
            raise ProviderError(CODE_BAD_REQUEST, "The request body's chunks are malformed")
        length = int(digits, 16)
        if length == 0:
            _skip_trailers(stream)
            break
        chunk = stream.read(min(length, limit - size))
        if len(chunk) < min(length, limit - size):
            raise ProviderError(CODE_BAD_REQUEST, "The request body ended inside a chunk")
        pieces.append(chunk)
        size += len(chunk)
        if size < limit and stream.readline(3) not in (b"\r\n", b"\n"):
            raise ProviderError(CODE_BAD_REQUEST, "The request body's chunks are malformed")
    return b"".join(pieces)


def _skip_trailers(stream: BinaryIO) -> None:
    """Read the trailer lines (at most :data:`MAX_TRAILERS`) and the blank line ending them."""
    for _ in range(MAX_TRAILERS + 1):
        if stream.readline(MAX_CHUNK_LINE_BYTES + 1) in (b"\r\n", b"\n", b""):
            return
    raise ProviderError(CODE_BAD_REQUEST, "The request body has too many trailers")
