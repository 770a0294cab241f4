"""Arrival predictions for a tracked bus at each downstream stop of its trip.

The time to the next stops is a sum of runs (stop to stop) and dwells (at each stop between):

* **Run time** — the normal time for that stop pair, learned online per route, stop pair and
  time-of-day bucket (the median of the last five departures → next arrivals seen, so one bus
  that met an incident does not set it), or the timetable's until a pair has been seen twice.
  When live speeds (``tti.segment.speed``) cover most of the run, the estimate moves towards
  what the road says now: free-flow time (capped at a bus's speed) plus the delay the live
  windows testify to (:func:`segment_delay_s`: a car that waited at one red says a minute at
  most, a queue says what it shows), scaled by the learned ratio of bus time to road time for
  the pair (buses slow down for lights, accelerate slower, keep to the kerb). How far it moves
  (:meth:`Predictor.live_weight`) is how much the windows say — their vehicles, vehicle-time
  and age — times how soon the bus gets there: fully for the next three minutes, fading to a
  fifth from a quarter of an hour on, where the run times buses had know better (much as
  TheTransitClock's Kalman filter weighs the last vehicle's time on a stop path against the
  times of earlier days).
* **Dwell** — learned per route, stop and bucket (zero for stops the bus usually passes), else the
  timetable's. A bus at its first stop leaves at the scheduled departure (terminals hold).

The shape → road segment mapping comes from :meth:`RoadNetwork.nearest` on points every 10 m of
the shape, keeping the nearest segment that runs the shape's way.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import deque
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
    live_half_life_s: float = 120.0  # a window's weight halves with this age (the road changes)
    live_full_s: float = 180.0  # live speeds count fully for stops reached this soon ...
    live_fade_s: float = 900.0  # ... then less and less, down to live_floor from here on
    live_floor: float = 0.2
    bus_cap_kmh: float = 60.0  # buses do not drive faster than this whatever the traffic
    min_live_coverage: float = 0.5  # share of a run with live speeds needed to use them
    min_samples: int = 2  # learned values are used from this many observations on
    median_of: int = 5  # run times and ratios: the median of this many latest observations
    fallback_speed_kmh: float = 20.0  # run time when the timetable has none (equal times)


@dataclass(frozen=True, slots=True)
class SpeedWindow:
    """One published window of a segment: its speed and how much it says."""

    speed_kmh: float
    observed_t: float  # end of the window (epoch s)
    duration_s: float  # length of the window
    confidence: float  # 0-1, from the vehicles and vehicle-time behind it
    free_flow_kmh: float | None


def window_confidence(sample_count: int) -> float:
    """Trust in a window from its vehicle count alone (as ``speeds.confidence`` without time)."""
    return 1.0 - math.exp(-max(0, sample_count) / 3.0)


class SegmentSpeeds:
    """The recent live windows per road segment (from ``tti.segment.speed``), newest last.

    One window is one minute of whichever vehicles were there — often a single car. Keeping the
    few windows of the last ``ttl_s`` lets :func:`segment_delay_s` tell a car that waited at one red
    (one slow window among quick ones) from a queue (slow window after slow window).
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._windows: dict[str, list[SpeedWindow]] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def update(self, segment_id: str, speed_kmh: float | None, observed_t: float, *,
               sample_count: int = 1, confidence: float | None = None,
               window_s: float = 60.0, free_flow_kmh: float | None = None) -> None:
        """Add a window (a later revision of the same window replaces it; older ones are
        ignored); a window without vehicles (None) clears the segment. Without a
        ``confidence``, the vehicle count gives one."""
        ws = self._windows.get(segment_id)
        if ws and ws[-1].observed_t > observed_t:
            return
        if speed_kmh is None or not speed_kmh > 0:
            self._windows.pop(segment_id, None)
            return
        conf = window_confidence(sample_count) if confidence is None else confidence
        w = SpeedWindow(speed_kmh, observed_t, max(1.0, window_s), max(0.0, min(1.0, conf)),
                        free_flow_kmh)
        if ws is None:
            self._windows[segment_id] = [w]
            return
        if ws[-1].observed_t == observed_t:
            ws[-1] = w
        else:
            ws.append(w)
        while ws and observed_t - ws[0].observed_t > self.ttl_s:
            ws.pop(0)

    def fresh(self, segment_id: str, t: float) -> list[SpeedWindow]:
        """The windows still live at event time ``t`` (none older than ``ttl_s``)."""
        return [w for w in self._windows.get(segment_id, ()) if t - w.observed_t <= self.ttl_s]

    def find(self, segment_id: str, t: float) -> float | None:
        """The newest live speed (km/h) at event time ``t``, or None when unknown or stale."""
        ws = self._windows.get(segment_id)
        if not ws or t - ws[-1].observed_t > self.ttl_s:
            return None
        return ws[-1].speed_kmh


