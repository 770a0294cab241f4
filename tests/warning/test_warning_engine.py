"""The warning engine on the real memory bus: statuses, raise, update, clear, staleness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from services.warning.app import WarningEngine
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import load_config
from shared.events import ROAD_STATUS, SEGMENT_SPEED, WARNING, RoadStatus, SegmentSpeed, Warning

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus(partitions=2)
    await b.start()
    yield b
    await b.close()


def speed(minute: int, kmh: float | None, sid: str = "7:1:2") -> SegmentSpeed:
    return SegmentSpeed(segment_id=sid, window_start=T0 + timedelta(minutes=minute),
                        observed_at=T0 + timedelta(minutes=minute + 1), speed_kmh=kmh,
                        sample_count=4, free_flow_kmh=60.0, road_class="primary",
                        road_name="解放大道", lon=114.3, lat=30.5)


async def _collect(bus: MemoryBus) -> tuple[list[RoadStatus], list[Warning]]:
    statuses: list[RoadStatus] = []
    warnings: list[Warning] = []

    async def on_status(env: Envelope[RoadStatus]) -> None:
        statuses.append(env.payload)

    async def on_warning(env: Envelope[Warning]) -> None:
        warnings.append(env.payload)

    await bus.subscribe(ROAD_STATUS, on_status, durable="t")
    await bus.subscribe(WARNING, on_warning, durable="t")
    return statuses, warnings


async def _feed(bus: MemoryBus, engine: WarningEngine, *events: SegmentSpeed) -> None:
    sub = await bus.subscribe(SEGMENT_SPEED, engine.on_speed, durable="warning")
    for e in events:
        await bus.publish(SEGMENT_SPEED, e)
    await asyncio.sleep(0.05)
    await sub.stop()


async def test_severe_congestion_raises_one_warning_and_recovery_clears_it(bus: MemoryBus) -> None:
    statuses, warnings = await _collect(bus)
    engine = WarningEngine(load_config({}), bus)
    await _feed(bus, engine, speed(0, 45.0), speed(1, 8.0), speed(2, 6.0), speed(3, 50.0))
    await asyncio.sleep(0.05)
    assert [s.level for s in statuses] == [2, 5, 5, 1]
    assert all(s.source == "probe" and s.sample_count == 4 for s in statuses)
    ids = {w.warning_id for w in warnings}
    assert len(ids) == 1, "one incident, one warning id through its lifecycle"
    assert [w.status for w in warnings] == ["active", "active", "cleared"]
    assert warnings[0].kind == "congestion" and "解放大道" in warnings[0].headline
    assert warnings[-1].details["cleared_because"] == "recovered"


async def test_moderate_congestion_keeps_the_warning_open(bus: MemoryBus) -> None:
    _, warnings = await _collect(bus)
    engine = WarningEngine(load_config({}), bus)
    await _feed(bus, engine, speed(0, 8.0), speed(1, 20.0))
    await asyncio.sleep(0.05)
    assert [w.status for w in warnings] == ["active", "active"]
    assert warnings[-1].level == 4


async def test_old_window_redelivered_after_newer_is_ignored(bus: MemoryBus) -> None:
    statuses, _ = await _collect(bus)
    engine = WarningEngine(load_config({}), bus)
    await _feed(bus, engine, speed(2, 50.0), speed(1, 5.0))
    await asyncio.sleep(0.05)
    assert [s.level for s in statuses] == [1]


async def test_stale_segment_reports_no_data_and_clears_its_warning(bus: MemoryBus) -> None:
    statuses, warnings = await _collect(bus)
    engine = WarningEngine(load_config({}, speed_window_s=60), bus)
    await _feed(bus, engine, speed(0, 5.0))
    await engine.expire_stale(T0 + timedelta(minutes=2))
    await asyncio.sleep(0.05)
    assert statuses[-1].level == 5 and statuses[-1].source == "probe", "not stale yet"
    await engine.expire_stale(T0 + timedelta(minutes=10))
    await asyncio.sleep(0.05)
    assert statuses[-1].source == "none" and statuses[-1].level is None
    assert statuses[-1].sample_count == 0 and statuses[-1].speed_kmh is None
    assert warnings[-1].status == "cleared"
    assert warnings[-1].details["cleared_because"] == "no_data"


async def test_one_slow_vehicle_or_a_slow_minor_road_raises_no_warning(bus: MemoryBus) -> None:
    statuses, warnings = await _collect(bus)
    engine = WarningEngine(load_config({}), bus)
    lone = SegmentSpeed(segment_id="1:1:2", window_start=T0, observed_at=T0, speed_kmh=5.0,
                        sample_count=1, free_flow_kmh=60.0, road_class="primary")
    lane = SegmentSpeed(segment_id="1:2:3", window_start=T0, observed_at=T0, speed_kmh=9.0,
                        sample_count=6, free_flow_kmh=15.0, road_class="service")
    await _feed(bus, engine, lone, lane)
    await asyncio.sleep(0.05)
    assert [s.level for s in statuses] == [5, 5]
    assert warnings == []
