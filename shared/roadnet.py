"""The road network every service uses: directed segments, a graph, a spatial index, routing.

A segment is a directed piece of an OSM way between two graph nodes, with the id
``"<osm_way_id>:<from_node>:<to_node>"`` (stable across re-imports of the same file). A graph
node is a way endpoint or a node shared by two or more routable ways. A two-way way yields two
segments per piece, ``way:A:B`` and ``way:B:A``.

`RoadNetwork` is immutable once built (the one exception is an internal routing cache guarded by
a lock), so a service can share one instance between readers and swap in a new one on re-import.
The spatial index is a uniform grid over sub-edges (consecutive coordinate pairs) queried with
vectorized numpy in a local metric frame: no native spatial library is needed.
"""

from __future__ import annotations

import heapq
import math
import re
import threading
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from shared.errors import TtiError
from shared.geo import EARTH_RADIUS_M, haversine_m

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "DEFAULT_FREE_FLOW_KMH",
    "ROUTABLE_HIGHWAYS",
    "Candidate",
    "OsmWay",
    "RoadNetwork",
    "RoadNetworkError",
    "RoadSegment",
    "UnknownSegmentError",
    "build_segments",
    "make_segment_id",
    "parse_maxspeed",
    "parse_segment_id",
]


class RoadNetworkError(TtiError, ValueError):
    """A road network could not be read or built, or a segment id is unknown."""

    code = "road_network"
    http_status = 400


class UnknownSegmentError(RoadNetworkError, KeyError):
    """A segment id (or graph node) that the network does not have; also a KeyError."""

    code = "unknown_segment"
    http_status = 404

    def __str__(self) -> str:
        # KeyError would repr() the message; keep it readable like other RoadNetworkErrors.
        return str(self.args[0]) if self.args else ""


ROUTABLE_HIGHWAYS: frozenset[str] = frozenset(
    {
        "motorway",
        "motorway_link",
        "trunk",
        "trunk_link",
        "primary",
        "primary_link",
        "secondary",
        "secondary_link",
        "tertiary",
        "tertiary_link",
        "unclassified",
        "residential",
        "living_street",
        "service",
    }
)
"""OSM ``highway`` values that motor vehicles drive on (footways, paths, steps, platforms,
construction and proposed roads are left out)."""

DEFAULT_FREE_FLOW_KMH: Mapping[str, float] = MappingProxyType(
    {
        "motorway": 100.0,
        "motorway_link": 50.0,
        "trunk": 80.0,
        "trunk_link": 40.0,
        "primary": 60.0,
        "primary_link": 40.0,
        "secondary": 50.0,
        "secondary_link": 30.0,
        "tertiary": 40.0,
        "tertiary_link": 30.0,
        "unclassified": 30.0,
        "residential": 30.0,
        "living_street": 15.0,
        "service": 20.0,
    }
)
"""Free-flow speed when a road has no usable ``maxspeed``: typical for Chinese cities."""

_FALLBACK_FREE_FLOW_KMH = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RoadSegment:
    """A directed road piece between two graph nodes, with its OSM attributes."""

    segment_id: str
    way_id: int
    from_node: int
    to_node: int
    road_class: str
    name: str | None
    name_en: str | None
    ref: str | None
    lanes: int | None
    speed_limit_kmh: float | None
    oneway: bool
    bridge: bool
    tunnel: bool
    coords: tuple[tuple[float, float], ...]
    length_m: float
    free_flow_kmh: float


class Candidate(NamedTuple):
    """A segment near a query point: where the point projects onto it and how far away it is.

    ``offset_m`` is the distance along the segment from its start to the projected point
    (``lon``, ``lat``); ``bearing_deg`` the segment's direction there. (A NamedTuple because
    map matching creates millions of these.)
    """

    segment_id: str
    distance_m: float
    offset_m: float
    lon: float
    lat: float
    bearing_deg: float


class OsmWay(NamedTuple):
    """One OSM way as importers hand it over: id, ``(node_id, lon, lat)`` in order, tags."""

    way_id: int
    nodes: Sequence[tuple[int, float, float]]
    tags: Mapping[str, str]


def make_segment_id(way_id: int, from_node: int, to_node: int) -> str:
    """The segment id contract: ``"<osm_way_id>:<from_node>:<to_node>"``."""
    return f"{way_id}:{from_node}:{to_node}"


def parse_segment_id(segment_id: str) -> tuple[int, int, int]:
    """Split a segment id into ``(way_id, from_node, to_node)``; RoadNetworkError if malformed."""
    parts = segment_id.split(":")
    if len(parts) != 3:
        raise RoadNetworkError(f"malformed segment id {segment_id!r}: expected way:from:to")
    try:
        way_id, from_node, to_node = (int(p) for p in parts)
    except ValueError:
        raise RoadNetworkError(
            f"malformed segment id {segment_id!r}: ids must be integers"
        ) from None
    return way_id, from_node, to_node


