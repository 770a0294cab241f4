"""Travel speed through signals: the wait at a red light is travel time (GB/T 33171 grades travel
speed), wherever the fixes fall, across window boundaries and over a 10-m segment.

The road: a two-way primary road running east, crossed by two streets 10 m apart, so it is
three segments — 200 m, 10 m, 190 m. A car drives it at 36 km/h, waits 45 s at the stop line
5 m before the first crossing, and drives on; it reports every 10 s with 5 m GPS noise (and its
heading even while standing, as SUMO's terminals and many real ones do). The truth is the car's
own path, integrated every 0.1 s: distance / time on each segment (Edie), between its first and
last fix.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable

import pytest

from services.bigdata.matching import MatchGraph, MatchResult, OnlineMatcher, Piece
from services.bigdata.speeds import Motion, ProbeSample, SpeedWindows, VehicleProbe
from shared.roadnet import OsmWay, RoadNetwork

LON0, LAT0 = 114.40, 30.50
M_PER_DEG_LON = 111_320.0 * math.cos(math.radians(LAT0))
M_PER_DEG_LAT = 110_574.0
T0 = 1_700_000_040.0  # a whole minute
V_MS = 10.0  # 36 km/h
START_M, STOP_M, WAIT_S, END_M = 20.0, 195.0, 45.0, 380.0
FIRST, SHORT, LAST = "1:1:2", "1:2:3", "1:3:4"


def _lonlat(x_m: float, y_m: float = 0.0) -> tuple[float, float]:
    return LON0 + x_m / M_PER_DEG_LON, LAT0 + y_m / M_PER_DEG_LAT


@pytest.fixture(scope="module")
def road() -> RoadNetwork:
    def node(n: int, x: float, y: float = 0.0) -> tuple[int, float, float]:
        return (n, *_lonlat(x, y))

    main = {"highway": "primary", "name": "东西大道"}
    side = {"highway": "secondary"}
    return RoadNetwork.from_ways([
        OsmWay(1, [node(1, 0.0), node(2, 200.0), node(3, 210.0), node(4, 400.0)], main),
        OsmWay(2, [node(11, 200.0, -150.0), node(2, 200.0), node(12, 200.0, 150.0)], side),
        OsmWay(3, [node(13, 210.0, -150.0), node(3, 210.0), node(14, 210.0, 150.0)], side),
    ])


def _position(t: float) -> tuple[float, float]:
    """(metres along the road, speed m/s) of the car at ``t`` s after its first fix."""
    arrive = (STOP_M - START_M) / V_MS
    if t < arrive:
        return START_M + V_MS * t, V_MS
    if t < arrive + WAIT_S:
        return STOP_M, 0.0
    return STOP_M + V_MS * (t - arrive - WAIT_S), V_MS


def _segment_at(x_m: float) -> str:
    return FIRST if x_m < 200.0 else SHORT if x_m < 210.0 else LAST


def _drive(start_s: float) -> list[tuple[float, float, float]]:
    """(t, x, speed km/h) of the fixes, every 10 s from ``start_s`` after T0."""
    fixes = []
    t = 0.0
    while True:
        x, v = _position(t)
        if x > END_M:
            return fixes
        fixes.append((T0 + start_s + t, x, v * 3.6))
        t += 10.0


def _truth(start_s: float, window_s: float) -> dict[tuple[str, int], float]:
    """(segment, window) → Edie speed (km/h) of the true path between first and last fix."""
    fixes = _drive(start_s)
    dist: defaultdict[tuple[str, int], float] = defaultdict(float)
    time: defaultdict[tuple[str, int], float] = defaultdict(float)
    dt = 0.1
    for k in range(round((fixes[-1][0] - fixes[0][0]) / dt)):
        t = (k + 0.5) * dt
        x, v = _position(t)
        key = (_segment_at(x), math.floor((T0 + start_s + t) / window_s))
        dist[key] += v * dt
        time[key] += dt
    return {k: dist[k] / time[k] * 3.6 for k in dist if time[k] >= 5.0}


def _measure(graph: MatchGraph, start_s: float, window_s: float, seed: int,
             probe: Callable[[], VehicleProbe] | None = None) -> dict[tuple[str, int], float]:
    rng = random.Random(seed)
    vehicle = probe() if probe else VehicleProbe("car", OnlineMatcher(graph),
                                                 vehicle_class="taxi")
    # The car is on the 10-m segment for 1 s: keep windows of half a second.
    windows = SpeedWindows(window_s, grace_s=0.0, min_duration_s=0.5)
    for t, x, v in _drive(start_s):
        lon, lat = _lonlat(x + rng.gauss(0.0, 5.0), rng.gauss(0.0, 5.0))
        for s in vehicle.update(t, lon, lat, heading=90.0, speed_kmh=v, acc_on=True):
            windows.add_sample("car", s)
    for s in vehicle.flush():
        windows.add_sample("car", s)
    return {(w.segment_id, round(w.window_start.timestamp() / window_s)): w.speed_kmh
            for w in windows.close_due(math.inf)}


@pytest.mark.parametrize("seed", range(8))
def test_wait_at_a_red_light_is_travel_time(road: RoadNetwork, seed: int) -> None:
    graph = MatchGraph(road)
    window = 1e6  # one window: the whole passage
    truth = _truth(0.0, window)
    got = _measure(graph, 0.0, window, seed)
    bucket = math.floor(T0 / window)
    # 180 m in 17.5 s driving + 45 s waiting + 0.5 s: 10.3 km/h, not the 36 km/h it drove at.
    assert truth[(FIRST, bucket)] == pytest.approx(10.3, abs=0.1)
    assert got[(FIRST, bucket)] == pytest.approx(truth[(FIRST, bucket)], rel=0.10)
    # The wait is not counted on the 10-m segment past the stop line, nor on the other
    # direction of the road (a U-turn at the junction and back is what GPS jitter suggests).
    assert got[(SHORT, bucket)] == pytest.approx(36.0, rel=0.10)
    assert got[(LAST, bucket)] == pytest.approx(36.0, rel=0.10)
    assert set(got) <= {(FIRST, bucket), (SHORT, bucket), (LAST, bucket)}


@pytest.mark.parametrize("start_s", [0.0, 5.0, 20.0, 35.0])
def test_a_wait_across_window_boundaries_is_split_where_it_fell(road: RoadNetwork,
                                                               start_s: float) -> None:
    # One-minute windows: the 45 s wait falls in two of them, at shifting points.
    graph = MatchGraph(road)
    truth = _truth(start_s, 60.0)
    errors = []
    for seed in range(6):
        got = _measure(graph, start_s, 60.0, seed)
        for key, want in truth.items():
            if key[0] == FIRST:
                assert key in got, key
                # A window of mostly waiting reads a few km/h: its error is in km/h.
                errors.append(abs(got[key] - want) / max(want, 10.0))
    assert max(errors) <= 0.25, errors
    assert sorted(errors)[len(errors) // 2] <= 0.10, errors


def test_sample_is_split_at_window_boundaries() -> None:
    # A car drove 100 m in 10 s, then stood 20 s at the stop line; the fix ending it came 15 s
    # into a window: 10 s of driving and 5 s of standing fell in the window before.
    boundary = T0 + 600.0
    result = MatchResult(boundary + 15.0, LON0, LAT0, None, ())
    sample = ProbeSample(result, Motion.QUEUED, (Piece(FIRST, 100.0, 10.0),),
                         (Piece(FIRST, 0.0, 20.0),))
    windows = SpeedWindows(60.0, grace_s=0.0)
    windows.add_sample("car", sample)
    before, after = sorted(windows.close_due(math.inf), key=lambda w: w.window_start)
    assert before.window_end.timestamp() == boundary
    assert (before.distance_m, before.duration_s) == pytest.approx((100.0, 15.0))
    assert (after.distance_m, after.duration_s) == pytest.approx((0.0, 15.0))
    # Driving off: it stood first, then drove; the standing fell before the boundary.
    drive_off = ProbeSample(MatchResult(boundary + 5.0, LON0, LAT0, None, ()), Motion.QUEUED,
                            (Piece(LAST, 50.0, 5.0),), (Piece(LAST, 0.0, 25.0),),
                            standing_first=True)
    windows.add_sample("car", drive_off)
    before, after = sorted(windows.close_due(math.inf), key=lambda w: w.window_start)
    assert (before.distance_m, before.duration_s) == pytest.approx((0.0, 25.0))
    assert (after.distance_m, after.duration_s) == pytest.approx((50.0, 5.0))


def test_a_lone_car_standing_mid_block_in_flowing_traffic_is_kerbside(
        road: RoadNetwork) -> None:
    # The same car standing 45 s 100 m before the junction (not at the stop line) with no one
    # else standing: loading or waiting at the kerb, not traffic; only its driving counts.
    graph = MatchGraph(road)
    probe = VehicleProbe("car", OnlineMatcher(graph), vehicle_class="taxi")
    windows = SpeedWindows(1e6, grace_s=0.0)
    fixes = [(0.0, 20.0, 36.0), (10.0, 100.0, 0.0), (20.0, 100.0, 0.0), (30.0, 100.0, 0.0),
             (40.0, 100.0, 0.0), (50.0, 100.0, 0.0), (60.0, 180.0, 36.0), (70.0, 280.0, 36.0),
             (80.0, 380.0, 36.0)]
    labels = []
    for t, x, v in fixes:
        for s in probe.update(T0 + t, *_lonlat(x), heading=90.0, speed_kmh=v, acc_on=True):
            windows.add_sample("car", s)
            labels.append(s.motion)
    for s in probe.flush():
        windows.add_sample("car", s)
        labels.append(s.motion)
    assert Motion.STOPPED in labels and Motion.QUEUED not in labels
    got = {w.segment_id: w for w in windows.close_due(math.inf)}
    assert got[FIRST].speed_kmh > 25.0
