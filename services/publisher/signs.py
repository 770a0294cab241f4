"""Electronic bus-stop signs (公交电子站牌): ``/signs/{stop_id}`` and the answer it polls.

The page (``static/signs.{html,js,css}``) is for a roadside screen, landscape or portrait: the
next arrivals per route with minutes and occupancy, the level of the road ahead and the public
warnings in force near the stop. It polls ``GET /api/v1/stops/{stop_id}/sign`` and, when the
server or the live feed is down, keeps showing what it last had and says since when.

The sign's answer is built on the one set of answers (:meth:`Answers.arrivals`), grouped per
route and direction. **The road ahead** is decided from the data the publisher holds:

1. the segment the stop stands beside: the nearest catalogue segment within ``REACH_M`` that
   has the stop on its right-hand side (traffic keeps right in China, and stops are placed on
   the side of the direction they serve), preferring segments the stop's routes run on;
2. then the segments that continue it, joined node to node by their ids
   (``<way>:<from>:<to>``): of the segments leaving its end (never the way back), the one the
   stop's routes run on (bigdata's ``/v1/routes/segments``, the routes being those with an
   arrival at the stop), else one of the same name, else the same way — until ``AHEAD_M``.

Its level is the worst live level along it (a jam 500 m on is what a rider waits for); segments
without live data say so, as everywhere.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from services.publisher import render
from services.publisher.api import respond_cached
from services.publisher.cap_feed import is_public
from services.publisher.openapi_schemas import OCCUPANCY
from services.publisher.places import Stop
from services.publisher.roads import Catalogue, live_properties
from shared.clients.bigdata import Segment
from shared.errors import NotFound, TtiError
from shared.events import CapSeverity, RoadStatus, Warning
from shared.geo import LocalProjection, point_segment_projection
from shared.schemas import NULLABLE_TIME, TIME, level_properties

STATIC_DIR = Path(__file__).resolve().parent / "static"

if TYPE_CHECKING:
    from services.publisher.answers import Answer, Answers

REACH_M = 60.0
"""How far from the stop the road it stands beside may be."""
AHEAD_M = 800.0
"""How much road ahead the sign grades."""
NEAR_M = 1500.0
"""A warning whose place is this close to the stop is shown on its sign."""
MAX_ROUTES = 12
ARRIVALS_PER_ROUTE = 3
MAX_WARNINGS = 3
ROUTE_SEGMENTS_TTL_S = 600.0
ROUTE_SEGMENTS_RETRY_S = 60.0

_SEVERITY_RANK = {CapSeverity.EXTREME: 0, CapSeverity.SEVERE: 1, CapSeverity.MODERATE: 2,
                  CapSeverity.MINOR: 3, CapSeverity.UNKNOWN: 4}


def _ends(segment_id: str) -> tuple[str, str, str] | None:
    """(way, from node, to node) of a segment id, or None when it is not of that form."""
    parts = segment_id.rsplit(":", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


class _Graph:
    """Segments leaving each node, over one catalogue snapshot."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.leaving: dict[str, list[Segment]] = {}
        for seg in catalogue.list_segments():
            ends = _ends(seg.segment_id)
            if ends is not None:
                self.leaving.setdefault(ends[1], []).append(seg)


def _side_and_distance(stop: Stop, segment: Segment) -> tuple[float, float]:
    """(distance in metres, cross product sign: < 0 when the stop is right of travel)."""
    proj = LocalProjection(stop.lon, stop.lat)
    pts = [proj.to_xy(lon, lat) for lon, lat in segment.coords]
    best = (math.inf, 0.0)
    for (ax, ay), (bx, by) in itertools.pairwise(pts):
        hit = point_segment_projection(0.0, 0.0, ax, ay, bx, by)
        if hit.distance < best[0]:
            cross = (bx - ax) * (0.0 - ay) - (by - ay) * (0.0 - ax)
            best = (hit.distance, cross)
    return best


