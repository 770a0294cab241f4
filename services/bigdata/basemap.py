"""The base map from OSM: what the import keeps of water, green, land use and places, and how it
is served (``GET /v1/basemap?bbox=&zoom=``) as GeoJSON simplified for the zoom.

========================  ===================================================================
layer / class             OSM tagging
========================  ===================================================================
``water``                 areas: ``natural=water`` (class: its ``water=*``, else ``water``),
                          ``waterway=riverbank|dock|basin``, ``landuse=reservoir|basin``;
                          lines: ``waterway=river|canal|stream``
``green``                 ``leisure=park|garden|nature_reserve|common``,
                          ``landuse=grass|forest|recreation_ground|meadow|village_green``,
                          ``natural=wood|scrub|grassland``
``landuse``               ``landuse=residential|commercial|retail|industrial``
``place``                 named ``place=city|town|suburb|quarter|village|neighbourhood|…``
                          nodes, ranked 1 (city) … 6 (locality)
========================  ===================================================================

Serving is bounded: shapes smaller than two pixels at the zoom are not read, the others are
clipped to the box (plus a margin) and simplified to half a pixel; places show from the zoom of
their rank; at most :data:`MAX_ITEMS` items and :data:`MAX_VERTICES` vertices per answer (the
biggest shapes first; ``truncated`` says when something was left out).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from services.bigdata.store import BASEMAP_LAYERS, BasemapItem, GeoStore
from services.bigdata.store._geo import M_PER_DEG
from shared.errors import BadRequest

MAX_ITEMS = 5000
MAX_VERTICES = 150_000
MAX_ZOOM = 20
ATTRIBUTION = "© OpenStreetMap contributors (ODbL)"

_WATER_AREAS = {"waterway": ("riverbank", "dock", "basin"), "landuse": ("reservoir", "basin")}
_GREEN = {"leisure": ("park", "garden", "nature_reserve", "common"),
          "landuse": ("grass", "forest", "recreation_ground", "meadow", "village_green"),
          "natural": ("wood", "scrub", "grassland")}
_LANDUSE = ("residential", "commercial", "retail", "industrial")
_WATER_LINES = ("river", "canal", "stream")
PLACE_RANK: Mapping[str, int] = {
    "city": 1, "town": 2, "suburb": 3, "borough": 3, "quarter": 4, "village": 4,
    "neighbourhood": 5, "hamlet": 6, "locality": 6, "isolated_dwelling": 6,
}
PLACE_MIN_ZOOM: Mapping[int, int] = {1: 0, 2: 9, 3: 11, 4: 12, 5: 13, 6: 14}
"""The zoom from which places of each rank are labelled."""
_PX_M_AT_Z0 = 2 * math.pi * 6378137.0 / 256  # Web Mercator metres per pixel at zoom 0


def area_class(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """(layer, class) of an OSM area's tags for the base map, or None."""
    if tags.get("natural") == "water":
        return "water", tags.get("water") or "water"
    for key, values in _WATER_AREAS.items():
        if tags.get(key) in values:
            return "water", tags[key]
    for key, values in _GREEN.items():
        if tags.get(key) in values:
            return "green", tags[key]
    if tags.get("landuse") in _LANDUSE:
        return "landuse", tags["landuse"]
    return None


def _names(tags: Mapping[str, str]) -> tuple[str | None, str | None]:
    name = tags.get("name") or tags.get("name:zh") or tags.get("name:zh-Hans") or None
    return name, tags.get("name:en") or None


def _metric(geom: BaseGeometry) -> BaseGeometry:
    """The geometry in metres of a local equirectangular frame (area and length only)."""
    lat = geom.centroid.y if not geom.is_empty else 0.0
    scale = np.array([M_PER_DEG * math.cos(math.radians(lat)), M_PER_DEG])
    return shapely.transform(geom, lambda xy: xy * scale)


@dataclass(slots=True)
class BasemapCollector:
    """Gathers base map items while :func:`~services.bigdata.osm_features.extract_features`
    reads the file: nodes, open ways, and the areas osmium assembles (closed ways waiting for
    theirs in ``pending``; a ring the assembler rejects is repaired, else dropped)."""

    items: list[BasemapItem] = field(default_factory=list)
    pending: dict[int, tuple[str, str, dict[str, str], list[tuple[float, float]]]] = field(
        default_factory=dict)
    dropped: int = 0

    def node(self, node_id: int, lon: float, lat: float, tags: Mapping[str, str]) -> None:
        rank = PLACE_RANK.get(tags.get("place", ""))
        name, name_en = _names(tags)
        if rank is None or not (name or name_en):
            return
        self.items.append(BasemapItem(layer="place", item_id=f"n{node_id}",
                                      cls=tags["place"], geometry=shapely.Point(lon, lat),
                                      name=name, name_en=name_en, rank=rank))

    def way(self, way_id: int, closed: bool, coords: list[tuple[float, float]],
            tags: Mapping[str, str]) -> None:
        if len(coords) < 2:
            return
        waterway = tags.get("waterway")
        if waterway in _WATER_LINES and not closed:
            self._add("water", f"w{way_id}", waterway, shapely.LineString(coords), tags)
            return
        kind = area_class(tags)
        if kind is not None and closed:
            self.pending[way_id] = (*kind, dict(tags), coords)

    def area(self, orig_id: int, from_way: bool, tags: Mapping[str, str], wkb_hex: str) -> None:
        if from_way and self.pending.pop(orig_id, None) is None:
            return
        kind = area_class(tags)
        if kind is None:
            return
        geom = shapely.from_wkb(wkb_hex)
        if geom.geom_type == "MultiPolygon" and len(geom.geoms) == 1:
            geom = geom.geoms[0]
        self._add(kind[0], f"{'w' if from_way else 'r'}{orig_id}", kind[1], geom, tags)

    def finish(self) -> list[BasemapItem]:
        for way_id, (layer, cls, tags, ring) in self.pending.items():
            self._add(layer, f"w{way_id}", cls, shapely.Polygon(ring), tags)
        self.pending.clear()
        return self.items

    def _add(self, layer: str, item_id: str, cls: str, geom: BaseGeometry,
             tags: Mapping[str, str]) -> None:
        if geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_valid:
            geom = shapely.make_valid(geom)
            if geom.geom_type == "GeometryCollection":
                polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
                geom = shapely.union_all(polys) if polys else shapely.Polygon()
            if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
                self.dropped += 1
                return
        metric = _metric(geom)
        size = math.sqrt(metric.area) if geom.geom_type.endswith("Polygon") else metric.length
        name, name_en = _names(tags)
        self.items.append(BasemapItem(layer=layer, item_id=item_id, cls=cls, geometry=geom,
                                      name=name, name_en=name_en, size_m=round(size, 1)))


