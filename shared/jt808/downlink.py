"""Platform → terminal commands and their answers: 0x8300 text, 0x8201/0x0201 position query,
0x8203 alarm confirmation, 0x8103/0x8104/0x0104 terminal parameters, 0x8801 camera shot, and
0x0702 driver identity (2011, 2013 and 2019 layouts).

Bodies keep raw wire values, like the rest of the codec, so every one re-encodes byte for byte:
a parameter keeps its value bytes (``value`` decodes them), a count byte that disagrees with the
items sent is kept as ``declared_count``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shared.jt808.bcd import bcd_to_digits, digits_to_bcd
from shared.jt808.errors import BodyError, EncodeError
from shared.jt808.header import Version
from shared.jt808.location import LocationReport, decode_location, encode_location

# --- 0x8300 text message ------------------------------------------------------------------------

TEXT_EMERGENCY = 0x01
TEXT_DISPLAY = 0x04
TEXT_TTS = 0x08
TEXT_AD_SCREEN = 0x10
TEXT_CAN_INFO = 0x20
"""0x8300 flag bits: 0 emergency, 2 show on the terminal's display, 3 read aloud (TTS),
4 show on the advertising screen, 5 = 1 CAN fault-code information (0 central navigation
information). Bits 1, 6 and 7 are reserved."""

TEXT_FLAG_NAMES: dict[str, int] = {
    "emergency": TEXT_EMERGENCY,
    "display": TEXT_DISPLAY,
    "tts": TEXT_TTS,
    "ad_screen": TEXT_AD_SCREEN,
    "can_info": TEXT_CAN_INFO,
}
"""Flag name (as commands carry them) → bit."""

TEXT_TYPE_NOTICE = 1
TEXT_TYPE_SERVICE = 2
"""2019 text type byte: 1 notice (通知), 2 service (服务)."""


def text_flags(names: tuple[str, ...] | list[str]) -> int:
    """The 0x8300 flag byte for flag names; an unknown name is a ``bad_value`` EncodeError."""
    flag = 0
    for name in names:
        bit = TEXT_FLAG_NAMES.get(name)
        if bit is None:
            raise EncodeError("bad_value", f"unknown text flag {name!r}; use one of "
                                           f"{', '.join(TEXT_FLAG_NAMES)}")
        flag |= bit
    return flag


@dataclass(frozen=True, slots=True)
class TextMessage:
    """0x8300: text for the driver, GBK. 2013: flag + text; 2019: flag + text type + text.

    ``text_type`` is None in the 2011/2013 layout (it has no such byte) and 1 or 2 in 2019.
    """

    flag: int
    text: str
    text_type: int | None = None

    @property
    def flags(self) -> list[str]:
        """Names of the set flag bits (see :data:`TEXT_FLAG_NAMES`)."""
        return [name for name, bit in TEXT_FLAG_NAMES.items() if self.flag & bit]


def decode_text_message(body: bytes, version: Version | None) -> TextMessage:
    """0x8300 body in the ``version`` layout (2019: with the text type byte)."""
    if version == 2019:
        _need(body, 2, "2019 text message")
        return TextMessage(body[0], _gbk_text(body[2:], "text"), body[1])
    _need(body, 1, "text message")
    return TextMessage(body[0], _gbk_text(body[1:], "text"))


def encode_text_message(msg: TextMessage, version: Version) -> bytes:
    """0x8300 body; a 2019 body without ``text_type`` gets 1 (notice)."""
    _byte("flag", msg.flag)
    text = _gbk(msg.text, "text")
    if version == 2019:
        text_type = TEXT_TYPE_NOTICE if msg.text_type is None else msg.text_type
        _byte("text_type", text_type)
        return bytes((msg.flag, text_type)) + text
    if msg.text_type is not None:
        raise EncodeError("bad_value", f"a {version} text message has no text type byte")
    return bytes((msg.flag,)) + text


# --- 0x8201 / 0x0201 position query -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PositionQuery:
    """0x8201: ask the terminal where it is now; empty body, answered by 0x0201."""


@dataclass(frozen=True, slots=True)
class PositionReply:
    """0x0201: the answer to 0x8201: the query's serial and a complete 0x0200 body."""

    reply_serial: int
    location: LocationReport


def decode_position_reply(body: bytes) -> PositionReply:
    """0x0201 body: reply serial WORD + location report."""
    _need(body, 2 + 28, "position reply")
    return PositionReply(_U16.unpack_from(body)[0], decode_location(body[2:]))


