"""JT/T 808 message bodies (both directions) and the msg-id registry to decode and encode them.

Each body is a frozen, slotted dataclass holding raw wire values; text is GBK. Decoding takes
the body layout ``version`` (2011, 2013 or 2019; None for a 2011/2013 header whose layout is
not known, which only matters for 0x0100 register). Fixed-size bodies accept extra bytes after
their fields (vendors append data; the frame's ``body_bytes`` keeps them) but reject short ones.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from shared.jt808.bcd import bcd_time_to_datetime, bcd_to_digits, digits_to_bcd
from shared.jt808.downlink import (
    AlarmConfirm,
    CameraShot,
    DriverIdentity,
    ParameterReply,
    PositionQuery,
    PositionReply,
    QueryParameters,
    SetParameters,
    TextMessage,
    decode_alarm_confirm,
    decode_camera_shot,
    decode_driver_identity,
    decode_parameter_reply,
    decode_position_reply,
    decode_set_parameters,
    decode_text_message,
    encode_alarm_confirm,
    encode_camera_shot,
    encode_driver_identity,
    encode_parameter_reply,
    encode_position_reply,
    encode_set_parameters,
    encode_text_message,
)
from shared.jt808.errors import BodyError, EncodeError
from shared.jt808.header import Version
from shared.jt808.location import (
    BatchLocationUpload,
    LocationReport,
    decode_batch,
    decode_location,
    encode_batch,
    encode_location,
)


class MsgId(IntEnum):
    """Message ids this codec knows (``T_`` terminal -> platform, ``P_`` platform -> terminal)."""

    T_GENERAL_RESPONSE = 0x0001
    T_HEARTBEAT = 0x0002
    T_LOGOUT = 0x0003
    T_QUERY_SERVER_TIME = 0x0004  # 2019
    T_RESEND_REQUEST = 0x0005  # 2019
    T_REGISTER = 0x0100
    T_AUTH = 0x0102
    T_QUERY_PARAMS_RESPONSE = 0x0104
    T_LOCATION = 0x0200
    T_POSITION_REPLY = 0x0201
    T_DRIVER_IDENTITY = 0x0702
    T_BATCH_LOCATION = 0x0704
    T_MULTIMEDIA_EVENT = 0x0800
    P_GENERAL_RESPONSE = 0x8001
    P_RESEND_REQUEST = 0x8003
    P_SERVER_TIME = 0x8004  # 2019
    P_REGISTER_RESPONSE = 0x8100
    P_SET_PARAMS = 0x8103
    P_QUERY_PARAMS = 0x8104
    P_POSITION_QUERY = 0x8201
    P_ALARM_CONFIRM = 0x8203
    P_TEXT_MESSAGE = 0x8300
    P_CAMERA_SHOT = 0x8801


# --- results ------------------------------------------------------------------------------------

RESULT_OK = 0
RESULT_FAILURE = 1
RESULT_BAD_MESSAGE = 2
RESULT_UNSUPPORTED = 3
RESULT_ALARM_CONFIRMED = 4
"""0x0001/0x8001 results; 4 (alarm handling confirmed) exists only in 0x8001."""

REGISTER_OK = 0
REGISTER_VEHICLE_TAKEN = 1
REGISTER_VEHICLE_UNKNOWN = 2
REGISTER_TERMINAL_TAKEN = 3
REGISTER_TERMINAL_UNKNOWN = 4
"""0x8100 results."""


# --- bodies -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawBody:
    """A body we do not decode (unknown id, or one packet of a split message)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TerminalGeneralResponse:
    """0x0001: the terminal answers a platform message."""

    reply_serial: int
    reply_msg_id: int
    result: int


@dataclass(frozen=True, slots=True)
class PlatformGeneralResponse:
    """0x8001: the platform answers a terminal message (result 4 = alarm handling confirmed)."""

    reply_serial: int
    reply_msg_id: int
    result: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """0x0002: empty body."""


@dataclass(frozen=True, slots=True)
class TerminalLogout:
    """0x0003: empty body."""


@dataclass(frozen=True, slots=True)
class QueryServerTime:
    """0x0004 (2019): the terminal asks for the server time; empty body."""


