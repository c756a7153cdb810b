"""Download one result file: streamed, capped, timed out, sniffed, hashed.

Files spool in memory up to a threshold and then to a temporary file, so a 500 MB video costs
disk, not memory. Nothing a server sends is held whole before a cap judges it: redirects are
followed here without reading their bodies, and bodies are read raw and decoded (one layer at
most) in bounded steps."""

from __future__ import annotations

import hashlib
import http.cookiejar
import itertools
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import IO, Any

import httpcore
import httpx

from shared.errors import (
    DownloadFailed,
    DownloadRefused,
    FreshLinkPending,
    MjhookError,
    ProviderRefused,
    ResultLinkGone,
    TransientError,
)
from shared.http_backend import limited_waits
from shared.provider import OWN_REFUSAL_CODES
from workers.dimensions import (
    DEFAULT_HEAD_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    check_dimensions,
    gif_canvas,
    jpeg_frame_size,
    png_single_header,
    read_dimensions,
)
from workers.sniff import (
    GIF,
    JPEG,
    MP4,
    PNG,
    WEBP,
    MediaType,
    bytes_to_sniff,
    could_start_media,
    ends_whole,
    sniff_media,
)

#: HTTP statuses below 500 worth another try later. Every 5xx is too (a CDN's 520-524 as much as
#: a 503); every other non-2xx status is final.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: HTTP statuses of an expired or revoked link: the provider may give a fresh one for the file.
LINK_GONE_STATUSES = frozenset({403, 404, 410})
#: Headers of every request: images and videos are compressed already, so we ask for no encoding;
#: and each connection serves one download: bytes a server sent past an answer's end, kept in a
#: connection left for reuse, were read as the next download's answer (a task's files are
#: downloaded at once, on connections of their own, so little is lost).
REQUEST_HEADERS = {"Accept-Encoding": "identity", "Connection": "close"}
#: Content codings decoded anyway (one layer at most).
DECODED_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})
#: Most bytes one decoding step may produce, so the caps judge a bomb's output before more exists.
DECODE_STEP_BYTES = 64 * 1024
#: Types whose end is checked whatever told the body's end (a Content-Length, chunks, or the
#: connection closing): a Content-Length or chunks that stop short make a cut file look whole as
#: much as a connection closed early does. Not JPEG, judged by its last bytes: valid JPEGs often
#: carry bytes after their end of image (FFD9); its end is checked only when the connection
#: closing ended the body. A GIF is judged by walking its blocks (bytes after its trailer, or no
#: trailer, are no cut).
ENDS_CHECKED_FRAMED = frozenset({PNG, GIF, WEBP, MP4})


@dataclass(frozen=True, slots=True)
class FetchLimits:
    max_image_bytes: int
    max_video_bytes: int
    #: Downloads up to this size stay in memory.
    spool_memory_bytes: int = 8 * 1024 * 1024
    #: Most pixels (width x height), and longest side, an image may declare in its header.
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_image_side: int = DEFAULT_MAX_SIDE
    #: Slowest average rate, bytes/s, a download may keep up once it has run ``min_rate_after_s``
    #: seconds; 0: none. The read timeout bounds the wait for one chunk, not a trickle of them.
    #: Judged on the raw body bytes received since before the first connect (:class:`DownloadPace`).
    min_rate: int = 0
    min_rate_after_s: float = 60.0
    #: Longest a download may run in all, seconds, from before its first connect; 0: no bound.
    #: The workers set the task's time limit: dramatiq's cannot interrupt a download under way.
    max_seconds: float = 0.0


class ByteBudget:
    """The bytes one task may still download, shared by its concurrent downloads."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._left = total
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        """Account for ``count`` more bytes; refuse the file once the task's total is spent."""
        with self._lock:
            if count > self._left:
                raise DownloadRefused(f"the task's files are over its {self.total}-byte total cap")
            self._left -= count

    @contextmanager
    def drawing(self) -> Iterator[Callable[[int], None]]:
        """For one download: a ``take`` whose bytes go back to the budget when the download raises
        (refused, or failed for now). The cap is on the files a task keeps: a sibling cut short
        or refused after its first megabytes must not get the task's other files refused."""
        drawn = 0

        def take(count: int) -> None:
            nonlocal drawn
            self.take(count)
            drawn += count

        try:
            yield take
        except BaseException:
            with self._lock:
                self._left += drawn
            raise


