"""Declared image sizes, read from real files made with Pillow, and refused above the limits."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from shared.errors import DownloadRefused
from workers.dimensions import (
    DEFAULT_HEAD_BYTES,
    HEAD_BYTES_NEEDED,
    MAX_JPEG_FILL_BYTES,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    check_dimensions,
    gif_canvas,
    jpeg_frame_size,
    png_single_header,
    read_dimensions,
)
from workers.sniff import (
    GIF,
    JPEG,
    MAX_GIF_BLOCKS,
    MAX_GIF_SUB_BLOCKS,
    MP4,
    PNG,
    WEBM,
    WEBP,
    MediaType,
    sniff_media,
)

KIB = 1024


def encode(size: tuple[int, int], fmt: str, *, mode: str = "RGB", **options: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "orange").save(out, fmt, **options)
    return out.getvalue()


def exif_with_description(length: int) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "d" * length  # ImageDescription
    return exif.tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR chunk declaring ``width`` x ``height``, with a valid CRC, and
    no pixel data at all."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


def webp_chunk(data: bytes) -> bytes:
    return data[12:16]


# --- every format, as Pillow writes it -------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (641, 479), (2048, 3)])
@pytest.mark.parametrize(
    ("fmt", "media", "mode", "options"),
    [
        ("PNG", PNG, "RGB", {}),
        ("PNG", PNG, "RGBA", {"optimize": True}),
        ("JPEG", JPEG, "RGB", {"quality": 80}),
        ("JPEG", JPEG, "L", {"progressive": True}),
        ("GIF", GIF, "P", {}),
        ("WEBP", WEBP, "RGB", {"lossless": False}),
        ("WEBP", WEBP, "RGB", {"lossless": True}),
        ("WEBP", WEBP, "RGBA", {"lossless": False, "exif": exif_with_description(10)}),
    ],
)
def test_the_declared_size_of_every_format_is_read(
    size: tuple[int, int], fmt: str, media: MediaType, mode: str, options: dict[str, Any]
) -> None:
    data = encode(size, fmt, mode=mode, **options)
    assert sniff_media(data) == media
    assert read_dimensions(data[:DEFAULT_HEAD_BYTES], media) == size


@pytest.mark.parametrize(
    ("options", "chunk"),
    [
        ({"lossless": False}, b"VP8 "),
        ({"lossless": True}, b"VP8L"),
        ({"lossless": False, "exif": exif_with_description(10)}, b"VP8X"),
        ({"lossless": True, "icc_profile": b"\x00" * 500}, b"VP8X"),
    ],
)
def test_each_webp_flavour_is_read_from_the_documented_head(options: dict[str, Any], chunk: bytes) -> None:
    data = encode((317, 211), "WEBP", **options)
    assert webp_chunk(data) == chunk
    assert read_dimensions(data[: HEAD_BYTES_NEEDED[WEBP]], WEBP) == (317, 211)


def test_the_largest_webp_sides_are_read() -> None:
    for size in [(16383, 2), (2, 16383)]:
        assert read_dimensions(encode(size, "WEBP", lossless=True), WEBP) == size
        assert read_dimensions(encode(size, "WEBP", lossless=False), WEBP) == size


@pytest.mark.parametrize("media", [PNG, GIF, WEBP])
def test_the_documented_head_size_suffices_and_one_byte_less_does_not(media: MediaType) -> None:
    fmt = {PNG: "PNG", GIF: "GIF", WEBP: "WEBP"}[media]
    data = encode((123, 45), fmt, mode="P" if media is GIF else "RGB")
    needed = HEAD_BYTES_NEEDED[media]
    assert read_dimensions(data[:needed], media) == (123, 45)
    assert read_dimensions(data[: needed - 1], media) is None


# --- JPEG: the frame header may come late ------------------------------------------------------


def test_a_jpeg_with_a_big_exif_segment_before_the_frame_header_is_read() -> None:
    # Given ~60 KiB of EXIF (one APP1 segment, close to its 64 KiB maximum) before SOF0
    data = encode((800, 600), "JPEG", exif=exif_with_description(60_000))
    assert data.index(b"\xff\xc0") > 60_000
    assert read_dimensions(data[:DEFAULT_HEAD_BYTES], JPEG) == (800, 600)


def test_a_jpeg_whose_frame_header_lies_beyond_the_head_gives_none() -> None:
    # Given a 200 KB ICC profile, which Pillow splits over several APP2 segments before SOF0
    data = encode((800, 600), "JPEG", icc_profile=bytes(range(256)) * 800)
    assert data.index(b"\xff\xc0") > DEFAULT_HEAD_BYTES
    # When only the head is given, then the size is unknown (the caller decides)
    assert read_dimensions(data[:DEFAULT_HEAD_BYTES], JPEG) is None
    # and with enough bytes it is found
    assert read_dimensions(data, JPEG) == (800, 600)


def test_a_jpeg_file_is_walked_to_its_frame_header_skipping_metadata_unread() -> None:
    # Given a 200 KB ICC profile before SOF0, in a file object that counts what is read of it
    data = encode((800, 600), "JPEG", icc_profile=bytes(range(256)) * 800)
    body = CountingReader(data)
    # When its frame header is looked for, then it is found, the segments' data skipped unread
    assert jpeg_frame_size(body) == (800, 600)
    assert body.bytes_read < 2_000


def test_a_jpeg_of_more_tiny_segments_than_a_real_file_has_gives_none() -> None:
    # Given MAX_JPEG_SEGMENTS empty comment segments (4 bytes each) before a valid frame header
    data = encode((40, 30), "JPEG")
    padded = data[:2] + b"\xff\xfe\x00\x02" * MAX_JPEG_SEGMENTS + data[2:]
    # Then the walk gives up rather than go on through the whole file
    assert jpeg_frame_size(io.BytesIO(padded)) is None
    assert jpeg_frame_size(io.BytesIO(data[:2] + b"\xff\xfe\x00\x02" * 10 + data[2:])) == (40, 30)


def test_a_run_of_fill_bytes_longer_than_padding_gives_none_without_reading_it_all() -> None:
    # Given SOI and then 2 MB of fill bytes (0xFF): a "JPEG" anyone can serve as a result URL
    body = CountingReader(b"\xff\xd8" + b"\xff" * 2_000_000)
    # Then no frame header is found, and the walk stops at the padding's bound, not the file's end
    assert jpeg_frame_size(body) is None
    assert body.bytes_read <= 2 + MAX_JPEG_FILL_BYTES + 2
    # while a few fill bytes before a marker are skipped
    data = encode((40, 30), "JPEG")
    assert jpeg_frame_size(io.BytesIO(data[:2] + b"\xff" * MAX_JPEG_FILL_BYTES + data[2:])) == (40, 30)


class CountingReader(io.BytesIO):
    """A file object that counts the bytes read from it (a seek reads nothing)."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_jpeg_fill_bytes_and_standalone_markers_are_skipped() -> None:
    data = encode((40, 30), "JPEG")
    # Given fill bytes and a restart marker (no length field) between SOI and the next segment
    patched = data[:2] + b"\xff\xff\xff\xd0" + data[2:]
    assert read_dimensions(patched, JPEG) == (40, 30)