# --- serving ----------------------------------------------------------------------------------


def parse_zoom(raw: str | None) -> int:
    """``zoom`` 0 … :data:`MAX_ZOOM` (Web Mercator levels); BadRequest otherwise."""
    if raw is None or not raw.isdigit() or int(raw) > MAX_ZOOM:
        raise BadRequest(f"zoom is required: an integer from 0 to {MAX_ZOOM}")
    return int(raw)


def parse_layers(raw: str | None) -> tuple[str, ...] | None:
    """``layers=water,green`` (None: all); BadRequest naming an unknown layer."""
    if raw is None:
        return None
    layers = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    unknown = [x for x in layers if x not in BASEMAP_LAYERS]
    if unknown or not layers:
        raise BadRequest(f"layers must name some of {', '.join(BASEMAP_LAYERS)}")
    return layers


def max_rank_at(zoom: int) -> int:
    """The highest place rank labelled at ``zoom``."""
    return max(r for r, z in PLACE_MIN_ZOOM.items() if z <= zoom)


def _round(coords: Any, digits: int) -> Any:
    if isinstance(coords[0], float | int):
        return [round(float(coords[0]), digits), round(float(coords[1]), digits)]
    return [_round(c, digits) for c in coords]


async def basemap_answer(store: GeoStore, bbox: tuple[float, float, float, float], zoom: int,
                         layers: Sequence[str] | None = None) -> dict[str, Any]:
    """The GeoJSON FeatureCollection of the base map in ``bbox`` drawn at ``zoom``.

    The clipping and simplification run in a worker thread, off the event loop.
    """
    lat = (bbox[1] + bbox[3]) / 2
    px_m = _PX_M_AT_Z0 * math.cos(math.radians(lat)) / 2 ** zoom
    items = await store.basemap_in_bbox(bbox, layers=layers, min_size_m=2 * px_m,
                                        max_rank=max_rank_at(zoom), limit=MAX_ITEMS + 1)
    return await asyncio.to_thread(render_basemap, items, bbox, zoom)


def render_basemap(items: Sequence[BasemapItem], bbox: tuple[float, float, float, float],
                   zoom: int) -> dict[str, Any]:
    """Items (in the store's order) clipped, simplified and bounded as a FeatureCollection."""
    lat = (bbox[1] + bbox[3]) / 2
    px_deg = 360.0 / (256 * 2 ** zoom)  # of longitude; of latitude it is ~cos(lat) of that
    truncated = len(items) > MAX_ITEMS
    margin = 8 * px_deg
    clip = (bbox[0] - margin, bbox[1] - margin, bbox[2] + margin, bbox[3] + margin)
    tolerance = 0.5 * px_deg * math.cos(math.radians(lat))
    digits = min(7, max(4, math.ceil(-math.log10(tolerance)) + 1))
    features: list[dict[str, Any]] = []
    vertices = 0
    for item in items[:MAX_ITEMS]:
        geom = item.geometry
        if item.layer != "place":
            geom = shapely.clip_by_rect(geom, *clip)
            if geom.is_empty:
                continue
            geom = geom.simplify(tolerance, preserve_topology=geom.geom_type.endswith("Polygon"))
            if geom.is_empty or geom.geom_type == "GeometryCollection":
                continue
        n = int(shapely.get_num_coordinates(geom))
        if vertices + n > MAX_VERTICES:
            truncated = True
            continue
        vertices += n
        shape = mapping(geom)
        features.append({
            "type": "Feature", "id": f"{item.layer}/{item.item_id}",
            "geometry": {"type": shape["type"],
                         "coordinates": _round(shape["coordinates"], digits)},
            "properties": {"layer": item.layer, "class": item.cls, "name": item.name,
                           "name_en": item.name_en, "rank": item.rank},
        })
    return {"type": "FeatureCollection", "features": features, "count": len(features),
            "zoom": zoom, "bbox": list(bbox), "truncated": truncated, "vertices": vertices,
            "attribution": ATTRIBUTION}