def road_ahead(catalogue: Catalogue, graph: _Graph, stop: Stop,
               route_segments: frozenset[str] | None) -> list[Segment]:
    """The segment the stop stands beside and those its buses drive next (see the module)."""
    d = REACH_M / 111_195.0
    dlon = d / max(math.cos(math.radians(stop.lat)), 1e-6)
    near = []
    for seg in catalogue.list_segments((stop.lon - dlon, stop.lat - d,
                                        stop.lon + dlon, stop.lat + d)):
        distance, cross = _side_and_distance(stop, seg)
        if distance <= REACH_M:
            on_route = route_segments is not None and seg.segment_id in route_segments
            # Right-hand side first, then on the stop's routes, then nearest.
            near.append(((cross >= 0, not on_route, distance, seg.segment_id), seg))
    if not near:
        return []
    current = min(near, key=lambda t: t[0])[1]
    ahead, seen, length = [current], {current.segment_id}, current.length_m
    while length < AHEAD_M:
        ends = _ends(current.segment_id)
        if ends is None:
            break
        way, start, end = ends
        options = [s for s in graph.leaving.get(end, ())
                   if s.segment_id not in seen and (e := _ends(s.segment_id)) is not None
                   and e[2] != start]
        nxt = _pick_next(options, current, way, route_segments)
        if nxt is None:
            break
        ahead.append(nxt)
        seen.add(nxt.segment_id)
        length += nxt.length_m
        current = nxt
    return ahead


def _pick_next(options: list[Segment], current: Segment, way: str,
               route_segments: frozenset[str] | None) -> Segment | None:
    if route_segments is not None:
        on_route = [s for s in options if s.segment_id in route_segments]
        if len(on_route) == 1:
            return on_route[0]
        if on_route:
            options = on_route
        else:
            return None  # the routes turn off the catalogue's roads here (or end)
    for same in ([s for s in options if current.name and s.name == current.name],
                 [s for s in options if s.segment_id.rsplit(":", 2)[0] == way]):
        if same:
            return min(same, key=lambda s: s.segment_id)
    return None


def road_ahead_json(segments: list[Segment], statuses: list[RoadStatus | None]) -> dict[str, Any]:
    """The road ahead: its name, worst live level and each segment's live values."""
    items = [{"segment_id": s.segment_id, "name": s.name, "name_en": s.name_en,
              "length_m": round(s.length_m, 1), "bridge": s.bridge, "tunnel": s.tunnel,
              **live_properties(st)} for s, st in zip(segments, statuses, strict=True)]
    graded = [(st.level, -(st.speed_kmh or 0.0), i) for i, st in enumerate(statuses)
              if st is not None and st.source != "none" and st.level is not None]
    worst = items[max(graded)[2]] if graded else None
    observed = [st.observed_at for _, _, i in graded if (st := statuses[i]) is not None]
    first = items[0] if items else None
    return {
        "name": first["name"] if first else None,
        "name_en": first["name_en"] if first else None,
        "length_m": round(sum(s.length_m for s in segments), 1),
        "level": worst["level"] if worst else None,
        "level_name": worst["level_name"] if worst else None,
        "level_name_en": worst["level_name_en"] if worst else None,
        "speed_kmh": worst["speed_kmh"] if worst else None,
        "worst_segment_id": worst["segment_id"] if worst else None,
        "observed_at": max(observed, default=None),
        "segments": items,
    }


def _near(warning: Warning, stop: Stop, ahead_ids: set[str], route_ids: set[str],
          catalogue: Catalogue | None) -> bool:
    if ahead_ids.intersection(warning.segment_ids):
        return True
    if warning.impact is not None and route_ids.intersection(warning.impact.bus_routes):
        return True
    box = render.warning_bbox(warning, catalogue)
    if box is None:
        return False
    d = NEAR_M / 111_195.0
    dlon = d / max(math.cos(math.radians(stop.lat)), 1e-6)
    return not (box[2] < stop.lon - dlon or box[0] > stop.lon + dlon
                or box[3] < stop.lat - d or box[1] > stop.lat + d)


def warning_sign_json(w: Warning) -> dict[str, Any]:
    """What a sign says of a warning: its headline in both languages and how bad."""
    return {"warning_id": w.warning_id, "kind": w.kind, "severity": w.severity,
            "headline": w.headline, "headline_en": w.headline_en or None,
            "road_names": list(w.road_names), "level": w.level, "started_at": w.started_at,
            "updated_at": w.updated_at}


