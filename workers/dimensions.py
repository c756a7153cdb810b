"""An image's declared width and height, read from its header without decoding a pixel.

A small file can declare a huge canvas (a "decompression bomb": 100000x100000 pixels is 30 GB
of RGB once decoded), and whoever later opens our stored files (thumbnailers, browsers) would
pay for it. So a result image is refused when its header declares too many pixels.

How many leading bytes each format needs:
- PNG: 24 (signature + IHDR); GIF: 10 (logical screen); WEBP: 30 (RIFF header + first chunk).
- JPEG: the frame header (SOFn) follows every APPn segment (EXIF, ICC profile, XMP, Photoshop),
  each up to 64 KiB and repeatable; typical files have it within a few KiB, files carrying a
  large ICC profile or thumbnail may not. :data:`DEFAULT_HEAD_BYTES` (64 KiB) covers the common
  case; :func:`read_dimensions` returns None when the header is not within the bytes given, and
  :func:`jpeg_frame_size` walks a whole file's segments, skipping their data, to find it."""

from __future__ import annotations

import io
import struct
from typing import IO

from shared.errors import DownloadRefused
from workers.sniff import GIF, JPEG, PNG, WEBP, MediaType, walk_gif

#: Leading bytes to hand :func:`read_dimensions`: enough for PNG, GIF and WEBP, and for JPEG
#: unless its metadata segments before the frame header exceed it.
DEFAULT_HEAD_BYTES = 64 * 1024
#: Most marker segments walked before a JPEG's frame header: real files have a few dozen (an ICC
#: profile is split in at most 255); one made of tiny segments would make the walk long.
MAX_JPEG_SEGMENTS = 1024
#: Most fill bytes (0xFF) before one marker: they are padding, a few at most; a file of nothing
#: else would be walked a byte at a time to its end.
MAX_JPEG_FILL_BYTES = 64
#: Most chunks walked before a PNG's image data (IDAT): real files have a few dozen.
MAX_PNG_CHUNKS = 1024
#: Leading bytes that always suffice, per format (JPEG has no such bound).
HEAD_BYTES_NEEDED = {PNG: 24, GIF: 10, WEBP: 30}
#: Most pixels (width x height) an image may declare: 100 megapixels.
DEFAULT_MAX_PIXELS = 100_000_000
#: Longest side an image may declare, in pixels.
DEFAULT_MAX_SIDE = 20_000

#: JPEG start-of-frame markers that carry the size: C0-CF except DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
#: Start of scan and end of image: past these no frame header can come first.
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def read_dimensions(head: bytes, media: MediaType) -> tuple[int, int] | None:
    """``(width, height)`` in pixels as the header at the start of ``head`` declares them, or
    None: not an image type read here (video), header cut off or not within ``head``,
    malformed, or a side declared as 0 (JPEG's "height defined later", a GIF without a
    logical screen). See the module docstring for how many bytes to give."""
    reader = _READERS.get(media)
    if reader is None:
        return None
    size = reader(head)
    if size is None or 0 in size:
        return None
    return size


def check_dimensions(
    width: int, height: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE
) -> None:
    """Raise :class:`DownloadRefused` when ``width`` x ``height`` exceeds ``max_side`` on either
    side or ``max_pixels`` in all."""
    if max(width, height) > max_side:
        raise DownloadRefused(f"image of {width}x{height} pixels exceeds the {max_side}-pixel side limit")
    if width * height > max_pixels:
        raise DownloadRefused(f"image of {width}x{height} pixels exceeds the {max_pixels}-pixel limit")


def _png(head: bytes) -> tuple[int, int] | None:
    # Signature (8), then the IHDR chunk: length (4), type (4), width (4), height (4), big-endian.
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", head, 16)
    return width, height


def png_single_header(body: IO[bytes]) -> None:
    """Raise :class:`DownloadRefused` when the PNG ``body`` (positioned at its start) has another
    header (IHDR) among the chunks before its image data: a PNG has one, first, and decoders take
    the last one they meet (Pillow does), so a 1x1 header may hide a 12000x12000 one. Also when
    more than :data:`MAX_PNG_CHUNKS` chunks come first. Walks the chunks, their data unread."""
    body.seek(8)  # the signature
    headers = 0
    for _ in range(MAX_PNG_CHUNKS):
        chunk = body.read(8)
        if len(chunk) < 8:
            return
        length, kind = struct.unpack(">I4s", chunk)
        if kind in (b"IDAT", b"IEND"):
            return
        headers += kind == b"IHDR"
        if headers > 1:
            raise DownloadRefused("png image with more than one header (IHDR)")
        body.seek(length + 4, io.SEEK_CUR)  # the data, then its CRC
    raise DownloadRefused(f"png image with more than {MAX_PNG_CHUNKS} chunks before its image data")


