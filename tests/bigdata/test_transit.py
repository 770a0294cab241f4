"""Bus tracking end to end: demo GTFS, synthetic buses on the real MemoryBus, the HTTP API.

A synthetic bus (``services.bigdata.transit.synthetic``: braking, dwells, GPS noise) drives a
demo trip; its positions go through the bus to the transit consumer, which must find the trip,
detect each stop within seconds of the truth, publish predictions for the stops ahead and score
them when the bus gets there.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.bigdata.transit import TRANSIT, setup_transit
from services.bigdata.transit.predictor import ShapeSegments
from services.bigdata.transit.schedule import GtfsFileSource, Schedule, TripRun
from services.bigdata.transit.service import TransitService
from services.bigdata.transit.synthetic import Trace, Traffic, drive
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import (
    ARRIVAL_PREDICTION,
    BUS_ARRIVAL,
    SEGMENT_SPEED,
    VEHICLE_POSITION,
    ArrivalPrediction,
    BusArrival,
    VehiclePosition,
)
from shared.roadnet import RoadNetwork
from shared.service import create_base_app
from tests.conftest import ManualClock

DAY = date(2026, 3, 3)  # a Tuesday; the demo feed runs daily 06:00-23:00 Asia/Shanghai


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def network(region: DemoRegion) -> RoadNetwork:
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture(scope="module")
def schedule(region: DemoRegion) -> Schedule:
    return GtfsFileSource(region.gtfs_path).load_sync()


def run_of(schedule: Schedule, trip_id: str) -> TripRun:
    trip = schedule.trips_by_id[trip_id][0]
    return TripRun(trip, DAY, schedule.service_day_start(DAY))


def trace_for(schedule: Schedule, network: RoadNetwork, trip: str, *, seed: int = 1,
              vehicle_id: str = "13800000001", late_s: float = 90.0, **kwargs: Any) -> Trace:
    """A bus driving trip ``trip`` a bit late, in traffic at 60 % of free flow."""
    run = run_of(schedule, trip)
    rng = random.Random(seed)
    traffic = Traffic({s.segment_id: s.free_flow_kmh * 0.6 for s in network})
    segs = ShapeSegments.from_network(run.trip.pattern.shape, network)
    opts: dict[str, Any] = {"route_id": run.trip.route_id, "interval_s": 10.0,
                            "noise_m": 5.0, "occupancy": "FEW_SEATS_AVAILABLE",
                            "occupancy_pct": 85.0}
    opts.update(kwargs)
    return drive(run, vehicle_id=vehicle_id, speed=traffic.bus_speed(segs, cap_kmh=35.0),
                 dwell=lambda k: rng.uniform(10.0, 40.0), rng=rng,
                 depart_at=run.departure_at(0) + late_s,
                 stop_offset_m=lambda k: rng.uniform(-8.0, 4.0), **opts)


@dataclass
class Harness:
    """bigdata's transit part on a MemoryBus, an HTTP client, and what it published."""

    svc: TransitService
    bus: MemoryBus
    client: TestClient[Any, Any]
    clock: ManualClock
    arrivals: list[BusArrival] = field(default_factory=list)
    predictions: list[ArrivalPrediction] = field(default_factory=list)
    sent: int = 0

    async def feed(self, positions: list[VehiclePosition]) -> None:
        """Publish positions in order and wait until the tracker has seen the last one."""
        for p in positions:
            self.clock.at = p.observed_at.timestamp()
            await self.bus.publish(VEHICLE_POSITION, p, key=p.vehicle_id)
        last = positions[-1]
        await wait_for(lambda: self.svc.tracker is not None and self.svc.positions_handled
                       >= self.sent + len(positions))
        self.sent += len(positions)
        await asyncio.sleep(0.05)  # let the collectors drain what was published meanwhile
        assert last.observed_at.timestamp() == self.clock.at

    async def get(self, path: str, status: int = 200) -> Any:
        resp = await self.client.get(path)
        assert resp.status == status, await resp.text()
        return await resp.json()


