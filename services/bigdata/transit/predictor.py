"""Arrival predictions for a tracked bus at each downstream stop of its trip.

The time to the next stops is a sum of runs (stop to stop) and dwells (at each stop between):

* **Run time** — the normal time for that stop pair, learned online per route, stop pair and
  time-of-day bucket (the mean of departures → next arrivals seen), or the timetable's until a
  pair has been seen twice. When live speeds (``tti.segment.speed``) cover most of the run, the
  road's current state is used instead: the time at those speeds (capped at a bus's speed),
  scaled by the learned ratio of bus time to road time for the pair (buses slow down for lights,
  accelerate slower, keep to the kerb). Live data says most about the next minutes, so for stops
  further ahead the estimate leans back towards the normal run time.
* **Dwell** — learned per route, stop and bucket (zero for stops the bus usually passes), else the
  timetable's. A bus at its first stop leaves at the scheduled departure (terminals hold).

The shape → road segment mapping comes from :meth:`RoadNetwork.nearest` on points every 10 m of
the shape, keeping the nearest segment that runs the shape's way.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.bigdata.transit.schedule import Pattern, Schedule, ShapeLine, TripRun
from services.bigdata.transit.tracker import VehicleState, angle_diff
from shared.roadnet import RoadNetwork

NetworkGetter = Callable[[], "RoadNetwork | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictorSettings:
    """Knobs of the prediction model (seconds, km/h)."""

    horizon_s: float = 3600.0  # predict stops up to this far ahead
    live_ttl_s: float = 300.0  # a segment speed older than this is not live any more
    bus_cap_kmh: float = 60.0  # buses do not drive faster than this whatever the traffic
    min_live_coverage: float = 0.5  # share of a run with live speeds needed to use them
    min_samples: int = 2  # learned values are used from this many observations on
    fallback_speed_kmh: float = 20.0  # run time when the timetable has none (equal times)


class SegmentSpeeds:
    """The latest live speed per road segment (from ``tti.segment.speed``)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._speeds: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._speeds)

    def update(self, segment_id: str, speed_kmh: float | None, observed_t: float) -> None:
        """Keep the newest value; a window without vehicles (None) clears the segment."""
        old = self._speeds.get(segment_id)
        if old is not None and old[1] > observed_t:
            return
        if speed_kmh is None or not speed_kmh > 0:
            self._speeds.pop(segment_id, None)
        else:
            self._speeds[segment_id] = (speed_kmh, observed_t)

    def find(self, segment_id: str, t: float) -> float | None:
        """The live speed (km/h) at event time ``t``, or None when unknown or stale."""
        v = self._speeds.get(segment_id)
        if v is None or t - v[1] > self.ttl_s:
            return None
        return v[0]


class ShapeSegments:
    """Which road segment each stretch of a shape runs on: ``[starts[i], ends[i]) → ids[i]``."""

    __slots__ = ("ends", "ids", "starts")

    def __init__(self, starts: list[float], ends: list[float], ids: list[str]) -> None:
        self.starts = starts
        self.ends = ends
        self.ids = ids

    @classmethod
    def from_network(cls, shape: ShapeLine, network: RoadNetwork, *, step_m: float = 10.0,
                     radius_m: float = 25.0) -> ShapeSegments:
        """Sample the shape every ``step_m`` and keep the nearest segment running its way."""
        starts: list[float] = []
        ends: list[float] = []
        ids: list[str] = []
        n = max(1, math.ceil(shape.length_m / step_m))
        for i in range(n):
            a, b = i * step_m, min((i + 1) * step_m, shape.length_m)
            mid = (a + b) / 2
            lon, lat = shape.point_at(mid)
            bearing = shape.bearing_at(mid)
            seg = next((c.segment_id for c in network.nearest(lon, lat, radius_m=radius_m)
                        if angle_diff(c.bearing_deg, bearing) <= 45.0), None)
            if seg is None:
                continue
            if ids and ids[-1] == seg and abs(ends[-1] - a) < 1e-6:
                ends[-1] = b
            else:
                starts.append(a)
                ends.append(b)
                ids.append(seg)
        return cls(starts, ends, ids)

    def live_time(self, a: float, b: float, speeds: SegmentSpeeds, t: float, cap_kmh: float
                  ) -> tuple[float, float]:
        """(seconds over the covered part, metres covered) of [a, b] at live speeds."""
        secs = covered = 0.0
        i = max(0, bisect_right(self.starts, a) - 1)
        while i < len(self.ids) and self.starts[i] < b:
            lo, hi = max(a, self.starts[i]), min(b, self.ends[i])
            if hi > lo:
                v = speeds.find(self.ids[i], t)
                if v is not None:
                    secs += (hi - lo) / (min(v, cap_kmh) / 3.6)
                    covered += hi - lo
            i += 1
        return secs, covered


