"""Seeded mutations of real JT/T 808 frames (``../shared/data/jt808/vectors.json``).

A mutation works on the unescaped frame (header, body, check code) so it can lie about exactly
one thing — the body length, the split flag and packet numbers, the version bit, the encryption
bits, an item count — and then, most of the time, fixes the check code so the lie reaches the
header and body decoders instead of stopping at the XOR. Then it escapes (or not) and plays with
the wire form: stray 0x7D and 0x7E, broken escapes, cuts, splices of two frames. The same seed
gives the same inputs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from shared.jt808 import (
    BATCH_BLIND_ZONE,
    BatchLocationUpload,
    Heartbeat,
    Jt808Error,
    LocationReport,
    MsgId,
    TerminalAuth,
    TerminalGeneralResponse,
    TerminalLogout,
    TerminalRegister,
    Version,
    datetime_to_bcd_time,
    decode_frame,
    encode_message,
    encode_subpackets,
    escape,
    unescape,
    xor_checksum,
)


def fuzz_phone(k: int = 0) -> str:
    """Canonical phone of fuzz terminal ``k`` (one per concurrent session: a second
    connection of a terminal would replace the first)."""
    return f"138001380{k % 100:02d}"


def phone_bcd(phone: str, version: int) -> str:
    """``phone`` padded to the header width of ``version``."""
    return phone.zfill(20 if version == 2019 else 12)


def vectors_path() -> Path:
    """``vectors.json`` beside the repository (or under ``$TTI_SHARED_DIR``)."""
    from tests.shared.jt808 import vectors_file

    return vectors_file()


def load_vector_frames(path: Path | None = None) -> list[bytes]:
    """Every frame and stream of the vector file, as on the wire (invalid ones included)."""
    path = path or vectors_path()
    if not path.is_file():
        raise FileNotFoundError(f"JT/T 808 vectors not found at {path} (set TTI_SHARED_DIR)")
    out = []
    for v in json.loads(path.read_text(encoding="utf-8")):
        if v["kind"] in ("frame", "stream"):
            out.append(bytes.fromhex(v["hex"]))
    return out


def retarget(frame: bytes, phone: str) -> bytes | None:
    """``frame`` sent by the fuzz terminal ``phone``: its phone replaced, the check code
    recomputed.

    Lets mutations of every real frame reach an authenticated session's paths (other phones
    stop at "phone mismatch"). None when the frame does not decode.
    """
    try:
        header = decode_frame(frame, verify_checksum=False).header
    except Jt808Error:
        return None
    content = bytearray(unescape(frame[1:-1])[:-1])
    if header.is_2019:
        content[5:15] = bytes.fromhex(phone_bcd(phone, 2019))
    else:
        content[4:10] = bytes.fromhex(phone_bcd(phone, 2013))
    return b"\x7e" + escape(bytes(content) + bytes((xor_checksum(content),))) + b"\x7e"


def _report(**over: int) -> LocationReport:
    values = dict(alarm=0, status=0x3, lat_e6=30_512_345, lon_e6=114_412_345, altitude_m=25,
                  speed_0_1kmh=653, direction_deg=87)
    values.update(over)
    return LocationReport(time_bcd=datetime_to_bcd_time(datetime.now(UTC).replace(microsecond=0)),
                          **values)


def session_frames(terminal: str) -> list[bytes]:
    """Fresh frames of the fuzz terminal ``terminal`` (times of now): a live session's."""
    frames: list[bytes] = []
    for version in (2013, 2019):
        v: Version = 2019 if version == 2019 else 2013
        phone = phone_bcd(terminal, v)

        def enc(mid: int, body: object, serial: int, _p: str = phone, _v: Version = v) -> bytes:
            return encode_message(mid, body, phone_bcd=_p, serial=serial,  # type: ignore[arg-type]
                                  version=_v)

        frames += [
            enc(MsgId.T_HEARTBEAT, Heartbeat(), 1),
            enc(MsgId.T_LOCATION, _report(), 2),
            enc(MsgId.T_LOCATION, _report(alarm=1, status=0x23), 3),  # encrypted, alarm
            enc(MsgId.T_LOCATION, _report(status=0, lat_e6=0, lon_e6=0), 4),  # no fix
            enc(MsgId.T_BATCH_LOCATION,
                BatchLocationUpload(BATCH_BLIND_ZONE, (_report(), _report(speed_0_1kmh=0x7E7D))),
                5),
            enc(MsgId.T_GENERAL_RESPONSE, TerminalGeneralResponse(7, 0x8300, 0), 6),
            enc(MsgId.T_AUTH, TerminalAuth("0123456789ABCDEF", "860000000000001", "1.0")
                if v == 2019 else TerminalAuth("0123456789ABCDEF"), 7),
            enc(MsgId.T_REGISTER, TerminalRegister(42, 100, "TTITS", "TTI-FUZZ", "T138000", 1,
                                                   "鄂A12345"), 8),
            enc(MsgId.T_LOGOUT, TerminalLogout(), 9),
        ]
        frames += encode_subpackets(
            MsgId.T_BATCH_LOCATION, BatchLocationUpload(0, tuple(_report() for _ in range(4))),
            phone_bcd=phone, first_serial=10, version=v, packet_size=50)
    return frames