def encode_position_reply(msg: PositionReply) -> bytes:
    """0x0201 body."""
    return _pack(_U16, msg.reply_serial) + encode_location(msg.location)


# --- 0x8203 manual alarm confirmation -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlarmConfirm:
    """0x8203: confirm alarms by hand; ``reply_serial`` of the alarm message (0 = every one),
    ``alarm_type`` the alarm bits to clear (0x0200's alarm flag layout)."""

    reply_serial: int
    alarm_type: int


_U16 = struct.Struct(">H")
_U16_U32 = struct.Struct(">HI")


def decode_alarm_confirm(body: bytes) -> AlarmConfirm:
    """0x8203 body: serial WORD + alarm type DWORD."""
    _need(body, 6, "alarm confirmation")
    return AlarmConfirm(*_U16_U32.unpack_from(body))


def encode_alarm_confirm(msg: AlarmConfirm) -> bytes:
    """0x8203 body."""
    return _pack(_U16_U32, msg.reply_serial, msg.alarm_type)


# --- 0x8801 camera shot -------------------------------------------------------------------------

CAMERA_STOP = 0
CAMERA_RECORD = 0xFFFF
"""0x8801 ``command``: 0 stop, 0xFFFF record video, anything else the number of photos."""

_CAMERA = struct.Struct(">BHHBBBBBBB")


@dataclass(frozen=True, slots=True)
class CameraShot:
    """0x8801: take photos or record (``interval_s``: photo interval or recording time)."""

    channel: int
    command: int
    interval_s: int
    save_flag: int
    """1 save on the terminal, 0 upload at once."""
    resolution: int
    """1 320x240 … 8 1920x1080 (the standard's table)."""
    quality: int
    """1 (best) … 10."""
    brightness: int
    contrast: int
    saturation: int
    chroma: int


def decode_camera_shot(body: bytes) -> CameraShot:
    """0x8801 body (12 bytes)."""
    _need(body, 12, "camera shot")
    return CameraShot(*_CAMERA.unpack_from(body))


def encode_camera_shot(msg: CameraShot) -> bytes:
    """0x8801 body."""
    return _pack(_CAMERA, msg.channel, msg.command, msg.interval_s, msg.save_flag,
                 msg.resolution, msg.quality, msg.brightness, msg.contrast, msg.saturation,
                 msg.chroma)


# --- 0x8103 / 0x8104 / 0x0104 terminal parameters -----------------------------------------------

_DWORD_PARAMS = frozenset((
    *range(0x0001, 0x0008), 0x0018, 0x0019, 0x001B, 0x001C, 0x0020, 0x0021, 0x0022,
    *range(0x0027, 0x002A), *range(0x002C, 0x0031), *range(0x0045, 0x0048),
    *range(0x0050, 0x005B), 0x0064, 0x0065, *range(0x0070, 0x0075), 0x0080, 0x0093, 0x0095,
    0x0100, 0x0102,
))
_WORD_PARAMS = frozenset((0x0031, 0x005B, 0x005C, 0x005D, 0x005E, 0x0081, 0x0082, 0x0101,
                          0x0103))
_BYTE_PARAMS = frozenset((0x0084, 0x0090, 0x0091, 0x0092, 0x0094))
_STRING_PARAMS = frozenset((*range(0x0010, 0x0018), 0x001A, 0x001D, *range(0x0040, 0x0045),
                            0x0048, 0x0049, 0x0083))

PARAM_WIDTHS: dict[int, int] = {
    **dict.fromkeys(_DWORD_PARAMS, 4), **dict.fromkeys(_WORD_PARAMS, 2),
    **dict.fromkeys(_BYTE_PARAMS, 1),
}
"""Numeric terminal parameters of JT/T 808-2013 table 12 (kept in 2019) → width in bytes:
0x0001 heartbeat interval, 0x0018 TCP port, 0x0055 top speed, 0x0081 province … ."""

STRING_PARAMS: frozenset[int] = _STRING_PARAMS
"""STRING (GBK) terminal parameters: APN, server addresses, monitoring phone numbers, plate …."""


