"""JT/T 808 message header: 12/16 bytes (2011/2013) or 17/21 bytes (2019, attribute bit 14)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from shared.jt808._fast import fast_constructor
from shared.jt808.bcd import digits_to_bcd
from shared.jt808.errors import EncodeError, FrameError

Version = Literal[2011, 2013, 2019]
"""Body layout version. 2011 and 2013 share the header; 2019 sets attribute bit 14."""

VERSIONS: tuple[Version, ...] = (2011, 2013, 2019)
MAX_BODY_LEN = 0x3FF

ATTR_LEN_MASK = 0x03FF
ATTR_ENCRYPT_SHIFT = 10
ATTR_SUBPACKAGE = 0x2000
ATTR_VERSION_FLAG = 0x4000

_H2013 = struct.Struct(">HH6sH")
_H2019 = struct.Struct(">HHB10sH")
_PKG = struct.Struct(">HH")


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded header, raw values as on the wire.

    ``protocol_version`` is None for the 2011/2013 layout. ``phone_bcd`` keeps every BCD digit,
    leading zeros included (12 digits, or 20 for 2019), so replies can echo it exactly; use
    :attr:`terminal_phone` as the canonical identity. ``version_flag`` is the raw attribute bit
    14, which some 2013 devices set by mistake (then ``protocol_version`` is None).
    """

    msg_id: int
    body_len: int
    encrypt: int
    subpackage: bool
    version_flag: bool
    protocol_version: int | None
    phone_bcd: str
    serial: int
    pkg_total: int | None = None
    pkg_index: int | None = None

    @property
    def is_2019(self) -> bool:
        """True for the 2019 header layout."""
        return self.protocol_version is not None

    @property
    def size(self) -> int:
        """Header length in bytes."""
        return (17 if self.protocol_version is not None else 12) + (4 if self.subpackage else 0)

    @property
    def terminal_phone(self) -> str:
        """Canonical terminal id: the phone digits without leading zeros (DESIGN vehicle id)."""
        return self.phone_bcd.lstrip("0") or "0"


_make_header = fast_constructor(Header)


def _phone(raw: bytes, lenient: bool, what: str) -> str:
    """Phone digits of ``raw``; non-decimal nibbles are ``bad_bcd`` unless ``lenient``, which
    keeps them as upper-case hex (a frame from traccar's encoder, ``0B3A73CE2FF2``)."""
    phone = raw.hex()
    if not phone.isdigit():
        if not lenient:
            raise FrameError("bad_bcd", f"{what} {phone} has a non-decimal nibble")
        phone = phone.upper()
    return phone


def parse_header(data: bytes, content_len: int, lenient_phone: bool = False) -> Header:
    """Header of an unescaped frame whose header + body is ``data[:content_len]``.

    The body length in the attributes must account exactly for the remaining bytes. When bit 14
    is set but only the 2013 layout fits that length, the frame is read as 2013: some devices
    set the bit by mistake (digest section 7; parsed as 2019 their phone is not even BCD).
    ``lenient_phone`` keeps a phone with non-decimal nibbles instead of refusing it.
    """
    if content_len < 12:
        raise FrameError("truncated", f"{content_len} bytes cannot hold a header")
    msg_id, attr, phone_raw, serial = _H2013.unpack_from(data)
    body_len = attr & ATTR_LEN_MASK
    if not attr & 0x6000 and 12 + body_len == content_len:
        # Fast path: an unsplit 2011/2013 frame, by far the most common.
        phone = phone_raw.hex()
        if phone.isdigit():
            return _make_header(msg_id, body_len, (attr >> ATTR_ENCRYPT_SHIFT) & 7, False, False,
                                None, phone, serial, None, None)
    sub = attr & ATTR_SUBPACKAGE
    if attr & ATTR_VERSION_FLAG:
        size = 21 if sub else 17
        if size + body_len == content_len:
            msg_id, attr, proto, phone_raw, serial = _H2019.unpack_from(data)
            # The 2013 layout cannot fit this length either (it is 5 bytes shorter).
            phone = _phone(phone_raw, lenient_phone, "2019 phone")
            return _finish(data, msg_id, attr, body_len, sub, proto, phone, serial, 17)
        if (size - 5) + body_len != content_len:
            raise _length_error(size, body_len, content_len)
        # Only the 2013 layout fits: the bit-14 trap; read it as 2013 below.
    size = 16 if sub else 12
    if size + body_len != content_len:
        raise _length_error(size, body_len, content_len)
    phone = _phone(phone_raw, lenient_phone, "phone")
    return _finish(data, msg_id, attr, body_len, sub, None, phone, serial, 12)


