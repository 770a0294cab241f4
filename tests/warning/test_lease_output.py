"""What a standby sends when it takes over: the warnings a dead holder decided but never sent.

Two replicas compute the same versions; only the lease holder publishes. A holder that dies
may have decided a warning's version 1 and died before it went out: the standby, which held
it back, sends it on taking over, before anything else, so no version is missing from the
stream (the replicas-killed run saw a night-driving alarm with only its version 2).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.warning.service import LeaseOutput
from services.warning.workflow.store import WorkflowStore
from shared.bus.lease import MemoryLease, MemoryLeaseRegistry
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.db import database_from_url
from shared.events import (
    ROAD_STATUS,
    WARNING,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    RoadStatus,
    Warning,
    WarningKind,
    WarningStatus,
)
from tests.publisher import wait_for

T0 = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)


def warning(version: int, status: WarningStatus = WarningStatus.RAISED) -> Warning:
    return Warning(warning_id="night:1391:t0", kind=WarningKind.VEHICLE_ALARM, status=status,
                   category=CapCategory.TRANSPORT, severity=CapSeverity.SEVERE,
                   urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
                   msg_type=CapMsgType.ALERT if version == 1 else CapMsgType.UPDATE,
                   cause="night_driving", started_at=T0,
                   updated_at=T0 + timedelta(minutes=version), headline="夜间行驶",
                   version=version)


def event_id(w: Warning) -> str:
    return f"{w.warning_id}:{w.version}"


@dataclass
class Pair:
    bus: MemoryBus
    store: WorkflowStore
    holder: MemoryLease
    standby: MemoryLease
    sent: list[Any]

    def output(self, lease: MemoryLease, **kw: Any) -> LeaseOutput:
        return LeaseOutput(self.bus, lease, self.store, **kw)

    async def take_over(self) -> None:
        """The holder goes (its lease handed on); the standby holds it."""
        await self.holder.stop()
        await asyncio.wait_for(self.standby.wait_held(), 5)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    bus = MemoryBus(partitions=2)
    await bus.start()
    store = WorkflowStore(database_from_url(f"sqlite:///{tmp_path}/tti.db"))
    await store.open()
    sent: list[Any] = []

    async def keep(env: Envelope[Any]) -> None:
        sent.append(env.payload)

    await bus.subscribe(WARNING, keep, durable="test")
    await bus.subscribe(ROAD_STATUS, keep, durable="test")
    registry = MemoryLeaseRegistry()
    holder = MemoryLease("warning", "warning-0", registry=registry)
    standby = MemoryLease("warning", "warning-1", registry=registry)
    await holder.start()
    await standby.start()
    assert holder.held and not standby.held
    try:
        yield Pair(bus, store, holder, standby, sent)
    finally:
        await standby.stop()
        await holder.stop()
        await store.close()
        await bus.close()


async def test_the_standby_sends_the_versions_the_dead_holder_never_did(pair: Pair) -> None:
    out = pair.output(pair.standby)
    v1, v2 = warning(1), warning(2, WarningStatus.ACKNOWLEDGED)
    status = RoadStatus(segment_id="1:0:1", level=5, level_name="严重拥堵", speed_kmh=4.0,
                        free_flow_kmh=60.0, observed_at=T0, sample_count=4, source="live")
    # The standby computes what the holder does, and sends nothing.
    await out.publish(WARNING, v1, event_id=event_id(v1))
    await out.publish(ROAD_STATUS, status, event_id="1:0:1@t0")
    await out.publish(WARNING, v2, event_id=event_id(v2))
    await asyncio.sleep(0.1)
    assert pair.sent == []
    # The holder dies having sent neither version; the standby takes over.
    await pair.take_over()
    assert await out.catch_up() == 2
    await wait_for(lambda: len(pair.sent) >= 2, within_s=5)
    await asyncio.sleep(0.1)
    assert [(w.warning_id, w.version) for w in pair.sent] == [(v1.warning_id, 1),
                                                             (v2.warning_id, 2)], \
        "both versions, in order; the road status is said again by the next window"
    logged = await pair.store.log_after(0)
    assert [e.warning.version for e in logged] == [1, 2]
    assert (await pair.store.find_warning(v1.warning_id)) == v2
    assert await out.catch_up() == 0, "held back once"


async def test_what_the_holder_did_send_is_logged_once(pair: Pair) -> None:
    v1 = warning(1)
    await pair.output(pair.holder).publish(WARNING, v1, event_id=event_id(v1))
    out = pair.output(pair.standby)
    await out.publish(WARNING, v1, event_id=event_id(v1))
    await pair.take_over()
    assert await out.catch_up() == 1
    await wait_for(lambda: len(pair.sent) >= 2, within_s=5)
    assert [e.warning.version for e in await pair.store.log_after(0)] == [1], \
        "the workflow store keeps a message once by its event id"


async def test_only_the_last_hold_window_is_kept(pair: Pair) -> None:
    out = pair.output(pair.standby, hold_s=0.2)
    old, new = warning(1), warning(2)
    await out.publish(WARNING, old, event_id=event_id(old))
    await asyncio.sleep(0.4)  # older than the window: the holder was alive to send it
    await out.publish(WARNING, new, event_id=event_id(new))
    await pair.take_over()
    assert await out.catch_up() == 1
    await wait_for(lambda: len(pair.sent) >= 1, within_s=5)
    assert pair.sent == [new]
