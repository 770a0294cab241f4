"""Reassembly of split messages: real device packets, resend requests, memory bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.jt808 import (
    AssemblyKey,
    BodyError,
    Header,
    LocationReport,
    ParameterReply,
    RawBody,
    ResendRequest,
    SubpacketAssembler,
    decode_body,
    decode_frame,
    encode_body,
    encode_message,
    encode_subpackets,
)
from tests.shared.jt808 import get_vector


def _packet(index: int, total: int, size: int = 10, *, phone: str = "013912345678",
            msg_id: int = 0x0801, serial: int | None = None) -> tuple[Header, bytes]:
    header = Header(msg_id, size, 0, True, False, None, phone, 100 + index if serial is None
                    else serial, total, index)
    return header, bytes([index]) * size


# --- the real device packets --------------------------------------------------------------------


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_device_packets_reassemble_in_either_order(order: tuple[int, int]) -> None:
    msgs = {
        1: decode_frame(bytes.fromhex(get_vector("sc-0104-2013-subpackage-1of2")["hex"])),
        2: decode_frame(bytes.fromhex(get_vector("sc-0104-2013-subpackage-2of2")["hex"])),
    }
    assembler = SubpacketAssembler()
    first, second = (msgs[i] for i in order)
    assert assembler.add(first.header, first.body_bytes, now=0.0) is None
    key = AssemblyKey.of(first.header)
    assert assembler.missing(key) == [order[1]]
    # Packet serials are 1233 and 1250, not consecutive: the resend request names packet 1's.
    expected_request = ResendRequest(1233, (2,)) if order[0] == 1 else None
    assert assembler.resend_request(key) == expected_request
    body = assembler.add(second.header, second.body_bytes, now=1.0)
    assert body is not None and len(body) == 1008 + 211
    assert body == msgs[1].body_bytes + msgs[2].body_bytes
    assert len(assembler) == 0 and assembler.total_bytes == 0
    # The reassembled 0x0104 (parameter query reply): reply serial 0, 0x6B parameters.
    merged = decode_body(0x0104, body)
    assert isinstance(merged, ParameterReply)
    assert (merged.reply_serial, merged.count, len(merged.params)) == (0, 0x6B, 0x6B)
    assert merged.params[0].param_id == 0x0001 and merged.params[0].value == 600
    assert encode_body(0x0104, merged, 2013) == body


# --- encode_subpackets round trip ---------------------------------------------------------------


@pytest.mark.parametrize("version", [2013, 2019])
def test_split_and_reassemble_out_of_order_with_duplicates(version: int) -> None:
    report = LocationReport(1, 2, 30_000_000, 114_000_000, 20, 300, 90, "240101120000",
                            tuple((0xE1 + i, bytes(range(200))) for i in range(6)))
    frames = encode_subpackets(0x0200, report, phone_bcd="13912345678", first_serial=0xFFFE,
                               version=version, packet_size=300)  # type: ignore[arg-type]
    assert len(frames) == 5
    msgs = [decode_frame(f) for f in frames]
    assert [m.header.serial for m in msgs] == [0xFFFE, 0xFFFF, 0, 1, 2]
    assert all(isinstance(m.body, RawBody) for m in msgs)
    order = [3, 0, 4, 3, 1, 2]  # out of order, packet 4 twice (a resend)
    assembler = SubpacketAssembler()
    results = [assembler.add(msgs[i].header, msgs[i].body_bytes, now=0.0) for i in order]
    assert results[:-1] == [None] * 5
    body = results[-1]
    assert body is not None
    assert decode_body(0x0200, body, version) == report  # type: ignore[arg-type]


def test_resend_request_round_trips_in_both_layouts() -> None:
    assembler = SubpacketAssembler()
    for index in (1, 3, 6):
        assembler.add(*_packet(index, 6), now=0.0)
    key = AssemblyKey("13912345678", 0x0801, 6)
    assert assembler.missing(key) == [2, 4, 5]
    assert assembler.first_serial(key) == 101
    request = assembler.resend_request(key)
    assert request == ResendRequest(101, (2, 4, 5))
    assert request is not None
    for version in (2013, 2019):
        frame = encode_message(0x8003, request, phone_bcd="13912345678", serial=5,
                               version=version)
        assert decode_frame(frame).body == request
    # 2019 terminals ask the platform the same way (0x0005).
    frame = encode_message(0x0005, request, phone_bcd="13912345678", serial=5, version=2019)
    assert decode_frame(frame).body == request


def test_single_packet_message_completes_at_once() -> None:
    assembler = SubpacketAssembler()
    assert assembler.add(*_packet(1, 1), now=0.0) == b"\x01" * 10
    assert len(assembler) == 0


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "total"), [(0, 2), (3, 2), (0, 0), (1, 0)])
def test_bad_packet_numbers(index: int, total: int) -> None:
    with pytest.raises(BodyError) as info:
        SubpacketAssembler().add(*_packet(index, total), now=0.0)
    assert info.value.kind == "bad_subpackage"


def test_unsplit_header_is_rejected() -> None:
    header = Header(0x0200, 3, 0, False, False, None, "013912345678", 1)
    with pytest.raises(BodyError):
        SubpacketAssembler().add(header, b"abc", now=0.0)


def test_in_flight_messages_are_bounded() -> None:
    assembler = SubpacketAssembler(max_assemblies=3)
    for n in range(10):
        assembler.add(*_packet(1, 2, phone=f"{n:012d}"), now=float(n))
    assert len(assembler) == 3
    assert assembler.evicted == 7
    # The least recently updated went first: the last three remain.
    assert AssemblyKey("9", 0x0801, 2) in assembler
    assert AssemblyKey("6", 0x0801, 2) not in assembler


def test_one_message_cannot_exceed_its_byte_limit() -> None:
    assembler = SubpacketAssembler(max_assembly_bytes=25, max_total_bytes=100)
    assembler.add(*_packet(1, 5), now=0.0)
    assembler.add(*_packet(2, 5), now=0.0)
    with pytest.raises(BodyError) as info:
        assembler.add(*_packet(3, 5), now=0.0)
    assert info.value.kind == "too_large"
    assert len(assembler) == 0 and assembler.total_bytes == 0


def test_total_bytes_are_bounded_by_evicting_the_oldest() -> None:
    assembler = SubpacketAssembler(max_assembly_bytes=40, max_total_bytes=50)
    for n in range(4):
        assembler.add(*_packet(1, 9, 20, phone=f"{n:012d}"), now=float(n))
    assert assembler.total_bytes <= 50
    assert len(assembler) == 2
    assert assembler.evicted == 2


def test_idle_messages_time_out() -> None:
    assembler = SubpacketAssembler(timeout_s=30.0)
    assembler.add(*_packet(1, 3, phone="000000000001"), now=0.0)
    assembler.add(*_packet(1, 3, phone="000000000002"), now=20.0)
    assert assembler.idle(now=25.0, after_s=10.0) == [AssemblyKey("1", 0x0801, 3)]
    assert assembler.expire(now=31.0) == [AssemblyKey("1", 0x0801, 3)]
    assert len(assembler) == 1 and assembler.expired == 1
    # add() expires too, so a late packet starts a fresh message.
    assert assembler.add(*_packet(2, 3, phone="000000000002"), now=100.0) is None
    assert assembler.missing(AssemblyKey("2", 0x0801, 3)) == [1, 3]


def test_resent_packet_replaces_the_earlier_bytes() -> None:
    assembler = SubpacketAssembler()
    header, _ = _packet(1, 2)
    assembler.add(header, b"old-bytes", now=0.0)
    assembler.add(header, b"new", now=0.0)
    assert assembler.total_bytes == 3
    body = assembler.add(*_packet(2, 2, 2), now=0.0)
    assert body == b"new\x02\x02"


packet_strategy = st.tuples(
    st.integers(0, 5),  # terminal
    st.integers(1, 6),  # total
    st.integers(1, 6),  # index (may exceed total: must be rejected, not stored)
    st.integers(0, 30),  # size
    st.floats(0, 200),  # time
)


@given(st.lists(packet_strategy, max_size=80))
def test_memory_stays_bounded_under_any_packet_stream(
    packets: list[tuple[int, int, int, int, float]],
) -> None:
    assembler = SubpacketAssembler(timeout_s=50, max_assemblies=4, max_assembly_bytes=60,
                                   max_total_bytes=100)
    for phone, total, index, size, now in packets:
        try:
            assembler.add(*_packet(index, total, size, phone=str(phone)), now=now)
        except BodyError as exc:
            assert exc.kind in ("bad_subpackage", "too_large")
        assert len(assembler) <= 4
        assert assembler.total_bytes <= 100
        stored = sum(a.size for a in assembler._assemblies.values())
        assert assembler.total_bytes == stored