@dataclass(slots=True)
class FetchedFile:
    """A downloaded file, ready to upload from ``body`` (positioned at 0). Close it when done."""

    source_url: str
    media: MediaType
    size: int
    sha256: str
    body: IO[bytes]

    def close(self) -> None:
        self.body.close()


class DownloadPace:
    """The minimum average rate of one download (``FetchLimits.min_rate`` after ``min_rate_after_s``),
    on the clock from before its first connect: name lookups, redirect hops, response headers and
    a body that decodes to nothing yet all take time without adding bytes. The raw body bytes
    received count.

    It is also the :class:`shared.http_backend.WaitLimit` of the download: the guarded transport
    waits on a socket only until the average would fall below the minimum, so a server trickling
    its headers (or anything else between two chunks) is given up as soon as one trickling its
    body."""

    def __init__(
        self, limits: FetchLimits, monotonic: Callable[[], float], *, max_seconds: float | None = None
    ) -> None:
        """``max_seconds``: this download's bound in all, seconds, when shorter than the limits'."""
        self._min_rate = limits.min_rate
        self._after_s = limits.min_rate_after_s
        self._max_s = _shorter(limits.max_seconds, max_seconds)
        self._monotonic = monotonic
        self._started = monotonic()
        self._received = 0

    def counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` (raw body bytes), each counted and the average checked when it arrives."""
        for chunk in chunks:
            self._received += len(chunk)
            self.check()
            yield chunk

    def check(self) -> None:
        """Give up (:class:`DownloadFailed`, transient: the server may be slow for now) once the
        download has run long enough to judge and averaged less than the minimum, or has run
        longer than ``max_seconds`` in all (however fast: a server keeping just above the
        minimum could otherwise hold a worker thread for days)."""
        elapsed = self._monotonic() - self._started
        if self._max_s and elapsed > self._max_s:
            raise DownloadFailed(
                f"too long: {self._received} bytes in {elapsed:.0f} s, over the {self._max_s:.0f} s"
                " a download may take"
            )
        if self._min_rate and elapsed > self._rate_due_s():
            raise DownloadFailed(
                f"too slow: {self._received} bytes in {elapsed:.0f} s,"
                f" under {self._min_rate} bytes/s on average"
            )

    def wait(self, timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
        """``timeout`` cut to the time left before the average falls below the minimum or the
        download's time is up; ``late`` once there is none."""
        deadlines = [s for s in (self._max_s, self._min_rate and self._rate_due_s()) if s]
        if not deadlines:
            return timeout
        left = min(deadlines) - (self._monotonic() - self._started)
        if left <= 0:
            raise late(f"under {self._min_rate} bytes/s on average, or over {self._max_s:.0f} s")
        return left if timeout is None else min(timeout, left)

    def _rate_due_s(self) -> float:
        """Seconds after the start by which the bytes received so far are too few: the average
        is judged after ``min_rate_after_s``, and is under the minimum after received/min_rate."""
        return max(self._after_s, self._received / self._min_rate)


class ResultFetcher:
    """Fetches result files with one pooled ``httpx.Client`` shared by all threads of a worker
    process. Timeouts are the client's settings; redirects are followed here, each hop a request
    of its own through the client's (guarded) transport, at most ``client.max_redirects``. The
    minimum rate bounds every socket wait through a transport of :mod:`workers.guard`; through
    another it is judged as each body chunk arrives."""

    def __init__(
        self,
        client: httpx.Client,
        limits: FetchLimits,
        *,
        refresh_url: Callable[[str], str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``refresh_url`` gives a fresh link for a result URL (the provider's ``download-url``);
        without it an expired link is final."""
        self._client = client
        self._limits = limits
        self._refresh_url = refresh_url
        self._monotonic = monotonic

    def fetch(
        self, url: str, *, budget: ByteBudget | None = None, max_seconds: float | None = None
    ) -> FetchedFile:
        """Download ``url``, counting its bytes against ``budget`` (the task's total cap) when
        given, within ``max_seconds`` in all when shorter than the limits' (a fresh link's
        download included). Raises :class:`DownloadFailed` (try again later) or
        :class:`DownloadRefused` (never store it) with a reason. When ``url`` answers 403, 404 or
        410 and there is a ``refresh_url``, the fresh link is tried once."""
        budget = budget or ByteBudget(1 << 62)
        deadline = None if max_seconds is None else self._monotonic() + max_seconds
        try:
            return self._fetch_once(url, budget, deadline)
        except ResultLinkGone as exc:
            if self._refresh_url is None:
                raise
            gone = str(exc)
        return self._fetch_refreshed(url, self._refresh_url, gone, budget, deadline)

    def _fetch_refreshed(
        self,
        url: str,
        refresh_url: Callable[[str], str],
        gone: str,
        budget: ByteBudget,
        deadline: float | None,
    ) -> FetchedFile:
        try:
            fresh = refresh_url(url)
        except MjhookError as exc:
            # A provider that cannot answer now, or that refuses our key, credits or provider URL
            # (which the operator mends), renews the link later (the polling fallback waits for it
            # on the last attempt); any other refusal is final for the file.
            own_refusal = isinstance(exc, ProviderRefused) and exc.code in OWN_REFUSAL_CODES
            if not (isinstance(exc, TransientError) or own_refusal):
                raise DownloadRefused(f"{gone}; no fresh link: {exc}") from exc
            failed = FreshLinkPending(f"{gone}; no fresh link for now: {exc}")
            # The provider's Retry-After, for the queue's retry
            failed.retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            raise failed from exc
        try:
            fetched = self._fetch_once(fresh, budget, deadline)
        except DownloadRefused as exc:
            raise DownloadRefused(f"{gone}; its fresh link: {exc}") from exc
        except DownloadFailed as exc:
            raise DownloadFailed(f"{gone}; its fresh link: {exc}") from exc
        fetched.source_url = url
        return fetched

    def _fetch_once(self, url: str, budget: ByteBudget, deadline: float | None) -> FetchedFile:
        """One download of ``url``, ended by ``deadline`` (monotonic seconds) when given."""
        body = tempfile.SpooledTemporaryFile(max_size=self._limits.spool_memory_bytes)  # noqa: SIM115
        try:
            with budget.drawing() as take:
                media, size, digest = self._stream_into(url, body, take, deadline)
                if media.kind == "image":
                    self._check_dimensions(media, body)
        except BaseException:
            body.close()
            raise
        body.seek(0)
        return FetchedFile(source_url=url, media=media, size=size, sha256=digest, body=body)

    def _stream_into(
        self, url: str, sink: IO[bytes], take: Callable[[int], None], deadline: float | None
    ) -> tuple[MediaType, int, str]:
        left = None if deadline is None else deadline - self._monotonic()
        if left is not None and left <= 0:
            raise DownloadFailed("no time left for it: the attempt's downloads are over their time")
        pace = DownloadPace(self._limits, self._monotonic, max_seconds=left)
        try:
            with limited_waits(pace), closing(self._follow_redirects(url)) as response:
                _check_status(response)
                _check_declared_size(response, self._largest_cap())
                close_delimited = _close_delimited(response)
                media, size, digest = self._copy(response, pace, sink, take, close_delimited)
                if close_delimited or media in ENDS_CHECKED_FRAMED:
                    _check_ends_whole(media, sink, size, close_delimited)
                return media, size, digest
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise DownloadRefused(f"unusable URL: {exc}") from None
        except UnicodeError as exc:  # a redirect to a host whose IDNA label does not decode
            raise DownloadRefused(f"unusable URL: {exc}") from None
        except httpx.TimeoutException as exc:
            pace.check()  # a wait cut short by the minimum rate says so
            raise DownloadFailed(f"timed out: {type(exc).__name__}") from exc
        except httpx.RemoteProtocolError as exc:
            if _unreadable_transfer_coding(exc):
                raise DownloadRefused(f"unreadable answer: {exc}") from None
            raise DownloadFailed(f"transfer failed: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise DownloadFailed(f"transfer failed: {type(exc).__name__}") from exc

    def _follow_redirects(self, url: str) -> httpx.Response:
        """The first answer to ``url`` that is not a redirect, body unread. httpx's own redirect
        handling reads the body of every redirect whole into memory, decoded and uncapped; here
        each redirect is closed unread (its connection is dropped rather than reused) and the
        next hop is sent as a request of its own, so the guarded transport checks its URL and
        the address it connects to."""
        target = httpx.URL(url)
        hops = self._client.max_redirects
        for _ in range(hops + 1):
            request = self._client.build_request("GET", target, headers=REQUEST_HEADERS)
            response = self._client.send(request, stream=True, follow_redirects=False)
            if not response.has_redirect_location:
                return response
            response.close()
            target = _redirect_target(target, response.headers["Location"])
        raise DownloadRefused(f"too many redirects (more than {hops})")

    def _copy(
        self,
        response: httpx.Response,
        pace: DownloadPace,
        sink: IO[bytes],
        take: Callable[[int], None],
        close_delimited: bool,
    ) -> tuple[MediaType, int, str]:
        """``response``'s body, decoded, into ``sink``: its type, size and sha256. ``close_delimited``:
        the connection closing ended the body, so a body too short to sniff may be one cut short."""
        cap = self._largest_cap()
        raw = 0

        def raw_capped(chunks: Iterable[bytes]) -> Iterator[bytes]:
            """The raw body bytes, capped too: an encoded body can carry any number of bytes
            that decode to nothing (empty blocks, a long header field) before a small image."""
            nonlocal raw
            for chunk in chunks:
                raw += len(chunk)
                if raw > cap:
                    raise DownloadRefused(f"the body sent is over the {cap}-byte cap")
                yield chunk

        encoding = response.headers.get("Content-Encoding", "")
        chunks = decoded(raw_capped(pace.counted(response.iter_raw())), encoding)
        digest = hashlib.sha256()
        head = b""
        media: MediaType | None = None
        size = 0
        for chunk in chunks:
            if media is None:
                head += chunk
                if len(head) >= bytes_to_sniff(head):
                    media, cap = self._identify(head)
            size += len(chunk)
            if size > cap:
                raise DownloadRefused(f"file is over the {cap}-byte cap")
            take(len(chunk))  # the task's byte budget
            digest.update(chunk)
            sink.write(chunk)
        if media is None:
            media, cap = self._identify(head, cut_short=close_delimited and len(head) < bytes_to_sniff(head))
            if size > cap:
                raise DownloadRefused(f"file is over the {cap}-byte cap")
        return media, size, digest.hexdigest()

    def _largest_cap(self) -> int:
        return max(self._limits.max_image_bytes, self._limits.max_video_bytes)

    def _check_dimensions(self, media: MediaType, body: IO[bytes]) -> None:
        """Refuse an image declaring too many pixels, or not declaring its size where a decoder
        looks for it (no decoder could open it either): within its first ``DEFAULT_HEAD_BYTES``,
        or for a JPEG before its image data, however much metadata comes first; a GIF also by
        the canvas its frames extend to."""
        body.seek(0)
        if media == JPEG:
            size = jpeg_frame_size(body)
            if size is None or 0 in size:  # a height of 0: "defined later", which no decoder reads
                raise DownloadRefused("jpg image that declares no size before its image data")
        else:
            head = body.read(DEFAULT_HEAD_BYTES)
            size = read_dimensions(head, media)
            if size is None:
                raise DownloadRefused(
                    f"{media.ext} image that declares no size in its first {len(head)} bytes"
                )
        if media == PNG:
            png_single_header(body)  # a second header would be the one decoders use
        if media == GIF:
            body.seek(0)
            size = gif_canvas(body) or size  # the screen grown to every frame: it holds the screen
        limits = self._limits
        check_dimensions(*size, max_pixels=limits.max_image_pixels, max_side=limits.max_image_side)

    def _identify(self, head: bytes, *, cut_short: bool = False) -> tuple[MediaType, int]:
        """The type of a file starting with ``head``, and its size cap. ``cut_short``: ``head`` is
        all of a body the connection closing ended before the bytes sniffing needs; unless they
        could not start a file of any type, it is taken as cut (transient), not as no image."""
        media = sniff_media(head)
        if media is None:
            if cut_short and could_start_media(head):
                raise DownloadFailed(
                    f"the body ended early: {len(head)} bytes (starts with {head[:16]!r}),"
                    " too few to tell the file's type"
                )
            raise DownloadRefused(f"not an image or video (starts with {head[:16]!r})")
        cap = self._limits.max_video_bytes if media.kind == "video" else self._limits.max_image_bytes
        return media, cap


#: Answers that carry the whole file: 200, and 203 (a proxy's copy of it).
WHOLE_FILE_STATUSES = frozenset({200, 203})


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if status in WHOLE_FILE_STATUSES:
        return
    if 200 <= status < 300:  # 206 to a request for the whole file, 204: no file to store as it is
        raise DownloadFailed(f"HTTP {status}: not the whole file")
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise DownloadFailed(f"HTTP {status}")
    if status in LINK_GONE_STATUSES:
        raise ResultLinkGone(f"HTTP {status}")
    raise DownloadRefused(f"HTTP {status}")


def _close_delimited(response: httpx.Response) -> bool:
    """Whether the body's end is only the connection closing (no Content-Length, not chunked)."""
    chunked = "chunked" in response.headers.get("transfer-encoding", "").lower()
    return "content-length" not in response.headers and not chunked


def _check_ends_whole(media: MediaType, body: IO[bytes], size: int, close_delimited: bool) -> None:
    """Fail (transient) a file that does not end as a whole one of its type (:func:`ends_whole`).
    Ended by the connection closing, it was cut short. Ended by a Content-Length or chunks, the
    server said it was all: a file being written as it was served, a cache's cut copy or a proxy
    that cut it may be whole the next time (and the provider may give a fresh link), so it is
    retried too, and recorded failed once the tries are used up; never stored cut."""
    if ends_whole(media, body, size):
        return
    if close_delimited:
        # Without a length or chunks, a connection closed early looks like the end.
        raise DownloadFailed(f"the body ended early: a {media.ext} file cut short")
    raise DownloadFailed(
        f"the body ended early: a {media.ext} file cut short at {size} bytes, all its"
        " Content-Length or chunks said there was"
    )


def _unreadable_transfer_coding(exc: httpx.RemoteProtocolError) -> bool:
    """Whether ``exc`` is the client refusing the answer's Transfer-Encoding, which h11 reads only
    as a lone "chunked" ("gzip, chunked", "identity" or the header twice are refused, saying so):
    the same answer on every try, so final; not the connection failing under way (a peer closing
    early: transient)."""
    return "transfer-encoding" in str(exc).lower()


def _check_declared_size(response: httpx.Response, cap: int) -> None:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise DownloadRefused(f"file of {declared} bytes is over the {cap}-byte cap")


def _redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    """Where a redirect from ``url`` leads: its ``Location``, absolute or relative. One that does
    not parse is refused: it would not parse the next time either."""
    try:
        return url.join(location)
    except httpx.InvalidURL as exc:
        raise DownloadRefused(f"unusable URL in a redirect: {exc}") from None


def refuse_unusable_redirect(response: httpx.Response) -> None:
    """A response hook of the client: refuse a redirect whose ``Location`` does not parse. httpx
    parses it as the answer arrives, followed or not, and reports a failure as a protocol error,
    which would be retried as transient."""
    if response.has_redirect_location:
        _redirect_target(response.request.url, response.headers["Location"])


def decoded(chunks: Iterable[bytes], content_encoding: str) -> Iterator[bytes]:
    """The body ``chunks`` sent with ``content_encoding``, decoded.

    We ask for identity, yet some servers encode all the same (an object stored gzipped is
    served so whatever the request accepts), so one gzip or deflate layer is decoded rather than
    refusing such files; it is decoded here, in steps of at most ``DECODE_STEP_BYTES``, so the
    caps judge a bomb's output before more of it exists (httpx decodes each network read whole,
    through every layer, in one call). Stacked layers are refused: nothing honest sends them to a
    client asking for identity, and each one multiplies what a byte can expand to. A label we do
    not decode (``none`` or ``binary`` in a misconfigured object's metadata, or ``br``) leaves the
    bytes as sent, judged like any others by the caps and the type check. Bytes that do not decode
    are refused (the same bytes come every time); an encoded body that stops before its end is
    transient (:func:`_inflated`)."""
    codings = [c for c in (part.strip().lower() for part in content_encoding.split(",")) if c]
    layers = [c for c in codings if c in DECODED_ENCODINGS]
    if not layers:
        return iter(chunks)
    if len(layers) > 1:
        raise DownloadRefused(
            f"content encoding {content_encoding[:64]!r} refused: identity was asked for,"
            " and at most one gzip or deflate layer is decoded"
        )
    return _inflated(chunks, deflate=layers[0] == "deflate")


def _inflated(chunks: Iterable[bytes], *, deflate: bool) -> Iterator[bytes]:
    """gzip, or "deflate": zlib-wrapped as the standard says, or the bare deflate stream many
    servers send under that name (told apart by the zlib header, as httpx did)."""
    chunks = iter(chunks)
    head = b""
    wbits = 16 + zlib.MAX_WBITS
    if deflate:
        for chunk in chunks:
            head += chunk
            if len(head) >= 2:
                break
        wrapped = len(head) >= 2 and head[0] & 0x0F == 8 and int.from_bytes(head[:2], "big") % 31 == 0
        wbits = zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        for chunk in itertools.chain([head] if head else [], chunks):
            yield from _inflate(inflater, chunk)
    except zlib.error as exc:
        # The same bytes every time (an object stored raw under a gzip label): final.
        raise DownloadRefused(f"undecodable encoded body ({exc}): not the encoding it is labelled") from None
    if not inflater.eof:
        raise DownloadFailed("transfer failed: the encoded body ends early")


def _inflate(inflater: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """What ``data`` decodes to, at most ``DECODE_STEP_BYTES`` a piece."""
    while not inflater.eof:
        piece = inflater.decompress(data, DECODE_STEP_BYTES)
        data = inflater.unconsumed_tail
        if piece:
            yield piece
        if not data and len(piece) < DECODE_STEP_BYTES:
            break  # all of data taken in, and no output pending
    if inflater.eof and (data or inflater.unused_data):
        raise DownloadRefused("data after the end of the encoded body")


def create_http_client(
    *,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_redirects: int,
    max_connections: int,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """The pooled client a worker process shares between its threads. ``trust_env`` is off: no
    proxy or .netrc from the environment decides where result downloads go. The client follows
    no redirect itself: :class:`ResultFetcher` follows up to ``max_redirects`` (kept on the
    client), without reading their bodies; a redirect to a URL that does not parse is refused
    (:func:`refuse_unusable_redirect`)."""
    return httpx.Client(
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
        max_redirects=max_redirects,
        event_hooks={"response": [refuse_unusable_redirect]},
        headers={"User-Agent": "mjhook/0.1 (+result fetcher)"},
        # No cookie jar: one client serves every download of the process, and hosts the
        # callbacks name would fill a jar without end and have their cookies sent back later.
        cookies=NoCookies(),
        trust_env=False,
        transport=transport,
    )


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return

    def extract_cookies(self, response: Any, request: Any) -> None:
        return


def _shorter(limit_s: float, other_s: float | None) -> float:
    """The shorter of a limit (0: none) and another bound (None: none), seconds; 0 for none."""
    if other_s is None:
        return limit_s
    return min(limit_s, other_s) if limit_s else other_s
