"""What bounds one download from a hostile server: its total time, the bytes it sends (encoded
or not), the canvas a GIF's frames extend to, the brands an MP4's ftyp box lists, the cookies it
sets. Against an in-memory internet (tests/support/fake_internet.py): no socket opens."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Callable, Iterator

import pytest
from PIL import Image, PngImagePlugin

from shared.errors import DownloadFailed, DownloadRefused
from shared.settings import Settings
from tests.support.clock import FakeClock
from tests.support.fake_internet import FakeInternet, head
from tests.support.servers import png_bytes
from workers.fetch import ByteBudget, FetchLimits
from workers.runtime import fetch_limits

MIB = 1024 * 1024
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
LIMITS = FetchLimits(max_image_bytes=1_000_000, max_video_bytes=1_000_000)


def test_a_download_above_the_minimum_rate_is_given_up_after_the_task_time_limit() -> None:
    """Given a server sending a video at 8 KiB/s (twice the default minimum) on the fetcher's clock
    When it is fetched under the workers' limits (the defaults)
    Then it is given up once it has run the task's time limit (1800 s): it ran on for 3072 s and
    was stored, and dramatiq's time limit cannot interrupt a download (one forged callback could
    hold every download thread of a worker for days)."""
    settings = Settings()
    clock = FakeClock()
    internet = FakeInternet(clock=clock, seconds_per_byte=1 / 8192)
    total = 24 * MIB

    def slow_video() -> Iterator[bytes]:
        yield head(200, [("Content-Length", str(total)), ("Connection", "close")])
        yield MP4_HEAD
        left = total - len(MP4_HEAD)
        while left:
            piece = min(64 * 1024, left)
            yield bytes(piece)
            left -= piece

    internet.routes["/v.mp4"] = slow_video
    started = clock.now

    with pytest.raises(DownloadFailed, match="too long"):
        internet.fetcher(fetch_limits(settings)).fetch("http://cdn.example/v.mp4")

    assert clock.now - started <= settings.task_time_limit_s + 10


def test_the_raw_bytes_of_an_encoded_body_count_against_the_cap() -> None:
    """A gzip body padded with 1 MB of empty blocks (decoding to nothing) before a small image,
    with no Content-Length, is refused at a 100 kB cap: only decoded bytes were counted."""
    image = png_bytes(1, 16, 16)
    padding = b"\x00\x00\x00\xff\xff" * 200_000  # non-final stored blocks of length 0
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    encoded = (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        + padding
        + deflater.compress(image)
        + deflater.flush()
        + struct.pack("<II", zlib.crc32(image), len(image))
    )
    assert zlib.decompress(encoded, 16 + zlib.MAX_WBITS) == image
    internet = FakeInternet()

    def padded() -> Iterator[bytes]:
        yield head(200, [("Content-Encoding", "gzip"), ("Connection", "close")])
        for at in range(0, len(encoded), 16 * 1024):
            yield encoded[at : at + 16 * 1024]

    internet.routes["/a.png"] = padded
    fetcher = internet.fetcher(FetchLimits(max_image_bytes=100_000, max_video_bytes=100_000))

    with pytest.raises(DownloadRefused, match="body sent is over"):
        fetcher.fetch("http://cdn.example/a.png", budget=ByteBudget(200_000))


def test_an_image_of_exactly_its_cap_is_kept_and_one_byte_more_is_refused() -> None:
    # Given a PNG, and the video cap far above it: the largest cap, which judges the declared and
    # the raw sizes, lets it through
    image = png_bytes(4, 16, 16)
    internet = FakeInternet()
    internet.routes["/a.png"] = lambda: [head(200, [("Content-Length", str(len(image)))]), image]
    # When it is fetched with an image cap of its size, then of one byte less
    # Then it is kept whole at its cap, and refused one byte over
    kept_at_its_cap_and_refused_one_byte_over(internet, len(image))


def kept_at_its_cap_and_refused_one_byte_over(internet: FakeInternet, size: int) -> None:
    """``/a.png`` of ``internet`` fetched with an image cap of ``size`` (the video cap far above)
    is kept whole; with one byte less, it is refused."""
    at_cap = FetchLimits(max_image_bytes=size, max_video_bytes=10 * size)
    below = FetchLimits(max_image_bytes=size - 1, max_video_bytes=10 * size)
    fetched = internet.fetcher(at_cap).fetch("http://cdn.example/a.png")
    fetched.close()
    assert fetched.size == size
    with pytest.raises(DownloadRefused, match=f"file is over the {size - 1}-byte cap"):
        internet.fetcher(below).fetch("http://cdn.example/a.png")


def test_a_declared_length_one_byte_over_the_largest_cap_is_refused_before_reading() -> None:
    # Given a server declaring a Content-Length one byte over the largest cap (the video's), and
    # noting whether its body was asked for
    cap = 100_000
    body_read: list[bool] = []

    def liar() -> Iterator[bytes]:
        yield head(200, [("Content-Length", str(cap + 1))])
        body_read.append(True)
        yield png_bytes(3, 16, 16)

    internet = FakeInternet()
    internet.routes["/a.png"] = liar
    limits = FetchLimits(max_image_bytes=cap // 2, max_video_bytes=cap)
    # When it is fetched, then it is refused on the declared size, before any of the body is read
    with pytest.raises(DownloadRefused, match=f"file of {cap + 1} bytes is over the {cap}-byte cap"):
        internet.fetcher(limits).fetch("http://cdn.example/a.png")
    assert body_read == []


def compressible_png() -> bytes:
    """A small PNG carrying 20 kB of one repeated letter (a text chunk): gzip shrinks it to a
    fraction, so a cap on the raw bytes sent is not what judges it."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * 20_000)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def test_a_gzipped_image_one_byte_over_its_cap_once_decoded_is_refused() -> None:
    # Given a PNG served gzipped, its encoded body far smaller than the PNG
    image = compressible_png()
    encoded = gzip.compress(image)
    assert len(encoded) * 10 < len(image)
    internet = FakeInternet()
    internet.routes["/a.png"] = lambda: [
        head(200, [("Content-Encoding", "gzip"), ("Content-Length", str(len(encoded)))]),
        encoded,
    ]
    # When it is fetched with an image cap of its decoded size, then of one byte less
    # Then it is kept whole (decoded) at its cap, and refused one byte over
    kept_at_its_cap_and_refused_one_byte_over(internet, len(image))


