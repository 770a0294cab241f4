"""Synthetic bus traces along a timetable trip, with ground truth, for tests and benchmarks.

A bus waits at its first stop until it departs, then drives the trip's shape in half-second
steps at the speed the road allows where and when it is (so congestion comes and goes), brakes
into each stop it serves (1.2 m/s²), dwells, accelerates away (1.0 m/s²) and drives through the
stops it skips. It reports every ``interval_s`` like an AVL unit: position with Gaussian noise,
speed, heading. The truth is each stop's arrival (the bus stands at the stop) and departure.

:class:`Traffic` is the road state the bus drives in, per segment and time; it also yields the
``SegmentSpeed`` events probe vehicles would have produced, so live speeds can be fed to the
predictor.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.bigdata.transit.predictor import ShapeSegments
from services.bigdata.transit.schedule import TripRun
from shared.events import SegmentSpeed, VehiclePosition

SpeedFn = Callable[[float, float], float]
"""(distance along the shape m, epoch s) → the speed the bus can drive there, m/s."""

_DECEL = 1.2
_ACCEL = 1.0


@dataclass(frozen=True, slots=True)
class TruthStop:
    """When the bus really arrived at and left one stop (epoch seconds)."""

    index: int
    stop_id: str
    arrival: float
    departure: float
    served: bool = True


@dataclass(slots=True)
class Trace:
    """What the bus reported, and what really happened."""

    vehicle_id: str
    run: TripRun
    positions: list[VehiclePosition] = field(default_factory=list)
    truth: list[TruthStop] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Slowdown:
    """Traffic on ``segment_ids`` moves at ``speed_kmh`` during [start, end) (epoch s)."""

    segment_ids: frozenset[str]
    start: float
    end: float
    speed_kmh: float


class Traffic:
    """Road speeds per segment and time: a base speed each, lowered by slowdowns."""

    def __init__(self, base_kmh: dict[str, float], slowdowns: Sequence[Slowdown] = (),
                 default_kmh: float = 30.0) -> None:
        self.base_kmh = base_kmh
        self.slowdowns = list(slowdowns)
        self.default_kmh = default_kmh

    def speed_kmh(self, segment_id: str | None, t: float) -> float:
        """Traffic speed on a segment at time t."""
        v = self.base_kmh.get(segment_id, self.default_kmh) if segment_id else self.default_kmh
        for s in self.slowdowns:
            if s.start <= t < s.end and segment_id in s.segment_ids:
                v = min(v, s.speed_kmh)
        return v

    def bus_speed(self, segments: ShapeSegments, *, cap_kmh: float = 45.0,
                  factor: float = 0.9) -> SpeedFn:
        """The speed function of a bus on a shape: a bit slower than traffic, capped."""
        starts = segments.starts

        def speed(along: float, t: float) -> float:
            i = bisect_right(starts, along) - 1
            seg = segments.ids[i] if 0 <= i < len(segments.ids) and \
                along < segments.ends[i] else None
            return min(self.speed_kmh(seg, t) * factor, cap_kmh) / 3.6

        return speed

    def window_events(self, segment_ids: Sequence[str], window_start: float, window_s: float,
                      rng: random.Random, noise: float = 0.08) -> list[SegmentSpeed]:
        """What probes measured on each segment over one window (speed ±noise, relative)."""
        mid = window_start + window_s / 2
        out = []
        for sid in segment_ids:
            v = self.speed_kmh(sid, mid) * (1.0 + rng.gauss(0.0, noise))
            out.append(SegmentSpeed(
                segment_id=sid, window_start=datetime.fromtimestamp(window_start, UTC),
                observed_at=datetime.fromtimestamp(window_start + window_s, UTC),
                speed_kmh=round(max(1.0, v), 2), sample_count=3, source="probe",
                confidence=0.6))
        return out


def drive(run: TripRun, *, vehicle_id: str, speed: SpeedFn, dwell: Callable[[int], float],
          rng: random.Random, depart_at: float | None = None, interval_s: float = 10.0,
          noise_m: float = 5.0, wait_before_s: float = 60.0, stay_after_s: float = 30.0,
          stop_offset_m: Callable[[int], float] | None = None, skip: Sequence[int] = (),
          route_id: str | None = None, trip_id: str | None = None,
          occupancy: str | None = None, occupancy_pct: float | None = None,
          report_speed: bool = True,
          report_heading: bool = True, dt: float = 0.5) -> Trace:
    """Drive one trip and report positions; see the module docstring.

    ``depart_at`` defaults to the scheduled departure from the first stop. ``stop_offset_m``
    moves where the bus halts relative to the stop (buses do not stop exactly at the pole).
    ``route_id``/``trip_id`` are what the positions carry (None: nothing, as a JT/T 808 terminal).
    """
    pattern = run.trip.pattern
    shape = pattern.shape
    n = pattern.n_stops
    halts = [float(pattern.stop_dist_m[k]) + (stop_offset_m(k) if stop_offset_m and
                                               k > 0 else 0.0) for k in range(n)]
    trace = Trace(vehicle_id, run)
    t_dep0 = run.departure_at(0) if depart_at is None else depart_at
    t = t_dep0 - wait_before_s
    along = halts[0]
    v = 0.0
    k_next = 1
    next_fix = t
    dwell_until = t_dep0
    trace.truth.append(TruthStop(0, pattern.stop_ids[0], t, t_dep0))
    last_heading = shape.bearing_at(along)
    end_t: float | None = None

    def report(t_now: float) -> None:
        nonlocal last_heading
        lon, lat = shape.point_at(along)
        lat += rng.gauss(0.0, noise_m) / 110_574.0
        lon += rng.gauss(0.0, noise_m) / (111_320.0 * math.cos(math.radians(lat)))
        if v > 0.5:
            last_heading = shape.bearing_at(along)
        heading = (last_heading + rng.gauss(0.0, 4.0)) % 360.0
        trace.positions.append(VehiclePosition(
            vehicle_id=vehicle_id, lon=lon, lat=lat,
            observed_at=datetime.fromtimestamp(round(t_now, 3), UTC),
            speed_kmh=round(max(0.0, v * 3.6 + (rng.gauss(0.0, 1.0) if v > 0.5 else 0.0)), 1)
            if report_speed else None,
            heading_deg=round(heading, 1) if report_heading else None,
            vehicle_class="bus", source="synthetic", route_id=route_id, trip_id=trip_id,
            occupancy=occupancy, occupancy_pct=occupancy_pct))

    while True:
        if t >= next_fix:
            report(t)
            next_fix += interval_s
        if end_t is not None:
            if t >= end_t:
                break
            t += dt
            continue
        if t < dwell_until:
            v = 0.0
            t = min(t + dt, dwell_until)
            continue
        target = halts[k_next]
        serve = k_next not in skip
        allowed = speed(along, t)
        if serve:
            allowed = min(allowed, math.sqrt(2 * _DECEL * max(0.0, target - along)))
        v = min(allowed, v + _ACCEL * dt)
        step = v * dt
        if along + step >= target - (0.3 if serve else 0.0):
            t_cross = t + (target - along) / max(v, 0.1)
            along = target
            if serve:
                v = 0.0
                if k_next == n - 1:
                    end_t = dwell_until = t_cross + stay_after_s
                else:
                    dwell_until = t_cross + dwell(k_next)
                trace.truth.append(TruthStop(k_next, pattern.stop_ids[k_next], t_cross,
                                             min(dwell_until, end_t or dwell_until)))
                k_next += 1
                t = t_cross
                continue
            trace.truth.append(TruthStop(k_next, pattern.stop_ids[k_next], t_cross, t_cross,
                                         served=False))
            k_next += 1
            t += dt
            continue
        along += step
        t += dt
    trace.truth.sort(key=lambda s: s.index)
    return trace