@pytest.mark.parametrize(
    "head",
    [
        b"\xff\xd8\xff\xda\x00\x08",  # scan before any frame header
        b"\xff\xd8\xff\xd9",  # end of image
        b"\xff\xd8\xff\xe0\x00\x01",  # segment length below 2
        b"\xff\xd8\x00\x00",  # not a marker where one must be
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # cut off inside APP0
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00",  # cut off inside SOF0
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x01\x00",  # height 0: defined later (DNL)
        b"\xff\xd8",
        b"",
    ],
)
def test_malformed_or_cut_off_jpeg_gives_none(head: bytes) -> None:
    assert read_dimensions(head, JPEG) is None


# --- other refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "media"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x04CgBI" + b"\x00" * 12, PNG),  # IHDR not first
        (b"GIF89a\x00\x00\x00\x00", GIF),  # no logical screen size
        (b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x01\x00\x00\x9d\x01\x2a" + b"\x10" * 4, WEBP),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + b"\x10" * 4, WEBP),
        (b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x00" + b"\xff" * 4, WEBP),  # no 0x2f
        (b"RIFF\x00\x00\x00\x00WEBPANIM" + b"\x00" * 18, WEBP),
        (b"\x00\x00\x00\x20ftypisom" + b"\x00" * 40, MP4),
        (b"\x1a\x45\xdf\xa3" + b"\x00" * 40, WEBM),
    ],
)
def test_headers_that_declare_no_readable_size_give_none(head: bytes, media: MediaType) -> None:
    assert read_dimensions(head, media) is None