# --- OSM tag interpretation -----------------------------------------------------------------

_ONEWAY_FORWARD = frozenset({"yes", "1", "true"})
_ONEWAY_REVERSE = frozenset({"-1", "reverse"})
_ONEWAY_NO = frozenset({"no", "0", "false"})
# Zone codes with one statutory number. Others (CN:urban, CN:rural) depend on lane layout under
# the Road Traffic Safety Law regulations (art. 45), so they stay unknown rather than guessed.
_MAXSPEED_ZONES: Mapping[str, float] = MappingProxyType({"cn:motorway": 120.0})
_MAXSPEED_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(km/h|kmh|kph|mph|knots)?$")
_UNIT_TO_KMH = {None: 1.0, "km/h": 1.0, "kmh": 1.0, "kph": 1.0, "mph": 1.609344, "knots": 1.852}


def parse_maxspeed(value: str | None) -> float | None:
    """Parse an OSM ``maxspeed`` value to km/h (``"60"``, ``"40 mph"``, ``"CN:motorway"``).

    Returns None for missing, symbolic (``none``, ``signals``, ``walk``) or unknown values.
    """
    if not value:
        return None
    text = value.split(";")[0].strip().lower()
    if text in _MAXSPEED_ZONES:
        return _MAXSPEED_ZONES[text]
    match = _MAXSPEED_RE.match(text)
    if match is None:
        return None
    speed = float(match.group(1)) * _UNIT_TO_KMH[match.group(2)]
    return speed if speed > 0 else None


def _parse_lanes(value: str | None) -> int | None:
    if not value:
        return None
    try:
        lanes = int(value.split(";")[0].strip())
    except ValueError:
        return None
    return lanes if lanes > 0 else None


def _travel_directions(tags: Mapping[str, str]) -> tuple[bool, bool]:
    """(forward allowed, backward allowed) along the way's node order."""
    oneway = tags.get("oneway", "").strip().lower()
    if oneway in _ONEWAY_FORWARD:
        return True, False
    if oneway in _ONEWAY_REVERSE:
        return False, True
    if oneway in _ONEWAY_NO:
        return True, True
    highway = tags.get("highway", "")
    if (
        highway == "motorway"
        or highway.endswith("_link")
        or tags.get("junction") in ("roundabout", "circular")
    ):
        return True, False
    return True, True


def _is_routable(tags: Mapping[str, str]) -> bool:
    return tags.get("highway") in ROUTABLE_HIGHWAYS and tags.get("area") != "yes"


@dataclass(frozen=True, slots=True)
class _DirectionAttrs:
    lanes: int | None
    speed_limit_kmh: float | None
    free_flow_kmh: float


def _direction_attrs(tags: Mapping[str, str], *, forward: bool, oneway: bool) -> _DirectionAttrs:
    suffix = ":forward" if forward else ":backward"
    lanes = _parse_lanes(tags.get("lanes" + suffix))
    if lanes is None:
        total = _parse_lanes(tags.get("lanes"))
        if total is not None:
            # A two-way total is split evenly, rounding up so a 3-lane road is not 1 per side.
            lanes = total if oneway else (total + 1) // 2
    speed = parse_maxspeed(tags.get("maxspeed" + suffix)) or parse_maxspeed(tags.get("maxspeed"))
    road_class = tags.get("highway", "")
    free_flow = speed or DEFAULT_FREE_FLOW_KMH.get(road_class, _FALLBACK_FREE_FLOW_KMH)
    return _DirectionAttrs(lanes, speed, free_flow)


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("no", "false", "0", "")


def _polyline_length_m(coords: Sequence[tuple[float, float]]) -> float:
    return sum(haversine_m(a[0], a[1], b[0], b[1]) for a, b in pairwise(coords))


# --- splitting ways into segments ------------------------------------------------------------


def _split_pieces(
    node_ids: Sequence[int],
    is_graph_node: Sequence[bool],
    seen_pairs: set[tuple[int, int]],
    *,
    two_way: bool,
) -> Iterator[tuple[int, int]]:
    """Index ranges (i, j) of pieces between graph nodes, with ids unique within the way.

    A closed way or one visiting two graph nodes twice would give two pieces with the same
    (from, to) pair, or a two-way piece whose reverse is another piece, and hence repeated
    segment ids; such a piece is split again at its middle node, which then acts as a graph
    node. A piece with no middle node left is a duplicate and dropped.
    """
    cuts = [i for i, flag in enumerate(is_graph_node) if flag]
    pending = [(a, b) for a, b in pairwise(cuts)]
    pending.reverse()
    while pending:
        i, j = pending.pop()
        a, b = node_ids[i], node_ids[j]
        key = (b, a) if two_way and b < a else (a, b)
        if a == b or key in seen_pairs:
            if j - i >= 2:
                mid = (i + j) // 2
                pending.append((mid, j))
                pending.append((i, mid))
            continue
        seen_pairs.add(key)
        yield i, j


