"""Bus tracking: which trip each bus runs, how far along it is, when it reaches and leaves stops.

Pure and synchronous (no I/O): :meth:`Tracker.update` takes one :class:`VehiclePosition` and says
what happened; the service publishes it. Everything runs on event time (``observed_at``), so a
replayed or delayed stream gives the same answer as a live one.

**Trip.** A GTFS-realtime position names its trip; a JT/T 808 bus only has a route from the vehicle
registry (maybe ``"<route_id>:<direction_id>"``). Then the trip is inferred: among the runs of that
route in service around now, on each shape passing within ``assign_offset_m``, the one whose
timetable has the bus where it is closest to now wins — provided the bus drives that shape's way
(its heading while moving, or its progress since the previous fix; a bus standing at a terminal
waits until it moves, since both directions start there). A run another live bus already holds is
penalised, so two buses of one route take consecutive trips, and the next trip of the GTFS block
the bus just finished is preferred. The assignment then sticks until the trip ends, the bus
leaves the shape for a while or the feed names another trip. A bus more than half a headway
late is, without a trip id or block, indistinguishable from the next trip on time: it gets that
one (what a rider at the stop would call it too).

**Progress.** Each fix is projected onto the trip's shape within a window around the previous
progress (so a loop or out-and-back shape keeps the pass the bus is on); progress never goes
back (GPS jitter of a waiting bus), and a jump faster than the bus can drive is held back as
an outlier until later fixes confirm it.

**Stops.** A stop is a zone along the shape, ``[d - before, d + after]``. Entering it is an
arrival, leaving it a departure; both are interpolated between the two fixes that bracket them,
extrapolating from the fix's own speed (so a bus that stopped right after the first fix is not
averaged across its dwell). Stops passed between two fixes (no fix in the zone, a sparse feed, a
skipped stop) get an arrival and departure too. The last stop's arrival completes the trip.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.bigdata.transit.schedule import Pattern, Schedule, TripRun
from shared.events import VehiclePosition

RegistryLookup = Callable[[str], "tuple[str | None, str | None] | None"]
"""vehicle id → (vehicle class, route id) from the vehicle registry, or None when unknown."""

TRACK_RESULTS = ("tracked", "unassigned", "not_bus", "unknown_route", "unknown_trip", "no_trip",
                 "off_route", "stale", "outlier")
"""What one position did; doubles as a bounded metric label."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackerSettings:
    """Distances in metres, times in seconds, speeds in m/s."""

    assign_offset_m: float = 50.0  # a fix farther from a shape cannot start a trip on it
    off_route_m: float = 80.0  # a tracked fix farther than this from its shape is off route
    off_route_drop_s: float = 90.0  # off route this long (and 3 fixes) and the trip is dropped
    stop_before_m: float = 25.0  # stop zone before the stop: buses stop short, GPS is noisy
    stop_after_m: float = 30.0  # ... and after it: beyond this the bus has left
    max_speed_ms: float = 30.0  # window for progress when the bus's speed is unknown
    back_tolerance_m: float = 60.0  # how far behind its progress a fix may project
    early_s: float = 1800.0  # a run can be assigned this long before its schedule has it there
    late_s: float = 3600.0  # ... and this long after
    heading_tolerance_deg: float = 60.0
    min_heading_speed_ms: float = 1.5  # slower than this a heading means nothing
    motion_min_m: float = 15.0  # progress that shows the direction of travel (beyond noise)
    decel_ms2: float = 1.2  # how buses brake into a stop and pull away from it
    accel_ms2: float = 1.0
    prev_fix_max_age_s: float = 120.0
    idle_s: float = 900.0  # a vehicle silent this long is forgotten
    taken_penalty_s: float = 1800.0
    end_margin_m: float = 100.0  # no trip is started this close to its last stop
    block_bonus_s: float = 900.0  # preference for the next trip of the bus's GTFS block


@dataclass(slots=True)
class Fix:
    """One accepted position in the tracker's units."""

    t: float
    lon: float
    lat: float
    speed_ms: float | None
    heading_deg: float | None