async def wait_for(pred: Callable[[], bool], within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def harness(region: DemoRegion, network: RoadNetwork, schedule: Schedule
                  ) -> AsyncIterator[Harness]:
    config = Config(gtfs=str(region.gtfs_path), partitions=4)
    bus = MemoryBus(partitions=4)
    await bus.start()
    clock = ManualClock(schedule.service_day_start(DAY) + 8 * 3600)
    app = create_base_app("bigdata", config)
    svc = setup_transit(app, config, bus, network=network, clock=clock)
    client = TestClient(TestServer(app))
    await client.start_server()
    h = Harness(svc, bus, client, clock)

    async def on_arrival(env: Envelope[BusArrival]) -> None:
        h.arrivals.append(env.payload)

    async def on_prediction(env: Envelope[ArrivalPrediction]) -> None:
        h.predictions.append(env.payload)

    await bus.subscribe(BUS_ARRIVAL, on_arrival, durable="test")
    await bus.subscribe(ARRIVAL_PREDICTION, on_prediction, durable="test")
    await wait_for(lambda: svc.tracker is not None and bool(svc._subs))
    try:
        yield h
    finally:
        await client.close()
        await bus.close()


# --- the timetable ---------------------------------------------------------------------------


def test_demo_stops_project_onto_their_shapes(region: DemoRegion, schedule: Schedule) -> None:
    by_shape = {p.shape_id: p for p in schedule.patterns}
    for route in region.bus_routes:
        for demo in route.patterns:
            p = by_shape[demo.shape_id]
            assert p.stop_ids == tuple(s.stop_id for s in demo.stops)
            for got, stop in zip(p.stop_dist_m, demo.stops, strict=True):
                assert abs(got - stop.distance_m) < 3.0, (demo.shape_id, stop.stop_id)
            assert abs(p.shape.length_m - demo.length_m) < 1.0


def test_runs_follow_calendar_and_service_day(schedule: Schedule) -> None:
    day0 = schedule.service_day_start(DAY)
    runs = schedule.runs_between("R1", 0, day0 + 8 * 3600, day0 + 8 * 3600 + 60)
    assert {r.trip.trip_id for r in runs} >= {"R1_0_0750", "R1_0_0800"}
    assert all(r.trip.direction_id == 0 and r.start_date == "20260303" for r in runs)
    # 08:00 Asia/Shanghai is 00:00 UTC
    assert run_of(schedule, "R1_0_0800").departure_at(0) == day0 + 8 * 3600
    assert schedule.runs_between("R1", None, day0 + 3 * 3600, day0 + 3 * 3600 + 60) == []
    assert not schedule.has_route("R99")


@pytest.mark.parametrize("name", ["google_sample_dta_gtfs.zip", "nyc_subway_2lines_gtfs.zip",
                                  "cairns_translink_2014_gtfs.zip"])
def test_real_feeds_load(shared_data: Path, name: str) -> None:
    schedule = GtfsFileSource(shared_data / "gtfs" / name).load_sync()
    assert schedule.trip_count > 0 and schedule.patterns
    for p in schedule.patterns:
        assert (p.stop_dist_m[1:] >= p.stop_dist_m[:-1]).all()
        assert p.stop_dist_m[-1] <= p.shape.length_m + 1e-6
    for trips in schedule.trips_by_id.values():
        for t in trips:
            assert (t.departure_s >= t.arrival_s).all()
            assert len(t.arrival_s) == t.pattern.n_stops == len(t.stop_sequence)


def test_frequency_based_trips_expand(shared_data: Path) -> None:
    schedule = GtfsFileSource(shared_data / "gtfs" / "google_sample_dta_gtfs.zip").load_sync()
    expanded = [t for ts in schedule.trips_by_id.values() for t in ts if t.start_time]
    assert expanded, "frequencies.txt trips become one trip per departure"
    trips = schedule.trips_by_id[expanded[0].trip_id]
    assert len({t.start_time for t in trips}) == len(trips) > 1


async def test_real_feed_bus_is_tracked(shared_data: Path) -> None:
    """A Cairns bus with only its route is matched to its trip and detected at its stops."""
    schedule = GtfsFileSource(shared_data / "gtfs" / "cairns_translink_2014_gtfs.zip").load_sync()
    day = date(2014, 6, 3)
    active = schedule.calendar.active(day)
    trip = next(t for ts in schedule.trips_by_id.values() for t in ts
                if t.service_id in active and t.pattern.stop_offset_m.max() < 40
                and t.pattern.n_stops >= 10 and 8 * 3600 <= t.first_s < 9 * 3600)
    run = TripRun(trip, day, schedule.service_day_start(day))
    rng = random.Random(4)
    trace = drive(run, vehicle_id="cns:1", speed=lambda a, t: 9.0, dwell=lambda k: 15.0,
                  rng=rng, route_id=trip.route_id, depart_at=run.departure_at(0) + 60)
    from services.bigdata.transit.tracker import Tracker

    tracker = Tracker(schedule)
    events = [e for p in trace.positions for e in tracker.update(p).events]
    assert {e.run.trip.key for e in events} == {trip.key}
    arrivals = {e.stop_index: e.t for e in events if e.kind == "arrival"}
    truth = {s.index: s.arrival for s in trace.truth}
    assert sorted(arrivals) == list(range(1, trip.pattern.n_stops))
    assert max(abs(arrivals[k] - truth[k]) for k in arrivals) < 10.0


# --- end to end through the bus ---------------------------------------------------------------


async def test_bus_is_tracked_predicted_and_scored(harness: Harness, schedule: Schedule,
                                                   network: RoadNetwork) -> None:
    trace = trace_for(schedule, network, "R1_0_0800")
    n_stops = trace.run.trip.pattern.n_stops
    # Live speeds for the bus's road, as the speed windows would publish them.
    traffic = Traffic({s.segment_id: s.free_flow_kmh * 0.6 for s in network})
    segs = ShapeSegments.from_network(trace.run.trip.pattern.shape, network)
    t0 = trace.positions[0].observed_at.timestamp()
    for speed in traffic.window_events(segs.ids, t0, 60.0, random.Random(1), noise=0.0):
        await harness.bus.publish(SEGMENT_SPEED, speed)
    await wait_for(lambda: harness.svc.predictor is not None
                   and len(harness.svc.predictor.speeds) >= len(set(segs.ids)))

    half = len(trace.positions) // 2
    await harness.feed(trace.positions[:half])
    body = await harness.get("/v1/buses")
    assert body["count"] == 1 and body["time_zone"] == "UTC"
    bus = body["buses"][0]
    assert bus["vehicle_id"] == "13800000001"
    assert bus["trip"]["trip_id"] == "R1_0_0800" and bus["trip"]["start_date"] == "20260303"
    assert bus["occupancy"]["status"] == "FEW_SEATS_AVAILABLE"
    assert bus["occupancy"]["percentage"] == 85.0
    next_stop = bus["next_stop"]["stop_id"]
    board = await harness.get(f"/v1/stops/{next_stop}/arrivals")
    ours = [r for r in board["arrivals"] if r["trip_id"] == "R1_0_0800"]
    assert len(ours) == 1 and ours[0]["source"] == "live"
    assert ours[0]["vehicle_id"] == "13800000001" and ours[0]["made_at"].endswith("Z")
    assert ours[0]["predicted_arrival"] == bus["next_stop"]["predicted_arrival"]
    assert any(r["source"] == "schedule" for r in board["arrivals"])  # later trips

    await harness.feed(trace.positions[half:])
    await wait_for(lambda: sum(a.kind == "arrival" for a in harness.arrivals) == n_stops - 1)
    truth = {(s.index, "arrival"): s.arrival for s in trace.truth} | {
        (s.index, "departure"): s.departure for s in trace.truth}
    got = {(a.stop_sequence - 1, a.kind): a for a in harness.arrivals}
    assert set(got) == {(k, "arrival") for k in range(1, n_stops)} | {
        (k, "departure") for k in range(n_stops - 1)}
    for key, ev in got.items():
        assert ev.trip_id == "R1_0_0800" and ev.start_date == "20260303"
        assert abs(ev.observed_at.timestamp() - truth[key]) < 8.0, (key, ev)
    for a in harness.arrivals:
        assert a.scheduled_at is not None and a.delay_s is not None
        assert a.delay_s == pytest.approx((a.observed_at - a.scheduled_at).total_seconds(),
                                          abs=0.1)
    assert got[(0, "departure")].delay_s == pytest.approx(90.0, abs=8.0)  # left 90 s late
    assert all(a.dwell_s is not None for a in harness.arrivals
               if a.kind == "departure" and a.stop_sequence > 1)

    # Predictions: every stop ahead of the bus when it set off, none for stops behind it.
    predicted = {p.stop_sequence for p in harness.predictions}
    assert predicted == set(range(2, n_stops + 1))
    assert all(p.trip_id == "R1_0_0800" and p.source == "live" for p in harness.predictions)
    last_stop = [p for p in harness.predictions if p.stop_sequence == n_stops]
    assert len(last_stop) < len(trace.positions) / 2  # published on change, not every fix
    final_error = last_stop[-1].predicted_arrival.timestamp() - truth[(n_stops - 1, "arrival")]
    assert -60.0 < final_error < 15.0  # announced a little early on purpose (early shading)

    acc = await harness.get("/v1/eta-accuracy")
    assert acc["arrivals_scored"] == n_stops - 1
    buckets = {b["bucket"]: b for b in acc["live"]["buckets"]}
    for name in ("0-3", "3-6", "6-10"):
        assert buckets[name]["count"] > 0
        assert 0 <= buckets[name]["accurate"] <= buckets[name]["count"]
    assert buckets["0-3"]["share"] >= 0.8
    assert acc["live"]["overall"] is not None
    assert acc["schedule_baseline"]["buckets"][0]["count"] == buckets["0-3"]["count"]

    # The trip is over: no bus on it, the board falls back to the timetable.
    body = await harness.get("/v1/buses")
    assert body["buses"][0]["trip"] is None and body["buses"][0]["status"] == "unassigned"
    board = await harness.get(f"/v1/stops/{next_stop}/arrivals")
    assert all(r["source"] == "schedule" for r in board["arrivals"])
    metrics = await (await harness.client.get("/metrics")).text()
    assert 'tti_bigdata_eta_samples_total{bucket="0-3",source="live"}' in metrics


async def test_bus_with_unknown_route_is_ignored(harness: Harness, schedule: Schedule,
                                                 network: RoadNetwork) -> None:
    trace = trace_for(schedule, network, "R2_0_0800", route_id="R99")
    await harness.feed(trace.positions[:12])
    acc = await harness.get("/v1/eta-accuracy")
    assert acc["ignored_positions"] == {"unknown_route": 12}
    assert (await harness.get("/v1/buses"))["count"] == 0
    assert harness.arrivals == [] and harness.predictions == []
    # A taxi is not a bus, whatever it says.
    taxi = [replace(p, vehicle_class="taxi", route_id="R2") for p in trace.positions[:3]]
    await harness.feed(taxi)
    assert (await harness.get("/v1/buses"))["count"] == 0


async def test_api_errors(harness: Harness) -> None:
    body = await harness.get("/v1/stops/nope/arrivals", status=404)
    assert body["error"]["code"] == "not_found"
    body = await harness.get("/v1/stops/1478/arrivals?horizon_min=0", status=400)
    assert body["error"]["code"] == "bad_request"
    body = await harness.get("/v1/stops/1478/arrivals?limit=x", status=400)
    assert "limit" in body["error"]["message"]
    board = await harness.get("/v1/stops/1478/arrivals?horizon_min=30&limit=2")
    assert len(board["arrivals"]) == 2
    assert all(r["source"] == "schedule" and r["vehicle_id"] is None for r in board["arrivals"])
    ready = await harness.get("/readyz")
    assert ready["checks"]["transit_schedule"]["ready"] is True


async def test_no_timetable_configured(region: DemoRegion) -> None:
    bus = MemoryBus()
    await bus.start()
    app = create_base_app("bigdata", Config())
    setup_transit(app, Config(), bus)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1/buses")
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "transit_unavailable"
        ready = await (await client.get("/readyz")).json()
        assert ready["checks"]["transit_schedule"]["ready"] is True  # disabled, not broken
        assert app[TRANSIT].tracker is None
    await bus.close()


async def test_wired_into_the_bigdata_app(region: DemoRegion, schedule: Schedule,
                                          tmp_path: Path) -> None:
    """The line the bigdata app gets: its network feeds the shape → segment mapping."""
    from services.bigdata.app import BIGDATA, create_app

    config = Config(osm=str(region.osm_path), gtfs=str(region.gtfs_path), partitions=2,
                    db_url=f"sqlite:///{tmp_path / 'tti.db'}", speed_window_s=1.0)
    bus = MemoryBus(partitions=2)
    await bus.start()
    app = create_app(config, bus=bus)
    bd = app[BIGDATA]
    setup_transit(app, config, bus, network=lambda: bd.network)
    svc = app[TRANSIT]
    async with TestClient(TestServer(app)) as client:
        await wait_for(lambda: bool(svc._subs), within_s=30.0)
        ready = await (await client.get("/readyz")).json()
        assert ready["checks"]["transit_schedule"]["ready"] is True
        assert svc.predictor is not None and svc.schedule is not None
        pattern = schedule.patterns[0]
        segs = svc.predictor.segments_of(
            next(p for p in svc.schedule.patterns if p.shape_id == pattern.shape_id))
        assert segs is not None and len(segs.ids) >= 10  # mapped onto the app's network
        resp = await client.get("/v1/eta-accuracy")
        assert resp.status == 200
    await bus.close()


async def test_broken_feed_is_reported_not_fatal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    config = Config(gtfs=str(bad))
    bus = MemoryBus()
    await bus.start()
    app = create_base_app("bigdata", config)
    svc = setup_transit(app, config, bus)
    async with TestClient(TestServer(app)) as client:
        await wait_for(lambda: svc.error is not None)
        ready = await (await client.get("/readyz")).json()
        check = ready["checks"]["transit_schedule"]
        assert check["ready"] is True and check["detail"].startswith("unavailable")
        resp = await client.get("/v1/stops/1/arrivals")
        assert resp.status == 503
    await bus.close()


async def test_route_segments_name_the_roads_each_bus_route_runs_on(
        harness: Harness, schedule: Schedule, network: RoadNetwork) -> None:
    await wait_for(lambda: bool(harness.svc.route_segments()), within_s=60)
    body = await harness.get("/v1/routes/segments")
    routes = body["routes"]
    assert body["count"] == len(routes) > 0
    assert set(routes) <= {p.route_id for p in schedule.patterns}
    for segments in routes.values():
        assert segments and all(s in network for s in segments)
    r1 = next(p for p in schedule.patterns if p.route_id == "R1")
    mapped = ShapeSegments.from_network(r1.shape, network).ids
    assert set(mapped) <= set(routes["R1"])
