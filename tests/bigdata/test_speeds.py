"""Segment speeds: agreement with the simulator's truth, dwell and parking, incident queues,
partial windows merged across pods, fusion with roadside detectors."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from services.bigdata.matching import MatchGraph, MatchResult, OnlineMatcher, Piece
from services.bigdata.speeds import (
    FUSED_SOURCE,
    DwellRules,
    Motion,
    ProbeSample,
    SpeedPartial,
    SpeedWindows,
    StopIndex,
    VehicleProbe,
    WindowSpeed,
    confidence,
    fuse_speeds,
)
from services.bigdata.traces import NoiseModel, Trace, trace_vehicle
from services.simulator.world import Incident, Vehicle, World
from shared.demo import DemoRegion
from shared.events import DetectorReading
from shared.geo import haversine_m
from shared.roadnet import RoadNetwork
from tests.bigdata.conftest import sim_traces

T0 = 1_700_000_000.0  # epoch seconds: windows are aligned to real clock minutes




def _samples(graph: MatchGraph, trace: Trace, *, stops: StopIndex | None = None,
             acc_on: bool | None = None) -> list[ProbeSample]:
    probe = VehicleProbe(trace.vehicle_id, OnlineMatcher(graph),
                         vehicle_class=trace.vehicle_class, stops=stops)
    out: list[ProbeSample] = []
    for p in trace.points:
        out.extend(probe.update(T0 + p.t, p.lon, p.lat, heading=p.heading_deg,
                                speed_kmh=p.speed_kmh, acc_on=acc_on))
    out.extend(probe.flush())
    return out


def _inner(trace: Trace, samples: Iterable[ProbeSample]) -> Iterable[ProbeSample]:
    """Samples whose interval lies between the end of the first and the start of the last
    true segment of the trip: the first and last segments are only partly driven."""
    lo, hi = T0 + trace.legs[0].exit_s, T0 + trace.legs[-1].enter_s
    prev_t = None
    for s in samples:
        if s.result.pieces and prev_t is not None and prev_t >= lo and s.result.t <= hi:
            yield s
        prev_t = s.result.t


def _truth(traces: Iterable[Trace]) -> tuple[dict[str, float], Counter[str]]:
    """True space-mean moving speed per segment (dwell left out) and vehicles per segment."""
    dist: defaultdict[str, float] = defaultdict(float)
    time: defaultdict[str, float] = defaultdict(float)
    vehicles: defaultdict[str, set[str]] = defaultdict(set)
    for trace in traces:
        for leg in trace.legs[1:-1]:
            dist[leg.segment_id] += leg.length_m
            time[leg.segment_id] += leg.exit_s - leg.enter_s - leg.dwell_s
            vehicles[leg.segment_id].add(trace.vehicle_id)
    speeds = {sid: dist[sid] / time[sid] * 3.6 for sid in dist}
    return speeds, Counter({sid: len(v) for sid, v in vehicles.items()})


def _one_window(graph: MatchGraph, traces: list[Trace], *, stops: StopIndex | None = None
                ) -> dict[str, WindowSpeed]:
    windows = SpeedWindows(1e6, grace_s=0.0)
    for trace in traces:
        for s in _inner(trace, _samples(graph, trace, stops=stops)):
            windows.add_sample(trace.vehicle_id, s)
    return {w.segment_id: w for w in windows.close_due(math.inf)}


def test_speeds_agree_with_simulator_truth(graph: MatchGraph, net: RoadNetwork) -> None:
    traces = sim_traces(net, count=60, duration_s=1800, interval_s=10.0,
                             noise=NoiseModel(position_sigma_m=10.0), seed=7)
    truth, vehicles = _truth(traces)
    estimated = _one_window(graph, traces)
    errors = {}
    for sid, w in estimated.items():
        # Enough samples: three vehicles that drove it whole, a minute of driving seen.
        if vehicles[sid] >= 3 and w.sample_count >= 3 and w.duration_s >= 60.0:
            errors[sid] = abs(w.speed_kmh - truth[sid]) / truth[sid]
    assert len(errors) >= 300
    within = sum(e <= 0.10 for e in errors.values()) / len(errors)
    assert within >= 0.99, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert sorted(errors.values())[len(errors) // 2] < 0.02


def _bussim_traces(net: RoadNetwork, region: DemoRegion, dwell_s: float) -> list[Trace]:
    routes = [(f"{r.route_id}:{p.direction_id}", p.segment_ids)
              for r in region.bus_routes for p in r.patterns]
    stops: dict[str, list[float]] = defaultdict(list)
    for r in region.bus_routes:
        for p in r.patterns:
            for stop in p.stops:
                stops[stop.segment_id].append(stop.offset_m)
    world = World(net, seed=5, bus_routes=routes)
    rng = random.Random(5)
    traces = []
    for i in range(18):
        bus = Vehicle(phone=f"1392000{i:05d}", plate=f"鄂A8{i:04d}", vehicle_class="bus")
        bus.route_id, bus.route_segments = routes[i % len(routes)]
        bus.route_pos = rng.randrange(len(bus.route_segments))
        traces.append(trace_vehicle(world, bus, start_s=0.0, duration_s=1800.0,
                                    interval_s=10.0, noise=NoiseModel(position_sigma_m=10.0),
                                    rng=random.Random(i), stops=stops, dwell_s=dwell_s))
    return traces


def test_buses_at_stops_do_not_read_as_congestion(graph: MatchGraph, net: RoadNetwork,
                                                  region: DemoRegion) -> None:
    traces = _bussim_traces(net, region, dwell_s=40.0)
    stop_points = StopIndex((s.lon, s.lat) for r in region.bus_routes for p in r.patterns
                            for s in p.stops)
    stop_segments = {s.segment_id for r in region.bus_routes for p in r.patterns
                     for s in p.stops}
    assert any(p.dwelling for t in traces for p in t.points)
    truth, vehicles = _truth(traces)
    with_stops = _one_window(graph, traces, stops=stop_points)
    naive = _one_window(graph, traces)
    checked = 0
    for sid in stop_segments:
        w, n = with_stops.get(sid), naive.get(sid)
        if w is None or n is None or vehicles[sid] < 3 or w.duration_s < 60.0:
            continue
        checked += 1
        assert abs(w.speed_kmh - truth[sid]) / truth[sid] <= 0.10, sid
        # Without the stops, a 40 s dwell halves the speed of a 200 m street at 25 km/h.
        assert n.speed_kmh < 0.8 * truth[sid], sid
    assert checked >= 5


def _standing(vehicle_id: str, lon: float, lat: float, t0: float, minutes: float,
              rng: random.Random) -> list[tuple[float, float, float, float]]:
    """Fixes (t, lon, lat, speed) of a vehicle standing at a point, every 10 s."""
    return [(t0 + 10.0 * k, lon + rng.gauss(0, 8) / 96_000, lat + rng.gauss(0, 8) / 111_000, 0.0)
            for k in range(int(minutes * 6) + 1)]


def _drive_past(trace: Trace, graph: MatchGraph, windows: SpeedWindows) -> None:
    for s in _samples(graph, trace):
        windows.add_sample(trace.vehicle_id, s)


def _middle(net: RoadNetwork, sid: str) -> tuple[float, float]:
    seg = net.get_segment(sid)
    (lon1, lat1), (lon2, lat2) = seg.coords[0], seg.coords[-1]
    return (lon1 + lon2) / 2, (lat1 + lat2) / 2


def _through_traffic(net: RoadNetwork, sid: str, count: int) -> list[Trace]:
    seg = net.get_segment(sid)
    before = next(s for s in net.predecessors(sid) if s != net.find_reverse(sid))
    world = World(net, seed=9)
    return [trace_vehicle(world, Vehicle(phone=f"1393000{i:05d}", plate="鄂A",
                                         vehicle_class="taxi"),
                          start_s=30.0 * i, duration_s=90.0, interval_s=5.0,
                          noise=NoiseModel(position_sigma_m=5.0), rng=random.Random(i),
                          route=[before, seg.segment_id])
            for i in range(count)]


@pytest.mark.parametrize("acc_on", [False, True], ids=["acc-off", "acc-on-long"])
def test_parked_vehicle_does_not_slow_a_flowing_road(graph: MatchGraph, net: RoadNetwork,
                                                     acc_on: bool) -> None:
    sid = next(s.segment_id for s in net if s.road_class == "secondary" and s.length_m > 180)
    windows = SpeedWindows(1e6, grace_s=0.0)
    traffic = _through_traffic(net, sid, 4)
    for trace in traffic:
        _drive_past(trace, graph, windows)
    moving_only = SpeedWindows(1e6, grace_s=0.0)
    for trace in traffic:
        _drive_past(trace, graph, moving_only)
    lon, lat = _middle(net, sid)
    probe = VehicleProbe("parked", OnlineMatcher(graph), vehicle_class="taxi")
    for t, x, y, v in _standing("parked", lon, lat, 0.0, 12.0, random.Random(3)):
        for s in probe.update(T0 + t, x, y, speed_kmh=v, acc_on=acc_on):
            windows.add_sample("parked", s)
    for s in probe.flush():
        windows.add_sample("parked", s)
    got = {w.segment_id: w for w in windows.close_due(math.inf)}[sid]
    want = {w.segment_id: w for w in moving_only.close_due(math.inf)}[sid]
    assert got.speed_kmh == pytest.approx(want.speed_kmh)
    assert got.stopped_vehicles == 0


def test_incident_queue_reads_as_congestion(graph: MatchGraph, net: RoadNetwork) -> None:
    # Four vehicles stand in a queue on a road (no bus stop, ignition on) for three minutes.
    sid = next(s.segment_id for s in net if s.road_class == "primary" and s.length_m > 180)
    lon, lat = _middle(net, sid)
    windows = SpeedWindows(60.0, grace_s=0.0)
    for i in range(4):
        probe = VehicleProbe(f"q{i}", OnlineMatcher(graph), vehicle_class="taxi")
        fixes = _standing(f"q{i}", lon, lat, 3.0 * i, 3.0, random.Random(i))
        for t, x, y, v in fixes:
            for s in probe.update(T0 + t, x, y, speed_kmh=v, acc_on=True):
                windows.add_sample(f"q{i}", s)
        for s in probe.flush():
            windows.add_sample(f"q{i}", s)
    closed = [w for w in windows.close_due(math.inf) if w.segment_id == sid]
    assert closed, "a queue of stopped vehicles must produce a window"
    assert all(w.speed_kmh < 3.0 and w.stopped_vehicles >= 2 for w in closed)

    # One vehicle standing alone on that road says nothing about traffic.
    alone = SpeedWindows(60.0, grace_s=0.0)
    probe = VehicleProbe("alone", OnlineMatcher(graph), vehicle_class="taxi")
    for t, x, y, v in _standing("alone", lon, lat, 0.0, 3.0, random.Random(9)):
        for s in probe.update(T0 + t, x, y, speed_kmh=v, acc_on=True):
            alone.add_sample("alone", s)
    assert [w for w in alone.close_due(math.inf) if w.segment_id == sid] == []


def test_simulated_incident_slows_its_segment(graph: MatchGraph, net: RoadNetwork,
                                              region: DemoRegion) -> None:
    hot = region.incident_segment_id
    traces = sim_traces(net, count=30, duration_s=1200, interval_s=10.0, seed=3,
                             hot_segment=hot, incidents=[Incident(hot, 0.0, 1e6, 3.0)])
    windows = SpeedWindows(300.0, grace_s=0.0)
    for trace in traces:
        for s in _samples(graph, trace):
            windows.add_sample(trace.vehicle_id, s)
    on_hot = [w for w in windows.close_due(math.inf)
              if w.segment_id == hot and w.sample_count >= 2]
    assert on_hot
    free_flow = net.get_segment(hot).free_flow_kmh
    assert all(w.speed_kmh < 0.25 * free_flow for w in on_hot)


def test_vehicle_probe_labels_the_fix_it_decided(graph: MatchGraph, net: RoadNetwork) -> None:
    sid = next(s.segment_id for s in net if s.road_class == "primary" and s.length_m > 180)
    lon, lat = _middle(net, sid)
    probe = VehicleProbe("v", OnlineMatcher(graph), vehicle_class="taxi")
    fixes = _standing("v", lon, lat, 0.0, 1.0, random.Random(1))
    out: list[ProbeSample] = []
    for n, (t, x, y, v) in enumerate(fixes):
        # Ignition off only at the fourth fix: with lag 1 its sample comes one update later.
        out.extend(probe.update(T0 + t, x, y, speed_kmh=v, acc_on=n != 3))
    out.extend(probe.flush())
    assert [s.result.t for s in out] == [T0 + f[0] for f in fixes]
    labels = {s.result.t - T0: s.motion for s in out}
    assert labels[30.0] is Motion.ACC_OFF
    assert labels[20.0] is Motion.STOPPED and labels[40.0] is Motion.STOPPED
    assert probe.state_size() == 0


def test_pulling_up_splits_the_interval(graph: MatchGraph, net: RoadNetwork) -> None:
    seg = next(s for s in net if s.road_class == "primary" and len(s.coords) == 2
               and s.length_m > 190)
    (lon1, lat1), (lon2, lat2) = seg.coords
    heading = graph.point_at(graph.seg_index[seg.segment_id], 1.0)[2]

    def at(m: float) -> tuple[float, float]:
        f = m / seg.length_m
        return lon1 + (lon2 - lon1) * f, lat1 + (lat2 - lat1) * f

    probe = VehicleProbe("v", OnlineMatcher(graph), vehicle_class="taxi")
    out: list[ProbeSample] = []
    # 36 km/h (10 m/s) for 100 m, then 50 m more and a stop: 5 s driving, 5 s standing.
    for t, m, v in ((0.0, 20.0, 36.0), (10.0, 120.0, 36.0), (20.0, 170.0, 0.0),
                    (30.0, 170.0, 0.0)):
        out.extend(probe.update(T0 + t, *at(m), heading=heading, speed_kmh=v))
    out.extend(probe.flush())
    arrival = out[2]
    # It stood 30 m before the segment's end: in the junction's approach (a red light).
    assert arrival.motion is Motion.QUEUED
    assert sum(p.distance_m for p in arrival.moving) == pytest.approx(50.0, abs=2.0)
    assert sum(p.duration_s for p in arrival.moving) == pytest.approx(5.0, abs=0.3)
    assert sum(p.duration_s for p in arrival.standing) == pytest.approx(5.0, abs=0.3)
    assert out[3].moving == () and out[3].standing[0].duration_s == pytest.approx(10.0)


def test_partial_windows_merge_exactly(graph: MatchGraph, net: RoadNetwork) -> None:
    traces = sim_traces(net, count=16, duration_s=600, interval_s=10.0, seed=12)
    samples = {t.vehicle_id: _samples(graph, t) for t in traces}
    single = SpeedWindows(60.0)
    pods = [SpeedWindows(60.0), SpeedWindows(60.0)]
    for n, (vid, ss) in enumerate(samples.items()):
        for s in ss:
            single.add_sample(vid, s)
            pods[n % 2].add_sample(vid, s)
    end = T0 + 10_000.0
    merger = SpeedWindows(60.0)
    # Pods publish their partials as bus payloads; the merger gets them in any order.
    published = [p.to_payload() for pod in pods for p in pod.drain_partials(end)]
    random.Random(1).shuffle(published)
    for payload in published:
        assert merger.add_partial(SpeedPartial.from_payload(payload), now=T0)
    expected = sorted(single.close_due(end), key=lambda w: (w.window_start, w.segment_id))
    got = sorted(merger.close_due(end), key=lambda w: (w.window_start, w.segment_id))
    assert len(expected) > 50
    assert got == expected
    assert all(pod.open_partials() == 0 for pod in pods)
    # A partial for a window the merger already closed is refused and counted.
    late = SpeedPartial.from_payload(published[0])
    assert not merger.add_partial(late, now=end)
    assert merger.late_partials == 1


def test_windows_drop_late_and_future_pieces() -> None:
    windows = SpeedWindows(60.0, grace_s=10.0)
    piece = (Piece("1:1:2", 100.0, 10.0),)
    windows.add("a", T0 + 5.0, piece, now=T0 + 10.0)
    windows.add("a", T0 - 200.0, piece, now=T0 + 10.0)  # its window closed long ago
    windows.add("a", T0 + 3600.0, piece, now=T0 + 10.0)  # clock far ahead
    assert windows.late_pieces == 2
    window_end = (math.floor((T0 + 5.0) / 60.0) + 1) * 60.0
    assert windows.close_due(window_end + 9.0) == []
    (w,) = windows.close_due(window_end + 10.0)
    assert w.speed_kmh == pytest.approx(36.0)
    assert w.sample_count == 1 and w.source == "probe"
    assert 0.0 < w.confidence < 0.5


def test_confidence_grows_with_vehicles_and_time() -> None:
    assert confidence(0, 100.0, 60.0) == 0.0
    assert confidence(3, 0.0, 60.0) == 0.0
    assert confidence(1, 30.0, 60.0) < confidence(3, 30.0, 60.0) < confidence(8, 30.0, 60.0)
    assert confidence(3, 2.0, 60.0) < confidence(3, 20.0, 60.0) <= confidence(3, 30.0, 60.0)
    assert confidence(50, 600.0, 60.0) <= 1.0


def _probe(speed_kmh: float, vehicles: int) -> WindowSpeed:
    start = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    return WindowSpeed("1:1:2", start, start, speed_kmh, vehicles, 1000.0,
                       1000.0 / speed_kmh * 3.6, confidence(vehicles, 60.0, 60.0))


def _reading(speed: float | None, count: int | None, *, detector: str = "d1",
             lane: int | None = None) -> DetectorReading:
    return DetectorReading(detector_id=detector, observed_at=datetime(2026, 1, 1, 8, 1,
                                                                          tzinfo=UTC),
                           interval_s=60.0, lane=lane, vehicle_count=count,
                           mean_speed_kmh=speed)


def test_fusion_is_a_count_weighted_harmonic_mean() -> None:
    both = fuse_speeds(_probe(30.0, 3), [_reading(60.0, 10)])
    assert both is not None
    assert both.source == FUSED_SOURCE
    assert both.speed_kmh == pytest.approx(13 / (3 / 30 + 10 / 60))
    assert (both.sample_count, both.probe_count, both.detector_count) == (13, 3, 10)
    assert both.confidence >= _probe(30.0, 3).confidence

    only_probe = fuse_speeds(_probe(30.0, 3), [_reading(None, 10), _reading(50.0, 0)])
    assert only_probe is not None and only_probe.source == "probe"
    assert only_probe.speed_kmh == 30.0

    # A detector's per-lane readings are not added to its all-lanes reading.
    lanes = [_reading(40.0, 20), _reading(30.0, 10, lane=1), _reading(60.0, 10, lane=2)]
    only_detector = fuse_speeds(None, lanes)
    assert only_detector is not None and only_detector.source == "detector"
    assert only_detector.speed_kmh == pytest.approx(40.0)
    per_lane = fuse_speeds(None, lanes[1:])
    assert per_lane is not None
    assert per_lane.speed_kmh == pytest.approx(20 / (10 / 30 + 10 / 60))

    # A standing queue over the loop still fuses to a finite, low speed.
    jam = fuse_speeds(_probe(2.0, 4), [_reading(0.0, 6, detector="d2")])
    assert jam is not None and 0 < jam.speed_kmh < 2.0

    assert fuse_speeds(None, []) is None
    assert fuse_speeds(None, [_reading(math.nan, 5)]) is None


def test_stop_index_agrees_with_brute_force(region: DemoRegion) -> None:
    stops = [(s.lon, s.lat) for r in region.bus_routes for p in r.patterns for s in p.stops]
    index = StopIndex(stops)
    assert len(index) == len(stops)
    rng = random.Random(4)
    for _ in range(500):
        lon, lat = rng.choice(stops)
        lon += rng.uniform(-60, 60) / 96_000
        lat += rng.uniform(-60, 60) / 111_000
        brute = any(haversine_m(lon, lat, x, y) <= 30.0 for x, y in stops)
        assert index.near(lon, lat, 30.0) == brute


def test_dwell_rules_are_configurable() -> None:
    rules = DwellRules(queue_min_vehicles=3)
    windows = SpeedWindows(60.0, grace_s=0.0, rules=rules)
    stop = MatchResult(T0 + 30.0, 114.3, 30.55, None, (Piece("1:1:2", 0.0, 30.0),))
    for vid in ("a", "b"):
        windows.add_sample(vid, ProbeSample(stop, Motion.STOPPED))
    assert windows.close_due(math.inf) == []  # two standing vehicles are not yet a queue
