"""Tracker, predictor and accuracy scenarios without the bus: direction, sparse and noisy fixes,
outliers, two buses on one route, GTFS-rt trip ids, detours, live congestion, the benchmark."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.bigdata.transit.accuracy import BUCKETS, Accuracy, PredictionLog, bucket_for
from services.bigdata.transit.predictor import Learned, Predictor, ShapeSegments
from services.bigdata.transit.schedule import GtfsFileSource, Schedule, ShapeLine
from services.bigdata.transit.service import early_shading_s
from services.bigdata.transit.synthetic import Trace
from services.bigdata.transit.tracker import StopEvent, Tracker, TrackResult
from shared.demo import DemoRegion, generate_demo_region
from shared.events import VehiclePosition
from shared.roadnet import RoadNetwork
from tests.bigdata.test_transit import run_of, trace_for


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def network(region: DemoRegion) -> RoadNetwork:
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture(scope="module")
def schedule(region: DemoRegion) -> Schedule:
    return GtfsFileSource(region.gtfs_path).load_sync()


def run_all(tracker: Tracker, positions: list[VehiclePosition]) -> tuple[list[StopEvent],
                                                                         list[TrackResult]]:
    results = [tracker.update(p) for p in positions]
    return [e for r in results for e in r.events], results


def errors(events: list[StopEvent], trace: Trace) -> dict[tuple[str, int], float]:
    truth = {s.index: s for s in trace.truth}
    return {(e.kind, e.stop_index): e.t - (truth[e.stop_index].arrival if e.kind == "arrival"
                                           else truth[e.stop_index].departure) for e in events}


def all_stop_events(n: int) -> set[tuple[str, int]]:
    return {("arrival", k) for k in range(1, n)} | {("departure", k) for k in range(n - 1)}


# --- trip inference ---------------------------------------------------------------------------


def test_direction_from_motion_alone(schedule: Schedule, network: RoadNetwork) -> None:
    """Route without direction, no heading, no speed (a bare feed): progress decides."""
    trace = trace_for(schedule, network, "R3_1_0900", report_speed=False, report_heading=False)
    events, results = run_all(Tracker(schedule), trace.positions)
    assert {e.run.trip.trip_id for e in events} == {"R3_1_0900"}
    errs = errors(events, trace)
    assert set(errs) == all_stop_events(trace.run.trip.pattern.n_stops)
    assert max(abs(v) for v in errs.values()) < 12.0
    assert results[0].status == "unassigned"  # standing at the terminal: direction unknown


def test_route_with_direction(schedule: Schedule, network: RoadNetwork) -> None:
    trace = trace_for(schedule, network, "R2_1_1000", route_id="R2:1")
    events, _ = run_all(Tracker(schedule), trace.positions)
    assert {e.run.trip.trip_id for e in events} == {"R2_1_1000"}
    wrong_way = trace_for(schedule, network, "R2_1_1000", route_id="R2:0")
    events, results = run_all(Tracker(schedule), wrong_way.positions)
    assert events == [] and {r.status for r in results} <= {"unassigned", "off_route"}


def test_registry_gives_the_route(schedule: Schedule, network: RoadNetwork) -> None:
    """A JT/T 808 bus: class 'other' on the wire, route only in the vehicle registry."""
    trace = trace_for(schedule, network, "R1_1_0700", route_id=None)
    positions = [replace(p, vehicle_class="other") for p in trace.positions]
    tracker = Tracker(schedule, registry={"13800000001": ("bus", "R1")}.get)
    events, _ = run_all(tracker, positions)
    assert {e.run.trip.trip_id for e in events} == {"R1_1_0700"}
    events, results = run_all(Tracker(schedule), positions)
    assert events == [] and {r.status for r in results} == {"not_bus"}


def test_two_buses_of_one_route_take_their_own_trips(schedule: Schedule,
                                                     network: RoadNetwork) -> None:
    a = trace_for(schedule, network, "R1_0_0800", vehicle_id="1", late_s=240.0, seed=1)
    b = trace_for(schedule, network, "R1_0_0810", vehicle_id="2", late_s=-60.0, seed=2)
    merged = sorted(a.positions + b.positions, key=lambda p: p.observed_at)
    events, _ = run_all(Tracker(schedule), merged)
    trips = {(e.run.trip.trip_id, e.stop_index) for e in events}
    n = a.run.trip.pattern.n_stops
    assert {t for t, _ in trips} == {"R1_0_0800", "R1_0_0810"}
    assert len(trips) == 2 * n  # each trip: every stop, no stop claimed twice


def test_gtfs_rt_trip_id_wins_over_schedule_fit(schedule: Schedule,
                                                network: RoadNetwork) -> None:
    """Eight minutes late on a ten-minute headway: by time it looks like the next trip."""
    trace = trace_for(schedule, network, "R2_0_0900", late_s=480.0, trip_id="R2_0_0900",
                      route_id=None)
    events, _ = run_all(Tracker(schedule), trace.positions)
    assert {e.run.trip.trip_id for e in events} == {"R2_0_0900"}
    guessed = trace_for(schedule, network, "R2_0_0900", late_s=480.0)
    events, _ = run_all(Tracker(schedule), guessed.positions)
    assert {e.run.trip.trip_id for e in events} == {"R2_0_0910"}  # the honest best guess


def test_stale_and_unknown_trip(schedule: Schedule, network: RoadNetwork) -> None:
    trace = trace_for(schedule, network, "R1_0_0800")
    tracker = Tracker(schedule)
    assert tracker.update(trace.positions[5]).status in ("unassigned", "tracked")
    assert tracker.update(trace.positions[4]).status == "stale"
    ghost = replace(trace.positions[0], vehicle_id="9", trip_id="NOPE", route_id=None)
    assert tracker.update(ghost).status == "unknown_trip"
    assert "9" not in tracker.vehicles


# --- stops under noise, gaps and detours -----------------------------------------------------


@pytest.mark.parametrize("interval_s", [5.0, 30.0])
def test_stop_times_within_seconds(schedule: Schedule, network: RoadNetwork,
                                   interval_s: float) -> None:
    trace = trace_for(schedule, network, "R3_0_1200", interval_s=interval_s, noise_m=8.0)
    events, _ = run_all(Tracker(schedule), trace.positions)
    errs = errors(events, trace)
    assert set(errs) == all_stop_events(trace.run.trip.pattern.n_stops)
    assert sorted(abs(v) for v in errs.values())[len(errs) // 2] < 5.0  # median
    # With 30 s between fixes a dwell can hide between two of them.
    assert max(abs(v) for v in errs.values()) < (10.0 if interval_s < 10 else interval_s)


def test_sparse_fixes_and_skipped_stops(schedule: Schedule, network: RoadNetwork) -> None:
    """A fix a minute, two stops passed without stopping: every stop still gets its events."""
    trace = trace_for(schedule, network, "R1_1_1500", interval_s=60.0, skip=[2, 5],
                      stay_after_s=120.0)
    events, _ = run_all(Tracker(schedule), trace.positions)
    n = trace.run.trip.pattern.n_stops
    assert set(errors(events, trace)) == all_stop_events(n)
    times = [e.t for e in events]
    assert times == sorted(times)
    assert max(abs(v) for v in errors(events, trace).values()) < 60.0
    passed = {e.stop_index: e for e in events if e.kind == "departure"}
    assert passed[2].dwell_s is not None and passed[2].dwell_s < 5.0
    assert all(e.uncertainty_s <= 61.0 for e in events)


def test_gps_outliers_do_not_fake_arrivals(schedule: Schedule, network: RoadNetwork) -> None:
    trace = trace_for(schedule, network, "R2_1_0800")
    shape = trace.run.trip.pattern.shape
    positions = list(trace.positions)
    # One fix 400 m ahead on the route, one 300 m to the side, mid-trip.
    i = len(positions) // 3
    ahead = shape.point_at(trace.run.trip.pattern.stop_dist[3] + 60.0)
    positions[i] = replace(positions[i], lon=ahead[0], lat=ahead[1])
    j = i + 6
    a, _ = shape.candidates(positions[j].lon, positions[j].lat, max_offset_m=30.0)[0]
    side = math.radians(shape.bearing_at(a) + 90.0)
    positions[j] = replace(positions[j], lat=positions[j].lat + 300 * math.cos(side) / 110_574,
                           lon=positions[j].lon + 300 * math.sin(side) / 95_900)
    events, results = run_all(Tracker(schedule), positions)
    assert {r.status for r in results[i:i + 7]} >= {"outlier", "off_route"}
    errs = errors(events, trace)
    assert set(errs) == all_stop_events(trace.run.trip.pattern.n_stops)
    assert max(abs(v) for v in errs.values()) < 12.0


def test_detour_drops_the_trip(schedule: Schedule, network: RoadNetwork) -> None:
    trace = trace_for(schedule, network, "R1_0_0900")
    tracker = Tracker(schedule)
    head = trace.positions[:30]
    run_all(tracker, head)
    assert tracker.vehicles["13800000001"].run is not None
    away = [replace(p, lon=p.lon + 0.01, observed_at=datetime.fromtimestamp(
        head[-1].observed_at.timestamp() + 10 * (k + 1), UTC)) for k, p in enumerate(head[:12])]
    _, results = run_all(tracker, away)
    ended = [reason for r in results for _, reason in r.ended]
    assert ended == ["off_route"]
    assert tracker.vehicles["13800000001"].run is None
    assert tracker.owners == {}


def test_loop_shape_keeps_the_pass_the_bus_is_on() -> None:
    """A closed loop starts and ends at one point: progress must not jump to the end."""
    r = 500.0 / (2 * math.pi)
    pts = [(114.3 + r * math.cos(a) / 96_000, 30.5 + r * math.sin(a) / 111_000)
           for a in (2 * math.pi * i / 100 for i in range(101))]
    line = ShapeLine(pts)
    start = line.candidates(pts[0][0], pts[0][1], max_offset_m=20.0)
    assert sorted(round(a) for a, _ in start) == [0, round(line.length_m)]
    assert line.candidates(pts[0][0], pts[0][1], max_offset_m=20.0, hi_m=100.0)[0][0] < 1.0
    assert line.project_stop(pts[0][0], pts[0][1], 0.0)[0] < 1.0
    assert line.project_stop(pts[0][0], pts[0][1], 400.0)[0] == pytest.approx(line.length_m)


# --- predictions ---------------------------------------------------------------------------


def test_live_congestion_delays_predictions(schedule: Schedule, network: RoadNetwork) -> None:
    trace = trace_for(schedule, network, "R1_0_0800")
    tracker = Tracker(schedule)
    run_all(tracker, trace.positions[:20])
    st = tracker.vehicles["13800000001"]
    assert st.run is not None
    t = trace.positions[19].observed_at.timestamp()
    free = Predictor(schedule, network=lambda: network)
    jammed = Predictor(schedule, network=lambda: network)
    segs = ShapeSegments.from_network(st.run.trip.pattern.shape, network)
    # A jam: every minute of the last five, several vehicles crawling on every segment.
    for age in (270, 210, 150, 90, 30):
        for sid in segs.ids:
            free.speeds.update(sid, 30.0, t - age, sample_count=5)
            jammed.speeds.update(sid, 8.0, t - age, sample_count=5)
    base = dict(free.predict(st, t))
    slow = dict(jammed.predict(st, t))
    assert base.keys() == slow.keys() and base
    assert all(slow[k] > base[k] + 30 for k in base)
    # Stale speeds are not live: back to the timetable's run times.
    old = Predictor(schedule, network=lambda: network)
    for sid in segs.ids:
        old.speeds.update(sid, 8.0, t - 3600)
    assert dict(old.predict(st, t)) == dict(Predictor(schedule).predict(st, t))


def test_terminal_holds_until_departure(schedule: Schedule, network: RoadNetwork) -> None:
    run = run_of(schedule, "R2_0_1000")
    tracker = Tracker(schedule)
    trace = trace_for(schedule, network, "R2_0_1000", late_s=0.0, trip_id="R2_0_1000")
    tracker.update(trace.positions[0])  # standing at the first stop, a minute early
    st = tracker.vehicles["13800000001"]
    assert st.at_stop == 0
    preds = dict(Predictor(schedule).predict(st, trace.positions[0].observed_at.timestamp()))
    assert preds[1] == pytest.approx(run.arrival_at(1), abs=1.0)


def test_learned_means() -> None:
    learned = Learned(min_samples=2)
    assert learned.find("k", "am") is None
    learned.add("k", "am", 100.0)
    assert learned.find("k", "am") is None  # one sample is not enough
    learned.add("k", "am", 120.0)
    assert learned.find("k", "am") == pytest.approx(110.0)
    assert learned.find("k", "pm") == pytest.approx(110.0)  # all-day fallback
    for _ in range(30):
        learned.add("k", "am", 200.0)
    assert learned.find("k", "am") == pytest.approx(200.0, abs=1.0)


def test_learned_run_times_forget_the_bus_that_met_an_incident() -> None:
    runs, mean = Learned(min_samples=2, median_of=5), Learned(min_samples=2)
    for v in (100.0, 104.0, 98.0, 340.0, 102.0, 101.0):  # the fourth bus sat in a queue
        runs.add("k", "am", v)
        mean.add("k", "am", v)
    assert runs.find("k", "am") == pytest.approx(102.0)
    assert mean.find("k", "am") > 130.0  # a mean carries that run for many trips
    for _ in range(5):  # a lasting change (road works) is followed
        runs.add("k", "am", 160.0)
    assert runs.find("k", "am") == pytest.approx(160.0)
    # The timetable counts as one more sample: two runs, one an incident's, do not set it.
    two = Learned(min_samples=2, median_of=5)
    two.add("k", "am", 157.0)
    two.add("k", "am", 342.0)
    assert two.find("k", "am", prior=129.0) == pytest.approx(157.0)
    assert two.find("k", "am") == pytest.approx(249.5)


# --- the ETA Accuracy Benchmark --------------------------------------------------------------


def test_buckets_and_windows() -> None:
    assert [b.name for b in BUCKETS] == ["0-3", "3-6", "6-10", "10-15"]
    assert bucket_for(0.0).name == "0-3"  # type: ignore[union-attr]
    assert bucket_for(179.9).name == "0-3"  # type: ignore[union-attr]
    assert bucket_for(180.0).name == "3-6"  # type: ignore[union-attr]
    assert bucket_for(600.0).name == "10-15"  # type: ignore[union-attr]
    assert bucket_for(900.0) is None and bucket_for(-1.0) is None
    b03 = BUCKETS[0]
    # actual − predicted: the bus may come 30 s early or 90 s late, bounds included.
    assert b03.accurate(-30.0) and b03.accurate(90.0) and b03.accurate(0.0)
    assert not b03.accurate(-30.5) and not b03.accurate(90.5)
    assert [(b.early_s, b.late_s) for b in BUCKETS] == [(30, 90), (60, 150), (60, 210),
                                                         (90, 270)]


def test_scoring_samples_the_prediction_in_force() -> None:
    acc = Accuracy(step_s=30.0, fresh_s=150.0)
    actual = 10_000.0
    # Said "arrives at actual + 70" from 20 min before until the end: 70 s early each time,
    # which only the 10-15 min bucket (−90 s) forgives.
    made = [actual - 1200 + 60 * i for i in range(20)]
    samples = acc.score(actual, made, [actual + 70.0] * 20, scheduled=actual)
    assert samples == 30  # 15 s, 45 s, … 885 s before the arrival
    rep = {b["bucket"]: b for b in acc.report("live")["buckets"]}  # type: ignore[attr-defined]
    assert rep["0-3"]["count"] == 6 and rep["0-3"]["early"] == 6 and rep["0-3"]["share"] == 0
    assert rep["10-15"]["accurate"] == 10 and rep["10-15"]["share"] == 1.0
    assert rep["6-10"]["early"] == 8 and rep["6-10"]["mean_abs_error_s"] == 70.0
    sched = acc.report("schedule")
    assert sched["overall"] == 1.0  # the timetable was right this time
    # A prediction older than fresh_s is not shown to riders any more: not sampled.
    acc2 = Accuracy(step_s=30.0, fresh_s=150.0)
    assert acc2.score(actual, [actual - 800.0], [actual], None) == 5  # 675 … 795 s ahead


def test_early_shading_centres_the_benchmark_window() -> None:
    assert early_shading_s(0.0) == 30.0 and early_shading_s(90.0) == 30.0
    assert early_shading_s(270.0) == 45.0 and early_shading_s(750.0) == 90.0
    assert early_shading_s(3600.0) == 90.0
    assert 45.0 < early_shading_s(400.0) < 75.0  # no jump at the 6 min edge
    for b in BUCKETS:  # the shading sits inside each bucket's window asymmetry
        mid = (b.lo_s + b.hi_s) / 2
        assert early_shading_s(mid) == pytest.approx((b.late_s - b.early_s) / 2, abs=1.0)


def test_prediction_log_keeps_what_sampling_needs() -> None:
    log = PredictionLog(keep_s=1200.0)
    for i in range(100):
        log.add("run", 3, 60.0 * i, 9000.0)
    made, _ = log.pop("run", 3)  # type: ignore[misc]
    assert made[0] >= 60.0 * 99 - 1200.0 and len(made) <= 21
    assert log.pop("run", 3) is None
    log.add("run", 4, 0.0, 1.0)
    log.forget("run")
    assert len(log) == 0


def test_random_traces_never_crash(schedule: Schedule, network: RoadNetwork) -> None:
    """Garbage in (jumps, reversals, duplicates): statuses, never exceptions."""
    trace = trace_for(schedule, network, "R3_1_0800")
    rng = random.Random(9)
    positions = list(trace.positions)
    rng.shuffle(positions[10:40])
    positions[50:50] = positions[45:48]
    tracker = Tracker(schedule)
    for p in positions:
        res = tracker.update(p)
        assert res.status in ("tracked", "unassigned", "off_route", "stale", "outlier",
                              "no_trip")
