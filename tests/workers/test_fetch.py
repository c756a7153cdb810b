"""Downloading one result file from a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from shared.errors import DownloadFailed, DownloadRefused
from tests.support.servers import FileServer, png_bytes
from workers.fetch import ByteBudget, FetchLimits, ResultFetcher, create_http_client
from workers.sniff import JPEG, PNG


@pytest.fixture
def fetcher() -> Iterator[ResultFetcher]:
    client = create_http_client(connect_timeout_s=2, read_timeout_s=1, max_redirects=2, max_connections=4)
    yield ResultFetcher(
        client, FetchLimits(max_image_bytes=500_000, max_video_bytes=1_000_000, spool_memory_bytes=1024)
    )
    client.close()


def test_a_png_is_streamed_hashed_and_sniffed(fetcher: ResultFetcher, file_server: FileServer) -> None:
    image = png_bytes(1)
    # The server claims a wrong type: the bytes decide.
    url = file_server.add("/a.png", image, content_type="application/octet-stream")
    fetched = fetcher.fetch(url)
    try:
        assert fetched.media == PNG
        assert fetched.size == len(image)
        assert fetched.sha256 == hashlib.sha256(image).hexdigest()
        assert fetched.body.read() == image
    finally:
        fetched.close()


def test_a_jpeg_whose_metadata_runs_past_64_kib_is_fetched(
    fetcher: ResultFetcher, file_server: FileServer
) -> None:
    """A valid JPEG with a 200 KB ICC profile (split over APP2 segments before its frame header)
    was refused as declaring no size in its first 64 KiB; any decoder opens it."""
    out = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 20, 30)).save(out, "JPEG", icc_profile=bytes(range(256)) * 800)
    photo = out.getvalue()
    url = file_server.add("/photo.jpg", photo, content_type="image/jpeg")
    fetched = fetcher.fetch(url)
    try:
        assert fetched.media == JPEG
        assert fetched.sha256 == hashlib.sha256(photo).hexdigest()
    finally:
        fetched.close()


def test_redirects_are_followed_up_to_the_limit(fetcher: ResultFetcher, file_server: FileServer) -> None:
    file_server.add("/final.png", png_bytes(2))
    file_server.add_redirect("/r1", "/final.png")
    file_server.add_redirect("/r2", "/r1")
    file_server.add_redirect("/r3", "/r2")
    assert fetcher.fetch(file_server.url("/r2")).size == len(png_bytes(2))
    with pytest.raises(DownloadRefused, match="too many redirects"):
        fetcher.fetch(file_server.url("/r3"))


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"<html><body>Access denied</body></html>", 200, "not an image or video"),
        (b"gone", 404, "HTTP 404"),
        (b"gone", 410, "HTTP 410"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 600_000, 200, "cap"),
    ],
)
def test_permanent_refusals(
    fetcher: ResultFetcher, file_server: FileServer, body: bytes, status: int, reason: str
) -> None:
    url = file_server.add("/f", body, status=status)
    with pytest.raises(DownloadRefused, match=reason):
        fetcher.fetch(url)


def test_a_declared_oversize_is_refused_before_reading(
    fetcher: ResultFetcher, file_server: FileServer
) -> None:
    url = file_server.add("/big", png_bytes(3), headers={"Content-Length": "5000000"})
    with pytest.raises(DownloadRefused, match="over the"):
        fetcher.fetch(url)


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 507, 520, 522, 524, 429, 408])
def test_server_errors_are_transient(fetcher: ResultFetcher, file_server: FileServer, status: int) -> None:
    url = file_server.add("/busy", b"try later", status=status, content_type="text/plain")
    with pytest.raises(DownloadFailed, match=f"HTTP {status}"):
        fetcher.fetch(url)


def test_a_stalled_download_times_out_as_transient(fetcher: ResultFetcher, file_server: FileServer) -> None:
    url = file_server.add("/slow", png_bytes(4), delay_s=2.5)
    with pytest.raises(DownloadFailed, match="timed out"):
        fetcher.fetch(url)


def test_a_truncated_body_is_transient(fetcher: ResultFetcher, file_server: FileServer) -> None:
    image = png_bytes(5)
    url = file_server.add("/cut", image[:1000], headers={"Content-Length": str(len(image))})
    with pytest.raises(DownloadFailed):
        fetcher.fetch(url)


def test_a_refused_connection_is_transient(fetcher: ResultFetcher) -> None:
    with pytest.raises(DownloadFailed):
        fetcher.fetch("http://127.0.0.1:1/x.png")


def test_a_tasks_total_byte_budget_is_shared_by_its_files(
    fetcher: ResultFetcher, file_server: FileServer
) -> None:
    image = png_bytes(6)
    url = file_server.add("/budget.png", image)
    budget = ByteBudget(len(image) * 2 - 1)
    fetcher.fetch(url, budget=budget).close()
    with pytest.raises(DownloadRefused, match="total cap"):
        fetcher.fetch(url, budget=budget)


@pytest.mark.parametrize("sibling_fate", ["refused", "failed for now"])
def test_a_sibling_not_kept_gives_its_bytes_back_to_the_tasks_budget(
    file_server: FileServer, sibling_fate: str
) -> None:
    """Given a task whose budget holds one of its files and little more, when a smaller sibling
    is downloaded whole first and then refused (its canvas too wide) or failed for now (its body
    ends before its Content-Length), then the file is still fetched: the cap is on the files a
    task keeps, and a sibling that is not kept takes none of it."""
    image = png_bytes(6)  # 256x256
    if sibling_fate == "refused":
        sibling_url = file_server.add("/sibling.png", png_bytes(7, width=310, height=100))
        expected: type[Exception] = DownloadRefused
    else:
        sibling = png_bytes(7, width=200, height=100)
        cut_short = {"Content-Length": str(len(sibling) + 1000)}
        sibling_url = file_server.add("/sibling.png", sibling, headers=cut_short)
        expected = DownloadFailed
    client = create_http_client(connect_timeout_s=2, read_timeout_s=1, max_redirects=0, max_connections=2)
    limits = FetchLimits(max_image_bytes=500_000, max_video_bytes=1_000_000, max_image_side=300)
    fetcher = ResultFetcher(client, limits)
    budget = ByteBudget(len(image) + 1000)
    try:
        with pytest.raises(expected):
            fetcher.fetch(sibling_url, budget=budget)
        fetched = fetcher.fetch(file_server.add("/image.png", image), budget=budget)
        fetched.close()
    finally:
        client.close()
    assert fetched.size == len(image)
    assert file_server.hits["/sibling.png"] == 1


def trickling_fetcher(min_rate: int) -> ResultFetcher:
    client = create_http_client(connect_timeout_s=2, read_timeout_s=2, max_redirects=0, max_connections=2)
    limits = FetchLimits(
        max_image_bytes=500_000, max_video_bytes=1_000_000, min_rate=min_rate, min_rate_after_s=0.3
    )
    return ResultFetcher(client, limits)


def test_a_trickling_download_is_given_up_as_transient(file_server: FileServer) -> None:
    # Given a server sending 64 bytes every 50 ms (~1.3 KB/s): each chunk well within the read timeout
    url = file_server.add("/slow.png", png_bytes(5, 24, 24), chunk_size=64, chunk_delay_s=0.05)
    # When the minimum average is 100 KB/s after 0.3 s
    with pytest.raises(DownloadFailed, match=r"too slow: \d+ bytes in \d+ s, under 100000 bytes/s"):
        trickling_fetcher(100_000).fetch(url)


def test_a_download_above_the_minimum_rate_is_kept(file_server: FileServer) -> None:
    image = png_bytes(5, 24, 24)
    url = file_server.add("/slow.png", image, chunk_size=64, chunk_delay_s=0.05)
    fetched = trickling_fetcher(200).fetch(url)
    try:
        assert fetched.body.read() == image
    finally:
        fetched.close()


def test_the_rate_is_judged_by_the_clock_given(file_server: FileServer) -> None:
    # A fast local download, but a clock on which every chunk comes 100 s after the start
    ticks = iter([0.0])
    client = create_http_client(connect_timeout_s=2, read_timeout_s=2, max_redirects=0, max_connections=2)
    limits = FetchLimits(max_image_bytes=500_000, max_video_bytes=1_000_000, min_rate=1_000_000)
    fetcher = ResultFetcher(client, limits, monotonic=lambda: next(ticks, 100.0))
    url = file_server.add("/fast.png", png_bytes(1))
    with pytest.raises(DownloadFailed, match="too slow"):
        fetcher.fetch(url)
