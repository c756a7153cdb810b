"""The simulator's MP4s are real videos: FFmpeg's demuxer and H.264 decoder (through PyAV) play
them, and return exactly the pictures the generator drew (I_PCM macroblocks are lossless)."""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterator
from fractions import Fraction

import av
import av.logging
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import SimulatorConfig, expected_file
from simulator.video import (
    DEFAULT_VIDEO_BYTES,
    MIN_VIDEO_BYTES,
    VIDEO_FPS,
    VideoLayout,
    escape_nal_payload,
    mp4_bytes,
    video_frames,
    video_layout,
)
from workers.sniff import MP4, SNIFF_BYTES, sniff_media

SIZES = [MIN_VIDEO_BYTES, 4096, 100_003, DEFAULT_VIDEO_BYTES, 1_500_000]


@pytest.fixture
def libav_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """FFmpeg's warnings and errors, which PyAV only passes to ``logging`` when asked to."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with caplog.at_level(logging.WARNING, logger="libav"):
            yield caplog
    finally:
        av.logging.set_level(previous)


def decoded_planes(frame: av.VideoFrame) -> tuple[bytes, ...]:
    """A decoded frame's planes row after row, without the decoder's line padding."""
    planes = []
    for plane in frame.planes:
        data, stride = bytes(plane), plane.line_size
        planes.append(
            b"".join(data[row * stride : row * stride + plane.width] for row in range(plane.height))
        )
    return tuple(planes)


def top_level_boxes(data: bytes) -> list[tuple[bytes, int]]:
    boxes, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        assert size >= 8, (kind, size)
        boxes.append((kind, size))
        at += size
    assert at == len(data)
    return boxes


@pytest.mark.parametrize("size", SIZES)
def test_a_video_plays_back_exactly_the_frames_it_was_made_of(
    size: int, libav_log: pytest.LogCaptureFixture
) -> None:
    data = mp4_bytes("video-task", 0, size=size)
    layout = video_layout(size)
    expected = video_frames("video-task", 0, size=size)
    assert len(expected) == layout.frames >= 1

    with av.open(io.BytesIO(data)) as container:
        assert "mp4" in container.format.name
        [stream] = container.streams
        assert stream.type == "video"
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.profile == "Constrained Baseline"
        assert (stream.width, stream.height) == (layout.width, layout.height)
        assert stream.frames == layout.frames
        assert stream.average_rate == VIDEO_FPS
        time_base = stream.time_base
        frames = list(container.decode(stream))

    assert [r.getMessage() for r in libav_log.records if r.name.startswith("libav")] == []
    assert len(frames) == layout.frames
    for number, (frame, planes) in enumerate(zip(frames, expected, strict=True)):
        assert frame.format.name == "yuv420p"
        assert frame.key_frame, number
        assert frame.pts is not None
        assert frame.pts * time_base == Fraction(number, VIDEO_FPS)
        assert decoded_planes(frame) == planes, f"frame {number} differs"
    # The picture moves: consecutive frames differ.
    assert len(expected) == 1 or expected[0][0] != expected[1][0]


@pytest.mark.parametrize("size", [*SIZES, *range(MIN_VIDEO_BYTES + 1, MIN_VIDEO_BYTES + 10), 50_000_000])
def test_a_video_has_exactly_the_size_asked_for_and_as_many_frames_as_fit(size: int) -> None:
    data = mp4_bytes("sizes", 3, size=size)
    assert len(data) == size
    assert sniff_media(data[:SNIFF_BYTES]) is MP4
    boxes = top_level_boxes(data)
    assert [kind for kind, _ in boxes[:3]] == [b"ftyp", b"moov", b"mdat"]
    head = boxes[0][1] + boxes[1][1] + 8
    # One chunk of same-sized samples, right after the mdat header.
    sample_bytes, frames = struct.unpack_from(">4xII", data, data.index(b"stsz") + 4)
    assert struct.unpack_from(">4xII", data, data.index(b"stco") + 4) == (1, head)
    assert frames == video_layout(size).frames >= 1
    # What is left is too small for one more frame: a free box, or the end of mdat under 8 bytes.
    spare = size - head - frames * sample_bytes
    assert 0 <= spare < sample_bytes
    if spare >= 8:
        assert boxes[2:] == [(b"mdat", 8 + frames * sample_bytes), (b"free", spare)]
    else:
        assert boxes[2:] == [(b"mdat", 8 + frames * sample_bytes + spare)]


def test_the_frame_size_is_the_largest_holding_a_second_of_video() -> None:
    assert VIDEO_FPS == 12
    assert video_layout(MIN_VIDEO_BYTES) == VideoLayout(16, 16, 1)
    assert video_layout(4096) == VideoLayout(16, 16, 8)
    assert video_layout(100_003) == VideoLayout(48, 32, 42)
    assert video_layout(DEFAULT_VIDEO_BYTES) == VideoLayout(112, 64, 24)
    assert video_layout(50_000_000) == VideoLayout(256, 144, 899)
    # Just under a second of the larger size, then a second of it.
    assert video_layout(667_751).width == 112
    assert video_layout(667_752) == VideoLayout(256, 144, 12)


def test_the_same_task_and_index_give_the_same_video_and_others_another() -> None:
    first = mp4_bytes("same", 0, size=20_000)
    assert first == mp4_bytes("same", 0, size=20_000)
    assert first == expected_file("same", 0, ext="mp4", video_bytes=20_000)
    assert first != mp4_bytes("same", 1, size=20_000)
    assert first != mp4_bytes("other", 0, size=20_000)
    assert video_frames("same", 0, size=20_000) != video_frames("same", 1, size=20_000)


def test_sizes_too_small_for_one_frame_are_refused() -> None:
    with pytest.raises(ValueError, match=str(MIN_VIDEO_BYTES)):
        mp4_bytes("small", 0, size=MIN_VIDEO_BYTES - 1)
    with pytest.raises(ValueError, match=f"video_bytes must be from {MIN_VIDEO_BYTES}"):
        SimulatorConfig(video_bytes=MIN_VIDEO_BYTES - 1)
    assert SimulatorConfig(video_bytes=MIN_VIDEO_BYTES).video_bytes == MIN_VIDEO_BYTES


def escape_byte_by_byte(rbsp: bytes) -> bytes:
    """H.264's emulation prevention as the standard describes it, one byte at a time."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    if rbsp.endswith(b"\x00"):
        out.append(3)
    return bytes(out)


def unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


@given(st.binary(max_size=64).map(lambda b: b.translate(bytes(i % 5 for i in range(256)))))
def test_emulation_prevention_matches_the_standard(rbsp: bytes) -> None:
    # Bytes mostly 0..4: many runs of zeros, the cases that need escaping.
    escaped = escape_nal_payload(rbsp)
    assert escaped == escape_byte_by_byte(rbsp)
    for start_code in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
        assert start_code not in escaped
    assert not escaped.endswith(b"\x00")
    assert unescape(escaped.removesuffix(b"\x03") if rbsp.endswith(b"\x00") else escaped) == rbsp


def test_emulation_prevention_examples() -> None:
    assert escape_nal_payload(b"\x00\x00\x01") == b"\x00\x00\x03\x01"
    assert escape_nal_payload(b"\x00\x00\x00\x00") == b"\x00\x00\x03\x00\x00\x03"
    assert escape_nal_payload(b"\x00\x00\x04\x00") == b"\x00\x00\x04\x00\x03"
    assert escape_nal_payload(b"\x10\x00\x20") == b"\x10\x00\x20"
