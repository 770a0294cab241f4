"""JT/T 808 codec errors: one root class, a bounded ``kind`` usable as a metric label."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from shared.errors import TtiError

if TYPE_CHECKING:
    from shared.jt808.header import Header

ErrorKind = Literal[
    "bad_frame",  # missing 0x7E flags or a flag inside the frame
    "bad_escape",  # 0x7D followed by something other than 0x01 / 0x02
    "bad_checksum",  # XOR check code does not match
    "length_mismatch",  # header body length != real body length, or counts disagree
    "too_large",  # frame or reassembled message over the configured limit
    "truncated",  # fewer bytes than the layout needs
    "bad_bcd",  # a BCD nibble that is not 0-9
    "bad_time",  # BCD time that is not a calendar date/time (month 13, all zeros...)
    "bad_text",  # text that is not valid GBK
    "bad_value",  # a field out of range (mostly when encoding)
    "bad_subpackage",  # packet index/total inconsistent
    "encrypted",  # encryption bits set (RSA or reserved): we do not decrypt
    "unsupported",  # message id / body type we cannot encode
]
ERROR_KINDS: frozenset[str] = frozenset(get_args(ErrorKind))


class Jt808Error(TtiError, ValueError):
    """Root of every JT/T 808 codec error; ``kind`` is one of :data:`ERROR_KINDS`.

    ``header`` is set when the header was parsed before the error, so a server can still answer
    the terminal (for example 0x8001 result 2, "bad message").
    """

    code = "jt808_error"

    def __init__(self, kind: ErrorKind, message: str, *, header: Header | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: ErrorKind = kind
        self.header = header


class FrameError(Jt808Error):
    """The frame itself is broken: flags, escaping, size, check code, header or body length."""

    # Set by FrameSplitter.feed on "too_large": the complete frames cut from the same read
    # before the oversize one, so the server can still handle them before closing.
    frames: tuple[bytes, ...] = ()


class ChecksumError(FrameError):
    """The XOR check code does not match the frame contents."""


class BodyError(Jt808Error):
    """The frame is sound but the message body does not fit its layout."""


class EncodeError(Jt808Error):
    """A value cannot be encoded (out of range, too long, not representable in GBK)."""
