"""SUMO edges onto TTI segments, by OSM way id and geometry.

netconvert keeps each edge's OSM way (``origId`` on its lanes, and the edge id ``[-]<way>#<n>``);
TTI's segments are ``<way>:<from_node>:<to_node>``. A segment maps onto the edge of its way that
runs in its direction and passes closest to points along it; the part of the edge it covers is a
range of fractions of the lane length, so a probe's FCD position (lane, pos) says which segment
it is on. A segment longer than one SUMO edge (SUMO split a way TTI kept whole) maps onto the
edge covering its middle, and its probe speed is measured on the covered part only.

A TTI segment runs to its OSM node, the middle of the junction; a SUMO edge stops at the
junction's edge (its stop line), and the vehicles cross the junction on internal lanes. An
internal lane (or chain of them, from one edge to the next) is split where it passes the node:
before it, it belongs to the segment the incoming edge ends in, after it to the segment the
outgoing edge begins with. Without that, a car that waited at the stop line and crossed within
the minute read 0 km/h on its segment (the crossing dropped, the wait kept). Where the incoming
and outgoing segments do not meet at one node (a short segment between two nodes of a joined
junction), the part between the two nodes stays unmapped.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

from shared.roadnet import RoadNetwork, RoadSegment

__all__ = ["MappedSegment", "Mapping", "SegmentOnEdge", "map_network"]

MAX_DISTANCE_M = 12.0
"""A segment's points must lie this close to the edge's lane (lane offsets of a wide road)."""
MAX_ANGLE_DEG = 50.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentOnEdge:
    """A piece of a TTI segment on one SUMO edge: the fractions [lo, hi] of the edge's lanes."""

    segment_id: str
    edge_id: str
    lo: float
    hi: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MappedSegment:
    """A TTI segment and the edge pieces it lies on; ``edge_id`` is the longest piece's."""

    segment_id: str
    edge_id: str
    pieces: tuple[SegmentOnEdge, ...]
    length_m: float
    road_class: str
    name: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mapping:
    """Both directions of the correspondence, and what could not be mapped."""

    by_segment: dict[str, MappedSegment]
    by_edge: dict[str, list[SegmentOnEdge]]
    lane_length_m: dict[str, float]
    edge_lanes: dict[str, int]
    edge_length_m: dict[str, float]
    edge_type: dict[str, str]
    edge_speed_ms: dict[str, float]
    """The edge's speed limit."""
    incoming: dict[str, list[str]]
    """Edge → the edges that lead into it (for an incident's upstream)."""
    unmapped_segments: int
    unmapped_edges: int
    internal: dict[str, tuple[tuple[float, SegmentOnEdge | None], ...]] = field(
        default_factory=dict)
    """Internal (junction) lane → (fraction of its length up to which, segment piece there)."""

    def segment_at(self, lane: str, pos_m: float) -> SegmentOnEdge | None:
        """The segment a vehicle at ``pos_m`` on ``lane`` is on (None: unmapped)."""
        if lane.startswith(":"):
            spans = self.internal.get(lane)
            if not spans:
                return None
            frac = pos_m / max(1e-6, self.lane_length_m.get(lane, 1.0))
            return next((piece for upto, piece in spans if frac <= upto), spans[-1][1])
        edge = lane.rpartition("_")[0]
        on = self.by_edge.get(edge)
        if not on:
            return None
        frac = pos_m / max(1e-6, self.lane_length_m.get(lane, 1.0))
        for s in on:
            if s.lo <= frac <= s.hi:
                return s
        # Past the covered ranges (a junction's cut, rounding): the nearest one.
        return min(on, key=lambda s: min(abs(frac - s.lo), abs(frac - s.hi)))

    @property
    def mapped_km(self) -> float:
        """Directed length of the mapped segments."""
        return sum(s.length_m for s in self.by_segment.values()) / 1000.0

    def edge_of(self, segment_id: str) -> str | None:
        """The edge of a segment's longest piece."""
        mapped = self.by_segment.get(segment_id)
        return None if mapped is None else mapped.edge_id


def _way_ids(edge: object) -> set[int]:
    ids: set[int] = set()
    for lane in edge.getLanes():  # type: ignore[attr-defined]
        for part in (lane.getParam("origId") or "").split():
            if part.lstrip("-").isdigit():
                ids.add(int(part.lstrip("-")))
    if not ids:
        head = edge.getID().lstrip("-").split("#")[0]  # type: ignore[attr-defined]
        if head.isdigit():
            ids.add(int(head))
    return ids


