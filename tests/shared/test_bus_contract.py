"""The bus contract: the same tests run against the memory backend and real NATS JetStream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest

from shared.bus import EventBus, bus_from_url
from shared.codec import Envelope
from shared.errors import DecodeError, TransientError
from shared.events import SEGMENT_SPEED, VEHICLE_POSITION, SegmentSpeed, VehiclePosition

BusFactory = Callable[[], Awaitable[EventBus]]


@pytest.fixture(params=["memory", "memory-wire", "nats"])
async def make_bus(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[BusFactory]:
    """A factory of started buses sharing one backend namespace (stream/prefix) per test."""
    made: list[EventBus] = []
    if request.param.startswith("memory"):
        # "memory-wire" puts the JSON encoding in the loop, as JetStream does.
        shared = bus_from_url("memory://", partitions=4, nak_delay_s=0.05,
                              serialize=request.param == "memory-wire")

        async def factory() -> EventBus:
            # Every memory "replica" is the same in-process bus.
            if not made:
                await shared.start()
                made.append(shared)
            return shared
    else:
        url = request.getfixturevalue("nats_url")

        async def factory() -> EventBus:
            bus = bus_from_url(
                url,
                partitions=4,
                prefix=unique_name,
                stream=unique_name.upper(),
                nak_delay_s=0.05,
                ack_wait_s=2.0,
            )
            await bus.start()
            made.append(bus)
            return bus

    yield factory
    for bus in made:
        await bus.close()
    if request.param == "nats" and made:
        await _delete_stream(request.getfixturevalue("nats_url"), unique_name.upper())


async def _delete_stream(url: str, stream: str) -> None:
    import nats

    nc = await nats.connect(url)
    with contextlib.suppress(Exception):  # cleanup only
        await nc.jetstream().delete_stream(stream)
    await nc.close()


def _pos(vid: str, i: int) -> VehiclePosition:
    return VehiclePosition(
        vehicle_id=vid,
        lon=114.3 + i * 1e-5,
        lat=30.5,
        observed_at=datetime(2026, 11, 28, 12, 0, i % 60, tzinfo=UTC),
        speed_kmh=float(i),
    )


async def _wait_for(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_published_event_arrives_intact(make_bus: BusFactory) -> None:
    bus = await make_bus()
    got: list[Envelope[SegmentSpeed]] = []

    async def handler(env: Envelope[SegmentSpeed]) -> None:
        got.append(env)

    await bus.subscribe(SEGMENT_SPEED, handler, durable="contract")
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    sent = SegmentSpeed(
        segment_id="1:2:3",
        window_start=now,
        observed_at=now,
        speed_kmh=42.5,
        sample_count=3,
        confidence=0.5,
    )
    eid = await bus.publish(SEGMENT_SPEED, sent, correlation_id="corr-1")
    await _wait_for(lambda: len(got) == 1)
    assert got[0].payload == sent
    assert got[0].event_id == eid
    assert got[0].correlation_id == "corr-1"


async def test_partitions_keep_per_vehicle_order_and_split_by_replica(make_bus: BusFactory) -> None:
    bus_a = await make_bus()
    bus_b = await make_bus()
    seen_a: list[VehiclePosition] = []
    seen_b: list[VehiclePosition] = []

    async def on_a(env: Envelope[VehiclePosition]) -> None:
        seen_a.append(env.payload)

    async def on_b(env: Envelope[VehiclePosition]) -> None:
        seen_b.append(env.payload)

    # Replica 0 of 2 takes even partitions, replica 1 the odd ones.
    await bus_a.subscribe(VEHICLE_POSITION, on_a, durable="order", partitions=[0, 2])
    await bus_b.subscribe(VEHICLE_POSITION, on_b, durable="order", partitions=[1, 3])
    vehicles = [f"1380000{n:04d}" for n in range(12)]
    for i in range(20):
        for vid in vehicles:
            await bus_a.publish(VEHICLE_POSITION, _pos(vid, i), key=vid)
    await _wait_for(lambda: len(seen_a) + len(seen_b) == 20 * len(vehicles))
    for seen, parts in ((seen_a, {0, 2}), (seen_b, {1, 3})):
        for vid in {p.vehicle_id for p in seen}:
            assert bus_a.partition_for(VEHICLE_POSITION, vid) in parts
            speeds = [p.speed_kmh for p in seen if p.vehicle_id == vid]
            assert speeds == [float(i) for i in range(20)], "per-vehicle order broken"
    assert seen_a and seen_b


async def test_each_group_gets_every_event_once(make_bus: BusFactory) -> None:
    bus = await make_bus()
    g1: list[str] = []
    g2: list[str] = []

    async def h1(env: Envelope[SegmentSpeed]) -> None:
        g1.append(env.payload.segment_id)

    async def h2(env: Envelope[SegmentSpeed]) -> None:
        g2.append(env.payload.segment_id)

    await bus.subscribe(SEGMENT_SPEED, h1, durable="g1")
    await bus.subscribe(SEGMENT_SPEED, h2, durable="g2")
    now = datetime.now(UTC)
    for n in range(50):
        await bus.publish(
            SEGMENT_SPEED,
            SegmentSpeed(
                segment_id=f"s{n}",
                window_start=now,
                observed_at=now,
                speed_kmh=None,
                sample_count=0,
            ),
        )
    await _wait_for(lambda: len(g1) == 50 and len(g2) == 50)
    await asyncio.sleep(0.2)
    assert sorted(g1) == sorted(g2) == sorted(f"s{n}" for n in range(50))


async def test_transient_failure_is_redelivered_and_decode_error_is_not(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    attempts: dict[str, int] = {}
    done: list[str] = []

    async def handler(env: Envelope[SegmentSpeed]) -> None:
        sid = env.payload.segment_id
        attempts[sid] = attempts.get(sid, 0) + 1
        if sid == "flaky" and attempts[sid] < 3:
            raise TransientError("database away")
        if sid == "poison":
            raise DecodeError("never processable")
        done.append(sid)

    await bus.subscribe(SEGMENT_SPEED, handler, durable="retry")
    now = datetime.now(UTC)
    for sid in ("flaky", "poison", "fine"):
        await bus.publish(
            SEGMENT_SPEED,
            SegmentSpeed(
                segment_id=sid, window_start=now, observed_at=now, speed_kmh=10.0, sample_count=1
            ),
        )
    await _wait_for(lambda: "flaky" in done and "fine" in done)
    await asyncio.sleep(0.5)
    assert attempts["flaky"] == 3
    assert attempts["poison"] == 1
    assert "poison" not in done


async def test_close_drains_in_flight_work(make_bus: BusFactory) -> None:
    bus = await make_bus()
    handled: list[int] = []

    async def slow(env: Envelope[VehiclePosition]) -> None:
        await asyncio.sleep(0.001)
        handled.append(int(env.payload.speed_kmh or 0))

    sub = await bus.subscribe(VEHICLE_POSITION, slow, durable="drain")
    for i in range(100):
        await bus.publish(VEHICLE_POSITION, _pos("13800000001", i), key="13800000001")
    await _wait_for(lambda: len(handled) >= 1)
    await sub.stop()
    # Whatever was handled was handled once, in order.
    assert handled == list(range(len(handled)))
