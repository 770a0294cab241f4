"""Virtual vehicles driving on the road graph with class-dependent speeds and incidents.

Movement is a pure function of time: each vehicle holds a plan (a list of segments with the
times it enters and leaves each), so a position at any instant is an interpolation, and the
ground truth — every segment traversal with its true speed — falls out of the plan.

Most vehicles plan as they go (random trips, bus routes in a loop). A *scripted* vehicle (a
scenario's, e.g. ``safety_demo.py``) gets its whole day at once from :meth:`World.plan_script`:
it stands with the ignition off until it departs, drives a given path at given speeds, then
parks with the ignition off.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from shared.errors import BadRequest
from shared.geo import bearing_deg, haversine_m
from shared.roadnet import RoadNetwork, RoadNetworkError, RoadSegment, RoutingGraph

# Speed caps by vehicle class (km/h): Chinese rules for coaches and dangerous goods vehicles.
CLASS_CAP_KMH = {"coach": 100.0, "tourist_bus": 100.0, "dangerous_goods": 80.0, "bus": 60.0,
                 "taxi": 120.0, "other": 120.0}
CLASS_MIX = (("taxi", 0.45), ("bus", 0.25), ("coach", 0.1), ("tourist_bus", 0.05),
             ("dangerous_goods", 0.15))


@dataclass(frozen=True, slots=True)
class Incident:
    """A slowdown: vehicles on ``segment_id`` drive at ``speed_kmh`` during [start, end)."""

    segment_id: str
    start_s: float
    duration_s: float
    speed_kmh: float

    @property
    def end_s(self) -> float:
        """End time (seconds since the simulation epoch)."""
        return self.start_s + self.duration_s

    def active(self, t: float) -> bool:
        """Whether the slowdown is on at simulation time ``t``."""
        return self.start_s <= t < self.end_s


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def _seconds(raw: str, what: str) -> float:
    m = _DURATION.match(raw.strip())
    if not m:
        raise BadRequest(f"incident {what} must look like 30, 90s, 5m or 1h: {raw!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def parse_incident(spec: str, network: RoadNetwork, *, default_segment: str | None = None
                   ) -> Incident:
    """``SEGMENT_ID@START+DURATION:SPEED_KMH`` (times in s, or with s/m/h) or ``demo``.

    ``demo`` means: on the region's demo incident segment, from 20 s, for 10 min, at 5 km/h;
    ``demo`` also stands for that segment in the long form (``demo@1m+5m:8``).
    """
    spec = spec.strip()
    if spec == "demo":
        if default_segment is None:
            raise BadRequest("no demo incident segment for this network")
        return Incident(default_segment, 20.0, 600.0, 5.0)
    m = re.match(r"^(?P<seg>[^@]+)@(?P<start>[^+]+)\+(?P<dur>[^:]+):(?P<speed>.+)$", spec)
    if not m:
        raise BadRequest(f"incident must be SEGMENT_ID@START+DURATION:SPEED_KMH: {spec!r}")
    seg = m.group("seg").strip()
    if seg == "demo":
        if default_segment is None:
            raise BadRequest("no demo incident segment for this network")
        seg = default_segment
    if network.find_segment(seg) is None:
        raise BadRequest(f"incident segment {seg!r} is not in the road network")
    try:
        speed = float(m.group("speed"))
    except ValueError as exc:
        raise BadRequest(f"incident speed must be a number: {m.group('speed')!r}") from exc
    if not 0 < speed <= 200:
        raise BadRequest("incident speed must be in (0, 200] km/h")
    duration = _seconds(m.group("dur"), "duration")
    if duration <= 0:
        raise BadRequest("incident duration must be positive")
    return Incident(seg, _seconds(m.group("start"), "start"), duration, speed)


@dataclass(frozen=True, slots=True)
class Leg:
    """One planned segment traversal; a bus may stand ``dwell_s`` at a stop ``dwell_at_m`` in."""

    segment: RoadSegment
    enter_s: float
    exit_s: float
    dwell_at_m: float | None = None
    dwell_s: float = 0.0
    parked: bool = False
    """The dwell is parking with the ignition off (a bus at a stop keeps its engine on)."""

    @property
    def speed_kmh(self) -> float:
        """True driving speed on this leg (a dwell at a stop is not driving)."""
        return self.segment.length_m / max(1e-6, self.exit_s - self.enter_s - self.dwell_s) * 3.6

    def distance_at(self, t: float) -> tuple[float, bool]:
        """Distance from the segment's start at time ``t``, and whether the vehicle is moving."""
        moving_s = max(1e-6, self.exit_s - self.enter_s - self.dwell_s)
        v = self.segment.length_m / moving_s
        elapsed = min(max(0.0, t - self.enter_s), self.exit_s - self.enter_s)
        if self.dwell_at_m is None:
            return min(self.segment.length_m, elapsed * v), True
        arrive = self.dwell_at_m / v
        if elapsed < arrive:
            return elapsed * v, True
        if elapsed < arrive + self.dwell_s:
            return self.dwell_at_m, False
        return min(self.segment.length_m, (elapsed - self.dwell_s) * v), True