@dataclass(frozen=True, slots=True)
class TerminalParameter:
    """One parameter item (id DWORD, length BYTE, value); ``raw`` is the value as sent."""

    param_id: int
    raw: bytes

    @property
    def value(self) -> int | str | None:
        """An int for a known numeric id of the right width, text (GBK, trailing 0x00
        removed) for a known STRING id, None for anything else (read ``raw``)."""
        width = PARAM_WIDTHS.get(self.param_id)
        if width is not None:
            return int.from_bytes(self.raw, "big") if len(self.raw) == width else None
        if self.param_id in _STRING_PARAMS:
            try:
                return self.raw.rstrip(b"\x00").decode("gbk")
            except UnicodeDecodeError:
                return None
        return None

    @classmethod
    def of(cls, param_id: int, value: int | str | bytes) -> TerminalParameter:
        """A parameter from a value: ints in their id's width, text as GBK, bytes as they are."""
        if isinstance(value, bytes):
            return cls(param_id, value)
        if isinstance(value, str):
            if param_id not in _STRING_PARAMS:
                raise EncodeError("bad_value", f"parameter 0x{param_id:04X} is not a STRING")
            return cls(param_id, _gbk(value, f"parameter 0x{param_id:04X}"))
        width = PARAM_WIDTHS.get(param_id)
        if width is None:
            raise EncodeError("bad_value", f"parameter 0x{param_id:04X} is not numeric")
        if not 0 <= value < 1 << (8 * width):
            raise EncodeError("bad_value", f"parameter 0x{param_id:04X} value {value} out of "
                                           f"range for {width} bytes")
        return cls(param_id, value.to_bytes(width, "big"))


@dataclass(frozen=True, slots=True)
class SetParameters:
    """0x8103: set terminal parameters. ``declared_count`` is the count byte when it disagrees
    with the items (a real device sent 9 for 7); None means "the number of items"."""

    params: tuple[TerminalParameter, ...]
    declared_count: int | None = None

    @property
    def count(self) -> int:
        """The count byte on the wire."""
        return len(self.params) if self.declared_count is None else self.declared_count


@dataclass(frozen=True, slots=True)
class QueryParameters:
    """0x8104: ask for every terminal parameter; empty body, answered by 0x0104."""


@dataclass(frozen=True, slots=True)
class ParameterReply:
    """0x0104: the answer to 0x8104 (or 0x8106): reply serial, then 0x8103's list."""

    reply_serial: int
    params: tuple[TerminalParameter, ...]
    declared_count: int | None = None

    @property
    def count(self) -> int:
        """The count byte on the wire."""
        return len(self.params) if self.declared_count is None else self.declared_count


_PARAM_HEAD = struct.Struct(">IB")


def _decode_params(body: bytes, pos: int) -> tuple[tuple[TerminalParameter, ...], int | None]:
    """Items from ``pos`` to the end of the body (a count byte at ``pos - 1``).

    The count is not trusted: items are read until the body ends; one running past it is a
    truncated body.
    """
    declared = body[pos - 1]
    items: list[TerminalParameter] = []
    n = len(body)
    while pos < n:
        if pos + 5 > n:
            raise BodyError("truncated", f"parameter item header at byte {pos} runs past the body")
        param_id, size = _PARAM_HEAD.unpack_from(body, pos)
        start = pos + 5
        pos = start + size
        if pos > n:
            raise BodyError("truncated", f"parameter 0x{param_id:04X} ({size} bytes) runs past "
                                         f"the body")
        items.append(TerminalParameter(param_id, body[start:pos]))
    return tuple(items), None if declared == len(items) else declared


def _encode_params(params: tuple[TerminalParameter, ...], declared: int | None) -> bytes:
    count = len(params) if declared is None else declared
    _byte("parameter count", count)
    parts = [bytes((count,))]
    for p in params:
        if not 0 <= p.param_id <= 0xFFFFFFFF or len(p.raw) > 0xFF:
            raise EncodeError("bad_value", f"parameter 0x{p.param_id:X}: id over a DWORD or "
                                           f"value over 255 bytes")
        parts.append(_PARAM_HEAD.pack(p.param_id, len(p.raw)) + p.raw)
    return b"".join(parts)


def decode_set_parameters(body: bytes) -> SetParameters:
    """0x8103 body: count BYTE, then (id DWORD, length BYTE, value) items."""
    _need(body, 1, "set parameters")
    params, declared = _decode_params(body, 1)
    return SetParameters(params, declared)


