"""Result files, made on the fly: the same (taskId, index) always gives the same bytes. Images
here; videos in :mod:`simulator.video`.

PNGs are written with zlib and struct rather than Pillow: no runtime dependency, and no
per-pixel Python work. Each scanline is stored with PNG's "Average" filter, whose decoded
value is ``filtered + (left + up) // 2``; feeding it small seeded noise plus a slowly varying
offset makes the decoder draw soft colour noise over broad gradient bands. The encoder only
translates random bytes and deflates them, so a 1024x1024 image (~1.4-1.8 MB, about what
Midjourney sends) takes ~0.1 s.
"""

from __future__ import annotations

import hashlib
import math
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from simulator.seeding import file_rng
from simulator.video import DEFAULT_VIDEO_BYTES, mp4_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG scanline filter "Average" (see the module docstring).
PNG_FILTER_AVERAGE = b"\x03"
#: Deflate level: 1 is 2-3x faster than 6 and only ~2 % larger on this kind of data.
PNG_ZLIB_LEVEL = 1
#: The largest per-row offset, in levels per row: how steep the gradient bands get.
GRADIENT_STEP = 3

DEFAULT_WIDTH = 1024
DEFAULT_HEIGHT = 1024
#: The largest width and height, pixels: a PNG is made in memory, ~4 times its raw pixels at
#: its peak (~210 MB at 4096x4096, for a file of ~30 MB).
MAX_IMAGE_SIDE = 4096
#: Generated files kept in memory at most, bytes (a 1024x1024 PNG is ~1.4-1.8 MB, a 4096x4096 one
#: ~25-30 MB).
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileKind:
    ext: str
    content_type: str


PNG = FileKind("png", "image/png")
MP4 = FileKind("mp4", "video/mp4")
KINDS = {kind.ext: kind for kind in (PNG, MP4)}


def png_bytes(task_id: str, index: int, *, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> bytes:
    """A decodable 8-bit RGB PNG, ``width`` x ``height`` pixels, seeded by (task_id, index)."""
    rng = file_rng(task_id, index)
    bits = rng.choice((3, 4))  # noise strength: 3 bits ~1.4 MB, 4 bits ~1.8 MB at 1024x1024
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    tables = {
        step: bytes(((value & mask) - half + step) % 256 for value in range(256))
        for step in range(-GRADIENT_STEP, GRADIENT_STEP + 1)
    }
    period = rng.uniform(0.06, 0.2) * height
    phase = rng.uniform(0.0, 2 * math.pi)
    stride = width * 3
    noise = rng.randbytes(stride * height)
    rows = bytearray()
    for y in range(height):
        step = round(GRADIENT_STEP * math.sin(y / period + phase))
        rows += PNG_FILTER_AVERAGE
        rows += noise[y * stride : (y + 1) * stride].translate(tables[step])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(bytes(rows), PNG_ZLIB_LEVEL)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def expected_file(
    task_id: str,
    index: int,
    *,
    ext: str = "png",
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    video_bytes: int = DEFAULT_VIDEO_BYTES,
) -> bytes:
    """The exact bytes the simulator serves for result ``index`` of ``task_id``: a PNG, or an
    MP4 video of ``video_bytes`` bytes when ``ext`` is ``"mp4"``. Pass the sizes the simulator
    was configured with (or use ``RunningSimulator.expected_file``, which knows them)."""
    if ext == MP4.ext:
        return mp4_bytes(task_id, index, size=video_bytes)
    if ext == PNG.ext:
        return png_bytes(task_id, index, width=width, height=height)
    raise ValueError(f"no such result file type: {ext!r}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileCache:
    """Generated files kept in memory, at most ``max_files`` of them and ``max_bytes`` bytes in
    all, least recently used dropped first (a file larger than ``max_bytes`` is not kept).
    Thread-safe; requests missing the same file at once wait for the one that makes it."""

    def __init__(
        self,
        make: Callable[[str, int, str], bytes],
        *,
        max_files: int = 64,
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._make = make
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._files: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._bytes = 0
        #: Files being made, for the requests missing them meanwhile.
        self._making: dict[tuple[str, int, str], Future[bytes]] = {}
        self._lock = threading.Lock()

    def get(self, task_id: str, index: int, ext: str) -> bytes:
        key = (task_id, index, ext)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
            making = self._making.get(key)
            if making is None:
                making = self._making[key] = Future()
                maker = True
            else:
                maker = False
        if not maker:
            return making.result()
        try:
            data = self._make(task_id, index, ext)
        except BaseException as exc:
            with self._lock:
                del self._making[key]
            making.set_exception(exc)
            raise
        with self._lock:
            del self._making[key]
            self._keep(key, data)
        making.set_result(data)
        return data

    def _keep(self, key: tuple[str, int, str], data: bytes) -> None:
        """Add ``data``, then drop the least recently used beyond the bounds (with the lock held)."""
        if len(data) > self._max_bytes:
            return
        self._files[key] = data
        self._bytes += len(data)
        while len(self._files) > self._max_files or self._bytes > self._max_bytes:
            _, dropped = self._files.popitem(last=False)
            self._bytes -= len(dropped)
