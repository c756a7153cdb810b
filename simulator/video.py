"""Result files of video tasks: real, playable MP4s, written with struct alone (no encoder, no
runtime dependency). An ISO BMFF file (``ftyp``, ``moov`` with one ``avc1`` video track,
``mdat``) holds an H.264 Constrained Baseline stream in which every frame is an IDR picture
made of I_PCM macroblocks. I_PCM stores a macroblock's 256 luma and 2x64 chroma samples raw, so
the encoder needs no transform and no entropy coder (only a few Exp-Golomb header fields), and
decoding is lossless: a decoder returns exactly the samples written (:func:`video_frames`). The
picture is a seeded texture of soft colour bands and fine noise scrolling sideways; see
:func:`video_layout` for the frame size and count a byte budget gets. A 256 KiB file (2 s of
112x64) takes ~4 ms, 50 MB (75 s of 256x144) ~0.2 s.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

from simulator.seeding import file_rng

#: The default size of a video, bytes: 2 s of 112x64 (see :func:`video_layout`).
DEFAULT_VIDEO_BYTES = 256 * 1024
#: Frame sizes of videos, largest first (multiples of 16: whole macroblocks, no cropping).
VIDEO_FRAME_SIZES = ((256, 144), (112, 64), (48, 32), (16, 16))
VIDEO_FPS = 12
#: Ticks per second of the MP4 timescales; a frame lasts ``VIDEO_FRAME_TICKS``.
VIDEO_TIMESCALE = VIDEO_FPS * 1000
VIDEO_FRAME_TICKS = 1000
#: Pixels the luma texture moves per frame (even: chroma, half as wide, moves half as far).
VIDEO_SCROLL_STEP = 4
#: H.264 profile_idc 66 (Baseline) with constraint_set0 and constraint_set1: Constrained Baseline.
H264_PROFILE = 66
H264_CONSTRAINTS = 0b1100_0000
#: Level 3.0: far above these frame sizes and macroblock rates, and its 10 Mbit/s holds the raw
#: 256x144 frames at 12 fps (5.3 Mbit/s); raw I_PCM pictures do exceed the level's nominal
#: compression ratio (MinCR), which decoders do not check.
H264_LEVEL = 30
#: mb_type of I_PCM in an I slice.
MB_TYPE_I_PCM = 25
#: Bytes of one I_PCM macroblock in 4:2:0: 16x16 luma, then 8x8 Cb and 8x8 Cr.
MB_SAMPLE_BYTES = 256 + 2 * 64
#: Samples stay in 16..235 ("video range"): never a zero byte, so the raw samples need no
#: emulation prevention and decoders show them as they are.
SAMPLE_MIN, SAMPLE_MAX = 16, 235
#: Width of a texture cell: the colour level is constant over 8 samples of a row, noise aside.
_CELL = 8
#: Largest video: every box size and offset fits in 32 bits.
MAX_VIDEO_BYTES = 2**32 - 1
#: NAL unit headers (nal_ref_idc 3): sequence and picture parameter sets, IDR slice.
_NAL_SPS, _NAL_PPS, _NAL_IDR = b"\x67", b"\x68", b"\x65"
_MP4_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_LANGUAGE_UND = (21 << 10) | (14 << 5) | 4  # "und", five bits per letter
# Clamps level + noise into the sample range: _CLAMP[v + _CLAMP_OFFSET] for v in -64..319.
_CLAMP_OFFSET = 64
_CLAMP = bytes(min(max(v, SAMPLE_MIN), SAMPLE_MAX) for v in range(-_CLAMP_OFFSET, 320))


@dataclass(frozen=True, slots=True)
class VideoLayout:
    width: int
    height: int
    frames: int


class _Bits:
    """An H.264 bit writer: u(n), ue(v) and se(v) Exp-Golomb codes, alignment, trailing bits."""

    def __init__(self) -> None:
        self._value = 0
        self._length = 0

    def u(self, bits: int, value: int) -> _Bits:
        self._value = (self._value << bits) | value
        self._length += bits
        return self

    def ue(self, value: int) -> _Bits:
        code = value + 1
        return self.u(2 * code.bit_length() - 1, code)

    def se(self, value: int) -> _Bits:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align(self) -> _Bits:
        return self.u(-self._length % 8, 0)

    def trailing(self) -> _Bits:
        """rbsp_trailing_bits: a stop bit, then zeros to the byte boundary."""
        return self.u(1, 1).align()

    def to_bytes(self) -> bytes:
        if self._length % 8:
            raise ValueError("the bits do not end on a byte boundary")
        return self._value.to_bytes(self._length // 8, "big")


#: What stands between two I_PCM macroblocks in a slice: the next mb_type, then the
#: pcm_alignment_zero_bits (the samples before it end on a byte boundary).
_MB_PREFIX = _Bits().ue(MB_TYPE_I_PCM).align().to_bytes()


def escape_nal_payload(rbsp: bytes) -> bytes:
    """Emulation prevention (H.264 7.4.1): a 0x03 after every two zero bytes followed by a byte
    of at most 3, and after a final zero byte, so no start code can appear in a NAL unit."""
    pieces: list[bytes] = []
    start = 0
    at = rbsp.find(b"\x00\x00")
    while at >= 0:
        after = at + 2
        if after < len(rbsp) and rbsp[after] <= 3:
            pieces += (rbsp[start:after], b"\x03")
            start = after
            at = rbsp.find(b"\x00\x00", after)
        else:
            at = rbsp.find(b"\x00\x00", at + 1)
    pieces.append(rbsp[start:])
    if rbsp.endswith(b"\x00"):
        pieces.append(b"\x03")
    return b"".join(pieces)


def _sps(width: int, height: int) -> bytes:
    bits = _Bits().u(8, H264_PROFILE).u(8, H264_CONSTRAINTS).u(8, H264_LEVEL)
    bits.ue(0)  # seq_parameter_set_id
    bits.ue(0)  # log2_max_frame_num_minus4: frame_num has 4 bits (always 0: every frame is IDR)
    bits.ue(2)  # pic_order_cnt_type 2: order follows frame_num, no POC fields in slices
    bits.ue(1)  # max_num_ref_frames
    bits.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    bits.ue(width // 16 - 1).ue(height // 16 - 1)  # pic_width_in_mbs_minus1, ..._height_in_map_units
    bits.u(1, 1).u(1, 1)  # frame_mbs_only_flag, direct_8x8_inference_flag
    bits.u(1, 0).u(1, 0)  # frame_cropping_flag, vui_parameters_present_flag
    return _NAL_SPS + escape_nal_payload(bits.trailing().to_bytes())


def _pps() -> bytes:
    bits = _Bits().ue(0).ue(0)  # pic_parameter_set_id, seq_parameter_set_id
    bits.u(1, 0).u(1, 0)  # entropy_coding_mode_flag (CAVLC), bottom_field_pic_order_in_frame_present
    bits.ue(0).ue(0).ue(0)  # num_slice_groups_minus1, num_ref_idx_l0/l1_default_active_minus1
    bits.u(1, 0).u(2, 0)  # weighted_pred_flag, weighted_bipred_idc
    bits.se(0).se(0).se(0)  # pic_init_qp_minus26, pic_init_qs_minus26, chroma_qp_index_offset
    # deblocking_filter_control_present_flag (slices turn the filter off: the samples stay
    # exact), constrained_intra_pred_flag, redundant_pic_cnt_present_flag
    bits.u(1, 1).u(1, 0).u(1, 0)
    return _NAL_PPS + escape_nal_payload(bits.trailing().to_bytes())


def _slice_head(idr_pic_id: int) -> bytes:
    """An IDR slice's header up to the first macroblock's samples: all of the picture, I type."""
    bits = _Bits().ue(0).ue(7).ue(0)  # first_mb_in_slice, slice_type (I, all slices), pps id
    bits.u(4, 0).ue(idr_pic_id)  # frame_num (0 in an IDR picture), idr_pic_id
    bits.u(1, 0).u(1, 0)  # dec_ref_pic_marking: no_output_of_prior_pics, long_term_reference
    bits.se(0)  # slice_qp_delta (I_PCM has no quantiser)
    bits.ue(1)  # disable_deblocking_filter_idc 1: off
    bits.ue(MB_TYPE_I_PCM).align()  # the first macroblock's mb_type and pcm_alignment_zero_bits
    return bits.to_bytes()


def _sample_bytes(width: int, height: int) -> int:
    """Bytes of one frame in ``mdat``: a 4-byte length, then the slice NAL unit."""
    macroblocks = (width // 16) * (height // 16)
    body = macroblocks * MB_SAMPLE_BYTES + (macroblocks - 1) * len(_MB_PREFIX) + 1  # + stop bit byte
    heads = {len(escape_nal_payload(_slice_head(idr_pic_id))) for idr_pic_id in (0, 1)}
    if len(heads) != 1:
        raise AssertionError("slice headers of alternate IDR pictures differ in length")
    return 4 + len(_NAL_IDR) + heads.pop() + body


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


_FTYP = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")


def _moov(width: int, height: int, frames: int, sample_bytes: int, mdat_offset: int) -> bytes:
    """The movie box: one video track whose ``frames`` samples, ``sample_bytes`` each, sit in one
    chunk at ``mdat_offset``. Its length does not depend on ``frames`` or the offset."""
    duration = frames * VIDEO_FRAME_TICKS
    sps, pps = _sps(width, height), _pps()
    avcc = _box(
        b"avcC",
        bytes((1, H264_PROFILE, H264_CONSTRAINTS, H264_LEVEL, 0xFC | 3, 0xE0 | 1)),  # 4-byte lengths, 1 SPS
        struct.pack(">H", len(sps)),
        sps,
        struct.pack(">BH", 1, len(pps)),
        pps,
    )
    compressor = b"mjhook I_PCM"
    avc1 = _box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),
        struct.pack(">HHIIIH", width, height, 0x480000, 0x480000, 0, 1),  # 72 dpi, 1 frame a sample
        bytes((len(compressor),)) + compressor.ljust(31, b"\0"),
        struct.pack(">Hh", 0x18, -1),  # 24-bit colour, no colour table
        avcc,
    )
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        _full_box(b"stts", 0, 0, struct.pack(">III", 1, frames, VIDEO_FRAME_TICKS)),
        # No stss box: every sample is a sync sample (each frame is an IDR picture).
        _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, frames, 1)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", sample_bytes, frames)),
        _full_box(b"stco", 0, 0, struct.pack(">II", 1, mdat_offset)),
    )
    minf = _box(
        b"minf",
        _full_box(b"vmhd", 0, 1, bytes(8)),
        _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1))),
        stbl,
    )
    mdia = _box(
        b"mdia",
        _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, VIDEO_TIMESCALE, duration, _LANGUAGE_UND, 0)),
        _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"mjhook simulator video\0"),
        minf,
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        0x3,  # enabled, in the movie
        struct.pack(">IIIII", 0, 0, 1, 0, duration),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),  # layer, alternate group, volume
        _MP4_MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, VIDEO_TIMESCALE, duration),
        struct.pack(">IH", 0x10000, 0x100),  # rate 1.0, volume 1.0
        bytes(10),
        _MP4_MATRIX,
        bytes(24),
        struct.pack(">I", 2),  # next_track_ID
    )
    return _box(b"moov", mvhd, _box(b"trak", tkhd, mdia))


def _mp4_head_bytes(width: int, height: int) -> int:
    """Bytes before the first frame: ``ftyp``, ``moov`` and the ``mdat`` header."""
    return len(_FTYP) + len(_moov(width, height, 1, 1, 0)) + 8


def _smallest_mp4() -> int:
    width, height = VIDEO_FRAME_SIZES[-1]
    return _mp4_head_bytes(width, height) + _sample_bytes(width, height)


#: The smallest ``size`` of :func:`mp4_bytes`: one 16x16 frame and the boxes around it.
MIN_VIDEO_BYTES = _smallest_mp4()


def video_layout(size: int) -> VideoLayout:
    """The frame size and count of a video of ``size`` bytes: the largest of
    :data:`VIDEO_FRAME_SIZES` that holds a second of video (:data:`VIDEO_FPS` frames), or the
    smallest when none does, with as many frames as fit."""
    if not MIN_VIDEO_BYTES <= size <= MAX_VIDEO_BYTES:
        raise ValueError(f"a video takes {MIN_VIDEO_BYTES} to {MAX_VIDEO_BYTES} bytes, not {size}")
    for width, height in VIDEO_FRAME_SIZES:
        head, frame = _mp4_head_bytes(width, height), _sample_bytes(width, height)
        if head + VIDEO_FPS * frame <= size or (width, height) == VIDEO_FRAME_SIZES[-1]:
            return VideoLayout(width, height, (size - head) // frame)
    raise AssertionError("unreachable: the smallest frame size always fits")


def _texture(
    rng: random.Random, width: int, height: int, *, mean: int, swing: int, noise_bits: int
) -> list[bytes]:
    """``height`` rows of ``width`` samples, periodic across the row: a level that varies as a
    sine down the rows plus one across the cells of each row, with seeded noise of
    ``noise_bits`` bits around it, all clamped into the sample range."""
    cells = width // _CELL
    noise_span = 1 << noise_bits
    low = _CLAMP_OFFSET - noise_span // 2
    row_period = rng.uniform(0.1, 0.3) * height
    row_phase, cell_phase = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.0, 2 * math.pi)
    waves = rng.randint(1, 3)  # whole waves across the row, so it wraps around seamlessly
    row_swing, cell_swing = rng.uniform(0.5, 1.0) * swing, rng.uniform(0.5, 1.0) * swing
    across = [cell_swing * math.sin(2 * math.pi * waves * cell / cells + cell_phase) for cell in range(cells)]
    tables: dict[int, bytes] = {}
    noise = rng.randbytes(width * height)
    rows = []
    for y in range(height):
        down = mean + row_swing * math.sin(y / row_period + row_phase)
        pieces = []
        for cell, shift in enumerate(across):
            level = round(down + shift)
            table = tables.get(level)
            if table is None:
                # Noise byte v becomes level - span/2 + (v mod span), clamped.
                table = tables[level] = _CLAMP[low + level : low + level + noise_span] * (256 // noise_span)
            at = y * width + cell * _CELL
            pieces.append(noise[at : at + _CELL].translate(table))
        rows.append(b"".join(pieces))
    return rows


class _Video:
    """The pictures of one video: textures twice the frame width (chroma: once, it is half as
    wide), seen through a window that scrolls :data:`VIDEO_SCROLL_STEP` pixels a frame."""

    def __init__(self, task_id: str, index: int, size: int) -> None:
        self.layout = video_layout(size)
        width, height = self.layout.width, self.layout.height
        rng = file_rng(task_id, index)
        self._direction = rng.choice((-1, 1))
        self._period = 2 * width
        luma = _texture(rng, self._period, height, mean=126, swing=42, noise_bits=4)
        cb, cr = (_texture(rng, width, height // 2, mean=128, swing=30, noise_bits=2) for _ in range(2))
        # Each row followed by its start again, so a window never has to wrap around.
        self._luma = [row + row[:width] for row in luma]
        self._cb = [row + row[: width // 2] for row in cb]
        self._cr = [row + row[: width // 2] for row in cr]

    def offset(self, frame: int) -> int:
        return (frame * VIDEO_SCROLL_STEP * self._direction) % self._period

    def planes(self, frame: int) -> tuple[bytes, bytes, bytes]:
        """Frame ``frame`` as Y, Cb and Cr planes, row after row."""
        x, width = self.offset(frame), self.layout.width
        return (
            b"".join(row[x : x + width] for row in self._luma),
            b"".join(row[x // 2 : (x + width) // 2] for row in self._cb),
            b"".join(row[x // 2 : (x + width) // 2] for row in self._cr),
        )

    def macroblocks(self, frame: int) -> bytes:
        """Frame ``frame`` as the slice data after the header: the I_PCM macroblocks in raster
        order, each 16x16 luma then 8x8 Cb and 8x8 Cr samples, joined by the next mb_type."""
        start, width = self.offset(frame), self.layout.width
        blocks = []
        for top in range(0, self.layout.height, 16):
            luma, cb, cr = (
                self._luma[top : top + 16],
                self._cb[top // 2 : top // 2 + 8],
                self._cr[top // 2 : top // 2 + 8],
            )
            for x in range(start, start + width, 16):
                c = x // 2
                blocks.append(
                    b"".join(
                        [
                            *(row[x : x + 16] for row in luma),
                            *(row[c : c + 8] for row in cb),
                            *(row[c : c + 8] for row in cr),
                        ]
                    )
                )
        return _MB_PREFIX.join(blocks)


def video_frames(
    task_id: str, index: int, *, size: int = DEFAULT_VIDEO_BYTES
) -> list[tuple[bytes, bytes, bytes]]:
    """The pictures in ``mp4_bytes(task_id, index, size=size)``, as a decoder returns them
    (I_PCM is lossless): per frame the Y, Cb and Cr planes (4:2:0, 8-bit), row after row, of
    :func:`video_layout`'s size."""
    video = _Video(task_id, index, size)
    return [video.planes(frame) for frame in range(video.layout.frames)]


