"""Per-segment space-mean speeds in fixed windows, from matched vehicle pieces and detectors.

**Space-mean speed** over a window is total distance driven on the segment divided by total time
spent driving it (Σd / Σt), which weighs slow vehicles correctly, unlike an average of spot
speeds. An interval between two decided fixes is laid out in time (driving and standing in the
order they happened, ending at the later fix) and split at window boundaries, so each window gets
the distance and the time that fell in it (within a piece the speed is taken as constant).

**Stops that are not traffic.** A `VehicleProbe` (one per vehicle: its map matcher plus a little
state) splits each interval between two decided fixes into driving and standing (an interval in
which the vehicle pulled up or drove off has both: driving took distance / reported speed, the
rest was standing) and labels the standing time with a `Motion`:

- ``moving``: no standing at all (≥ ``stationary_kmh`` throughout, as far as we can tell);
- ``queued``: standing, ignition on, within ``approach_m`` of the segment's downstream end — at
  a red light, a stop line or in the queue before the junction: travel time (GB/T 33171 grades
  travel speed, delay at signals included), always counted;
- ``bus_stop``: a bus standing within ``stop_radius_m`` of a bus stop — dwell, excluded;
- ``acc_off``: standing with the ignition off (JT/T 808 status bit 0) — parked, excluded;
- ``parked``: standing, ignition on or unknown, for more than ``parked_after_s`` so far;
- ``stopped``: any other standing (mid-block: kerbside, or a queue).

Other standing time counts towards a window only when it is evidence of congestion, decided when
the window closes, after partial windows from every pod are merged (so the rule sees all vehicles):

- if traffic through the segment flows (moving vehicles at ≥ ``flowing_kmh``), standing vehicles
  are kerbside (loading, waiting) unless at least ``queue_min_vehicles`` of them stand
  ``stopped`` (a queue at a light); ``parked`` time is never counted;
- if it does not flow, standing time (``stopped`` and ``parked``) counts when at least
  ``queue_min_vehicles`` distinct vehicles were on the segment: a queue in an incident reads as
  congestion, a lone parked car does not.

**Partial windows across pods.** Vehicles are partitioned across bigdata pods, so each pod sees
part of every segment's traffic. A `SpeedPartial` holds integer sums (millimetres, milliseconds)
and sets of 64-bit vehicle keys per motion class, so merging partials is exact, associative and
commutative: pods publish partials once a window is over (`SpeedWindows.drain_partials`), and a
merger (`SpeedWindows.add_partial` + `close_due`) closes each segment × window after its grace
period with the same result one aggregator fed every vehicle would give.

**Fusion with roadside detectors.** `fuse_speeds` merges a probe window and the detector readings
of the same segment and window by a vehicle-count-weighted harmonic mean (see its docstring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from services.bigdata.matching import MatchResult, OnlineMatcher, Piece
from shared.events import DetectorReading
from shared.geo import haversine_m
from shared.roadnet import Candidate

__all__ = [
    "FUSED_SOURCE",
    "DwellRules",
    "FusedSpeed",
    "Motion",
    "ProbeSample",
    "SettleSchedule",
    "SpeedPartial",
    "SpeedWindows",
    "StopIndex",
    "VehicleProbe",
    "WindowSpeed",
    "confidence",
    "fuse_speeds",
    "vehicle_key",
]

FUSED_SOURCE = "probe+detector"
"""``source`` of a value that combines probe vehicles and roadside detectors."""

_MIN_FUSION_KMH = 1.0


class Motion(StrEnum):
    """What a vehicle did between two decided fixes (see the module docstring)."""

    MOVING = "moving"
    QUEUED = "queued"
    STOPPED = "stopped"
    PARKED = "parked"
    BUS_STOP = "bus_stop"
    ACC_OFF = "acc_off"


@dataclass(frozen=True, slots=True)
class DwellRules:
    """When standing is dwell or parking rather than traffic (metres, seconds, km/h)."""

    stationary_kmh: float = 3.0
    # Standing this close to the segment's downstream end is at the junction (a red light, a
    # stop line, the queue before them): SUMO, demo city, 10 s reports: 90 % of the stops at
    # signals are matched within 40 m of the segment's end.
    approach_m: float = 80.0
    stop_radius_m: float = 30.0
    parked_after_s: float = 300.0
    bus_classes: frozenset[str] = frozenset({"bus"})
    flowing_kmh: float = 15.0
    queue_min_vehicles: int = 2


class StopIndex:
    """Bus stop points (lon, lat) on a grid, for "is this within r metres of a stop?"."""

    _CELL_DEG = 0.001  # ~100 m: a 30 m radius touches at most four cells

    def __init__(self, points: Iterable[tuple[float, float]]) -> None:
        self._cells: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for lon, lat in points:
            self._cells.setdefault(self._cell(lon, lat), []).append((lon, lat))

    def _cell(self, lon: float, lat: float) -> tuple[int, int]:
        return math.floor(lon / self._CELL_DEG), math.floor(lat / self._CELL_DEG)

    def __len__(self) -> int:
        return sum(len(v) for v in self._cells.values())

    def near(self, lon: float, lat: float, radius_m: float) -> bool:
        """Whether a stop lies within ``radius_m`` (≤ 100 m) of the point."""
        cx, cy = self._cell(lon, lat)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for slon, slat in self._cells.get((cx + dx, cy + dy), ()):
                    if haversine_m(lon, lat, slon, slat) <= radius_m:
                        return True
        return False


@dataclass(frozen=True, slots=True)
class ProbeSample:
    """A decided fix of one vehicle and what it did since the previous decided fix.

    The interval's pieces are split into ``moving`` (driven, with the time spent driving) and
    ``standing`` (zero distance; the rest of the time), and ``motion`` labels the standing
    part (`Motion.MOVING` when the vehicle never stood). An interval in which a vehicle pulled
    up or drove off has both: ``standing_first`` says it drove off (stood, then drove), else
    it drove, then stood. The interval ends at ``result.t``. ``tag`` is what the caller passed
    with the fix to
    `VehicleProbe.update` (the app: the position's envelope, for the vehicles it publishes on
    their roads), None otherwise.
    """

    result: MatchResult
    motion: Motion
    moving: tuple[Piece, ...] = ()
    standing: tuple[Piece, ...] = ()
    tag: object = None
    standing_first: bool = False

    def timeline(self) -> tuple[tuple[Piece, Motion], ...]:
        """The interval's pieces in the order they happened, each with its motion class."""
        moving = tuple((p, Motion.MOVING) for p in self.moving)
        standing = tuple((p, self.motion) for p in self.standing)
        return standing + moving if self.standing_first else moving + standing


