"""Stream splitting, escaping, check code and frame-level errors."""

from __future__ import annotations

import functools
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.jt808 import (
    MAX_FRAME_SIZE,
    BodyError,
    ChecksumError,
    FrameError,
    FrameSplitter,
    Heartbeat,
    LocationReport,
    decode_frame,
    encode_frame,
    encode_message,
    escape,
    unescape,
    xor_checksum,
)
from tests.shared.jt808 import Vector, get_vector, require, vector_params

HEARTBEAT = encode_message(0x0002, Heartbeat(), phone_bcd="013912345678", serial=7, version=2013)


def split_all(chunks: list[bytes], splitter: FrameSplitter | None = None) -> list[bytes]:
    """Feed every chunk; return all frames in order."""
    splitter = splitter or FrameSplitter()
    frames: list[bytes] = []
    for chunk in chunks:
        frames.extend(splitter.feed(chunk))
    return frames


# --- the stream vector --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", vector_params(lambda v: v["kind"] == "stream"))
def test_stream_vector_split_in_chunks_of_every_size(vector: Vector | None) -> None:
    vector = require(vector)
    stream = bytes.fromhex(vector["hex"])
    expected = [bytes.fromhex(f) for f in vector["expected"]["frames"]]
    for size in range(1, len(stream) + 1):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert split_all(chunks) == expected, f"chunk size {size}"


def test_stream_vector_byte_by_byte_holds_no_garbage() -> None:
    stream = bytes.fromhex(get_vector("fk-stream-split")["hex"])
    splitter = FrameSplitter()
    split_all([bytes([b]) for b in stream], splitter)
    assert splitter.buffered == 0  # trailing 0x44 after the last frame is dropped


# --- splitter behaviour -------------------------------------------------------------------------


def test_many_frames_in_one_read_with_garbage_and_empty_frames() -> None:
    stream = b"\x01\x02" + HEARTBEAT + b"\x7e\x7e" + HEARTBEAT + b"junk" + HEARTBEAT
    assert split_all([stream]) == [HEARTBEAT] * 3


def test_frame_split_across_reads() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(HEARTBEAT[:5]) == []
    assert splitter.buffered == 5
    assert splitter.feed(HEARTBEAT[5:]) == [HEARTBEAT]
    assert splitter.buffered == 0


def test_closing_and_opening_flags_split_across_reads() -> None:
    assert split_all([HEARTBEAT, HEARTBEAT[:1], HEARTBEAT[1:]]) == [HEARTBEAT, HEARTBEAT]


def test_oversize_frame_is_an_error_with_earlier_frames_attached() -> None:
    splitter = FrameSplitter(max_frame_size=40)
    big = b"\x7e" + b"\x01" * 60 + b"\x7e"
    with pytest.raises(FrameError) as info:
        splitter.feed(HEARTBEAT + big)
    assert info.value.kind == "too_large"
    assert info.value.frames == (HEARTBEAT,)
    assert splitter.buffered == 0


def test_unfinished_frame_cannot_grow_past_the_limit() -> None:
    splitter = FrameSplitter(max_frame_size=40)
    assert splitter.feed(b"\x7e" + b"\x01" * 39) == []
    with pytest.raises(FrameError) as info:
        splitter.feed(b"\x01")
    assert info.value.kind == "too_large"


def test_default_limit_accepts_the_largest_legal_frame() -> None:
    # Every byte escaped: 2 + 2 * (21 + 1023 + 1) = 2092.
    frame = b"\x7e" + b"\x7d\x01" * (MAX_FRAME_SIZE // 2 - 1) + b"\x7e"
    assert len(frame) == MAX_FRAME_SIZE
    assert split_all([frame]) == [frame]
    with pytest.raises(FrameError):
        split_all([frame[:-1] + b"\x01\x7e"])


@given(st.lists(st.binary(min_size=1, max_size=60), max_size=8), st.data())
def test_any_frames_any_chunking(contents: list[bytes], data: st.DataObject) -> None:
    frames = [encode_frame(c) for c in contents]
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert split_all(chunks) == frames


# --- escaping and check code --------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_escape_round_trip(data: bytes) -> None:
    escaped = escape(data)
    assert 0x7E not in escaped
    assert unescape(escaped) == data


@pytest.mark.parametrize("bad", ["7D03", "7D", "007D7D01", "7D00", "7D7E"])
def test_bad_escape(bad: str) -> None:
    with pytest.raises(FrameError) as info:
        unescape(bytes.fromhex(bad))
    assert info.value.kind == "bad_escape"


@given(st.binary(max_size=2200))
def test_xor_checksum_matches_reduce(data: bytes) -> None:
    assert xor_checksum(data) == functools.reduce(operator.xor, data, 0)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 16, 17, 64, 65, 128, 129, 1045, 2092, 5000])
