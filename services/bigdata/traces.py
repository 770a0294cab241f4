"""Synthetic GPS traces from the simulator's World, with ground truth, for tests and benchmarks.

A vehicle's plan in the simulator's ``World`` (``services/simulator/world.py``) is a pure
function of time, so a trace is
the plan sampled every ``interval_s`` seconds, with GPS-like errors added to what a terminal would
report (position, heading, speed). Each point keeps its true position and directed segment, and
each trace keeps its true segment traversals, so matching accuracy (share of points on the right
directed segment) and speed accuracy (estimated vs true space-mean speed) can be measured.

Buses can dwell at stops: the plan is then stretched in time (the bus stands still at the stop
for ``dwell_s`` and continues where it stopped), which is what makes stops look like congestion
to a naive speed estimate.

`match_trace` runs a trace through an `OnlineMatcher`; `segment_accuracy` scores the results by
correct directed segment, `road_accuracy` by correct road (same OSM way, same direction), the
measure usually published for map matchers (FMM's figures, for one): a fix matched to the next
or previous segment of the same street at a junction counts right there.

Services never import each other, so this module takes the World from the caller (tests and
benchmarks build ``World(network, seed=...)``) and only relies on the small structural interface
`SimWorld` describes.

Deterministic: the same network, seed and arguments give the same traces. Each vehicle's whole
plan is drawn before it is sampled, so traces with different intervals but the same seed drive
the same routes at the same speeds (only the sampling and the noise differ).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from services.bigdata.match_graph import directed_road_keys
from services.bigdata.matching import MatchResult, OnlineMatcher
from shared.roadnet import RoadNetwork

__all__ = [
    "NoiseModel",
    "SimWorld",
    "Trace",
    "TracePoint",
    "TruthLeg",
    "generate_traces",
    "match_trace",
    "road_accuracy",
    "road_keys",
    "segment_accuracy",
    "trace_vehicle",
]

_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LON_EQ = 111_320.0


class SimSegment(Protocol):
    """What a trace needs of a road segment."""

    @property
    def segment_id(self) -> str: ...
    @property
    def length_m(self) -> float: ...


class SimLeg(Protocol):
    """A planned traversal of a segment (simulator ``Leg``)."""

    @property
    def segment(self) -> SimSegment: ...
    @property
    def enter_s(self) -> float: ...
    @property
    def exit_s(self) -> float: ...


class SimFix(Protocol):
    """A true position (simulator ``Fix``)."""

    @property
    def lon(self) -> float: ...
    @property
    def lat(self) -> float: ...
    @property
    def speed_kmh(self) -> float: ...
    @property
    def heading_deg(self) -> float: ...
    @property
    def segment_id(self) -> str: ...


class SimVehicle(Protocol):
    """A simulated vehicle (simulator ``Vehicle``): identity, plan, segments to drive next."""

    pending: list[str]

    @property
    def vehicle_id(self) -> str: ...
    @property
    def vehicle_class(self) -> str: ...
    @property
    def route_id(self) -> str | None: ...
    @property
    def legs(self) -> Sequence[SimLeg]: ...


V = TypeVar("V", bound=SimVehicle)


class SimWorld(Protocol[V]):
    """The simulator's ``World`` as traces use it."""

    def make_fleet(self, n: int) -> Sequence[V]: ...
    def extend_plan(self, vehicle: V, until_s: float) -> None: ...
    def fix(self, vehicle: V, t: float) -> SimFix: ...


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """Errors of a reported fix: Gaussian per axis (metres), heading (degrees), speed (km/h).

    ``outlier_rate`` of the points get an extra Gaussian jump of ``outlier_sigma_m`` (multipath
    in street canyons).
    """

    position_sigma_m: float = 10.0
    heading_sigma_deg: float = 5.0
    speed_sigma_kmh: float = 2.0
    outlier_rate: float = 0.0
    outlier_sigma_m: float = 60.0


@dataclass(frozen=True, slots=True)
class TracePoint:
    """One reported fix (``lon``/``lat``/``speed_kmh``/``heading_deg``) and its truth."""

    t: float
    lon: float
    lat: float
    speed_kmh: float
    heading_deg: float
    true_lon: float
    true_lat: float
    segment_id: str
    dwelling: bool = False


