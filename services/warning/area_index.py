"""The area traffic index: TPI (GB/T 33171, 0-10) of the network and of named areas of it.

An area's TPI is the mean of its measured segments' TPI weighted by vehicle kilometres (segment
length × vehicles seen in the window), its speed the space-mean speed over those segments
(Σ length / Σ length/speed), its congested share the share of measured length at level 4-5. Only
live values count: a profile is the usual state, not today's.

Areas (``area_id``):

- ``network``: every segment; ``group:expressway|arterial|minor``: the road groups;
  ``cell:<x>:<y>``: squares of ``CELL_M`` metres over the network's extent (0:0 at its
  south-west corner), a segment in the cell of its midpoint. All drawn from the road graph.
- ``bridge:w<way>`` and ``tunnel:w<way>``: each bridge and tunnel as a structure, from the
  segments' ``bridge``/``tunnel`` flags: ways of one name within ``STRUCTURE_GAP_M`` of each
  other are one structure (both carriageways of 长江大桥, both directions), an unnamed way is one
  of its own; the id is its smallest way id, as bigdata's bridge and tunnel features are named.
- ``district:<id>`` and ``corridor:<id>``: given as :class:`AreaSpec` — from a GeoJSON file
  (``TTI_INDEX_AREAS``, :func:`load_area_file`) or from the administrative boundaries of an OSM
  file (:func:`districts_from_osm`, ``district:r<relation>``). A segment is in a polygon when its
  midpoint is; a corridor lists road names, way ids or segment ids.

Membership is worked out once per network (:class:`AreaGrid`); :func:`compute_index` then runs
once per window in time linear in the live segments and their memberships.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

from services.warning.levels import road_group
from shared.errors import ConfigError
from shared.events import AreaIndex, SegmentSpeed
from shared.geo import EARTH_RADIUS_M, LocalProjection
from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN
from shared.roadnet import RoadNetwork, RoadSegment

log = logging.getLogger("tti.warning.area_index")

CELL_M = 2000.0
STRUCTURE_GAP_M = 300.0
"""Same-named bridge (tunnel) ways closer than this are one structure (bigdata's rule too)."""
DISTRICT_ADMIN_LEVELS: tuple[int, ...] = (5, 6, 7)
"""OSM ``admin_level`` values indexed as districts: in China 5 is the prefecture city (武汉市),
6 the district or county (洪山区), 7 the zones some cities map (东湖新技术开发区); 8, the
街道 and 乡镇, would be too many areas."""
AREA_KINDS = ("district", "corridor")
"""Kinds of area an :class:`AreaSpec` may be."""

_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_GROUP_NAMES = {"expressway": ("快速路", "Expressways"), "arterial": ("主干路", "Arterial roads"),
                "minor": ("次干路及支路", "Minor roads")}
_STRUCTURE_NAMES = {"bridge": ("桥梁", "Bridge"), "tunnel": ("隧道", "Tunnel")}
_ID_RE = re.compile(r"^[\w.-]{1,64}$")


class Graded(Protocol):
    """A held segment value: its last window and its grade."""

    last: SegmentSpeed
    grade: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class AreaSpec:
    """A district or corridor given from outside the road graph.

    Its segments: those on ``road_names`` (OSM ``name`` or ``name:en``) or ``way_ids`` — every
    segment when neither is given — whose midpoint lies in ``polygon`` when there is one, and
    the ``segment_ids`` listed, whatever they are.
    """

    area_id: str
    """``district:<id>`` or ``corridor:<id>``."""
    name: str
    name_en: str | None = None
    polygon: Any = None
    """A shapely (Multi)Polygon in WGS-84 lon/lat, or None."""
    road_names: frozenset[str] = frozenset()
    way_ids: frozenset[int] = frozenset()
    segment_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Where:
    length_m: float
    areas: tuple[str, ...]


class AreaGrid:
    """Which areas each segment belongs to, and each area's names, extent and size.

    ``areas`` adds districts and corridors; one whose rules select no segment of this network
    is left out and listed in ``empty``.
    """

    def __init__(self, network: RoadNetwork, *, cell_m: float = CELL_M,
                 areas: Sequence[AreaSpec] = ()) -> None:
        min_lon, min_lat, max_lon, max_lat = network.bbox()
        self.cell_lat = cell_m / _M_PER_DEG
        self.cell_lon = cell_m / (_M_PER_DEG * math.cos(math.radians((min_lat + max_lat) / 2)))
        self.origin = (min_lon, min_lat)
        self.where: dict[str, _Where] = {}
        self.names: dict[str, str] = {"network": "全路网"}
        self.names_en: dict[str, str | None] = {"network": "Whole network"}
        self.bbox: dict[str, tuple[float, float, float, float]] = {
            "network": (min_lon, min_lat, max_lon, max_lat)}
        self.sizes: dict[str, int] = defaultdict(int)
        self.empty: list[str] = []
        mids = [_midpoint(seg) for seg in network]
        extra = _extra_memberships(network, mids, areas, self)
        for seg, mid in zip(network, mids, strict=True):
            x = int((mid[0] - min_lon) // self.cell_lon)
            y = int((mid[1] - min_lat) // self.cell_lat)
            cell = f"cell:{x}:{y}"
            group = f"group:{road_group(seg.road_class)}"
            if cell not in self.names:
                self.names[cell], self.names_en[cell] = f"网格 {x},{y}", f"Cell {x},{y}"
                lon0, lat0 = min_lon + x * self.cell_lon, min_lat + y * self.cell_lat
                self.bbox[cell] = (round(lon0, 6), round(lat0, 6),
                                   round(lon0 + self.cell_lon, 6), round(lat0 + self.cell_lat, 6))
            if group not in self.names:
                self.names[group], self.names_en[group] = _GROUP_NAMES[group.split(":", 1)[1]]
            areas_of = ("network", group, cell, *extra.get(seg.segment_id, ()))
            self.where[seg.segment_id] = _Where(seg.length_m, areas_of)
            for a in areas_of:
                self.sizes[a] += 1

    def _add(self, area_id: str, name: str, name_en: str | None,
             bbox: tuple[float, float, float, float]) -> None:
        self.names[area_id] = name
        self.names_en[area_id] = name_en
        self.bbox[area_id] = tuple(round(v, 6) for v in bbox)  # type: ignore[assignment]


def _midpoint(seg: RoadSegment) -> tuple[float, float]:
    """The point halfway along the segment (not its middle vertex: a straight road has none)."""
    coords = seg.coords
    scale = math.cos(math.radians(coords[0][1]))
    steps = [math.hypot((b[0] - a[0]) * scale, b[1] - a[1]) for a, b in pairwise(coords)]
    half = sum(steps) / 2
    for (a, b), step in zip(pairwise(coords), steps, strict=True):
        if step >= half and step > 0:
            f = half / step
            return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f
        half -= step
    return coords[-1]


def _bounds(segs: Iterable[RoadSegment]) -> tuple[float, float, float, float]:
    lons = [c[0] for s in segs for c in s.coords]
    lats = [c[1] for s in segs for c in s.coords]
    return min(lons), min(lats), max(lons), max(lats)


def _extra_memberships(network: RoadNetwork, mids: Sequence[tuple[float, float]],
                       areas: Sequence[AreaSpec], grid: AreaGrid) -> dict[str, list[str]]:
    """Structures, districts and corridors of each segment (names and extents into ``grid``)."""
    extra: dict[str, list[str]] = defaultdict(list)
    for area_id, name, name_en, members in structures(network):
        grid._add(area_id, name, name_en, _bounds(members))
        for s in members:
            extra[s.segment_id].append(area_id)
    if not areas:
        return extra
    import numpy as np
    import shapely

    segs = list(network)
    mid_x = np.array([m[0] for m in mids])
    mid_y = np.array([m[1] for m in mids])
    for spec in areas:
        if spec.area_id in grid.names:
            log.warning("area %s given twice: the first kept", spec.area_id)
            continue
        chosen = np.ones(len(segs), dtype=bool)
        if spec.road_names or spec.way_ids:
            chosen = np.array([s.way_id in spec.way_ids or s.name in spec.road_names
                               or s.name_en in spec.road_names for s in segs], dtype=bool)
        elif spec.polygon is None:
            chosen[:] = False  # only the listed segment ids
        if spec.polygon is not None:
            shapely.prepare(spec.polygon)
            chosen &= shapely.contains_xy(spec.polygon, mid_x, mid_y)
        members = [s for s, inside in zip(segs, chosen.tolist(), strict=True) if inside]
        listed = {s.segment_id for s in members}
        members += [network.segments[sid] for sid in sorted(spec.segment_ids)
                    if sid in network and sid not in listed]
        if not members:
            grid.empty.append(spec.area_id)
            continue
        bbox = (spec.polygon.bounds if spec.polygon is not None and spec.area_id.startswith(
            "district:") else _bounds(members))
        grid._add(spec.area_id, spec.name, spec.name_en, bbox)
        for s in members:
            extra[s.segment_id].append(spec.area_id)
    return extra


def structures(network: RoadNetwork
               ) -> list[tuple[str, str, str | None, list[RoadSegment]]]:
    """Every bridge and tunnel of the network: ``(area_id, name, name_en, segments)``."""
    out: list[tuple[str, str, str | None, list[RoadSegment]]] = []
    for kind in ("bridge", "tunnel"):
        ways: dict[int, list[RoadSegment]] = defaultdict(list)
        for seg in network:
            if getattr(seg, kind):
                ways[seg.way_id].append(seg)
        by_name: dict[str, list[int]] = defaultdict(list)
        clusters: list[list[int]] = []
        for way_id in sorted(ways):
            name = ways[way_id][0].name
            if name:
                by_name[name].append(way_id)
            else:
                clusters.append([way_id])
        for way_ids in by_name.values():
            clusters.extend(_near_clusters([ways[w] for w in way_ids]))
        for cluster in clusters:
            members = [s for w in sorted(cluster) for s in ways[w]]
            first = members[0]
            zh, en = _STRUCTURE_NAMES[kind]
            name = first.name or f"{zh} w{min(cluster)}"
            name_en = next((s.name_en for s in members if s.name_en), None)
            if not first.name:
                name_en = f"{en} w{min(cluster)}"
            out.append((f"{kind}:w{min(cluster)}", name, name_en, members))
    return out


def _near_clusters(ways: list[list[RoadSegment]]) -> list[list[int]]:
    """Way ids grouped where their lines come within ``STRUCTURE_GAP_M`` (union-find)."""
    import shapely

    points = [c for segs in ways for s in segs for c in s.coords]
    proj = LocalProjection(sum(p[0] for p in points) / len(points),
                           sum(p[1] for p in points) / len(points))
    lines = [shapely.MultiLineString([[proj.to_xy(*c) for c in s.coords] for s in segs])
             for segs in ways]
    parent = list(range(len(ways)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(ways)):
        for j in range(i + 1, len(ways)):
            if find(i) != find(j) and lines[i].distance(lines[j]) <= STRUCTURE_GAP_M:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, list[int]] = defaultdict(list)
    for i, segs in enumerate(ways):
        groups[find(i)].append(segs[0].way_id)
    return list(groups.values())


# --- areas from outside the road graph ---------------------------------------------------------


def load_area_file(path: str | Path) -> tuple[list[AreaSpec], list[str]]:
    """Districts and corridors of a GeoJSON FeatureCollection, and the problems of bad ones.

    Each feature's ``properties``: ``kind`` (``district`` or ``corridor``), ``id`` (or the
    feature's ``id``: letters, digits, ``_ . -``), ``name``, optionally ``name_en``,
    ``road_names``, ``way_ids``, ``segment_ids``; its geometry a Polygon, a MultiPolygon or
    null. A feature that cannot be used is skipped with its reason; a file that cannot be read
    or is not a FeatureCollection is a ConfigError.
    """
    import shapely.geometry

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"TTI_INDEX_AREAS: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(
            data.get("features"), list):
        raise ConfigError(f"TTI_INDEX_AREAS: {path} is not a GeoJSON FeatureCollection")
    specs: list[AreaSpec] = []
    problems: list[str] = []
    for n, feature in enumerate(data["features"], 1):
        try:
            specs.append(_spec_of(feature, shapely.geometry.shape))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            problems.append(f"feature {n}: {exc}")
    return specs, problems


def _spec_of(feature: Any, shape: Any) -> AreaSpec:
    props = feature.get("properties") or {}
    kind = props.get("kind")
    if kind not in AREA_KINDS:
        raise ValueError(f"kind must be one of {', '.join(AREA_KINDS)}, not {kind!r}")
    ident = str(props.get("id", feature.get("id", "")))
    if not _ID_RE.match(ident):
        raise ValueError(f"id {ident!r} must be 1-64 letters, digits, '_', '.' or '-'")
    name = props.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind}:{ident} has no name")
    name_en = props.get("name_en")
    if name_en is not None and not isinstance(name_en, str):
        raise ValueError(f"{kind}:{ident}: name_en must be a string")
    polygon = None
    if feature.get("geometry") is not None:
        polygon = shape(feature["geometry"])
        if polygon.geom_type not in ("Polygon", "MultiPolygon") or not polygon.is_valid:
            raise ValueError(f"{kind}:{ident}: geometry must be a valid Polygon or MultiPolygon")
    road_names = _strings(props.get("road_names", []), "road_names")
    segment_ids = _strings(props.get("segment_ids", []), "segment_ids")
    way_ids = props.get("way_ids", [])
    if not isinstance(way_ids, list) or not all(isinstance(w, int) for w in way_ids):
        raise ValueError(f"{kind}:{ident}: way_ids must be a list of integers")
    if polygon is None and not (road_names or segment_ids or way_ids):
        raise ValueError(f"{kind}:{ident} has neither a polygon nor roads")
    return AreaSpec(area_id=f"{kind}:{ident}", name=name.strip(), name_en=name_en,
                    polygon=polygon, road_names=road_names, way_ids=frozenset(way_ids),
                    segment_ids=segment_ids)


def _strings(value: Any, field: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{field} must be a list of strings")
    return frozenset(value)


def districts_from_osm(path: str | Path, *,
                       admin_levels: Sequence[int] = DISTRICT_ADMIN_LEVELS) -> list[AreaSpec]:
    """The administrative areas of an OSM file whose boundary is complete in it.

    ``district:r<relation>`` (or ``w<way>`` for a closed boundary way), named by ``name`` and
    ``name:en``. An extract cuts most boundaries: those osmium cannot close into a polygon are
    left out rather than guessed.
    """
    import osmium
    import shapely

    wanted = {str(level) for level in admin_levels}
    wkb = osmium.geom.WKBFactory()
    out: dict[str, AreaSpec] = {}
    processor = (osmium.FileProcessor(str(path))
                 .with_areas(osmium.filter.TagFilter(("boundary", "administrative")))
                 .with_filter(osmium.filter.EntityFilter(osmium.osm.AREA)))
    try:
        for area in processor:
            if not isinstance(area, osmium.osm.Area):
                continue
            tags = {t.k: t.v for t in area.tags}
            if tags.get("boundary") != "administrative" or tags.get("admin_level") not in wanted:
                continue
            name = tags.get("name") or tags.get("name:zh")
            if not name:
                continue
            try:
                polygon = shapely.from_wkb(wkb.create_multipolygon(area))
            except RuntimeError:  # osmium could not build it after all
                continue
            ident = f"{'w' if area.from_way() else 'r'}{area.orig_id()}"
            out[ident] = AreaSpec(area_id=f"district:{ident}", name=name,
                                  name_en=tags.get("name:en"), polygon=polygon)
    except RuntimeError as exc:  # pyosmium's parse and I/O errors
        raise ConfigError(f"cannot read districts from OSM file {path}: {exc}") from exc
    return [out[k] for k in sorted(out)]


def load_areas(areas_file: str, osm: str) -> tuple[list[AreaSpec], list[str]]:
    """The configured areas (``TTI_INDEX_AREAS``) then the OSM districts (``TTI_OSM``).

    Never raises: what cannot be read is a problem in the list, and the index goes on
    without it.
    """
    specs: list[AreaSpec] = []
    problems: list[str] = []
    if areas_file:
        try:
            got, bad = load_area_file(areas_file)
            specs += got
            problems += [f"{areas_file}: {p}" for p in bad]
        except ConfigError as exc:
            problems.append(str(exc))
    if osm and Path(osm).is_file():
        try:
            specs += districts_from_osm(osm)
        except ConfigError as exc:
            problems.append(str(exc))
    return specs, problems


# --- the index ---------------------------------------------------------------------------------


def _level_of_tpi(tpi: float) -> int:
    return min(5, int(tpi // 2) + 1)


def compute_index(grid: AreaGrid, live: Mapping[str, Graded], now: datetime) -> list[AreaIndex]:
    """Every area's index from the live graded segments (an area none is measured in: no TPI)."""
    tpi_sum: dict[str, float] = defaultdict(float)
    weight: dict[str, float] = defaultdict(float)
    length: dict[str, float] = defaultdict(float)
    hours: dict[str, float] = defaultdict(float)
    congested: dict[str, float] = defaultdict(float)
    measured: dict[str, int] = defaultdict(int)
    for sid, held in live.items():
        where = grid.where.get(sid)
        g = held.grade
        if where is None or g.tpi is None or held.last.speed_kmh is None:
            continue
        w = where.length_m * max(1, held.last.sample_count)
        for area in where.areas:
            tpi_sum[area] += g.tpi * w
            weight[area] += w
            length[area] += where.length_m
            hours[area] += where.length_m / 1000.0 / max(0.5, held.last.speed_kmh)
            measured[area] += 1
            if (g.level or 0) >= 4:
                congested[area] += where.length_m
    out = []
    for area in sorted(grid.names):
        if weight[area] > 0:
            value = round(tpi_sum[area] / weight[area], 2)
            tpi: float | None = value
            level: int | None = _level_of_tpi(value)
            speed: float | None = round(length[area] / 1000.0 / hours[area], 1)
            share = round(congested[area] / length[area], 3)
        else:
            tpi = level = speed = None
            share = 0.0
        out.append(AreaIndex(
            area_id=area, name=grid.names[area], name_en=grid.names_en.get(area),
            observed_at=now, tpi=tpi, level=level,
            level_name=None if level is None else LEVEL_NAMES[level],
            level_name_en=None if level is None else LEVEL_NAMES_EN[level],
            speed_kmh=speed, congested_share=share, segment_count=grid.sizes[area],
            measured_count=measured[area], bbox=grid.bbox.get(area)))
    return out
