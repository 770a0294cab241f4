"""Incidents — evidence from probes, cameras and sensors, SOS alarms and citizens, merged by
place and time — and where a warning applies (its CAP area).

Evidence (`Evidence`) comes from:

* a detected event (``tti.detector.event``) of a GB/T 29100 incident class (accident, stopped
  vehicle, wrong-way driver, fire, pedestrian, debris …), at the detector's site and on the
  segment it watches, with the detector's confidence (none given: sure); it holds the incident
  until the detector reports the event ``cleared``;
* an abnormal queue that ends at one point (``abnormal.bottleneck``: past its head the road
  flows as usual), seen by the probes: ``PROBE_CONFIDENCE``, held until the queue dissolves;
* a terminal's emergency (SOS) alarm at the vehicle's position (which is also its own vehicle
  alarm warning) and a citizen's or hotline agent's report of an accident or a closure: a
  moment's word each, ``ALARM_CONFIDENCE`` / ``REPORT_CONFIDENCE``.

`IncidentBook` merges what is said about one place and time into one incident with a kind
(the most specific any source named), a combined confidence and its sources, confirms it and
raises its warning (one per incident: a queue's warning stands for an incident its probes saw
first). Fog, ice and standing water raise weather warnings and merge with nothing.
``congestion`` events are left to the speeds, which measure it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shapely import MultiLineString

from shared.clients.bigdata import DetectorSite
from shared.events import (
    Area,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    CitizenReport,
    DetectedEvent,
    Incident,
    TerminalAlarm,
    Warning,
    WarningKind,
    WarningStatus,
)
from shared.geo import EARTH_RADIUS_M, haversine_m
from shared.roadnet import RoadNetwork

CONFIRM_CONFIDENCE = 0.8
KEEP_CLEARED_S = 86_400.0
"""Cleared incidents are answered for a day, then forgotten."""
CORROBORATE_S = 600.0
"""Evidence joins an incident that had word this recently."""
NEAR_M = 300.0
"""…and lies this close to it (or shares a segment)."""
EVIDENCE_S = 1800.0
"""A moment's word (an alarm, a citizen's report) keeps an incident active this long."""
WEATHER_KINDS = frozenset({"fog", "ice", "water"})
LEFT_TO_SPEEDS = frozenset({"congestion"})

CATEGORY = {
    WarningKind.CONGESTION: CapCategory.TRANSPORT,
    WarningKind.INCIDENT: CapCategory.TRANSPORT,
    WarningKind.VEHICLE_ALARM: CapCategory.SAFETY,
    WarningKind.CLOSURE: CapCategory.TRANSPORT,
    WarningKind.WEATHER: CapCategory.MET,
}
"""CAP category of each warning kind."""

_SEVERITY = {"accident": CapSeverity.SEVERE, "wrong_way": CapSeverity.SEVERE,
             "fire": CapSeverity.SEVERE, "ice": CapSeverity.SEVERE,
             "stopped_vehicle": CapSeverity.MODERATE, "pedestrian": CapSeverity.MODERATE,
             "debris": CapSeverity.MODERATE, "fog": CapSeverity.MODERATE,
             "water": CapSeverity.MODERATE}
_EXPECTED_MIN = {"accident": 45, "stopped_vehicle": 20, "wrong_way": 10, "fire": 60,
                 "pedestrian": 10, "debris": 30, "fog": 120, "ice": 180, "water": 120}
_NAMES = {"accident": ("交通事故", "accident"), "stopped_vehicle": ("车辆停驶", "stopped vehicle"),
          "wrong_way": ("车辆逆行", "wrong-way driver"), "fire": ("车辆火情", "fire"),
          "pedestrian": ("行人闯入", "pedestrian on the road"),
          "debris": ("路面遗撒物", "debris on the road"), "fog": ("团雾", "fog"),
          "ice": ("路面结冰", "ice on the road"), "water": ("路面积水", "standing water"),
          "other": ("交通事件", "traffic event")}
_CIRCLE_M = 200.0
_AREA_BUFFER_M = 30.0
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


def digest(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def area_of(network: RoadNetwork, segment_ids: Sequence[str],
            names: Sequence[str | None] = ()) -> Area:
    """The CAP area of a stretch of road: a polygon ``_AREA_BUFFER_M`` around its segments."""
    lines = [network.get_segment(s).coords for s in segment_ids if s in network]
    label = "、".join(n for n in dict.fromkeys(names) if n) or "道路"
    if not lines:
        return Area(description=label)
    shape = MultiLineString([list(c) for c in lines])
    # Buffer in degrees of latitude: the polygon is a few tens of metres wide, where the
    # difference between degrees of longitude and latitude at Hubei's latitudes barely shows.
    poly = shape.buffer(_AREA_BUFFER_M / _M_PER_DEG).simplify(_AREA_BUFFER_M / 3 / _M_PER_DEG)
    hull = poly if poly.geom_type == "Polygon" else poly.convex_hull
    ring = tuple((round(x, 6), round(y, 6)) for x, y in hull.exterior.coords)
    return Area(description=label, polygon=ring)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """One source's word about an incident at a place and time.

    ``key`` names the report (a detector's event, a queue warning, an alarm, a citizen report):
    a later word under the same key replaces the earlier. A *holding* source says when the
    incident ends (a detector's ``cleared``, the queue dissolving); the others are a moment's
    word, which counts for ``EVIDENCE_S``.
    """

    key: str
    source: str
    kind: str
    at: datetime
    segment_ids: tuple[str, ...] = ()
    lon: float | None = None
    lat: float | None = None
    confidence: float = 0.5
    holds: bool = False
    cleared: bool = False
    lane: int | None = None
    description: str = ""
    place: str | None = None
    queue_warning_id: str | None = None
    """Probe evidence: the congestion warning of the queue, which stands for the incident."""


def combined_confidence(confidences: Sequence[float]) -> float:
    """Independent sources together: 1 − Π(1 − c)."""
    miss = 1.0
    for c in confidences:
        miss *= 1.0 - min(max(c, 0.0), 1.0)
    return round(1.0 - miss, 4)


class IncidentBook:
    """Incidents by id, the evidence merged into each, and the warnings they raise.

    Evidence about one place and time is one incident: a new word joins the active incident
    whose segments it shares, or whose place lies within ``NEAR_M``, if that incident had word
    within ``CORROBORATE_S`` (weather stays apart). An incident is *confirmed* when its sources
    together are sure (``combined_confidence`` ≥ ``CONFIRM_CONFIDENCE``), when two independent
    sources say it, or when a report is borne out by the traffic on its segment (level 4 or 5);
    otherwise *suspected*. It is *cleared* when every holding source has cleared and no moment's
    word is younger than ``EVIDENCE_S``. Its kind is the most specific one a source named.
    A confirmed incident raises an incident warning — unless a queue warning stands for it (the
    probes saw the queue first): one warning per incident, and the queue's carries its id.
    """

    def __init__(self, network: RoadNetwork | None = None) -> None:
        self.network = network
        self.by_id: dict[str, Incident] = {}
        self.warnings: dict[str, Warning] = {}
        self.evidence: dict[str, dict[str, Evidence]] = {}
        self._incident_of: dict[str, str] = {}

    def prune(self, now: datetime, *, keep_s: float = KEEP_CLEARED_S) -> int:
        """Forget incidents cleared more than ``keep_s`` ago (and their ended warnings)."""
        cutoff = now - timedelta(seconds=keep_s)
        old = [iid for iid, i in self.by_id.items()
               if i.status == "cleared" and i.updated_at < cutoff]
        for iid in old:
            inc = self.by_id.pop(iid)
            for key in self.evidence.pop(iid, {}):
                self._incident_of.pop(key, None)
            if inc.warning_id is not None:
                self.warnings.pop(inc.warning_id, None)
        return len(old)

    def active(self) -> list[Incident]:
        """Incidents not cleared, newest first."""
        return sorted((i for i in self.by_id.values() if i.status != "cleared"),
                      key=lambda i: (i.detected_at, i.incident_id), reverse=True)

    def list_incidents(self, status: str = "active") -> list[Incident]:
        """``active`` (suspected or confirmed), ``cleared`` or ``all``, newest first."""
        items = [i for i in self.by_id.values()
                 if status == "all" or (status == "cleared") == (i.status == "cleared")]
        return sorted(items, key=lambda i: (i.detected_at, i.incident_id), reverse=True)

    def incident_of(self, key: str) -> Incident | None:
        """The incident a piece of evidence went into."""
        iid = self._incident_of.get(key)
        return None if iid is None else self.by_id.get(iid)

    # --- evidence in ---------------------------------------------------------------------------

    def apply(self, e: DetectedEvent, site: DetectorSite | None,
              level_of: Callable[[str], int | None]
              ) -> tuple[Incident | None, Warning | None] | None:
        """Take one detected event; None when it changes nothing (redelivered, older, ignored)."""
        if e.kind in LEFT_TO_SPEEDS:
            return None
        place = (site.name if site is not None and site.name else None) or (
            f"检测器 {e.detector_id}")
        ev = Evidence(
            key=f"detector:{e.detector_id}:{e.event_id}", source=f"detector:{e.detector_id}",
            kind=e.kind, at=e.observed_at,
            segment_ids=(site.segment_id,) if site is not None and site.segment_id else (),
            lon=site.lon if site is not None else None, lat=site.lat if site is not None else None,
            confidence=1.0 if e.confidence is None else e.confidence, holds=True,
            cleared=e.status == "cleared", lane=e.lane, description=e.description, place=place)
        return self.add(ev, level_of, new_id="inc-" + digest(e.detector_id, e.event_id))

    def add(self, ev: Evidence, level_of: Callable[[str], int | None], *, new_id: str
            ) -> tuple[Incident, Warning | None] | None:
        """Merge one piece of evidence; None when it changes nothing (redelivered or older)."""
        iid = self._incident_of.get(ev.key)
        if iid is not None:
            prev = self.evidence.get(iid, {}).get(ev.key)
            if prev is not None and (ev.at < prev.at or (ev.at == prev.at and ev == prev)):
                return None
        elif ev.cleared:
            return None  # the end of something never known
        else:
            iid = self._nearby(ev) or new_id
        self.evidence.setdefault(iid, {})[ev.key] = ev
        self._incident_of[ev.key] = iid
        return self._conclude(iid, level_of, now=ev.at)

    def expire(self, now: datetime, level_of: Callable[[str], int | None]
               ) -> list[tuple[Incident, Warning | None]]:
        """Incidents whose every word has gone by ``now``: cleared as of the moment the last
        word ran out (so every replica says the same, whenever it looks)."""
        out = []
        for inc in self.active():
            evs = self.evidence.get(inc.incident_id, {}).values()
            if evs and not any(self._live(e, now) for e in evs):
                ran_out = max(e.at for e in evs) + timedelta(seconds=EVIDENCE_S)
                out.append(self._conclude(inc.incident_id, level_of, now=min(now, ran_out)))
        return out

    # --- conclusions ---------------------------------------------------------------------------

    @staticmethod
    def _live(e: Evidence, now: datetime) -> bool:
        if e.holds:
            return not e.cleared
        return not e.cleared and now - e.at < timedelta(seconds=EVIDENCE_S)

    def _points(self, segment_ids: Sequence[str], lon: float | None, lat: float | None
                ) -> list[tuple[float, float]]:
        pts = [(lon, lat)] if lon is not None and lat is not None else []
        if self.network is not None:
            for sid in segment_ids:
                seg = self.network.find_segment(sid)
                if seg is not None:
                    pts.append(seg.coords[len(seg.coords) // 2])
        return pts

    def _nearby(self, ev: Evidence) -> str | None:
        """The active incident this evidence is about, if any (nearest first)."""
        if ev.kind in WEATHER_KINDS:
            return None
        mine = self._points(ev.segment_ids, ev.lon, ev.lat)
        best: tuple[float, str] | None = None
        window = timedelta(seconds=CORROBORATE_S)
        for inc in self.by_id.values():
            if inc.status == "cleared" or inc.kind in WEATHER_KINDS:
                continue
            if abs(inc.updated_at - ev.at) > window:
                continue
            if set(ev.segment_ids) & set(inc.segment_ids):
                d = 0.0
            else:
                theirs = self._points(inc.segment_ids, inc.lon, inc.lat)
                d = min((haversine_m(a[0], a[1], b[0], b[1]) for a in mine for b in theirs),
                        default=math.inf)
            if d <= NEAR_M and (best is None or (d, inc.incident_id) < best):
                best = (d, inc.incident_id)
        return None if best is None else best[1]

    def _conclude(self, iid: str, level_of: Callable[[str], int | None], *, now: datetime
                  ) -> tuple[Incident, Warning | None]:
        held = self.by_id.get(iid)
        evs = sorted(self.evidence.get(iid, {}).values(), key=lambda e: (e.at, e.key))
        live = [e for e in evs if self._live(e, now)]
        kinds = [e.kind for e in sorted(live or evs, key=lambda e: -e.confidence)
                 if e.kind != "other"]
        kind = kinds[0] if kinds else "other"
        confidence = combined_confidence([e.confidence for e in live])
        reports = [e for e in live if e.queue_warning_id is None]
        if not live:
            status = "cleared"
        elif (held is not None and held.status == "confirmed") or (
                confidence >= CONFIRM_CONFIDENCE or len({e.source for e in live}) >= 2
                or kind in WEATHER_KINDS
                or any((level_of(s) or 0) >= 4 for e in reports for s in e.segment_ids)):
            status = "confirmed"
        else:
            status = "suspected"
        segments = tuple(dict.fromkeys(s for e in evs for s in e.segment_ids))
        located = next((e for e in evs if e.lon is not None and e.lat is not None), None)
        described = next((e for e in reversed(evs) if e.description), None)
        laned = next((e for e in reversed(evs) if e.lane is not None), None)
        queue = next((e.queue_warning_id for e in reversed(live) if e.queue_warning_id), None)
        if live:
            warning_id = queue or (held.warning_id if held is not None
                                   and held.warning_id in self.warnings else None)
        else:  # cleared: it keeps the warning that stood for it
            warning_id = held.warning_id if held is not None else None
        sources = tuple(dict.fromkeys((*(held.sources if held else ()),
                                       *(e.source for e in evs))))
        inc = Incident(
            incident_id=iid, kind=kind, status=status,
            detected_at=held.detected_at if held is not None else evs[0].at,
            updated_at=max(now, held.updated_at) if held is not None else now,
            lon=located.lon if located else None, lat=located.lat if located else None,
            segment_ids=segments, sources=sources,
            confidence=confidence if live else (held.confidence if held else None),
            lane=laned.lane if laned else None,
            description=described.description if described else "",
            warning_id=warning_id)
        warning = None
        if queue is None:
            place = next((e.place for e in evs if e.place), None)
            warning = self._warning_for(inc, place)
            if warning is not None:
                inc = replace(inc, warning_id=warning.warning_id)
        self.by_id[iid] = inc
        return inc, warning

    def _warning_for(self, inc: Incident, place: str | None) -> Warning | None:
        """The warning an incident raises, updates or ends (None while it is only suspected)."""
        wid = "inc-w-" + digest(inc.incident_id)
        held = self.warnings.get(wid)
        if (inc.status == "suspected" and held is None) or (
                inc.status == "cleared" and (held is None or not held.active)):
            return None
        kind = WarningKind.WEATHER if inc.kind in WEATHER_KINDS else WarningKind.INCIDENT
        zh, en = _NAMES.get(inc.kind, _NAMES["other"])
        place_zh = place or "道路"
        place_en = place or "the road"
        expected = inc.detected_at + timedelta(minutes=_EXPECTED_MIN.get(inc.kind, 30))
        area = (Area(description=place_zh, circle=(inc.lon, inc.lat, _CIRCLE_M))
                if inc.lon is not None and inc.lat is not None else None)
        if area is None and inc.segment_ids and self.network is not None:
            area = area_of(self.network, inc.segment_ids, (place_zh,))
        base: dict[str, Any] = {
            "kind": kind, "category": CATEGORY[kind] if inc.kind != "fire" else CapCategory.FIRE,
            "severity": _SEVERITY.get(inc.kind, CapSeverity.MODERATE),
            "certainty": CapCertainty.OBSERVED, "cause": inc.kind,
            "segment_ids": inc.segment_ids, "area": area, "lon": inc.lon, "lat": inc.lat,
            "headline": f"{place_zh} {zh}", "headline_en": f"{en.capitalize()} at {place_en}",
            "description": f"{place_zh}：{zh}" + (f"（第 {inc.lane} 车道）" if inc.lane else "")
            + (f"。{inc.description}" if inc.description else "。"),
            "description_en": f"{en.capitalize()} reported at {place_en}"
            + (f", lane {inc.lane}" if inc.lane else "")
            + (f": {inc.description}" if inc.description else "."),
            "details": {"incident_id": inc.incident_id, "sources": list(inc.sources),
                        "confidence": inc.confidence},
        }
        if held is None:
            w = Warning(warning_id=wid, status=WarningStatus.RAISED, urgency=CapUrgency.IMMEDIATE,
                        msg_type=CapMsgType.ALERT, started_at=inc.detected_at,
                        updated_at=inc.updated_at, expected_end=expected, **base)
        elif inc.status == "cleared":
            w = replace(held, status=WarningStatus.RESOLVED, urgency=CapUrgency.PAST,
                        msg_type=CapMsgType.UPDATE, updated_at=inc.updated_at,
                        ended_at=inc.updated_at, version=held.version + 1,
                        details={**held.details, "ended_because": "cleared"})
        else:
            w = replace(held, updated_at=inc.updated_at, version=held.version + 1,
                        status=held.status if held.status in (WarningStatus.ACKNOWLEDGED,
                                                              WarningStatus.ASSIGNED)
                        else WarningStatus.UPDATED, msg_type=CapMsgType.UPDATE, **base)
        self.warnings[wid] = w
        return w


# --- evidence from the other inputs --------------------------------------------------------------

PROBE_CONFIDENCE = 0.6
"""An abnormal queue that ends at one point, seen by probes alone."""
ALARM_CONFIDENCE = 0.5
REPORT_CONFIDENCE = 0.5
SNAP_M = 50.0
"""A point within this of a road is on it."""
_REPORTED = {"accident": ("accident", ""), "closure": ("other", "道路封闭（市民报告）")}
"""Citizen report kinds that are evidence of an incident, as (incident kind, description)."""


def _snap(network: RoadNetwork | None, lon: float, lat: float) -> tuple[str, ...]:
    if network is None:
        return ()
    near = network.nearest(lon, lat, radius_m=SNAP_M, k=1)
    return (near[0].segment_id,) if near else ()


def from_queue(warning: Warning, *, cleared: bool = False) -> Evidence:
    """Probe evidence: a queue warning whose head is a bottleneck (``abnormal.bottleneck``)."""
    return Evidence(
        key=f"queue:{warning.warning_id}", source="probes", kind="other",
        at=warning.ended_at or warning.updated_at, segment_ids=warning.segment_ids,
        lon=warning.lon, lat=warning.lat, confidence=PROBE_CONFIDENCE, holds=True,
        cleared=cleared, place="、".join(warning.road_names[:2]) or None,
        description="探测车辆：异常排队止于一点，疑似交通事件",
        queue_warning_id=warning.warning_id)


def from_alarm(a: TerminalAlarm, network: RoadNetwork | None) -> Evidence | None:
    """A terminal's emergency (SOS) alarm at a place: word of an incident there."""
    if "emergency" not in a.alarms:
        return None
    return Evidence(
        key=f"sos:{a.vehicle_id}", source=f"terminal:{a.vehicle_id}", kind="other",
        at=a.observed_at, segment_ids=_snap(network, a.lon, a.lat), lon=a.lon, lat=a.lat,
        confidence=ALARM_CONFIDENCE, description="车载终端紧急报警（SOS）")


def from_report(r: CitizenReport, network: RoadNetwork | None) -> Evidence | None:
    """A citizen's (or hotline agent's) report of an accident or closure at a place."""
    if r.kind not in _REPORTED or (r.lon is None and r.segment_id is None):
        return None
    kind, text = _REPORTED[r.kind]
    segments: tuple[str, ...] = (r.segment_id,) if r.segment_id else ()
    if not segments and r.lon is not None and r.lat is not None:
        segments = _snap(network, r.lon, r.lat)
    return Evidence(
        key=f"citizen:{r.report_id}", source=f"citizen:{r.report_id}", kind=kind,
        at=r.occurred_at or r.reported_at, segment_ids=segments, lon=r.lon, lat=r.lat,
        confidence=REPORT_CONFIDENCE, description=(r.text[:200] or text))