def gif(screen: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """A GIF of one frame (left, top, width, height) on a logical screen of ``screen``, after a
    comment extension and with a global color table, so the walk skips both."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    comment = b"!\xfe\x05hello\x00"
    descriptor = b"," + struct.pack("<HHHHB", *frame, 0)
    return header + comment + descriptor + b"\x02\x02\x44\x01\x00" + b";"


def decodable_gif_on_a_tiny_screen() -> bytes:
    """A real 5000x5000 GIF (20 KB) whose logical screen then says 1x1: Pillow opens it 5000x5000."""
    out = io.BytesIO()
    Image.new("P", (5000, 5000), 0).save(out, format="GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", 1, 1)
    return bytes(data)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(decodable_gif_on_a_tiny_screen, id="frame-larger-than-the-screen"),
        pytest.param(lambda: gif((100, 100), (60000, 60000, 1, 1)), id="frame-far-outside-the-screen"),
    ],
)
def test_a_gif_frame_beyond_its_logical_screen_is_judged_by_the_canvas_it_makes(
    body: Callable[[], bytes],
) -> None:
    """Decoders grow a GIF's canvas to each frame's extent (Pillow does): the pixel check read
    the logical screen only, so a 1x1 screen let a 5000x5000 or 60001x60001 canvas through."""
    data = body()
    internet = FakeInternet()
    internet.routes["/a.gif"] = lambda: [head(200, [("Content-Length", str(len(data)))]), data]
    limits = FetchLimits(
        max_image_bytes=1_000_000, max_video_bytes=1_000_000, max_image_pixels=1_000_000, max_image_side=2000
    )

    with pytest.raises(DownloadRefused, match="exceeds"):
        internet.fetcher(limits).fetch("http://cdn.example/a.gif")


def test_a_gif_whose_frames_stay_on_its_screen_is_stored() -> None:
    data = gif((100, 100), (10, 10, 50, 50))
    internet = FakeInternet()
    internet.routes["/a.gif"] = lambda: [head(200, [("Content-Length", str(len(data)))]), data]
    fetched = internet.fetcher(LIMITS).fetch("http://cdn.example/a.gif")
    assert fetched.media.ext == "gif"
    fetched.close()


def test_an_image_brand_listed_past_the_first_bytes_of_an_ftyp_box_is_seen() -> None:
    """A server sending the first 64 bytes alone, with an ftyp box listing avif after 12 filler
    brands: the file was stored as video/mp4 (the video cap, no pixel check)."""
    brands = [b"isom"] * 12 + [b"avif", b"mif1", b"miaf"]
    ftyp = struct.pack(">I", 16 + 4 * len(brands)) + b"ftypisom\x00\x00\x00\x00" + b"".join(brands)
    body = ftyp + b"\x00\x00\x00\x08free" + bytes(4000)
    internet = FakeInternet()
    internet.routes["/a.mp4"] = lambda: [
        head(200, [("Content-Length", str(len(body)))]) + body[:64],
        body[64:],
    ]

    with pytest.raises(DownloadRefused, match="avif"):
        internet.fetcher(LIMITS).fetch("http://cdn.example/a.mp4")


def test_downloads_keep_no_cookies_between_them() -> None:
    """One client serves every download of a worker process: a host's cookies were kept for good
    (500 a response, never evicted) and sent back with later downloads, for other tasks."""
    image = png_bytes(1, 16, 16)
    cookies = [("Set-Cookie", f"c{i}={'x' * 40}; Max-Age=31536000") for i in range(500)]
    internet = FakeInternet()
    internet.routes["/a.png"] = lambda: [head(200, [("Content-Length", str(len(image))), *cookies]), image]
    fetcher = internet.fetcher(LIMITS)

    fetcher.fetch("http://cdn.example/a.png").close()
    fetcher.fetch("http://cdn.example/a.png").close()

    assert b"\r\ncookie:" not in internet.requests[-1].lower()
