"""What a hostile result server cannot make a download hold: memory past the caps (redirect
bodies, content-encoding bombs) or a worker thread past the minimum rate (trickled headers, a
trickled gzip header), and which of its answers are refused for good rather than retried.

Only 127.0.0.1 is ever connected to: the file server and the scripted server listen there, and
the guarded fetcher gets a resolver that refuses to resolve and a connector that opens sockets
to 127.0.0.1 only."""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpcore
import pytest
from PIL import Image

from shared.errors import DownloadFailed, DownloadRefused, MjhookError
from tests.support.servers import FileServer, png_bytes
from workers.fetch import FetchedFile, FetchLimits, ResultFetcher, create_http_client
from workers.guard import FetchPolicy, create_guarded_transport
from workers.sniff import PNG

MIB = 1 << 20
#: Most memory a download capped at 1 MiB may take at its peak (buffers, a 64 KiB network read).
MEMORY_CEILING = 16 * MIB
#: How long the scripted trickles would last if nothing gave up on them.
TRICKLE_S = 6.0
ONE_MIB_CAPS = FetchLimits(max_image_bytes=MIB, max_video_bytes=MIB, spool_memory_bytes=1024)
#: 100 KB/s on average once a download has run 0.3 s.
SLOW_LIMITS = FetchLimits(max_image_bytes=MIB, max_video_bytes=MIB, min_rate=100_000, min_rate_after_s=0.3)


class ScriptedServer:
    """A raw HTTP server on 127.0.0.1 that answers every request with a script of (bytes, pause)
    steps, for answers the file server cannot give (trickled headers, a trickled gzip header,
    a redirect with a body), and keeps each request's head."""

    def __init__(self, steps: Sequence[tuple[bytes, float]]) -> None:
        self._steps = list(steps)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.requests: list[bytes] = []
        #: Steps sent so far, over all connections.
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests.append(head)
            for payload, pause in self._steps:
                if self._stop.is_set():
                    return
                conn.sendall(payload)
                self.sent += 1
                time.sleep(pause)
        except OSError:
            pass  # the client gave up, which is what most of these tests provoke
        finally:
            conn.close()

    @property
    def steps(self) -> int:
        return len(self._steps)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Sequence[tuple[bytes, float]]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(steps: Sequence[tuple[bytes, float]]) -> ScriptedServer:
        servers.append(ScriptedServer(steps))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"nothing here may be resolved, asked for {host}")


def loopback_connector(
    host: str,
    port: int,
    timeout: float | None = None,
    local_address: str | None = None,
    socket_options: Iterable[Any] | None = None,
) -> httpcore.NetworkStream:
    if host != "127.0.0.1":
        raise AssertionError(f"connection to {host}:{port} asked for")
    return httpcore.SyncBackend().connect_tcp(host, port, timeout, local_address, socket_options)


def loopback_fetcher(limits: FetchLimits, *, read_timeout_s: float = 2.0) -> ResultFetcher:
    """The worker's fetcher (guarded transport) allowed to reach 127.0.0.1 only."""
    transport = create_guarded_transport(
        FetchPolicy.from_allow(["127.0.0.1"]), resolver=no_dns, connector=loopback_connector
    )
    client = create_http_client(
        connect_timeout_s=2,
        read_timeout_s=read_timeout_s,
        max_redirects=3,
        max_connections=4,
        transport=transport,
    )
    return ResultFetcher(client, limits)


Outcome = FetchedFile | MjhookError


def outcome_of(fetch: Callable[[], FetchedFile]) -> Outcome:
    """The file fetched, or the error of the error tree that refused or gave it up."""
    try:
        return fetch()
    except MjhookError as exc:
        return exc


def outcome_and_peak_memory(fetch: Callable[[], FetchedFile]) -> tuple[Outcome, int]:
    """The outcome, and the most memory Python held at once meanwhile (bytes, all threads)."""
    tracemalloc.start()
    try:
        return outcome_of(fetch), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def outcome_and_steps_sent(fetch: Callable[[], FetchedFile], server: ScriptedServer) -> tuple[Outcome, int]:
    """The outcome, and how many steps of its script ``server`` had sent when it came: fewer than
    all of them means the fetcher did not wait the trickle out."""
    outcome = outcome_of(fetch)
    return outcome, server.sent


