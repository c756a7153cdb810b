"""Download one result file: streamed, capped, timed out, sniffed, hashed.

Files spool in memory up to a threshold and then to a temporary file, so a 500 MB video costs
disk, not memory."""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import httpx

from shared.errors import DownloadFailed, DownloadRefused, MjhookError, ResultLinkGone, TransientError
from workers.dimensions import (
    DEFAULT_HEAD_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    check_dimensions,
    read_dimensions,
)
from workers.sniff import SNIFF_BYTES, MediaType, sniff_media

#: HTTP statuses below 500 worth another try later. Every 5xx is too (a CDN's 520-524 as much as
#: a 503); every other non-2xx status is final.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: HTTP statuses of an expired or revoked link: the provider may give a fresh one for the file.
LINK_GONE_STATUSES = frozenset({403, 404, 410})


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
    min_rate: int = 0
    min_rate_after_s: float = 60.0


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


class ResultFetcher:
    """Fetches result files with one pooled ``httpx.Client`` shared by all threads of a worker
    process. Redirects, their limit and timeouts are the client's settings."""

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

    def fetch(self, url: str, *, budget: ByteBudget | None = None) -> FetchedFile:
        """Download ``url``, counting its bytes against ``budget`` (the task's total cap) when
        given. Raises :class:`DownloadFailed` (try again later) or :class:`DownloadRefused` (never
        store it) with a reason. When ``url`` answers 403, 404 or 410 and there is a
        ``refresh_url``, the fresh link is tried once."""
        budget = budget or ByteBudget(1 << 62)
        try:
            return self._fetch_once(url, budget)
        except ResultLinkGone as exc:
            if self._refresh_url is None:
                raise
            gone = str(exc)
        return self._fetch_refreshed(url, self._refresh_url, gone, budget)

    def _fetch_refreshed(
        self, url: str, refresh_url: Callable[[str], str], gone: str, budget: ByteBudget
    ) -> FetchedFile:
        try:
            fresh = refresh_url(url)
        except TransientError as exc:
            raise DownloadFailed(f"{gone}; no fresh link for now: {exc}") from exc
        except MjhookError as exc:
            raise DownloadRefused(f"{gone}; no fresh link: {exc}") from exc
        try:
            fetched = self._fetch_once(fresh, budget)
        except DownloadRefused as exc:
            raise DownloadRefused(f"{gone}; its fresh link: {exc}") from exc
        except DownloadFailed as exc:
            raise DownloadFailed(f"{gone}; its fresh link: {exc}") from exc
        fetched.source_url = url
        return fetched

    def _fetch_once(self, url: str, budget: ByteBudget) -> FetchedFile:
        body = tempfile.SpooledTemporaryFile(max_size=self._limits.spool_memory_bytes)  # noqa: SIM115
        try:
            media, size, digest = self._stream_into(url, body, budget)
            if media.kind == "image":
                body.seek(0)
                self._check_dimensions(media, body.read(DEFAULT_HEAD_BYTES))
        except BaseException:
            body.close()
            raise
        body.seek(0)
        return FetchedFile(source_url=url, media=media, size=size, sha256=digest, body=body)

    def _stream_into(self, url: str, sink: IO[bytes], budget: ByteBudget) -> tuple[MediaType, int, str]:
        cap = max(self._limits.max_image_bytes, self._limits.max_video_bytes)
        try:
            with self._client.stream("GET", url) as response:
                _check_status(response)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    raise DownloadRefused(f"file of {declared} bytes is over the {cap}-byte cap")
                return self._copy(response, sink, budget)
        except httpx.TooManyRedirects:
            raise DownloadRefused("too many redirects") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise DownloadRefused(f"unusable URL: {exc}") from None
        except UnicodeError as exc:  # a redirect to a host whose IDNA label does not decode
            raise DownloadRefused(f"unusable URL: {exc}") from None
        except httpx.TimeoutException as exc:
            raise DownloadFailed(f"timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise DownloadFailed(f"transfer failed: {type(exc).__name__}") from exc

    def _copy(
        self, response: httpx.Response, sink: IO[bytes], budget: ByteBudget
    ) -> tuple[MediaType, int, str]:
        digest = hashlib.sha256()
        head = b""
        media: MediaType | None = None
        cap = max(self._limits.max_image_bytes, self._limits.max_video_bytes)
        size = 0
        started = self._monotonic()
        for chunk in response.iter_bytes():
            self._check_rate(size + len(chunk), self._monotonic() - started)
            if media is None:
                head += chunk
                if len(head) >= SNIFF_BYTES:
                    media, cap = self._identify(head)
            size += len(chunk)
            if size > cap:
                raise DownloadRefused(f"file is over the {cap}-byte cap")
            budget.take(len(chunk))
            digest.update(chunk)
            sink.write(chunk)
        if media is None:
            media, cap = self._identify(head)
            if size > cap:
                raise DownloadRefused(f"file is over the {cap}-byte cap")
        return media, size, digest.hexdigest()

    def _check_rate(self, size: int, elapsed_s: float) -> None:
        """Give up on a download that has averaged less than the minimum rate since it started,
        once it has run long enough to judge: a server trickling bytes would otherwise hold a
        worker thread until the task's time limit. Transient: the server may be slow for now."""
        limits = self._limits
        if limits.min_rate and elapsed_s > limits.min_rate_after_s and size < limits.min_rate * elapsed_s:
            raise DownloadFailed(
                f"too slow: {size} bytes in {elapsed_s:.0f} s, under {limits.min_rate} bytes/s on average"
            )

    def _check_dimensions(self, media: MediaType, head: bytes) -> None:
        """Refuse an image declaring too many pixels, or not declaring its size within ``head``
        (no decoder could open it either, or a JPEG's metadata pushes its frame header beyond)."""
        size = read_dimensions(head, media)
        if size is None:
            raise DownloadRefused(f"{media.ext} image that declares no size in its first {len(head)} bytes")
        limits = self._limits
        check_dimensions(*size, max_pixels=limits.max_image_pixels, max_side=limits.max_image_side)

    def _identify(self, head: bytes) -> tuple[MediaType, int]:
        media = sniff_media(head)
        if media is None:
            raise DownloadRefused(f"not an image or video (starts with {head[:16]!r})")
        cap = self._limits.max_video_bytes if media.kind == "video" else self._limits.max_image_bytes
        return media, cap


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise DownloadFailed(f"HTTP {status}")
    if status in LINK_GONE_STATUSES:
        raise ResultLinkGone(f"HTTP {status}")
    raise DownloadRefused(f"HTTP {status}")


def create_http_client(
    *,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_redirects: int,
    max_connections: int,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """The pooled client a worker process shares between its threads. ``trust_env`` is off: no
    proxy or .netrc from the environment decides where result downloads go."""
    return httpx.Client(
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=max_redirects > 0,
        max_redirects=max_redirects,
        headers={"User-Agent": "mjhook/0.1 (+result fetcher)"},
        trust_env=False,
        transport=transport,
    )