@dataclass(slots=True)
class VehicleState:
    """What the tracker knows about one bus."""

    vehicle_id: str
    last: Fix | None = None
    position: VehiclePosition | None = None
    route_id: str | None = None
    direction_id: int | None = None
    run: TripRun | None = None
    along_m: float = 0.0
    offset_m: float = 0.0
    next_stop: int = 0
    at_stop: int | None = None
    arrived_t: float | None = None
    last_event_t: float = -math.inf
    moving_speed_ms: float | None = None
    halt: list[float] = field(default_factory=list)  # raw progress of fixes at the current stop
    halt_t: float | None = None  # time of the last fix standing at the current stop
    stood: bool = False  # the bus stood still at the current stop
    off_count: int = 0
    off_since: float | None = None
    occupancy: str | None = None
    occupancy_pct: float | None = None
    occupancy_at: float | None = None
    completed: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    last_run: TripRun | None = None  # the last trip completed (its block tells the next)

    @property
    def pattern(self) -> Pattern | None:
        """The pattern of the current trip."""
        return self.run.trip.pattern if self.run else None


@dataclass(frozen=True, slots=True)
class StopEvent:
    """A detected arrival at or departure from a stop (``stop_index`` in the pattern)."""

    kind: str
    run: TripRun
    stop_index: int
    t: float
    uncertainty_s: float
    dwell_s: float | None = None


@dataclass(slots=True)
class TrackResult:
    """The outcome of one position: status, events, and trips that ended (with why)."""

    status: str
    state: VehicleState | None = None
    events: list[StopEvent] = field(default_factory=list)
    ended: list[tuple[TripRun, str]] = field(default_factory=list)