class VehicleProbe:
    """One vehicle's map matcher and stop state: positions in, labelled samples out.

    Memory is bounded: the matcher's window plus the inputs it has not decided yet (≤ lag).
    """

    __slots__ = ("_inputs", "_last_t", "_prev", "_run_start", "matcher", "rules", "stops",
                 "vehicle_class", "vehicle_id")

    def __init__(self, vehicle_id: str, matcher: OnlineMatcher, *, vehicle_class: str = "other",
                 rules: DwellRules | None = None, stops: StopIndex | None = None) -> None:
        self.vehicle_id = vehicle_id
        self.matcher = matcher
        self.vehicle_class = vehicle_class
        self.rules = rules or DwellRules()
        self.stops = stops
        # (t, speed, acc_on, tag) of fixes the matcher has not decided yet: with a lag, a
        # result is for a fix older than the one just received, and that fix's own values are
        # wanted.
        self._inputs: list[tuple[float, float | None, bool | None, object]] = []
        self._last_t = -math.inf
        # The previous decided fix: reported speed, ignition, matched position (lon, lat, and
        # metres before the end of its segment).
        self._prev: tuple[float | None, bool | None, float, float, float] | None = None
        self._run_start: float | None = None

    def update(self, t: float, lon: float, lat: float, *, heading: float | None = None,
               speed_kmh: float | None = None, acc_on: bool | None = None,
               vehicle_class: str | None = None, tag: object = None) -> list[ProbeSample]:
        """Feed one fix (``t`` in epoch seconds); return the samples it lets us decide.

        ``tag`` comes back on the fix's own sample (held only until it is decided).
        """
        if vehicle_class is not None:
            self.vehicle_class = vehicle_class
        if t <= self._last_t:
            return []  # the matcher ignores it too
        self._last_t = t
        self._inputs.append((t, speed_kmh, acc_on, tag))
        return self._label(self.matcher.update(t, lon, lat, heading=heading,
                                               speed_kmh=speed_kmh))

    @property
    def undecided_since(self) -> float | None:
        """Where this vehicle's undecided time begins (s); None when nothing is pending."""
        return self.matcher.undecided_since

    def settle(self, before_t: float) -> list[ProbeSample]:
        """Decide the pending fixes whose interval begins before ``before_t``, keeping the
        chain (see `OnlineMatcher.settle`): a vehicle gone quiet while its windows close."""
        return self._label(self.matcher.settle(before_t))

    def flush(self) -> list[ProbeSample]:
        """Decide what is pending (vehicle idle or evicted)."""
        out = self._label(self.matcher.flush())
        self._inputs.clear()
        return out

    def _label(self, results: list[MatchResult]) -> list[ProbeSample]:
        out = []
        for r in results:
            speed: float | None = None
            acc_on: bool | None = None
            tag: object = None
            while self._inputs and self._inputs[0][0] <= r.t:
                t_in, v, acc, held = self._inputs.pop(0)
                if t_in == r.t:
                    speed, acc_on, tag = v, acc, held
            sample = self._sample(r, speed, acc_on)
            out.append(sample if tag is None else dataclasses.replace(sample, tag=tag))
            where = r.candidate
            self._prev = None if where is None else (speed, acc_on, where.lon, where.lat,
                                                     self._to_end(where))
        return out

    def _to_end(self, where: Candidate) -> float:
        """Metres from a matched position to the downstream end of its segment."""
        graph = self.matcher.graph
        return graph.seg_len[graph.seg_index[where.segment_id]] - where.offset_m

    def _sample(self, r: MatchResult, speed: float | None, acc_on: bool | None) -> ProbeSample:
        rules = self.rules
        prev = self._prev
        duration = sum(p.duration_s for p in r.pieces)
        if not r.pieces or duration <= 0.0 or prev is None:
            self._run_start = None
            return ProbeSample(r, Motion.MOVING, r.pieces)
        distance = sum(p.distance_m for p in r.pieces)
        slow = rules.stationary_kmh
        v0, v1 = prev[0], speed
        stood_at_start = v0 is not None and v0 < slow
        stood_at_end = v1 is not None and v1 < slow
        if distance / duration * 3.6 < slow:
            # Standing all along (jitter aside).
            drive_s = 0.0
        elif stood_at_start != stood_at_end:
            # Pulled up or drove off in between: driving took distance / speed of the moving
            # end (speeds change in steps, as at a stop line), the rest was standing.
            v = v0 if stood_at_end else v1
            assert v is not None
            drive_s = min(duration, distance / max(v / 3.6, 0.1))
        else:
            self._run_start = None
            return ProbeSample(r, Motion.MOVING, r.pieces)
        stand_s = duration - drive_s
        if stand_s < 1.0:
            self._run_start = None
            return ProbeSample(r, Motion.MOVING, r.pieces)
        scale = drive_s / duration
        moving = tuple(Piece(p.segment_id, p.distance_m, p.duration_s * scale)
                       for p in r.pieces if p.distance_m > 0.0) if drive_s > 0.0 else ()
        # The standing happened on the segment at the standing end of the interval.
        at_start = stood_at_start and not stood_at_end
        standing = (Piece((r.pieces[0] if at_start else r.pieces[-1]).segment_id, 0.0, stand_s),)
        if at_start:
            acc_on, lon, lat, to_end = prev[1], prev[2], prev[3], prev[4]
            run_start = self._run_start if self._run_start is not None else r.t - duration
            run_end = r.t - drive_s
            self._run_start = None  # it drives on
        else:
            where = r.candidate
            lon, lat = (where.lon, where.lat) if where is not None else (r.lon, r.lat)
            to_end = self._to_end(where) if where is not None else math.inf
            if self._run_start is None:
                self._run_start = r.t - stand_s
            run_start, run_end = self._run_start, r.t
        if acc_on is False:
            motion = Motion.ACC_OFF
        elif (self.vehicle_class in rules.bus_classes and self.stops is not None
              and self.stops.near(lon, lat, rules.stop_radius_m)):
            motion = Motion.BUS_STOP
        elif run_end - run_start > rules.parked_after_s:
            motion = Motion.PARKED
        elif to_end <= rules.approach_m:
            motion = Motion.QUEUED
        else:
            motion = Motion.STOPPED
        return ProbeSample(r, motion, moving, standing, standing_first=at_start)

    def state_size(self) -> int:
        """Units of memory held for this vehicle (bounded by the matcher's lag)."""
        return self.matcher.state_size() + len(self._inputs)