def group_arrivals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Arrival rows grouped per route and direction, soonest route first.

    A live row whose direction is not known joins its route's first group (or is joined by
    the route's first row with a direction).
    """
    groups: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in rows:  # already soonest first
        route_id, direction = row.get("route_id"), row.get("direction_id")
        key = (route_id, direction)
        if direction is None:
            key = next((k for k in groups if k[0] == route_id), key)
        elif key not in groups and (route_id, None) in groups:
            # The same group under its direction, where it was in the order.
            groups = {key if k == (route_id, None) else k: g for k, g in groups.items()}
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "route_id": route_id, "route_short_name": row.get("route_short_name"),
                "direction_id": direction, "headsign": row.get("headsign"), "arrivals": []}
        group["headsign"] = group["headsign"] or row.get("headsign")
        group["direction_id"] = group["direction_id"] if direction is None else direction
        if len(group["arrivals"]) < ARRIVALS_PER_ROUTE:
            group["arrivals"].append({
                "source": row["source"], "arrival_at": row["arrival_at"],
                "minutes": row["minutes"], "occupancy": row.get("occupancy"),
                "vehicle": row.get("vehicle"), "delay_s": row.get("delay_s")})
    return list(groups.values())[:MAX_ROUTES]


@dataclass
class Signs:
    """The signs' answers over the one set of answers, with the road-ahead lookups cached."""

    answers: Answers
    _graph: _Graph | None = None
    _ahead: dict[tuple[str, frozenset[str] | None], list[Segment]] = field(default_factory=dict)
    _route_segments: dict[str, frozenset[str]] | None = None
    _route_segments_at: float = -math.inf
    _route_segments_next: float = -math.inf

    async def route_segments(self) -> dict[str, frozenset[str]] | None:
        """bigdata's segments per bus route, cached; None while it has not answered."""
        p = self.answers.p
        mono = p.clock.monotonic()
        fresh = mono - self._route_segments_at <= ROUTE_SEGMENTS_TTL_S
        if (self._route_segments is None or not fresh) and mono >= self._route_segments_next:
            try:
                found = await p.bigdata.get_route_segments()
            except (TtiError, OSError):
                self._route_segments_next = mono + ROUTE_SEGMENTS_RETRY_S
            else:
                if found != self._route_segments:
                    self._ahead.clear()
                self._route_segments, self._route_segments_at = found or None, mono
        return self._route_segments

    def _road_ahead(self, catalogue: Catalogue, stop: Stop,
                    on_routes: frozenset[str] | None) -> list[Segment]:
        if self._graph is None or self._graph.catalogue is not catalogue:
            self._graph, self._ahead = _Graph(catalogue), {}
        key = (stop.stop_id, on_routes)
        found = self._ahead.get(key)
        if found is None:
            if len(self._ahead) > 20_000:
                self._ahead.clear()
            found = self._ahead[key] = road_ahead(catalogue, self._graph, stop, on_routes)
        return found

    async def sign(self, stop_id: str) -> Answer:
        """What the sign of ``stop_id`` shows (404 for an unknown stop)."""
        answers = self.answers
        p = answers.p
        body, changed = await answers.arrivals(stop_id, limit=60)
        stop = answers.places().stop_by_id[stop_id]
        rows = body["arrivals"]
        route_ids = {str(r["route_id"]) for r in rows if r.get("route_id")}
        by_route = await self.route_segments() if route_ids else None
        on_routes = None
        if by_route is not None:
            known = [by_route[r] for r in route_ids if r in by_route]
            on_routes = frozenset().union(*known) if known else None
        now = p.clock.now()
        catalogue = p.catalogue
        ahead = [] if catalogue is None else self._road_ahead(catalogue, stop, on_routes)
        statuses = [p.road_status(s, now) for s in ahead]
        ahead_ids = {s.segment_id for s in ahead}
        warnings = [w for w in p.warnings.list_warnings("active")
                    if is_public(w) and _near(w, stop, ahead_ids, route_ids, catalogue)]
        warnings.sort(key=lambda w: (_SEVERITY_RANK.get(w.severity, 9), -w.started_at.timestamp()))
        live_made = [r["made_at"] for r in rows if r["source"] == "live" and r.get("made_at")]
        live_as_of: datetime | None = max(live_made, default=None)
        return ({
            "stop": {"stop_id": stop.stop_id, "name": stop.name, "name_en": stop.name_en,
                     "code": stop.code},
            "routes": group_arrivals(rows),
            "road_ahead": road_ahead_json(ahead, statuses) if ahead else None,
            "warnings": [warning_sign_json(w) for w in warnings[:MAX_WARNINGS]],
            "warnings_more": max(0, len(warnings) - MAX_WARNINGS),
            "feed": {"bus": "connected" if p.bus.connected else "disconnected",
                     "timetable": body["timetable"], "live_as_of": live_as_of},
            "clock_rate": p.clock.rate,
            "time_zone": "UTC",
        }, max((t for t in (changed, p.changed.get("roads"), p.changed.get("warnings"))
                if t is not None), default=None))


