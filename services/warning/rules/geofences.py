"""Geofences of 两客一危 monitoring: restricted zones and roads per vehicle class, assigned routes.

The fences come from bigdata's geodatabase (``tti import-geofences``, ``PUT /v1/geofences/{id}``)
through :func:`load_fences`. Each violation is one vehicle-alarm warning with a start, updates
and an end (the episode bookkeeping of :mod:`services.warning.rules.episodes`):

- **entry** into a ``restricted_zone`` (the fix inside its polygon) or onto a
  ``restricted_road`` (the fix matched to one of its segments, the matcher sure of it:
  ``confidence`` ≥ ``min_confidence``, so a truck on the road *under* a closed bridge is not
  taken for one on it) by a vehicle of a listed class, while the fence is in force (its validity
  dates and local time windows). It updates while the vehicle stays inside (at most once a
  minute) and is resolved at the first fix outside, at that fix's time. A zone is left only
  :data:`EXIT_MARGIN_M` beyond its edge, so GNSS noise along a boundary does not split one entry
  into several; a doubtful fix off a closed road neither ends nor continues the episode. A
  fence's time window closing, or its validity ending, while the vehicle is inside ends the
  episode at that instant; a vehicle silent for :data:`SILENT_S` ends it at its last fix.
- **route deviation** from an ``assigned_route`` corridor (within ``width_m / 2`` of its line,
  or on one of its segments) by the vehicles it names: once the vehicle has been on its route,
  ``deviation_fixes`` consecutive fixes or ``deviation_s`` seconds off it raise a warning that
  begins at the first fix off, resolved at the first fix back on.

Severity: Severe for a dangerous-goods truck on a tunnel or bridge it is barred from, Moderate
otherwise. Warning ids are a hash of the vehicle, the fence and the start time, so a replayed
stream makes the same warnings; a redelivered or late fix changes nothing.

Cost: restricted roads are indexed by segment id, zones by a grid of ``GRID_DEG`` cells, routes
by vehicle and route id, so a fix near no fence costs a few dictionary look-ups.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from services.warning.rules.common import (
    CLASS_EN,
    CLASS_ZH,
    DAY_S,
    LOCAL_OFFSET_S,
    duration_en,
    duration_zh,
    local_seconds,
    utc,
    vehicle_alarm,
    where,
    who,
)
from services.warning.rules.episodes import Episode, EpisodeBook, Key, episode_id
from shared.clients.bigdata import BigdataClient, Geofence
from shared.events import CapSeverity, MatchedPosition, Warning
from shared.geo import EARTH_RADIUS_M

log = logging.getLogger("tti.warning.geofences")

RULE = "geofence"
ENTRY, DEVIATION = "geofence_entry", "route_deviation"
GRID_DEG = 0.01
"""Zone index cell (≈ 1 km): a fix looks at the zones overlapping its cell only."""
MAX_CELLS = 4096
"""A zone spanning more cells than this is checked by its extent instead (rare, huge zones)."""
EXIT_MARGIN_M = 15.0
SILENT_S = 600.0
"""No fix for this long ends an episode at its last fix (a long tunnel can hide a truck for
several minutes, so this is generous)."""
DEVIATION_FIXES = 5
DEVIATION_S = 60.0
MIN_CONFIDENCE = 0.6
"""The matcher's confidence a fix needs to count on (or off) a closed road or route segments."""
DEFAULT_CORRIDOR_WIDTH_M = 100.0
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_KIND_ZH = {"restricted_zone": "禁行区域", "restricted_road": "禁行路段",
            "assigned_route": "指定路线"}
_KIND_EN = {"restricted_zone": "restricted zone", "restricted_road": "restricted road",
            "assigned_route": "assigned route"}


async def load_fences(client: BigdataClient) -> list[Geofence]:
    """Every geofence bigdata holds (malformed records logged and skipped).

    Call it when the warning service prepares and every few minutes after (as the detector
    registry is reloaded), then hand the result to :meth:`GeofenceRule.set_fences`; keep the
    fences held when a reload fails.
    """
    batch = await client.list_geofences()
    if batch.rejected:
        log.warning("geofences from bigdata rejected: %s", dict(batch.rejected))
    return batch.fences


