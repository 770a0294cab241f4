"""Every vector of ``../shared/data/jt808/downlink_vectors.json`` decodes to its expected values
and re-encodes byte for byte: 0x8300, 0x8201/0x0201, 0x8203, 0x0702, 0x8103/0x8104/0x0104,
0x8801 from six outside implementations."""

from __future__ import annotations

from typing import Any

import pytest

from shared.jt808 import (
    AlarmConfirm,
    BodyError,
    CameraShot,
    ChecksumError,
    DriverIdentity,
    FrameError,
    ParameterReply,
    PositionQuery,
    PositionReply,
    QueryParameters,
    SetParameters,
    TerminalParameter,
    TextMessage,
    Version,
    decode_body,
    decode_frame,
    encode_body,
    encode_message,
)
from tests.shared.jt808 import Vector, downlink_params, downlink_vectors, require_downlink
from tests.shared.jt808.test_vectors import assert_expected, header_fields, location_fields


def _bcd_time(t: str | None) -> str | None:
    if t is None:
        return None
    return f"20{t[0:2]}-{t[2:4]}-{t[4:6]} {t[6:8]}:{t[8:10]}:{t[10:12]}"


def param_fields(p: TerminalParameter) -> dict[str, Any]:
    """One parameter item as the vectors list it: {id, len, value} or {id, len, raw}."""
    out: dict[str, Any] = {"id": f"0x{p.param_id:04X}", "len": len(p.raw)}
    value = p.value
    if value is None:
        out["raw"] = p.raw.hex().upper()
    else:
        out["value"] = value
    return out


def downlink_fields(body: object) -> dict[str, Any]:
    """A decoded downlink body in the vector format."""
    match body:
        case TextMessage():
            fields: dict[str, Any] = {"flag": body.flag, "text": body.text}
            if body.text_type is not None:
                fields["text_type"] = body.text_type
            return fields
        case PositionQuery() | QueryParameters():
            return {}
        case PositionReply():
            return {"reply_serial": body.reply_serial, "position": location_fields(body.location)}
        case AlarmConfirm():
            return {"reply_serial": body.reply_serial, "alarm_type": body.alarm_type}
        case DriverIdentity():
            e = body.cert_expiry_bcd
            fields = {"status": body.status, "time": _bcd_time(body.time_bcd),
                      "ic_read_result": body.ic_read_result, "driver_name": body.driver_name,
                      "qualification_code": body.qualification_code,
                      "issuing_agency": body.issuing_agency, "driver_id": body.driver_id,
                      "cert_expiry": None if e is None else f"{e[0:4]}-{e[4:6]}-{e[6:8]}"}
            return {k: v for k, v in fields.items() if v is not None}
        case SetParameters():
            return {"count": body.count, "params": [param_fields(p) for p in body.params]}
        case ParameterReply():
            return {"reply_serial": body.reply_serial, "count": body.count,
                    "params": [param_fields(p) for p in body.params]}
        case CameraShot():
            return {"channel": body.channel, "command": body.command,
                    "interval_s": body.interval_s, "save_flag": body.save_flag,
                    "resolution": body.resolution, "quality": body.quality,
                    "brightness": body.brightness, "contrast": body.contrast,
                    "saturation": body.saturation, "chroma": body.chroma}
    raise AssertionError(f"no mapping for {body!r}")


def _version(vector: Vector) -> Version:
    return int(vector.get("layout") or vector["version"])  # type: ignore[return-value]


def _is(kind: str, valid: bool = True) -> Any:
    return lambda v: v["kind"] == kind and v["valid"] is valid


def test_all_46_vectors_are_covered() -> None:
    vectors = downlink_vectors()
    assert len(vectors) == 46
    assert {v["kind"] for v in vectors} <= {"frame", "body"}
    ids = {v["msg_id"] for v in vectors}
    assert ids == {"0x8300", "0x8201", "0x0201", "0x8203", "0x0702", "0x8103", "0x8104",
                   "0x0104", "0x8801"}


