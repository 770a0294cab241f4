"""Top-level JT/T 808 codec: one wire frame <-> :class:`Message` (header + decoded body)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.jt808._fast import fast_constructor
from shared.jt808.downlink import driver_identity_layout
from shared.jt808.errors import BodyError, ChecksumError, EncodeError, FrameError
from shared.jt808.framing import encode_frame, unescape, xor_checksum
from shared.jt808.header import MAX_BODY_LEN, Header, Version, encode_header, parse_header
from shared.jt808.location import decode_location
from shared.jt808.messages import _DECODERS, Body, RawBody, encode_body, register_layout

_FLAG = b"\x7e"
_MAX_CONTENT = 21 + MAX_BODY_LEN  # largest header + body


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded frame.

    ``body`` is the decoded dataclass, or :class:`RawBody` for unknown ids and for one packet
    of a split message (reassemble with :class:`SubpacketAssembler`, then :func:`decode_body`).
    ``version`` is the body layout used: 2019 for a 2019 header, else the hint, 2011 for a
    register body in the 2011 widths, or 2013. ``checksum`` is the check code the frame carried.
    """

    header: Header
    body_bytes: bytes
    body: Body
    version: Version
    checksum: int
    checksum_ok: bool
    escaped_on_wire: bool

    @property
    def msg_id(self) -> int:
        """The header's message id."""
        return self.header.msg_id

    @property
    def terminal_phone(self) -> str:
        """Canonical terminal id (phone digits without leading zeros)."""
        return self.header.terminal_phone


_make_message = fast_constructor(Message)


def decode_frame(frame: bytes, *, version_hint: Version | None = None,
                 verify_checksum: bool = True, lenient_phone: bool = False) -> Message:
    """Decode one frame: with its 0x7E flags (as cut by ``FrameSplitter``) or without them.

    Unescapes, checks the XOR check code (``ChecksumError`` unless ``verify_checksum`` is
    False; ``checksum_ok`` tells either way), the header (body length must match exactly;
    encryption is rejected) and decodes the body. ``version_hint`` (2011 or 2013) fixes the body
    layout of 2011/2013-header frames instead of guessing it; 2019 frames announce themselves.
    ``lenient_phone`` keeps a terminal number with non-decimal nibbles (upper-case hex)
    instead of refusing it with ``bad_bcd``; a gateway keeps the default, as such a number is
    no terminal identity. Every error is a :class:`Jt808Error`; those raised after the header
    parsed carry it.
    """
    if type(frame) is not bytes:
        frame = bytes(frame)
    if frame[:1] == _FLAG:
        if len(frame) < 2 or frame[-1] != 0x7E:
            raise FrameError("bad_frame", "frame starts with 0x7E but does not end with it")
        inner = frame[1:-1]
    else:
        inner = frame
    # Membership of an int is a memchr; a one-byte bytes needle costs ~5x more.
    if 0x7E in inner:
        raise FrameError("bad_frame", "0x7E inside a frame")
    escaped = 0x7D in inner
    data = unescape(inner) if escaped else inner
    size = len(data) - 1  # header + body, without the check code
    if size > _MAX_CONTENT:
        raise FrameError("too_large", f"{size}-byte header+body exceeds {_MAX_CONTENT}")
    # XOR over header, body and check code is 0 exactly when the check code matches.
    ok = xor_checksum(data) == 0
    try:
        header = parse_header(data, size, lenient_phone)
    except FrameError:
        if not ok and verify_checksum:
            raise ChecksumError("bad_checksum", "check code mismatch") from None
        raise
    if not ok and verify_checksum:
        raise ChecksumError("bad_checksum", f"check code 0x{data[-1]:02X} does not match",
                            header=header)
    if header.encrypt:
        raise FrameError("encrypted", f"encryption bits {header.encrypt:03b} set", header=header)
    body_bytes = data[size - header.body_len : size]
    msg_id = header.msg_id
    version: Version | None
    if header.protocol_version is not None:
        version = 2019
    elif version_hint == 2011 or version_hint == 2013:
        version = version_hint
    else:
        version = None
    try:
        if header.subpackage:
            body: Body = RawBody(body_bytes)
        elif msg_id == 0x0200:
            body = decode_location(body_bytes)
        else:
            decoder = _DECODERS.get(msg_id)
            body = RawBody(body_bytes) if decoder is None else decoder(body_bytes, version)
    except BodyError as exc:
        exc.header = header
        raise
    if version is None:
        if msg_id == 0x0100:
            version = register_layout(body_bytes)
        elif msg_id == 0x0702 and not header.subpackage:
            version = driver_identity_layout(body_bytes)
        else:
            version = 2013
    return _make_message(header, body_bytes, body, version, data[-1], ok, escaped)


