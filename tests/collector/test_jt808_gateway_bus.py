"""The acknowledgment contract: 0x8001 only after the bus took the event; result 1 if it did not."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from shared.bus import EventBus, Handler, Subscription
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.errors import BusError
from shared.events import VEHICLE_POSITION, Subject, VehiclePosition
from shared.jt808 import (
    BATCH_NORMAL,
    RESULT_FAILURE,
    RESULT_OK,
    BatchLocationUpload,
    Heartbeat,
    MsgId,
)
from tests.collector.jt808_support import hours_ago, metric, report_at, running_gateway

T = TypeVar("T")


class GatedBus(EventBus):
    """A memory bus whose ``publish`` waits for ``gate`` (or raises BusError while ``down``)."""

    def __init__(self) -> None:
        super().__init__(partitions=4)
        self.inner = MemoryBus(partitions=4)
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        self.fail_after: int | None = None  # publishes to let through before going down
        self.waiting = 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, subject: Subject[T], payload: T, *, key: str | None = None,
                      correlation_id: str | None = None, event_id: str | None = None) -> str:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.down = True
            self.fail_after -= 1
        if self.down:
            raise BusError("bus is down")
        return await self.inner.publish(subject, payload, key=key,
                                        correlation_id=correlation_id, event_id=event_id)

    async def subscribe(self, subject: Subject[T], handler: Handler[T], *, durable: str,
                        partitions: Sequence[int] | None = None) -> Subscription:
        return await self.inner.subscribe(subject, handler, durable=durable,
                                          partitions=partitions)


async def test_no_ack_before_the_bus_took_the_report(tmp_path: Path) -> None:
    bus = GatedBus()
    async with running_gateway(tmp_path, bus=bus) as h:
        t = await h.terminal()
        await t.login()
        bus.gate.clear()
        serial = await t.send(MsgId.T_LOCATION, report_at())
        await h.wait_for(lambda: bus.waiting == 1)
        await t.expect_silence(0.2)
        assert h.positions == []
        bus.gate.set()
        ack = await t.reply()
        assert (ack.reply_serial, ack.result) == (serial, RESULT_OK)
        assert len(await h.wait_positions(1)) == 1


async def test_frames_behind_a_blocked_publish_wait_their_turn(tmp_path: Path) -> None:
    bus = GatedBus()
    async with running_gateway(tmp_path, bus=bus) as h:
        t = await h.terminal()
        await t.login()
        bus.gate.clear()
        s1 = await t.send(MsgId.T_LOCATION, report_at(hours_ago(2)))
        s2 = await t.send(MsgId.T_HEARTBEAT, Heartbeat())
        s3 = await t.send(MsgId.T_LOCATION, report_at(hours_ago(1)))
        await h.wait_for(lambda: bus.waiting == 1)
        await t.expect_silence(0.2)  # the heartbeat's answer keeps the order too
        bus.gate.set()
        acks = [await t.reply() for _ in range(3)]
        assert [(a.reply_serial, a.result) for a in acks] == [(s1, 0), (s2, 0), (s3, 0)]


async def test_memory_bus_backpressure_holds_the_ack(tmp_path: Path) -> None:
    # A one-slot queue and a consumer stuck in its handler: the third report cannot be taken.
    bus = MemoryBus(partitions=1, queue_size=1)
    release = asyncio.Event()
    seen: list[VehiclePosition] = []

    async def stuck(env: Envelope[VehiclePosition]) -> None:
        seen.append(env.payload)
        await release.wait()

    await bus.start()
    await bus.subscribe(VEHICLE_POSITION, stuck, durable="slow")
    async with running_gateway(tmp_path, bus=bus, subscribe=False) as h:
        t = await h.terminal()
        await t.login()
        serials = [await t.send(MsgId.T_LOCATION, report_at(hours_ago(3 - i))) for i in range(3)]
        # #1 is in the handler, #2 fills the queue: both taken, both acknowledged.
        assert [(await t.reply()).reply_serial for _ in range(2)] == serials[:2]
        await t.expect_silence(0.3)
        release.set()
        ack = await t.reply()
        assert (ack.reply_serial, ack.result) == (serials[2], RESULT_OK)
        await h.wait_for(lambda: len(seen) == 3)


async def test_bus_error_gives_result_1_and_the_resend_goes_through(tmp_path: Path) -> None:
    bus = GatedBus()
    async with running_gateway(tmp_path, bus=bus) as h:
        t = await h.terminal()
        await t.login()
        before = metric("tti_jt808_positions_total", outcome="bus_unavailable")
        bus.down = True
        report = report_at(hours_ago(1))
        serial = await t.send(MsgId.T_LOCATION, report)
        ack = await t.reply()
        assert (ack.reply_serial, ack.result) == (serial, RESULT_FAILURE)
        assert metric("tti_jt808_positions_total", outcome="bus_unavailable") == before + 1
        await asyncio.sleep(0.05)
        assert h.positions == []
        bus.down = False  # the terminal kept the report and sends it again
        await t.send(MsgId.T_LOCATION, report)
        assert (await t.reply()).result == RESULT_OK
        assert len(await h.wait_positions(1)) == 1


async def test_bus_failing_midway_through_a_batch(tmp_path: Path) -> None:
    bus = GatedBus()
    async with running_gateway(tmp_path, bus=bus) as h:
        t = await h.terminal()
        await t.login()
        batch = BatchLocationUpload(BATCH_NORMAL, tuple(report_at(hours_ago(3 - i))
                                                        for i in range(3)))
        bus.fail_after = 1
        before = metric("tti_jt808_positions_total", outcome="bus_unavailable")
        await t.send(MsgId.T_BATCH_LOCATION, batch)
        assert (await t.reply()).result == RESULT_FAILURE
        assert metric("tti_jt808_positions_total", outcome="bus_unavailable") == before + 2
        first = await h.wait_positions(1)
        bus.down, bus.fail_after = False, None
        await t.send(MsgId.T_BATCH_LOCATION, batch)
        assert (await t.reply()).result == RESULT_OK
        await h.wait_positions(4)
        # The resent first item carries the same event id, so JetStream would drop it.
        ids = [e.event_id for e in h.positions]
        assert ids[0] == ids[1] and len(set(ids)) == 3
        assert first[0].observed_at == h.positions[1].payload.observed_at


async def test_unexpected_publish_error_is_result_1_too(tmp_path: Path) -> None:
    class Broken(GatedBus):
        async def publish(self, subject: Subject[T], payload: T, **kwargs: Any) -> str:
            raise RuntimeError("bug in a backend")

    async with running_gateway(tmp_path, bus=Broken()) as h:
        t = await h.terminal()
        await t.login()
        await t.send(MsgId.T_LOCATION, report_at())
        assert (await t.reply()).result == RESULT_FAILURE
        await t.send(MsgId.T_HEARTBEAT, Heartbeat())
        assert (await t.reply()).result == RESULT_OK