def seed_corpus(vector_frames: list[bytes], phone: str | None = None) -> list[bytes]:
    """Real frames, the same retargeted to the fuzz terminal ``phone``, and its own fresh
    frames."""
    phone = phone or fuzz_phone()
    seeds = list(vector_frames)
    seeds += [r for r in (retarget(f, phone) for f in vector_frames) if r is not None]
    seeds += session_frames(phone)
    return seeds


class Mutator:
    """Turns seed frames into mutated inputs; ``Mutator(seed)`` always yields the same ones."""

    def __init__(self, seeds: list[bytes], seed: int) -> None:
        if not seeds:
            raise ValueError("no seed frames")
        self.seeds = seeds
        self.rng = random.Random(seed)

    def inputs(self, n: int) -> Iterator[bytes]:
        """``n`` mutated inputs."""
        for _ in range(n):
            yield self.mutate()

    def mutate(self) -> bytes:
        """One mutated input: usually one frame, sometimes several or a fragment."""
        rng = self.rng
        frame = rng.choice(self.seeds)
        if rng.random() < 0.05:
            return frame  # an unmutated frame now and then: the good path stays in the mix
        try:
            content = bytearray(unescape(frame[1:-1]))
        except Jt808Error:
            content = bytearray(frame[1:-1])
        fix = rng.random() < 0.6
        for _ in range(rng.randint(1, 3)):
            fix = self._content_op(content) and fix
        if fix and content:
            content[-1] = xor_checksum(bytes(content[:-1]))
        wire = escape(bytes(content)) if rng.random() < 0.92 else bytes(content)
        data = bytearray(b"\x7e" + wire + b"\x7e")
        if rng.random() < 0.3:
            self._wire_op(data)
        return bytes(data)

    def _content_op(self, c: bytearray) -> bool:
        """Mutate the unescaped frame; False when the check code must stay as it is."""
        rng = self.rng
        n = len(c)
        op = rng.randrange(14)
        if n == 0:
            c.extend(rng.randbytes(rng.randint(1, 24)))
            return True
        i = rng.randrange(n)
        if op == 0:  # bit flip
            c[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # interesting byte
            c[i] = rng.choice((0x00, 0xFF, 0x7E, 0x7D, 0x01, 0x02, 0x80, rng.randrange(256)))
        elif op == 2:  # truncate
            del c[i:]
        elif op == 3:  # delete a run
            del c[i : i + rng.randint(1, 16)]
        elif op == 4:  # insert random bytes
            c[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 5:  # duplicate a run (repeated extra items, counts that no longer match)
            j = min(n, i + rng.randint(1, 32))
            c[j:j] = c[i:j]
        elif op == 6 and n >= 4:  # body length lies
            attr = (c[2] << 8) | c[3]
            length = attr & 0x3FF
            length = rng.choice((0, 0x3FF, length + 1, max(0, length - 1), rng.randrange(1024)))
            attr = (attr & ~0x3FF) | (length & 0x3FF)
            c[2], c[3] = attr >> 8, attr & 0xFF
        elif op == 7 and n >= 3:  # split flag on/off (packet numbers appear or vanish)
            c[2] ^= 0x20
        elif op == 8 and n >= 3:  # version bit 14 (the 2013/2019 trap)
            c[2] ^= 0x40
        elif op == 9 and n >= 3:  # encryption bits 10-12
            c[2] ^= 1 << rng.randrange(2, 5)
        elif op == 10 and n >= 21:  # packet total / index words of either layout
            at = rng.choice((12, 14, 17, 19))
            value = rng.choice((0, 1, 2, 0xFFFF, rng.randrange(0x10000)))
            c[at], c[at + 1] = value >> 8, value & 0xFF
        elif op == 11:  # the module that drops its check byte
            del c[-1]
            return False
        elif op == 12 and n > 16:  # a count or item length inside the body lies
            at = rng.randrange(12, n - 1)
            c[at] = rng.choice((0, 1, 0xFF, (c[at] + 1) & 0xFF, (c[at] - 1) & 0xFF))
        elif n >= 2:  # message id: unknown, platform-side or another terminal message
            c[0], c[1] = rng.choice(((0x00, 0x01), (0x02, 0x00), (0x07, 0x04), (0x01, 0x00),
                                     (0x01, 0x02), (0x80, 0x01), (rng.randrange(256),
                                                                  rng.randrange(256))))
        return True

    def _wire_op(self, d: bytearray) -> None:
        """Play with the escaped wire form."""
        rng = self.rng
        i = rng.randrange(1, max(2, len(d) - 1))
        op = rng.randrange(7)
        if op == 0:  # 0x7D followed by anything
            d[i:i] = bytes((0x7D, rng.randrange(256)))
        elif op == 1:  # a stray flag: the frame splits in two
            d[i:i] = b"\x7e"
        elif op == 2:  # an escape pair loses its second byte
            at = d.find(b"\x7d", 1)
            if at > 0 and at + 1 < len(d):
                del d[at + 1]
        elif op == 3:  # the closing flag goes missing: the next frame's flag closes it
            del d[-1]
        elif op == 4:  # two frames in one write
            d.extend(rng.choice(self.seeds))
        elif op == 5:  # cut mid-frame
            del d[i:]
        else:  # junk before the frame
            d[0:0] = rng.randbytes(rng.randint(1, 64))
