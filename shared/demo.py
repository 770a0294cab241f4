"""The project's own generated demo region: a fictional city near Wuhan, as OSM XML and GTFS.

江城 (Jiangcheng Demo City) is a street grid centred on 114.30E, 30.55N, cut west-east by the
river 玉带江 (Yudai River). The river is crossed by the central avenue on 江城一桥 (First Bridge),
and by the expressway ring on 江城二桥 (Second Bridge, east) and through 江城隧道 (Jiangcheng
Tunnel, west). Arterials (primary), secondary, tertiary and residential streets alternate; some
residential streets are one-way; short service roads lead into blocks; the ring is a dual
carriageway motorway with diamond-like interchanges (motorway_link ramps, flyovers over the
inner carriageway). Three bus routes, each in two directions, cross the river on First Bridge;
they exist as OSM ``route=bus`` relations with ``highway=bus_stop`` platforms and as a GTFS
static feed whose stop ids are the OSM ids of those platform nodes.

The base map is in the OSM file too, so a map drawn from it has no blank gaps: the river's water
(``natural=water`` + ``water=river``, 400 m wide), green riverbanks and parks (``leisure=park``,
``landuse=grass|forest``), a lake, land use districts (``landuse=residential|commercial|
industrial``, 3 x 3 blocks each) and place labels (``place=city|suburb|neighbourhood`` with
``name`` and ``name:en``). They are added after everything else, so no road, stop or structure id
changes because of them.

Output is deterministic: the same ``size`` and ``seed`` give byte-identical files. ``size`` scales
the street grid so the directed segment count grows about linearly (the grid has
``round(22 * sqrt(size))`` lines each way, 200 m apart):

======  ===================  ===========
 size    directed segments    grid lines
======  ===================  ===========
 1        2,254               22 x 22
 4        8,622               44 x 44
 16       34,167              88 x 88
 48       100,895             152 x 152   (`SIZE_100K`, for benchmarks)
======  ===================  ===========

That is about 2,100 directed segments per unit of size (seed 7; the seed moves the counts by up
to a few percent). `segments_for_size` gives the exact count for any size and seed. The bus
routes stay in the centre of the city whatever the size, so the GTFS feed barely grows.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from xml.sax.saxutils import quoteattr

from shared.geo import LocalProjection, haversine_m
from shared.roadnet import OsmWay, RoadNetwork, RoadSegment, ShortestPaths, build_segments

__all__ = [
    "CENTER_LAT",
    "CENTER_LON",
    "CITY_NAME",
    "CITY_NAME_EN",
    "SIZE_100K",
    "TIMEZONE",
    "DemoBusPattern",
    "DemoBusRoute",
    "DemoRegion",
    "DemoStop",
    "DemoStructure",
    "generate_demo_region",
    "grid_lines_for_size",
    "segments_for_size",
    "size_for_segments",
]

CITY_NAME = "江城"
CITY_NAME_EN = "Jiangcheng Demo City"
CENTER_LON = 114.30
CENTER_LAT = 30.55
TIMEZONE = "Asia/Shanghai"
SIZE_100K = 48
"""Smallest documented size with at least 100,000 directed segments."""

OSM_FILENAME = "demo.osm"
GTFS_FILENAME = "demo_gtfs.zip"

_BLOCK_M = 200.0  # distance between parallel streets
_RIVER_GAP_M = 500.0  # extra distance between the two riverside streets
_JITTER_M = 5.0
_RING_OFFSET_M = 400.0  # ring centreline outside the outermost streets
_RING_RADIUS_M = 300.0
_RING_STATION_M = 250.0
_CARRIAGEWAY_M = 12.0  # half the distance between the ring's two carriageways
_RAMP_M = 300.0
_RAMP_INSET_M = 80.0  # the interchange's street end lies this far inside the inner carriageway
_INTERCHANGE_GAP_M = 800.0
_BRIDGE_HALF_M = 300.0
_TUNNEL_HALF_M = 400.0
_CHUNK_BLOCKS = 6
_RING_CHUNK = 10
_STOP_SPACING_M = 500.0
_STOP_REUSE_M = 300.0
_STOP_SIDE_M = 12.0
_BUS_SPEED_KMH = 25.0
_DWELL_S = 30
_HEADWAY_S = 600
_FIRST_DEPARTURE_S = 6 * 3600
_LAST_DEPARTURE_S = 23 * 3600
_FEED_START = "20250101"
_FEED_END = "20291231"
_OSM_TIMESTAMP = "2026-01-01T00:00:00Z"
_ZIP_TIME = (2026, 1, 1, 0, 0, 0)

_NS_AVENUES = (
    ("解放大道", "Jiefang Avenue"),
    ("中山大道", "Zhongshan Avenue"),
    ("建设大道", "Jianshe Avenue"),
    ("发展大道", "Fazhan Avenue"),
    ("友谊大道", "Youyi Avenue"),
    ("和平大道", "Heping Avenue"),
    ("民族大道", "Minzu Avenue"),
    ("光谷大道", "Guanggu Avenue"),
)
_EW_AVENUES = (
    ("珞喻路", "Luoyu Road"),
    ("武珞路", "Wuluo Road"),
    ("雄楚大道", "Xiongchu Avenue"),
    ("八一路", "Bayi Road"),
    ("青年路", "Qingnian Road"),
    ("黄浦大街", "Huangpu Street"),
    ("汉阳大道", "Hanyang Avenue"),
    ("徐东大街", "Xudong Street"),
)
_CLASS_TAGS: dict[str, dict[str, str]] = {
    "primary": {"lanes": "6", "maxspeed": "60"},
    "secondary": {"lanes": "4", "maxspeed": "50"},
    "tertiary": {"lanes": "2", "maxspeed": "40"},
    "residential": {},
}
# Bus routing prefers big roads the way a timetable planner would.
_BUS_COST = {"primary": 1.0, "secondary": 1.15, "tertiary": 1.4, "residential": 2.0}

_RIVER = ("玉带江", "Yudai River")
_FIRST_BRIDGE = ("江城一桥", "First Bridge")
_SECOND_BRIDGE = ("江城二桥", "Second Bridge")
_TUNNEL = ("江城隧道", "Jiangcheng Tunnel")
_RING = ("江城绕城高速", "Jiangcheng Ring Expressway", "S1")


# --- public result types ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoStructure:
    """A named bridge or tunnel: its OSM ways and the directed segments on it."""

    name: str
    name_en: str
    road_class: str
    way_ids: tuple[int, ...]
    segment_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoStop:
    """A bus stop on one route direction, with where it lies along the route."""

    stop_id: str  # GTFS stop_id, equal to the OSM node id of the bus_stop platform
    name: str
    name_en: str
    node_id: int
    lon: float
    lat: float
    segment_id: str  # the segment the bus drives past the stop on
    offset_m: float  # along that segment
    distance_m: float  # along the route from its first segment's start


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoBusPattern:
    """One direction of a bus route: the segments driven in order and the stops served."""

    direction_id: int
    shape_id: str
    relation_id: int
    headsign: str
    segment_ids: tuple[str, ...]
    stops: tuple[DemoStop, ...]
    length_m: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoBusRoute:
    """A bus route with its two directions (GTFS route, OSM route_master)."""

    route_id: str
    short_name: str
    long_name: str
    relation_id: int
    patterns: tuple[DemoBusPattern, ...]

    @property
    def segment_ids(self) -> tuple[str, ...]:
        """Segments of direction 0."""
        return self.patterns[0].segment_ids

    @property
    def stops(self) -> tuple[DemoStop, ...]:
        """Stops of direction 0."""
        return self.patterns[0].stops


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoRegion:
    """What `generate_demo_region` wrote and the facts scenarios need about it."""

    osm_path: Path
    gtfs_path: Path
    size: int
    seed: int
    name: str
    name_en: str
    center: tuple[float, float]
    bbox: tuple[float, float, float, float]
    timezone: str
    segment_count: int
    river_name: str
    river_name_en: str
    river_way_id: int
    bridges: tuple[DemoStructure, ...]
    tunnels: tuple[DemoStructure, ...]
    bus_routes: tuple[DemoBusRoute, ...]
    incident_segment_id: str


# --- sizing ----------------------------------------------------------------------------------


def grid_lines_for_size(size: int) -> int:
    """Streets per direction in the grid for a size (≥ 1)."""
    if size < 1:
        raise ValueError(f"demo size must be >= 1, got {size}")
    return round(22 * math.sqrt(size))


def segments_for_size(size: int, *, seed: int = 7) -> int:
    """Exact directed segment count of the demo road network for a size (builds the roads)."""
    city = _City(size, seed)
    city.build_roads()
    return len(build_segments(city.osm_ways()))


def size_for_segments(min_segments: int, *, seed: int = 7) -> int:
    """Smallest size whose network has at least min_segments directed segments."""
    size = max(1, math.ceil(min_segments / 2100))  # ~2,100 segments per size unit
    while size > 1 and segments_for_size(size - 1, seed=seed) >= min_segments:
        size -= 1
    while segments_for_size(size, seed=seed) < min_segments:
        size += 1
    return size


# --- geometry helpers --------------------------------------------------------------------------


class _RoundedRect:
    """A rounded rectangle parametrised by arc length s (counter-clockwise from the south-west).

    `point(s, off)` offsets along the outward normal, so both carriageways and ramps can be laid
    out in (s, offset) space and stay parallel through the corners.
    """

    def __init__(self, x0: float, y0: float, x1: float, y1: float, radius: float) -> None:
        self.x0, self.y0, self.x1, self.y1, self.r = x0, y0, x1, y1, radius
        self.lx = (x1 - x0) - 2 * radius
        self.ly = (y1 - y0) - 2 * radius
        self.arc = math.pi / 2 * radius
        # Start of each piece: south, SE arc, east, NE arc, north, NW arc, west, SW arc.
        lengths = [self.lx, self.arc, self.ly, self.arc, self.lx, self.arc, self.ly, self.arc]
        self.starts = [sum(lengths[:k]) for k in range(8)]
        self.perimeter = sum(lengths)

    def point(self, s: float, off: float) -> tuple[float, float]:
        s %= self.perimeter
        k = max(i for i in range(8) if self.starts[i] <= s)
        u = s - self.starts[k]
        x0, y0, x1, y1, r = self.x0, self.y0, self.x1, self.y1, self.r
        if k % 2 == 0:
            px, py, nx, ny = (
                (x0 + r + u, y0, 0.0, -1.0),
                (x1, y0 + r + u, 1.0, 0.0),
                (x1 - r - u, y1, 0.0, 1.0),
                (x0, y1 - r - u, -1.0, 0.0),
            )[k // 2]
        else:
            cx, cy, a0 = (
                (x1 - r, y0 + r, -math.pi / 2),
                (x1 - r, y1 - r, 0.0),
                (x0 + r, y1 - r, math.pi / 2),
                (x0 + r, y0 + r, math.pi),
            )[k // 2]
            theta = a0 + u / r
            nx, ny = math.cos(theta), math.sin(theta)
            px, py = cx + r * nx, cy + r * ny
        return px + off * nx, py + off * ny


def _cyclic_gap(a: float, b: float, period: float) -> float:
    d = abs(a - b) % period
    return min(d, period - d)


def _cn_number(n: int) -> str:
    """Chinese numerals for street numbering (经一路, 纬二十三路), 1-999."""
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    if n < 20:
        return "十" + (digits[n % 10] if n % 10 else "")
    if n < 100:
        return digits[n // 10] + "十" + (digits[n % 10] if n % 10 else "")
    rest = n % 100
    head = digits[n // 100] + "百"
    if rest == 0:
        return head
    if rest < 10:
        return head + "零" + digits[rest]
    return head + digits[rest // 10] + "十" + (digits[rest % 10] if rest % 10 else "")


# --- the city model ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    road_class: str
    name: str
    name_en: str
    oneway: str | None  # "yes", "-1" or None


class _City:
    """In-memory OSM model of the demo city (nodes, ways, relations) and its metadata."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.n = grid_lines_for_size(size)
        self.c = (self.n - 1) // 2  # the central avenue's column, crossing First Bridge
        self.r = self.n // 2 - 1  # the south riverside row; r + 1 is the north one
        self.rng = random.Random(seed)
        self.proj = LocalProjection(CENTER_LON, CENTER_LAT)
        self.node_lonlat: dict[int, tuple[float, float]] = {}
        self.node_tags: dict[int, dict[str, str]] = {}
        self.ways: list[tuple[int, list[int], dict[str, str]]] = []
        self.relations: list[tuple[int, list[tuple[str, int, str]], dict[str, str]]] = []
        self.way_line: dict[int, tuple[str, int]] = {}
        self.grid_pos: dict[int, tuple[int, int]] = {}
        self.grid: list[list[int]] = []
        self.cols: list[_Line] = []
        self.rows: list[_Line] = []
        self.structures: dict[str, list[int]] = {"first": [], "second": [], "tunnel": []}
        self.river_way_id = 0
        self.incident_way_id = 0
        self.incident_nodes = (0, 0)

    # - primitives -

    def add_node(self, x: float, y: float, tags: dict[str, str] | None = None) -> int:
        node_id = len(self.node_lonlat) + 1
        lon, lat = self.proj.to_lonlat(x, y)
        # Rounded to OSM's 1e-7 degree resolution so in-memory and re-read geometry agree.
        self.node_lonlat[node_id] = (round(lon, 7), round(lat, 7))
        if tags:
            self.node_tags[node_id] = tags
        return node_id

    def add_way(
        self, nodes: list[int], tags: dict[str, str], line: tuple[str, int] | None = None
    ) -> int:
        way_id = len(self.ways) + 1
        self.ways.append((way_id, nodes, tags))
        if line is not None:
            self.way_line[way_id] = line
        return way_id

    def add_relation(self, members: list[tuple[str, int, str]], tags: dict[str, str]) -> int:
        rel_id = len(self.relations) + 1
        self.relations.append((rel_id, members, tags))
        return rel_id

    def xy(self, node_id: int) -> tuple[float, float]:
        lon, lat = self.node_lonlat[node_id]
        return self.proj.to_xy(lon, lat)

    def osm_ways(self) -> Iterator[OsmWay]:
        for way_id, nodes, tags in self.ways:
            yield OsmWay(way_id, [(n, *self.node_lonlat[n]) for n in nodes], tags)

    # - layout -

    def _line_class(self, offset: int) -> str:
        return ("primary", "tertiary", "secondary", "residential")[offset % 4]

    def _make_lines(self) -> None:
        n, c, r = self.n, self.c, self.r
        col_classes = [self._line_class(i - c) for i in range(n)]
        row_classes = [
            "secondary"
            if j in (r, r + 1)
            else self._line_class((r - 2 - j) if j <= r else (j - r - 3))
            for j in range(n)
        ]
        self.cols = self._name_lines(col_classes, c, _NS_AVENUES, "经", "Jing")
        self.rows = self._name_lines(row_classes, r, _EW_AVENUES, "纬", "Wei")
        self.rows[r] = _Line("secondary", "南滨江路", "South Riverside Road", None)
        self.rows[r + 1] = _Line("secondary", "北滨江路", "North Riverside Road", None)

    def _name_lines(
        self,
        classes: list[str],
        centre: int,
        avenues: Sequence[tuple[str, str]],
        prefix: str,
        prefix_en: str,
    ) -> list[_Line]:
        # Famous names go to the arterials nearest the centre; the rest are numbered (经N路).
        order = sorted(
            (k for k, cls in enumerate(classes) if cls == "primary"),
            key=lambda k: (abs(k - centre), k),
        )
        avenue_name = {k: avenues[m] for m, k in enumerate(order) if m < len(avenues)}
        lines: list[_Line] = []
        residential_seen = 0
        for k, cls in enumerate(classes):
            number = k + 1
            if k in avenue_name:
                name, name_en = avenue_name[k]
            elif cls == "primary":
                name, name_en = f"{prefix}{_cn_number(number)}大道", f"{prefix_en} {number} Avenue"
            else:
                name, name_en = f"{prefix}{_cn_number(number)}路", f"{prefix_en} {number} Road"
            oneway = None
            if cls == "residential":
                # Every other residential street is one-way, alternating direction in pairs.
                if residential_seen % 2 == 1:
                    oneway = "yes" if residential_seen % 4 == 1 else "-1"
                residential_seen += 1
            lines.append(_Line(cls, name, name_en, oneway))
        return lines

    def line_tags(self, line: _Line) -> dict[str, str]:
        tags = {"highway": line.road_class, "name": line.name, "name:en": line.name_en}
        tags.update(_CLASS_TAGS[line.road_class])
        if line.oneway:
            tags["oneway"] = line.oneway
            tags["lanes"] = "1"
        return tags

    def build_roads(self) -> None:
        self._make_lines()
        n, r = self.n, self.r
        rng = self.rng
        xs = [(i - self.c) * _BLOCK_M for i in range(n)]
        ys = [
            (j - r - 0.5) * _BLOCK_M + (-_RIVER_GAP_M / 2 if j <= r else _RIVER_GAP_M / 2)
            for j in range(n)
        ]
        self.xs, self.ys = xs, ys
        self.grid = [[0] * n for _ in range(n)]
        for j in range(n):
            for i in range(n):
                node = self.add_node(
                    xs[i] + rng.uniform(-_JITTER_M, _JITTER_M),
                    ys[j] + rng.uniform(-_JITTER_M, _JITTER_M),
                )
                self.grid[i][j] = node
                self.grid_pos[node] = (i, j)
        # `side` sends driveways into the city: +1 is left of the street's direction (west for
        # northbound columns, north for eastbound rows), 0 lets the dice decide.
        for i in range(n):
            side = -1 if i == 0 else 1 if i == n - 1 else 0
            for part in (range(0, r + 1), range(r + 1, n)):
                self._street([self.grid[i][j] for j in part], self.cols[i], ("col", i), side)
            if i == self.c:
                self._first_bridge()
        for j in range(n):
            side = 1 if j in (0, r + 1) else -1 if j in (n - 1, r) else 0
            self._street([self.grid[i][j] for i in range(n)], self.rows[j], ("row", j), side)
        self._ring()
        self._river()

    def _street(
        self, intersections: list[int], line: _Line, key: tuple[str, int], side: int
    ) -> None:
        """Lay one street through its intersections, with shape nodes and service roads."""
        rng = self.rng
        tags = self.line_tags(line)
        blocks: list[list[int]] = []
        for a, b in pairwise(intersections):
            ax, ay = self.xy(a)
            bx, by = self.xy(b)
            length = math.hypot(bx - ax, by - ay)
            ux, uy = (bx - ax) / length, (by - ay) / length
            mx, my = (ax + bx) / 2, (ay + by) / 2
            roll = rng.random()
            extra: list[int] = []
            if roll < 0.15 and line.road_class in ("tertiary", "residential"):
                mid = self.add_node(mx, my)
                extra.append(mid)
                # A dead-end driveway into the block, away from the river and the city edge.
                s = side or (1 if rng.random() < 0.5 else -1)
                px, py = -uy * s, ux * s
                bend = rng.uniform(-8.0, 8.0)
                s1 = self.add_node(mx + px * 35 + ux * bend, my + py * 35 + uy * bend)
                s2 = self.add_node(mx + px * 70 + ux * bend, my + py * 70 + uy * bend)
                self.add_way([mid, s1, s2], {"highway": "service", "service": "driveway"})
            elif roll < 0.40:
                lateral = rng.uniform(-6.0, 6.0)
                extra.append(self.add_node(mx - uy * lateral, my + ux * lateral))
            blocks.append(extra)
        for start in range(0, len(blocks), _CHUNK_BLOCKS):
            nodes = [intersections[start]]
            for k in range(start, min(start + _CHUNK_BLOCKS, len(blocks))):
                nodes.extend(blocks[k])
                nodes.append(intersections[k + 1])
            self.add_way(nodes, dict(tags), key)

    def _first_bridge(self) -> None:
        c, r = self.c, self.r
        line = self.cols[c]
        south, north = self.grid[c][r], self.grid[c][r + 1]
        sx, sy = self.xy(south)
        nx, ny = self.xy(north)
        ab_s = self.add_node(sx, sy + 60.0)
        ab_n = self.add_node(nx, ny - 60.0)
        span = [
            self.add_node(sx + (nx - sx) * f, (sy + 60.0) + (ny - sy - 120.0) * f)
            for f in (1 / 3, 2 / 3)
        ]
        tags = self.line_tags(line)
        self.add_way([south, ab_s], dict(tags))
        bridge = dict(tags)
        name, name_en = _FIRST_BRIDGE
        bridge.update(
            {"name": name, "name:en": name_en, "bridge": "yes", "bridge:name": name, "layer": "1"}
        )
        self.structures["first"].append(self.add_way([ab_s, *span, ab_n], bridge))
        self.incident_way_id = self.add_way([ab_n, north], dict(tags))
        # Southbound onto the bridge: the queue of a bridge incident builds up here.
        self.incident_nodes = (north, ab_n)

    def add_places(self) -> None:
        """Parking lots, a weather station, a park, a hotel: points in blocks near the centre.

        Added last, so the ids of every road, stop and structure node stay what they were.
        Their live state (free spaces, weather) comes from outside: the collector's
        ``/api/v1/features/{kind}/{id}/state``.
        """
        c, r = self.c, self.r
        places = (
            (c - 1, r - 2, {"amenity": "parking", "name": "江城广场停车场",
                            "name:en": "Jiangcheng Square Car Park", "capacity": "300",
                            "parking": "underground", "access": "yes"}),
            (c + 2, r + 2, {"amenity": "parking", "name": "江滩公园停车场",
                            "name:en": "Riverside Park Car Park", "capacity": "120",
                            "parking": "surface", "access": "yes"}),
            (c + 1, r - 3, {"man_made": "monitoring_station", "monitoring:weather": "yes",
                            "name": "江城气象站", "name:en": "Jiangcheng Weather Station"}),
            (c + 2, r + 1, {"tourism": "attraction", "leisure": "park", "name": "江滩公园",
                            "name:en": "Riverside Park"}),
            (c - 2, r - 1, {"tourism": "hotel", "name": "江城大酒店",
                            "name:en": "Jiangcheng Grand Hotel", "stars": "4"}),
        )
        for i, j, tags in places:
            x = (self.xs[i] + self.xs[i + 1]) / 2
            y = (self.ys[j] + self.ys[j + 1]) / 2
            self.add_node(x, y, tags)

    def _closed_way(self, ring: Sequence[tuple[float, float]], tags: dict[str, str]) -> int:
        nodes = [self.add_node(x, y) for x, y in ring]
        return self.add_way([*nodes, nodes[0]], tags)

    def _block_box(self, i0: int, j0: int, i1: int, j1: int, inset: float = 15.0
                   ) -> list[tuple[float, float]]:
        """The ring of blocks i0..i1-1 x j0..j1-1 (grid cells), ``inset`` metres inside."""
        x0, x1 = self.xs[i0] + inset, self.xs[i1] - inset
        y0, y1 = self.ys[j0] + inset, self.ys[j1] - inset
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    def add_basemap(self) -> None:
        """Water, green, land use and place labels for the base map (see the module docstring).

        Added last (after :meth:`add_places`): the ids of everything else stay what they were.
        """
        n, c, r = self.n, self.c, self.r
        xs, ys = self.xs, self.ys
        # The river's water: 200 m either side of its centre line, as long as the line.
        x_start = xs[0] - _RING_OFFSET_M - 1500.0
        x_end = xs[-1] + _RING_OFFSET_M + 1500.0
        count = int((x_end - x_start) // 150.0) + 1
        along = [x_start + k * (x_end - x_start) / count for k in range(count + 1)]
        bank = [(x, self._river_y(x) + 200.0) for x in along]
        self._closed_way([*bank, *((x, self._river_y(x) - 200.0) for x in reversed(along))],
                         {"natural": "water", "water": "river", "name": _RIVER[0],
                          "name:en": _RIVER[1]})
        # Green banks between the water and the riverside roads.
        for sign, road_y in ((1, ys[r + 1]), (-1, ys[r])):
            edge = [(x, self._river_y(x) + sign * 215.0) for x in along if xs[0] <= x <= xs[-1]]
            inner = road_y - sign * 15.0
            self._closed_way([*edge, (edge[-1][0], inner), (edge[0][0], inner)],
                             {"landuse": "grass", "name": "滨江绿带",
                              "name:en": "Riverside Greenway"})
        # Parks: the riverside park's block (its point is already in add_places) and a forest.
        self._closed_way(self._block_box(c + 2, r + 1, c + 4, r + 3),
                         {"leisure": "park", "name": "江滩公园", "name:en": "Riverside Park"})
        self._closed_way(self._block_box(1, n - 4, 4, n - 1),
                         {"landuse": "forest", "name": "西山森林公园",
                          "name:en": "Xishan Forest Park"})
        self._closed_way(self._block_box(c - 4, r + 4, c - 2, r + 6, inset=40.0),
                         {"natural": "water", "water": "lake", "name": "月湖",
                          "name:en": "Moon Lake"})
        # Land use in districts of 3 x 3 blocks: commercial at the centre, industry in the
        # south-east, homes elsewhere; the parks and the lake keep their own blocks.
        taken = {(i, j) for i in range(c + 2, c + 4) for j in range(r + 1, r + 3)}
        taken |= {(i, j) for i in range(1, 4) for j in range(n - 4, n - 1)}
        taken |= {(i, j) for i in range(c - 4, c - 2) for j in range(r + 4, r + 6)}
        for i0 in range(0, n - 1, 3):
            for j0 in range(0, n - 1, 3):
                i1, j1 = min(i0 + 3, n - 1), min(j0 + 3, n - 1)
                if r in range(j0, j1) or any((i, j) in taken for i in range(i0, i1)
                                             for j in range(j0, j1)):
                    continue  # the river's rows, or a park's blocks
                di, dj = (i0 + i1) / 2 - c, (j0 + j1) / 2 - r
                use = ("commercial" if abs(di) <= 3 and abs(dj) <= 4
                       else "industrial" if di > n / 5 and dj < -n / 5 else "residential")
                self._closed_way(self._block_box(i0, j0, i1, j1, inset=20.0),
                                 {"landuse": use})
        # Place labels: the city, a suburb each side of the river, neighbourhoods.
        half = max(xs[-1], 600.0)
        labels = (
            (0.0, 900.0, "city", CITY_NAME, CITY_NAME_EN),
            (0.0, half * 0.55, "suburb", "江北", "Jiangbei"),
            (0.0, -half * 0.55, "suburb", "江南", "Jiangnan"),
            (-half * 0.5, half * 0.3, "neighbourhood", "西园", "Xiyuan"),
            (half * 0.5, half * 0.3, "neighbourhood", "东湖里", "Donghuli"),
            (-half * 0.5, -half * 0.3, "neighbourhood", "光明里", "Guangmingli"),
            (half * 0.5, -half * 0.3, "neighbourhood", "新华村", "Xinhuacun"),
        )
        for x, y, place, name, name_en in labels:
            self.add_node(x, y, {"place": place, "name": name, "name:en": name_en})

    def _river_y(self, x: float) -> float:
        phase = (self.seed % 97) / 97 * 2 * math.pi
        return 40.0 * math.sin(2 * math.pi * x / 3000.0 + phase)

    def _river(self) -> None:
        x_start = self.xs[0] - _RING_OFFSET_M - 1500.0
        x_end = self.xs[-1] + _RING_OFFSET_M + 1500.0
        count = int((x_end - x_start) // 150.0) + 1
        nodes = [
            self.add_node(x, self._river_y(x))
            for x in (x_start + k * (x_end - x_start) / count for k in range(count + 1))
        ]
        name, name_en = _RIVER
        self.river_way_id = self.add_way(
            nodes, {"waterway": "river", "name": name, "name:en": name_en}
        )

    def _ring(self) -> None:
        n, r = self.n, self.r
        xs, ys = self.xs, self.ys
        rect = _RoundedRect(
            xs[0] - _RING_OFFSET_M,
            ys[0] - _RING_OFFSET_M,
            xs[-1] + _RING_OFFSET_M,
            ys[-1] + _RING_OFFSET_M,
            _RING_RADIUS_M,
        )
        per = rect.perimeter
        st = rect.starts
        s_east = st[2] + (self._river_y(rect.x1) - rect.y0 - rect.r)
        s_west = st[6] + (rect.y1 - rect.r - self._river_y(rect.x0))

        # Interchanges where arterials meet the ring, spaced apart and away from the river.
        candidates: list[tuple[float, int, _Line]] = []
        for i, line in enumerate(self.cols):
            if line.road_class == "primary":
                candidates.append((st[0] + xs[i] - rect.x0 - rect.r, self.grid[i][0], line))
                candidates.append((st[4] + rect.x1 - rect.r - xs[i], self.grid[i][n - 1], line))
        for j, line in enumerate(self.rows):
            if line.road_class == "primary" and j not in (r, r + 1):
                candidates.append((st[2] + ys[j] - rect.y0 - rect.r, self.grid[n - 1][j], line))
                candidates.append((st[6] + rect.y1 - rect.r - ys[j], self.grid[0][j], line))
        interchanges: list[tuple[float, int, _Line]] = []
        for cand in sorted(candidates, key=lambda c: c[0]):
            s0 = cand[0]
            if min(_cyclic_gap(s0, s_east, per), _cyclic_gap(s0, s_west, per)) < _INTERCHANGE_GAP_M:
                continue
            if any(_cyclic_gap(s0, s1, per) < _INTERCHANGE_GAP_M for s1, _, _ in interchanges):
                continue
            interchanges.append(cand)

        specials = [s_east - _BRIDGE_HALF_M, s_east + _BRIDGE_HALF_M]
        specials += [s_west - _TUNNEL_HALF_M, s_west + _TUNNEL_HALF_M]
        for s0, _, _ in interchanges:
            specials += [(s0 - _RAMP_M) % per, (s0 + _RAMP_M) % per]
        m = math.ceil(per / _RING_STATION_M)
        regular = [k * per / m for k in range(m)]
        stations = sorted(
            specials + [s for s in regular if all(_cyclic_gap(s, x, per) > 40.0 for x in specials)]
        )
        d = _CARRIAGEWAY_M
        outer = [self.add_node(*rect.point(s, d)) for s in stations]
        inner = [self.add_node(*rect.point(s, -d)) for s in stations]
        station_index = {s: k for k, s in enumerate(stations)}

        def section(k: int) -> str:
            a = stations[k]
            b = stations[(k + 1) % len(stations)] + (per if k + 1 == len(stations) else 0.0)
            mid = ((a + b) / 2) % per
            if _cyclic_gap(mid, s_east, per) < _BRIDGE_HALF_M:
                return "second"
            if _cyclic_gap(mid, s_west, per) < _TUNNEL_HALF_M:
                return "tunnel"
            return "ring"

        name, name_en, ref = _RING
        base = {
            "highway": "motorway",
            "oneway": "yes",
            "lanes": "3",
            "maxspeed": "100",
            "name": name,
            "name:en": name_en,
            "ref": ref,
        }
        groups: list[tuple[str, list[int]]] = []
        for k in range(len(stations)):
            kind = section(k)
            if groups and groups[-1][0] == kind and len(groups[-1][1]) < _RING_CHUNK:
                groups[-1][1].append(k)
            else:
                groups.append((kind, [k]))
        total = len(stations)
        for kind, ks in groups:
            tags = dict(base)
            if kind == "second":
                b_name, b_en = _SECOND_BRIDGE
                tags.update(
                    {
                        "name": b_name,
                        "name:en": b_en,
                        "bridge": "yes",
                        "bridge:name": b_name,
                        "layer": "1",
                    }
                )
            elif kind == "tunnel":
                t_name, t_en = _TUNNEL
                tags.update(
                    {
                        "name": t_name,
                        "name:en": t_en,
                        "tunnel": "yes",
                        "tunnel:name": t_name,
                        "layer": "-1",
                        "maxspeed": "80",
                    }
                )
            idx = [*ks, (ks[-1] + 1) % total]
            # Right-hand traffic: counter-clockwise on the outer carriageway, clockwise inside.
            ccw = self.add_way([outer[k] for k in idx], dict(tags))
            cw = self.add_way([inner[k] for k in reversed(idx)], dict(tags))
            if kind != "ring":
                self.structures[kind].extend((ccw, cw))

        for s0, entry, line in interchanges:
            self._interchange(rect, s0, entry, line, outer, inner, station_index, per)

    def _interchange(
        self,
        rect: _RoundedRect,
        s0: float,
        entry: int,
        line: _Line,
        outer: list[int],
        inner: list[int],
        station_index: dict[float, int],
        per: float,
    ) -> None:
        d = _CARRIAGEWAY_M
        inset = d + _RAMP_INSET_M
        ex, ey = self.xy(entry)
        tx, ty = rect.point(s0, -inset)
        mid = self.add_node((ex + tx) / 2, (ey + ty) / 2)
        end = self.add_node(tx, ty)
        self.add_way([entry, mid, end], self.line_tags(line))
        link = {"highway": "motorway_link", "oneway": "yes", "lanes": "1", "maxspeed": "40"}
        flyover = {**link, "bridge": "yes", "layer": "1"}
        span = 2 * d + _RAMP_INSET_M

        def at(s_from: float, off_from: float, s_to: float, off_to: float, f: float) -> int:
            return self.add_node(
                *rect.point(s_from + (s_to - s_from) * f, off_from + (off_to - off_from) * f)
            )

        up = station_index[(s0 + _RAMP_M) % per]
        down = station_index[(s0 - _RAMP_M) % per]
        # On-ramp to the outer (counter-clockwise) carriageway, flying over the inner one.
        f1, f2 = (_RAMP_INSET_M - 10) / span, (_RAMP_INSET_M + 10) / span
        a = at(s0, -inset, s0 + _RAMP_M, d, 0.35)
        b1 = at(s0, -inset, s0 + _RAMP_M, d, f1)
        b2 = at(s0, -inset, s0 + _RAMP_M, d, f2)
        self.add_way([end, a, b1], dict(link))
        self.add_way([b1, b2], dict(flyover))
        self.add_way([b2, outer[up]], dict(link))
        # Off-ramp from the outer carriageway, flying over the inner one.
        g1, g2 = (2 * d - 10) / span, (2 * d + 10) / span
        b1 = at(s0 - _RAMP_M, d, s0, -inset, g1)
        b2 = at(s0 - _RAMP_M, d, s0, -inset, g2)
        a = at(s0 - _RAMP_M, d, s0, -inset, 0.65)
        self.add_way([outer[down], b1], dict(link))
        self.add_way([b1, b2], dict(flyover))
        self.add_way([b2, a, end], dict(link))
        # On- and off-ramp of the inner (clockwise) carriageway stay on the inside.
        a = at(s0, -inset, s0 - _RAMP_M, -d, 0.5)
        self.add_way([end, a, inner[down]], dict(link))
        a = at(s0 + _RAMP_M, -d, s0, -inset, 0.5)
        self.add_way([inner[up], a, end], dict(link))


# --- bus routes ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _StopSite:
    node_id: int
    name: str
    name_en: str
    offset_m: float


class _BusPlanner:
    """Routes buses through waypoints on the road network and places shared stops."""

    def __init__(self, city: _City, network: RoadNetwork) -> None:
        self.city = city
        self.net = network
        self.stops: dict[str, _StopSite] = {}  # by segment id
        self._turns: tuple[ShortestPaths, list[str], dict[str, int]] | None = None

    def _cost(self, seg: RoadSegment) -> float | None:
        factor = _BUS_COST.get(seg.road_class)
        return None if factor is None else seg.length_m * factor

    def _line_graph(self) -> tuple[ShortestPaths, list[str], dict[str, int]]:
        """Segments as nodes, arcs for every turn but the U-turn, costing the segment entered.

        Nodes are numbered in segment-id order so that equal costs are broken by segment id.
        """
        if self._turns is None:
            net = self.net
            ids = sorted(net.segments)
            index = {sid: i for i, sid in enumerate(ids)}
            arc_from: list[int] = []
            arc_to: list[int] = []
            arc_cost: list[float] = []
            for sid in ids:
                rev = net.find_reverse(sid)
                for nxt in net.successors(sid):
                    step = self._cost(net.get_segment(nxt))
                    if step is None or nxt == rev:
                        continue
                    arc_from.append(index[sid])
                    arc_to.append(index[nxt])
                    arc_cost.append(step)
            self._turns = (ShortestPaths(len(ids), arc_from, arc_to, arc_cost), ids, index)
        return self._turns

    def path(self, waypoints: Sequence[int]) -> list[str]:
        """Segments through the waypoints (graph nodes), never U-turning."""
        net = self.net
        turns, ids, index = self._line_graph()
        result: list[str] = []
        for start, target in pairwise(waypoints):
            first = net.successors(result[-1]) if result else net.out_segments(start)
            back = net.find_reverse(result[-1]) if result else None
            seeds = []
            for sid in first:
                cost = self._cost(net.get_segment(sid))
                if cost is not None and sid != back:
                    seeds.append((index[sid], cost))
            found = turns.first_reached(seeds, [index[s] for s in net.in_segments(target)])
            if found is None:
                raise RuntimeError(f"demo bus route has no path from node {start} to {target}")
            end, _, arcs = found
            first_node = turns.arc_from[arcs[0]] if arcs else end
            result.append(ids[first_node])
            result.extend(ids[turns.arc_to[a]] for a in arcs)
        return result

    def stop_for(self, seg: RoadSegment) -> _StopSite | None:
        """The stop beside this segment, creating it if the segment is on a named grid street."""
        if seg.segment_id in self.stops:
            return self.stops[seg.segment_id]
        city = self.city
        line = city.way_line.get(seg.way_id)
        if line is None or seg.length_m < 80.0:
            return None
        # Named after the block's lower-numbered intersection, so the stops on both sides of
        # a street share a name as they do in real Chinese bus networks.
        ends = [nd for nd in (seg.from_node, seg.to_node) if nd in city.grid_pos]
        if not ends:
            return None
        node = min(ends, key=lambda nd: city.grid_pos[nd])
        i, j = city.grid_pos[node]
        cross = city.rows[j] if line[0] == "col" else city.cols[i]
        road = city.cols[line[1]] if line[0] == "col" else city.rows[line[1]]
        offset = seg.length_m / 2
        lon, lat = _point_along(seg.coords, offset)
        x, y = city.proj.to_xy(lon, lat)
        hx, hy = _heading_at(city.proj, seg.coords, offset)
        name = f"{road.name}{cross.name}"
        name_en = f"{road.name_en} & {cross.name_en}"
        node_id = city.add_node(
            x + hy * _STOP_SIDE_M,  # right-hand side of the direction of travel
            y - hx * _STOP_SIDE_M,
            {
                "highway": "bus_stop",
                "public_transport": "platform",
                "bus": "yes",
                "name": name,
                "name:en": name_en,
            },
        )
        city.node_tags[node_id]["gtfs:stop_id"] = str(node_id)
        site = _StopSite(node_id, name, name_en, offset)
        self.stops[seg.segment_id] = site
        return site

    def place_stops(self, segment_ids: Sequence[str]) -> list[tuple[_StopSite, str, float]]:
        """(stop, segment id, distance along route) for one direction, first and last forced."""
        net = self.net
        placed: list[tuple[_StopSite, str, float]] = []
        along = 0.0
        last_at = -math.inf
        last = len(segment_ids) - 1
        for k, sid in enumerate(segment_ids):
            seg = net.get_segment(sid)
            at = along + seg.length_m / 2
            gap = at - last_at
            existing = sid in self.stops
            if k in (0, last) or (existing and gap >= _STOP_REUSE_M) or gap >= _STOP_SPACING_M:
                site = self.stop_for(seg)
                if site is not None and (k in (0, last) or gap >= _STOP_REUSE_M):
                    placed.append((site, sid, along + site.offset_m))
                    last_at = at
            along += seg.length_m
        if len(placed) < 2 or placed[0][1] != segment_ids[0] or placed[-1][1] != segment_ids[-1]:
            raise RuntimeError("demo bus route does not start and end at a stop")
        return placed


def _point_along(coords: Sequence[tuple[float, float]], offset_m: float) -> tuple[float, float]:
    remaining = offset_m
    for a, b in pairwise(coords):
        step = haversine_m(a[0], a[1], b[0], b[1])
        if remaining <= step and step > 0:
            f = remaining / step
            return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f
        remaining -= step
    return coords[-1]


def _heading_at(
    proj: LocalProjection, coords: Sequence[tuple[float, float]], offset_m: float
) -> tuple[float, float]:
    """Unit direction of travel (east, north) at an offset along a polyline."""
    remaining = offset_m
    pairs = list(pairwise(coords))
    for a, b in pairs:
        step = haversine_m(a[0], a[1], b[0], b[1])
        if remaining <= step or (a, b) == pairs[-1]:
            ax, ay = proj.to_xy(*a)
            bx, by = proj.to_xy(*b)
            length = math.hypot(bx - ax, by - ay) or 1.0
            return (bx - ax) / length, (by - ay) / length
        remaining -= step
    return 1.0, 0.0


@dataclass(slots=True)
class _PlannedPattern:
    direction_id: int
    segment_ids: list[str]
    stops: list[tuple[_StopSite, str, float]]
    relation_id: int = 0


@dataclass(slots=True)
class _PlannedRoute:
    route_id: str
    short_name: str
    colour: str
    patterns: list[_PlannedPattern]
    relation_id: int = 0


_NETWORK = ("江城公交", "Jiangcheng Bus")
_OPERATOR = "江城公交集团"


def _plan_routes(city: _City, planner: _BusPlanner) -> list[_PlannedRoute]:
    n, c, r = city.n, city.c, city.r

    def node(i: int, j: int) -> int:
        return city.grid[min(max(i, 0), n - 1)][min(max(j, 0), n - 1)]

    # Waypoints in grid coordinates: every route crosses the river on First Bridge.
    specs = [
        ("R1", "1", "E60012", [(c, r + 11), (c, r - 10)]),
        ("R2", "2", "0068B7", [(c - 8, r + 3), (c, r + 3), (c, r - 2), (c + 8, r - 2)]),
        (
            "R3",
            "3",
            "009944",
            [(c + 6, r + 7), (c + 6, r + 1), (c, r + 1), (c, r), (c - 6, r), (c - 6, r - 6)],
        ),
    ]
    routes: list[_PlannedRoute] = []
    for route_id, short, colour, points in specs:
        waypoints = [node(i, j) for i, j in points]
        patterns = []
        for direction, wps in ((0, waypoints), (1, waypoints[::-1])):
            segs = planner.path(wps)
            patterns.append(_PlannedPattern(direction, segs, planner.place_stops(segs)))
        routes.append(_PlannedRoute(route_id, short, colour, patterns))

    network_name, network_en = _NETWORK
    for route in routes:
        for pattern in route.patterns:
            first, last = pattern.stops[0][0], pattern.stops[-1][0]
            members: list[tuple[str, int, str]] = [
                ("node", site.node_id, "platform") for site, _, _ in pattern.stops
            ]
            way_ids: list[int] = []
            for sid in pattern.segment_ids:
                way_id = planner.net.get_segment(sid).way_id
                if not way_ids or way_ids[-1] != way_id:
                    way_ids.append(way_id)
            members += [("way", w, "") for w in way_ids]
            pattern.relation_id = city.add_relation(
                members,
                {
                    "type": "route",
                    "route": "bus",
                    "ref": route.short_name,
                    "name": f"{route.short_name}路：{first.name} → {last.name}",
                    "name:en": f"Bus {route.short_name}: {first.name_en} → {last.name_en}",
                    "from": first.name,
                    "to": last.name,
                    "network": network_name,
                    "network:en": network_en,
                    "operator": _OPERATOR,
                    "colour": f"#{route.colour}",
                    "public_transport:version": "2",
                    "gtfs:route_id": route.route_id,
                },
            )
        route.relation_id = city.add_relation(
            [("relation", p.relation_id, "") for p in route.patterns],
            {
                "type": "route_master",
                "route_master": "bus",
                "ref": route.short_name,
                "name": f"{route.short_name}路",
                "name:en": f"Bus {route.short_name}",
                "network": network_name,
                "operator": _OPERATOR,
                "colour": f"#{route.colour}",
                "gtfs:route_id": route.route_id,
            },
        )
    return routes


# --- writers ----------------------------------------------------------------------------------


def _tags_xml(tags: dict[str, str]) -> list[str]:
    return [f"    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in sorted(tags.items())]


def _osm_xml(city: _City) -> bytes:
    lons = [ll[0] for ll in city.node_lonlat.values()]
    lats = [ll[1] for ll in city.node_lonlat.values()]
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<osm version="0.6" generator="tti-demo size={city.size} seed={city.seed}">',
        f'  <bounds minlat="{min(lats):.7f}" minlon="{min(lons):.7f}" '
        f'maxlat="{max(lats):.7f}" maxlon="{max(lons):.7f}"/>',
    ]
    head = f'version="1" timestamp="{_OSM_TIMESTAMP}"'
    for node_id, (lon, lat) in city.node_lonlat.items():
        attrs = f'  <node id="{node_id}" {head} lat="{lat:.7f}" lon="{lon:.7f}"'
        tags = city.node_tags.get(node_id)
        if tags:
            out.append(attrs + ">")
            out.extend(_tags_xml(tags))
            out.append("  </node>")
        else:
            out.append(attrs + "/>")
    for way_id, nodes, tags in city.ways:
        out.append(f'  <way id="{way_id}" {head}>')
        out.extend(f'    <nd ref="{n}"/>' for n in nodes)
        out.extend(_tags_xml(tags))
        out.append("  </way>")
    for rel_id, members, tags in city.relations:
        out.append(f'  <relation id="{rel_id}" {head}>')
        out.extend(
            f'    <member type="{kind}" ref="{ref}" role={quoteattr(role)}/>'
            for kind, ref, role in members
        )
        out.extend(_tags_xml(tags))
        out.append("  </relation>")
    out.append("</osm>")
    return ("\n".join(out) + "\n").encode("utf-8")


def _csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _gtfs_time(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _gtfs_zip(city: _City, routes: list[_PlannedRoute], network: RoadNetwork) -> bytes:
    network_en = _NETWORK[1]
    agency_id = "JCBUS"
    stops: dict[int, _StopSite] = {}
    for route in routes:
        for pattern in route.patterns:
            for site, _, _ in pattern.stops:
                stops[site.node_id] = site
    stop_rows = []
    translations: list[tuple[object, ...]] = []
    for node_id in sorted(stops):
        site = stops[node_id]
        lon, lat = city.node_lonlat[node_id]
        stop_rows.append((str(node_id), site.name, f"{lat:.7f}", f"{lon:.7f}", 0))
        translations.append(("stops", "stop_name", "en", site.name_en, str(node_id), "", ""))

    route_rows = []
    trip_rows = []
    stop_time_rows: list[tuple[object, ...]] = []
    shape_rows: list[tuple[object, ...]] = []
    speed_ms = _BUS_SPEED_KMH / 3.6
    for route in routes:
        first, last = route.patterns[0].stops[0][0], route.patterns[0].stops[-1][0]
        long_name = f"{first.name} — {last.name}"
        route_rows.append(
            (route.route_id, agency_id, route.short_name, long_name, 3, route.colour, "FFFFFF")
        )
        translations.append(
            (
                "routes",
                "route_long_name",
                "en",
                f"{first.name_en} — {last.name_en}",
                route.route_id,
                "",
                "",
            )
        )
        for pattern in route.patterns:
            shape_id = f"{route.route_id}_{pattern.direction_id}"
            along = 0.0
            points: list[tuple[float, float]] = []
            for sid in pattern.segment_ids:
                coords = network.get_segment(sid).coords
                points.extend(coords if not points else coords[1:])
            for seq, (lon, lat) in enumerate(points):
                if seq:
                    prev = points[seq - 1]
                    along += haversine_m(prev[0], prev[1], lon, lat)
                shape_rows.append(
                    (shape_id, f"{lat:.7f}", f"{lon:.7f}", seq + 1, f"{along / 1000:.4f}")
                )
            # Run times: 25 km/h between stops plus a fixed dwell at intermediate stops.
            offsets: list[tuple[int, int]] = []
            clock = 0.0
            for k, (_, _, dist) in enumerate(pattern.stops):
                if k:
                    clock += (dist - pattern.stops[k - 1][2]) / speed_ms
                arrival = round(clock)
                departure = arrival + (_DWELL_S if 0 < k < len(pattern.stops) - 1 else 0)
                offsets.append((arrival, departure))
                clock = float(departure)
            headsign = pattern.stops[-1][0]
            translations.append(
                ("trips", "trip_headsign", "en", headsign.name_en, "", "", headsign.name)
            )
            for start in range(_FIRST_DEPARTURE_S, _LAST_DEPARTURE_S + 1, _HEADWAY_S):
                trip_id = f"{route.route_id}_{pattern.direction_id}_{_gtfs_time(start)[:5]}"
                trip_id = trip_id.replace(":", "")
                trip_rows.append(
                    (
                        route.route_id,
                        "DAILY",
                        trip_id,
                        headsign.name,
                        pattern.direction_id,
                        shape_id,
                    )
                )
                for seq, ((site, _, dist), (arr, dep)) in enumerate(
                    zip(pattern.stops, offsets, strict=True), start=1
                ):
                    stop_time_rows.append(
                        (
                            trip_id,
                            _gtfs_time(start + arr),
                            _gtfs_time(start + dep),
                            str(site.node_id),
                            seq,
                            f"{dist / 1000:.4f}",
                            1,
                        )
                    )
    # translations.txt repeats (table, field, language, record) keys only once per record.
    translations = list(dict.fromkeys(translations))
    files = {
        "agency.txt": _csv(
            ("agency_id", "agency_name", "agency_url", "agency_timezone", "agency_lang"),
            [(agency_id, _OPERATOR, "https://example.org/jiangcheng-bus", TIMEZONE, "zh")],
        ),
        "calendar.txt": _csv(
            (
                "service_id",
                "monday",
                "tuesday",
                "wednesday",
                "thursday",
                "friday",
                "saturday",
                "sunday",
                "start_date",
                "end_date",
            ),
            [("DAILY", 1, 1, 1, 1, 1, 1, 1, _FEED_START, _FEED_END)],
        ),
        "feed_info.txt": _csv(
            (
                "feed_publisher_name",
                "feed_publisher_url",
                "feed_lang",
                "default_lang",
                "feed_start_date",
                "feed_end_date",
                "feed_version",
                "feed_contact_url",
            ),
            [
                (
                    f"TTI {network_en} demo",
                    "https://example.org/tti-demo",
                    "zh",
                    "zh",
                    _FEED_START,
                    _FEED_END,
                    f"demo-size{city.size}-seed{city.seed}",
                    "https://example.org/tti-demo",
                )
            ],
        ),
        "routes.txt": _csv(
            (
                "route_id",
                "agency_id",
                "route_short_name",
                "route_long_name",
                "route_type",
                "route_color",
                "route_text_color",
            ),
            route_rows,
        ),
        "shapes.txt": _csv(
            (
                "shape_id",
                "shape_pt_lat",
                "shape_pt_lon",
                "shape_pt_sequence",
                "shape_dist_traveled",
            ),
            shape_rows,
        ),
        "stop_times.txt": _csv(
            (
                "trip_id",
                "arrival_time",
                "departure_time",
                "stop_id",
                "stop_sequence",
                "shape_dist_traveled",
                "timepoint",
            ),
            stop_time_rows,
        ),
        "stops.txt": _csv(
            ("stop_id", "stop_name", "stop_lat", "stop_lon", "location_type"), stop_rows
        ),
        "translations.txt": _csv(
            (
                "table_name",
                "field_name",
                "language",
                "translation",
                "record_id",
                "record_sub_id",
                "field_value",
            ),
            translations,
        ),
        "trips.txt": _csv(
            ("route_id", "service_id", "trip_id", "trip_headsign", "direction_id", "shape_id"),
            trip_rows,
        ),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            # Fixed timestamps and attributes: the archive must be byte-identical per input.
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_demo_region(out_dir: Path, *, size: int = 1, seed: int = 7) -> DemoRegion:
    """Write ``demo.osm`` and ``demo_gtfs.zip`` for the demo city into out_dir and describe them.

    Deterministic: the same size and seed give byte-identical files. See the module docstring
    for how size maps to the number of directed segments.
    """
    city = _City(size, seed)
    city.build_roads()
    network = RoadNetwork.from_segments(build_segments(city.osm_ways()))
    planner = _BusPlanner(city, network)
    routes = _plan_routes(city, planner)
    city.add_places()
    city.add_basemap()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    osm_path = out / OSM_FILENAME
    gtfs_path = out / GTFS_FILENAME
    _write_atomic(osm_path, _osm_xml(city))
    _write_atomic(gtfs_path, _gtfs_zip(city, routes, network))

    by_way: dict[int, list[str]] = {}
    for seg in network:
        by_way.setdefault(seg.way_id, []).append(seg.segment_id)

    def structure(key: str, names: tuple[str, str], road_class: str) -> DemoStructure:
        way_ids = tuple(city.structures[key])
        return DemoStructure(
            name=names[0],
            name_en=names[1],
            road_class=road_class,
            way_ids=way_ids,
            segment_ids=tuple(sid for w in way_ids for sid in by_way.get(w, [])),
        )

    north, ab_n = city.incident_nodes
    incident = f"{city.incident_way_id}:{north}:{ab_n}"
    network.get_segment(incident)  # fails loudly if the layout ever stops producing it

    bus_routes = []
    for route in routes:
        patterns = []
        for pattern in route.patterns:
            stops = tuple(
                DemoStop(
                    stop_id=str(site.node_id),
                    name=site.name,
                    name_en=site.name_en,
                    node_id=site.node_id,
                    lon=city.node_lonlat[site.node_id][0],
                    lat=city.node_lonlat[site.node_id][1],
                    segment_id=sid,
                    offset_m=site.offset_m,
                    distance_m=dist,
                )
                for site, sid, dist in pattern.stops
            )
            patterns.append(
                DemoBusPattern(
                    direction_id=pattern.direction_id,
                    shape_id=f"{route.route_id}_{pattern.direction_id}",
                    relation_id=pattern.relation_id,
                    headsign=stops[-1].name,
                    segment_ids=tuple(pattern.segment_ids),
                    stops=stops,
                    length_m=sum(network.get_segment(s).length_m for s in pattern.segment_ids),
                )
            )
        first, last = patterns[0].stops[0], patterns[0].stops[-1]
        bus_routes.append(
            DemoBusRoute(
                route_id=route.route_id,
                short_name=route.short_name,
                long_name=f"{first.name} — {last.name}",
                relation_id=route.relation_id,
                patterns=tuple(patterns),
            )
        )

    lons = [ll[0] for ll in city.node_lonlat.values()]
    lats = [ll[1] for ll in city.node_lonlat.values()]
    return DemoRegion(
        osm_path=osm_path,
        gtfs_path=gtfs_path,
        size=size,
        seed=seed,
        name=CITY_NAME,
        name_en=CITY_NAME_EN,
        center=(CENTER_LON, CENTER_LAT),
        bbox=(min(lons), min(lats), max(lons), max(lats)),
        timezone=TIMEZONE,
        segment_count=len(network),
        river_name=_RIVER[0],
        river_name_en=_RIVER[1],
        river_way_id=city.river_way_id,
        bridges=(
            structure("first", _FIRST_BRIDGE, "primary"),
            structure("second", _SECOND_BRIDGE, "motorway"),
        ),
        tunnels=(structure("tunnel", _TUNNEL, "motorway"),),
        bus_routes=tuple(bus_routes),
        incident_segment_id=incident,
    )