def mp4_bytes(task_id: str, index: int, *, size: int = DEFAULT_VIDEO_BYTES) -> bytes:
    """A playable MP4 of exactly ``size`` bytes (:data:`MIN_VIDEO_BYTES` at least), seeded by
    (task_id, index): H.264 I_PCM frames at :data:`VIDEO_FPS` fps, their size and number
    from :func:`video_layout`. What is left after the last whole frame (less than a frame) is a
    ``free`` box at the end, or unreferenced bytes at the end of ``mdat`` when under 8 bytes."""
    video = _Video(task_id, index, size)
    width, height, frames = video.layout.width, video.layout.height, video.layout.frames
    sample_bytes = _sample_bytes(width, height)
    head_bytes = _mp4_head_bytes(width, height)
    moov = _moov(width, height, frames, sample_bytes, head_bytes)
    spare = size - head_bytes - frames * sample_bytes
    padding = spare if spare < 8 else 0
    parts = [_FTYP, moov, struct.pack(">I", 8 + frames * sample_bytes + padding), b"mdat"]
    bodies: dict[int, bytes] = {}  # the picture repeats once the texture has scrolled round
    for frame in range(frames):
        offset = video.offset(frame)
        body = bodies.get(offset)
        if body is None:
            body = bodies[offset] = video.macroblocks(frame)
        nal = _NAL_IDR + escape_nal_payload(_slice_head(frame % 2) + body + b"\x80")
        if 4 + len(nal) != sample_bytes:
            raise AssertionError(f"frame {frame} takes {4 + len(nal)} bytes, not {sample_bytes}")
        parts += (struct.pack(">I", len(nal)), nal)
    parts.append(bytes(padding))
    if spare >= 8:
        parts.append(_box(b"free", bytes(spare - 8)))
    return b"".join(parts)