def _gif(head: bytes) -> tuple[int, int] | None:
    # "GIF87a"/"GIF89a", then the logical screen: width, height, 16-bit little-endian.
    if len(head) < 10:
        return None
    width, height = struct.unpack_from("<HH", head, 6)
    return width, height


def gif_canvas(body: IO[bytes]) -> tuple[int, int] | None:
    """The canvas a decoder draws the GIF ``body`` (positioned at its start) on: its logical
    screen grown to every frame's extent (left + width, top + height, 16 bits each), as decoders
    grow it (Pillow does, and browsers for the first frame): a GIF declaring a 1x1 screen may
    hold a 60000x60000 frame. Read by walking the file's blocks (:func:`workers.sniff.walk_gif`); a file cut
    short is judged on the frames before the cut. None without a logical screen."""
    walked = walk_gif(body)
    return None if walked is None else walked[0]


def _webp(head: bytes) -> tuple[int, int] | None:
    # "RIFF" size "WEBP", then the first chunk: fourcc (4), size (4), payload from byte 20.
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        # Lossy: a 3-byte frame tag (bit 0 clear on a key frame), start code 9d 01 2a, then
        # 14-bit width and height (the top 2 bits of each are a scaling hint).
        if head[20] & 1 or head[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", head, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        # Lossless: signature 0x2f, then width-1 and height-1 in 14 bits each, little-endian.
        if head[20] != 0x2F:
            return None
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        # Extended: flags (4), then canvas width-1 and height-1 in 24 bits each, little-endian.
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    return None


def _jpeg(head: bytes) -> tuple[int, int] | None:
    """The frame header's size, within ``head``."""
    return jpeg_frame_size(io.BytesIO(head))


def jpeg_frame_size(body: IO[bytes]) -> tuple[int, int] | None:
    """The size the frame header (SOFn) of the JPEG ``body`` (positioned at its start) declares,
    found by walking the marker segments after SOI, each segment's data skipped unread: however
    much metadata (an ICC profile, EXIF with a thumbnail) comes first. None: not a JPEG, malformed,
    cut off or at its image data (SOS) before a frame header, or more than
    :data:`MAX_JPEG_SEGMENTS` segments before one, or more than :data:`MAX_JPEG_FILL_BYTES` fill
    bytes before a marker (a file of tiny segments or of fill bytes would make the walk long).
    The walk goes on to the image data: a second frame header there raises
    :class:`DownloadRefused`, as a second PNG header does (decoders take the last one, so a 1x1
    header may hide a 12000x12000 one), and so do more than :data:`MAX_JPEG_SEGMENTS` segments
    after the first."""
    if body.read(2) != b"\xff\xd8":
        return None
    frame: tuple[int, int] | None = None
    for _ in range(MAX_JPEG_SEGMENTS):
        segment = _jpeg_segment(body)
        if segment is None:
            if frame is not None and body.read(1):
                # Decoders skip such bytes and read on, a second frame header after them too.
                raise DownloadRefused("jpg image with bytes that are no marker after its frame header")
            return frame  # cut off, or malformed before any frame header
        code, length = segment
        if code in (_JPEG_SOS, _JPEG_EOI):
            return frame
        if code in _JPEG_STANDALONE:
            continue
        if code not in _JPEG_SOF:
            body.seek(length - 2, io.SEEK_CUR)
            continue
        if frame is not None:
            raise DownloadRefused("jpg image with more than one frame header (SOF)")
        # Segment: length (2), precision (1), height (2), width (2).
        header = body.read(5)
        if len(header) < 5:
            return None
        height, width = struct.unpack_from(">HH", header, 1)
        frame = width, height
        body.seek(length - 2 - 5, io.SEEK_CUR)
    if frame is not None:
        raise DownloadRefused(f"jpg image of more than {MAX_JPEG_SEGMENTS} segments before its image data")
    return None


def _jpeg_segment(body: IO[bytes]) -> tuple[int, int] | None:
    """The next marker's code and its segment's length field, the body left at its data (a
    standalone marker, or the image data or the end, SOS and EOI: length 0); None when the bytes
    are no marker segment (malformed, cut off, more than :data:`MAX_JPEG_FILL_BYTES` fill
    bytes)."""
    if body.read(1) != b"\xff":
        return None  # not at a marker: malformed
    marker = body.read(1)
    fill = 0
    while marker == b"\xff":  # fill bytes before the marker: a few at most in a real file
        fill += 1
        if fill > MAX_JPEG_FILL_BYTES:
            return None
        marker = body.read(1)
    if not marker:
        return None
    code = marker[0]
    if code in _JPEG_STANDALONE or code in (_JPEG_SOS, _JPEG_EOI):
        return code, 0
    field = body.read(2)
    if len(field) < 2:
        return None
    (length,) = struct.unpack(">H", field)
    return (code, length) if length >= 2 else None


#: The header reader of each image type.
_READERS = {PNG: _png, JPEG: _jpeg, GIF: _gif, WEBP: _webp}