class Learned:
    """Running means per key and time-of-day bucket, with an all-day fallback.

    The first samples are averaged evenly, later ones exponentially (weight 0.2) so the mean
    follows slow changes (road works, a new timetable) without forgetting at once.
    """

    def __init__(self, min_samples: int) -> None:
        self.min_samples = min_samples
        self._data: dict[tuple[object, str], list[float]] = {}

    def __len__(self) -> int:
        return len(self._data)

    def add(self, key: object, bucket: str, value: float) -> None:
        """Record one observation under its bucket and the all-day bucket."""
        for b in (bucket, "*"):
            e = self._data.get((key, b))
            if e is None:
                self._data[(key, b)] = [value, 1.0]
            else:
                e[1] += 1
                e[0] += (value - e[0]) * max(0.2, 1.0 / e[1])

    def find(self, key: object, bucket: str) -> float | None:
        """The bucket's mean, else the all-day mean, when seen often enough; else None."""
        for b in (bucket, "*"):
            e = self._data.get((key, b))
            if e is not None and e[1] >= self.min_samples:
                return e[0]
        return None

    def count(self, key: object, bucket: str) -> int:
        """Observations in the bucket."""
        e = self._data.get((key, bucket))
        return 0 if e is None else int(e[1])


def time_bucket(t: float, tz: ZoneInfo) -> str:
    """Weekday/weekend × night, morning peak, day, evening peak, evening (local time)."""
    local = datetime.fromtimestamp(t, UTC).astimezone(tz)
    h = local.hour
    period = ("night" if h < 6 else "am_peak" if h < 9 else "day" if h < 16
              else "pm_peak" if h < 19 else "evening")
    return ("weekend:" if local.weekday() >= 5 else "weekday:") + period


@dataclass(slots=True)
class _OpenRun:
    """A departure waiting for the next arrival, to learn the run time between them."""

    run_key: str
    from_index: int
    t_dep: float
    road_s: float | None  # live road time of the run at departure (for the bus/road ratio)


