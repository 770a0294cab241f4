"""Every vector of ``../shared/data/jt808/vectors.json`` decodes to exactly its expected values."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.jt808 import (
    AreaRouteExtra,
    BatchLocationUpload,
    ChecksumError,
    FrameError,
    Header,
    Heartbeat,
    LocationReport,
    Message,
    MultimediaEventInfo,
    PlatformGeneralResponse,
    RawBody,
    RegisterResponse,
    ResendRequest,
    RouteTimeExtra,
    SpeedingExtra,
    TerminalAuth,
    TerminalGeneralResponse,
    TerminalLogout,
    TerminalRegister,
    decode_body,
    decode_frame,
    decode_header,
    encode_body,
    encode_frame,
    encode_header,
    encode_message,
)
from tests.shared.jt808 import Vector, get_vector, require, vector_params

# --- mapping our objects to the vectors' `expected` format --------------------------------------


def header_fields(header: Header) -> dict[str, Any]:
    """Header in the vector format (msg_id as "0x0200")."""
    fields = dataclasses.asdict(header)
    fields["msg_id"] = f"0x{header.msg_id:04X}"
    return fields


def extras_fields(report: LocationReport) -> list[dict[str, Any]]:
    """Extra items as the vectors list them: {id, value} or {id, raw}."""
    out: list[dict[str, Any]] = []
    for item_id, value in report.extras:
        key = f"0x{item_id:02X}"
        if isinstance(value, bytes):
            out.append({"id": key, "raw": value.hex()})
        elif isinstance(value, SpeedingExtra | AreaRouteExtra | RouteTimeExtra):
            out.append({"id": key, "value": dataclasses.asdict(value)})
        else:
            out.append({"id": key, "value": value})
    return out


def location_fields(r: LocationReport) -> dict[str, Any]:
    """0x0200 body in the vector format."""
    t = r.time_bcd
    return {
        "alarm": r.alarm, "status": r.status, "lat": r.lat_e6, "lon": r.lon_e6,
        "altitude_m": r.altitude_m, "speed_0_1kmh": r.speed_0_1kmh, "direction": r.direction_deg,
        "time": f"20{t[0:2]}-{t[2:4]}-{t[4:6]} {t[6:8]}:{t[8:10]}:{t[10:12]}",
        "extras": extras_fields(r),
    }


def body_fields(body: object) -> dict[str, Any]:
    """Any decoded body in the vector format."""
    match body:
        case TerminalGeneralResponse() | PlatformGeneralResponse():
            return {"reply_serial": body.reply_serial, "reply_id": f"0x{body.reply_msg_id:04X}",
                    "result": body.result}
        case Heartbeat() | TerminalLogout():
            return {}
        case TerminalRegister():
            return {"province": body.province_id, "city": body.city_id, "maker": body.maker_id,
                    "model": body.model, "terminal_id": body.terminal_id,
                    "plate_color": body.plate_color, "plate": body.plate}
        case RegisterResponse():
            return {"reply_serial": body.reply_serial, "result": body.result,
                    "auth_code": body.auth_code}
        case TerminalAuth():
            return {"auth_code": body.auth_code, "code_len": len(body.auth_code.encode("gbk")),
                    "imei": body.imei, "software_version": body.software_version}
        case LocationReport():
            return location_fields(body)
        case BatchLocationUpload():
            return {"count": body.count, "type": body.batch_type,
                    "items": [location_fields(item) for item in body.items]}
        case ResendRequest():
            return {"orig_serial": body.orig_serial, "count": body.count,
                    "ids": list(body.packet_ids)}
        case MultimediaEventInfo():
            return dataclasses.asdict(body)
    raise AssertionError(f"no mapping for {body!r}")


def assert_expected(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    """Every expected key is present and equal (only the listed keys are checked)."""
    missing = set(expected) - set(actual)
    assert not missing, f"{what}: no value for {sorted(missing)}"
    assert {k: actual[k] for k in expected} == expected, what


def assert_message(vector: Vector, msg: Message) -> None:
    """Header, checksum and body of ``msg`` match the vector's expected values."""
    expected = vector["expected"]
    assert_expected(header_fields(msg.header), expected["header"], "header")
    if "checksum" in expected:
        assert msg.checksum == int(expected["checksum"], 16)
    if "checksum_ok" in expected:
        assert msg.checksum_ok is expected["checksum_ok"]
    if "escaped_on_wire" in expected:
        assert msg.escaped_on_wire is expected["escaped_on_wire"]
    if "body" in expected:
        assert_expected(body_fields(msg.body), expected["body"], "body")


def _is(kind: str, valid: bool = True) -> Any:
    return lambda v: v["kind"] == kind and v["valid"] is valid


# --- frames -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", vector_params(_is("frame")))
def test_valid_frame_decodes_to_expected(vector: Vector | None) -> None:
    vector = require(vector)
    msg = decode_frame(bytes.fromhex(vector["hex"]))
    assert_message(vector, msg)
    assert msg.checksum_ok
    assert msg.version == int(vector["version"])
    if vector.get("force_2013_header"):
        assert msg.header.version_flag and msg.header.protocol_version is None
    if msg.header.subpackage:
        assert isinstance(msg.body, RawBody) and msg.body.data == msg.body_bytes