def _local_frame(lon0: float, lat0: float) -> tuple[Any, Any]:
    """Transforms lon/lat ⇄ metres in an equirectangular frame around (lon0, lat0)."""
    kx = _M_PER_DEG * math.cos(math.radians(lat0))

    def to_m(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(((xy[:, 0] - lon0) * kx, (xy[:, 1] - lat0) * _M_PER_DEG))

    def to_deg(xy: np.ndarray) -> np.ndarray:
        return np.column_stack((xy[:, 0] / kx + lon0, xy[:, 1] / _M_PER_DEG + lat0))

    return to_m, to_deg


def buffer_m(geom: BaseGeometry, metres: float) -> BaseGeometry:
    """``geom`` grown by ``metres`` (measured on the ground, not in degrees), in lon/lat."""
    c = geom.centroid
    to_m, to_deg = _local_frame(c.x, c.y)
    return shapely.transform(shapely.transform(geom, to_m).buffer(metres), to_deg)


@dataclass(slots=True, eq=False)
class _Fence:
    """A fence ready for fixes: prepared shapes, windows and who it binds."""

    fence: Geofence
    area: BaseGeometry | None = None
    """Zone: its polygon; route: its corridor. Prepared."""
    exit_area: BaseGeometry | None = None
    """Zone: the polygon grown by EXIT_MARGIN_M; leaving it is an exit."""
    box: tuple[float, float, float, float] = (0.0, 0.0, -1.0, -1.0)
    """Extent of ``area``, grown like ``exit_area`` (a cheap test before GEOS's)."""

    def binds(self, p: MatchedPosition) -> bool:
        f = self.fence
        if f.vehicle_classes and p.vehicle_class not in f.vehicle_classes:
            return False
        if f.kind != "assigned_route":
            return True
        return p.vehicle_id in f.vehicle_ids or (p.route_id is not None
                                                  and p.route_id in f.route_ids)

    def in_force(self, ts: float) -> bool:
        f = self.fence
        if f.valid_from is not None and ts < f.valid_from.timestamp():
            return False
        if f.valid_until is not None and ts >= f.valid_until.timestamp():
            return False
        return not f.time_windows or self._window_close(ts) is not None

    def _window_close(self, ts: float) -> float | None:
        """When the time windows holding ``ts`` close (the latest of them); None outside."""
        s = local_seconds(ts)
        day = ts - s
        close: float | None = None
        for a, b in self.fence.time_windows:
            if a < b and a <= s < b:
                end = day + b
            elif a > b and s >= a:
                end = day + DAY_S + b
            elif a > b and s < b:
                end = day + b
            else:
                continue
            close = end if close is None else max(close, end)
        return close

    def force_ends(self, ts: float) -> float:
        """When the spell in force at ``ts`` ends: its window closes or the validity ends."""
        f = self.fence
        end = math.inf if f.valid_until is None else f.valid_until.timestamp()
        if not f.time_windows:
            return end
        t = ts
        # Windows that meet (22:00-24:00 and 00:00-06:00) make one spell.
        for _ in range(2 * len(f.time_windows) + 1):
            close = self._window_close(t)
            if close is None or close <= t:
                break
            t = close
            if t >= end:
                break
        return min(end, t)

    def inside(self, p: MatchedPosition, min_confidence: float, *, staying: bool
               ) -> bool | None:
        """Whether the fix is on/in a restricted fence; None when the fix cannot tell."""
        f = self.fence
        if f.kind == "restricted_zone":
            x0, y0, x1, y1 = self.box
            if not (x0 <= p.lon <= x1 and y0 <= p.lat <= y1):
                return False
            area = self.exit_area if staying else self.area
            return bool(shapely.contains_xy(area, p.lon, p.lat))
        if p.confidence < min_confidence:
            return None  # the matcher is not sure which road it is on
        return p.segment_id in f.segment_ids

    def on_route(self, p: MatchedPosition, min_confidence: float) -> bool | None:
        """Whether the fix keeps to the assigned route; None when the fix cannot tell."""
        if self.area is not None:
            x0, y0, x1, y1 = self.box
            return (x0 <= p.lon <= x1 and y0 <= p.lat <= y1
                    and bool(shapely.contains_xy(self.area, p.lon, p.lat)))
        if p.confidence < min_confidence:
            return None
        return p.segment_id in self.fence.segment_ids


def _compile(f: Geofence) -> _Fence:
    c = _Fence(f)
    if f.geometry is not None and f.kind != "restricted_road":
        geom = shape(f.geometry)
        if f.kind == "restricted_zone":
            c.area, c.exit_area = geom, buffer_m(geom, EXIT_MARGIN_M)
        else:
            c.area = buffer_m(geom, (f.width_m or DEFAULT_CORRIDOR_WIDTH_M) / 2.0)
        for g in (c.area, c.exit_area):
            if g is not None:
                shapely.prepare(g)
        b = (c.exit_area or c.area).bounds
        c.box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
    return c


@dataclass(slots=True)
class _Off:
    """An armed route: the vehicle has been on it; a run of fixes off it not yet confirmed."""

    off_since: datetime | None = None
    off_fixes: int = 0


@dataclass(slots=True)
class _Vehicle:
    last_at: datetime
    open: set[str] = field(default_factory=set)
    """Fence ids with an open episode (the book holds the episodes)."""
    routes: dict[str, _Off] = field(default_factory=dict)
    dismissed: set[str] = field(default_factory=set)
    """Fences whose episode a department closed by hand while the vehicle was still inside:
    no new warning until it has left."""


def _key(w: Warning) -> Key:
    return str(w.details.get("vehicle_id")), f"{RULE}:{w.details.get('geofence_id')}"


def _clock(dt: datetime) -> str:
    """Local (UTC+8) time of day, HH:MM."""
    return (dt + timedelta(seconds=LOCAL_OFFSET_S)).strftime("%H:%M")


class GeofenceRule:
    """Geofence episodes by (vehicle, fence), over the fences last given to :meth:`set_fences`."""

    rule = RULE

    def __init__(self, *, deviation_fixes: int = DEVIATION_FIXES,
                 deviation_s: float = DEVIATION_S, min_confidence: float = MIN_CONFIDENCE,
                 silent_s: float = SILENT_S) -> None:
        self.deviation_fixes = deviation_fixes
        self.deviation = timedelta(seconds=deviation_s)
        self.min_confidence = min_confidence
        self.silent = timedelta(seconds=silent_s)
        self.book = EpisodeBook(key_of=_key)
        self.vehicles: dict[str, _Vehicle] = {}
        self.fences: dict[str, _Fence] = {}
        self._roads: dict[str, list[_Fence]] = {}
        self._cells: dict[tuple[int, int], list[_Fence]] = {}
        self._big_zones: list[_Fence] = []
        self._routes_by_vehicle: dict[str, list[_Fence]] = {}
        self._routes_by_route: dict[str, list[_Fence]] = {}

    # --- fences ------------------------------------------------------------------------------

    def set_fences(self, fences: Sequence[Geofence]) -> None:
        """Replace the fences (a reload). Open episodes go on; a fence gone or changed is
        judged afresh at the vehicle's next fix."""
        compiled: dict[str, _Fence] = {}
        for f in fences:
            try:
                compiled[f.geofence_id] = _compile(f)
            except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
                log.warning("geofence %s skipped: %s", f.geofence_id, exc)
        roads: dict[str, list[_Fence]] = {}
        cells: dict[tuple[int, int], list[_Fence]] = {}
        big: list[_Fence] = []
        by_vehicle: dict[str, list[_Fence]] = {}
        by_route: dict[str, list[_Fence]] = {}
        for c in compiled.values():
            f = c.fence
            if f.kind == "restricted_road":
                for sid in f.segment_ids:
                    roads.setdefault(sid, []).append(c)
            elif f.kind == "restricted_zone" and c.area is not None:
                x0, y0, x1, y1 = c.exit_area.bounds if c.exit_area is not None else c.area.bounds
                ix0, iy0 = math.floor(x0 / GRID_DEG), math.floor(y0 / GRID_DEG)
                ix1, iy1 = math.floor(x1 / GRID_DEG), math.floor(y1 / GRID_DEG)
                if (ix1 - ix0 + 1) * (iy1 - iy0 + 1) > MAX_CELLS:
                    big.append(c)
                    continue
                for ix in range(ix0, ix1 + 1):
                    for iy in range(iy0, iy1 + 1):
                        cells.setdefault((ix, iy), []).append(c)
            elif f.kind == "assigned_route":
                for vid in f.vehicle_ids:
                    by_vehicle.setdefault(vid, []).append(c)
                for rid in f.route_ids:
                    by_route.setdefault(rid, []).append(c)
        self.fences, self._roads, self._cells, self._big_zones = compiled, roads, cells, big
        self._routes_by_vehicle, self._routes_by_route = by_vehicle, by_route

    def _restricted_near(self, p: MatchedPosition) -> list[_Fence]:
        near = list(self._roads.get(p.segment_id, ()))
        cell = self._cells.get((math.floor(p.lon / GRID_DEG), math.floor(p.lat / GRID_DEG)))
        if cell:
            near.extend(cell)
        for c in self._big_zones:
            x0, y0, x1, y1 = c.box
            if x0 <= p.lon <= x1 and y0 <= p.lat <= y1:
                near.append(c)
        return near

    def _routes_of(self, p: MatchedPosition) -> list[_Fence]:
        routes = self._routes_by_vehicle.get(p.vehicle_id, [])
        if p.route_id is not None and p.route_id in self._routes_by_route:
            routes = [*routes, *(c for c in self._routes_by_route[p.route_id]
                                 if c not in routes)]
        return routes

    # --- fixes -------------------------------------------------------------------------------

    def on_matched(self, p: MatchedPosition) -> list[Warning]:
        """Warnings this fix raises, updates or resolves (oldest first)."""
        at = p.observed_at
        v = self.vehicles.get(p.vehicle_id)
        if v is not None and at <= v.last_at:
            return []  # redelivered or late: nothing new
        near = self._restricted_near(p)
        routes = self._routes_of(p)
        if v is None:
            if not near and not routes:
                return []  # nothing to remember about a vehicle near no fence
            v = self.vehicles[p.vehicle_id] = _Vehicle(at)
        out: list[Warning] = []
        if v.open and at - v.last_at >= self.silent:
            out.extend(self._end_silent(p.vehicle_id, v))  # as the tick would have
        v.last_at = at
        ts = at.timestamp()
        for fid in sorted(v.open):
            self._follow(p, v, fid, ts, out)
        for c in near:
            fid = c.fence.geofence_id
            if fid in v.open or not c.binds(p) or not c.in_force(ts):
                continue
            inside = c.inside(p, self.min_confidence, staying=False)
            if inside is None:
                continue
            if not inside:
                v.dismissed.discard(fid)
            elif fid not in v.dismissed:
                out.append(self._raise_entry(p, c))
                v.open.add(fid)
        if v.dismissed:
            # Far from a restricted fence it was dismissed in: it has left it.
            keep = {c.fence.geofence_id for c in (*near, *routes)}
            v.dismissed &= keep
        for c in routes:
            self._route(p, v, c, ts, out)
        # The vehicle stays known (its last fix time guards against redeliveries) until the
        # tick finds it silent.
        return out

    def _follow(self, p: MatchedPosition, v: _Vehicle, fid: str, ts: float,
                out: list[Warning]) -> None:
        """An open restricted-fence episode, at the vehicle's next fix."""
        ep = self.book.find((p.vehicle_id, f"{RULE}:{fid}"))
        if ep is None:  # closed by a department meanwhile
            v.open.discard(fid)
            return
        c = self.fences.get(fid)
        kind = str(ep.warning.details.get("kind"))
        if kind == "assigned_route":
            return  # followed by _route
        if c is None or c.fence.kind != kind:
            v.open.discard(fid)
            out.append(self._end(ep, p.observed_at, "geofence_removed"))
            return
        if not c.in_force(ts):
            v.open.discard(fid)
            last = ep.last_seen.timestamp()
            end = min(c.force_ends(last), ts) if c.in_force(last) else last
            out.append(self._end(ep, utc(end), "restriction_ended"))
            return
        inside = c.inside(p, self.min_confidence, staying=True) if c.binds(p) else False
        if inside is None:
            return  # a doubtful fix neither ends nor continues it
        if not inside:
            v.open.discard(fid)
            out.append(self._end(ep, p.observed_at, "exited"))
            return
        news = (self._severity(p, c) is CapSeverity.SEVERE
                and ep.warning.severity is not CapSeverity.SEVERE)
        if not news and p.observed_at - ep.warning.updated_at < self.book.update_every:
            # Held back anyway: keep where it is now, write the texts when they go out.
            fields = self._base(p, c, fixes=self._fixes(ep), started=ep.warning.started_at)
        else:
            fields = self._inside_fields(p, c, ep)
        w = self.book.update(ep, at=p.observed_at, news=news, **fields)
        if w is not None:
            out.append(w)

    def _route(self, p: MatchedPosition, v: _Vehicle, c: _Fence, ts: float,
               out: list[Warning]) -> None:
        fid = c.fence.geofence_id
        ep = self.book.find((p.vehicle_id, f"{RULE}:{fid}"))
        if ep is None and fid in v.open:
            v.open.discard(fid)  # closed by a department
        if not c.binds(p) or not c.in_force(ts):
            v.routes.pop(fid, None)
            if ep is not None:
                v.open.discard(fid)
                last = ep.last_seen.timestamp()
                end = min(c.force_ends(last), ts) if c.in_force(last) else last
                out.append(self._end(ep, utc(end), "restriction_ended"))
            return
        on = c.on_route(p, self.min_confidence)
        if on is None:
            return
        track = v.routes.get(fid)
        if on:
            v.routes[fid] = _Off()  # on the route: armed, any run off it over
            v.dismissed.discard(fid)
            if ep is not None:
                v.open.discard(fid)
                out.append(self._end(ep, p.observed_at, "returned"))
            return
        if ep is not None:
            if p.observed_at - ep.warning.updated_at < self.book.update_every:
                fields = self._base(p, c, fixes=self._fixes(ep), started=ep.warning.started_at)
            else:
                fields = self._deviation_fields(p, c, ep)
            w = self.book.update(ep, at=p.observed_at, **fields)
            if w is not None:
                out.append(w)
            return
        if track is None or fid in v.dismissed:
            return  # not yet on its route (driving to it) or dismissed by hand
        if track.off_since is None:
            track.off_since = p.observed_at
        track.off_fixes += 1
        if (track.off_fixes >= self.deviation_fixes
                or p.observed_at - track.off_since >= self.deviation):
            out.append(self._raise_deviation(p, c, track.off_since))
            v.open.add(fid)

    # --- ticks and restarts ------------------------------------------------------------------

    def expire(self, now: datetime) -> list[Warning]:
        """Episodes of silent vehicles and of fences no longer in force, resolved."""
        out: list[Warning] = []
        ts = now.timestamp()
        for vid, v in list(self.vehicles.items()):
            if now - v.last_at >= self.silent:
                out.extend(self._end_silent(vid, v))
                del self.vehicles[vid]
                continue
            for fid in sorted(v.open):
                ep = self.book.find((vid, f"{RULE}:{fid}"))
                c = self.fences.get(fid)
                if ep is None:
                    v.open.discard(fid)
                elif c is not None and not c.in_force(ts):
                    last = ep.last_seen.timestamp()
                    end = c.force_ends(last) if c.in_force(last) else last
                    v.open.discard(fid)
                    v.routes.pop(fid, None)
                    out.append(self._end(ep, utc(end), "restriction_ended"))
        # Episodes resumed for vehicles not heard from since.
        for ep in self.book:
            if ep.key[0] not in self.vehicles and now - ep.last_seen >= self.silent:
                out.append(self._end(ep, ep.last_seen, "no_reports"))
        return out

    def _end_silent(self, vid: str, v: _Vehicle) -> list[Warning]:
        out = []
        for fid in sorted(v.open):
            ep = self.book.find((vid, f"{RULE}:{fid}"))
            if ep is not None:
                out.append(self._end(ep, ep.last_seen, "no_reports"))
        v.open.clear()
        v.routes.clear()
        return out

    def resume(self, w: Warning) -> None:
        """Go on with an episode a previous run left open (its warning still active)."""
        ep = self.book.resume(w)
        if ep is None:
            return
        vid, fid = str(w.details.get("vehicle_id")), str(w.details.get("geofence_id"))
        v = self.vehicles.setdefault(vid, _Vehicle(w.updated_at))
        v.last_at = max(v.last_at, w.updated_at)
        v.open.add(fid)
        if w.details.get("kind") == "assigned_route":
            v.routes[fid] = _Off()

    def adopt(self, w: Warning) -> None:
        """A department's change of an open episode's warning (ack, assign, close …)."""
        vid, fid = _key(w)[0], str(w.details.get("geofence_id"))
        v = self.vehicles.get(vid)
        held = self.book.find(_key(w))
        if self.book.adopt(w) is None and held is not None and v is not None:
            v.open.discard(fid)
            v.dismissed.add(fid)  # closed by hand while it lasts: no new one until it ends

    # --- warnings ----------------------------------------------------------------------------

    def _end(self, ep: Episode, end: datetime, because: str) -> Warning:
        d = ep.warning.details
        start = ep.warning.started_at
        zh, en = who(str(d.get("vehicle_id")), str(d.get("vehicle_class")), None)
        name = str(d.get("name"))
        name_en = str(d.get("name_en") or name)
        lasted = max(0.0, (end - start).total_seconds())
        if d.get("kind") == "assigned_route":
            text = (f"{zh} 于 {_clock(start)} 偏离指定路线「{name}」，"
                    f"{_clock(end)} {'回到路线' if because == 'returned' else '偏离结束'}，"
                    f"历时 {duration_zh(lasted)}。")
            text_en = (f"The {en} left its assigned route {name_en} at {_clock(start)} "
                       f"(UTC+8); {'back on it' if because == 'returned' else 'over'} at "
                       f"{_clock(end)}, after {duration_en(lasted)}.")
        else:
            kind_zh, kind_en = _KIND_ZH[str(d.get("kind"))], _KIND_EN[str(d.get("kind"))]
            left = {"exited": "驶离", "restriction_ended": "禁行时段结束",
                    "geofence_removed": "围栏已撤销", "no_reports": "此后无定位"}.get(because,
                                                                                 "结束")
            left_en = {"exited": "left it", "restriction_ended": "the restriction ended",
                       "geofence_removed": "the fence was withdrawn",
                       "no_reports": "no fix since"}.get(because, "over")
            text = (f"{zh} 于 {_clock(start)} 驶入{kind_zh}「{name}」，{_clock(end)} {left}，"
                    f"历时 {duration_zh(lasted)}。")
            text_en = (f"The {en} entered the {kind_en} {name_en} at {_clock(start)} (UTC+8); "
                       f"{left_en} at {_clock(end)}, after {duration_en(lasted)}.")
        return self.book.resolve(ep, end=end, because=because, description=text,
                                 description_en=text_en,
                                 details={"ended_at": end.isoformat(), "lasted_s": lasted})

    @staticmethod
    def _fixes(ep: Episode) -> int:
        """The count of fixes in the episode with this one (held-back updates included)."""
        held = ep.pending.get("details", ep.warning.details)
        n = held.get("fixes", ep.warning.details.get("fixes", 1))
        return (n if isinstance(n, int) else 1) + 1

    def _severity(self, p: MatchedPosition, c: _Fence) -> CapSeverity:
        return (CapSeverity.SEVERE if p.vehicle_class == "dangerous_goods"
                and (p.tunnel or p.bridge) and c.fence.kind != "assigned_route"
                else CapSeverity.MODERATE)

    @staticmethod
    def _structure(p: MatchedPosition) -> tuple[str, str]:
        if p.tunnel:
            return "隧道", "tunnel"
        if p.bridge:
            return "桥梁", "bridge"
        return "", ""

    @staticmethod
    def _classes(f: Geofence) -> tuple[str, str]:
        classes = sorted(f.vehicle_classes)
        if not classes:
            return "所有车辆", "all vehicles"
        return ("、".join(CLASS_ZH.get(k, k) for k in classes),
                ", ".join(CLASS_EN.get(k, k) + "s" for k in classes))

    def _base(self, p: MatchedPosition, c: _Fence, *, fixes: int, started: datetime
              ) -> dict[str, Any]:
        f = c.fence
        return {
            "segment_ids": (p.segment_id,) if p.segment_id else (),
            "road_names": (p.road_name,) if p.road_name else (),
            "speed_kmh": p.speed_kmh,
            **where(p.vehicle_id, p.lon, p.lat),
            "details": {
                "rule": RULE, "subject": p.vehicle_id, "vehicle_id": p.vehicle_id,
                "vehicle_class": p.vehicle_class, "geofence_id": f.geofence_id,
                "name": f.name, "name_en": f.name_en, "kind": f.kind,
                "started_at": started.isoformat(), "last_fix_at": p.observed_at.isoformat(),
                "fixes": fixes, "segment_id": p.segment_id, "road_name": p.road_name,
                "tunnel": p.tunnel, "bridge": p.bridge, "confidence": p.confidence},
        }

    def _inside_fields(self, p: MatchedPosition, c: _Fence, ep: Episode | None,
                       ) -> dict[str, Any]:
        f = c.fence
        started = p.observed_at if ep is None else ep.warning.started_at
        fixes = 1 if ep is None else self._fixes(ep)
        zh, en = who(p.vehicle_id, p.vehicle_class, None)
        classes_zh, classes_en = self._classes(f)
        kind_zh, kind_en = _KIND_ZH[f.kind], _KIND_EN[f.kind]
        s_zh, s_en = self._structure(p)
        where_zh = f"，在{p.road_name}" if p.road_name else ""
        where_en = f" on {p.road_name}" if p.road_name else ""
        so_far = (p.observed_at - started).total_seconds()
        severity = self._severity(p, c)
        if ep is not None and ep.warning.severity == CapSeverity.SEVERE:
            severity = CapSeverity.SEVERE  # once on the closed tunnel, it stays that grave
        fields = self._base(p, c, fixes=fixes, started=started)
        fields.update(
            severity=severity,
            description=(f"{zh} 于 {_clock(started)} 驶入{kind_zh}「{f.name}」"
                         f"（{classes_zh}禁行{'，' + s_zh if s_zh else ''}），"
                         f"{_clock(p.observed_at)} 仍在其中{where_zh}，"
                         f"已 {duration_zh(so_far)}。"),
            description_en=(f"The {en} entered the {kind_en} {f.name_en or f.name} (closed to "
                            f"{classes_en}{', a ' + s_en if s_en else ''}) at "
                            f"{_clock(started)} (UTC+8) and was still in it at "
                            f"{_clock(p.observed_at)}{where_en}, for {duration_en(so_far)}."))
        return fields

    def _raise_entry(self, p: MatchedPosition, c: _Fence) -> Warning:
        f = c.fence
        zh, en = who(p.vehicle_id, p.vehicle_class, None)
        s_zh, s_en = self._structure(p)
        kind_zh = "禁行" + s_zh if s_zh and f.kind == "restricted_road" else _KIND_ZH[f.kind]
        kind_en = (f"closed {s_en}" if s_en and f.kind == "restricted_road"
                   else _KIND_EN[f.kind])
        fields = self._inside_fields(p, c, None)
        w = vehicle_alarm(
            warning_id=episode_id("geofence", RULE, p.vehicle_id, f.geofence_id, p.observed_at),
            cause=ENTRY, started_at=p.observed_at,
            headline=f"{zh} 驶入{kind_zh}「{f.name}」",
            headline_en=f"{en.capitalize()} entered {kind_en} {f.name_en or f.name}",
            **fields)
        return self.book.raise_((p.vehicle_id, f"{RULE}:{f.geofence_id}"), w,
                                at=p.observed_at)

    def _deviation_fields(self, p: MatchedPosition, c: _Fence, ep: Episode | None,
                          started: datetime | None = None) -> dict[str, Any]:
        f = c.fence
        started = started or (p.observed_at if ep is None else ep.warning.started_at)
        fixes = 1 if ep is None else self._fixes(ep)
        zh, en = who(p.vehicle_id, p.vehicle_class, None)
        where_zh = f"，现在{p.road_name}" if p.road_name else ""
        where_en = f", now on {p.road_name}" if p.road_name else ""
        so_far = (p.observed_at - started).total_seconds()
        fields = self._base(p, c, fixes=fixes, started=started)
        fields.update(
            severity=CapSeverity.MODERATE,
            description=(f"{zh} 于 {_clock(started)} 偏离指定路线「{f.name}」，"
                         f"{_clock(p.observed_at)} 仍未回到路线{where_zh}，"
                         f"已 {duration_zh(so_far)}。"),
            description_en=(f"The {en} left its assigned route {f.name_en or f.name} at "
                            f"{_clock(started)} (UTC+8) and was still off it at "
                            f"{_clock(p.observed_at)}{where_en}, for {duration_en(so_far)}."))
        return fields

    def _raise_deviation(self, p: MatchedPosition, c: _Fence, started: datetime) -> Warning:
        f = c.fence
        zh, en = who(p.vehicle_id, p.vehicle_class, None)
        w = vehicle_alarm(
            warning_id=episode_id("geofence", RULE, p.vehicle_id, f.geofence_id, started),
            cause=DEVIATION, started_at=started,
            headline=f"{zh} 偏离指定路线「{f.name}」",
            headline_en=f"{en.capitalize()} left assigned route {f.name_en or f.name}",
            **self._deviation_fields(p, c, None, started))
        # It began at the first fix off the route and is decided now.
        return self.book.raise_((p.vehicle_id, f"{RULE}:{f.geofence_id}"),
                                replace(w, updated_at=p.observed_at), at=p.observed_at)
