"""Bigdata publishes 两客一危 positions on their roads (``tti.position.matched.<p>``), as deployed.

The `Bigdata` service on a real MemoryBus (one that can refuse publishes for a while) and the
SQLite geodatabase of the demo region: a dangerous-goods truck and a taxi drive the same
residential streets (no ``maxspeed`` in OSM, so the statutory limit of 实施条例 §45 applies);
only the truck's fixes come out, each once, on its segment, with the statutory source, in the
truck's partition, whatever the bus refused in between.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.bigdata.app import Bigdata
from services.bigdata.store import GeoStore, store_from_url
from services.bigdata.traces import NoiseModel, Trace, trace_vehicle
from services.simulator.world import Vehicle, World
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.events import (
    MATCHED_POSITION,
    TWO_PASSENGER_ONE_DANGER,
    VEHICLE_POSITION,
    MatchedPosition,
    VehiclePosition,
    partition_of,
)
from shared.roadnet import RoadNetwork, speed_limit
from tests.bigdata.test_bigdata_live import (  # noqa: F401 - fixtures used by name
    PARTITIONS,
    T0,
    Clock,
    counter,
    imported_db,
    net,
    open_replicas,
    region,
    settle_memory,
)
from tests.conftest import FlakyBus


@dataclass
class MatchedSink:
    """MatchedPositions received, with their envelopes, per partition subscribed."""

    got: list[Envelope[MatchedPosition]] = field(default_factory=list)

    async def on_matched(self, env: Envelope[MatchedPosition]) -> None:
        self.got.append(env)


@dataclass
class Service:
    bus: FlakyBus
    store: GeoStore
    bd: Bigdata
    clock: Clock


@pytest.fixture
async def service(imported_db: Path, tmp_path: Path) -> AsyncIterator[Service]:  # noqa: F811
    db = tmp_path / "geo.db"
    shutil.copy(imported_db, db)
    store = store_from_url(f"sqlite:///{db}")
    await store.open()
    bus = FlakyBus(partitions=PARTITIONS)
    await bus.start()
    clock = Clock()
    (bd,) = await open_replicas(bus, store, clock)
    yield Service(bus, store, bd, clock)
    bus.down = False
    await bd.stop()
    await bus.close()
    await store.close()


def _statutory_street(network: RoadNetwork, length_m: float) -> list[str]:
    """Consecutive segments of residential streets without maxspeed (statutory limit)."""
    def statutory(sid: str) -> bool:
        seg = network.get_segment(sid)
        return seg.road_class == "residential" and speed_limit(seg)[1] == "statutory"

    for start in sorted(s.segment_id for s in network if statutory(s.segment_id)):
        route, total = [start], network.get_segment(start).length_m
        while total < length_m:
            back = network.find_reverse(route[-1])
            nxt = [s for s in network.successors(route[-1])
                   if s != back and s not in route and statutory(s)]
            if not nxt:
                break
            route.append(sorted(nxt)[0])
            total += network.get_segment(route[-1]).length_m
        if total >= length_m:
            return route
    raise AssertionError("no statutory street long enough in the demo region")


def _drive(network: RoadNetwork, route: list[str], phone: str, vehicle_class: str,
           seed: int) -> Trace:
    vehicle = Vehicle(phone=phone, plate=f"鄂A{phone[-5:]}", vehicle_class=vehicle_class)
    vehicle.route_id = "R1" if vehicle_class != "taxi" else None
    total = sum(network.get_segment(s).length_m for s in route)
    trace = trace_vehicle(World(network, seed=seed), vehicle, start_s=0.0,
                          duration_s=min(300.0, total / 30.0 * 3.6 * 0.8), interval_s=10.0,
                          noise=NoiseModel(position_sigma_m=5.0), rng=random.Random(seed),
                          route=route)
    return Trace(trace.vehicle_id, vehicle_class, trace.points, trace.legs, vehicle.route_id)


def _positions(trace: Trace) -> list[VehiclePosition]:
    return [VehiclePosition(
        vehicle_id=trace.vehicle_id, lon=p.lon, lat=p.lat,
        observed_at=datetime.fromtimestamp(T0 + p.t, UTC), speed_kmh=round(p.speed_kmh, 1),
        heading_deg=round(p.heading_deg, 1), vehicle_class=trace.vehicle_class,
        source="jt808", status=0x3, route_id=trace.route_id) for p in trace.points]


async def _feed(s: Service, positions: list[VehiclePosition], *, down_between: tuple[int, int]
                ) -> None:
    """Publish positions (as the collector would, each with its report's correlation id),
    flushing every 3; the bus refuses bigdata's publishes for the flushes in ``down_between``."""
    for k, pos in enumerate(sorted(positions, key=lambda p: (p.observed_at, p.vehicle_id))):
        s.clock.at = pos.observed_at.timestamp() + 1.0
        # The collector's publish, which the bus takes even while it refuses bigdata's.
        await MemoryBus.publish(s.bus, VEHICLE_POSITION, pos, key=pos.vehicle_id,
                                correlation_id=f"report:{pos.vehicle_id}:{k}")
        await settle_memory(s.bus)
        if k % 3 == 2:
            s.bus.down = down_between[0] <= k < down_between[1]
            await s.bd.flush(s.clock.at)
            await settle_memory(s.bus)
    s.bus.down = False
    await s.bd.flush(s.clock.at, final=True)
    await settle_memory(s.bus)


async def test_dangerous_goods_positions_on_their_road_taxis_not(
        service: Service, net: RoadNetwork) -> None:  # noqa: F811
    assert {"coach", "tourist_bus", "dangerous_goods"} == TWO_PASSENGER_ONE_DANGER
    route = _statutory_street(net, 1200.0)
    truck = _drive(net, route, "13900000701", "dangerous_goods", seed=1)
    taxi = _drive(net, route, "13900000702", "taxi", seed=2)
    assert len(truck.points) >= 10
    p_truck = partition_of(truck.vehicle_id, PARTITIONS)
    mine, others = MatchedSink(), MatchedSink()
    await service.bus.subscribe(MATCHED_POSITION, mine.on_matched, durable="test-mine",
                                partitions=[p_truck])
    await service.bus.subscribe(MATCHED_POSITION, others.on_matched, durable="test-others",
                                partitions=[p for p in range(PARTITIONS) if p != p_truck])
    queued = counter("tti_bigdata_matched_positions_total", result="on_road")
    retried = counter("tti_bus_outbox_total", subject="tti.position.matched", result="retried")
    sent = _positions(truck)
    await _feed(service, sent + _positions(taxi), down_between=(9, 21))

    # The taxi is not published; the truck in its own partition only, each fix once, in order.
    assert others.got == []
    got = [e.payload for e in mine.got]
    assert [m.vehicle_id for m in got] == [truck.vehicle_id] * len(sent)
    assert [m.observed_at for m in got] == [p.observed_at for p in sent]
    # The bus refused for a while (counted), and nothing was lost or sent twice.
    assert counter("tti_bus_outbox_total", subject="tti.position.matched",
                   result="retried") > retried
    assert counter("tti_bigdata_matched_positions_total", result="on_road") - queued == len(sent)
    for env, m, pos, p in zip(mine.got, got, sent, truck.points, strict=True):
        ms = round(pos.observed_at.timestamp() * 1000)
        assert env.event_id == f"matched:{truck.vehicle_id}:{ms}"
        assert env.correlation_id.startswith(f"report:{truck.vehicle_id}:")
        assert (m.vehicle_class, m.speed_kmh, m.heading_deg, m.status, m.route_id) == (
            "dangerous_goods", pos.speed_kmh, pos.heading_deg, 0x3, "R1")
        assert 0.0 <= m.confidence <= 1.0
        seg = net.get_segment(m.segment_id)
        assert 0.0 <= m.offset_m <= seg.length_m + 0.1
        assert (m.road_class, m.road_name, m.bridge, m.tunnel) == (
            seg.road_class, seg.name or seg.ref, seg.bridge, seg.tunnel)
        assert (m.speed_limit_kmh, m.speed_limit_source) == speed_limit(seg)
        if p.segment_id in route and m.segment_id in route:
            assert m.speed_limit_source == "statutory"
            assert m.speed_limit_kmh in (30.0, 50.0)
        elif p.segment_id in route:  # at a junction, on the crossing street: it says so
            assert m.confidence < 0.9, m
    on_street = [(m, p) for m, p in zip(got, truck.points, strict=True) if p.segment_id in route]
    assert len(on_street) >= 0.8 * len(got)
    right = sum(m.segment_id == p.segment_id for m, p in on_street)
    assert right >= 0.85 * len(on_street), (right, len(on_street))
    # One quiet street, 5 m noise: the matcher is sure of nearly every fix.
    assert sum(m.confidence >= 0.9 for m, _ in on_street) >= 0.9 * len(on_street)


async def test_an_off_road_fix_is_published_without_a_road(
        service: Service, net: RoadNetwork) -> None:  # noqa: F811
    # A coach standing in a yard 1 km outside the network: the rules still see its time go on.
    minlon, minlat, _, _ = net.bbox()
    sink = MatchedSink()
    await service.bus.subscribe(MATCHED_POSITION, sink.on_matched, durable="test-all")
    yard: list[Any] = [VehiclePosition(
        vehicle_id="13900000703", lon=minlon - 0.01, lat=minlat - 0.01,
        observed_at=datetime.fromtimestamp(T0 + 10.0 * k, UTC), speed_kmh=0.0,
        heading_deg=0.0, vehicle_class="coach", status=0x0) for k in range(3)]
    before = counter("tti_bigdata_matched_positions_total", result="off_road")
    await _feed(service, yard, down_between=(0, 0))
    got = [e.payload for e in sink.got]
    assert len(got) == 3
    for m, pos in zip(got, yard, strict=True):
        assert (m.segment_id, m.road_class, m.speed_limit_kmh, m.speed_limit_source,
                m.confidence) == ("", "", None, "none", 0.0)
        assert (m.lon, m.lat, m.status, m.vehicle_class) == (pos.lon, pos.lat, 0, "coach")
    assert counter("tti_bigdata_matched_positions_total", result="off_road") - before == 3