def build_segments(ways: Iterable[OsmWay]) -> list[RoadSegment]:
    """Split routable OSM ways at graph nodes into directed segments (both ways if two-way).

    Non-routable ways are ignored. Consecutive repeated nodes are collapsed. The order of the
    result follows the order of the input, so the same input gives the same list.
    """
    routable: list[OsmWay] = []
    for way in ways:
        if not _is_routable(way.tags):
            continue
        nodes = [n for k, n in enumerate(way.nodes) if k == 0 or n[0] != way.nodes[k - 1][0]]
        if len(nodes) >= 2:
            routable.append(OsmWay(way.way_id, nodes, way.tags))

    use_count: Counter[int] = Counter()
    for way in routable:
        use_count.update(n[0] for n in way.nodes)

    segments: list[RoadSegment] = []
    seen_by_way: dict[int, set[tuple[int, int]]] = {}
    for way in routable:
        tags = way.tags
        node_ids = [n[0] for n in way.nodes]
        last = len(node_ids) - 1
        is_graph_node = [k in (0, last) or use_count[nid] >= 2 for k, nid in enumerate(node_ids)]
        forward_ok, backward_ok = _travel_directions(tags)
        oneway = not (forward_ok and backward_ok)
        fwd = _direction_attrs(tags, forward=True, oneway=oneway)
        bwd = _direction_attrs(tags, forward=False, oneway=oneway)
        road_class = tags["highway"]
        name = tags.get("name") or tags.get("name:zh") or tags.get("name:zh-Hans") or None
        name_en = tags.get("name:en") or None
        ref = tags.get("ref") or None
        bridge = _flag(tags.get("bridge"))
        tunnel = _flag(tags.get("tunnel"))
        seen = seen_by_way.setdefault(way.way_id, set())
        for i, j in _split_pieces(node_ids, is_graph_node, seen, two_way=not oneway):
            coords = tuple((n[1], n[2]) for n in way.nodes[i : j + 1])
            length_m = _polyline_length_m(coords)
            directions: list[tuple[bool, _DirectionAttrs]] = []
            if forward_ok:
                directions.append((True, fwd))
            if backward_ok:
                directions.append((False, bwd))
            for forward, attrs in directions:
                a, b = (node_ids[i], node_ids[j]) if forward else (node_ids[j], node_ids[i])
                segments.append(
                    RoadSegment(
                        segment_id=make_segment_id(way.way_id, a, b),
                        way_id=way.way_id,
                        from_node=a,
                        to_node=b,
                        road_class=road_class,
                        name=name,
                        name_en=name_en,
                        ref=ref,
                        lanes=attrs.lanes,
                        speed_limit_kmh=attrs.speed_limit_kmh,
                        oneway=oneway,
                        bridge=bridge,
                        tunnel=tunnel,
                        coords=coords if forward else coords[::-1],
                        length_m=length_m,
                        free_flow_kmh=attrs.free_flow_kmh,
                    )
                )
    return segments


def _read_osm_ways(path: Path) -> list[OsmWay]:
    import osmium  # imported here so modules that only use segments need no native extension

    ways: list[OsmWay] = []
    try:
        processor = (
            osmium.FileProcessor(str(path), osmium.osm.NODE | osmium.osm.WAY)
            .with_locations()
            .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY))
            .with_filter(osmium.filter.KeyFilter("highway"))
        )
        for way in processor:
            if not isinstance(way, osmium.osm.Way):
                continue
            tags = {t.k: t.v for t in way.tags}
            if not _is_routable(tags):
                continue
            # A way whose nodes lie outside an extract has no locations there: keep each run of
            # located nodes as its own piece rather than joining across the gap.
            run: list[tuple[int, float, float]] = []
            for ref in way.nodes:
                if ref.location.valid():
                    run.append((ref.ref, ref.location.lon, ref.location.lat))
                    continue
                if len(run) >= 2:
                    ways.append(OsmWay(way.id, run, tags))
                run = []
            if len(run) >= 2:
                ways.append(OsmWay(way.id, run, tags))
    except RuntimeError as exc:  # pyosmium reports parse and I/O errors as RuntimeError
        raise RoadNetworkError(f"cannot read OSM file {path}: {exc}") from exc
    return ways


# --- spatial index ---------------------------------------------------------------------------

_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_CELL_M = 150.0
# Long sub-edges are registered piecewise so a diagonal motorway does not claim its whole bbox.
_PIECE_M = _CELL_M / 3.0
_PY_ROWS_MAX = 96


def _hit_key(hit: tuple[float, float, list[float]]) -> tuple[float, float]:
    # Distance, then segment index, so ties (a two-way road's directions) order stably.
    return hit[0], hit[2][4]