@pytest.mark.parametrize("vector", downlink_params(_is("frame")))
def test_frame_decodes_to_expected_and_reencodes(vector: Vector | None) -> None:
    vector = require_downlink(vector)
    frame = bytes.fromhex(vector["hex"])
    # The traccar frame's terminal number is not BCD: only a lenient decode keeps it.
    lenient = not vector["expected"]["header"]["phone_bcd"].isdigit()
    if lenient:
        with pytest.raises(FrameError) as info:
            decode_frame(frame)
        assert info.value.kind == "bad_bcd"
    msg = decode_frame(frame, lenient_phone=lenient)
    expected = vector["expected"]
    assert_expected(header_fields(msg.header), expected["header"], "header")
    assert msg.checksum == int(expected["checksum"], 16)
    assert msg.checksum_ok is expected["checksum_ok"]
    if "escaped_on_wire" in expected:
        assert msg.escaped_on_wire is expected["escaped_on_wire"]
    # 2011 vs 2013 (0x0702) is told from the body alone, as for 0x0100.
    assert msg.version == _version(vector)
    assert_expected(downlink_fields(msg.body), expected["body"], "body")
    h = msg.header
    again = encode_message(h.msg_id, msg.body, phone_bcd=h.phone_bcd, serial=h.serial,
                           version=msg.version, protocol_version=h.protocol_version or 1,
                           version_flag=h.version_flag, lenient_phone=lenient)
    assert again.hex().upper() == vector["hex"]


@pytest.mark.parametrize("vector", downlink_params(_is("body")))
def test_body_decodes_to_expected_and_reencodes(vector: Vector | None) -> None:
    vector = require_downlink(vector)
    raw = bytes.fromhex(vector["hex"])
    msg_id, version = int(vector["msg_id"], 16), _version(vector)
    body = decode_body(msg_id, raw, version)
    assert_expected(downlink_fields(body), vector["expected"]["body"], "body")
    assert encode_body(msg_id, body, version) == raw


def test_invalid_frames_are_rejected() -> None:
    # The file holds no negative vector today; any added later must be refused clearly. A real
    # command with its check code flipped is refused the same way.
    frames = [bytes.fromhex(v["hex"]) for v in downlink_vectors() if not v["valid"]]
    good = next(v for v in downlink_vectors() if v["id"] == "yz-8203-2013")
    raw = bytes.fromhex(good["hex"])
    frames.append(raw[:-2] + bytes((raw[-2] ^ 0x01,)) + raw[-1:])
    for frame in frames:
        with pytest.raises(ChecksumError) as info:
            decode_frame(frame)
        assert info.value.kind == "bad_checksum"


def test_count_mismatch_keeps_the_declared_count() -> None:
    vector = next(v for v in downlink_vectors() if v["id"] == "sc-0104-2013-count-mismatch")
    body = decode_frame(bytes.fromhex(vector["hex"])).body
    assert isinstance(body, ParameterReply)
    assert (body.count, len(body.params), body.declared_count) == (9, 7, 9)
    # STRING values end in 0x00 on the wire: ``value`` drops it, ``raw`` keeps it.
    server = next(p for p in body.params if p.param_id == 0x0013)
    assert server.value == "223.108.133.163" and server.raw.endswith(b"\x00")


def test_text_flags_of_a_real_command() -> None:
    vector = next(v for v in downlink_vectors() if v["id"] == "sc-8300-2013")
    body = decode_frame(bytes.fromhex(vector["hex"])).body
    assert isinstance(body, TextMessage)
    assert body.flags == ["emergency", "display"]


@pytest.mark.parametrize(("msg_id", "hex_body", "kind"), [
    (0x8300, "", "truncated"),
    (0x8203, "0001000000", "truncated"),
    (0x0201, "0001" + "00" * 27, "truncated"),
    (0x8801, "01" * 11, "truncated"),
    (0x8103, "01000000010400", "truncated"),  # an item longer than the body
    (0x0104, "0001", "truncated"),
    (0x0702, "01200101", "truncated"),
    (0x8300, "01FF", "bad_text"),
])
def test_short_or_broken_bodies_are_clear_errors(msg_id: int, hex_body: str, kind: str) -> None:
    with pytest.raises(BodyError) as info:
        decode_body(msg_id, bytes.fromhex(hex_body), 2013)
    assert info.value.kind == kind
