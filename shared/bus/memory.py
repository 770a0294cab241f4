"""In-memory bus: real queues for the embedded run, same semantics as JetStream.

Envelopes are handed over as objects: payloads are frozen dataclasses, and skipping the JSON round
trip roughly halves the cost of a report on the embedded ingest path (bench/bench_jt808_ingest.py).
``serialize=True`` encodes on publish and decodes on delivery exactly as JetStream does, for
tests that want the wire in the loop. Each (durable group, wire subject) has one bounded queue
and one worker, so a partition is delivered in order; ``publish`` waits when a queue is full
(backpressure instead of unbounded memory). Messages published before any subscription exists
are not retained.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, TypeVar

from shared.bus.base import (
    EventBus,
    Handler,
    Outcome,
    Subscription,
    published_counter,
    run_handler,
)
from shared.codec import Envelope, decode_envelope, encode_envelope
from shared.errors import BusError, DecodeError
from shared.events import Subject

T = TypeVar("T")

_Item = tuple["bytes | Envelope[Any]", int]  # envelope (encoded or not), deliveries so far


class _Consumer:
    def __init__(self, bus: MemoryBus, subject: Subject[Any], wire: str, handler: Handler[Any],
                 maxsize: int) -> None:
        self.bus = bus
        self.subject = subject
        self.wire = wire
        self.handler = handler
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize)
        self.pending_retries: set[asyncio.TimerHandle] = set()
        self.task = asyncio.create_task(self._run(), name=f"memory-consumer:{wire}")

    async def _run(self) -> None:
        while True:
            raw, delivered = await self.queue.get()
            env: Envelope[Any] | DecodeError
            if isinstance(raw, bytes):
                try:
                    env = decode_envelope(self.subject, raw)
                except DecodeError as exc:
                    env = exc
            else:
                env = raw
            outcome = await run_handler(self.handler, env, self.subject, delivered + 1,
                                        self.bus.max_deliver)
            self.queue.task_done()
            if outcome == Outcome.NAK:
                self._retry_later(raw, delivered + 1)

    def _retry_later(self, raw: bytes | Envelope[Any], delivered: int) -> None:
        loop = asyncio.get_running_loop()

        def put() -> None:
            self.pending_retries.discard(handle)
            try:
                self.queue.put_nowait((raw, delivered))
            except asyncio.QueueFull:  # retry again rather than lose it
                self._retry_later(raw, delivered)

        handle = loop.call_later(self.bus.nak_delay_s, put)
        self.pending_retries.add(handle)

    async def drain(self) -> None:
        await self.queue.join()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        for handle in self.pending_retries:
            handle.cancel()


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, consumers: list[_Consumer]) -> None:
        self.bus = bus
        self.consumers = consumers

    async def stop(self) -> None:
        if self in self.bus._subs:
            self.bus._subs.remove(self)
        for c in self.consumers:
            self.bus._detach(c)
        for c in self.consumers:
            await c.drain()


class MemoryBus(EventBus):
    """The embedded bus: one process, bounded queues, durable groups as in-process consumers."""

    def __init__(self, *, queue_size: int = 100_000, serialize: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.queue_size = queue_size
        self.serialize = serialize
        # wire subject -> durable name -> consumers of that group (round-robin when several)
        self._groups: dict[str, dict[str, list[_Consumer]]] = {}
        self._rr: dict[tuple[str, str], int] = {}
        self._subs: list[_MemorySubscription] = []
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        subs, self._subs = self._subs, []
        for s in subs:
            await s.stop()
        self._closed = True

    @property
    def connected(self) -> bool:
        return not self._closed

    async def publish(self, subject: Subject[T], payload: T, *, key: str | None = None,
                      correlation_id: str | None = None, event_id: str | None = None) -> str:
        if self._closed:
            raise BusError("bus is closed")
        wire = self.wire_subject(subject, self.partition_for(subject, key))
        env = self.envelope(subject, payload, correlation_id=correlation_id, event_id=event_id)
        raw: bytes | Envelope[Any] = encode_envelope(env) if self.serialize else env
        for durable, consumers in self._groups.get(wire, {}).items():
            if not consumers:
                continue
            i = self._rr.get((wire, durable), 0)
            self._rr[(wire, durable)] = i + 1
            await consumers[i % len(consumers)].queue.put((raw, 0))
        published_counter(subject.name).inc()
        return env.event_id

    async def subscribe(self, subject: Subject[T], handler: Handler[T], *, durable: str,
                        partitions: Sequence[int] | None = None) -> Subscription:
        if subject.partitioned:
            parts = range(self.partitions) if partitions is None else partitions
            wires = [self.wire_subject(subject, p) for p in parts]
        else:
            wires = [self.wire_subject(subject)]
        consumers = []
        for wire in wires:
            c = _Consumer(self, subject, wire, handler, self.queue_size)
            self._groups.setdefault(wire, {}).setdefault(durable, []).append(c)
            consumers.append(c)
        sub = _MemorySubscription(self, consumers)
        self._subs.append(sub)
        return sub

    def _detach(self, consumer: _Consumer) -> None:
        for groups in self._groups.values():
            for members in groups.values():
                if consumer in members:
                    members.remove(consumer)