def test_a_forged_png_declaring_100000_by_100000_is_refused_from_its_header_alone() -> None:
    # Given 33 bytes that declare ten gigapixels and hold no pixel data to decode
    forged = png_header(100_000, 100_000)
    assert sniff_media(forged) == PNG
    size = read_dimensions(forged, PNG)
    assert size == (100_000, 100_000)
    with pytest.raises(DownloadRefused, match=r"^image of 100000x100000 pixels exceeds"):
        check_dimensions(*size)


def test_the_largest_png_sides_are_read_without_overflow() -> None:
    assert read_dimensions(png_header(2**31 - 1, 1), PNG) == (2**31 - 1, 1)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((20_001, 1), "image of 20001x1 pixels exceeds the 20000-pixel side limit"),
        ((1, 20_001), "image of 1x20001 pixels exceeds the 20000-pixel side limit"),
        ((10_001, 10_000), "image of 10001x10000 pixels exceeds the 100000000-pixel limit"),
    ],
)
def test_sizes_over_the_limits_are_refused(size: tuple[int, int], message: str) -> None:
    with pytest.raises(DownloadRefused) as caught:
        check_dimensions(*size)
    assert str(caught.value) == message


@pytest.mark.parametrize("size", [(1, 1), (20_000, 5_000), (10_000, 10_000), (2048, 2048)])
def test_sizes_within_the_limits_pass(size: tuple[int, int]) -> None:
    check_dimensions(*size)


def test_the_limits_are_configurable() -> None:
    check_dimensions(30_000, 30_000, max_pixels=10**9, max_side=30_000)
    with pytest.raises(DownloadRefused):
        check_dimensions(1025, 1, max_side=1024)
    with pytest.raises(DownloadRefused):
        check_dimensions(100, 101, max_pixels=10_000)


def test_a_real_oversized_jpeg_is_refused() -> None:
    # Given a real (tiny) JPEG file declaring a side over the limit
    data = encode((20_001, 8), "JPEG", quality=10)
    size = read_dimensions(data[:DEFAULT_HEAD_BYTES], JPEG)
    assert size == (20_001, 8)
    with pytest.raises(DownloadRefused):
        check_dimensions(*size)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(width: int, height: int) -> bytes:
    return _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def test_a_png_with_a_second_header_before_its_image_data_is_refused() -> None:
    # Given a PNG whose first header says 1x1 and a second one 12000x12000 (decoders take the last)
    forged = b"\x89PNG\r\n\x1a\n" + _ihdr(1, 1) + _png_chunk(b"tEXt", b"a\x00b") + _ihdr(12000, 12000)
    # Then it is refused, while a PNG with one header passes
    with pytest.raises(DownloadRefused, match="more than one header"):
        png_single_header(io.BytesIO(forged + _png_chunk(b"IEND", b"")))
    png_single_header(io.BytesIO(encode((4, 4), "PNG")))


def test_a_png_of_more_chunks_before_its_image_data_than_a_real_one_has_is_refused() -> None:
    chunks = _png_chunk(b"tEXt", b"a\x00b") * (MAX_PNG_CHUNKS + 1)
    with pytest.raises(DownloadRefused, match=f"more than {MAX_PNG_CHUNKS} chunks"):
        png_single_header(io.BytesIO(b"\x89PNG\r\n\x1a\n" + _ihdr(1, 1) + chunks))


def _gif(*blocks: bytes) -> bytes:
    """A GIF declaring a 1x1 screen, without a color table, then ``blocks`` and the trailer."""
    return b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0) + b"".join(blocks) + b";"