def _project(pt: tuple[float, float], shape: list[tuple[float, float]]
             ) -> tuple[float, float, float]:
    """(distance to the polyline, offset along it, its bearing there in degrees)."""
    best = (math.inf, 0.0, 0.0)
    acc = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(shape):
        dx, dy = x1 - x0, y1 - y0
        seg = math.hypot(dx, dy)
        if seg <= 0:
            continue
        u = max(0.0, min(1.0, ((pt[0] - x0) * dx + (pt[1] - y0) * dy) / (seg * seg)))
        d = math.hypot(x0 + u * dx - pt[0], y0 + u * dy - pt[1])
        if d < best[0]:
            best = (d, acc + u * seg, math.degrees(math.atan2(dx, dy)) % 360)
        acc += seg
    return best


def _along(coords: list[tuple[float, float]], frac: float) -> tuple[tuple[float, float], float]:
    """The point at ``frac`` of a polyline's length and its bearing."""
    lengths = [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(coords)]
    target = frac * sum(lengths)
    for (a, b), seg in zip(itertools.pairwise(coords), lengths, strict=True):
        if target <= seg and seg > 0:
            u = target / seg
            return ((a[0] + u * (b[0] - a[0]), a[1] + u * (b[1] - a[1])),
                    math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360)
        target -= seg
    a, b = coords[-2], coords[-1]
    return b, math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360


def map_network(net_path: Path, roads: RoadNetwork) -> Mapping:
    """Map every TTI segment onto the SUMO edge it lies on (where one does)."""
    import sumolib

    net = sumolib.net.readNet(str(net_path), withInternal=True)
    by_way: dict[int, list[object]] = {}
    lane_length: dict[str, float] = {}
    edge_lanes: dict[str, int] = {}
    edge_length: dict[str, float] = {}
    edge_type: dict[str, str] = {}
    incoming: dict[str, list[str]] = {}
    edge_speed: dict[str, float] = {}
    for edge in net.getEdges():
        if edge.getFunction() == "internal" or not edge.allows("passenger"):
            continue
        for w in _way_ids(edge):
            by_way.setdefault(w, []).append(edge)
        for lane in edge.getLanes():
            lane_length[lane.getID()] = lane.getLength()
        edge_lanes[edge.getID()] = edge.getLaneNumber()
        edge_length[edge.getID()] = edge.getLength()
        edge_type[edge.getID()] = edge.getType().removeprefix("highway.")
        edge_speed[edge.getID()] = edge.getSpeed()
        incoming[edge.getID()] = [e.getID() for e in edge.getFromNode().getIncoming()
                                  if e.allows("passenger") and e.getFromNode() != edge.getToNode()]
    by_segment: dict[str, MappedSegment] = {}
    unmapped = 0
    for seg in roads:
        hit = _map_segment(seg, by_way.get(seg.way_id, []), net)
        if hit is None:
            unmapped += 1
        else:
            by_segment[seg.segment_id] = hit
    by_edge: dict[str, list[SegmentOnEdge]] = {}
    for mapped in by_segment.values():
        for piece in mapped.pieces:
            by_edge.setdefault(piece.edge_id, []).append(piece)
    for on in by_edge.values():
        on.sort(key=lambda s: s.lo)
    internal = _map_junctions(net, roads, by_edge, lane_length)
    return Mapping(by_segment=by_segment, by_edge=by_edge, lane_length_m=lane_length,
                   edge_lanes=edge_lanes, edge_length_m=edge_length, edge_type=edge_type,
                   edge_speed_ms=edge_speed, incoming=incoming, unmapped_segments=unmapped,
                   unmapped_edges=sum(1 for e in edge_lanes if e not in by_edge),
                   internal=internal)


