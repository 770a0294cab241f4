"""JT/T 808 framing: 0x7E flags, 0x7D escaping, the XOR check code and TCP stream splitting.

Wire form: ``7E escape(header + body + check) 7E`` where ``check`` is the XOR of every
unescaped header and body byte (protocol digest, section 1).
"""

from __future__ import annotations

from shared.jt808.errors import FrameError

FLAG = 0x7E
ESCAPE = 0x7D
MAX_FRAME_SIZE = 2092
"""Largest escaped frame, flags included: 2 + 2 * (21-byte header + 1023-byte body + check)."""

_FLAG_B = b"\x7e"
_ESC_B = b"\x7d"
_ESC_FLAG = b"\x7d\x02"
_ESC_ESC = b"\x7d\x01"

_M64 = (1 << 64) - 1
_M128 = (1 << 128) - 1
_M256 = (1 << 256) - 1
_M512 = (1 << 512) - 1


def xor_checksum(data: bytes) -> int:
    """XOR of all bytes of ``data`` (0 for empty input).

    Reads the bytes as one big integer and folds it: XOR the top half onto the bottom half
    (halves of a power of two of bytes, so they stay byte-aligned and the zero-extension is
    harmless) down to 8 bytes, then folds that word. Only ~log2(n) big-int operations instead
    of one Python-level step per byte: ~4x faster than ``reduce(xor, data)`` on a 100-byte frame,
    and numpy's call overhead loses on frames this short. Unrolled for frames up to 128 bytes,
    which is nearly all location reports.
    """
    n = len(data)
    x = int.from_bytes(data, "big")
    if n > 64:
        if n > 128:
            bits = 1 << ((n - 1).bit_length() + 2)  # half of the next power of two, in bits
            while bits > 512:
                x = (x >> bits) ^ (x & ((1 << bits) - 1))
                bits >>= 1
        x = (x >> 512) ^ (x & _M512)
    if n > 32:
        x = (x >> 256) ^ (x & _M256)
    if n > 16:
        x = (x >> 128) ^ (x & _M128)
    if n > 8:
        x = (x >> 64) ^ (x & _M64)
    x ^= x >> 32
    x ^= x >> 16
    x ^= x >> 8
    return x & 0xFF


def escape(data: bytes) -> bytes:
    """Escape 0x7D as ``7D 01`` and 0x7E as ``7D 02`` (0x7D first, so no byte is escaped twice)."""
    return data.replace(_ESC_B, _ESC_ESC).replace(_FLAG_B, _ESC_FLAG)


def unescape(data: bytes) -> bytes:
    """Undo :func:`escape`; a 0x7D not followed by 0x01/0x02 raises ``FrameError("bad_escape")``.

    Returns ``data`` itself when it holds no 0x7D (the common case).
    """
    if ESCAPE not in data:  # int membership is a memchr; a bytes needle costs ~5x more
        return data
    # Occurrences of 7D 01 and 7D 02 cannot overlap (their second byte is not 7D), so every
    # 0x7D is part of a valid pair exactly when the counts add up.
    if data.count(_ESC_B) != data.count(_ESC_ESC) + data.count(_ESC_FLAG):
        raise FrameError("bad_escape", "0x7D not followed by 0x01 or 0x02")
    # 7D 02 first: it produces 0x7E, which cannot form a new pair for the second replace.
    return data.replace(_ESC_FLAG, _FLAG_B).replace(_ESC_ESC, _ESC_B)


def encode_frame(content: bytes) -> bytes:
    """Wire frame for ``content`` (header + body): append the check code, escape, add flags."""
    payload = content + bytes((xor_checksum(content),))
    return _FLAG_B + escape(payload) + _FLAG_B


class FrameSplitter:
    """Incremental splitter of a TCP byte stream into frames (``7E ... 7E``, still escaped).

    ``feed`` returns every complete frame in order, flags included, ready for
    :func:`shared.jt808.decode_frame`. Bytes outside frames are dropped; ``7E 7E`` with
    nothing between is a boundary, not a frame. A frame (or an unfinished one) longer than
    ``max_frame_size`` raises ``FrameError("too_large")``: the peer is not speaking JT/T 808 or
    is hostile, so the caller should close the connection. The frames cut before it in the
    same read are on the exception's ``frames``.
    """

    __slots__ = ("_pending", "max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if max_frame_size < 3:
            raise ValueError("max_frame_size must allow at least 7E xx 7E")
        self.max_frame_size = max_frame_size
        # From an opening flag to the end of the data seen so far; empty while hunting for
        # the next opening flag.
        self._pending = b""

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame."""
        return len(self._pending)

    def reset(self) -> None:
        """Forget any unfinished frame (for example after a decode error)."""
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` read from the stream; return the frames it completes."""
        pending = self._pending
        if pending:
            buf = pending + data
            start = 0
            search_from = len(pending)  # pending holds no flag after its first byte
        else:
            start = data.find(_FLAG_B)
            if start < 0:
                return []
            buf = data
            search_from = start + 1
        frames: list[bytes] = []
        limit = self.max_frame_size
        find = buf.find
        while True:
            end = find(_FLAG_B, search_from)
            if end < 0:
                if len(buf) - start > limit:
                    self._pending = b""
                    raise self._too_large(len(buf) - start, frames)
                self._pending = buf[start:]
                return frames
            if end == start + 1:
                # 7E 7E: nothing between the flags; the second one opens the next frame.
                start = end
                search_from = end + 1
                continue
            if end + 1 - start > limit:
                self._pending = b""
                raise self._too_large(end + 1 - start, frames)
            frames.append(buf[start : end + 1])
            # Every frame carries its own two flags, so after a closing flag we hunt for the
            # next opening one and drop whatever lies between.
            start = find(_FLAG_B, end + 1)
            if start < 0:
                self._pending = b""
                return frames
            search_from = start + 1

    def _too_large(self, size: int, frames: list[bytes]) -> FrameError:
        err = FrameError("too_large", f"frame of {size}+ bytes exceeds {self.max_frame_size}")
        err.frames = tuple(frames)
        return err
