"""The bigdata service's live path: positions in, SegmentSpeed events out, as deployed.

The `Bigdata` class runs on a real MemoryBus and the SQLite geodatabase holding the demo region
(roads and GTFS). Positions from simulated traces are published as the collector publishes them;
what comes out is checked against the simulator's truth, against the dwell rules at bus stops,
with roadside detector readings fused in, and with the work split over two replicas. Time is a
test clock: windows close when the test moves it, nobody waits for them.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import shapely
from prometheus_client import REGISTRY

from services.bigdata.app import Bigdata
from services.bigdata.gtfs_import import import_gtfs_file
from services.bigdata.osm_features import import_osm_file
from services.bigdata.store import Feature, GeoStore, store_from_url
from services.bigdata.traces import NoiseModel, Trace, generate_traces, trace_vehicle
from services.simulator.world import Vehicle, World
from shared.bus import EventBus
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import (
    DETECTOR_READING,
    SEGMENT_SPEED,
    VEHICLE_POSITION,
    DetectorReading,
    SegmentSpeed,
    VehiclePosition,
    partition_of,
)
from shared.roadnet import RoadNetwork
from tests.conftest import ManualClock

T0 = 472_222 * 3600.0
"""Epoch seconds on a whole hour: windows of the tests start with the traces."""
PARTITIONS = 4
WINDOW_S = 60.0

Event = tuple[float, Any, Any, str | None]
"""(epoch seconds it is published at, subject, payload, key)."""


class Clock(ManualClock):
    """The service's clock, moved by the test (``at``), starting with the traces."""

    def __init__(self, at: float = T0) -> None:
        super().__init__(at)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def net(region: DemoRegion) -> RoadNetwork:
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture(scope="module")
def imported_db(region: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo roads and GTFS imported once; each service run starts from a copy."""
    path = tmp_path_factory.mktemp("db") / "geo.db"

    async def load() -> None:
        store = store_from_url(f"sqlite:///{path}")
        await store.open()
        try:
            await import_osm_file(store, region.osm_path)
            await import_gtfs_file(store, region.gtfs_path)
        finally:
            await store.close()

    asyncio.run(load())
    return path


@dataclass
class Sink:
    """Every SegmentSpeed published on a bus."""

    speeds: list[SegmentSpeed] = field(default_factory=list)

    async def on_speed(self, env: Envelope[SegmentSpeed]) -> None:
        self.speeds.append(env.payload)

    def by_window(self) -> dict[tuple[str, datetime], SegmentSpeed]:
        out: dict[tuple[str, datetime], SegmentSpeed] = {}
        for s in self.speeds:
            key = (s.segment_id, s.window_start)
            assert key not in out, f"{key} published twice"
            out[key] = s
        return out


@dataclass
class Run:
    """Bigdata replicas sharing one bus and one geodatabase, and what they published."""

    bus: EventBus
    store: GeoStore
    replicas: list[Bigdata]
    clock: Clock
    sink: Sink
    settle: Callable[[], Awaitable[None]]
    flushed: dict[int, list[SegmentSpeed]] = field(default_factory=lambda: defaultdict(list))
    """What each replica's flushes returned (it published), by replica index."""


async def settle_memory(bus: MemoryBus) -> None:
    """Wait until every consumer has handled everything, including what handlers published."""
    for _ in range(100):
        queues = [c.queue for groups in bus._groups.values() for members in groups.values()
                  for c in members]
        if not any(q._unfinished_tasks for q in queues):  # type: ignore[attr-defined]
            return
        for q in queues:
            await q.join()
    raise AssertionError("the bus did not settle")


async def open_replicas(bus: EventBus, store: GeoStore, clock: Clock, *, replicas: int = 1,
                        window_s: float = WINDOW_S, stops: bool = True) -> list[Bigdata]:
    """Start ``replicas`` Bigdata instances (index 0 … n-1) the way ``create_app`` does."""
    out = []
    for index in range(replicas):
        config = Config(speed_window_s=window_s, partitions=PARTITIONS, replica_count=replicas,
                        replica_index=index)
        bd = Bigdata(config, bus, store, clock=clock)
        await bd.load_network()
        await bd.load_gtfs()
        if not stops:
            bd.stops = None  # the naive service, for comparison: every stop looks like a queue
        await bd.load_detectors()
        out.append(bd)
    # Everyone subscribed before anyone publishes: the memory bus keeps nothing for latecomers.
    for bd in out:
        await bd.start()
    return out


@pytest.fixture
async def make_run(imported_db: Path, tmp_path: Path
                   ) -> AsyncIterator[Callable[..., Awaitable[Run]]]:
    """Runs on fresh copies of the imported database; everything is stopped afterwards."""
    opened: list[tuple[MemoryBus, GeoStore]] = []

    async def factory(*, replicas: int = 1, window_s: float = WINDOW_S, stops: bool = True,
                      detectors: Sequence[Feature] = ()) -> Run:
        db = tmp_path / f"run{len(opened)}.db"
        shutil.copy(imported_db, db)
        store = store_from_url(f"sqlite:///{db}")
        await store.open()
        if detectors:
            await store.import_features("detectors", "test", ["detector"], detectors)
        bus = MemoryBus(partitions=PARTITIONS)
        await bus.start()
        opened.append((bus, store))
        sink = Sink()
        await bus.subscribe(SEGMENT_SPEED, sink.on_speed, durable="test-sink")
        clock = Clock()
        bds = await open_replicas(bus, store, clock, replicas=replicas, window_s=window_s,
                                  stops=stops)
        return Run(bus, store, bds, clock, sink, lambda: settle_memory(bus))

    yield factory
    for bus, store in opened:
        await bus.close()
        await store.close()


def positions(traces: Iterable[Trace]) -> list[Event]:
    """The traces' fixes as the collector publishes them (JT/T 808, ignition on)."""
    out: list[Event] = []
    for trace in traces:
        for p in trace.points:
            pos = VehiclePosition(
                vehicle_id=trace.vehicle_id, lon=p.lon, lat=p.lat,
                observed_at=datetime.fromtimestamp(T0 + p.t, UTC), speed_kmh=p.speed_kmh,
                heading_deg=p.heading_deg, vehicle_class=trace.vehicle_class, source="jt808",
                status=0x3)
            out.append((T0 + p.t, VEHICLE_POSITION, pos, trace.vehicle_id))
    return out


async def drive(run: Run, events: Sequence[Event], *, step_s: float = 5.0,
                delay_s: float = 1.0) -> None:
    """Publish events in time order, flushing every replica each ``step_s``; then close all.

    Each step's events are published ``delay_s`` after the step ends (the clock then), the bus
    settles, every replica flushes, the bus settles again. At the end every replica decides its
    vehicles' last fixes and hands over its shares, and the clock moves past every window.
    """
    pending = sorted(events, key=lambda e: (e[0], e[3] or ""))
    step_end = pending[0][0]
    k = 0
    while k < len(pending):
        step_end += step_s
        run.clock.at = step_end + delay_s
        while k < len(pending) and pending[k][0] < step_end:
            _, subject, payload, key = pending[k]
            await run.bus.publish(subject, payload, key=key)
            k += 1
        await run.settle()
        await flush_all(run)
    await flush_all(run, final=True)
    run.clock.at += 3 * run.replicas[0].window_s + 60.0
    await flush_all(run)


async def flush_all(run: Run, *, final: bool = False) -> None:
    for index, bd in enumerate(run.replicas):
        run.flushed[index] += await bd.flush(run.clock.at, final=final)
    await run.settle()


def fleet(net: RoadNetwork, *, count: int, duration_s: float, seed: int) -> list[Trace]:
    """Simulator traces (10 s fixes, 10 m GPS noise); the same arguments give the same traces."""
    return generate_traces(World(net, seed=seed), count=count, duration_s=duration_s,
                           interval_s=10.0, noise=NoiseModel(position_sigma_m=10.0), seed=seed)


def truth(traces: Iterable[Trace]) -> tuple[dict[str, float], dict[str, int]]:
    """True space-mean driving speed per segment (dwell left out), and vehicles per segment.

    The first and last segment of a trace are left out: they are only partly driven.
    """
    dist: defaultdict[str, float] = defaultdict(float)
    time_s: defaultdict[str, float] = defaultdict(float)
    vehicles: defaultdict[str, set[str]] = defaultdict(set)
    for trace in traces:
        for leg in trace.legs[1:-1]:
            dist[leg.segment_id] += leg.length_m
            time_s[leg.segment_id] += leg.exit_s - leg.enter_s - leg.dwell_s
            vehicles[leg.segment_id].add(trace.vehicle_id)
    return ({sid: dist[sid] / time_s[sid] * 3.6 for sid in dist},
            {sid: len(v) for sid, v in vehicles.items()})


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- speeds ---------------------------------------------------------------------------------


async def test_positions_become_segment_speeds_that_match_truth(
        make_run: Callable[..., Awaitable[Run]], net: RoadNetwork) -> None:
    traces = fleet(net, count=60, duration_s=1790.0, seed=7)
    true_kmh, vehicles = truth(traces)
    # One window over the whole trip: per-segment truth is only known over the whole trace.
    run = await make_run(window_s=3600.0)
    await drive(run, positions(traces), step_s=30.0)
    speeds = run.sink.by_window()
    assert speeds, "nothing published"
    assert {s.source for s in speeds.values()} == {"probe"}
    errors = {}
    for (sid, start), s in speeds.items():
        assert start == datetime.fromtimestamp(T0, UTC)
        assert s.observed_at == datetime.fromtimestamp(T0 + 3600.0, UTC)
        assert s.speed_kmh is not None and s.free_flow_kmh and s.road_class
        assert 0.0 < s.confidence <= 1.0
        if vehicles.get(sid, 0) >= 3 and s.sample_count >= 3:
            errors[sid] = abs(s.speed_kmh - true_kmh[sid]) / true_kmh[sid]
    assert len(errors) >= 400
    within = sum(e <= 0.10 for e in errors.values()) / len(errors)
    assert within >= 0.97, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert sorted(errors.values())[len(errors) // 2] < 0.02
    # Persisted as published, and served as the latest value.
    sid, s = next((sid, s) for (sid, _), s in speeds.items())
    (record,) = await run.store.speed_history(sid, datetime.fromtimestamp(T0, UTC),
                                              datetime.fromtimestamp(T0 + 7200, UTC))
    assert (record.speed_kmh, record.sample_count, record.source) == (
        s.speed_kmh, s.sample_count, "probe")
    assert run.replicas[0].latest[sid] == s


def bus_traces(net: RoadNetwork, region: DemoRegion, *, buses: int, dwell_s: float,
               duration_s: float = 1500.0) -> list[Trace]:
    """Buses on the demo routes standing ``dwell_s`` at every stop, two per route pattern
    a minute apart so that they also stand at the same stop together."""
    routes = [(f"{r.route_id}:{p.direction_id}", p) for r in region.bus_routes
              for p in r.patterns]
    stops: dict[str, list[float]] = defaultdict(list)
    for _, pattern in routes:
        for stop in pattern.stops:
            stops[stop.segment_id].append(stop.offset_m)
    world = World(net, seed=5, bus_routes=[(rid, p.segment_ids) for rid, p in routes])
    traces = []
    for i in range(buses):
        route_id, pattern = routes[(i // 2) % len(routes)]
        bus = Vehicle(phone=f"1392000{i:05d}", plate=f"鄂A8{i:04d}", vehicle_class="bus")
        bus.route_id, bus.route_segments = route_id, pattern.segment_ids
        bus.route_pos = 0
        traces.append(trace_vehicle(world, bus, start_s=60.0 * (i % 2), duration_s=duration_s,
                                    interval_s=10.0, noise=NoiseModel(position_sigma_m=8.0),
                                    rng=random.Random(i), stops=stops, dwell_s=dwell_s))
    return traces


def congested(s: SegmentSpeed) -> bool:
    """What the warning service would call a jam: ≥ 2 vehicles at ≤ 50 % of free flow."""
    assert s.speed_kmh is not None and s.free_flow_kmh is not None
    return s.sample_count >= 2 and s.speed_kmh <= 0.5 * s.free_flow_kmh


async def test_buses_standing_at_stops_do_not_read_as_congestion(
        make_run: Callable[..., Awaitable[Run]], net: RoadNetwork, region: DemoRegion) -> None:
    traces = bus_traces(net, region, buses=12, dwell_s=40.0)
    assert sum(p.dwelling for t in traces for p in t.points) > 100
    stop_segments = {s.segment_id for r in region.bus_routes for p in r.patterns
                     for s in p.stops}
    run = await make_run()
    assert run.replicas[0].stops is not None and len(run.replicas[0].stops) > 10
    await drive(run, positions(traces))
    naive = await make_run(stops=False)
    await drive(naive, positions(traces))
    at_stops = {k: s for k, s in run.sink.by_window().items() if k[0] in stop_segments}
    naive_at_stops = {k: s for k, s in naive.sink.by_window().items() if k[0] in stop_segments}
    assert len(at_stops) >= 50
    jams = [s for s in at_stops.values() if congested(s)]
    assert not jams, jams[:3]
    # Without the stops the same buses would have raised jams: the rule is what keeps them out.
    assert sum(congested(s) for s in naive_at_stops.values()) >= 20


# --- detectors ------------------------------------------------------------------------------


def detector(detector_id: str, net: RoadNetwork, segment_id: str) -> Feature:
    lon, lat = net.get_segment(segment_id).coords[0]
    return Feature(kind="detector", feature_id=detector_id, geometry=shapely.Point(lon, lat),
                   ref=detector_id, attrs={"segment_id": segment_id, "type": "loop"})


def reading(detector_id: str, window: int, *, count: int, speed_kmh: float,
            lane: int | None = None, interval_s: float = WINDOW_S) -> DetectorReading:
    """A reading whose interval is window ``window`` of the run (counted from T0)."""
    end = T0 + (window + 1) * WINDOW_S
    return DetectorReading(detector_id=detector_id, observed_at=datetime.fromtimestamp(end, UTC),
                           interval_s=interval_s, lane=lane, vehicle_count=count,
                           mean_speed_kmh=speed_kmh, source="mqtt")


def readings_at(items: Iterable[DetectorReading], delay_s: float = 2.0) -> list[Event]:
    """Readings published ``delay_s`` after their interval ends, as a detector sends them."""
    return [(r.observed_at.timestamp() + delay_s, DETECTOR_READING, r, None) for r in items]


async def test_detector_readings_fuse_with_probe_windows(
        make_run: Callable[..., Awaitable[Run]], net: RoadNetwork) -> None:
    traces = fleet(net, count=30, duration_s=600.0, seed=11)
    probe_only = await make_run()
    await drive(probe_only, positions(traces))
    reference = probe_only.sink.by_window()
    # A segment and window several probes drove, and a segment no probe drove at all.
    (seg_a, start_a), probe_a = max(reference.items(), key=lambda kv: kv[1].sample_count)
    assert probe_a.sample_count >= 2 and probe_a.speed_kmh is not None
    window_a = round((start_a.timestamp() - T0) / WINDOW_S)
    driven = {sid for sid, _ in reference}
    seg_b = next(sid for sid in sorted(net.segments) if sid not in driven)

    run = await make_run(detectors=[detector("LOOP-A", net, seg_a),
                                    detector("CAM-B", net, seg_b)])
    assert run.replicas[0].detectors == {"LOOP-A": seg_a, "CAM-B": seg_b}
    unknown_before = counter("tti_bigdata_detector_readings_total", result="unknown_detector")
    late_before = counter("tti_bigdata_detector_readings_total", result="late")
    extra = readings_at([
        reading("LOOP-A", window_a, count=12, speed_kmh=50.0),
        # The all-lanes reading of CAM-B already counts its lanes: they must not add up.
        reading("CAM-B", 3, count=8, speed_kmh=40.0),
        reading("CAM-B", 3, count=5, speed_kmh=20.0, lane=1),
        reading("CAM-B", 3, count=3, speed_kmh=90.0, lane=2),
        reading("NOT-REGISTERED", 3, count=50, speed_kmh=5.0),
    ])
    # A reading that turns up after its window was published is dropped, not half-applied.
    extra.append((T0 + 6 * WINDOW_S + 200.0, DETECTOR_READING,
                  reading("CAM-B", 4, count=30, speed_kmh=5.0), None))
    await drive(run, positions(traces) + extra)

    fused = run.sink.by_window()
    a = fused[(seg_a, start_a)]
    n_p, v_p = probe_a.sample_count, probe_a.speed_kmh
    assert a.source == "probe+detector"
    assert a.sample_count == n_p + 12
    assert a.speed_kmh == pytest.approx((n_p + 12) / (n_p / v_p + 12 / 50.0), abs=0.05)
    assert a.confidence >= probe_a.confidence
    b = fused[(seg_b, datetime.fromtimestamp(T0 + 3 * WINDOW_S, UTC))]
    assert (b.source, b.speed_kmh, b.sample_count) == ("detector", 40.0, 8)
    assert b.observed_at == datetime.fromtimestamp(T0 + 4 * WINDOW_S, UTC)
    assert b.free_flow_kmh == net.get_segment(seg_b).free_flow_kmh
    assert (seg_b, datetime.fromtimestamp(T0 + 4 * WINDOW_S, UTC)) not in fused
    # Every other window is exactly what the probes alone gave.
    assert {k: v for k, v in fused.items() if k not in ((seg_a, start_a), (b.segment_id,
                                                                             b.window_start))
            } == {k: v for k, v in reference.items() if k != (seg_a, start_a)}
    assert counter("tti_bigdata_detector_readings_total",
                   result="unknown_detector") == unknown_before + 1
    assert counter("tti_bigdata_detector_readings_total", result="late") == late_before + 1
    assert not run.replicas[0].readings


# --- replicas -------------------------------------------------------------------------------


def replica_of(vehicle_or_segment: str, replicas: int) -> int:
    return partition_of(vehicle_or_segment, PARTITIONS) % replicas


async def test_two_replicas_publish_what_one_computes_from_all_vehicles(
        make_run: Callable[..., Awaitable[Run]], net: RoadNetwork, region: DemoRegion) -> None:
    traces = fleet(net, count=40, duration_s=600.0, seed=3)
    traces += bus_traces(net, region, buses=6, dwell_s=30.0, duration_s=500.0)
    single = await make_run()
    await drive(single, positions(traces))
    expected = single.sink.by_window()
    seg_a, start_a = max(expected, key=lambda k: expected[k].sample_count)
    loop = [detector("LOOP-A", net, seg_a)]
    window_a = round((start_a.timestamp() - T0) / WINDOW_S)
    events = positions(traces) + readings_at([reading("LOOP-A", window_a, count=9,
                                                      speed_kmh=45.0)])

    single = await make_run(detectors=loop)
    await drive(single, events)
    expected = single.sink.by_window()
    assert expected[(seg_a, start_a)].source == "probe+detector"

    pair = await make_run(replicas=2, detectors=loop)
    assert all(bd.sharded and bd.merger is not bd.windows for bd in pair.replicas)
    await drive(pair, events)

    got = pair.sink.by_window()
    assert len(expected) > 100
    assert got == expected
    # The bus gave each replica the vehicles of its own partitions, every vehicle to one.
    tracked = [set(bd.matchers) for bd in pair.replicas]
    assert tracked[0] and tracked[1] and not tracked[0] & tracked[1]
    assert tracked[0] | tracked[1] == {t.vehicle_id for t in traces}
    assert all(replica_of(vid, 2) == i for i, vids in enumerate(tracked) for vid in vids)
    # Each replica merged and published the segments of its own partitions only …
    for index, bd in enumerate(pair.replicas):
        assert bd.partials_published > 0 and bd.partials_merged > 0
        assert pair.flushed[index]
        assert all(replica_of(s.segment_id, 2) == index for s in pair.flushed[index])
        assert not bd.readings and bd.merger.open_partials() == 0
    # … and each knows every segment's latest value for its API.
    assert pair.replicas[0].latest.keys() == pair.replicas[1].latest.keys()
    assert sum(bd.merger.late_partials for bd in pair.replicas) == 0
    assert sum(bd.partials_published for bd in pair.replicas) == sum(
        bd.partials_merged for bd in pair.replicas)


async def test_shutdown_closes_open_windows_instead_of_losing_them(
        make_run: Callable[..., Awaitable[Run]], net: RoadNetwork) -> None:
    traces = fleet(net, count=10, duration_s=110.0, seed=2)
    run = await make_run()
    for t, subject, payload, key in sorted(positions(traces), key=lambda e: e[0]):
        run.clock.at = t + 1.0
        await run.bus.publish(subject, payload, key=key)
        await run.settle()
    assert run.sink.speeds == []  # no flush yet: both windows are open
    bd = run.replicas[0]
    await bd.stop()
    await run.settle()
    starts = [datetime.fromtimestamp(T0 + k * WINDOW_S, UTC) for k in (0, 1)]
    assert sorted({s.window_start for s in run.sink.speeds}) == starts
    # The last fixes were decided too: the second window holds every vehicle still driving.
    second = [s for s in run.sink.speeds if s.window_start == starts[1]]
    assert sum(s.sample_count for s in second) >= len(traces)
    assert bd.windows.open_partials() == 0
    assert all(probe.matcher.pending == 0 for _, probe in bd.matchers.values())
    history = await run.store.speed_history(second[0].segment_id, starts[0],
                                            datetime.fromtimestamp(T0 + 600, UTC))
    assert [r.window_start for r in history][-1] == starts[1]


async def test_vehicles_gone_quiet_have_their_last_fixes_in_their_windows(
        make_run: Callable[..., Awaitable[Run]], net: RoadNetwork) -> None:
    # The trips end (the terminals stop reporting) while the service runs on: each vehicle's
    # last fixes, which wait for newer ones that never come, are decided before their windows
    # close, so every window reads what a shutdown deciding everything at once gives.
    traces = fleet(net, count=20, duration_s=170.0, seed=5)
    events = positions(traces)
    late_before = counter("tti_bigdata_late_pieces_total")
    quiet = await make_run()
    pending = sorted(events, key=lambda e: (e[0], e[3] or ""))
    step_end = pending[0][0]
    while step_end < T0 + 600.0:  # positions, then the service ticking on without any
        step_end += 5.0
        quiet.clock.at = step_end + 1.0
        while pending and pending[0][0] < step_end:
            _, subject, payload, key = pending.pop(0)
            await quiet.bus.publish(subject, payload, key=key)
        await quiet.settle()
        await flush_all(quiet)
    late = counter("tti_bigdata_late_pieces_total") - late_before
    shut = await make_run()
    await drive(shut, events)
    got, want = quiet.sink.by_window(), shut.sink.by_window()
    assert sorted(got) == sorted(want)
    for key, s in want.items():
        assert (got[key].speed_kmh, got[key].sample_count) == (s.speed_kmh, s.sample_count)
    bd = quiet.replicas[0]
    assert bd.settling.settled >= len(traces) and len(bd.settling) == 0
    assert late == 0