def encode_set_parameters(msg: SetParameters) -> bytes:
    """0x8103 body."""
    return _encode_params(msg.params, msg.declared_count)


def decode_parameter_reply(body: bytes) -> ParameterReply:
    """0x0104 body: reply serial WORD, count BYTE, items."""
    _need(body, 3, "parameter reply")
    params, declared = _decode_params(body, 3)
    return ParameterReply(_U16.unpack_from(body)[0], params, declared)


def encode_parameter_reply(msg: ParameterReply) -> bytes:
    """0x0104 body."""
    return _pack(_U16, msg.reply_serial) + _encode_params(msg.params, msg.declared_count)


# --- 0x0702 driver identity ---------------------------------------------------------------------

CARD_INSERTED = 1
CARD_REMOVED = 2
"""0x0702 ``status`` (2013/2019)."""

IC_READ_OK = 0
"""0x0702 ``ic_read_result``: 0 read; 1 card key authentication failed, 2 card locked,
3 card pulled out, 4 data checksum error."""


@dataclass(frozen=True, slots=True)
class DriverIdentity:
    """0x0702: the driver's qualification card, read by the terminal.

    2013/2019: ``status`` and ``time_bcd`` (GMT+8), then as far as the body goes:
    ``ic_read_result`` and the card fields (name, qualification code STRING[20], issuing
    agency, expiry BCD[4] ``YYYYMMDD`` kept as digits, even ``00000000``), and in 2019 the ID
    card number STRING[20] (``driver_id``). Status 2 (card removed) should carry nothing more,
    but devices send the card fields anyway: what is there is read. 2011: no status or time;
    name, ``driver_id`` STRING[20], qualification code STRING[40], agency. Fixed-width text
    loses its trailing 0x00 padding; length-prefixed text is kept as sent (trailing spaces too).
    """

    status: int | None = None
    time_bcd: str | None = None
    ic_read_result: int | None = None
    driver_name: str | None = None
    qualification_code: str | None = None
    issuing_agency: str | None = None
    cert_expiry_bcd: str | None = None
    driver_id: str | None = None


def driver_identity_layout(body: bytes) -> Version:
    """2011 or 2013 for a 0x0702 body under a 2011/2013 header (same header, other layouts).

    A 2013 body opens with status 1 or 2 and a BCD time; a 2011 one with the name's length,
    and its fixed fields must add up to the body's length exactly.
    """
    if len(body) >= 7 and body[0] in (CARD_INSERTED, CARD_REMOVED) and body[1:7].hex().isdigit():
        return 2013
    if len(body) >= 62:
        name_end = 1 + body[0]
        agency_at = name_end + 60
        if agency_at < len(body) and agency_at + 1 + body[agency_at] == len(body):
            return 2011
    return 2013


def _prefixed(body: bytes, pos: int, what: str) -> tuple[str, int]:
    _need(body, pos + 1, what)
    end = pos + 1 + body[pos]
    _need(body, end, what)
    return _gbk_text(body[pos + 1 : end], what), end


def _fixed_text(body: bytes, pos: int, width: int, what: str) -> tuple[str, int]:
    _need(body, pos + width, what)
    return _gbk_text(body[pos : pos + width].rstrip(b"\x00"), what), pos + width


def decode_driver_identity(body: bytes, version: Version | None) -> DriverIdentity:
    """0x0702 body; ``version`` None picks 2011 or 2013 by :func:`driver_identity_layout`."""
    if version is None:
        version = driver_identity_layout(body)
    if version == 2011:
        name, pos = _prefixed(body, 0, "driver name")
        id_number, pos = _fixed_text(body, pos, 20, "driver ID number")
        qualification, pos = _fixed_text(body, pos, 40, "qualification code")
        agency, pos = _prefixed(body, pos, "issuing agency")
        _no_trailing(body, pos)
        return DriverIdentity(driver_name=name, driver_id=id_number,
                              qualification_code=qualification, issuing_agency=agency)
    _need(body, 7, "driver identity")
    status = body[0]
    time_bcd = bcd_to_digits(body[1:7], "card time")
    if len(body) == 7:
        return DriverIdentity(status, time_bcd)
    result = body[7]
    if len(body) == 8:
        return DriverIdentity(status, time_bcd, result)
    name, pos = _prefixed(body, 8, "driver name")
    qualification, pos = _fixed_text(body, pos, 20, "qualification code")
    agency, pos = _prefixed(body, pos, "issuing agency")
    _need(body, pos + 4, "card expiry")
    expiry = bcd_to_digits(body[pos : pos + 4], "card expiry")
    pos += 4
    driver_id: str | None = None
    if version == 2019:
        driver_id, pos = _fixed_text(body, pos, 20, "driver ID number")
    _no_trailing(body, pos)
    return DriverIdentity(status, time_bcd, result, name, qualification, agency, expiry,
                          driver_id)


