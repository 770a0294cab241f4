"""How fresh TTI's road status is (issue 15 §2: "from the report that completes a traversal to
the road status that includes it, p95 ≤ 60 s; first colours within 60 s of start").

A probe's *traversal* of a segment ends at the last second of its 1-s trace on it (SUMO's FCD,
through the harness's mapping); TTI can know it only from the probe's next report, the one
that *completes* it (the first report at or after that second). The road status that includes
it is the first speed TTI published for that segment whose window holds the traversal's end.
Freshness is the time from the completing report (its fix time on the clock) to that speed's
arrival on the bus. Traversals the replay never completed (the vehicle's trace ended) or whose
window TTI never published are counted apart.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from bench.sumo.host import Tap
from bench.sumo.mapping import Mapping
from bench.sumo.replay import Report
from bench.sumo.simulate import Fix

__all__ = ["Freshness", "Latency", "freshness", "warning_latency"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Freshness:
    """The freshness part of the table."""

    traversals: int
    """Completed traversals of mapped segments (the report that completes them was sent)."""
    published: int
    """…of which TTI published the window holding them."""
    p50_s: float | None
    p95_s: float | None
    first_colour_s: float | None
    """From the first report to the first road speed TTI published."""

    @property
    def coverage(self) -> float | None:
        return self.published / self.traversals if self.traversals else None


def _traversal_ends(fixes: list[Fix], mapping: Mapping) -> list[tuple[str, float]]:
    """(segment, last second on it) of each segment a probe left, in order."""
    out: list[tuple[str, float]] = []
    current: str | None = None
    last_t = 0.0
    for fix in fixes:
        piece = mapping.segment_at(fix.lane, fix.pos_m)
        sid = piece.segment_id if piece is not None else None
        if sid != current:
            if current is not None:
                out.append((current, last_t))
            current = sid
        last_t = fix.t
    return out  # the segment it was on when its trace ended was never left


def freshness(*, fcd: dict[str, list[Fix]], reports: dict[str, list[Report]], mapping: Mapping,
              tap: Tap, t0: datetime, window_s: float = 60.0) -> Freshness:
    """Score the freshness of one replayed run (definitions in the module docstring)."""
    # First arrival of each (segment, window index) TTI published.
    first: dict[tuple[str, int], float] = {}
    for at, s in tap.speeds:
        key = (s.segment_id, int((s.window_start - t0).total_seconds() // window_s))
        rel = (at - t0).total_seconds()
        if key not in first or rel < first[key]:
            first[key] = rel
    waits: list[float] = []
    completed = 0
    by_vehicle: dict[str, list[float]] = defaultdict(list)
    for vid, rs in reports.items():
        by_vehicle[vid] = sorted(r.fix.t for r in rs)
    for vid, fixes in fcd.items():
        sent = by_vehicle.get(vid)
        if not sent:
            continue
        for sid, end_t in _traversal_ends(fixes, mapping):
            k = bisect.bisect_left(sent, end_t)
            if k >= len(sent):
                continue  # no report after it: nothing could tell TTI
            completed += 1
            arrival = first.get((sid, int(end_t // window_s)))
            if arrival is not None:
                waits.append(max(0.0, arrival - sent[k]))
    first_report = min((ts[0] for ts in by_vehicle.values() if ts), default=None)
    first_speed = min(first.values(), default=None)
    p95 = None
    if len(waits) >= 20:
        p95 = statistics.quantiles(waits, n=20, method="inclusive")[-1]
    return Freshness(
        traversals=completed, published=len(waits),
        p50_s=statistics.median(waits) if waits else None, p95_s=p95,
        first_colour_s=(first_speed - first_report
                        if first_speed is not None and first_report is not None else None))


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """From the speed window that completed a warning's evidence to the warning on the bus."""

    warnings: int
    p50_s: float | None
    p95_s: float | None


def warning_latency(tap: Tap) -> Latency:
    """For every warning about road segments, from the newest speed window of its segments
    that had arrived before its first message (the Alert) to that message's arrival: what the
    warning service takes once the evidence is in (issue 15 §3: p95 < 2 s). The speed window
    itself follows the reports by the freshness above; later messages of a warning (updates,
    its detour, its end) follow the queue, not new evidence, and are not counted."""
    arrivals: dict[str, list[datetime]] = defaultdict(list)
    for at, s in tap.speeds:
        arrivals[s.segment_id].append(at)
    for times in arrivals.values():
        times.sort()
    waits: list[float] = []
    seen: set[str] = set()
    for at, w in sorted(tap.warnings, key=lambda aw: aw[0]):
        if w.warning_id in seen:
            continue
        seen.add(w.warning_id)
        latest = None
        for sid in w.segment_ids:
            times = arrivals.get(sid)
            if not times:
                continue
            k = bisect.bisect_right(times, at)
            if k and (latest is None or times[k - 1] > latest):
                latest = times[k - 1]
        if latest is not None:
            waits.append((at - latest).total_seconds())
    p95 = statistics.quantiles(waits, n=20, method="inclusive")[-1] if len(waits) >= 20 else (
        max(waits) if waits else None)
    return Latency(warnings=len(waits), p50_s=statistics.median(waits) if waits else None,
                   p95_s=p95)
