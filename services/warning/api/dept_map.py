"""The console's map data, so the page needs no tile server: the roads and a warning's shapes.

- ``GET /v1/dept/region`` → the network's ``bbox`` and ``segment_count`` (the page fits its
  view to it).
- ``GET /v1/dept/map?bbox=minlon,minlat,maxlon,maxlat`` → a GeoJSON FeatureCollection of the
  roads in the box (one line per road piece: the two directions of a two-way road are drawn
  once), thinned to the bigger road classes when the box holds more than ``MAX_FEATURES``
  (``min_class`` says down to which class), capped (``truncated``). Without ``bbox``: the
  whole network.
- ``GET /v1/dept/warnings/{id}/map`` → a warning's shapes: its segments (``part: queue``), its
  detour (``part: detour``), its area (``part: area``, a polygon; a circle is a Point with
  ``radius_m``).

Every call needs the department credentials (401); a warning's shapes follow its visibility
(403). Coordinates are WGS-84 [lon, lat].
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.warning.api.dept import DEPT, authenticate
from services.warning.workflow import roles
from shared.codec import dumps
from shared.errors import Forbidden, NotFound, TransientError
from shared.events import Warning
from shared.params import parse_bbox
from shared.roadnet import RoadNetwork, RoadSegment

MAX_FEATURES = 4000
"""More roads than this in a box and the map keeps only the bigger classes."""

# Thinning tiers, finest first: a box is drawn with the first tier that fits MAX_FEATURES.
_TIERS: tuple[tuple[str, frozenset[str] | None], ...] = (
    ("all", None),
    ("tertiary", frozenset({"motorway", "trunk", "primary", "secondary", "tertiary",
                            "motorway_link", "trunk_link", "primary_link", "secondary_link"})),
    ("secondary", frozenset({"motorway", "trunk", "primary", "secondary", "motorway_link",
                             "trunk_link"})),
    ("primary", frozenset({"motorway", "trunk", "primary"})),
    ("trunk", frozenset({"motorway", "trunk"})),
)


def _json(data: object) -> web.Response:
    resp = web.Response(body=dumps(data), content_type="application/geo+json")
    resp.enable_compression()  # only when the client accepts it
    return resp


def _network(request: web.Request) -> RoadNetwork:
    network = request.app[DEPT].engine.network
    if network is None:
        raise TransientError("the road network is still loading; retry shortly",
                             code="network_loading")
    return network


def _line(coords: Any) -> list[list[float]]:
    return [[round(c[0], 6), round(c[1], 6)] for c in coords]


def _road(s: RoadSegment) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "LineString", "coordinates": _line(s.coords)},
            "properties": {"segment_id": s.segment_id, "name": s.name, "name_en": s.name_en,
                           "road_class": s.road_class}}


def _pieces(segments: list[RoadSegment]) -> list[RoadSegment]:
    """One segment per road piece: a two-way road's opposite direction draws the same line."""
    seen: set[tuple[int, int, int]] = set()
    out = []
    for s in segments:
        key = (s.way_id, min(s.from_node, s.to_node), max(s.from_node, s.to_node))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


async def _region(request: web.Request) -> web.Response:
    await authenticate(request)
    network = _network(request)
    return _json({"bbox": list(network.bbox()), "segment_count": len(network)})


async def _map(request: web.Request) -> web.Response:
    await authenticate(request)
    network = _network(request)
    bbox = parse_bbox(request.query.get("bbox")) or network.bbox()
    pieces = _pieces(network.in_bbox(*bbox))
    tier, chosen = _TIERS[-1][0], pieces
    for name, classes in _TIERS:
        kept = pieces if classes is None else [s for s in pieces if s.road_class in classes]
        tier, chosen = name, kept
        if len(kept) <= MAX_FEATURES:
            break
    truncated = len(chosen) > MAX_FEATURES
    chosen = chosen[:MAX_FEATURES]
    return _json({"type": "FeatureCollection", "bbox": list(bbox), "min_class": tier,
                  "count": len(chosen), "in_box": len(pieces), "truncated": truncated,
                  "features": [_road(s) for s in chosen]})


async def _find(request: web.Request, warning_id: str) -> Warning:
    ctx = request.app[DEPT]
    w = ctx.engine.find_warning(warning_id) or ctx.engine.silenced.get(warning_id) or \
        await ctx.store.find_warning(warning_id)
    if w is None:
        raise NotFound(f"no warning {warning_id!r}")
    return w


async def _warning_map(request: web.Request) -> web.Response:
    p = await authenticate(request)
    w = await _find(request, request.match_info["warning_id"])
    if not roles.sees(p.role, w.kind):
        raise Forbidden(f"role {p.role} does not see {w.kind.value} warnings")
    network = request.app[DEPT].engine.network
    features: list[dict[str, Any]] = []
    unknown: list[str] = []
    for sid in w.segment_ids:
        if network is not None and sid in network:
            feature = _road(network.get_segment(sid))
            feature["properties"]["part"] = "queue"
            features.append(feature)
        else:
            unknown.append(sid)
    if w.detour is not None and len(w.detour.coords) >= 2:
        features.append({"type": "Feature",
                         "geometry": {"type": "LineString", "coordinates": _line(w.detour.coords)},
                         "properties": {"part": "detour",
                                        "travel_time_s": w.detour.travel_time_s,
                                        "usual_travel_time_s": w.detour.usual_travel_time_s,
                                        "length_m": w.detour.length_m}})
    if w.area is not None and len(w.area.polygon) >= 4:
        features.append({"type": "Feature",
                         "geometry": {"type": "Polygon", "coordinates": [_line(w.area.polygon)]},
                         "properties": {"part": "area", "description": w.area.description}})
    if w.area is not None and w.area.circle is not None:
        lon, lat, radius = w.area.circle
        features.append({"type": "Feature",
                         "geometry": {"type": "Point", "coordinates": [lon, lat]},
                         "properties": {"part": "area", "radius_m": radius,
                                        "description": w.area.description}})
    return _json({"type": "FeatureCollection", "warning_id": w.warning_id,
                  "version": w.version, "features": features, "unknown_segments": unknown})


def add_map_routes(app: web.Application) -> None:
    """Register ``/v1/dept/region``, ``/v1/dept/map`` and ``/v1/dept/warnings/{id}/map``."""
    app.router.add_get("/v1/dept/region", _region)
    app.router.add_get("/v1/dept/map", _map)
    app.router.add_get("/v1/dept/warnings/{warning_id}/map", _warning_map)