class SettleSchedule:
    """When each vehicle's undecided fixes must be decided so that its windows get them.

    The matcher decides a fix once newer fixes span its lag. A vehicle that goes quiet (its
    trip over, out of coverage, the terminal switched off) or reports less often than the lag
    and the windows' grace allow would have its last interval decided only when it is evicted,
    long after the windows it fell in were closed: the end of each trip lost, its queue at the
    last light with it. Each vehicle with undecided time is kept here under the moment the
    window that time begins in closes; `settle`, called on every flush tick before windows
    close, decides (`VehicleProbe.settle`) what a window closing before the next tick needs.
    A vehicle reporting on time is decided by its matcher first and is not touched.

    Memory: at most a few entries per vehicle with undecided fixes (stale ones are skipped).
    """

    def __init__(self, windows: SpeedWindows, *, lead_s: float) -> None:
        self.windows = windows
        self.lead_s = lead_s
        self._heap: list[tuple[float, str]] = []
        self._noted: dict[str, float] = {}
        self.settled = 0
        """Fixes decided here rather than by their matcher's lag (diagnostics)."""

    def __len__(self) -> int:
        return len(self._noted)

    def note(self, vehicle_id: str, probe: VehicleProbe) -> None:
        """Keep ``probe`` under the closing time of the window its undecided time begins in
        (call after each update)."""
        since = probe.undecided_since
        if since is None:
            return
        deadline = self.windows.closes_at(since)
        if self._noted.get(vehicle_id, math.inf) <= deadline:
            return  # an earlier (or the same) deadline is waiting already
        self._noted[vehicle_id] = deadline
        heapq.heappush(self._heap, (deadline, vehicle_id))

    def settle(self, now: float, find: Callable[[str], VehicleProbe | None]
               ) -> list[tuple[str, list[ProbeSample]]]:
        """Decide, for every vehicle whose oldest undecided time falls in a window closing
        within ``lead_s`` of ``now``, the fixes that window needs; ``find`` gives the probe of
        a vehicle id (None: gone, nothing to do). Returns (vehicle id, samples) to add."""
        at = now + self.lead_s
        before = self.windows.open_since(at)
        out = []
        heap = self._heap
        while heap and heap[0][0] <= at:
            deadline, vid = heapq.heappop(heap)
            if self._noted.get(vid) != deadline:
                continue  # superseded by an earlier deadline, already handled
            del self._noted[vid]
            probe = find(vid)
            if probe is None:
                continue
            samples = probe.settle(before)
            if samples:
                self.settled += len(samples)
                out.append((vid, samples))
            self.note(vid, probe)
        return out