def encode_message(msg_id: int, body: Body | bytes, *, phone_bcd: str, serial: int,
                   version: Version, protocol_version: int = 1, version_flag: bool | None = None,
                   pkg_total: int | None = None, pkg_index: int | None = None,
                   lenient_phone: bool = False) -> bytes:
    """Full escaped wire frame (with 0x7E flags) for one message.

    ``phone_bcd`` is padded with zeros on the left to 12 (2011/2013) or 20 (2019) digits.
    ``version_flag`` overrides attribute bit 14 (only to imitate devices that set it on 2013
    frames). Pass ``pkg_total``/``pkg_index`` for one packet of a split message; a body over
    1023 bytes needs :func:`encode_subpackets`. ``lenient_phone`` accepts hex nibbles in
    ``phone_bcd`` (re-encoding a frame decoded with ``lenient_phone``).
    """
    data = encode_body(msg_id, body, version)
    if len(data) > MAX_BODY_LEN:
        raise EncodeError("too_large", f"{len(data)}-byte body: use encode_subpackets")
    is_2019 = version == 2019
    header = Header(msg_id, len(data), 0, pkg_total is not None or pkg_index is not None,
                    is_2019 if version_flag is None else version_flag,
                    protocol_version if is_2019 else None, phone_bcd, serial, pkg_total,
                    pkg_index)
    return encode_frame(encode_header(header, lenient_phone=lenient_phone) + data)


def encode_subpackets(msg_id: int, body: Body | bytes, *, phone_bcd: str, first_serial: int,
                      version: Version, protocol_version: int = 1,
                      packet_size: int = MAX_BODY_LEN) -> list[bytes]:
    """Wire frames of ``body`` split into packets of ``packet_size`` bytes, indices from 1.

    Serial numbers run on from ``first_serial`` (wrapping at 0xFFFF). Keep the frames: a
    0x8003 request must be answered with the same bytes.
    """
    if not 1 <= packet_size <= MAX_BODY_LEN:
        raise EncodeError("bad_value", f"packet_size {packet_size} outside 1..{MAX_BODY_LEN}")
    data = encode_body(msg_id, body, version)
    chunks = [data[i : i + packet_size] for i in range(0, len(data), packet_size)] or [b""]
    if len(chunks) > 0xFFFF:
        raise EncodeError("too_large", f"{len(chunks)} packets exceed 65535")
    return [
        encode_message(msg_id, chunk, phone_bcd=phone_bcd, serial=(first_serial + i) & 0xFFFF,
                       version=version, protocol_version=protocol_version,
                       pkg_total=len(chunks), pkg_index=i + 1)
        for i, chunk in enumerate(chunks)
    ]


def encode_reply(request: Message, msg_id: int, body: Body | bytes, *, serial: int) -> bytes:
    """Frame answering ``request``: echoes its raw phone digits, layout and protocol version."""
    header = request.header
    return encode_message(msg_id, body, phone_bcd=header.phone_bcd, serial=serial,
                          version=2019 if header.is_2019 else 2013,
                          protocol_version=header.protocol_version or 1)

