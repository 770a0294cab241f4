"""The matcher's per-fix confidence: the window's posterior of the decided road, and what it means.

An elevated road over its ground road (the same line, two ways) leaves a fix between them in
doubt; the same drive with the ground road taken away is sure. On real OSM (Wuhan, 10 m noise)
the fixes it doubts are the ones it gets wrong. And the number is the forward-backward
posterior: checked against enumerating every path through the window.
"""

from __future__ import annotations

import itertools
import math
import random

from services.bigdata.match_graph import MatchGraph
from services.bigdata.matching import MatchParams, MatchResult, OnlineMatcher
from services.bigdata.traces import NoiseModel, match_trace, road_keys
from shared.roadnet import OsmWay, RoadNetwork
from tests.bigdata.conftest import sim_traces
from tests.conftest import reference_file

_LAT = 30.5
_M_LON = 1.0 / (111_320.0 * math.cos(math.radians(_LAT)))


def _at(east_m: float, north_m: float = 0.0) -> tuple[float, float]:
    return 114.4 + east_m * _M_LON, _LAT + north_m / 110_574.0


def _stacked(*, ground: bool) -> RoadNetwork:
    """An approach road forking at node 1 (x = 0) onto an elevated road and, under it along the
    same line, its ground road (when ``ground``); both one-way east, 250 m segments to 1 km."""
    xs = (250.0, 500.0, 750.0, 1000.0)
    ways = [OsmWay(30, [(30, *_at(-400.0)), (1, *_at(0.0))],
                   {"highway": "primary", "oneway": "yes", "name": "光谷大道"}),
            OsmWay(10, [(1, *_at(0.0)), *((11 + i, *_at(x)) for i, x in enumerate(xs))],
                   {"highway": "trunk", "oneway": "yes", "bridge": "yes", "layer": "1",
                    "maxspeed": "80", "name": "光谷大道高架"})]
    if ground:
        ways.append(OsmWay(20, [(1, *_at(0.0)), *((21 + i, *_at(x)) for i, x in enumerate(xs))],
                           {"highway": "primary", "oneway": "yes", "name": "光谷大道"}))
    return RoadNetwork.from_ways(ways)


def _drive(net: RoadNetwork) -> list[MatchResult]:
    """36 km/h due east from x = -350 m, a fix every 10 s (100 m), 3 m of noise."""
    rng = random.Random(4)
    matcher = OnlineMatcher(MatchGraph(net))
    out: list[MatchResult] = []
    for k in range(13):
        lon, lat = _at(-350.0 + 100.0 * k + rng.gauss(0, 3), rng.gauss(0, 3))
        out.extend(matcher.update(10.0 * k, lon, lat, heading=90.0, speed_kmh=36.0))
    return out + matcher.flush()


def test_a_fix_between_elevated_and_ground_road_is_in_doubt() -> None:
    both = _drive(_stacked(ground=True))
    alone = _drive(_stacked(ground=False))
    assert len(both) == len(alone) == 13
    assert all(r.candidate is not None for r in both + alone)
    # Without the ground road nothing competes, at the node between two segments of the
    # elevated road (x = 250 m) included: the same road either side.
    assert all(r.confidence >= 0.99 for r in alone), [round(r.confidence, 3) for r in alone]
    # With it, the approach is sure, and a fix past the fork is a coin toss between the two
    # roads, whichever the best path chose.
    approach = [r for r in both if r.lon < _at(-100.0)[0]]
    stacked = [r for r in both if r.lon > _at(100.0)[0]]
    assert len(approach) == 3 and len(stacked) == 8
    assert all(r.confidence >= 0.99 for r in approach), [r.confidence for r in approach]
    assert all(0.3 <= r.confidence <= 0.7 for r in stacked), [r.confidence for r in stacked]
    assert {r.candidate.segment_id.split(":")[0] for r in stacked if r.candidate} <= {"10", "20"}


class _Checked(OnlineMatcher):
    """The matcher, recording its confidence next to one computed by enumerating every path."""

    __slots__ = ()
    seen: list[tuple[float, float]] = []  # noqa: RUF012 - a log for this test module only

    def _confidence(self, k: int, j: int) -> float:
        got = OnlineMatcher._confidence(self, k, j)
        steps = self._steps
        step = steps[k]
        ahead = steps[k + 1:]
        mass = []
        for i, forward in enumerate(step.alpha):
            total = 0.0
            if forward != -math.inf:
                for path in itertools.product(*(range(len(s.cands)) for s in ahead)):
                    lp, prev = forward, i
                    for s, x in zip(ahead, path, strict=True):
                        assert s.trans is not None
                        lp += s.trans[x][prev] + s.emissions[x]  # trans[newer][older]
                        prev = x
                    total += math.exp(lp)
            mass.append(total)
        road = self.graph.seg_road[step.segs[j]]
        mine = sum(m for m, s in zip(mass, step.segs, strict=True)
                   if self.graph.seg_road[s] == road)
        self.seen.append((got, mine / sum(mass) if sum(mass) else 1.0))
        return got


def test_confidence_is_the_posterior_of_every_path_through_the_window() -> None:
    net = RoadNetwork.from_osm(reference_file("osm", "wuhan_optics_valley.osm"))
    graph = MatchGraph(net)
    _Checked.seen.clear()
    for trace in sim_traces(net, count=6, duration_s=600, interval_s=10.0,
                            noise=NoiseModel(position_sigma_m=10.0), seed=5):
        match_trace(_Checked(graph), trace)
    seen = _Checked.seen
    assert len(seen) > 300
    doubtful = [got for got, _ in seen if got < 0.9]
    assert len(doubtful) >= 3  # the comparison covers windows where roads compete
    worst = max(abs(got - want) for got, want in seen)
    assert worst < 1e-9, worst


def test_confidence_tells_sure_fixes_from_doubtful_ones() -> None:
    # Real OSM (Wuhan, side roads 12-15 m beside main roads), 30 s fixes with 10 m noise: the
    # matcher is unsure of a few fixes, and those are the ones it gets wrong.
    net = RoadNetwork.from_osm(reference_file("osm", "wuhan_optics_valley.osm"))
    traces = sim_traces(net, count=24, duration_s=1500, interval_s=30.0,
                        noise=NoiseModel(position_sigma_m=10.0), seed=5)
    keys = road_keys(net)
    graph = MatchGraph(net)
    tally = {"high": [0, 0], "low": [0, 0]}  # [fixes, on their true road]
    for trace in traces:
        results = match_trace(OnlineMatcher(graph, MatchParams()), trace)
        for r, p in zip(results, trace.points, strict=True):
            assert 0.0 <= r.confidence <= 1.0
            if r.candidate is None:
                assert r.confidence == 0.0
                continue
            band = "high" if r.confidence >= 0.9 else "low" if r.confidence < 0.6 else None
            if band is not None:
                tally[band][0] += 1
                tally[band][1] += keys[r.candidate.segment_id] == keys[p.segment_id]
    (n_high, right_high), (n_low, right_low) = tally["high"], tally["low"]
    assert n_high > 20 * n_low > 0, tally
    assert right_high / n_high >= 0.97, tally
    assert right_low / n_low <= right_high / n_high - 0.25, tally