def angle_diff(a: float, b: float) -> float:
    """Smallest absolute difference between two bearings, degrees."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


def _ramp_time(dist_m: float, v_ms: float, accel_ms2: float) -> float:
    """Time to cover ``dist_m`` between standstill and speed ``v_ms`` at ``accel_ms2``.

    Braking into a stop from ``v_ms`` or pulling away up to it take the same time: cruise the
    part not needed for the ramp, then ramp (which takes twice as long as cruising it would).
    """
    if dist_m <= 0:
        return 0.0
    ramp_m = v_ms * v_ms / (2 * accel_ms2)
    if dist_m >= ramp_m:
        return (dist_m - ramp_m) / v_ms + v_ms / accel_ms2
    return math.sqrt(2 * dist_m / accel_ms2)


def _interp_time(t1: float, a1: float, t2: float, a2: float, x: float) -> float:
    if a2 <= a1:
        return t2
    return t1 + (x - a1) / (a2 - a1) * (t2 - t1)


class Tracker:
    """Per-vehicle trip assignment, progress and stop events."""

    def __init__(self, schedule: Schedule, settings: TrackerSettings | None = None, *,
                 registry: RegistryLookup | None = None) -> None:
        self.schedule = schedule
        self.settings = settings or TrackerSettings()
        self.registry = registry
        self.vehicles: dict[str, VehicleState] = {}
        self.owners: dict[str, str] = {}  # run key -> vehicle id holding it

    # ---- entry point ---------------------------------------------------------------------
    def update(self, pos: VehiclePosition) -> TrackResult:
        """Process one position of any vehicle (non-buses return at once)."""
        reg = self.registry(pos.vehicle_id) if self.registry else None
        is_bus = (pos.vehicle_class == "bus" or pos.trip_id is not None
                  or (reg is not None and reg[0] == "bus"))
        if not is_bus:
            return TrackResult("not_bus")
        t = pos.observed_at.timestamp()
        st = self.vehicles.get(pos.vehicle_id)
        if st is None:
            st = self.vehicles[pos.vehicle_id] = VehicleState(pos.vehicle_id)
        elif st.last is not None and t <= st.last.t:
            return TrackResult("stale", st)
        if pos.occupancy or pos.occupancy_pct is not None:
            st.occupancy, st.occupancy_pct, st.occupancy_at = pos.occupancy, pos.occupancy_pct, t
        st.position = pos
        route_raw = pos.route_id or (reg[1] if reg else None)
        st.route_id, st.direction_id = self._parse_route(route_raw)
        speed = None if pos.speed_kmh is None else max(0.0, pos.speed_kmh / 3.6)
        fix = Fix(t, pos.lon, pos.lat, speed, pos.heading_deg)
        res = TrackResult("tracked", st)
        # A trip id the timetable does not know (another feed version) is no evidence.
        trip_id = pos.trip_id if pos.trip_id in self.schedule.trips_by_id else None
        if pos.trip_id and trip_id is None and st.route_id is None:
            res.status, res.state = "unknown_trip", None
            self._end(st, res, "reassigned")
            del self.vehicles[pos.vehicle_id]
            return res

        run = st.run
        if run is not None:
            trip = run.trip
            if ((trip_id and trip_id != trip.trip_id)
                    or (st.route_id and st.route_id != trip.route_id)
                    or (st.direction_id is not None and trip.direction_id is not None
                        and st.direction_id != trip.direction_id)):
                self._end(st, res, "reassigned")
            elif t > run.arrival_at(trip.pattern.n_stops - 1) + self.settings.late_s:
                self._end(st, res, "expired")
        if st.run is not None:
            res.status = self._advance(st, fix, res)
            if res.status == "outlier":
                return res
        if st.run is None and res.status != "off_route":
            res.status = self._assign(st, fix, trip_id, res)
            if res.status in ("unknown_route", "unknown_trip"):
                del self.vehicles[pos.vehicle_id]  # not ours to track: keep no state
                res.state = None
                return res
        st.last = fix
        return res

    def _parse_route(self, raw: str | None) -> tuple[str | None, int | None]:
        if not raw:
            return None, None
        if self.schedule.has_route(raw):
            return raw, None
        route, sep, direction = raw.rpartition(":")
        if sep and direction.isdigit():
            return route, int(direction)
        return raw, None

    # ---- trip assignment -----------------------------------------------------------------
    def _assign(self, st: VehicleState, fix: Fix, trip_id: str | None, res: TrackResult) -> str:
        s = self.settings
        runs: list[TripRun] = []
        trusted = False
        if trip_id:
            runs = self.schedule.find_runs(trip_id, fix.t, slack_s=s.late_s)[:2]
            trusted = bool(runs)
            if not runs and st.route_id is None:  # not running now: its route may be
                st.route_id = self.schedule.trips_by_id[trip_id][0].route_id
        if not runs:
            if st.route_id is None or not self.schedule.has_route(st.route_id):
                return "unknown_route"
            runs = self.schedule.runs_between(st.route_id, st.direction_id, fix.t - s.late_s,
                                              fix.t + s.early_s)
            if not runs:
                return "no_trip"
        by_pattern: dict[str, tuple[Pattern, list[TripRun]]] = {}
        for r in runs:
            p = r.trip.pattern
            by_pattern.setdefault(p.pattern_id, (p, []))[1].append(r)
        prev = st.last if st.last and fix.t - st.last.t <= s.prev_fix_max_age_s else None
        best: tuple[float, TripRun, float, float | None] | None = None
        near_any = False
        done = st.last_run
        block = None if done is None or done.trip.block_id is None else (
            done.trip.block_id, done.service_date, done.trip.last_s)
        for pattern, pruns in by_pattern.values():
            shape = pattern.shape
            last_stop = pattern.stop_dist[-1]
            for a, off in shape.candidates(fix.lon, fix.lat, max_offset_m=s.assign_offset_m):
                near_any = True
                if a >= last_stop - s.end_margin_m:
                    continue  # at or near the last stop: that trip is over (or not worth it)
                heading_ok: bool | None = None
                if (fix.heading_deg is not None and fix.speed_ms is not None
                        and fix.speed_ms >= s.min_heading_speed_ms):
                    heading_ok = angle_diff(fix.heading_deg, shape.bearing_at(a)) <= \
                        s.heading_tolerance_deg
                a_prev = None
                if prev is not None:
                    back = s.max_speed_ms * (fix.t - prev.t) + s.stop_after_m
                    pc = shape.candidates(prev.lon, prev.lat, max_offset_m=s.assign_offset_m,
                                          lo_m=a - back, hi_m=a + s.motion_min_m * 2)
                    if pc:
                        a_prev = max(c[0] for c in pc)
                moved = None if a_prev is None else a - a_prev
                # Progress shows the way only beyond GPS noise, and not from a bus that says it
                # stands still; without a speed it takes twice the distance.
                need = s.motion_min_m * (2.0 if fix.speed_ms is None else 1.0)
                standing = fix.speed_ms is not None and fix.speed_ms < s.min_heading_speed_ms
                forward = moved is not None and moved >= need and not standing
                if heading_ok is False or (moved is not None and moved <= -need
                                           and not standing):
                    continue  # driving the other way
                if heading_ok is None and not trusted and not forward:
                    continue  # cannot tell the direction yet
                for r in pruns:
                    if r.key in st.completed:
                        continue
                    dev = fix.t - r.scheduled_time_at(a)
                    if not -s.early_s <= dev <= s.late_s:
                        continue
                    score = abs(dev) + 2.0 * off
                    if block is not None and r.trip.block_id == block[0] and \
                            r.service_date == block[1] and r.trip.first_s >= block[2]:
                        score -= s.block_bonus_s  # the next trip of the bus's block
                    owner = self.owners.get(r.key)
                    if owner is not None and owner != st.vehicle_id and self._live(owner, fix.t):
                        score += s.taken_penalty_s
                    if best is None or score < best[0]:
                        best = (score, r, a, a_prev)
        if best is None:
            # Near a shape but not placeable yet (standing, at a terminal, early): wait.
            return "unassigned" if near_any else "off_route"
        _, run, a, a_prev = best
        if a_prev is not None and prev is not None:
            # Start from the previous fix, then drive to this one: a bus leaving its first
            # stop between the two gets its departure.
            self._start(st, run, min(a_prev, a), prev.t)
            st.last = prev
            status = self._advance(st, fix, res)
            return "tracked" if status == "outlier" else status
        self._start(st, run, a, fix.t)
        return "tracked"

    def _live(self, vehicle_id: str, t: float) -> bool:
        other = self.vehicles.get(vehicle_id)
        return bool(other and other.run and other.last and t - other.last.t < 300.0)

    def _start(self, st: VehicleState, run: TripRun, along: float, t: float) -> None:
        s = self.settings
        d = run.trip.pattern.stop_dist
        n = len(d)
        k = 0
        while k < n and d[k] + s.stop_after_m < along:
            k += 1  # stops already behind the bus: no events for them
        st.run = run
        st.along_m = along
        st.off_count, st.off_since = 0, None
        st.last_event_t = -math.inf
        st.halt, st.halt_t, st.stood = [], None, False
        if k < n and d[k] - s.stop_before_m <= along:
            st.at_stop, st.arrived_t, st.next_stop = k, None, k + 1  # there, arrival unseen
            st.halt, st.halt_t, st.stood = [along], t, True
        else:
            st.at_stop, st.arrived_t, st.next_stop = None, None, k
        self.owners[run.key] = st.vehicle_id

    def _end(self, st: VehicleState, res: TrackResult, reason: str) -> None:
        run = st.run
        if run is None:
            return
        if self.owners.get(run.key) == st.vehicle_id:
            del self.owners[run.key]
        if reason == "completed":
            st.completed.append(run.key)
            st.last_run = run
        st.run = None
        st.at_stop = st.arrived_t = None
        res.ended.append((run, reason))

    # ---- progress and stop events --------------------------------------------------------
    def _advance(self, st: VehicleState, fix: Fix, res: TrackResult) -> str:
        s = self.settings
        assert st.run is not None and st.last is not None
        prev = st.last
        dt = max(fix.t - prev.t, 1e-3)
        shape = st.run.trip.pattern.shape
        v_ref = max((v for v in (fix.speed_ms, prev.speed_ms, st.moving_speed_ms)
                     if v is not None), default=s.max_speed_ms)
        reach = dt * max(1.6 * v_ref, 8.0) + s.stop_after_m
        cands = shape.candidates(fix.lon, fix.lat, max_offset_m=s.off_route_m,
                                 lo_m=st.along_m - s.back_tolerance_m,
                                 hi_m=st.along_m + dt * s.max_speed_ms + s.stop_after_m)
        if not cands:
            st.off_count += 1
            if st.off_since is None:
                st.off_since = fix.t
            if st.off_count >= 3 and fix.t - st.off_since >= s.off_route_drop_s:
                self._end(st, res, "off_route")
            return "off_route"
        st.off_count, st.off_since = 0, None
        a, off = min(cands, key=lambda c: c[1] + 0.2 * abs(c[0] - st.along_m))
        if a > st.along_m + reach:
            return "outlier"  # faster than the bus drives: wait for the next fix to confirm
        a1, a2 = st.along_m, max(a, st.along_m)
        n_events = len(res.events)
        self._stop_events(st, prev, a1, fix, a2, a, res)
        if fix.speed_ms is not None and fix.speed_ms > 2.0:
            st.moving_speed_ms = fix.speed_ms
        elif len(res.events) == n_events and (a2 - a1) / dt > 2.0:
            v = (a2 - a1) / dt
            st.moving_speed_ms = v if st.moving_speed_ms is None else \
                0.5 * st.moving_speed_ms + 0.5 * v
        st.along_m, st.offset_m = a2, off
        return "tracked"

    def _speed(self, fix: Fix, st: VehicleState) -> float | None:
        if fix.speed_ms is None:
            return st.moving_speed_ms
        return fix.speed_ms if fix.speed_ms >= 1.0 else None

    def _stop_events(self, st: VehicleState, prev: Fix, a1: float, fix: Fix, a2: float,
                     raw2: float, res: TrackResult) -> None:
        """Arrivals and departures between two fixes (``a`` ratcheted progress, ``raw2`` not)."""
        s = self.settings
        run = st.run
        assert run is not None
        d = run.trip.pattern.stop_dist
        n = len(d)
        t1, t2 = prev.t, fix.t
        unc = t2 - t1
        v1, v2 = self._speed(prev, st), self._speed(fix, st)
        slow2 = fix.speed_ms is not None and fix.speed_ms < 2.0
        # Several stops between two fixes: the speeds at the ends say little about the middle.
        spans = sum(1 for x in d if a1 < x <= a2) >= 2
        t_lo = max(t1, st.last_event_t)
        while st.run is not None:
            if st.at_stop is not None:
                k = st.at_stop
                if a2 <= d[k] + s.stop_after_m:
                    if fix.speed_ms is None or slow2:  # moving fixes say nothing of the halt
                        st.halt.append(raw2)
                        st.halt_t = t2
                    st.stood = st.stood or slow2 or (fix.speed_ms is None and len(st.halt) > 1)
                    break
                # Where it stood (median of the fixes there), else the stop itself.
                x = float(np.median(st.halt)) if st.halt else max(d[k], a1)
                ramp = s.accel_ms2 if st.stood else math.inf
                lo = max(st.last_event_t, st.halt_t if st.halt_t is not None else t1)
                if (prev.speed_ms is not None and prev.speed_ms >= 1.0 and a1 > x + 2.0
                        and not spans and lo < t1):
                    # Already pulling away at the first fix: it left before that.
                    t_dep = t1 - _ramp_time(a1 - x, prev.speed_ms, ramp)
                    t_dep, gap = min(max(t_dep, lo), t1), t1 - lo
                else:
                    if v2 is not None and not spans:
                        # From standstill it accelerated, then drove on at v2.
                        t_dep = t2 - _ramp_time(a2 - x, v2, ramp)
                    else:
                        t_dep = _interp_time(t1, a1, t2, a2, x)
                    t_dep, gap = min(max(t_dep, t_lo), t2), unc
                dwell = None if st.arrived_t is None else t_dep - st.arrived_t
                res.events.append(StopEvent("departure", run, k, t_dep, gap, dwell))
                st.at_stop = st.arrived_t = None
                t_lo = st.last_event_t = t_dep
                continue
            k = st.next_stop
            if k >= n:
                self._end(st, res, "completed")
                break
            if a2 < d[k] - s.stop_before_m:
                break
            in_zone = a2 <= d[k] + s.stop_after_m
            if a2 < d[k] and fix.speed_ms is not None and fix.speed_ms >= 1.0:
                break  # still rolling up to the stop: stopping or passing, the next fix tells
            stopping = in_zone and (slow2 or fix.speed_ms is None)
            # Stopped: where it stands (it may halt short of or past the pole); passed: the pole.
            x = min(max(raw2, d[k] - s.stop_before_m), d[k] + s.stop_after_m) \
                if stopping else d[k]
            if v1 is not None and not spans and x > a1:
                # It braked into the stop from v1, or drove past at about v1.
                t_arr = t1 + _ramp_time(x - a1, v1, s.decel_ms2 if stopping else math.inf)
            else:
                t_arr = _interp_time(t1, a1, t2, a2, min(x, a2))
            t_arr = min(max(t_arr, t_lo), t2)
            res.events.append(StopEvent("arrival", run, k, t_arr, unc))
            st.next_stop = k + 1
            t_lo = st.last_event_t = t_arr
            if k == n - 1:
                self._end(st, res, "completed")
                break
            st.at_stop, st.arrived_t = k, t_arr
            st.halt = [raw2] if stopping else []
            st.halt_t = t2 if stopping else None
            st.stood = stopping and fix.speed_ms is not None

    # ---- housekeeping --------------------------------------------------------------------
    def prune(self, now: float) -> list[tuple[str, TripRun, str]]:
        """Forget vehicles silent for ``idle_s``; returns (vehicle, trip, reason) of their trips."""
        out: list[tuple[str, TripRun, str]] = []
        for vid, st in list(self.vehicles.items()):
            if st.last is None or now - st.last.t > self.settings.idle_s:
                res = TrackResult("pruned")
                self._end(st, res, "lost")
                out.extend((vid, run, reason) for run, reason in res.ended)
                del self.vehicles[vid]
        return out
