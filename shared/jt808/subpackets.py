"""Reassembly of split JT/T 808 messages (attribute bit 13), with bounded memory.

Packets are grouped by (terminal, message id, total) and placed by their index, never by
serial arithmetic: a real device numbered its two packets 1233 and 1250 (digest section 2).
Missing packets can be requested with 0x8003 (:meth:`SubpacketAssembler.resend_request`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from shared.jt808.errors import BodyError
from shared.jt808.header import Header
from shared.jt808.messages import ResendRequest


class AssemblyKey(NamedTuple):
    """Identity of one split message: canonical terminal phone, message id, packet total."""

    terminal_phone: str
    msg_id: int
    pkg_total: int

    @classmethod
    def of(cls, header: Header) -> AssemblyKey:
        """Key of the message ``header`` (a packet header) belongs to."""
        return cls(header.terminal_phone, header.msg_id, header.pkg_total or 0)


@dataclass(slots=True)
class _Assembly:
    parts: dict[int, bytes] = field(default_factory=dict)
    serials: dict[int, int] = field(default_factory=dict)
    size: int = 0
    updated: float = 0.0


class SubpacketAssembler:
    """Collects packets until a message is complete; bad input cannot grow memory unbounded.

    At most ``max_assemblies`` messages are in flight (the least recently updated is evicted
    for a new one), each at most ``max_assembly_bytes`` (exceeding it drops the message and
    raises ``BodyError("too_large")``), all together at most ``max_total_bytes`` (least
    recently updated ones are evicted). Messages idle longer than ``timeout_s`` are dropped on
    the next :meth:`add` or :meth:`expire`. One instance per connection or one per server both
    work (the key holds the terminal).
    """

    def __init__(self, *, timeout_s: float = 60.0, max_assemblies: int = 64,
                 max_assembly_bytes: int = 2 * 1024 * 1024,
                 max_total_bytes: int = 8 * 1024 * 1024) -> None:
        if max_assemblies < 1 or max_assembly_bytes < 1 or timeout_s <= 0:
            raise ValueError("limits must be positive")
        if max_assembly_bytes > max_total_bytes:
            raise ValueError("max_assembly_bytes cannot exceed max_total_bytes")
        self.timeout_s = timeout_s
        self.max_assemblies = max_assemblies
        self.max_assembly_bytes = max_assembly_bytes
        self.max_total_bytes = max_total_bytes
        # Least recently updated first, so expiry and eviction look only at the front.
        self._assemblies: OrderedDict[AssemblyKey, _Assembly] = OrderedDict()
        self.total_bytes = 0
        self.completed = 0
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._assemblies)

    def __contains__(self, key: object) -> bool:
        return key in self._assemblies

    def add(self, header: Header, body: bytes, now: float) -> bytes | None:
        """Store one packet; return the whole body once every index 1..total is present.

        ``now`` is a monotonic time in seconds. A packet index seen before replaces the earlier
        bytes (a resend). Raises ``BodyError("bad_subpackage")`` for a header that is not a
        valid packet, ``BodyError("too_large")`` when the message outgrows its limit.
        """
        total, index = header.pkg_total, header.pkg_index
        if not header.subpackage or total is None or index is None or not 1 <= index <= total:
            raise BodyError("bad_subpackage",
                            f"packet {index} of {total} is not a valid packet", header=header)
        self.expire(now)
        if total == 1:
            self.completed += 1
            return bytes(body)
        key = AssemblyKey.of(header)
        assemblies = self._assemblies
        assembly = assemblies.get(key)
        if assembly is None:
            if len(assemblies) >= self.max_assemblies:
                self._evict_oldest()
            assembly = assemblies[key] = _Assembly()
        else:
            assemblies.move_to_end(key)
        old = assembly.parts.get(index)
        grow = len(body) - (len(old) if old is not None else 0)
        if assembly.size + grow > self.max_assembly_bytes:
            self.discard(key)
            raise BodyError("too_large", f"split message over {self.max_assembly_bytes} bytes",
                            header=header)
        assembly.parts[index] = bytes(body)
        assembly.serials[index] = header.serial
        assembly.size += grow
        assembly.updated = now
        self.total_bytes += grow
        if len(assembly.parts) == total:
            del assemblies[key]
            self.total_bytes -= assembly.size
            self.completed += 1
            parts = assembly.parts
            return b"".join([parts[i] for i in range(1, total + 1)])
        while self.total_bytes > self.max_total_bytes:
            self._evict_oldest()
        return None

    def missing(self, key: AssemblyKey) -> list[int]:
        """Packet indices not received yet (empty for an unknown key)."""
        assembly = self._assemblies.get(key)
        if assembly is None:
            return []
        return [i for i in range(1, key.pkg_total + 1) if i not in assembly.parts]

    def first_serial(self, key: AssemblyKey) -> int | None:
        """Serial number of packet 1, which a 0x8003 request names; None until it arrives."""
        assembly = self._assemblies.get(key)
        return None if assembly is None else assembly.serials.get(1)

    def resend_request(self, key: AssemblyKey) -> ResendRequest | None:
        """A 0x8003 body asking for the missing packets, if packet 1 (its serial) is known."""
        serial = self.first_serial(key)
        if serial is None:
            return None
        return ResendRequest(serial, tuple(self.missing(key)))

    def idle(self, now: float, after_s: float) -> list[AssemblyKey]:
        """Keys of messages with no new packet for ``after_s`` seconds (to ask for resends)."""
        return [k for k, a in self._assemblies.items() if now - a.updated >= after_s]

    def expire(self, now: float) -> list[AssemblyKey]:
        """Drop messages idle longer than ``timeout_s``; return their keys."""
        assemblies = self._assemblies
        dropped = []
        while assemblies:
            key, assembly = next(iter(assemblies.items()))
            if now - assembly.updated <= self.timeout_s:
                break
            self.discard(key)
            dropped.append(key)
        self.expired += len(dropped)
        return dropped

    def discard(self, key: AssemblyKey) -> None:
        """Forget a message (no error if unknown)."""
        assembly = self._assemblies.pop(key, None)
        if assembly is not None:
            self.total_bytes -= assembly.size

    def _evict_oldest(self) -> None:
        key = next(iter(self._assemblies))
        self.discard(key)
        self.evicted += 1