class Predictor:
    """Online run-time/dwell learning and per-stop arrival predictions."""

    def __init__(self, schedule: Schedule, *, network: NetworkGetter | None = None,
                 settings: PredictorSettings | None = None) -> None:
        self.schedule = schedule
        self.settings = settings or PredictorSettings()
        self.network = network
        self.speeds = SegmentSpeeds(self.settings.live_ttl_s)
        self.runs = Learned(self.settings.min_samples)
        self.ratios = Learned(self.settings.min_samples)
        self.dwells = Learned(self.settings.min_samples)
        self._segments: dict[str, ShapeSegments | None] = {}
        self._open: dict[str, _OpenRun] = {}

    # ---- road segments -------------------------------------------------------------------
    def segments_of(self, pattern: Pattern) -> ShapeSegments | None:
        """The pattern's shape → segment mapping (computed once, when a network is there)."""
        if pattern.pattern_id in self._segments:
            return self._segments[pattern.pattern_id]
        network = self.network() if self.network else None
        if network is None:
            return None  # not cached: the network may come later
        mapped = ShapeSegments.from_network(pattern.shape, network)
        self._segments[pattern.pattern_id] = mapped if mapped.ids else None
        return self._segments[pattern.pattern_id]

    def mapped(self, pattern: Pattern) -> bool:
        """Whether the pattern's mapping is known already (asking would not compute it)."""
        return pattern.pattern_id in self._segments

    def map_all(self) -> int:
        """Map every pattern now (blocking: run it in a thread); returns how many mapped."""
        return sum(self.segments_of(p) is not None for p in self.schedule.patterns)

    def road_time(self, pattern: Pattern, a: float, b: float, t: float) -> float | None:
        """Seconds to drive [a, b] at live speeds, if they cover enough of it."""
        if b <= a:
            return 0.0
        segs = self.segments_of(pattern)
        if segs is None:
            return None
        secs, covered = segs.live_time(a, b, self.speeds, t, self.settings.bus_cap_kmh)
        if covered < self.settings.min_live_coverage * (b - a):
            return None
        return secs * (b - a) / covered  # the uncovered rest at the covered part's pace

    # ---- estimates -----------------------------------------------------------------------
    def _bucket(self, t: float) -> str:
        return time_bucket(t, self.schedule.timezone)

    def normal_run_s(self, run: TripRun, j: int, k: int, bucket: str) -> float:
        """Usual time from stop j to stop k (learned, else the timetable's)."""
        trip = run.trip
        learned = self.runs.find((trip.route_id, trip.pattern.stop_ids[j],
                                  trip.pattern.stop_ids[k]), bucket)
        if learned is not None:
            return learned
        sched = float(trip.arrival_s[k] - trip.departure_s[j])
        if sched > 0:
            return sched
        dist = float(trip.pattern.stop_dist_m[k] - trip.pattern.stop_dist_m[j])
        return dist / (self.settings.fallback_speed_kmh / 3.6)

    def dwell_s(self, run: TripRun, k: int, bucket: str) -> float:
        """Usual dwell at stop k (learned, else the timetable's)."""
        trip = run.trip
        learned = self.dwells.find((trip.route_id, trip.pattern.stop_ids[k]), bucket)
        if learned is not None:
            return learned
        return float(trip.departure_s[k] - trip.arrival_s[k])

    def _leg_s(self, run: TripRun, j: int, k: int, pos: float, lead_s: float, t: float,
               bucket: str) -> float:
        p = run.trip.pattern
        d = p.stop_dist_m
        d_j, d_k = float(d[j]), float(d[k])
        remaining = max(0.0, d_k - pos)
        if remaining <= 0.0:
            return 0.0
        length = d_k - d_j
        frac = 1.0 if length <= 1.0 else min(1.0, remaining / length)
        normal = self.normal_run_s(run, j, k, bucket) * frac
        road = self.road_time(p, d_k - remaining, d_k, t)
        if road is None:
            return normal
        ratio = self.ratios.find((run.trip.route_id, p.stop_ids[j], p.stop_ids[k]), bucket)
        live = road * (ratio if ratio is not None else 1.0)
        # Live speeds tell most about the next ten minutes, less about the hour after.
        w = 1.0 if lead_s <= 600 else max(0.3, 1.0 - 0.7 * (lead_s - 600) / 3000)
        return w * live + (1 - w) * normal

    def predict(self, st: VehicleState, t: float) -> list[tuple[int, float]]:
        """``(stop index, predicted arrival epoch s)`` for the downstream stops in the horizon."""
        run = st.run
        if run is None:
            return []
        p = run.trip.pattern
        d = p.stop_dist_m
        n = p.n_stops
        bucket = self._bucket(t)
        clock = t
        pos = st.along_m
        if st.at_stop is not None:
            k = st.at_stop
            if k == 0:
                remaining = run.departure_at(0) - t  # terminals hold until departure time
            else:
                dwell = self.dwell_s(run, k, bucket)
                elapsed = t - st.arrived_t if st.arrived_t is not None else dwell / 2
                remaining = dwell - elapsed
            clock += max(0.0, remaining)
            pos = max(pos, float(d[k]))
        out: list[tuple[int, float]] = []
        for k in range(st.next_stop, n):
            if k == 0:
                # Not at the first stop yet (driving in from the depot): at least its time.
                clock = max(clock + self._leg_to_first(p, pos, t), t)
                out.append((0, float(clock)))
                clock = max(clock, run.departure_at(0))
                pos = float(d[0])
                continue
            clock += self._leg_s(run, k - 1, k, pos, clock - t, t, bucket)
            out.append((k, float(clock)))
            if clock - t > self.settings.horizon_s:
                break
            if k < n - 1:
                clock += self.dwell_s(run, k, bucket)
            pos = float(d[k])
        return out

    def _leg_to_first(self, p: Pattern, pos: float, t: float) -> float:
        gap = float(p.stop_dist_m[0]) - pos
        if gap <= 0:
            return 0.0
        road = self.road_time(p, pos, float(p.stop_dist_m[0]), t)
        return road if road is not None else gap / (self.settings.fallback_speed_kmh / 3.6)

    # ---- learning ------------------------------------------------------------------------
    def learn(self, vehicle_id: str, kind: str, run: TripRun, k: int, t: float,
              dwell_s: float | None, reliable: bool) -> None:
        """Learn from one stop event of a vehicle (unreliable ones only close open runs)."""
        trip = run.trip
        p = trip.pattern
        bucket = self._bucket(t)
        if kind == "departure":
            if reliable and dwell_s is not None and k > 0:
                self.dwells.add((trip.route_id, p.stop_ids[k]), bucket, max(0.0, dwell_s))
            if k + 1 < p.n_stops:
                road = self.road_time(p, float(p.stop_dist_m[k]), float(p.stop_dist_m[k + 1]), t)
                self._open[vehicle_id] = _OpenRun(run.key, k, t, road) if reliable else \
                    _OpenRun(run.key, -1, t, None)
            return
        open_run = self._open.pop(vehicle_id, None)
        if (not reliable or open_run is None or open_run.run_key != run.key
                or open_run.from_index != k - 1):
            return
        observed = t - open_run.t_dep
        if observed <= 0:
            return
        key = (trip.route_id, p.stop_ids[k - 1], p.stop_ids[k])
        self.runs.add(key, bucket, observed)
        if open_run.road_s and open_run.road_s > 0:
            self.ratios.add(key, bucket, min(3.0, max(0.5, observed / open_run.road_s)))

    def forget_vehicle(self, vehicle_id: str) -> None:
        """Drop the open run of a vehicle whose trip ended."""
        self._open.pop(vehicle_id, None)