@dataclass(slots=True)
class Vehicle:
    """One virtual vehicle: identity and its current plan."""

    phone: str
    plate: str
    vehicle_class: str
    route_segments: tuple[str, ...] = ()
    route_id: str | None = None
    legs: list[Leg] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    route_pos: int = 0
    scripted: bool = False
    """Its plan was given whole (:meth:`World.plan_script`): never extended at random."""

    @property
    def vehicle_id(self) -> str:
        """The id the collector gives it: phone number without leading zeros."""
        return self.phone.lstrip("0") or "0"


@dataclass(frozen=True, slots=True)
class Fix:
    """A true position of a vehicle at an instant."""

    lon: float
    lat: float
    speed_kmh: float
    heading_deg: float
    segment_id: str
    ignition: bool = True


PARK_FOREVER_S = 30 * 86_400.0
"""How long a scripted vehicle stays parked after its drive: longer than any run."""


class World:
    """The road network, the fleet and the incidents, advancing in simulation seconds."""

    def __init__(self, network: RoadNetwork, *, seed: int = 1,
                 bus_routes: Sequence[tuple[str, Sequence[str]]] = (),
                 hot_segment: str | None = None, hot_share: float = 0.2,
                 bus_stops: Mapping[str, Mapping[str, float]] | None = None,
                 dwell_s: tuple[float, float] = (15.0, 40.0)) -> None:
        self.network = network
        self.rng = random.Random(seed)
        self.incidents: list[Incident] = []
        self.bus_routes = [(rid, tuple(segs)) for rid, segs in bus_routes if segs]
        self.hot_segment = hot_segment
        self.hot_share = hot_share
        # route key ("<route_id>:<direction_id>") -> {segment_id: stop offset (m)}: buses stand
        # at their stops, as real ones do (and bigdata must not read it as congestion).
        self.bus_stops = {k: dict(v) for k, v in (bus_stops or {}).items()}
        self.dwell_range_s = dwell_s
        self._nodes = list(network.graph.nodes)
        # Trips prefer main roads: the fastest route at free flow.
        self._router = RoutingGraph(network, landmarks=8)
        self._free_flow = self._router.free_flow()

    # ---- fleet ---------------------------------------------------------------------------
    def make_fleet(self, n: int, *, phone_base: int = 13_800_000_000) -> list[Vehicle]:
        """``n`` vehicles in the class mix; buses are spread over the bus routes."""
        fleet = []
        for i in range(n):
            r = self.rng.random()
            acc = 0.0
            cls = "taxi"
            for name, share in CLASS_MIX:
                acc += share
                if r < acc:
                    cls = name
                    break
            if cls == "bus" and not self.bus_routes:
                cls = "taxi"
            v = Vehicle(phone=f"{phone_base + i:012d}", plate=f"鄂A{i:05d}", vehicle_class=cls)
            if cls == "bus":
                v.route_id, v.route_segments = self.bus_routes[i % len(self.bus_routes)]
                v.route_pos = self.rng.randrange(len(v.route_segments))
            fleet.append(v)
        return fleet

    # ---- speeds --------------------------------------------------------------------------
    def speed_on(self, vehicle: Vehicle, seg: RoadSegment, t: float) -> float:
        """Speed a vehicle drives on a segment entered at time ``t`` (km/h)."""
        for inc in self.incidents:
            if inc.segment_id == seg.segment_id and inc.active(t):
                return max(1.0, inc.speed_kmh * self.rng.uniform(0.8, 1.2))
        base = seg.free_flow_kmh * self.rng.uniform(0.65, 0.95)
        return max(5.0, min(base, CLASS_CAP_KMH.get(vehicle.vehicle_class, 120.0)))

    # ---- planning ------------------------------------------------------------------------
    def _path_segments(self, from_node: int, to_node: int) -> list[str]:
        try:
            route = self._router.fastest(from_node, to_node, self._free_flow)
        except RoadNetworkError:  # a node not in the network
            return []
        return [] if route is None else list(route.segment_ids)

    def _next_segments(self, vehicle: Vehicle, at_node: int | None) -> list[str]:
        if vehicle.route_segments:
            # Buses run their route in a loop; the demo routes are closed or out-and-back.
            segs = list(vehicle.route_segments[vehicle.route_pos:]) + list(
                vehicle.route_segments[:vehicle.route_pos])
            vehicle.route_pos = 0
            if at_node is not None and segs:
                first = self.network.get_segment(segs[0])
                if first.from_node != at_node:
                    segs = self._path_segments(at_node, first.from_node) + segs
            return segs
        start = at_node if at_node is not None else self.rng.choice(self._nodes)
        if self.hot_segment and self.rng.random() < self.hot_share:
            hot = self.network.get_segment(self.hot_segment)
            dest = self.rng.choice(self._nodes)
            path = [*self._path_segments(start, hot.from_node), hot.segment_id,
                    *self._path_segments(hot.to_node, dest)]
        else:
            path = []
            for _ in range(5):
                path = self._path_segments(start, self.rng.choice(self._nodes))
                if path:
                    break
        if not path:  # stranded on a dead end: take any outgoing segment, or jump
            out = [k for _, _, k in self.network.graph.out_edges(start, keys=True)]
            if out:
                return [self.rng.choice(out)]
            return self._next_segments(vehicle, None)
        return path

    def extend_plan(self, vehicle: Vehicle, until_s: float) -> None:
        """Plan legs up to ``until_s``, one segment at a time.

        Speeds are drawn when a vehicle is about to enter a segment, so an incident added while
        it is on its way still slows it down.
        """
        if vehicle.scripted:
            return
        t = vehicle.legs[-1].exit_s if vehicle.legs else until_s - 1.0
        node = vehicle.legs[-1].segment.to_node if vehicle.legs else None
        guard = 0
        while t < until_s and guard < 1000:
            guard += 1
            if not vehicle.pending:
                vehicle.pending = self._next_segments(vehicle, node)
                if not vehicle.pending:
                    break
            seg = self.network.get_segment(vehicle.pending.pop(0))
            speed = self.speed_on(vehicle, seg, t)
            dur = max(0.1, seg.length_m / (speed / 3.6))
            stop_at = self.bus_stops.get(vehicle.route_id or "", {}).get(seg.segment_id)
            if stop_at is not None:
                dwell = self.rng.uniform(*self.dwell_range_s)
                vehicle.legs.append(Leg(seg, t, t + dur + dwell, min(stop_at, seg.length_m),
                                        dwell))
                dur += dwell
            else:
                vehicle.legs.append(Leg(seg, t, t + dur))
            t += dur
            node = seg.to_node

    def plan_script(self, vehicle: Vehicle, depart_s: float,
                    path: Sequence[tuple[str, float]]) -> None:
        """Give ``vehicle`` its whole plan: parked (ignition off) at the first segment's start
        until ``depart_s``, then each (segment id, speed km/h) of ``path`` in turn, then parked
        at the last segment's end for good. Segments must connect; at least two of them."""
        if len(path) < 2:
            raise ValueError("a scripted drive needs at least two segments")
        legs: list[Leg] = []
        t = 0.0
        prev: RoadSegment | None = None
        for i, (segment_id, speed_kmh) in enumerate(path):
            seg = self.network.get_segment(segment_id)
            if prev is not None and prev.to_node != seg.from_node:
                raise ValueError(f"scripted path breaks between {prev.segment_id} and "
                                 f"{segment_id}")
            if not speed_kmh > 0:
                raise ValueError(f"scripted speed on {segment_id} must be positive")
            dur = seg.length_m / (speed_kmh / 3.6)
            if i == 0 and depart_s > 0:
                leg = Leg(seg, t, t + depart_s + dur, 0.0, depart_s, parked=True)
            elif i == len(path) - 1:
                leg = Leg(seg, t, t + dur + PARK_FOREVER_S, seg.length_m, PARK_FOREVER_S,
                          parked=True)
            else:
                leg = Leg(seg, t, t + dur)
            legs.append(leg)
            t = leg.exit_s
            prev = seg
        vehicle.legs = legs
        vehicle.pending = []
        vehicle.scripted = True

    def drop_past(self, vehicle: Vehicle, before_s: float) -> list[Leg]:
        """Remove and return legs finished before ``before_s`` (they become ground truth)."""
        done = []
        while vehicle.legs and vehicle.legs[0].exit_s <= before_s:
            done.append(vehicle.legs.pop(0))
        return done

    def fix(self, vehicle: Vehicle, t: float) -> Fix:
        """Where the vehicle is at time ``t``."""
        self.extend_plan(vehicle, t + 1.0)
        for leg in vehicle.legs:
            if leg.enter_s <= t < leg.exit_s:
                return self._interpolate(leg, t)
        leg = vehicle.legs[-1]
        return self._interpolate(leg, leg.exit_s)

    @staticmethod
    def _interpolate(leg: Leg, t: float) -> Fix:
        coords = leg.segment.coords
        target, moving = leg.distance_at(t)
        speed = leg.speed_kmh if moving else 0.0
        ignition = moving or not leg.parked
        # Walk the polyline, measured as the segment's length is (haversine): in any other
        # metric the vehicle would run a little faster than its speed and then wait at the end.
        acc = 0.0
        for (x1, y1), (x2, y2) in pairwise(coords):
            d = haversine_m(x1, y1, x2, y2)
            if acc + d >= target or (x2, y2) == coords[-1]:
                f = 0.0 if d == 0 else min(1.0, (target - acc) / d)
                return Fix(x1 + (x2 - x1) * f, y1 + (y2 - y1) * f, speed,
                           bearing_deg(x1, y1, x2, y2), leg.segment.segment_id, ignition)
            acc += d
        x, y = coords[-1]
        return Fix(x, y, speed, 0.0, leg.segment.segment_id, ignition)