def _frame(width: int, height: int) -> bytes:
    return b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"


def test_a_gif_frame_after_a_stray_byte_still_grows_the_canvas() -> None:
    # Given a frame of 12000x12000 after a byte that starts no block (decoders skip it and read on)
    assert gif_canvas(io.BytesIO(_gif(b"\x00", _frame(12000, 12000)))) == (12000, 12000)


class CountingReads(io.BytesIO):
    """A file that counts the reads made of it."""

    reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        return super().read(size)


@pytest.mark.parametrize(
    ("blocks", "message", "most_reads"),
    [
        # each empty extension: its introducer, label and end read
        (b"!\xfe\x00" * (3 * MAX_GIF_BLOCKS), f"more than {MAX_GIF_BLOCKS} blocks", 3 * MAX_GIF_BLOCKS + 3),
        # each 1-byte sub-block: its length read (the byte is skipped by a seek)
        (
            b"," + bytes(9) + b"\x02" + b"\x01X" * (3 * MAX_GIF_SUB_BLOCKS) + b"\x00",
            "data sub-blocks",
            MAX_GIF_SUB_BLOCKS + 10,
        ),
    ],
    ids=["empty extensions", "1-byte sub-blocks"],
)
def test_a_gif_of_more_blocks_than_a_real_one_has_is_refused_without_walking_it_all(
    blocks: bytes, message: str, most_reads: int
) -> None:
    # Given a GIF of three times more blocks (or sub-blocks) than the walk's bound
    body = CountingReads(_gif(blocks, _frame(2, 2)))
    # Then it is refused, the walk stopped at the bound rather than at the end of the file
    with pytest.raises(DownloadRefused, match=message):
        gif_canvas(body)
    assert body.reads <= most_reads


def sof0(width: int, height: int) -> bytes:
    """A baseline frame header segment for one component."""
    return b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"


def test_a_jpeg_with_a_second_frame_header_is_refused() -> None:
    # Given a JPEG declaring 1x1, then a second frame header of 12000x12000 before its image data
    # (decoders take the last one they meet, as Pillow does)
    data = encode((40, 30), "JPEG")
    forged = data[:2] + sof0(1, 1) + sof0(12_000, 12_000) + data[2:]
    # Then it is refused: judged by its first header, 144 Mpx passed as 1 pixel
    with pytest.raises(DownloadRefused, match="more than one frame header"):
        jpeg_frame_size(io.BytesIO(forged))
    # And a JPEG with one frame header is read as before, and its walk stops at its image data
    assert jpeg_frame_size(io.BytesIO(data)) == (40, 30)


def test_a_jpeg_hiding_segments_past_the_bound_after_its_frame_header_is_refused() -> None:
    # Given a frame header, then more tiny segments than a real file has (a second header could
    # wait past them)
    data = encode((40, 30), "JPEG")
    padded = data[:2] + sof0(1, 1) + b"\xff\xfe\x00\x02" * MAX_JPEG_SEGMENTS + data[2:]
    with pytest.raises(DownloadRefused, match="segments before its image data"):
        jpeg_frame_size(io.BytesIO(padded))


@pytest.mark.parametrize("stray", [b"\x00", b"\xff" * (MAX_JPEG_FILL_BYTES + 1)], ids=["a byte", "fill"])
def test_a_jpeg_hiding_a_second_frame_header_behind_stray_bytes_is_refused(stray: bytes) -> None:
    # Given a frame header, bytes that are no marker (decoders skip them and read on), then a
    # second frame header of 12000x12000
    data = encode((40, 30), "JPEG")
    forged = data[:2] + sof0(1, 1) + stray + sof0(12_000, 12_000) + data[2:]
    # Then it is refused: the walk stopped at them, and the first header passed it as 1x1
    with pytest.raises(DownloadRefused, match="no marker after its frame header"):
        jpeg_frame_size(io.BytesIO(forged))
    # while a JPEG cut short after its frame header is judged by it, as before
    assert jpeg_frame_size(io.BytesIO(data[:200])) == (40, 30)
