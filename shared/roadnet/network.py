"""`RoadNetwork`: directed segments with a graph, the grid index and bounded shortest paths.

`RoadNetwork` is immutable once built (the one exception is an internal routing cache guarded by
a lock), so a service can share one instance between readers and swap in a new one on re-import.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from shared.roadnet.index import GridIndex, nearest_hits
from shared.roadnet.search import ShortestPaths
from shared.roadnet.segments import (
    Candidate,
    OsmWay,
    RoadNetworkError,
    RoadSegment,
    UnknownSegmentError,
    build_segments,
    make_segment_id,
    read_osm_ways,
)

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["RoadNetwork"]

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
        self._paths = ShortestPaths(
            len(node_lonlat), seg_from, seg_to, self._seg_length, cache_sources=_SEARCH_CACHE_SIZE
        )
        self._grid = GridIndex(seg_list)
        self._graph: nx.MultiDiGraph | None = None
        self._lock = threading.Lock()

    # --- constructors ---

    @classmethod
    def from_osm(cls, path: str | Path) -> RoadNetwork:
        """Load routable roads from an ``.osm``/``.osm.pbf`` (or compressed) file via pyosmium."""
        p = Path(path)
        if not p.is_file():
            raise RoadNetworkError(f"OSM file not found: {p}")
        segments = build_segments(read_osm_ways(p))
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
        hits = nearest_hits(self._grid, lon, lat, radius_m)
        seg_ids = self._seg_ids
        # Rows carry the sub-edge's offset, length and bearing (`GridIndex.reg_rows`).
        return [
            Candidate(
                seg_ids[int(row[4])],
                math.sqrt(d2),
                row[6] + t * row[7],
                row[0] + t * row[2],
                row[1] + t * row[3],
                row[8],
            )
            for d2, t, row in hits[:k]
        ]

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
        dist = self._paths.cost(src, dst, max_length_m)
        if dist == math.inf:
            return None
        arcs = self._paths.path(src, dst)
        assert arcs is not None  # settled by the cost query just made
        ids = self._seg_ids
        return [from_segment, *(ids[i] for i in arcs), to_segment], dist

    # --- package internals (the routers build their own arrays from these) ---

    def _topology(self) -> tuple[list[int], list[int], list[tuple[float, float]], list[int]]:
        """(segment from-node index, to-node index, node lon/lat, node OSM ids)."""
        return self._seg_from, self._seg_to, self._node_lonlat, self._node_ids

    def _node_idx(self, node_id: int) -> int:
        try:
            return self._node_index[node_id]
        except KeyError:
            raise UnknownSegmentError(f"unknown graph node {node_id}") from None