def _haversine_np(
    lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray
) -> np.ndarray:
    phi1 = np.radians(lat1)
    phi2 = np.radians(lat2)
    h = (
        np.sin((phi2 - phi1) / 2.0) ** 2
        + np.cos(phi1) * np.cos(phi2) * np.sin(np.radians(lon2 - lon1) / 2.0) ** 2
    )
    return np.asarray(2.0 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(h))))


def _bearing_np(
    lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray
) -> np.ndarray:
    phi1 = np.radians(lat1)
    phi2 = np.radians(lat2)
    dlmb = np.radians(lon2 - lon1)
    y = np.sin(dlmb) * np.cos(phi2)
    x = np.cos(phi1) * np.sin(phi2) - np.sin(phi1) * np.cos(phi2) * np.cos(dlmb)
    return np.asarray(np.degrees(np.arctan2(y, x)) % 360.0)


class _GridIndex:
    """Uniform lon/lat grid → contiguous blocks of sub-edge rows sorted by cell key."""

    def __init__(self, segments: Sequence[RoadSegment]) -> None:
        counts = np.fromiter((len(s.coords) for s in segments), dtype=np.int64, count=len(segments))
        flat = np.array([c for s in segments for c in s.coords], dtype=np.float64).reshape(-1, 2)
        seg_of_pt = np.repeat(np.arange(len(segments), dtype=np.int64), counts)
        same = seg_of_pt[:-1] == seg_of_pt[1:]
        a = flat[:-1][same]
        b = flat[1:][same]
        self.sub_seg = seg_of_pt[:-1][same]
        self.ax = np.ascontiguousarray(a[:, 0])
        self.ay = np.ascontiguousarray(a[:, 1])
        self.bx = np.ascontiguousarray(b[:, 0])
        self.by = np.ascontiguousarray(b[:, 1])
        self.sub_len = _haversine_np(self.ax, self.ay, self.bx, self.by)
        self.sub_bearing = _bearing_np(self.ax, self.ay, self.bx, self.by)
        # Offset of each sub-edge's start along its segment: cumulative length minus the
        # cumulative length at the segment's first sub-edge.
        cum = np.cumsum(self.sub_len) - self.sub_len
        first_sub = np.searchsorted(self.sub_seg, np.arange(len(segments)))
        self.sub_offset = cum - cum[np.minimum(first_sub, len(cum) - 1)][self.sub_seg]

        self.min_lon = float(flat[:, 0].min())
        self.min_lat = float(flat[:, 1].min())
        self.max_lon = float(flat[:, 0].max())
        self.max_lat = float(flat[:, 1].max())
        mid_lat = (self.min_lat + self.max_lat) / 2.0
        self.cell_lat = _CELL_M / _M_PER_DEG
        self.cell_lon = _CELL_M / (_M_PER_DEG * math.cos(math.radians(mid_lat)))
        self.nx = int((self.max_lon - self.min_lon) // self.cell_lon) + 1
        self.ny = int((self.max_lat - self.min_lat) // self.cell_lat) + 1

        # Register each sub-edge (piecewise for long ones) in every cell its pieces' bboxes touch.
        n_pieces = np.maximum(1, np.ceil(self.sub_len / _PIECE_M)).astype(np.int64)
        piece_sub = np.repeat(np.arange(len(self.ax), dtype=np.int64), n_pieces)
        starts = np.cumsum(n_pieces) - n_pieces
        k = np.arange(len(piece_sub), dtype=np.int64) - np.repeat(starts, n_pieces)
        npcs = n_pieces[piece_sub]
        t0 = k / npcs
        t1 = (k + 1) / npcs
        dlon = self.bx - self.ax
        dlat = self.by - self.ay
        lon0 = self.ax[piece_sub] + t0 * dlon[piece_sub]
        lon1 = self.ax[piece_sub] + t1 * dlon[piece_sub]
        lat0 = self.ay[piece_sub] + t0 * dlat[piece_sub]
        lat1 = self.ay[piece_sub] + t1 * dlat[piece_sub]
        cx_lo = self._cx(np.minimum(lon0, lon1))
        cx_hi = self._cx(np.maximum(lon0, lon1))
        cy_lo = self._cy(np.minimum(lat0, lat1))
        cy_hi = self._cy(np.maximum(lat0, lat1))
        keys = np.concatenate(
            [
                cx_lo * self.ny + cy_lo,
                cx_hi * self.ny + cy_lo,
                cx_lo * self.ny + cy_hi,
                cx_hi * self.ny + cy_hi,
            ]
        )
        subs = np.tile(piece_sub, 4)
        order = np.lexsort((subs, keys))
        keys = keys[order]
        subs = subs[order]
        keep = np.ones(len(keys), dtype=bool)
        keep[1:] = (keys[1:] != keys[:-1]) | (subs[1:] != subs[:-1])
        keys = keys[keep]
        subs = subs[keep]
        cell_keys, cell_first = np.unique(keys, return_index=True)
        # Python lists: bisect on them is cheaper per query than numpy searchsorted calls.
        self.cell_keys: list[int] = cell_keys.tolist()
        self.cell_starts: list[int] = [*cell_first.tolist(), len(keys)]
        self.cell_range: dict[int, tuple[int, int]] = {
            key: (self.cell_starts[m], self.cell_starts[m + 1])
            for m, key in enumerate(self.cell_keys)
        }
        self.reg_sub = subs
        # Rows in registration order so one cell range is one contiguous slice (no gathers):
        # ax, ay, dlon, dlat, segment index, sub-edge index (indices are exact in float64).
        self.reg_rows = np.ascontiguousarray(
            np.stack(
                [
                    self.ax[subs],
                    self.ay[subs],
                    dlon[subs],
                    dlat[subs],
                    self.sub_seg[subs],
                    subs.astype(np.float64),
                ],
                axis=1,
            )
        )

    def _cx(self, lon: np.ndarray) -> np.ndarray:
        return np.clip(((lon - self.min_lon) // self.cell_lon).astype(np.int64), 0, self.nx - 1)

    def _cy(self, lat: np.ndarray) -> np.ndarray:
        return np.clip(((lat - self.min_lat) // self.cell_lat).astype(np.int64), 0, self.ny - 1)

    def ranges(
        self, min_lon: float, min_lat: float, max_lon: float, max_lat: float
    ) -> list[tuple[int, int]]:
        """Row ranges of the registrations in the cells covering a lon/lat box."""
        if (
            max_lon < self.min_lon
            or min_lon > self.max_lon
            or max_lat < self.min_lat
            or min_lat > self.max_lat
        ):
            return []
        cx0 = max(0, int((min_lon - self.min_lon) // self.cell_lon))
        cx1 = min(self.nx - 1, int((max_lon - self.min_lon) // self.cell_lon))
        cy0 = max(0, int((min_lat - self.min_lat) // self.cell_lat))
        cy1 = min(self.ny - 1, int((max_lat - self.min_lat) // self.cell_lat))
        out: list[tuple[int, int]] = []
        ny = self.ny
        if (cx1 - cx0 + 1) * (cy1 - cy0 + 1) <= 16:
            # Small boxes (every nearest() query): a dict probe per cell beats bisecting.
            cells = self.cell_range
            for cx in range(cx0, cx1 + 1):
                base = cx * ny
                for cy in range(cy0, cy1 + 1):
                    rng = cells.get(base + cy)
                    if rng is None:
                        continue
                    # Cells adjacent in key order are adjacent in rows: merge their slices.
                    if out and out[-1][1] == rng[0]:
                        out[-1] = (out[-1][0], rng[1])
                    else:
                        out.append(rng)
            return out
        keys = self.cell_keys
        starts = self.cell_starts
        for cx in range(cx0, cx1 + 1):
            base = cx * ny
            lo = bisect_left(keys, base + cy0)
            hi = bisect_right(keys, base + cy1, lo)
            if lo < hi:
                start, end = starts[lo], starts[hi]
                if out and out[-1][1] == start:
                    out[-1] = (out[-1][0], end)
                else:
                    out.append((start, end))
        return out


# --- the network -----------------------------------------------------------------------------


class _Search:
    """Resumable single-source Dijkstra state (settles nodes lazily, up to any bound)."""

    __slots__ = ("dist", "heap", "pred", "settled")

    def __init__(self, source: int) -> None:
        self.dist: dict[int, float] = {source: 0.0}
        self.pred: dict[int, int] = {}
        self.heap: list[tuple[float, int]] = [(0.0, source)]
        self.settled: set[int] = set()


_SEARCH_CACHE_SIZE = 512


class RoadNetwork:
    """Directed road segments with a graph, a grid spatial index and bounded routing."""

    def __init__(self, segments: Iterable[RoadSegment]) -> None:
        """Build from segments; prefer the `from_osm`/`from_segments` constructors."""
        seg_list = list(segments)
        if not seg_list:
            raise RoadNetworkError("road network has no road segments")
        by_id: dict[str, RoadSegment] = {}
        for seg in seg_list:
            if seg.segment_id in by_id:
                raise RoadNetworkError(f"duplicate segment id {seg.segment_id!r}")
            if len(seg.coords) < 2:
                raise RoadNetworkError(f"segment {seg.segment_id!r} has fewer than 2 points")
            by_id[seg.segment_id] = seg
        self._by_id = by_id
        self.segments: Mapping[str, RoadSegment] = MappingProxyType(by_id)
        self._seg_list = seg_list
        self._seg_ids = [s.segment_id for s in seg_list]
        self._seg_index = {sid: i for i, sid in enumerate(self._seg_ids)}

        node_index: dict[int, int] = {}
        node_lonlat: list[tuple[float, float]] = []
        seg_from: list[int] = []
        seg_to: list[int] = []
        for seg in seg_list:
            for node, lonlat in ((seg.from_node, seg.coords[0]), (seg.to_node, seg.coords[-1])):
                if node not in node_index:
                    node_index[node] = len(node_lonlat)
                    node_lonlat.append(lonlat)
            seg_from.append(node_index[seg.from_node])
            seg_to.append(node_index[seg.to_node])
        self._node_index = node_index
        self._node_ids = list(node_index)
        self._node_lonlat = node_lonlat
        self._seg_from = seg_from
        self._seg_to = seg_to
        self._seg_length = [s.length_m for s in seg_list]
        out_segs: list[list[int]] = [[] for _ in node_lonlat]
        in_segs: list[list[int]] = [[] for _ in node_lonlat]
        for i, (a, b) in enumerate(zip(seg_from, seg_to, strict=True)):
            out_segs[a].append(i)
            in_segs[b].append(i)
        self._out_segs = out_segs
        self._in_segs = in_segs
        # Adjacency for Dijkstra as plain tuples: the inner loop then touches no objects.
        self._out_edges: list[list[tuple[int, int, float]]] = [
            [(i, seg_to[i], self._seg_length[i]) for i in segs] for segs in out_segs
        ]
        self._grid = _GridIndex(seg_list)
        self._graph: nx.MultiDiGraph | None = None
        self._lock = threading.Lock()
        self._searches: OrderedDict[int, _Search] = OrderedDict()

    # --- constructors ---

    @classmethod
    def from_osm(cls, path: str | Path) -> RoadNetwork:
        """Load routable roads from an ``.osm``/``.osm.pbf`` (or compressed) file via pyosmium."""
        p = Path(path)
        if not p.is_file():
            raise RoadNetworkError(f"OSM file not found: {p}")
        segments = build_segments(_read_osm_ways(p))
        if not segments:
            raise RoadNetworkError(f"no routable roads in OSM file {p}")
        return cls(segments)

    @classmethod
    def from_ways(cls, ways: Iterable[OsmWay]) -> RoadNetwork:
        """Build from OSM ways already in memory (same splitting rules as `from_osm`)."""
        return cls(build_segments(ways))

    @classmethod
    def from_segments(cls, segments: Iterable[RoadSegment]) -> RoadNetwork:
        """Build from ready-made segments (e.g. read back from the geodatabase)."""
        return cls(segments)

    # --- lookup ---

    def __len__(self) -> int:
        return len(self._seg_list)

    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self._by_id

    def __iter__(self) -> Iterator[RoadSegment]:
        return iter(self._seg_list)

    def get_segment(self, segment_id: str) -> RoadSegment:
        """The segment with this id; RoadNetworkError if there is none."""
        try:
            return self._by_id[segment_id]
        except KeyError:
            raise UnknownSegmentError(f"unknown segment id {segment_id!r}") from None

    def find_segment(self, segment_id: str) -> RoadSegment | None:
        """The segment with this id, or None."""
        return self._by_id.get(segment_id)

    def find_reverse(self, segment_id: str) -> str | None:
        """Id of the opposite direction of the same road piece, if it exists."""
        seg = self.get_segment(segment_id)
        rid = make_segment_id(seg.way_id, seg.to_node, seg.from_node)
        return rid if rid in self._by_id else None

    def node_lonlat(self, node_id: int) -> tuple[float, float]:
        """(lon, lat) of a graph node; RoadNetworkError if unknown."""
        try:
            return self._node_lonlat[self._node_index[node_id]]
        except KeyError:
            raise UnknownSegmentError(f"unknown graph node {node_id}") from None

    def out_segments(self, node_id: int) -> list[str]:
        """Segments leaving a graph node (empty for an unknown node)."""
        index = self._node_index.get(node_id)
        if index is None:
            return []
        return [self._seg_list[i].segment_id for i in self._out_segs[index]]

    def in_segments(self, node_id: int) -> list[str]:
        """Segments arriving at a graph node (empty for an unknown node)."""
        index = self._node_index.get(node_id)
        if index is None:
            return []
        return [self._seg_list[i].segment_id for i in self._in_segs[index]]

    def _idx(self, segment_id: str) -> int:
        try:
            return self._seg_index[segment_id]
        except KeyError:
            raise UnknownSegmentError(f"unknown segment id {segment_id!r}") from None

    def successors(self, segment_id: str) -> list[str]:
        """Segments leaving this segment's end node, the U-turn reverse included."""
        ids = self._seg_list
        return [ids[i].segment_id for i in self._out_segs[self._seg_to[self._idx(segment_id)]]]

    def predecessors(self, segment_id: str) -> list[str]:
        """Segments arriving at this segment's start node, the U-turn reverse included."""
        ids = self._seg_list
        return [ids[i].segment_id for i in self._in_segs[self._seg_from[self._idx(segment_id)]]]

    @property
    def graph(self) -> nx.MultiDiGraph:
        """networkx view: nodes are OSM node ids (``lon``, ``lat``), edge keys segment ids.

        Built on first use and shared: copy it before changing it (e.g. closing roads).
        """
        with self._lock:
            if self._graph is None:
                import networkx as nx

                g = nx.MultiDiGraph()
                g.add_nodes_from(
                    (nid, {"lon": lon, "lat": lat})
                    for nid, (lon, lat) in zip(self._node_ids, self._node_lonlat, strict=True)
                )
                g.add_edges_from(
                    (
                        s.from_node,
                        s.to_node,
                        s.segment_id,
                        {
                            "length_m": s.length_m,
                            "free_flow_kmh": s.free_flow_kmh,
                            "road_class": s.road_class,
                        },
                    )
                    for s in self._seg_list
                )
                self._graph = g
            return self._graph

    # --- spatial ---

    def bbox(self) -> tuple[float, float, float, float]:
        """(min_lon, min_lat, max_lon, max_lat) of all segment geometry."""
        g = self._grid
        return g.min_lon, g.min_lat, g.max_lon, g.max_lat

    def nearest(
        self, lon: float, lat: float, *, radius_m: float = 50.0, k: int = 8
    ) -> list[Candidate]:
        """Up to k segments within radius_m of a point, nearest first (each direction apart)."""
        if k <= 0 or not radius_m >= 0.0:
            return []
        grid = self._grid
        kx = _M_PER_DEG * math.cos(math.radians(lat))
        rlon = radius_m / kx
        rlat = radius_m / _M_PER_DEG
        ranges = grid.ranges(lon - rlon, lat - rlat, lon + rlon, lat + rlat)
        if not ranges:
            return []
        rows = grid.reg_rows
        n_rows = sum(e - s for s, e in ranges)
        # numpy costs ~1-2 µs per call whatever the size, so a typical query (a few dozen
        # sub-edges) is faster as a plain loop; dense city centres take the vectorized path.
        if n_rows <= _PY_ROWS_MAX:
            if len(ranges) == 1:
                block_rows = rows[ranges[0][0] : ranges[0][1]].tolist()
            else:
                block_rows = [r for s, e in ranges for r in rows[s:e].tolist()]
            hits = self._scan_py(block_rows, lon, lat, kx, radius_m * radius_m)
        else:
            block = (
                rows[ranges[0][0] : ranges[0][1]]
                if len(ranges) == 1
                else np.concatenate([rows[s:e] for s, e in ranges])
            )
            hits = self._scan_np(block, lon, lat, kx, radius_m * radius_m)
        hits.sort(key=_hit_key)
        seg_ids = self._seg_ids
        sub_offset = grid.sub_offset
        sub_len = grid.sub_len
        sub_bearing = grid.sub_bearing
        result: list[Candidate] = []
        for d2, t, row in hits[:k]:
            sub = int(row[5])
            result.append(
                Candidate(
                    seg_ids[int(row[4])],
                    math.sqrt(d2),
                    float(sub_offset[sub] + t * sub_len[sub]),
                    row[0] + t * row[2],
                    row[1] + t * row[3],
                    float(sub_bearing[sub]),
                )
            )
        return result

    @staticmethod
    def _scan_py(
        rows: list[list[float]], lon: float, lat: float, kx: float, r2: float
    ) -> list[tuple[float, float, list[float]]]:
        """Nearest hit per segment within sqrt(r2) metres: (d2, t, row)."""
        ky = _M_PER_DEG
        best: dict[float, tuple[float, float, list[float]]] = {}
        for row in rows:
            ax, ay, dlon, dlat, seg = row[0], row[1], row[2], row[3], row[4]
            # P - A and the sub-edge direction, in metres.
            px = (lon - ax) * kx
            py = (lat - ay) * ky
            dx = dlon * kx
            dy = dlat * ky
            dd = dx * dx + dy * dy
            t = (px * dx + py * dy) / dd if dd > 0.0 else 0.0
            if t < 0.0:
                t = 0.0
            elif t > 1.0:
                t = 1.0
            ex = px - t * dx
            ey = py - t * dy
            d2 = ex * ex + ey * ey
            if d2 <= r2:
                prev = best.get(seg)
                if prev is None or d2 < prev[0]:
                    best[seg] = (d2, t, row)
        return list(best.values())

    @staticmethod
    def _scan_np(
        block: np.ndarray, lon: float, lat: float, kx: float, r2: float
    ) -> list[tuple[float, float, list[float]]]:
        """Vectorized `_scan_py` for large candidate sets."""
        scale = (kx, _M_PER_DEG)
        a = block[:, :2] - (lon, lat)
        a *= scale
        d = block[:, 2:4] * scale
        dd = np.einsum("ij,ij->i", d, d)
        dd += 1e-300  # zero-length sub-edges: t becomes 0 instead of NaN
        t = np.einsum("ij,ij->i", a, d)
        t /= dd
        np.negative(t, out=t)
        np.maximum(t, 0.0, out=t)
        np.minimum(t, 1.0, out=t)
        c = t[:, None] * d
        c += a
        d2 = np.einsum("ij,ij->i", c, c)
        hits = np.nonzero(d2 <= r2)[0]
        if hits.size == 0:
            return []
        # Order by segment, then distance: the first row of each segment is its nearest.
        order = np.lexsort((d2[hits], block[hits, 4]))
        hits = hits[order]
        seg = block[hits, 4]
        first = np.ones(len(hits), dtype=bool)
        first[1:] = seg[1:] != seg[:-1]
        hits = hits[first]
        return list(zip(d2[hits].tolist(), t[hits].tolist(), block[hits].tolist(), strict=True))

    def in_bbox(
        self, min_lon: float, min_lat: float, max_lon: float, max_lat: float
    ) -> list[RoadSegment]:
        """Segments whose geometry intersects the lon/lat box, in network order."""
        grid = self._grid
        if min_lon > max_lon or min_lat > max_lat:
            return []
        ranges = grid.ranges(min_lon, min_lat, max_lon, max_lat)
        if not ranges:
            return []
        n_reg = sum(e - s for s, e in ranges)
        if n_reg >= len(grid.ax):
            # Box covers most of the network: testing every sub-edge once beats the cells.
            subs = np.arange(len(grid.ax))
        elif len(ranges) == 1:
            subs = grid.reg_sub[ranges[0][0] : ranges[0][1]]
        else:
            subs = np.concatenate([grid.reg_sub[s:e] for s, e in ranges])
        ax = grid.ax[subs]
        ay = grid.ay[subs]
        bx = grid.bx[subs]
        by = grid.by[subs]
        # Separating-axis test for segment vs box: the box's axes, then the segment's normal.
        hit = (
            (np.maximum(ax, bx) >= min_lon)
            & (np.minimum(ax, bx) <= max_lon)
            & (np.maximum(ay, by) >= min_lat)
            & (np.minimum(ay, by) <= max_lat)
        )
        dx = bx - ax
        dy = by - ay
        sides = [
            dx * (cy - ay) - dy * (cx - ax)
            for cx, cy in (
                (min_lon, min_lat),
                (max_lon, min_lat),
                (min_lon, max_lat),
                (max_lon, max_lat),
            )
        ]
        all_pos = (sides[0] > 0) & (sides[1] > 0) & (sides[2] > 0) & (sides[3] > 0)
        all_neg = (sides[0] < 0) & (sides[1] < 0) & (sides[2] < 0) & (sides[3] < 0)
        hit &= ~(all_pos | all_neg)
        seg_idx = np.unique(grid.sub_seg[subs[hit]])
        seg_list = self._seg_list
        return [seg_list[i] for i in seg_idx.tolist()]

    # --- routing ---

    def shortest_path(
        self, from_segment: str, to_segment: str, *, max_length_m: float = 10_000.0
    ) -> tuple[list[str], float] | None:
        """Shortest drive from the END of from_segment to the START of to_segment.

        Returns ``([from_segment, ..., to_segment], distance_m)`` where the distance excludes
        both end segments, or None if no path is within max_length_m. A segment to itself means
        going round back to its start. Searches are cached per source node and resumed, so many
        queries from one source (as in map matching) cost one bounded Dijkstra in total.
        """
        src = self._seg_to[self._idx(from_segment)]
        dst = self._seg_from[self._idx(to_segment)]
        if src == dst:
            return [from_segment, to_segment], 0.0
        with self._lock:
            search = self._searches.get(src)
            if search is None:
                search = _Search(src)
                self._searches[src] = search
                if len(self._searches) > _SEARCH_CACHE_SIZE:
                    self._searches.popitem(last=False)
            else:
                self._searches.move_to_end(src)
            if dst not in search.settled:
                self._advance(search, dst, max_length_m)
            if dst not in search.settled:
                return None
            dist = search.dist[dst]
            if dist > max_length_m:
                return None
            path: list[str] = [to_segment]
            node = dst
            pred = search.pred
            seg_from = self._seg_from
            seg_list = self._seg_list
            while node != src:
                i = pred[node]
                path.append(seg_list[i].segment_id)
                node = seg_from[i]
            path.append(from_segment)
            path.reverse()
            return path, dist

    def _advance(self, search: _Search, target: int, bound: float) -> None:
        heap = search.heap
        dist = search.dist
        pred = search.pred
        settled = search.settled
        out_edges = self._out_edges
        pop = heapq.heappop
        push = heapq.heappush
        while heap and heap[0][0] <= bound:
            d, node = pop(heap)
            if node in settled:
                continue
            settled.add(node)
            for seg_i, nxt, length in out_edges[node]:
                nd = d + length
                if nd < dist.get(nxt, math.inf):
                    dist[nxt] = nd
                    pred[nxt] = seg_i
                    push(heap, (nd, nxt))
            if node == target:
                return