def _finish(data: bytes, msg_id: int, attr: int, body_len: int, sub: int, proto: int | None,
            phone: str, serial: int, fixed: int) -> Header:
    if sub:
        total, index = _PKG.unpack_from(data, fixed)
        return _make_header(msg_id, body_len, (attr >> ATTR_ENCRYPT_SHIFT) & 7, True,
                            bool(attr & ATTR_VERSION_FLAG), proto, phone, serial, total, index)
    return _make_header(msg_id, body_len, (attr >> ATTR_ENCRYPT_SHIFT) & 7, False,
                        bool(attr & ATTR_VERSION_FLAG), proto, phone, serial, None, None)


def _length_error(size: int, body_len: int, content_len: int) -> FrameError:
    if content_len < size:
        return FrameError("truncated", f"{content_len} bytes cannot hold a {size}-byte header")
    return FrameError(
        "length_mismatch",
        f"header says body_len={body_len} but {content_len - size} body bytes follow",
    )


def decode_header(data: bytes, *, force_2013: bool = False, lenient_phone: bool = False,
                  ) -> Header:
    """Header at the start of ``data`` (bytes after it are ignored).

    Bit 14 selects the 2019 layout unless ``force_2013`` (for devices known to set it on 2013
    headers; :func:`shared.jt808.decode_frame` detects those itself from the body length).
    """
    if len(data) < 4:
        raise FrameError("truncated", f"{len(data)} bytes cannot hold a header")
    attr = _PKG.unpack_from(data)[1]
    is_2019 = bool(attr & ATTR_VERSION_FLAG) and not force_2013
    size = (17 if is_2019 else 12) + (4 if attr & ATTR_SUBPACKAGE else 0)
    if len(data) < size:
        raise FrameError("truncated", f"{len(data)} bytes cannot hold a {size}-byte header")
    if is_2019:
        msg_id, attr, proto, phone_raw, serial = _H2019.unpack_from(data)
    else:
        msg_id, attr, phone_raw, serial = _H2013.unpack_from(data)
        proto = None
    phone = _phone(phone_raw, lenient_phone, "phone")
    return _finish(data, msg_id, attr, attr & ATTR_LEN_MASK, attr & ATTR_SUBPACKAGE, proto,
                   phone, serial, 17 if is_2019 else 12)


def encode_header(header: Header, *, lenient_phone: bool = False) -> bytes:
    """Wire bytes of ``header`` (2019 layout when ``protocol_version`` is set).

    Phone digits shorter than the layout's width are padded with zeros on the left.
    ``lenient_phone`` also takes hex nibbles A-F (to re-encode a leniently decoded header).
    """
    h = header
    _check_range("msg_id", h.msg_id, 0xFFFF)
    _check_range("body_len", h.body_len, MAX_BODY_LEN)
    _check_range("encrypt", h.encrypt, 7)
    _check_range("serial", h.serial, 0xFFFF)
    attr = h.body_len | (h.encrypt << ATTR_ENCRYPT_SHIFT)
    if h.version_flag:
        attr |= ATTR_VERSION_FLAG
    if h.protocol_version is not None:
        _check_range("protocol_version", h.protocol_version, 0xFF)
        if not h.version_flag:
            raise EncodeError("bad_value", "a 2019 header needs version_flag (bit 14)")
        out = _H2019.pack(h.msg_id, attr | (ATTR_SUBPACKAGE if h.subpackage else 0),
                          h.protocol_version, _phone_bytes(h.phone_bcd, 10, lenient_phone),
                          h.serial)
    else:
        out = _H2013.pack(h.msg_id, attr | (ATTR_SUBPACKAGE if h.subpackage else 0),
                          _phone_bytes(h.phone_bcd, 6, lenient_phone), h.serial)
    if h.subpackage:
        if h.pkg_total is None or h.pkg_index is None:
            raise EncodeError("bad_value", "a split message needs pkg_total and pkg_index")
        _check_range("pkg_total", h.pkg_total, 0xFFFF)
        _check_range("pkg_index", h.pkg_index, 0xFFFF)
        out += _PKG.pack(h.pkg_total, h.pkg_index)
    elif h.pkg_total is not None or h.pkg_index is not None:
        raise EncodeError("bad_value", "pkg_total/pkg_index given without subpackage")
    return out


def _phone_bytes(phone: str, nbytes: int, lenient: bool) -> bytes:
    if lenient and phone.isascii() and len(phone) <= 2 * nbytes \
            and all(c in "0123456789ABCDEFabcdef" for c in phone) and phone:
        return bytes.fromhex(phone.rjust(2 * nbytes, "0"))
    return digits_to_bcd(phone, nbytes, "phone")


def _check_range(name: str, value: int, high: int) -> None:
    if not 0 <= value <= high:
        raise EncodeError("bad_value", f"{name}={value} outside 0..{high}")