@dataclass(frozen=True, slots=True)
class LiveRun:
    """What the live windows say of a stretch of the shape (seconds, metres)."""

    free_s: float  # the covered part at free flow (capped at a bus's speed)
    delay_s: float  # the delay the windows testify to over the covered part
    covered_m: float
    trusted_m: float  # covered metres weighed by the trust in their windows (0-1 each)


def segment_delay_s(windows: list[SpeedWindow], length_m: float, free_kmh: float,
                    cap_kmh: float, t: float, half_life_s: float = 120.0
                    ) -> tuple[float, float]:
    """(delay over free flow on ``length_m`` of a segment, trust 0-1) from its live windows.

    A window's speed is distance over time of the vehicles there that minute. Read as the
    speed of the whole segment it turns one car that waited 50 s at the stop line into a
    segment "at 3 km/h", minutes long — but a bus meets that red once. So the windows are read
    as delay, and no window testifies to more delay than it lasted: the estimate is their
    confidence-weighted mean delay, bounded by the sum over the windows of each one's delay up
    to its own duration. One slow minute among quick ones (a red) adds at most a minute; a
    queue, slow window after slow window, adds what it shows. Newer windows weigh more (their
    weight halves every ``half_life_s``). Trust is the chance that at least one window is
    right, ``1 − Π(1 − confidence × recency)``: three cars or several minutes say more than one
    car once (bigdata's confidence of one car over a whole window is 0.28).
    """
    free_pace = 3.6 / min(free_kmh, cap_kmh)
    raw = vouched = weights = minutes = 0.0
    miss = 1.0
    for w in windows:
        delay = length_m * (3.6 / min(w.speed_kmh, cap_kmh) - free_pace)
        recency = 0.5 ** (max(0.0, t - w.observed_t) / half_life_s)
        weight = max(w.confidence, 1e-3) * recency
        shown = min(max(0.0, delay), w.duration_s)
        raw += weight * delay
        vouched += weight * shown
        weights += weight
        minutes += shown / w.duration_s
        miss *= 1.0 - w.confidence * recency
    if weights <= 0:
        return 0.0, 0.0
    return min(raw / weights, max(1.0, minutes) * vouched / weights), 1.0 - miss


class ShapeSegments:
    """Which road segment each stretch of a shape runs on: ``[starts[i], ends[i]) → ids[i]``,
    with the segment's free-flow speed (km/h, None when unknown)."""

    __slots__ = ("ends", "free_kmh", "ids", "starts")

    def __init__(self, starts: list[float], ends: list[float], ids: list[str],
                 free_kmh: list[float | None] | None = None) -> None:
        self.starts = starts
        self.ends = ends
        self.ids = ids
        self.free_kmh = free_kmh if free_kmh is not None else [None] * len(ids)

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
        free: list[float | None] = []
        for sid in ids:
            found = network.find_segment(sid)
            free.append(found.free_flow_kmh if found is not None else None)
        return cls(starts, ends, ids, free)

    def live_time(self, a: float, b: float, speeds: SegmentSpeeds, t: float, cap_kmh: float,
                  half_life_s: float = 120.0) -> LiveRun:
        """What the live windows at event time ``t`` say of [a, b] (see :func:`segment_delay_s`).

        A piece of a segment the stretch covers only in part gets that share of the delay the
        windows show for the whole piece: the bound on what a window testifies to holds for
        the segment, not per metre."""
        free_s = delay_s = covered = trusted = 0.0
        i = max(0, bisect_right(self.starts, a) - 1)
        while i < len(self.ids) and self.starts[i] < b:
            lo, hi = max(a, self.starts[i]), min(b, self.ends[i])
            windows = speeds.fresh(self.ids[i], t) if hi > lo else []
            if windows:
                ff = min(windows[-1].free_flow_kmh or self.free_kmh[i] or cap_kmh, cap_kmh)
                piece = self.ends[i] - self.starts[i]
                delay, trust = segment_delay_s(windows, piece, ff, cap_kmh, t, half_life_s)
                free_s += (hi - lo) * 3.6 / ff
                delay_s += delay * (hi - lo) / piece
                covered += hi - lo
                trusted += trust * (hi - lo)
            i += 1
        return LiveRun(free_s, delay_s, covered, trusted)