def png_head(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk: what the sniffer and the dimension check read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc


def answer(headers: str, body: bytes = b"") -> bytes:
    return f"HTTP/1.1 {headers}\r\nConnection: close\r\n\r\n".encode() + body


#: Starts a server answering every request with the given raw bytes, then closing (``serve``).
Serve = Callable[[bytes], ScriptedServer]


def fetched(serve: Serve, raw: bytes, path: str = "/x") -> Outcome:
    """What the loopback fetcher makes of a server answering ``raw``: the file (closed) or error."""
    server = serve(raw)
    outcome = outcome_of(lambda: loopback_fetcher(ONE_MIB_CAPS).fetch(server.url(path)))
    if isinstance(outcome, FetchedFile):
        outcome.close()
    return outcome


def chunked(body: bytes) -> bytes:
    """``body`` as one chunk, then the last (empty) chunk: the server says this is all."""
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


# --- redirects: followed by the fetcher, their bodies never read -------------------------------


@pytest.mark.parametrize("encoded", [False, True], ids=["plain-40MiB", "gzip-gzip-bomb-100MiB"])
def test_a_redirect_body_is_not_read_into_memory(file_server: FileServer, encoded: bool) -> None:
    # Given a result server whose 302 carries a large body (40 MiB; or a few hundred bytes of
    # "Content-Encoding: gzip, gzip" decoding to 100 MiB), and an image cap of 1 MiB
    image = png_bytes(4, 16, 16)
    target = file_server.add("/final.png", image)
    if encoded:
        body, headers = gzip.compress(gzip.compress(bytes(100 * MIB))), {"Content-Encoding": "gzip, gzip"}
    else:
        body, headers = bytes(40 * MIB), {}
    url = file_server.add(
        "/r.png", body, status=302, content_type="text/html", headers={"Location": target, **headers}
    )
    # When it is fetched
    outcome, peak = outcome_and_peak_memory(lambda: loopback_fetcher(ONE_MIB_CAPS).fetch(url))
    # Then the redirect is followed without its body being read, let alone decoded
    assert peak < MEMORY_CEILING, f"{peak / MIB:.0f} MiB held following one redirect of {len(body)} bytes"
    assert isinstance(outcome, FetchedFile), outcome
    assert outcome.sha256 == hashlib.sha256(image).hexdigest()
    outcome.close()


def test_a_redirect_trickling_its_body_is_not_waited_for(
    file_server: FileServer, scripted: Callable[[Sequence[tuple[bytes, float]]], ScriptedServer]
) -> None:
    # Given a 302 that announces a 100 kB body and sends 10 bytes of it every 0.2 s
    target = file_server.add("/final.png", png_bytes(5, 16, 16))
    steps = [(answer(f"302 Found\r\nLocation: {target}\r\nContent-Length: 100000"), 0.2)]
    steps += [(b"x" * 10, 0.2)] * int(TRICKLE_S / 0.2)
    server = scripted(steps)
    # When it is fetched (no minimum rate)
    outcome, sent = outcome_and_steps_sent(
        lambda: loopback_fetcher(FetchLimits(max_image_bytes=MIB, max_video_bytes=MIB)).fetch(
            server.url("/r")
        ),
        server,
    )
    # Then the target is fetched without waiting for the redirect's body to end
    assert isinstance(outcome, FetchedFile), outcome
    assert sent < server.steps
    outcome.close()


@pytest.mark.parametrize("location", ["http://[::1/a.png", "http://a\x7fb/a.png"])
def test_a_redirect_to_an_unparseable_url_is_refused_not_retried(
    file_server: FileServer, location: str
) -> None:
    # Given a result server that redirects to a URL that cannot be parsed
    url = file_server.add_redirect("/r.png", location)
    # When it is fetched
    with pytest.raises(DownloadRefused, match="unusable URL in a redirect"):
        loopback_fetcher(FetchLimits(max_image_bytes=MIB, max_video_bytes=MIB)).fetch(url)
    # Then it is refused for good (not a DownloadFailed retried for ~45 minutes), after one request
    assert file_server.hits["/r.png"] == 1


# --- content encoding: identity asked for, one layer decoded in bounded steps -------------------


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_identity_is_asked_for_and_one_layer_sent_anyway_is_decoded(
    scripted: Callable[[Sequence[tuple[bytes, float]]], ScriptedServer],
    coding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    # Given a server that encodes its PNG whatever the request accepts
    image = png_bytes(6, 32, 32)
    wire = encode(image)
    server = scripted(
        [(answer(f"200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: {len(wire)}", wire), 0)]
    )
    # When it is fetched
    fetched = loopback_fetcher(ONE_MIB_CAPS).fetch(server.url("/a.png"))
    # Then the request asked for no encoding, and the file is the decoded bytes, hashed as stored
    try:
        assert b"accept-encoding: identity\r\n" in server.requests[0].lower()
        assert (fetched.media, fetched.size) == (PNG, len(image))
        assert fetched.sha256 == hashlib.sha256(image).hexdigest()
        assert fetched.body.read() == image
    finally:
        fetched.close()


def test_a_gzip_bomb_is_refused_at_the_cap_before_it_is_decoded_whole(file_server: FileServer) -> None:
    # Given a file served "Content-Encoding: gzip" of about 100 kB that decodes to a PNG header
    # followed by 100 MiB of zeros, and an image cap of 1 MiB
    wire = gzip.compress(png_head(64, 64) + bytes(100 * MIB))
    url = file_server.add("/bomb.png", wire, headers={"Content-Encoding": "gzip"})
    # When it is fetched
    outcome, peak = outcome_and_peak_memory(lambda: loopback_fetcher(ONE_MIB_CAPS).fetch(url))
    # Then it is refused for its size, having decoded little more than the cap
    assert isinstance(outcome, DownloadRefused), outcome
    assert str(outcome) == f"file is over the {MIB}-byte cap"
    assert peak < MEMORY_CEILING, (
        f"{peak / MIB:.0f} MiB held to refuse a 1 MiB-capped file of {len(wire)} bytes"
    )


@pytest.mark.parametrize("coding", ["gzip, gzip", "gzip, identity, deflate", "x-gzip, br, deflate"])
def test_stacked_encodings_are_refused_undecoded(file_server: FileServer, coding: str) -> None:
    # Given a 1 MiB cap and a file of a few hundred bytes, "Content-Encoding: gzip, gzip",
    # decoding to a PNG header and 100 MiB of zeros (the same bytes under the other labels)
    wire = gzip.compress(gzip.compress(png_head(64, 64) + bytes(100 * MIB)))
    url = file_server.add("/bomb.png", wire, headers={"Content-Encoding": coding})
    # When it is fetched
    outcome, peak = outcome_and_peak_memory(lambda: loopback_fetcher(ONE_MIB_CAPS).fetch(url))
    # Then it is refused for its encoding, nothing of it decoded
    assert isinstance(outcome, DownloadRefused), outcome
    assert "at most one gzip or deflate layer" in str(outcome)
    assert peak < MEMORY_CEILING, f"{peak / MIB:.0f} MiB held to refuse {len(wire)} bytes"


def test_bytes_under_an_encoding_we_do_not_decode_are_judged_as_sent(file_server: FileServer) -> None:
    # Given the same bomb labelled "br" (not decoded here)
    wire = gzip.compress(gzip.compress(png_head(64, 64) + bytes(100 * MIB)))
    url = file_server.add("/bomb.png", wire, headers={"Content-Encoding": "br"})
    # Then its bytes, as sent, are no image: refused, nothing of it decoded
    outcome, peak = outcome_and_peak_memory(lambda: loopback_fetcher(ONE_MIB_CAPS).fetch(url))
    assert isinstance(outcome, DownloadRefused), outcome
    assert "not an image or video" in str(outcome)
    assert peak < MEMORY_CEILING


@pytest.mark.parametrize("coding", ["none", "binary"])
def test_a_png_under_a_label_that_encodes_nothing_is_stored(file_server: FileServer, coding: str) -> None:
    """A misconfigured object's metadata ("Content-Encoding: none"): httpx ignored such labels,
    and so do we (session 7's first version refused them)."""
    image = png_bytes(12, 32, 32)
    url = file_server.add("/label.png", image, headers={"Content-Encoding": coding})
    fetched = loopback_fetcher(ONE_MIB_CAPS).fetch(url)
    try:
        assert (fetched.media, fetched.sha256) == (PNG, hashlib.sha256(image).hexdigest())
    finally:
        fetched.close()


@pytest.mark.parametrize("wrapped", [True, False], ids=["zlib-wrapped", "bare"])
def test_deflate_is_decoded_wrapped_or_bare(file_server: FileServer, wrapped: bool) -> None:
    """RFC 9110's deflate is zlib-wrapped; many servers send the bare stream under that name,
    which httpx decoded too (told apart by the zlib header)."""
    image = png_bytes(11, 32, 32)
    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
    url = file_server.add(
        "/deflated.png",
        compressor.compress(image) + compressor.flush(),
        headers={"Content-Encoding": "deflate"},
    )
    fetched = loopback_fetcher(ONE_MIB_CAPS).fetch(url)
    try:
        assert (fetched.media, fetched.sha256) == (PNG, hashlib.sha256(image).hexdigest())
    finally:
        fetched.close()


def test_a_gzip_body_cut_short_is_transient_not_stored_truncated(file_server: FileServer) -> None:
    # Given a complete HTTP answer whose gzip stream stops before its end (no trailer)
    wire = gzip.compress(png_bytes(7, 32, 32))[:-12]
    url = file_server.add("/cut.png", wire, headers={"Content-Encoding": "gzip"})
    # Then the file is not stored cut short: it may be whole the next time
    with pytest.raises(DownloadFailed, match="ends early"):
        loopback_fetcher(ONE_MIB_CAPS).fetch(url)


def test_data_after_the_end_of_a_gzip_body_is_refused(file_server: FileServer) -> None:
    # Given a gzip stream of a PNG followed by bytes that belong to no gzip stream
    wire = gzip.compress(png_bytes(8, 32, 32)) + b"<script>appended</script>"
    url = file_server.add("/tail.png", wire, headers={"Content-Encoding": "gzip"})
    # Then the file is refused rather than stored without what followed
    with pytest.raises(DownloadRefused, match="after the end of the encoded body"):
        loopback_fetcher(ONE_MIB_CAPS).fetch(url)


# --- the minimum rate: from before the connect to the last byte, headers included ---------------


def test_trickled_response_headers_are_given_up_as_too_slow(
    scripted: Callable[[Sequence[tuple[bytes, float]]], ScriptedServer],
) -> None:
    # Given a server that sends one header line every 0.25 s (well within the 1 s read timeout)
    # for 6 s before its body
    body = png_bytes(1, 16, 16)
    steps = [(b"HTTP/1.1 200 OK\r\n", 0.25)] + [(b"X-Pad: a\r\n", 0.25)] * int(TRICKLE_S / 0.25)
    steps += [(f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body, 0.0)]
    server = scripted(steps)
    # When the minimum average is 100 KB/s after 0.3 s
    outcome, sent = outcome_and_steps_sent(
        lambda: loopback_fetcher(SLOW_LIMITS, read_timeout_s=1.0).fetch(server.url("/slow.png")), server
    )
    # Then it is given up as too slow (transient) before the trickle ends
    assert isinstance(outcome, DownloadFailed), outcome
    assert "too slow: 0 bytes in" in str(outcome)
    assert sent < server.steps


def test_a_trickled_gzip_header_is_given_up_as_too_slow(
    scripted: Callable[[Sequence[tuple[bytes, float]]], ScriptedServer],
) -> None:
    # Given a gzip-encoded answer whose gzip header carries a file name (FNAME) sent one byte
    # every 0.25 s: raw body bytes keep coming, but none decodes to anything yet
    image = png_bytes(2, 16, 16)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = deflate.compress(image) + deflate.flush()
    gz_head = b"\x1f\x8b\x08\x08" + b"\x00\x00\x00\x00" + b"\x00\xff"
    gz_tail = b"\x00" + payload + struct.pack("<II", zlib.crc32(image), len(image))
    steps = [(answer("200 OK\r\nContent-Encoding: gzip") + gz_head, 0.25)]
    steps += [(b"a", 0.25)] * int(TRICKLE_S / 0.25)
    steps += [(gz_tail, 0.0)]
    assert gzip.decompress(b"".join(step for step, _ in steps).split(b"\r\n\r\n", 1)[1]) == image
    server = scripted(steps)
    # When the minimum average is 100 KB/s after 0.3 s
    outcome, sent = outcome_and_steps_sent(
        lambda: loopback_fetcher(SLOW_LIMITS, read_timeout_s=1.0).fetch(server.url("/slow.png")), server
    )
    # Then it is given up as too slow before the trickle ends
    assert isinstance(outcome, DownloadFailed), outcome
    assert "too slow" in str(outcome)
    assert sent < server.steps


def _encoded(size: tuple[int, int], fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format=fmt)
    return out.getvalue()


# --- bodies that are not the whole file ---------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "cut"),
    [
        (png_bytes(7, 64, 64), True),
        (png_bytes(7, 64, 64), False),
        (_encoded((48, 48), "JPEG"), True),
        (_encoded((48, 48), "JPEG"), False),
        (_encoded((48, 48), "GIF"), True),
        (_encoded((48, 48), "WEBP"), True),
        (_encoded((48, 48), "WEBP"), False),
    ],
    ids=["png cut", "png whole", "jpeg cut", "jpeg whole", "gif cut", "webp cut", "webp whole"],
)
def test_a_body_ended_by_the_connection_closing_is_stored_only_whole(
    scripted: Callable[[Sequence[tuple[bytes, float]]], ScriptedServer], image: bytes, cut: bool
) -> None:
    # Given an answer with neither a Content-Length nor chunks: its end is the connection closing,
    # here after the whole image, or after half of it (the server stopped, cleanly)
    body = image[: len(image) // 2] if cut else image
    server = scripted([(answer("200 OK", body), 0.0)])
    # When it is fetched
    outcome = outcome_of(lambda: loopback_fetcher(ONE_MIB_CAPS).fetch(server.url("/x")))
    # Then a cut image is not stored (it may be whole the next time), a whole one is
    if cut:
        assert isinstance(outcome, DownloadFailed), outcome
        assert "ended early" in str(outcome)
    else:
        assert isinstance(outcome, FetchedFile), outcome
        assert outcome.sha256 == hashlib.sha256(image).hexdigest()
        outcome.close()


@pytest.mark.parametrize("status", [206, 204])
def test_an_answer_that_is_not_the_whole_file_is_not_stored(file_server: FileServer, status: int) -> None:
    # Given a result server answering 206 Partial Content (no range was asked for) with the start
    # of the image, or 204 No Content
    image = png_bytes(9, 64, 64)
    url = file_server.add(
        "/part.png", image[:3000], status=status, headers={"Content-Range": f"bytes 0-2999/{len(image)}"}
    )
    # Then it is not stored as the file: transient, the next try may have the whole
    with pytest.raises(DownloadFailed, match=f"HTTP {status}: not the whole file"):
        loopback_fetcher(ONE_MIB_CAPS).fetch(url)


def test_a_jpeg_declaring_a_height_of_0_is_refused(file_server: FileServer) -> None:
    # Given a JPEG whose frame header says 20000 wide and 0 high ("defined later", which no
    # decoder reads)
    image = _encoded((8, 8), "JPEG")
    frame = image.index(b"\xff\xc0")
    forged = image[: frame + 5] + struct.pack(">HH", 0, 20000) + image[frame + 9 :]
    url = file_server.add("/zero.jpg", forged, content_type="image/jpeg")
    # Then it is refused as declaring no size, not stored
    with pytest.raises(DownloadRefused, match="declares no size"):
        loopback_fetcher(ONE_MIB_CAPS).fetch(url)


# --- connections: never reused, so no answer is read as another's --------------------------------


def test_bytes_sent_past_an_answer_are_never_read_as_the_next_download(
    scripted: Callable[[Sequence[tuple[bytes, float]]], ScriptedServer],
) -> None:
    """Given a server (buggy, or another's same-origin host) that sends a second, whole answer in
    the same write as its first, past the first's Content-Length, and keeps the connection open
    When a task's file is downloaded from it, then another file of the same origin
    Then the second download asks the server itself and gets its answer: a connection kept for
    reuse handed the second download those stray bytes, a valid PNG stored as another file."""
    first, stray = png_bytes(1, width=16, height=16), png_bytes(2, width=16, height=16)
    keep_alive = "200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: keep-alive"
    server = scripted(
        [
            (
                answer_kept(keep_alive.format(len(first)), first)
                + answer_kept(keep_alive.format(len(stray)), stray),
                3.0,
            )
        ]
    )
    fetcher = loopback_fetcher(ONE_MIB_CAPS)

    fetcher.fetch(server.url("/task-1/0.png")).close()
    second = fetcher.fetch(server.url("/task-2/0.png"))
    second.close()

    assert second.sha256 == hashlib.sha256(first).hexdigest()
    assert len(server.requests) == 2


def answer_kept(headers: str, body: bytes) -> bytes:
    """An answer that leaves the connection open (``answer``'s closes it)."""
    return f"HTTP/1.1 {headers}\r\n\r\n".encode() + body