@dataclass(frozen=True, slots=True)
class TruthLeg:
    """One true traversal of a directed segment; times include any dwell inside it."""

    segment_id: str
    enter_s: float
    exit_s: float
    length_m: float
    dwell_s: float = 0.0

    @property
    def moving_speed_kmh(self) -> float:
        """True driving speed on the segment, stops at bus stops left out."""
        return self.length_m / max(1e-6, self.exit_s - self.enter_s - self.dwell_s) * 3.6


@dataclass(frozen=True, slots=True)
class Trace:
    """A vehicle's reported fixes and the segments it truly drove while they were taken."""

    vehicle_id: str
    vehicle_class: str
    points: tuple[TracePoint, ...]
    legs: tuple[TruthLeg, ...]
    route_id: str | None = None


def _dwell_events(
    world_legs: Sequence[tuple[str, float, float, float]],
    stops: Mapping[str, Sequence[float]],
    dwell_s: float,
) -> list[tuple[float, float]]:
    """(plan time the bus reaches a stop, dwell duration), in time order."""
    events = []
    for sid, enter, exit_, length in world_legs:
        for offset in stops.get(sid, ()):
            frac = min(1.0, max(0.0, offset / length)) if length > 0 else 0.0
            events.append((enter + frac * (exit_ - enter), dwell_s))
    events.sort()
    return events


def _plan_time(t: float, events: Sequence[tuple[float, float]]) -> tuple[float, bool]:
    """Observed time → plan time (dwells stretch the plan), and whether the bus is dwelling."""
    shift = 0.0
    for tau, dwell in events:
        if t - shift < tau:
            break
        if t - shift < tau + dwell:
            return tau, True
        shift += dwell
    return t - shift, False


def _observed_time(tau: float, events: Sequence[tuple[float, float]]) -> float:
    return tau + sum(d for e, d in events if e < tau)