def test_xor_checksum_at_fold_boundaries(size: int) -> None:
    data = bytes((i * 37 + 11) & 0xFF for i in range(size))
    assert xor_checksum(data) == functools.reduce(operator.xor, data, 0)


def test_escaped_checksum_vectors() -> None:
    for vector_id, check in (("sc-0002-2013-escaped-checksum", 0x7E),
                             ("yz-0800-2019-escaped-checksum", 0x7D)):
        msg = decode_frame(bytes.fromhex(get_vector(vector_id)["hex"]))
        assert msg.checksum == check and msg.checksum_ok and msg.escaped_on_wire


# --- frame-level errors -------------------------------------------------------------------------


def _kind(frame: bytes, *, verify_checksum: bool = True) -> str:
    with pytest.raises(FrameError) as info:
        decode_frame(frame, verify_checksum=verify_checksum)
    return info.value.kind


def test_frame_errors() -> None:
    assert _kind(b"\x7e" + HEARTBEAT[1:-1]) == "bad_frame"
    assert _kind(HEARTBEAT[:5] + b"\x7e" + HEARTBEAT[5:]) == "bad_frame"
    assert _kind(b"\x7e\x7e") == "truncated"
    assert _kind(encode_frame(b"\x00\x02\x00\x00")) == "truncated"
    assert _kind(HEARTBEAT[:3] + b"\x7d\x03" + HEARTBEAT[3:]) == "bad_escape"
    assert _kind(b"\x7e" + b"\x00" * 1100 + b"\x7e") == "too_large"


def test_frame_without_flags_decodes_too() -> None:
    assert decode_frame(HEARTBEAT[1:-1]) == decode_frame(HEARTBEAT)


def test_extra_zero_bytes_pass_xor_but_fail_the_length_check() -> None:
    # The digest's war story: two extra 00 bytes keep the XOR valid.
    frame = bytes.fromhex(get_vector("sc-0001-2013")["hex"])
    padded = frame[:-2] + b"\x00\x00" + frame[-2:]
    assert _kind(padded) == "length_mismatch"


def test_bad_checksum_is_reported_before_a_broken_header() -> None:
    content = bytearray(unescape(HEARTBEAT[1:-1])[:-1])
    content[3] = 5  # body_len 5, but no body follows
    frame = b"\x7e" + escape(bytes(content) + b"\x00") + b"\x7e"
    assert _kind(frame) == "bad_checksum"
    assert _kind(frame, verify_checksum=False) == "length_mismatch"
    with pytest.raises(ChecksumError):
        decode_frame(frame)


def test_encrypted_frame_is_rejected() -> None:
    content = bytearray(unescape(HEARTBEAT[1:-1])[:-1])
    content[2] |= 0x04  # bit 10: RSA
    with pytest.raises(FrameError) as info:
        decode_frame(encode_frame(bytes(content)))
    assert info.value.kind == "encrypted"
    assert info.value.header is not None and info.value.header.encrypt == 1


def test_non_decimal_phone_is_rejected() -> None:
    content = bytearray(unescape(HEARTBEAT[1:-1])[:-1])
    content[5] = 0x1A
    assert _kind(encode_frame(bytes(content))) == "bad_bcd"


def test_body_error_carries_the_header() -> None:
    # A location report with a 5-byte body: the server can still answer "bad message".
    frame = encode_message(0x0200, b"\x00" * 5, phone_bcd="1", serial=9, version=2013)
    with pytest.raises(BodyError) as info:
        decode_frame(frame)
    assert info.value.kind == "truncated"
    assert info.value.header is not None and info.value.header.serial == 9


def test_location_time_must_be_bcd() -> None:
    report = LocationReport(0, 0, 0, 0, 0, 0, 0, "240101000000")
    frame = bytearray(encode_message(0x0200, report, phone_bcd="1", serial=1, version=2013))
    frame[1 + 12 + 22] = 0x2A  # YY = "2A"
    with pytest.raises(BodyError) as info:
        decode_frame(encode_frame(unescape(bytes(frame[1:-1]))[:-1]))
    assert info.value.kind == "bad_bcd"