def _map_junctions(net: object, roads: RoadNetwork, by_edge: dict[str, list[SegmentOnEdge]],
                   lane_length: dict[str, float]
                   ) -> dict[str, tuple[tuple[float, SegmentOnEdge | None], ...]]:
    """Each chain of internal lanes from one mapped edge to the next, split at the OSM node(s)
    where the segment the first ends in meets the one the second begins with."""
    segments = {s.segment_id: s for s in roads}
    out: dict[str, tuple[tuple[float, SegmentOnEdge | None], ...]] = {}
    for edge in net.getEdges():  # type: ignore[attr-defined]
        if edge.getFunction() == "internal" or edge.getID() not in by_edge:
            continue
        before = max(by_edge[edge.getID()], key=lambda p: p.hi)
        for lane in edge.getLanes():
            for conn in lane.getOutgoing():
                via = conn.getViaLaneID()
                to_on = by_edge.get(conn.getToLane().getEdge().getID())
                if not via or not to_on:
                    continue
                after = min(to_on, key=lambda p: p.lo)
                chain = [net.getLane(via)]  # type: ignore[attr-defined]
                while len(chain) < 8:
                    nxt = [c.getViaLaneID() for c in chain[-1].getOutgoing()
                           if c.getViaLaneID()]
                    if not nxt:
                        break
                    chain.append(net.getLane(nxt[0]))  # type: ignore[attr-defined]
                seg_a, seg_b = segments[before.segment_id], segments[after.segment_id]
                node_a = net.convertLonLat2XY(*seg_a.coords[-1])  # type: ignore[attr-defined]
                node_b = net.convertLonLat2XY(*seg_b.coords[0])  # type: ignore[attr-defined]
                shape: list[tuple[float, float]] = []
                starts = []
                for ln in chain:
                    starts.append(_length(shape))
                    pts = ln.getShape()
                    shape.extend(pts[1:] if shape and pts and pts[0] == shape[-1] else pts)
                total = _length(shape)
                split_a = _project(node_a, shape)[1] if len(shape) >= 2 else 0.0
                split_b = (split_a if seg_a.to_node == seg_b.from_node
                           else max(split_a, _project(node_b, shape)[1] if len(shape) >= 2
                                    else 0.0))
                ends = [*starts[1:], total]
                for ln, lo, hi in zip(chain, starts, ends, strict=True):
                    lane_length[ln.getID()] = ln.getLength()
                    span = max(hi - lo, 1e-6)
                    spans: list[tuple[float, SegmentOnEdge | None]] = []
                    if split_a > lo:
                        spans.append((min(1.0, (split_a - lo) / span), before))
                    if split_b > split_a and split_b > lo and split_a < hi:
                        spans.append((min(1.0, (split_b - lo) / span), None))
                    spans.append((1.0, after))
                    out[ln.getID()] = tuple(spans)
    return out


def _length(shape: list[tuple[float, float]]) -> float:
    return sum(math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(shape))


def _map_segment(seg: RoadSegment, edges: list[object], net: object) -> MappedSegment | None:
    """Points every ~10 m along the segment, each onto the nearest edge of its way running its
    way; the pieces are the edges those points fell on, over the offsets they span."""
    if not edges or len(seg.coords) < 2:
        return None
    xy = [net.convertLonLat2XY(lon, lat) for lon, lat in seg.coords]  # type: ignore[attr-defined]
    shapes = []
    for edge in edges:
        lanes = edge.getLanes()  # type: ignore[attr-defined]
        shape = lanes[len(lanes) // 2].getShape()
        length = sum(math.hypot(b[0] - a[0], b[1] - a[1])
                     for a, b in itertools.pairwise(shape))
        if len(shape) >= 2 and length > 0:
            shapes.append((edge.getID(), shape, length))  # type: ignore[attr-defined]
    n = max(3, min(50, round(seg.length_m / 10.0)))
    spans: dict[str, list[float]] = {}
    found = 0
    for k in range(n + 1):
        pt, bearing = _along(xy, k / n)
        best: tuple[float, str, float] | None = None
        for edge_id, shape, length in shapes:
            d, off, b = _project(pt, shape)
            if d > MAX_DISTANCE_M or abs((b - bearing + 180) % 360 - 180) > MAX_ANGLE_DEG:
                continue
            if best is None or d < best[0]:
                best = (d, edge_id, off / length)
        if best is None:
            continue
        if 0 < k < n:
            found += 1
        spans.setdefault(best[1], []).append(best[2])
    if found < max(1, (n - 1) / 2):
        return None
    pieces = tuple(SegmentOnEdge(segment_id=seg.segment_id, edge_id=e, lo=min(f), hi=max(f))
                   for e, f in spans.items())
    main = max(pieces, key=lambda p: p.hi - p.lo)
    return MappedSegment(segment_id=seg.segment_id, edge_id=main.edge_id, pieces=pieces,
                         length_m=seg.length_m, road_class=seg.road_class, name=seg.name)