SIGNS = web.AppKey("signs", Signs)
_PAGE_HEADERS = {
    # Only this server: no fonts, scripts or images from elsewhere on a roadside screen.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


async def sign_page(request: web.Request) -> web.StreamResponse:
    """``GET /signs/{stop_id}``: the sign's page; 404 (a page) for a stop that does not exist.

    While the stops are still loading (a restart) the page is served anyway: it polls until
    the server knows.
    """
    stop_id = request.match_info["stop_id"]
    places = request.app[SIGNS].answers.p.places
    if places is not None and stop_id not in places.stop_by_id:
        if "application/json" in request.headers.get("Accept", ""):
            raise NotFound(f"no stop {stop_id!r}")
        return web.Response(status=404, text=_NOT_FOUND_HTML, content_type="text/html",
                            charset="utf-8", headers=_PAGE_HEADERS)
    return web.FileResponse(STATIC_DIR / "signs.html",
                            headers={**_PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"})


async def sign_data(request: web.Request) -> web.Response:
    """``GET /api/v1/stops/{stop_id}/sign``: what the sign shows, as JSON."""
    stop_id = request.match_info["stop_id"]
    return await respond_cached(
        request, ("sign", stop_id), ("buses", "places", "roads", "warnings", "catalogue"),
        lambda: request.app[SIGNS].sign(stop_id))


_NOT_FOUND_HTML = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>无此站点 · No such stop</title>
<link rel="stylesheet" href="/static/signs.css"></head>
<body class="sign missing"><main class="notice"><h1>无此站点</h1>
<p>No such stop</p></main></body></html>
"""


def add_sign_routes(app: web.Application, answers: Answers) -> None:
    """Register the sign page and its answer."""
    app[SIGNS] = Signs(answers)
    app.router.add_get("/signs/{stop_id}", sign_page)
    app.router.add_get("/api/v1/stops/{stop_id}/sign", sign_data)


_S = {"type": ["string", "null"]}
_N = {"type": ["number", "null"]}
SIGN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stop", "routes", "road_ahead", "warnings", "feed", "clock_rate",
                 "generated_at"],
    "properties": {
        "stop": {"type": "object", "required": ["stop_id", "name"],
                 "properties": {"stop_id": {"type": "string"}, "name": {"type": "string"},
                                "name_en": _S, "code": _S}},
        "routes": {"type": "array", "items": {
            "type": "object", "required": ["route_id", "route_short_name", "arrivals"],
            "properties": {
                "route_id": {"type": "string"}, "route_short_name": _S,
                "direction_id": {"type": ["integer", "null"]}, "headsign": _S,
                "arrivals": {"type": "array", "items": {
                    "type": "object", "required": ["source", "arrival_at", "minutes"],
                    "properties": {"source": {"enum": ["live", "schedule"]},
                                   "arrival_at": TIME, "minutes": {"type": "integer",
                                                                   "minimum": 0},
                                   "occupancy": OCCUPANCY, "vehicle": _S,
                                   "delay_s": _N}}}}}},
        "road_ahead": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["level", "segments"],
            "description": "The segment the stop stands beside and those its buses drive "
                           "next (up to 800 m); level: the worst live level along it",
            "properties": {"name": _S, "name_en": _S, "length_m": {"type": "number"},
                           **level_properties(), "speed_kmh": _N, "worst_segment_id": _S,
                           "observed_at": NULLABLE_TIME,
                           "segments": {"type": "array", "items": {"type": "object"}}}}]},
        "warnings": {"type": "array", "items": {
            "type": "object", "required": ["warning_id", "headline", "severity"],
            "properties": {"warning_id": {"type": "string"}, "headline": {"type": "string"},
                           "headline_en": _S, "severity": {"type": "string"}}}},
        "warnings_more": {"type": "integer", "minimum": 0},
        "feed": {"type": "object", "required": ["bus", "timetable", "live_as_of"],
                 "properties": {"bus": {"enum": ["connected", "disconnected"]},
                                "timetable": {"enum": ["included", "none", "unavailable"]},
                                "live_as_of": NULLABLE_TIME}},
        "clock_rate": {"type": "number", "exclusiveMinimum": 0,
                       "description": "Service clock seconds per real second (a sign counts "
                                      "down between polls at this rate)"},
        "generated_at": TIME, "time_zone": {"const": "UTC"},
    },
}
"""The OpenAPI schema of the sign's answer."""
