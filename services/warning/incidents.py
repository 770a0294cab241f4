"""Incidents and weather from cameras and sensors, and where a warning applies (its CAP area).

A detected event (``tti.detector.event``) of a GB/T 29100 incident class (accident, stopped
vehicle, wrong-way driver, fire, pedestrian, debris …) becomes an `Incident` located at the
detector's site and on the segment it watches. It is *confirmed* when the detector is sure
(confidence ≥ ``CONFIRM_CONFIDENCE``, or none given), when the traffic on its segment says so
(level 4 or 5), or when a second detector reports the same kind on the same segment within
``CORROBORATE_S``; otherwise *suspected*. A confirmed incident raises an incident warning, which
ends when the detector reports the event ``cleared``. Fog, ice and standing water raise weather
warnings. ``congestion`` events are left to the speeds, which measure it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
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
    DetectedEvent,
    Incident,
    Warning,
    WarningKind,
    WarningStatus,
)
from shared.geo import EARTH_RADIUS_M
from shared.roadnet import RoadNetwork

CONFIRM_CONFIDENCE = 0.8
KEEP_CLEARED_S = 86_400.0
"""Cleared incidents are answered for a day, then forgotten."""
CORROBORATE_S = 600.0
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


def _digest(*parts: str) -> str:
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


class IncidentBook:
    """Incidents by id, with the rules that confirm them and the warnings they raise."""

    def __init__(self) -> None:
        self.by_id: dict[str, Incident] = {}
        self.warnings: dict[str, Warning] = {}

    def prune(self, now: datetime, *, keep_s: float = KEEP_CLEARED_S) -> int:
        """Forget incidents cleared more than ``keep_s`` ago (and their ended warnings)."""
        cutoff = now - timedelta(seconds=keep_s)
        old = [iid for iid, i in self.by_id.items()
               if i.status == "cleared" and i.updated_at < cutoff]
        for iid in old:
            inc = self.by_id.pop(iid)
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

    def apply(self, e: DetectedEvent, site: DetectorSite | None,
              level_of: Callable[[str], int | None]
              ) -> tuple[Incident | None, Warning | None] | None:
        """Take one detected event; None when it changes nothing (redelivered, older, ignored)."""
        if e.kind in LEFT_TO_SPEEDS:
            return None
        iid = "inc-" + _digest(e.detector_id, e.event_id)
        held = self.by_id.get(iid)
        if held is not None and (e.observed_at < held.updated_at or (
                e.observed_at == held.updated_at and (e.status == "cleared")
                == (held.status == "cleared"))):
            return None
        segment = site.segment_id if site is not None else None
        segments = (segment,) if segment else ()
        cleared = e.status == "cleared"
        if cleared:
            status = "cleared"
        elif held is not None and held.status == "confirmed":
            status = "confirmed"
        else:
            status = "confirmed" if self._confirms(e, segment, level_of) else "suspected"
        source = f"detector:{e.detector_id}"
        inc = Incident(
            incident_id=iid, kind=e.kind, status=status,
            detected_at=held.detected_at if held is not None else e.observed_at,
            updated_at=e.observed_at,
            lon=site.lon if site is not None else None, lat=site.lat if site is not None else None,
            segment_ids=segments,
            sources=tuple(dict.fromkeys((*(held.sources if held else ()), source))),
            confidence=e.confidence, lane=e.lane, description=e.description,
            warning_id=held.warning_id if held is not None else None)
        warning = self._warning_for(inc, e, site)
        if warning is not None:
            inc = replace(inc, warning_id=warning.warning_id)
        self.by_id[iid] = inc
        return inc, warning

    def _confirms(self, e: DetectedEvent, segment: str | None,
                  level_of: Callable[[str], int | None]) -> bool:
        if e.kind in WEATHER_KINDS or e.confidence is None or e.confidence >= CONFIRM_CONFIDENCE:
            return True
        if segment is None:
            return False
        if (level_of(segment) or 0) >= 4:
            return True
        window = timedelta(seconds=CORROBORATE_S)
        return any(i.kind == e.kind and segment in i.segment_ids and i.status != "cleared"
                   and not any(s == f"detector:{e.detector_id}" for s in i.sources)
                   and abs(i.updated_at - e.observed_at) <= window
                   for i in self.by_id.values())

    def _warning_for(self, inc: Incident, e: DetectedEvent,
                     site: DetectorSite | None) -> Warning | None:
        """The warning an incident raises, updates or ends (None while it is only suspected)."""
        wid = "inc-w-" + _digest(inc.incident_id)
        held = self.warnings.get(wid)
        if inc.status == "suspected" or (inc.status == "cleared" and held is None):
            return None
        kind = WarningKind.WEATHER if inc.kind in WEATHER_KINDS else WarningKind.INCIDENT
        zh, en = _NAMES.get(inc.kind, _NAMES["other"])
        place = (site.name if site is not None and site.name else None) or (
            f"检测器 {e.detector_id}")
        place_en = (site.name if site is not None and site.name else None) or (
            f"detector {e.detector_id}")
        expected = inc.detected_at + timedelta(minutes=_EXPECTED_MIN.get(inc.kind, 30))
        area = (Area(description=place, circle=(inc.lon, inc.lat, _CIRCLE_M))
                if inc.lon is not None and inc.lat is not None else None)
        base: dict[str, Any] = {
            "kind": kind, "category": CATEGORY[kind] if inc.kind != "fire" else CapCategory.FIRE,
            "severity": _SEVERITY.get(inc.kind, CapSeverity.MODERATE),
            "certainty": CapCertainty.OBSERVED, "cause": inc.kind,
            "segment_ids": inc.segment_ids, "area": area, "lon": inc.lon, "lat": inc.lat,
            "headline": f"{place} {zh}", "headline_en": f"{en.capitalize()} at {place_en}",
            "description": f"{place}：{zh}" + (f"（第 {inc.lane} 车道）" if inc.lane else "")
            + (f"。{inc.description}" if inc.description else "。"),
            "description_en": f"{en.capitalize()} reported at {place_en}"
            + (f", lane {inc.lane}" if inc.lane else "")
            + (f": {inc.description}" if inc.description else "."),
            "details": {"incident_id": inc.incident_id, "sources": list(inc.sources)},
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