def encode_driver_identity(msg: DriverIdentity, version: Version) -> bytes:
    """0x0702 body: the fields up to the last one given (2013/2019), or the 2011 layout."""
    if version == 2011:
        if None in (msg.driver_name, msg.driver_id, msg.qualification_code, msg.issuing_agency):
            raise EncodeError("bad_value", "a 2011 driver identity needs name, ID number, "
                                           "qualification code and agency")
        return b"".join((_prefix_text(msg.driver_name or "", "driver name"),
                         _pad(msg.driver_id or "", 20, "driver ID number"),
                         _pad(msg.qualification_code or "", 40, "qualification code"),
                         _prefix_text(msg.issuing_agency or "", "issuing agency")))
    if msg.status is None or msg.time_bcd is None:
        raise EncodeError("bad_value", f"a {version} driver identity needs status and time")
    if len(msg.time_bcd) != 12:
        raise EncodeError("bad_value", f"card time must be 12 digits: {msg.time_bcd!r}")
    _byte("status", msg.status)
    parts = [bytes((msg.status,)), digits_to_bcd(msg.time_bcd, 6, "card time")]
    card = (msg.driver_name, msg.qualification_code, msg.issuing_agency, msg.cert_expiry_bcd)
    if msg.ic_read_result is None:
        if any(v is not None for v in (*card, msg.driver_id)):
            raise EncodeError("bad_value", "card fields need ic_read_result")
        return b"".join(parts)
    _byte("ic_read_result", msg.ic_read_result)
    parts.append(bytes((msg.ic_read_result,)))
    if all(v is None for v in card) and msg.driver_id is None:
        return b"".join(parts)
    if any(v is None for v in card):
        raise EncodeError("bad_value", "name, qualification code, agency and expiry go together")
    expiry = msg.cert_expiry_bcd or ""
    if len(expiry) != 8:
        raise EncodeError("bad_value", f"card expiry must be 8 digits: {expiry!r}")
    parts += (_prefix_text(msg.driver_name or "", "driver name"),
              _pad(msg.qualification_code or "", 20, "qualification code"),
              _prefix_text(msg.issuing_agency or "", "issuing agency"),
              digits_to_bcd(expiry, 4, "card expiry"))
    if version == 2019:
        parts.append(_pad(msg.driver_id or "", 20, "driver ID number"))
    elif msg.driver_id is not None:
        raise EncodeError("bad_value", "a 2013 driver identity has no ID card number")
    return b"".join(parts)


# --- helpers ------------------------------------------------------------------------------------


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise BodyError("truncated", f"{what}: body of {len(body)} bytes, need {size}")


def _no_trailing(body: bytes, pos: int) -> None:
    if pos != len(body):
        raise BodyError("length_mismatch", f"{len(body) - pos} bytes after the driver identity")


def _gbk_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("gbk")
    except UnicodeDecodeError as exc:
        raise BodyError("bad_text", f"{what} is not GBK: {raw.hex()}") from exc


def _gbk(text: str, what: str) -> bytes:
    try:
        return text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise EncodeError("bad_value", f"{what} {text!r} is not representable in GBK") from exc


def _pad(text: str, width: int, what: str) -> bytes:
    data = _gbk(text, what)
    if len(data) > width:
        raise EncodeError("bad_value", f"{what} {text!r} is longer than {width} bytes")
    return data.ljust(width, b"\x00")


def _prefix_text(text: str, what: str) -> bytes:
    data = _gbk(text, what)
    if len(data) > 0xFF:
        raise EncodeError("bad_value", f"{what} is longer than 255 bytes")
    return bytes((len(data),)) + data


def _byte(what: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise EncodeError("bad_value", f"{what}={value} outside 0..255")


def _pack(fmt: struct.Struct, *values: int) -> bytes:
    try:
        return fmt.pack(*values)
    except struct.error as exc:
        raise EncodeError("bad_value", f"field out of range: {exc}") from exc