def vehicle_key(vehicle_id: str) -> int:
    """A stable 64-bit key for a vehicle id: partials carry keys, not phone numbers."""
    return int.from_bytes(hashlib.blake2b(vehicle_id.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class _Class:
    """Sums for one motion class: integer mm and ms so that merging is exact."""

    mm: int = 0
    ms: int = 0
    vehicles: set[int] = field(default_factory=set)

    def merge(self, other: _Class) -> None:
        self.mm += other.mm
        self.ms += other.ms
        self.vehicles |= other.vehicles


@dataclass(slots=True)
class SpeedPartial:
    """One pod's share of one segment × window; `merge` of any split of vehicles is exact.

    ``moving``, ``queued``, ``stopped`` and ``parked`` hold distance (mm), time (ms) and the
    vehicle keys; ``excluded_ms`` counts dwell at bus stops and ignition-off time (diagnostics
    only).
    """

    segment_id: str
    bucket: int
    window_s: float
    moving: _Class = field(default_factory=_Class)
    stopped: _Class = field(default_factory=_Class)
    parked: _Class = field(default_factory=_Class)
    excluded_ms: int = 0
    queued: _Class = field(default_factory=_Class)

    @property
    def window_start(self) -> datetime:
        """Start of the window (UTC)."""
        return datetime.fromtimestamp(self.bucket * self.window_s, UTC)

    def merge(self, other: SpeedPartial) -> None:
        """Add another partial of the same segment and window into this one."""
        if (other.segment_id, other.bucket, other.window_s) != (
                self.segment_id, self.bucket, self.window_s):
            raise ValueError("can only merge partials of the same segment and window")
        self.moving.merge(other.moving)
        self.queued.merge(other.queued)
        self.stopped.merge(other.stopped)
        self.parked.merge(other.parked)
        self.excluded_ms += other.excluded_ms

    def to_payload(self) -> dict[str, Any]:
        """Plain JSON-able form for publishing on the bus."""
        def cls(c: _Class) -> dict[str, Any]:
            return {"mm": c.mm, "ms": c.ms, "vehicles": sorted(c.vehicles)}

        return {"segment_id": self.segment_id, "bucket": self.bucket, "window_s": self.window_s,
                "moving": cls(self.moving), "queued": cls(self.queued),
                "stopped": cls(self.stopped), "parked": cls(self.parked),
                "excluded_ms": self.excluded_ms}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> SpeedPartial:
        """Inverse of `to_payload`; KeyError/TypeError/ValueError on malformed input.

        A share without ``queued`` (from a replica older than that class) has none.
        """
        def part(raw: Mapping[str, Any] | None) -> _Class:
            if raw is None:
                return _Class()
            return _Class(int(raw["mm"]), int(raw["ms"]), {int(v) for v in raw["vehicles"]})

        return cls(str(data["segment_id"]), int(data["bucket"]), float(data["window_s"]),
                   part(data["moving"]), part(data["stopped"]), part(data["parked"]),
                   int(data.get("excluded_ms", 0)), part(data.get("queued")))


def confidence(sample_count: int, duration_s: float, window_s: float) -> float:
    """0-1 trust in a window's value from independent vehicles and vehicle-time observed.

    Vehicles: 1 − e^(−n/3) (one vehicle 0.28, three 0.63, seven 0.9); time: vehicle-seconds on
    the segment over half the window (capped at 30 s), so a single 2-second glimpse counts
    little. The product is rounded to 3 decimals.
    """
    if sample_count <= 0 or duration_s <= 0:
        return 0.0
    vehicles = 1.0 - math.exp(-sample_count / 3.0)
    coverage = min(1.0, duration_s / min(30.0, window_s / 2.0))
    return round(vehicles * coverage, 3)


@dataclass(frozen=True, slots=True)
class WindowSpeed:
    """The result of one closed window on one segment."""

    segment_id: str
    window_start: datetime
    window_end: datetime
    speed_kmh: float
    sample_count: int
    distance_m: float
    duration_s: float
    confidence: float = 0.0
    source: str = "probe"
    stopped_vehicles: int = 0


class SpeedWindows:
    """Accumulates pieces into windows of ``window_s`` seconds, split at the windows' boundaries.

    One instance per pod aggregates its vehicles; with several pods it also serves as the
    merger of everyone's partials. Memory: open windows only, each at most one partial per
    segment driven; pieces for windows already closed are counted in ``late_pieces`` and
    dropped, pieces stamped far in the future are dropped too.
    """

    def __init__(self, window_s: float, *, grace_s: float | None = None,
                 min_duration_s: float = 1.0, rules: DwellRules | None = None) -> None:
        self.window_s = window_s
        self.grace_s = min(30.0, window_s / 2) if grace_s is None else grace_s
        self.min_duration_s = min_duration_s
        self.rules = rules or DwellRules()
        self._open: dict[int, dict[str, SpeedPartial]] = {}
        self.late_pieces = 0
        self.late_partials = 0

    def _bucket(self, t: float) -> int:
        return math.floor(t / self.window_s)

    def _due(self, bucket: int, now: float) -> bool:
        return (bucket + 1) * self.window_s + self.grace_s <= now

    def closes_at(self, t: float) -> float:
        """When the window holding time ``t`` closes (its end plus the grace)."""
        return (self._bucket(t) + 1) * self.window_s + self.grace_s

    def open_since(self, now: float) -> float:
        """Start of the oldest window still open at ``now``: a piece before it is late."""
        return math.floor((now - self.grace_s) / self.window_s) * self.window_s

    def add(self, vehicle_id: str, t_end: float, pieces: Iterable[Piece], *,
            now: float | None = None, motion: Motion = Motion.MOVING) -> None:
        """Add a vehicle's pieces, one after the other in time, the last ending at ``t_end``.

        Each piece is split at window boundaries in proportion to its time (the speed within a
        piece taken as constant): a window gets the distance and time that fell in it.
        """
        pieces = list(pieces)
        self._add_timeline(vehicle_id, t_end, [(p, motion) for p in pieces], now=now)

    def add_sample(self, vehicle_id: str, sample: ProbeSample, *,
                   now: float | None = None) -> None:
        """Add what a `VehicleProbe` decided: its driving and standing, in the order they
        happened, the interval ending at the sample's fix."""
        self._add_timeline(vehicle_id, sample.result.t, list(sample.timeline()), now=now)

    def _add_timeline(self, vehicle_id: str, t_end: float,
                      timeline: Sequence[tuple[Piece, Motion]], *, now: float | None) -> None:
        if not timeline:
            return
        if now is not None and t_end > now + self.window_s:
            self.late_pieces += 1  # stamped far in the future: a clock gone wrong
            return
        key = vehicle_key(vehicle_id)
        late = False
        t = t_end
        for piece, motion in reversed(timeline):
            start = t - max(0.0, piece.duration_s)
            for bucket, share in self._split(start, t):
                if now is not None and self._due(bucket, now):
                    late = True
                    continue
                self._put(bucket, key, piece, share, motion)
            t = start
        if late:
            self.late_pieces += 1

    def _split(self, start: float, end: float) -> list[tuple[int, float]]:
        """Windows an interval overlaps, with the share of the interval in each."""
        first, last = self._bucket(start), self._bucket(end)
        if end <= start or first == last:
            return [(last, 1.0)]
        if end == last * self.window_s:
            last -= 1  # an interval ending exactly at a boundary belongs before it
        out = []
        span = end - start
        for bucket in range(first, last + 1):
            lo = max(start, bucket * self.window_s)
            hi = min(end, (bucket + 1) * self.window_s)
            if hi > lo:
                out.append((bucket, (hi - lo) / span))
        return out

    def _put(self, bucket: int, key: int, piece: Piece, share: float, motion: Motion) -> None:
        windows = self._open.setdefault(bucket, {})
        partial = windows.get(piece.segment_id)
        if partial is None:
            partial = windows[piece.segment_id] = SpeedPartial(piece.segment_id, bucket,
                                                               self.window_s)
        ms = round(piece.duration_s * share * 1000.0)
        if motion in (Motion.BUS_STOP, Motion.ACC_OFF):
            partial.excluded_ms += ms
            return
        acc = {Motion.MOVING: partial.moving, Motion.QUEUED: partial.queued,
               Motion.PARKED: partial.parked}.get(motion, partial.stopped)
        acc.mm += round(piece.distance_m * share * 1000.0)
        acc.ms += ms
        acc.vehicles.add(key)

    def add_partial(self, partial: SpeedPartial, *, now: float | None = None) -> bool:
        """Merge a partial from a pod; False (and counted) if its window is already closed."""
        if partial.window_s != self.window_s:
            raise ValueError(f"partial of a {partial.window_s} s window, merger has "
                             f"{self.window_s} s")
        if now is not None and self._due(partial.bucket, now):
            self.late_partials += 1
            return False
        windows = self._open.setdefault(partial.bucket, {})
        mine = windows.get(partial.segment_id)
        if mine is None:
            mine = windows[partial.segment_id] = SpeedPartial(partial.segment_id,
                                                              partial.bucket, self.window_s)
        mine.merge(partial)
        return True

    def drain_partials(self, now: float, *, hold_s: float = 0.0) -> list[SpeedPartial]:
        """Remove and return the partials of windows that ended ``hold_s`` before ``now``.

        A pod calls this to publish its share; ``hold_s`` covers its matcher's lag (fixes are
        decided a few seconds after they were taken).
        """
        out: list[SpeedPartial] = []
        for bucket in sorted(self._open):
            if (bucket + 1) * self.window_s + hold_s > now:
                break
            out.extend(self._open.pop(bucket).values())
        return out

    def close_due(self, now: float) -> list[WindowSpeed]:
        """Close every window whose end plus grace is before ``now``."""
        out: list[WindowSpeed] = []
        for bucket in sorted(self._open):
            if not self._due(bucket, now):
                break
            for partial in self._open.pop(bucket).values():
                speed = self.window_speed(partial)
                if speed is not None:
                    out.append(speed)
        return out

    def open_partials(self) -> int:
        """Segment × window partials held (memory check)."""
        return sum(len(w) for w in self._open.values())

    def window_speed(self, partial: SpeedPartial) -> WindowSpeed | None:
        """The window's speed under the dwell rules, or None when there is nothing to say."""
        rules = self.rules
        moving, stopped, parked = partial.moving, partial.stopped, partial.parked
        # Traffic flows when the vehicles driving through drive at least flowing_kmh;
        # standing in the junction's approach is travel time, counted whatever the rest does.
        flowing = moving.ms > 0 and moving.mm / moving.ms * 3.6 >= rules.flowing_kmh
        mm, ms = moving.mm + partial.queued.mm, moving.ms + partial.queued.ms
        vehicles = moving.vehicles | partial.queued.vehicles
        standing: list[_Class] = []
        if flowing:
            if len(stopped.vehicles) >= rules.queue_min_vehicles:
                standing = [stopped]
        elif len(vehicles | stopped.vehicles | parked.vehicles) >= rules.queue_min_vehicles:
            standing = [stopped, parked]
        for c in standing:
            mm += c.mm
            ms += c.ms
            vehicles |= c.vehicles
        duration_s = ms / 1000.0
        if duration_s < self.min_duration_s or not vehicles:
            return None
        distance_m = mm / 1000.0
        end = datetime.fromtimestamp((partial.bucket + 1) * self.window_s, UTC)
        return WindowSpeed(
            partial.segment_id, partial.window_start, end, distance_m / duration_s * 3.6,
            len(vehicles), distance_m, duration_s,
            confidence(len(vehicles), duration_s, self.window_s),
            "probe", len(partial.queued.vehicles
                         | (stopped.vehicles | parked.vehicles if standing else set())))


@dataclass(frozen=True, slots=True)
class FusedSpeed:
    """One value for a segment and window from probes, detectors or both."""

    speed_kmh: float
    sample_count: int
    source: str
    confidence: float
    probe_count: int = 0
    detector_count: int = 0


def _detector_pace(readings: Sequence[DetectorReading]) -> tuple[float, int] | None:
    """(vehicle count, Σ count / speed) of usable readings; one aggregate per detector."""
    by_detector: dict[str, list[DetectorReading]] = {}
    for r in readings:
        if r.mean_speed_kmh is None or not math.isfinite(r.mean_speed_kmh) \
                or r.mean_speed_kmh < 0 or (r.vehicle_count is not None and r.vehicle_count <= 0):
            continue
        by_detector.setdefault(r.detector_id, []).append(r)
    count = 0
    pace = 0.0
    for rows in by_detector.values():
        # A detector's all-lanes reading already contains its per-lane ones: never add both.
        whole = [r for r in rows if r.lane is None]
        for r in whole or rows:
            n = r.vehicle_count if r.vehicle_count is not None else 1
            count += n
            pace += n / max(_MIN_FUSION_KMH, r.mean_speed_kmh or 0.0)
    return (pace, count) if count else None


def fuse_speeds(probe: WindowSpeed | None, readings: Sequence[DetectorReading] = (), *,
                window_s: float = 60.0) -> FusedSpeed | None:
    """Merge a probe window and detector readings for one segment and window into one value.

    Rule: a vehicle-count-weighted **harmonic** mean, v = (n_p + n_d) / (n_p / v_p + Σ n_i / v_i),
    where n_p is the number of probe vehicles and each usable detector reading i gives
    n_i = vehicle_count vehicles at mean_speed_kmh v_i. Each vehicle is one sample of the
    traffic's pace (time per km); averaging paces rather than speeds keeps the result a
    space-mean speed, consistent with the probe's Σd/Σt, and stops a few fast vehicles from
    hiding a slow majority. Readings without a speed, with zero vehicles or from lanes of a
    detector that also sent an all-lanes reading are skipped; speeds below 1 km/h count as 1
    (a standing queue has a finite pace). ``source`` is ``probe``, ``detector`` or
    ``probe+detector``; ``confidence`` uses every vehicle counted and the probe's observed time
    (detector-only values count as covering the window). None when nothing is usable.
    """
    det = _detector_pace(readings)
    has_probe = probe is not None and probe.sample_count > 0
    if not has_probe and det is None:
        return None
    if det is None:
        assert probe is not None
        return FusedSpeed(probe.speed_kmh, probe.sample_count, "probe", probe.confidence,
                          probe.sample_count, 0)
    pace, n_d = det
    if not has_probe:
        speed = n_d / pace
        return FusedSpeed(speed, n_d, "detector", confidence(n_d, window_s, window_s), 0, n_d)
    assert probe is not None
    n_p = probe.sample_count
    speed = (n_p + n_d) / (n_p / max(_MIN_FUSION_KMH, probe.speed_kmh) + pace)
    conf = max(probe.confidence, confidence(n_p + n_d, window_s, window_s))
    return FusedSpeed(speed, n_p + n_d, FUSED_SOURCE, conf, n_p, n_d)
