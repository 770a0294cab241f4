"""A vehicle gone quiet has its last fixes decided before their windows close.

The matcher decides a fix once newer fixes span its lag (30 s). A terminal that stops reporting
(its trip over, out of coverage) left its last fixes undecided until it was evicted, ten minutes
later, long after the windows they fell in had closed: the end of every trip was lost, the
wait at its last red light with it (SUMO demo city: 3 points of segment-minutes within 10 % of
the probes' own speed, live against offline). The road: a primary road running east, 400 m to
a junction, then 6.6 km on.
"""

from __future__ import annotations

import math

import pytest

from services.bigdata.matching import MatchGraph, OnlineMatcher
from services.bigdata.speeds import SettleSchedule, SpeedWindows, VehicleProbe
from shared.roadnet import OsmWay, RoadNetwork

LON0, LAT0 = 114.40, 30.50
M_PER_DEG_LON = 111_320.0 * math.cos(math.radians(LAT0))
T0 = 1_700_000_040.0  # a whole minute
SEG = "1:1:2"
TICK_S = 5.0


def _lonlat(x_m: float) -> tuple[float, float]:
    return LON0 + x_m / M_PER_DEG_LON, LAT0


@pytest.fixture(scope="module")
def graph() -> MatchGraph:
    main = {"highway": "primary"}
    return MatchGraph(RoadNetwork.from_ways([
        OsmWay(1, [(1, *_lonlat(0.0)), (2, *_lonlat(400.0))], main),
        OsmWay(2, [(2, *_lonlat(400.0)), (3, *_lonlat(7000.0))], main)]))


# Drives at 36 km/h from x = 20 m, stands at the stop line (x = 390 m) from 37 s on; the last
# report is 70 s after the first: the wait is 33 s, 3 of them in the next minute.
FIXES = [(t, min(20.0 + 10.0 * t, 390.0), 36.0 if 20.0 + 10.0 * t < 390.0 else 0.0)
         for t in range(0, 71, 10)]


def _replay(graph: MatchGraph, fixes: list[tuple[float, float, float]], *, settle: bool,
            until_s: float = 300.0) -> tuple[SpeedWindows, SettleSchedule]:
    """Fixes arriving on time, the service's flush tick every 5 s (settling, then closing)."""
    windows = SpeedWindows(60.0, grace_s=45.0)
    schedule = SettleSchedule(windows, lead_s=TICK_S)
    probe = VehicleProbe("car", OnlineMatcher(graph), vehicle_class="taxi")
    pending = sorted(fixes)
    closed = []
    now = T0
    while now <= T0 + until_s:
        while pending and T0 + pending[0][0] <= now:
            t, x, v = pending.pop(0)
            for s in probe.update(T0 + t, *_lonlat(x), heading=90.0, speed_kmh=v,
                                  acc_on=True):
                windows.add_sample("car", s, now=now)
            schedule.note("car", probe)
        if settle:
            for vid, samples in schedule.settle(now, {"car": probe}.get):
                for s in samples:
                    windows.add_sample(vid, s, now=now)
        closed.extend(windows.close_due(now))
        now += TICK_S
    windows.closed = closed  # type: ignore[attr-defined]
    return windows, schedule


def _closed(windows: SpeedWindows) -> dict[int, tuple[float, float]]:
    return {round((w.window_start.timestamp() - T0) / 60): (w.distance_m, w.duration_s)
            for w in windows.closed if w.segment_id == SEG}  # type: ignore[attr-defined]


def test_a_quiet_vehicle_s_last_fixes_reach_their_windows(graph: MatchGraph) -> None:
    windows, schedule = _replay(graph, FIXES, settle=True)
    got = _closed(windows)
    assert windows.late_pieces == 0
    assert schedule.settled > 0 and len(schedule) == 0
    # Minute 0: 57 s on the road (from the first fix), the wait from 37 s on included;
    # minute 1: the wait's last 10 s, standing.
    distance, duration = got[0]
    assert duration == pytest.approx(60.0, abs=0.5)
    assert distance / duration * 3.6 == pytest.approx(370.0 / 60.0 * 3.6, rel=0.10)
    assert got[1] == pytest.approx((0.0, 10.0), abs=0.5)


def test_without_settling_the_end_of_the_trip_is_lost(graph: MatchGraph) -> None:
    # What happened before: the last fixes wait for newer ones that never come.
    windows, _ = _replay(graph, FIXES, settle=False)
    got = _closed(windows)
    assert 1 not in got
    assert got[0][1] < 50.0


def test_a_vehicle_reporting_on_time_is_left_to_its_matcher(graph: MatchGraph) -> None:
    # Driving on at 36 km/h for 10 minutes, a report every 10 s: the lag decides every fix
    # in time; the schedule decides none of them (only the last ones, once it falls quiet).
    fixes = [(t, 20.0 + 10.0 * t, 36.0) for t in range(0, 601, 10)]
    windows, schedule = _replay(graph, fixes, settle=True, until_s=700.0)
    assert windows.late_pieces == 0
    assert 0 < schedule.settled <= 4


def test_settling_keeps_the_chain(graph: MatchGraph) -> None:
    # Decided early, the vehicle reports again: the interval since the last decision is
    # driven (joined to it), not a new chain starting from nothing.
    matcher = OnlineMatcher(graph)
    results = []
    for t, x in [(0.0, 20.0), (10.0, 120.0), (20.0, 220.0)]:
        results += matcher.update(T0 + t, *_lonlat(x), heading=90.0, speed_kmh=36.0)
    assert matcher.undecided_since == T0
    settled = matcher.settle(T0 + 5.0)
    # The fix at 10 s covers the time from 0 s on; the one at 20 s (from 10 s on) waits.
    assert [r.t for r in settled] == [T0, T0 + 10.0]
    assert matcher.undecided_since == T0 + 10.0
    settled += matcher.settle(math.inf)
    assert matcher.pending == 0 and matcher.undecided_since is None
    later = matcher.update(T0 + 30.0, *_lonlat(320.0), heading=90.0, speed_kmh=36.0)
    later += matcher.flush()
    assert [r.t for r in later] == [T0 + 30.0]
    assert sum(p.distance_m for p in later[0].pieces) == pytest.approx(100.0, abs=8.0)
