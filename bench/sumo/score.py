"""The harness's one table: TTI's speeds and warnings against what SUMO says happened.

Per TTI segment and minute (SUMO second ``t`` is clock time ``t0 + t``; minute ``m`` is TTI's
window starting at ``t0 + 60 m``), TTI's speed is compared with three references side by side:

* **edgeData**: SUMO's own edge speed that minute over all vehicles (distance / time, Edie's
  definition), of the edge the segment lies on (its longest piece);
* **probe Edie**: the probe vehicles' own 1-s trace on the segment that minute, total distance
  / total time — what TTI's input could at best tell;
* **true-road avg**: the average of the reported speeds of the probe reports whose true
  position was on the segment that minute — the baseline of knowing the road (map matching
  solved), with nothing else clever.

A fourth column scores that baseline itself against the probe Edie speed (what issue 15 §2
compares TTI with). Scored segment-minutes have ≥ 20 probe vehicle-seconds. Relative errors
divide by the reference speed, at least 5 km/h (a queue's crawl would make any error huge).
Levels come from ``services/warning/levels.py``, the one grading, by the segment's road class.

Incidents: edgeData counts the traffic, not the incidents' own stopped vehicles. The edges an
incident slowed are the incident's edge and those upstream of it,
contiguously and within 2 km, whose edgeData speed fell below 70 % of the baseline run's (same
demand, same seed, no incident) in at least 2 minutes while it lasted or in the 10 minutes
after (minutes with ≥ 10 vehicle-seconds in both runs); its queue has dissolved at the first
minute after it ends in which none of those edges is below 80 % of the baseline. A warning or
incident TTI published (an incident and the warning it carries, or the queue warning that
stands for it, are one) on a segment of those edges between the incident's start and 5 minutes
after its queue dissolved detects it; time to detect counts from the incident's start to the
first such event's arrival on the bus, time to clear from the queue dissolving to the moment
every warning that detected it had ended. An incident none of whose edges was slowed is
listed but left out of the detection rate: no probe or loop could have seen it. Every other
warning is a false alarm, per hour of replayed traffic per 100 km of mapped (directed) road.

Roadside detectors (``detectors.py``) change none of that: the scored segment-minutes are still
those with ≥ 20 probe vehicle-seconds, and the references are the probes' and SUMO's own; TTI's
value there may now merge the detectors' readings (source ``probe+detector``), and the table
says on how many. The segment-minutes TTI knew from detectors alone are scored apart, against
edgeData only (no probe reference exists there). Per incident: the detectors on its slowed
edges, the slowest of their minutes against the same loops in the baseline run (while it
lasted, up to its queue dissolving), and the minutes TTI published a detector-based speed on
its segments, with the slowest.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from bench.sumo.demand import Incident
from bench.sumo.detectors import Placement, Reading, loop_minutes
from bench.sumo.eta import BusScore, format_buses
from bench.sumo.host import Tap
from bench.sumo.mapping import Mapping
from bench.sumo.replay import Report
from bench.sumo.simulate import EdgeMinute, Fix
from services.warning.levels import level_for_speed

__all__ = ["IncidentScore", "Score", "SpeedScore", "format_table", "score_run"]

MIN_PROBE_SECONDS = 20
MIN_REFERENCE_KMH = 5.0
SLOWED = 0.7
RECOVERED = 0.8
UPSTREAM_M = 2000.0
MIN_EDGE_SECONDS = 10.0
DETECT_AFTER_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeedScore:
    """One column of the speed part of the table."""

    name: str
    eligible: int
    compared: int
    median_error: float | None
    within_10: float | None
    within_25: float | None
    level_agreement: float | None
    median_ratio: float | None = None
    """Median of estimate / reference: above 1, the estimate is too fast."""

    @property
    def coverage(self) -> float | None:
        return self.compared / self.eligible if self.eligible else None


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentScore:
    """How TTI did on one incident."""

    incident: Incident
    affected_edges: tuple[str, ...]
    dissolved_s: float | None
    detected_s: float | None
    cleared_s: float | None
    warning_ids: tuple[str, ...]
    slowed_traffic: bool = True
    """Whether any of its edges was slowed at all (without it, the traffic never showed it)."""
    detectors: int = 0
    """Detectors on its slowed edges."""
    detector_ratio: float | None = None
    """Slowest detector minute while it lasted, against the same loop's in the baseline."""
    tti_detector_minutes: int = 0
    """Segment-minutes on its slowed edges TTI published with detector data, while it lasted."""
    tti_detector_min_kmh: float | None = None

    @property
    def time_to_detect_s(self) -> float | None:
        return None if self.detected_s is None else self.detected_s - self.incident.start_s

    @property
    def time_to_clear_s(self) -> float | None:
        if self.cleared_s is None or self.dissolved_s is None:
            return None
        return self.cleared_s - self.dissolved_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """Everything the table prints."""

    speeds: list[SpeedScore]
    incidents: list[IncidentScore]
    warnings: int
    false_alarms: int
    hours: float
    mapped_km: float
    segments_mapped: int
    segments_unmapped: int
    probe_vehicles: int
    notes: list[str] = field(default_factory=list)
    details: list[dict[str, object]] = field(default_factory=list)
    """Per scored segment-minute: probe vehicle-seconds and every speed (km/h, None: none)."""
    alarms: list[dict[str, object]] = field(default_factory=list)
    """Every warning and incident TTI published: id, kind, first and end (run seconds),
    segments, and the harness incident it detected (None: a false alarm)."""
    buses: BusScore | None = None
    """Bus ETAs (``eta.py``); None without buses (a network without the demo's GTFS)."""
    detector_scored: int = 0
    """Scored segment-minutes (≥ 20 probe veh-s) whose TTI value had detector data."""
    detector_only: SpeedScore | None = None
    """TTI against edgeData on the segment-minutes it knew from detectors alone."""
    detector_details: list[dict[str, object]] = field(default_factory=list)
    has_detectors: bool = False

    @property
    def false_alarms_per_h_100km(self) -> float | None:
        if self.hours <= 0 or self.mapped_km <= 0:
            return None
        return self.false_alarms / self.hours / (self.mapped_km / 100.0)

    @property
    def detection_rate(self) -> float | None:
        """Of the incidents that slowed the traffic (the others no probe or loop could see)."""
        seen = [i for i in self.incidents if i.slowed_traffic]
        if not seen:
            return None
        return sum(1 for i in seen if i.detected_s is not None) / len(seen)