def trace_vehicle(
    world: SimWorld[V],
    vehicle: V,
    *,
    start_s: float,
    duration_s: float,
    interval_s: float,
    noise: NoiseModel,
    rng: random.Random,
    route: Sequence[str] = (),
    stops: Mapping[str, Sequence[float]] | None = None,
    dwell_s: float = 0.0,
) -> Trace:
    """Plan ``vehicle`` from ``start_s`` (at a graph node), then sample it with noise.

    ``route`` forces the first segments driven (e.g. a U-turn); afterwards the World picks trips.
    ``stops`` maps a segment id to offsets (m) where the vehicle dwells ``dwell_s`` seconds.
    """
    if route:
        vehicle.pending = list(route)
    # The first call fixes where the plan starts (World starts an empty plan 1 s before).
    world.extend_plan(vehicle, start_s + 1.0)
    world.extend_plan(vehicle, start_s + duration_s + 1.0)
    plan = [(leg.segment.segment_id, leg.enter_s, leg.exit_s, leg.segment.length_m)
            for leg in vehicle.legs]
    events = _dwell_events(plan, stops, dwell_s) if stops and dwell_s > 0 else []

    points: list[TracePoint] = []
    n = int(duration_s // interval_s) + 1
    for k in range(n):
        t = start_s + k * interval_s
        tau, dwelling = _plan_time(t, events)
        fix = world.fix(vehicle, tau)
        ex = rng.gauss(0.0, noise.position_sigma_m)
        ey = rng.gauss(0.0, noise.position_sigma_m)
        if noise.outlier_rate > 0 and rng.random() < noise.outlier_rate:
            ex += rng.gauss(0.0, noise.outlier_sigma_m)
            ey += rng.gauss(0.0, noise.outlier_sigma_m)
        lat = fix.lat + ey / _M_PER_DEG_LAT
        lon = fix.lon + ex / (_M_PER_DEG_LON_EQ * math.cos(math.radians(fix.lat)))
        true_speed = 0.0 if dwelling else fix.speed_kmh
        speed = max(0.0, true_speed + rng.gauss(0.0, noise.speed_sigma_kmh)) if true_speed else 0.0
        heading = (fix.heading_deg + rng.gauss(0.0, noise.heading_sigma_deg)) % 360.0
        points.append(TracePoint(t, lon, lat, speed, heading, fix.lon, fix.lat, fix.segment_id,
                                 dwelling))

    end_s = points[-1].t
    legs = []
    for sid, enter, exit_, length in plan:
        o_enter = _observed_time(enter, events)
        o_exit = _observed_time(exit_, events)
        if o_exit <= start_s or o_enter > end_s:
            continue
        inside = sum(d for e, d in events if enter <= e < exit_)
        legs.append(TruthLeg(sid, o_enter, o_exit, length, inside))
    return Trace(vehicle.vehicle_id, vehicle.vehicle_class, tuple(points), tuple(legs),
                 vehicle.route_id)


def generate_traces(
    world: SimWorld[V],
    *,
    count: int,
    duration_s: float,
    interval_s: float,
    noise: NoiseModel | None = None,
    seed: int = 1,
    stops: Mapping[str, Sequence[float]] | None = None,
    dwell_s: float = 0.0,
) -> list[Trace]:
    """A fresh fleet of ``count`` vehicles from ``world``, each traced for ``duration_s`` s.

    The World decides the class mix, routes, speeds and incidents (build it with the bus
    routes, hot segment and incidents wanted); buses dwell ``dwell_s`` at ``stops``. ``seed``
    seeds the noise: two calls on Worlds built alike drive the same trips.
    """
    noise = noise or NoiseModel()
    fleet = world.make_fleet(count)
    traces = []
    for i, vehicle in enumerate(fleet):
        # Noise from its own stream so it does not shift the World's draws of routes and speeds.
        rng = random.Random(seed * 1_000_003 + i)
        bus = vehicle.vehicle_class == "bus"
        traces.append(trace_vehicle(
            world, vehicle, start_s=0.0, duration_s=duration_s, interval_s=interval_s,
            noise=noise, rng=rng, stops=stops if bus else None, dwell_s=dwell_s if bus else 0.0))
    return traces


def match_trace(matcher: OnlineMatcher, trace: Trace) -> list[MatchResult]:
    """Feed a trace's fixes to a matcher and flush it: one result per fix, in order."""
    results: list[MatchResult] = []
    for p in trace.points:
        results.extend(matcher.update(p.t, p.lon, p.lat, heading=p.heading_deg,
                                      speed_kmh=p.speed_kmh))
    results.extend(matcher.flush())
    return results


def segment_accuracy(traces: Sequence[Trace],
                     results: Sequence[Sequence[MatchResult]]) -> float:
    """Share of fixes matched to their true directed segment (unmatched fixes count wrong)."""
    return _accuracy(traces, results, None)


def road_keys(network: RoadNetwork) -> dict[str, int]:
    """Directed road of each segment: equal for segments of one OSM way driven one way.

    Segments of a way that follow each other (one ends where the next starts, not its U-turn)
    are joined; the two directions of a two-way way stay apart. Keys are small integers: the
    matcher's own (`directed_road_keys`, what its confidence is about).
    """
    segments = list(network)
    keys = directed_road_keys([s.way_id for s in segments], [s.from_node for s in segments],
                              [s.to_node for s in segments])
    return {s.segment_id: k for s, k in zip(segments, keys, strict=True)}


def _accuracy(traces: Sequence[Trace], results: Sequence[Sequence[MatchResult]],
              key: Mapping[str, int] | None) -> float:
    total = correct = 0
    for trace, res in zip(traces, results, strict=True):
        by_t = {r.t: r for r in res}
        for p in trace.points:
            total += 1
            r = by_t.get(p.t)
            if r is None or r.candidate is None:
                continue
            got = r.candidate.segment_id
            if got == p.segment_id or (key is not None and key.get(got, -1) == key.get(
                    p.segment_id, -2)):
                correct += 1
    return correct / total if total else 0.0


def road_accuracy(traces: Sequence[Trace], results: Sequence[Sequence[MatchResult]],
                  network: RoadNetwork | Mapping[str, int]) -> float:
    """Share of fixes matched to a segment of their true road (same OSM way, same direction).

    ``network`` is the network the traces were driven on, or its `road_keys` (compute them once
    when scoring many runs). Unmatched fixes count wrong.
    """
    key = road_keys(network) if isinstance(network, RoadNetwork) else network
    return _accuracy(traces, results, key)