class Learned:
    """Running values per key and time-of-day bucket, with an all-day fallback.

    By default a mean: the first samples averaged evenly, later ones exponentially (weight 0.2)
    so it follows slow changes (road works, a new timetable) without forgetting at once. With
    ``median_of`` it is the median of the last that many samples instead — for run times, where
    one bus caught in an incident's queue is not what the next one meets once it has cleared
    (live speeds tell while it has not), and a mean would carry that run for many trips
    (TheTransitClock likewise filters out-of-bounds travel times before averaging).
    """

    def __init__(self, min_samples: int, *, median_of: int | None = None) -> None:
        self.min_samples = min_samples
        self.median_of = median_of
        self._data: dict[tuple[object, str], list[float]] = {}
        self._recent: dict[tuple[object, str], deque[float]] = {}

    def __len__(self) -> int:
        return len(self._data)

    def add(self, key: object, bucket: str, value: float) -> None:
        """Record one observation under its bucket and the all-day bucket."""
        for b in (bucket, "*"):
            e = self._data.get((key, b))
            if e is None:
                e = self._data[(key, b)] = [value, 1.0]
            else:
                e[1] += 1
                e[0] += (value - e[0]) * max(0.2, 1.0 / e[1])
            if self.median_of:
                recent = self._recent.get((key, b))
                if recent is None:
                    recent = self._recent[(key, b)] = deque(maxlen=self.median_of)
                recent.append(value)
                e[0] = statistics.median(recent)

    def find(self, key: object, bucket: str, *, prior: float | None = None) -> float | None:
        """The bucket's value, else the all-day one, when seen often enough; else None.

        With ``median_of``, a ``prior`` (the timetable's value) counts as one more sample in
        the median, so that two observations, one of them an incident's, do not set it."""
        for b in (bucket, "*"):
            e = self._data.get((key, b))
            if e is not None and e[1] >= self.min_samples:
                recent = self._recent.get((key, b))
                if prior is not None and recent:
                    return float(statistics.median([*recent, prior]))
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
        # Run times and bus/road ratios robust to a bus that met an incident; dwells a mean
        # (their long tail is part of what riders wait for).
        self.runs = Learned(self.settings.min_samples, median_of=self.settings.median_of)
        self.ratios = Learned(self.settings.min_samples, median_of=self.settings.median_of)
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

    def road_time(self, pattern: Pattern, a: float, b: float, t: float
                  ) -> tuple[float, float] | None:
        """(seconds to drive [a, b] as the live windows say, trust 0-1 in that), if they cover
        enough of it; the uncovered rest at the covered part's pace, and trusted not at all."""
        if b <= a:
            return 0.0, 1.0
        segs = self.segments_of(pattern)
        if segs is None:
            return None
        live = segs.live_time(a, b, self.speeds, t, self.settings.bus_cap_kmh,
                              self.settings.live_half_life_s)
        if live.covered_m < self.settings.min_live_coverage * (b - a):
            return None
        return (live.free_s + live.delay_s) * (b - a) / live.covered_m, live.trusted_m / (b - a)

    # ---- estimates -----------------------------------------------------------------------
    def _bucket(self, t: float) -> str:
        return time_bucket(t, self.schedule.timezone)

    def normal_run_s(self, run: TripRun, j: int, k: int, bucket: str) -> float:
        """Usual time from stop j to stop k (learned, else the timetable's)."""
        trip = run.trip
        sched = float(trip.arrival_s[k] - trip.departure_s[j])
        learned = self.runs.find((trip.route_id, trip.pattern.stop_ids[j],
                                  trip.pattern.stop_ids[k]), bucket,
                                 prior=sched if sched > 0 else None)
        if learned is not None:
            return learned
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
        found = self.road_time(p, d_k - remaining, d_k, t)
        if found is None:
            return normal
        road, trust = found
        ratio = self.ratios.find((run.trip.route_id, p.stop_ids[j], p.stop_ids[k]), bucket,
                                 prior=1.0)
        live = road * (ratio if ratio is not None else 1.0)
        return self.live_weight(lead_s, trust) * (live - normal) + normal

    def live_weight(self, lead_s: float, trust: float) -> float:
        """How far a leg's estimate moves from its normal run time to what the road says now.

        As much as the windows are trusted (:func:`segment_delay_s`), and by how soon the bus
        gets there: the state of a road now tells about the next few minutes, little about a
        quarter of an hour on (a red has cycled, a queue has grown or gone), where the run
        times buses actually had (learned, else the timetable) are the better guess.
        """
        s = self.settings
        if lead_s <= s.live_full_s:
            fade = 1.0
        elif lead_s >= s.live_fade_s:
            fade = s.live_floor
        else:
            fade = 1.0 - (1.0 - s.live_floor) * (lead_s - s.live_full_s) / (
                s.live_fade_s - s.live_full_s)
        return max(0.0, min(1.0, trust)) * fade

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
        found = self.road_time(p, pos, float(p.stop_dist_m[0]), t)
        return found[0] if found is not None else gap / (self.settings.fallback_speed_kmh / 3.6)

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
                found = self.road_time(p, float(p.stop_dist_m[k]), float(p.stop_dist_m[k + 1]),
                                       t)
                road = None if found is None else found[0]
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