def probe_edie(fcd: dict[str, list[Fix]], mapping: Mapping
               ) -> dict[tuple[str, int], tuple[float, float]]:
    """(segment, minute) → (probe vehicle-seconds, metres driven) from the 1-s traces."""
    out: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for fixes in fcd.values():
        for fix in fixes:
            piece = mapping.segment_at(fix.lane, fix.pos_m)
            if piece is None:
                continue
            acc = out[(piece.segment_id, int(fix.t // 60))]
            acc[0] += 1.0
            acc[1] += fix.speed_ms
    return {k: (v[0], v[1]) for k, v in out.items()}


def true_road(reports: Iterable[Report], mapping: Mapping) -> dict[tuple[str, int], float]:
    """(segment, minute) → mean reported speed (km/h) of the reports truly on that segment."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    for rep in reports:
        piece = mapping.segment_at(rep.fix.lane, rep.fix.pos_m)
        if piece is not None:
            acc[(piece.segment_id, int(rep.fix.t // 60))].append(rep.speed_kmh)
    return {k: statistics.fmean(v) for k, v in acc.items()}


def tti_speeds(tap: Tap, t0: datetime) -> dict[tuple[str, int], float]:
    """(segment, minute) → TTI's speed for that window (the last value published)."""
    return {k: v for k, (v, _) in tti_values(tap, t0).items()}


def tti_values(tap: Tap, t0: datetime) -> dict[tuple[str, int], tuple[float, str]]:
    """(segment, minute) → TTI's speed and its source for that window (the last published)."""
    out: dict[tuple[str, int], tuple[float, str]] = {}
    for _, s in tap.speeds:
        if s.speed_kmh is None or s.source == "none":
            continue
        minute = round((s.window_start - t0).total_seconds() / 60.0)
        out[(s.segment_id, minute)] = (s.speed_kmh, s.source)
    return out


def _detector_view(inc: Incident, affected: tuple[str, ...], dissolved: float | None,
                   detectors: Placement, loops: dict[tuple[str, int], Reading],
                   base_loops: dict[tuple[str, int], Reading],
                   tti: dict[tuple[str, int], tuple[float, str]], mapping: Mapping
                   ) -> dict[str, object]:
    """What the detectors saw of one incident, and what TTI published from them."""
    sites = detectors.on_edges(affected)
    first = int(inc.start_s // 60)
    last = int((dissolved if dissolved is not None else inc.end_s) // 60)
    ratios = []
    for site in sites:
        for m in range(first, last + 1):
            r, b = loops.get((site.detector_id, m)), base_loops.get((site.detector_id, m))
            if r is None or b is None or r.mean_speed_kmh is None or not b.mean_speed_kmh:
                continue
            ratios.append(r.mean_speed_kmh / b.mean_speed_kmh)
    edges = set(affected)
    seen = [v for (seg, m), (v, src) in tti.items()
            if "detector" in src and first <= m <= last and mapping.edge_of(seg) in edges]
    return {"detectors": len(sites), "detector_ratio": min(ratios) if ratios else None,
            "tti_detector_minutes": len(seen), "tti_detector_min_kmh": min(seen) if seen else None}


def _column(name: str, eligible: list[tuple[str, int]], est: dict[tuple[str, int], float],
            ref: dict[tuple[str, int], float], road_class: dict[str, str]) -> SpeedScore:
    errors, levels, ratios = [], [], []
    compared = 0
    with_ref = [k for k in eligible if k in ref]
    for key in with_ref:
        if key not in est:
            continue
        compared += 1
        e, r = est[key], ref[key]
        errors.append(abs(e - r) / max(r, MIN_REFERENCE_KMH))
        ratios.append(e / max(r, MIN_REFERENCE_KMH))
        cls = road_class[key[0]]
        levels.append(level_for_speed(e, cls) == level_for_speed(r, cls))
    n = len(errors)
    return SpeedScore(
        name=name, eligible=len(with_ref), compared=compared,
        median_error=statistics.median(errors) if n else None,
        within_10=sum(x <= 0.10 for x in errors) / n if n else None,
        within_25=sum(x <= 0.25 for x in errors) / n if n else None,
        level_agreement=sum(levels) / n if n else None,
        median_ratio=statistics.median(ratios) if n else None)


def _slowed(r: EdgeMinute | None, b: EdgeMinute | None, factor: float) -> bool | None:
    """Whether the run is below ``factor`` × the baseline that minute (None: too few samples)."""
    if r is None or b is None or r.sampled_s < MIN_EDGE_SECONDS or b.sampled_s < MIN_EDGE_SECONDS:
        return None
    return r.speed_ms < factor * b.speed_ms


def _incident_effect(inc: Incident, run: dict[tuple[str, int], EdgeMinute],
                     base: dict[tuple[str, int], EdgeMinute], mapping: Mapping,
                     last_minute: int) -> tuple[tuple[str, ...], float | None]:
    """The incident's queue: its edge and the edges upstream, contiguously, that were slowed
    against the baseline for ≥ 2 minutes while it lasted (+10 min); and when it dissolved."""
    first, last = int(inc.start_s // 60), int(inc.end_s // 60)
    window = range(first, min(last_minute, last + 10) + 1)

    def slowed(e: str) -> bool:
        return sum(bool(_slowed(run.get((e, m)), base.get((e, m)), SLOWED))
                   for m in window) >= 2

    affected, dist, frontier = {inc.edge_id}, {inc.edge_id: 0.0}, [inc.edge_id]
    while frontier:
        e = frontier.pop()
        for up in mapping.incoming.get(e, ()):
            d = dist[e] + mapping.edge_length_m.get(up, 0.0)
            if up in affected or d > UPSTREAM_M or not slowed(up):
                continue
            affected.add(up)
            dist[up] = d
            frontier.append(up)
    dissolved = None
    for m in range(last, last_minute + 1):
        if not any(_slowed(run.get((e, m)), base.get((e, m)), RECOVERED) for e in affected):
            dissolved = max(inc.end_s, m * 60.0)
            break
    if not any(slowed(e) for e in affected):
        return (), None  # nothing the traffic drove showed it
    return tuple(sorted(affected)), dissolved


def score_run(*, mapping: Mapping, fcd: dict[str, list[Fix]], reports: dict[str, list[Report]],
              edgedata: dict[tuple[str, int], EdgeMinute],
              baseline: dict[tuple[str, int], EdgeMinute] | None, incidents: list[Incident],
              tap: Tap, t0: datetime, duration_s: float, detectors: Placement | None = None,
              readings: Iterable[Reading] = (), base_readings: Iterable[Reading] = ()
              ) -> Score:
    """Score one replayed run (see the module docstring for every definition)."""
    road_class = {s: m.road_class for s, m in mapping.by_segment.items()}
    minutes = int(duration_s // 60)
    edie_raw = probe_edie(fcd, mapping)
    eligible = sorted(k for k, (secs, _) in edie_raw.items()
                      if secs >= MIN_PROBE_SECONDS and k[1] < minutes)
    edie = {k: d / s * 3.6 for k, (s, d) in edie_raw.items() if s > 0}
    edge_ref: dict[tuple[str, int], float] = {}
    for seg, m in eligible:
        em = edgedata.get((mapping.by_segment[seg].edge_id, m))
        if em is not None:
            edge_ref[(seg, m)] = em.speed_ms * 3.6
    road = true_road((r for rs in reports.values() for r in rs), mapping)
    values = tti_values(tap, t0)
    tti = {k: v for k, (v, _) in values.items()}
    speeds = [
        _column("TTI vs edgeData", eligible, tti, edge_ref, road_class),
        _column("TTI vs probe Edie", eligible, tti, edie, road_class),
        _column("TTI vs true-road avg", eligible, tti, road, road_class),
        _column("true-road avg vs probe Edie", eligible, road, edie, road_class),
        _column("probe Edie vs edgeData", eligible, edie, edge_ref, road_class),
    ]
    details: list[dict[str, object]] = [
        {"segment_id": seg, "minute": m, "probe_s": edie_raw[(seg, m)][0],
         "edge_id": mapping.by_segment[seg].edge_id, "tti": tti.get((seg, m)),
         "probe_edie": edie.get((seg, m)), "true_road": road.get((seg, m)),
         "edgedata": edge_ref.get((seg, m)), "tti_source": values.get((seg, m), (0, None))[1]}
        for seg, m in eligible]
    # Detectors: how many scored values merged them; the detector-only ones against edgeData.
    detector_scored = sum(1 for k in eligible if "detector" in values.get(k, (0, ""))[1])
    scored = set(eligible)
    only = sorted(k for k, (_, src) in values.items()
                  if src == "detector" and 0 <= k[1] < minutes and k not in scored
                  and k[0] in mapping.by_segment)
    only_ref: dict[tuple[str, int], float] = {}
    for seg, m in only:
        em = edgedata.get((mapping.by_segment[seg].edge_id, m))
        if em is not None and em.sampled_s >= MIN_EDGE_SECONDS:
            only_ref[(seg, m)] = em.speed_ms * 3.6
    detector_only = (_column("TTI (detectors only) vs edgeData", only, tti, only_ref, road_class)
                     if detectors else None)
    detector_details: list[dict[str, object]] = [
        {"segment_id": seg, "minute": m, "edge_id": mapping.by_segment[seg].edge_id,
         "tti": tti[(seg, m)], "edgedata": only_ref.get((seg, m))} for seg, m in only]
    loops = loop_minutes(readings)
    base_loops = loop_minutes(base_readings)
    # Warnings and incidents, each by id: when it first arrived, its segments, when it ended.
    events: dict[str, dict[str, object]] = {}
    for at, w in tap.warnings:
        ev = events.setdefault(w.warning_id, {"first": at, "segments": set(), "ended": None,
                                              "kind": str(w.kind)})
        ev["segments"].update(w.segment_ids)  # type: ignore[attr-defined]
        if not w.active and ev["ended"] is None:
            ev["ended"] = at
        elif w.active:
            ev["ended"] = None
    for at, i in tap.incidents:
        if i.warning_id in events:  # the incident's own warning, or the queue's standing for it
            events[i.warning_id]["segments"].update(i.segment_ids)  # type: ignore[attr-defined]
            continue
        ev = events.setdefault(f"incident:{i.incident_id}", {
            "first": at, "segments": set(), "ended": None, "kind": "incident"})
        ev["segments"].update(i.segment_ids)  # type: ignore[attr-defined]
        if i.status == "cleared" and ev["ended"] is None:
            ev["ended"] = at
    matched: set[str] = set()
    incident_scores: list[IncidentScore] = []
    for inc in incidents:
        if baseline is None:
            raise ValueError("incidents need the baseline run to be scored")
        horizon = max(m for _, m in edgedata) if edgedata else minutes
        affected, dissolved = _incident_effect(inc, edgedata, baseline, mapping, horizon)
        slowed_traffic = bool(affected)
        affected = affected or (inc.edge_id,)
        edges = set(affected)
        upto = (dissolved if dissolved is not None else duration_s) + DETECT_AFTER_S
        hits = []
        for wid, ev in events.items():
            rel = (ev["first"] - t0).total_seconds()  # type: ignore[operator]
            if not inc.start_s <= rel <= upto:
                continue
            segs = ev["segments"]
            if any(mapping.edge_of(s) in edges for s in segs):  # type: ignore[attr-defined]
                hits.append((rel, wid, ev))
        hits.sort(key=lambda h: h[0])
        matched.update(w for _, w, _ in hits)
        detected = hits[0][0] if hits else None
        cleared = None
        if hits and all(ev["ended"] is not None for _, _, ev in hits):
            cleared = max((ev["ended"] - t0).total_seconds()  # type: ignore[operator]
                          for _, _, ev in hits)
        view = (_detector_view(inc, affected, dissolved, detectors, loops, base_loops, values,
                               mapping) if detectors else {})
        incident_scores.append(IncidentScore(
            incident=inc, affected_edges=affected, dissolved_s=dissolved, detected_s=detected,
            cleared_s=cleared, warning_ids=tuple(w for _, w, _ in hits),
            slowed_traffic=slowed_traffic, **view))  # type: ignore[arg-type]
    warning_ids = [w for w in events if not w.startswith("incident:")]
    false = [w for w in events if w not in matched]
    detected_by = {w: i.incident.incident_id for i in incident_scores for w in i.warning_ids}
    alarms: list[dict[str, object]] = [
        {"id": wid, "kind": ev["kind"], "first_s": (ev["first"] - t0).total_seconds(),  # type: ignore[operator]
         "ended_s": None if ev["ended"] is None else (ev["ended"] - t0).total_seconds(),  # type: ignore[operator]
         "segments": sorted(ev["segments"]),  # type: ignore[call-overload]
         "detects": detected_by.get(wid)} for wid, ev in events.items()]
    return Score(speeds=speeds, incidents=incident_scores, warnings=len(warning_ids),
                 false_alarms=len(false), hours=duration_s / 3600.0, mapped_km=mapping.mapped_km,
                 segments_mapped=len(mapping.by_segment),
                 segments_unmapped=mapping.unmapped_segments, probe_vehicles=len(fcd),
                 details=details, alarms=alarms, detector_scored=detector_scored,
                 detector_only=detector_only, detector_details=detector_details,
                 has_detectors=bool(detectors))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if x is None else fmt.format(x)


def format_table(score: Score, title: str) -> str:
    """The one table, as text."""
    cols = score.speeds
    w = max(len(c.name) for c in cols) + 2
    lines = [title, "",
             f"{'speeds (segment-minutes with >= 20 probe veh-s)':<50}"
             + "".join(f"{c.name:>{w}}" for c in cols)]
    rows = [
        ("segment-minutes with the reference", [str(c.eligible) for c in cols]),
        ("coverage (estimate present)", [_pct(c.coverage) for c in cols]),
        ("median relative error", [_pct(c.median_error) for c in cols]),
        ("within 10 %", [_pct(c.within_10) for c in cols]),
        ("within 25 %", [_pct(c.within_25) for c in cols]),
        ("congestion level agrees", [_pct(c.level_agreement) for c in cols]),
        ("median estimate / reference", [_num(c.median_ratio, "{:.2f}") for c in cols]),
    ]
    for label, vals in rows:
        lines.append(f"{label:<50}" + "".join(f"{v:>{w}}" for v in vals))
    if score.has_detectors:
        n = cols[0].eligible if cols else 0
        lines.append(f"{'  of them with detector data (probe+detector)':<50}"
                     f"{score.detector_scored} of {n} segment-minutes")
        d = score.detector_only
        if d is not None:
            lines.append(
                f"{'  detectors only (no probe; not scored above)':<50}{d.eligible} "
                f"segment-minutes with edgeData: TTI vs edgeData median error "
                f"{_pct(d.median_error)}, within 10 / 25 % {_pct(d.within_10)} / "
                f"{_pct(d.within_25)}, level agrees {_pct(d.level_agreement)}, median "
                f"ratio {_num(d.median_ratio, '{:.2f}')}")
    lines += ["", "incidents"]
    ttd = [i.time_to_detect_s for i in score.incidents if i.time_to_detect_s is not None]
    ttc = [i.time_to_clear_s for i in score.incidents if i.time_to_clear_s is not None]
    lines += [
        f"  {'incidents':<40}{len(score.incidents)} "
        f"({sum(i.slowed_traffic for i in score.incidents)} slowed the traffic)",
        f"  {'detection rate (of those)':<40}{_pct(score.detection_rate)}",
        f"  {'mean time to detect':<40}"
        + (f"{statistics.fmean(ttd) / 60:.1f} min" if ttd else "—"),
        f"  {'mean time to clear (after the queue went)':<40}"
        + (f"{statistics.fmean(ttc) / 60:.1f} min ({len(ttc)} cleared; < 0: before it went)"
           if ttc else "—"),
        f"  {'warnings published':<40}{score.warnings}",
        f"  {'false alarms':<40}{score.false_alarms}"
        f" = {_num(score.false_alarms_per_h_100km, '{:.2f}')} per h per 100 km",
    ]
    if score.has_detectors:
        watched = [i for i in score.incidents if i.detectors]
        lines.append(f"  {'on edges detectors watch':<40}{len(watched)} of {len(score.incidents)}"
                     f" ({sum(1 for i in watched if i.detected_s is not None)} of them detected)")
    for i in score.incidents:
        inc = i.incident
        lines.append(
            f"    {inc.incident_id} {inc.kind} on {inc.edge_id} ({inc.place}, lanes "
            f"{','.join(map(str, inc.lanes))}) {inc.start_s / 60:.0f}-{inc.end_s / 60:.0f} min: "
            + (f"{len(i.affected_edges)} edges slowed, " if i.slowed_traffic
               else "slowed no traffic (not counted in the rate), ") +
            "queue gone "
            f"{_num(None if i.dissolved_s is None else i.dissolved_s / 60)} min; detected "
            f"{_num(None if i.time_to_detect_s is None else i.time_to_detect_s / 60)} min "
            f"after; cleared {_num(None if i.time_to_clear_s is None else i.time_to_clear_s / 60)}"
            f" min after the queue")
        if score.has_detectors:
            lines.append(
                f"      detectors on its slowed edges: {i.detectors}"
                + ("" if not i.detectors else
                   f"; slowest loop minute {_pct(i.detector_ratio)} of the baseline's; TTI "
                   f"published {i.tti_detector_minutes} detector-based segment-minutes there"
                   + ("" if i.tti_detector_min_kmh is None
                      else f", the slowest {i.tti_detector_min_kmh:.1f} km/h")))
    lines += ["", f"network: {score.segments_mapped} TTI segments mapped onto SUMO edges "
              f"({score.mapped_km:.1f} km directed), {score.segments_unmapped} not; "
              f"{score.probe_vehicles} probe vehicles; {score.hours * 60:.0f} min of traffic"]
    lines += score.notes
    lines += ["", *format_buses(score.buses)]
    return "\n".join(lines)