@dataclass(frozen=True, slots=True)
class TerminalRegister:
    """0x0100: terminal registration.

    Fixed-width text fields are decoded with their 0x00 padding removed from both ends and
    nothing else (some devices left-pad with ASCII '0'; see :func:`strip_zero_padding`).
    ``plate`` is the VIN when ``plate_color`` is 0.
    """

    province_id: int
    city_id: int
    maker_id: str
    model: str
    terminal_id: str
    plate_color: int
    plate: str


@dataclass(frozen=True, slots=True)
class RegisterResponse:
    """0x8100: register reply; ``auth_code`` is sent only with result 0."""

    reply_serial: int
    result: int
    auth_code: str = ""


@dataclass(frozen=True, slots=True)
class TerminalAuth:
    """0x0102: authentication. 2011/2013 carry only the code; 2019 adds IMEI and software."""

    auth_code: str
    imei: str = ""
    software_version: str = ""


@dataclass(frozen=True, slots=True)
class ResendRequest:
    """0x8003 (platform) / 0x0005 (2019 terminal): resend these packets of a split message.

    ``orig_serial`` is the serial of the first packet. The count is a BYTE in 2011/2013 and a
    WORD in 2019.
    """

    orig_serial: int
    packet_ids: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of packet indices requested."""
        return len(self.packet_ids)


@dataclass(frozen=True, slots=True)
class ServerTimeReply:
    """0x8004 (2019): server time as BCD ``YYMMDDhhmmss`` in **UTC** (the one non-GMT+8 time)."""

    time_bcd: str

    def time_utc(self) -> datetime:
        """The time as an aware UTC datetime; ``BodyError("bad_time")`` if not a real time."""
        return bcd_time_to_datetime(self.time_bcd, UTC)


@dataclass(frozen=True, slots=True)
class MultimediaEventInfo:
    """0x0800: a multimedia event (photo, audio, video) is about to be uploaded."""

    media_id: int
    media_type: int
    """0 image, 1 audio, 2 video."""
    media_format: int
    """0 JPEG, 1 TIF, 2 MP3, 3 WAV, 4 WMV."""
    event: int
    channel: int


Body = (
    RawBody
    | TerminalGeneralResponse
    | PlatformGeneralResponse
    | Heartbeat
    | TerminalLogout
    | QueryServerTime
    | TerminalRegister
    | RegisterResponse
    | TerminalAuth
    | LocationReport
    | BatchLocationUpload
    | ResendRequest
    | ServerTimeReply
    | MultimediaEventInfo
    | TextMessage
    | PositionQuery
    | PositionReply
    | AlarmConfirm
    | DriverIdentity
    | SetParameters
    | QueryParameters
    | ParameterReply
    | CameraShot
)
"""Any decoded body."""


# --- text -------------------------------------------------------------------------------------

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.strip(b"\x00").decode("gbk")
    except UnicodeDecodeError as exc:
        raise BodyError("bad_text", f"{what} is not GBK: {raw.hex()}") from exc


def _gbk(text: str, what: str) -> bytes:
    try:
        return text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise EncodeError("bad_value", f"{what} {text!r} is not representable in GBK") from exc


def _fixed(text: str, width: int, what: str) -> bytes:
    data = _gbk(text, what)
    if len(data) > width:
        raise EncodeError("bad_value", f"{what} {text!r} is longer than {width} bytes")
    return data.ljust(width, b"\x00")


def strip_zero_padding(text: str) -> str:
    """Drop the ASCII '0' left padding some devices use in 0x0100 fields ('000Koike002')."""
    return text.lstrip("0")


# --- codecs -----------------------------------------------------------------------------------

_REPLY = struct.Struct(">HHB")
_U16 = struct.Struct(">H")
_U16_U8 = struct.Struct(">HB")
_U16_U16 = struct.Struct(">HH")
_MEDIA = struct.Struct(">IBBBB")
_REGISTER_HEAD = struct.Struct(">HH")

REGISTER_WIDTHS: dict[int, tuple[int, int, int]] = {
    2011: (5, 8, 7),
    2013: (5, 20, 7),
    2019: (11, 30, 30),
}
"""0x0100 (maker id, model, terminal id) widths per version."""

# JT/T 697.7 colour codes: 0 no plate, 1 blue, 2 yellow, 3 black, 4 white, 5 green, 9 other,
# and 91-94 for the later two-tone / new-energy plates.
_PLATE_COLORS = frozenset((*range(10), 91, 92, 93, 94))


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise BodyError("truncated", f"{what} body of {len(body)} bytes, need {size}")


def _decode_reply(body: bytes, cls: type[TerminalGeneralResponse] | type[PlatformGeneralResponse],
                  ) -> TerminalGeneralResponse | PlatformGeneralResponse:
    _need(body, 5, "general response")
    return cls(*_REPLY.unpack_from(body))


def _register_fits(body: bytes, version: int) -> bool:
    """Whether ``body`` reads as a plausible register body in the ``version`` layout."""
    maker_w, model_w, tid_w = REGISTER_WIDTHS[version]
    fixed = 4 + maker_w + model_w + tid_w + 1
    if len(body) < fixed or body[fixed - 1] not in _PLATE_COLORS:
        return False
    # Read in the wrong layout, a text field swallows the plate colour byte or the text of its
    # neighbour's NUL padding: control bytes inside the stripped field give it away.
    pos = 4
    for width in (maker_w, model_w, tid_w):
        if _CONTROL.search(body[pos : pos + width].strip(b"\x00")):
            return False
        pos += width
    return not _CONTROL.search(body[fixed:].strip(b"\x00"))


def register_layout(body: bytes) -> Version:
    """2011 or 2013 for a 0x0100 body under a 2011/2013 header (same header, other widths)."""
    if len(body) < 37:
        return 2011
    if _register_fits(body, 2013) or not _register_fits(body, 2011):
        return 2013
    return 2011


def _decode_register(body: bytes, version: Version | None) -> TerminalRegister:
    if version is None:
        version = register_layout(body)
    maker_w, model_w, tid_w = REGISTER_WIDTHS[version]
    fixed = 4 + maker_w + model_w + tid_w + 1
    _need(body, fixed, f"{version} register")
    province, city = _REGISTER_HEAD.unpack_from(body)
    pos = 4
    maker = _text(body[pos : pos + maker_w], "maker id")
    pos += maker_w
    model = _text(body[pos : pos + model_w], "terminal model")
    pos += model_w
    terminal_id = _text(body[pos : pos + tid_w], "terminal id")
    return TerminalRegister(province, city, maker, model, terminal_id, body[fixed - 1],
                            _text(body[fixed:], "plate"))


def _encode_register(msg: TerminalRegister, version: Version) -> bytes:
    maker_w, model_w, tid_w = REGISTER_WIDTHS[version]
    if not (0 <= msg.province_id <= 0xFFFF and 0 <= msg.city_id <= 0xFFFF
            and 0 <= msg.plate_color <= 0xFF):
        raise EncodeError("bad_value", "register province/city/plate colour out of range")
    return b"".join((
        _REGISTER_HEAD.pack(msg.province_id, msg.city_id),
        _fixed(msg.maker_id, maker_w, "maker id"),
        _fixed(msg.model, model_w, "terminal model"),
        _fixed(msg.terminal_id, tid_w, "terminal id"),
        bytes((msg.plate_color,)),
        _gbk(msg.plate, "plate"),
    ))


def _decode_auth(body: bytes, version: Version | None) -> TerminalAuth:
    if version != 2019:
        return TerminalAuth(_text(body, "auth code"))
    _need(body, 1, "2019 auth")
    size = body[0]
    end = 1 + size
    _need(body, end + 35, "2019 auth")
    return TerminalAuth(_text(body[1:end], "auth code"), _text(body[end : end + 15], "IMEI"),
                        _text(body[end + 15 : end + 35], "software version"))


def _encode_auth(msg: TerminalAuth, version: Version) -> bytes:
    code = _gbk(msg.auth_code, "auth code")
    if version != 2019:
        if msg.imei or msg.software_version:
            raise EncodeError("bad_value", f"a {version} auth body has no IMEI/software version")
        return code
    if len(code) > 0xFF:
        raise EncodeError("bad_value", "auth code longer than 255 bytes")
    return b"".join((bytes((len(code),)), code, _fixed(msg.imei, 15, "IMEI"),
                     _fixed(msg.software_version, 20, "software version")))


def _decode_register_response(body: bytes) -> RegisterResponse:
    _need(body, 3, "register response")
    serial, result = _U16_U8.unpack_from(body)
    return RegisterResponse(serial, result, _text(body[3:], "auth code"))


def _encode_register_response(msg: RegisterResponse, version: Version) -> bytes:
    return _pack(_U16_U8, msg.reply_serial, msg.result) + _gbk(msg.auth_code, "auth code")


def _decode_resend(body: bytes, version: Version | None) -> ResendRequest:
    if version == 2019:
        _need(body, 4, "resend request")
        serial, count = _U16_U16.unpack_from(body)
        pos = 4
    else:
        _need(body, 3, "resend request")
        serial, count = _U16_U8.unpack_from(body)
        pos = 3
    _need(body, pos + 2 * count, "resend request")
    ids = struct.unpack_from(f">{count}H", body, pos)
    return ResendRequest(serial, ids)


def _encode_resend(msg: ResendRequest, version: Version) -> bytes:
    head = _U16_U16 if version == 2019 else _U16_U8
    out = _pack(head, msg.orig_serial, len(msg.packet_ids))
    return out + _pack(struct.Struct(f">{len(msg.packet_ids)}H"), *msg.packet_ids)


def _decode_server_time(body: bytes) -> ServerTimeReply:
    _need(body, 6, "server time")
    return ServerTimeReply(bcd_to_digits(body[:6], "server time"))


def _encode_server_time(msg: ServerTimeReply, version: Version) -> bytes:
    if len(msg.time_bcd) != 12:
        raise EncodeError("bad_value", f"time_bcd must be 12 digits: {msg.time_bcd!r}")
    return digits_to_bcd(msg.time_bcd, 6, "server time")


def _decode_media(body: bytes) -> MultimediaEventInfo:
    _need(body, 8, "multimedia event")
    return MultimediaEventInfo(*_MEDIA.unpack_from(body))


def _encode_media(msg: MultimediaEventInfo, version: Version) -> bytes:
    return _pack(_MEDIA, msg.media_id, msg.media_type, msg.media_format, msg.event, msg.channel)


def _pack(fmt: struct.Struct, *values: int) -> bytes:
    try:
        return fmt.pack(*values)
    except struct.error as exc:
        raise EncodeError("bad_value", f"field out of range: {exc}") from exc


def _empty(cls: type[Heartbeat] | type[TerminalLogout] | type[QueryServerTime]
           | type[PositionQuery] | type[QueryParameters],
           ) -> Callable[[bytes, Version | None], Body]:
    instance = cls()
    return lambda body, version: instance


BodyDecoder = Callable[[bytes, "Version | None"], Body]

_DECODERS: dict[int, BodyDecoder] = {
    0x0001: lambda b, v: _decode_reply(b, TerminalGeneralResponse),
    0x0002: _empty(Heartbeat),
    0x0003: _empty(TerminalLogout),
    0x0004: _empty(QueryServerTime),
    0x0005: _decode_resend,
    0x0100: _decode_register,
    0x0102: _decode_auth,
    0x0104: lambda b, v: decode_parameter_reply(b),
    0x0200: lambda b, v: decode_location(b),
    0x0201: lambda b, v: decode_position_reply(b),
    0x0702: decode_driver_identity,
    0x0704: lambda b, v: decode_batch(b),
    0x0800: lambda b, v: _decode_media(b),
    0x8001: lambda b, v: _decode_reply(b, PlatformGeneralResponse),
    0x8003: _decode_resend,
    0x8004: lambda b, v: _decode_server_time(b),
    0x8100: lambda b, v: _decode_register_response(b),
    0x8103: lambda b, v: decode_set_parameters(b),
    0x8104: _empty(QueryParameters),
    0x8201: _empty(PositionQuery),
    0x8203: lambda b, v: decode_alarm_confirm(b),
    0x8300: decode_text_message,
    0x8801: lambda b, v: decode_camera_shot(b),
}

BODY_TYPES: dict[int, type[Body]] = {
    0x0001: TerminalGeneralResponse,
    0x0002: Heartbeat,
    0x0003: TerminalLogout,
    0x0004: QueryServerTime,
    0x0005: ResendRequest,
    0x0100: TerminalRegister,
    0x0102: TerminalAuth,
    0x0104: ParameterReply,
    0x0200: LocationReport,
    0x0201: PositionReply,
    0x0702: DriverIdentity,
    0x0704: BatchLocationUpload,
    0x0800: MultimediaEventInfo,
    0x8001: PlatformGeneralResponse,
    0x8003: ResendRequest,
    0x8004: ServerTimeReply,
    0x8100: RegisterResponse,
    0x8103: SetParameters,
    0x8104: QueryParameters,
    0x8201: PositionQuery,
    0x8203: AlarmConfirm,
    0x8300: TextMessage,
    0x8801: CameraShot,
}
"""Message id -> body class that :func:`decode_body` returns and :func:`encode_body` accepts."""


def _encode_empty(msg: Body, version: Version) -> bytes:
    return b""


def _encode_reply(msg: TerminalGeneralResponse | PlatformGeneralResponse, version: Version,
                  ) -> bytes:
    return _pack(_REPLY, msg.reply_serial, msg.reply_msg_id, msg.result)


_ENCODERS: dict[type, Callable[[object, Version], bytes]] = {
    TerminalGeneralResponse: _encode_reply,  # type: ignore[dict-item]
    PlatformGeneralResponse: _encode_reply,  # type: ignore[dict-item]
    Heartbeat: _encode_empty,  # type: ignore[dict-item]
    TerminalLogout: _encode_empty,  # type: ignore[dict-item]
    QueryServerTime: _encode_empty,  # type: ignore[dict-item]
    ResendRequest: _encode_resend,  # type: ignore[dict-item]
    TerminalRegister: _encode_register,  # type: ignore[dict-item]
    TerminalAuth: _encode_auth,  # type: ignore[dict-item]
    LocationReport: lambda m, v: encode_location(m),  # type: ignore[arg-type]
    BatchLocationUpload: lambda m, v: encode_batch(m),  # type: ignore[arg-type]
    MultimediaEventInfo: _encode_media,  # type: ignore[dict-item]
    ServerTimeReply: _encode_server_time,  # type: ignore[dict-item]
    RegisterResponse: _encode_register_response,  # type: ignore[dict-item]
    TextMessage: encode_text_message,  # type: ignore[dict-item]
    PositionQuery: _encode_empty,  # type: ignore[dict-item]
    PositionReply: lambda m, v: encode_position_reply(m),  # type: ignore[arg-type]
    AlarmConfirm: lambda m, v: encode_alarm_confirm(m),  # type: ignore[arg-type]
    DriverIdentity: encode_driver_identity,  # type: ignore[dict-item]
    SetParameters: lambda m, v: encode_set_parameters(m),  # type: ignore[arg-type]
    QueryParameters: _encode_empty,  # type: ignore[dict-item]
    ParameterReply: lambda m, v: encode_parameter_reply(m),  # type: ignore[arg-type]
    CameraShot: lambda m, v: encode_camera_shot(m),  # type: ignore[arg-type]
}


def decode_body(msg_id: int, body: bytes, version: Version | None = None) -> Body:
    """Decode a complete (reassembled) body; unknown ids give :class:`RawBody`.

    ``version`` is the body layout; None means "2011/2013 header, layout unknown": 0x0100
    register then picks 2011 or 2013 by :func:`register_layout`, everything else reads 2013.
    """
    decoder = _DECODERS.get(msg_id)
    if decoder is None:
        return RawBody(bytes(body))
    return decoder(body, version)


def encode_body(msg_id: int, body: Body | bytes, version: Version) -> bytes:
    """Body bytes of ``body`` for ``msg_id`` in the ``version`` layout (bytes pass through)."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, RawBody):
        return body.data
    expected = BODY_TYPES.get(msg_id)
    if expected is None or type(body) is not expected:
        raise EncodeError("unsupported",
                          f"{type(body).__name__} is not the body of message 0x{msg_id:04X}")
    return _ENCODERS[expected](body, version)
