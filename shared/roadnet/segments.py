"""OSM road segments: ids, tag interpretation (direction, lanes, speeds) and way splitting.

A segment is a directed piece of an OSM way between two graph nodes, with the id
``"<osm_way_id>:<from_node>:<to_node>"`` (stable across re-imports of the same file). A graph
node is a way endpoint or a node shared by two or more routable ways. A two-way way yields two
segments per piece, ``way:A:B`` and ``way:B:A``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from shared.errors import TtiError
from shared.geo import haversine_m


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
    # The way's lanes in both directions together, as tagged (None when untagged, or for a
    # segment read back from a store that does not keep it): a two-way ``lanes=1`` road has
    # no centre line, which the per-direction ``lanes`` cannot tell from ``lanes=2``.
    lanes_total: int | None = None


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
        lanes_total = _parse_lanes(tags.get("lanes"))
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
                        lanes_total=lanes_total,
                    )
                )
    return segments


def read_osm_ways(path: Path) -> list[OsmWay]:
    """Routable ways of an OSM file (pyosmium), split where nodes have no location."""
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