@pytest.mark.parametrize("vector", vector_params(_is("frame", valid=False)))
def test_invalid_frame_is_rejected(vector: Vector | None) -> None:
    vector = require(vector)
    frame = bytes.fromhex(vector["hex"])
    with pytest.raises(ChecksumError) as info:
        decode_frame(frame)
    assert info.value.kind == "bad_checksum"
    assert info.value.header is not None
    assert_expected(header_fields(info.value.header), vector["expected"]["header"], "header")
    # Accepted only with checksum checking off, and then flagged.
    msg = decode_frame(frame, verify_checksum=False)
    assert_message(vector, msg)
    assert not msg.checksum_ok


@pytest.mark.parametrize("vector", vector_params(_is("frame")))
def test_reencoding_reproduces_the_frame(vector: Vector | None) -> None:
    vector = require(vector)
    frame = bytes.fromhex(vector["hex"])
    msg = decode_frame(frame)
    h = msg.header
    again = encode_message(
        h.msg_id, msg.body, phone_bcd=h.phone_bcd, serial=h.serial, version=msg.version,
        protocol_version=h.protocol_version or 1, version_flag=h.version_flag,
        pkg_total=h.pkg_total, pkg_index=h.pkg_index,
    )
    assert again.hex().upper() == vector["hex"]


@pytest.mark.parametrize("vector", vector_params(_is("frame")))
def test_fast_constructed_objects_equal_regular_ones(vector: Vector | None) -> None:
    vector = require(vector)
    msg = decode_frame(bytes.fromhex(vector["hex"]))
    rebuilt_header = Header(**dataclasses.asdict(msg.header))
    assert type(msg.header) is Header and msg.header == rebuilt_header
    assert hash(msg.header) == hash(rebuilt_header)
    rebuilt = Message(msg.header, msg.body_bytes, msg.body, msg.version, msg.checksum,
                      msg.checksum_ok, msg.escaped_on_wire)
    assert type(msg) is Message and msg == rebuilt
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.header.serial = 1  # type: ignore[misc]
    if isinstance(msg.body, LocationReport):
        assert msg.body == dataclasses.replace(msg.body)
        with pytest.raises(dataclasses.FrozenInstanceError):
            msg.body.alarm = 1  # type: ignore[misc]


def test_anonymised_frame_keeps_overrunning_item_as_trailing_bytes() -> None:
    vector = get_vector("sc-0200-2013-bad-checksum-anonymised")
    msg = decode_frame(bytes.fromhex(vector["hex"]), verify_checksum=False)
    assert isinstance(msg.body, LocationReport)
    # The last item (0xFB, declared length 2) runs one byte past the body.
    assert msg.body.trailing == bytes.fromhex("FB0200")
    assert [item_id for item_id, _ in msg.body.extras] == [0x01, 0x02, 0x03, 0x25, 0x2B, 0x30,
                                                           0x31]


def test_flag_trap_frames_reply_as_2013() -> None:
    msg = decode_frame(bytes.fromhex(get_vector("sc-0200-flag-trap")["hex"]))
    assert msg.header.phone_bcd == "010030000681"
    assert msg.header.terminal_phone == "10030000681"
    assert msg.version == 2013


# --- bodies and headers -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", vector_params(_is("body")))
def test_body_vector(vector: Vector | None) -> None:
    vector = require(vector)
    raw = bytes.fromhex(vector["hex"])
    msg_id, version = int(vector["msg_id"], 16), int(vector["version"])
    body = decode_body(msg_id, raw, version)  # type: ignore[arg-type]
    assert_expected(body_fields(body), vector["expected"]["body"], "body")
    assert encode_body(msg_id, body, version) == raw  # type: ignore[arg-type]


@pytest.mark.parametrize("vector", vector_params(_is("header")))
def test_header_vector(vector: Vector | None) -> None:
    vector = require(vector)
    raw = bytes.fromhex(vector["hex"])
    header = decode_header(raw)
    assert_expected(header_fields(header), vector["expected"]["header"], "header")
    assert encode_header(header) == raw
    # The same header inside a frame is refused: its encryption bits are set (RSA).
    body = bytes(header.body_len)
    with pytest.raises(FrameError) as info:
        decode_frame(encode_frame(raw + body))
    assert info.value.kind == "encrypted"


# --- helpers on real data -----------------------------------------------------------------------


def test_location_helpers_on_device_frame() -> None:
    msg = decode_frame(bytes.fromhex(get_vector("sc-0200-2013-real-device")["hex"]))
    report = msg.body
    assert isinstance(report, LocationReport)
    assert report.status_flags() == ["acc_on", "positioned", "gps", "beidou"]
    assert report.alarm_flags() == []
    # 0x000C0103: the vector's note says 0x000C0003, but bit 8 (half loaded) is set on the wire.
    assert report.status == 0x000C0103
    assert report.load_state == "half"
    assert report.lat_deg == pytest.approx(22.585732)
    assert report.lon_deg == pytest.approx(113.864672)
    assert report.coordinates_in_range
    assert report.time_utc() == datetime(2023, 12, 7, 1, 36, 52, tzinfo=UTC)
    assert report.find_extra(0x31) == 12
    assert report.find_extra(0x99) is None


def test_out_of_range_coordinates_are_flagged() -> None:
    msg = decode_frame(bytes.fromhex(get_vector("yz-0200-2013")["hex"]))
    assert isinstance(msg.body, LocationReport)
    assert not msg.body.coordinates_in_range  # latitude 116.3°


def test_emergency_comes_first_in_alarm_flags() -> None:
    msg = decode_frame(bytes.fromhex(get_vector("sc-0200-2013")["hex"]))
    assert isinstance(msg.body, LocationReport)
    assert msg.body.alarm_flags() == ["emergency"]
    assert msg.body.speed_kmh == 6.0
