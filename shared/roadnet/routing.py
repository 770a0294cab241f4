"""Exact fastest routes under live travel times: A* with landmarks (ALT) on one road network.

`RoutingGraph` is built once per `RoadNetwork`: flat adjacency, the free-flow travel time of
every segment, and distances from and to a few landmarks (chosen by the farthest heuristic) on
free-flow times. By the triangle inequality those give lower bounds on the time from any node
to any other, so A* guided by them settles a small part of the network and is still exact.
Live travel times are never below free flow (`Weights` raises any lower value to it), so the
bounds stay admissible and consistent under any congestion or closure.

`Weights` is an immutable snapshot of per-segment travel times. One writer builds the next
snapshot and swaps a reference while any number of readers query: a `RoutingGraph` never
changes after construction and every query keeps its state local.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.geo import haversine_m
from shared.roadnet.network import RoadNetwork
from shared.roadnet.segments import Candidate, RoadNetworkError, UnknownSegmentError

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["NoRouteError", "Route", "RoutingGraph", "Snap", "Weights"]

_INF = math.inf
# Landmark tables hold this instead of inf (unreachable), so bounds stay plain subtractions.
_BIG = 1e15
# A potential above this means the target cannot be reached from the node at all.
_UNREACHABLE = 1e14
# Landmarks used per query: the ones giving the best bound between its two ends.
_ACTIVE_LANDMARKS = 4
_MIN_SPEED_KMH = 0.5
# Candidates this close to the nearest are the same road (both directions) or as good.
_SNAP_TIE_M = 1.0
_FIRST_SNAP_RADIUS_M = 25.0
# Node-to-node queries whose landmark bound is above this share of the network's extent go to
# scipy's C Dijkstra over the whole graph: ALT in Python settles thousands of nodes for those
# (100k segments, live weights: ~2 ms at a bound of 25 %, 15-35 ms beyond 50 %, against ~4 ms
# for the whole graph in C).
_ALT_LOCAL_SHARE = 0.3
_SOURCES_PER_BATCH = 32
_ALT_PENALTY = 1.4
_ALT_MAX_SHARED = 0.7
_ALT_MAX_STRETCH = 1.5


class NoRouteError(RoadNetworkError):
    """No drivable route joins the two ends (closures, one-way streets, separate networks)."""

    code = "no_route"
    http_status = 404


@dataclass(frozen=True, slots=True)
class Snap:
    """Where a query point was put on the road: segment, offset along it, distance to it."""

    segment_id: str
    offset_m: float
    distance_m: float
    lon: float
    lat: float


@dataclass(frozen=True, slots=True)
class Route:
    """A drive: its segments, true travel time and length, and the polyline driven.

    ``coords`` are (lon, lat) from the start to the end; with snapping they begin and end at the
    snapped points and the first and last segments count only the part driven.
    """

    segment_ids: tuple[str, ...]
    travel_time_s: float
    length_m: float
    coords: tuple[tuple[float, float], ...]
    from_snap: Snap | None = None
    to_snap: Snap | None = None

    def geojson(self) -> dict[str, Any]:
        """The polyline as a GeoJSON LineString geometry."""
        coords = [list(c) for c in self.coords]
        if len(coords) == 1:  # a LineString needs two positions
            coords.append(list(coords[0]))
        return {"type": "LineString", "coordinates": coords}


class Weights:
    """Immutable travel times (s) per segment of one `RoutingGraph`; inf means closed.

    Never below free flow. Build with `RoutingGraph.weights` or `weights_from_speeds`.
    """

    __slots__ = ("_array", "_csr", "_owner", "_time_s", "as_of")

    _owner: RoutingGraph
    _array: np.ndarray
    _time_s: list[float]
    _csr: tuple[Any, np.ndarray] | None
    as_of: datetime | None

    def __init__(self, owner: RoutingGraph, time_s: np.ndarray, as_of: datetime | None) -> None:
        time_s.flags.writeable = False
        set_ = object.__setattr__
        set_(self, "_owner", owner)
        set_(self, "_array", time_s)
        # A list for the search loop: indexing it is several times faster than numpy's.
        set_(self, "_time_s", time_s.tolist())
        set_(self, "as_of", as_of)
        set_(self, "_csr", None)  # the sparse matrix for whole-graph searches, made on demand

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Weights are immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Weights are immutable (cannot delete {name!r})")

    def __len__(self) -> int:
        return len(self._time_s)

    def time_s(self, segment_id: str) -> float:
        """Travel time of a segment in seconds (inf when closed)."""
        return self._time_s[self._owner.segment_index(segment_id)]

    def array(self) -> np.ndarray:
        """All travel times in network segment order, as a read-only array."""
        return self._array

    def with_closed(self, segment_ids: Iterable[str]) -> Weights:
        """A new snapshot with these segments closed (the same ``as_of``)."""
        idx = self._owner.segment_indices(segment_ids)
        arr = self._array.copy()
        arr[idx] = _INF
        return Weights(self._owner, arr, self.as_of)


@dataclass(slots=True)
class _Found:
    """A search's result: cost, the route's segment indices, the start/end options used."""

    cost: float
    segments: list[int]
    start: int  # index into the start options (or into the direct routes)
    end: int  # index into the end options (or into the direct routes)
    direct: bool = False  # start and end on one segment, no node between


class RoutingGraph:
    """Fast exact fastest-route queries over one `RoadNetwork` with live `Weights`."""

    def __init__(self, network: RoadNetwork, *, landmarks: int = 16) -> None:
        if landmarks < 0:
            raise ValueError("landmarks must be >= 0")
        self.network = network
        seg_from, seg_to, node_lonlat, node_ids = network._topology()
        segments = list(network)
        self._segments = segments
        self._seg_ids = [s.segment_id for s in segments]
        self._seg_index = {sid: i for i, sid in enumerate(self._seg_ids)}
        self._seg_from = list(seg_from)
        self._seg_to = list(seg_to)
        self._seg_from_np = np.array(self._seg_from, dtype=np.int64)
        self._seg_to_np = np.array(self._seg_to, dtype=np.int64)
        self._length_m = [s.length_m for s in segments]
        self._node_ids = list(node_ids)
        self._node_lonlat = list(node_lonlat)
        self.n_nodes = len(node_lonlat)
        length = np.array(self._length_m, dtype=np.float64)
        speed_ms = np.array([s.free_flow_kmh for s in segments], dtype=np.float64) / 3.6
        free = length / speed_ms
        free.flags.writeable = False
        self._free_s = free
        self._free_kmh = speed_ms * 3.6
        self._length_np = length
        out: list[list[tuple[int, int]]] = [[] for _ in range(self.n_nodes)]
        for i, (a, b) in enumerate(zip(self._seg_from, self._seg_to, strict=True)):
            out[a].append((i, b))
        self._out = out
        self._lm_nodes: list[int] = []
        self._lm_from: list[list[float]] = []  # d(landmark, v)
        self._lm_to: list[list[float]] = []  # d(v, landmark)
        self._lm_from_np = np.zeros((0, self.n_nodes))
        self._lm_to_np = np.zeros((0, self.n_nodes))
        self._alt_limit_s = _INF
        if landmarks:
            self._choose_landmarks(min(landmarks, self.n_nodes))
        self._free = Weights(self, free.copy(), None)

    # --- landmarks ---

    def _choose_landmarks(self, count: int) -> None:
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components, dijkstra

        n = self.n_nodes
        a = np.array(self._seg_from, dtype=np.int64)
        b = np.array(self._seg_to, dtype=np.int64)
        w = np.asarray(self._free_s)
        # Parallel segments between two nodes: the matrix keeps the fastest (coo would sum).
        order = np.lexsort((w, b, a))
        a, b, w = a[order], b[order], w[order]
        first = np.ones(len(a), dtype=bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        # Explicit zeros stay edges in csgraph: zero-length segments are not lost.
        graph = sp.csr_matrix((w[first], (a[first], b[first])), shape=(n, n))
        reverse = graph.T.tocsr()
        _, labels = connected_components(graph, directed=True, connection="strong")
        in_main = labels == np.bincount(labels).argmax()
        start = int(np.flatnonzero(in_main)[0])
        spread = dijkstra(graph, indices=start) + dijkstra(reverse, indices=start)
        spread[~in_main] = -1.0
        nodes: list[int] = []
        froms: list[np.ndarray] = []
        tos: list[np.ndarray] = []
        nearest = np.full(n, _INF)
        cur = int(np.argmax(spread))
        for _ in range(count):
            d_from = dijkstra(graph, indices=cur)
            d_to = dijkstra(reverse, indices=cur)
            nodes.append(cur)
            froms.append(np.where(np.isfinite(d_from), d_from, _BIG))
            tos.append(np.where(np.isfinite(d_to), d_to, _BIG))
            # Farthest heuristic: the next landmark is the node farthest (round trip) from all
            # landmarks so far, within the main strongly connected component.
            nearest = np.minimum(nearest, d_from + d_to)
            score = np.where(in_main, nearest, -1.0)
            score[nodes] = -1.0
            cur = int(np.argmax(score))
            if score[cur] <= 0.0:
                break
        self._lm_nodes = nodes
        extent = max(float(f[f < _BIG].max(initial=0.0)) for f in froms)
        self._alt_limit_s = _ALT_LOCAL_SHARE * extent
        self._lm_from_np = np.array(froms)
        self._lm_to_np = np.array(tos)
        self._lm_from = [f.tolist() for f in froms]
        self._lm_to = [t.tolist() for t in tos]

    def landmark_nodes(self) -> list[int]:
        """OSM ids of the landmark nodes."""
        return [self._node_ids[i] for i in self._lm_nodes]

    def _lower_bound(self, s: int, t: int) -> float:
        """Landmark lower bound on the free-flow time from node s to node t."""
        if not self._lm_nodes:
            return 0.0
        f, b = self._lm_from_np, self._lm_to_np
        return float(np.max(np.maximum(f[:, t] - f[:, s], b[:, s] - b[:, t])))

    def _use_alt(self, s: int, t: int) -> bool:
        return self._lower_bound(s, t) <= self._alt_limit_s

    def _csr(self, weights: Weights) -> tuple[Any, np.ndarray]:
        """(csr matrix of the open segments, fastest of parallel ones; segment of each entry)."""
        cached = weights._csr
        if cached is None:
            import scipy.sparse as sp

            arr = weights._array
            seg = np.flatnonzero(np.isfinite(arr))
            a = self._seg_from_np[seg]
            b = self._seg_to_np[seg]
            w = arr[seg]
            order = np.lexsort((w, b, a))
            a, b, w, seg = a[order], b[order], w[order], seg[order]
            first = np.ones(len(a), dtype=bool)
            first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
            n = self.n_nodes
            # Unique (row, col) entries already in row-major order: data lines up with seg.
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.add.at(indptr, a[first] + 1, 1)
            matrix = sp.csr_matrix(
                (w[first], b[first].astype(np.int32), np.cumsum(indptr).astype(np.int32)),
                shape=(n, n),
            )
            cached = (matrix, seg[first])
            # Benign race: two readers may both build it; either result is the same.
            object.__setattr__(weights, "_csr", cached)
        return cached

    def _whole_graph(
        self, weights: Weights, sources: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(dist, predecessor) rows from each source over the whole graph (scipy, in C)."""
        from scipy.sparse.csgraph import dijkstra

        matrix, _ = self._csr(weights)
        dist, pred = dijkstra(matrix, indices=list(sources), return_predecessors=True)
        return np.atleast_2d(dist), np.atleast_2d(pred)

    def _segments_from_pred(self, weights: Weights | tuple[Any, np.ndarray], pred: np.ndarray,
                            s: int, t: int) -> list[int]:
        matrix, arc_seg = self._csr(weights) if isinstance(weights, Weights) else weights
        indptr, indices = matrix.indptr, matrix.indices
        segs: list[int] = []
        v = t
        while v != s:
            u = int(pred[v])
            lo, hi = int(indptr[u]), int(indptr[u + 1])
            k = lo + int(np.searchsorted(indices[lo:hi], v))
            segs.append(int(arc_seg[k]))
            v = u
        segs.reverse()
        return segs

    def _active(self, s: int, t: int) -> list[int]:
        """The landmarks giving the best lower bound from node s to node t."""
        if not self._lm_nodes:
            return []
        f, b = self._lm_from_np, self._lm_to_np
        bound = np.maximum(f[:, t] - f[:, s], b[:, s] - b[:, t])
        k = min(_ACTIVE_LANDMARKS, len(bound))
        return [int(i) for i in np.argsort(-bound, kind="stable")[:k]]

    def _potential(self, targets: Sequence[tuple[int, float]], active: list[int]
                   ) -> Callable[[int], float]:
        """A consistent lower bound on the cost from a node to the cheapest target (+ tail)."""
        fw = [self._lm_from[k] for k in active]
        bw = [self._lm_to[k] for k in active]
        per_target = [
            (tail, [(arr, arr[t]) for arr in fw], [(arr, arr[t]) for arr in bw])
            for t, tail in targets
        ]

        def potential(v: int) -> float:
            best = _INF
            for tail, fterms, bterms in per_target:
                h = 0.0
                for arr, at in fterms:
                    x = at - arr[v]
                    if x > h:
                        h = x
                for arr, at in bterms:
                    x = arr[v] - at
                    if x > h:
                        h = x
                h += tail
                if h < best:
                    best = h
            return best

        return potential

    # --- weights ---

    def segment_index(self, segment_id: str) -> int:
        """Position of a segment in network order; UnknownSegmentError if unknown."""
        try:
            return self._seg_index[segment_id]
        except KeyError:
            raise UnknownSegmentError(f"unknown segment id {segment_id!r}") from None

    def segment_indices(self, segment_ids: Iterable[str]) -> np.ndarray:
        """Positions of segments in network order (UnknownSegmentError for an unknown one)."""
        index = self.segment_index
        return np.fromiter((index(s) for s in segment_ids), dtype=np.int64)

    def _values(self, values: Mapping[str, float], what: str) -> tuple[np.ndarray, np.ndarray]:
        idx = self.segment_indices(values.keys())
        vals = np.fromiter(values.values(), dtype=np.float64, count=len(idx))
        if np.isnan(vals).any():
            bad = next(k for k, v in values.items() if v != v)
            raise RoadNetworkError(f"{what} of segment {bad!r} is not a number")
        return idx, vals

    def weights(
        self, travel_time_s: Mapping[str, float] | None = None, *, as_of: datetime | None = None
    ) -> Weights:
        """A snapshot from travel times (s): free flow where not given, never below it."""
        arr = np.array(self._free_s)
        if travel_time_s:
            idx, vals = self._values(travel_time_s, "travel time")
            arr[idx] = np.maximum(vals, self._free_s[idx])
        return Weights(self, arr, as_of)

    def weights_from_speeds(
        self, speeds_kmh: Mapping[str, float], *, as_of: datetime | None = None
    ) -> Weights:
        """A snapshot from speeds (km/h): capped at free flow, at least 0.5 km/h."""
        arr = np.array(self._free_s)
        if speeds_kmh:
            idx, vals = self._values(speeds_kmh, "speed")
            speed = np.clip(vals, _MIN_SPEED_KMH, None)
            speed = np.minimum(speed, self._free_kmh[idx])
            arr[idx] = np.maximum(self._length_np[idx] / (speed / 3.6), self._free_s[idx])
        return Weights(self, arr, as_of)

    def free_flow(self) -> Weights:
        """The free-flow snapshot (no congestion, nothing closed)."""
        return self._free

    def _times(self, weights: Weights) -> list[float]:
        if weights._owner is not self:
            raise RoadNetworkError("weights belong to another routing graph")
        return weights._time_s

    # --- the search ---

    def _search(
        self,
        w: list[float],
        seeds: Sequence[tuple[int, float]],
        targets: Sequence[tuple[int, float]],
        direct: Sequence[float] = (),
    ) -> _Found | None:
        """A* from seeded nodes to the cheapest of the targets (node, tail cost).

        ``direct`` are costs of routes that need no node (start and end on one segment).
        Seeds and targets are option lists: the result names the option used by position.
        """
        best = _INF
        best_end = -1
        best_direct = -1
        for k, c in enumerate(direct):
            if c < best:
                best, best_direct = c, k
        if not seeds or not targets:
            return None if best == _INF else _Found(best, [], best_direct, best_direct, True)
        active = self._active(seeds[0][0], targets[0][0])
        single = len(targets) == 1 and targets[0][1] == 0.0
        out = self._out
        dist: dict[int, float] = {}
        pred: dict[int, int] = {}
        hcache: dict[int, float] = {}
        heap: list[tuple[float, int]] = []
        pop, push = heapq.heappop, heapq.heappush
        seg_from = self._seg_from
        tails: dict[int, tuple[float, int]] = {}
        for k, (node, tail) in enumerate(targets):
            if tail < tails.get(node, (_INF, -1))[0]:
                tails[node] = (tail, k)
        seed_of: dict[int, int] = {}
        potential: Callable[[int], float]
        if single and len(active) == 4:  # the usual case, unrolled
            target = targets[0][0]
            f0, f1, f2, f3 = (self._lm_from[k] for k in active)
            b0, b1, b2, b3 = (self._lm_to[k] for k in active)
            ft0, ft1, ft2, ft3 = f0[target], f1[target], f2[target], f3[target]
            bt0, bt1, bt2, bt3 = b0[target], b1[target], b2[target], b3[target]

            def potential4(v: int) -> float:
                h = ft0 - f0[v]
                x = ft1 - f1[v]
                if x > h:
                    h = x
                x = ft2 - f2[v]
                if x > h:
                    h = x
                x = ft3 - f3[v]
                if x > h:
                    h = x
                x = b0[v] - bt0
                if x > h:
                    h = x
                x = b1[v] - bt1
                if x > h:
                    h = x
                x = b2[v] - bt2
                if x > h:
                    h = x
                x = b3[v] - bt3
                if x > h:
                    h = x
                return h if h > 0.0 else 0.0

            potential = potential4
        else:
            potential = self._potential(targets, active)
        for k, (node, cost) in enumerate(seeds):
            if cost < dist.get(node, _INF):
                h = potential(node)
                if h >= _UNREACHABLE:
                    continue
                hcache[node] = h
                dist[node] = cost
                seed_of[node] = k
                push(heap, (cost + h, node))
        settled: set[int] = set()
        while heap:
            key, u = pop(heap)
            if key >= best:
                break
            if u in settled:
                continue
            settled.add(u)
            du = dist[u]
            reached = tails.get(u)
            if reached is not None:
                total = du + reached[0]
                if total < best:
                    best, best_end, best_direct = total, u, -1
                    if single:
                        break
            for seg, v in out[u]:
                nd = du + w[seg]
                if nd < dist.get(v, _INF):
                    hv = hcache.get(v)
                    if hv is None:
                        hv = hcache[v] = potential(v)
                    if hv >= _UNREACHABLE:
                        continue
                    dist[v] = nd
                    pred[v] = seg
                    push(heap, (nd + hv, v))
        if best == _INF:
            return None
        if best_direct >= 0:
            return _Found(best, [], best_direct, best_direct, True)
        segs: list[int] = []
        node = best_end
        while node in pred:
            seg = pred[node]
            segs.append(seg)
            node = seg_from[seg]
        segs.reverse()
        return _Found(best, segs, seed_of[node], tails[best_end][1])

    # --- queries ---

    def fastest(self, from_node: int, to_node: int, weights: Weights) -> Route | None:
        """The fastest route between two graph nodes (OSM ids), or None if there is none."""
        w = self._times(weights)
        s = self.network._node_idx(from_node)
        t = self.network._node_idx(to_node)
        if s == t:
            lonlat = self._node_lonlat[s]
            return Route((), 0.0, 0.0, (lonlat, lonlat))
        if self._use_alt(s, t):
            found = self._search(w, ((s, 0.0),), ((t, 0.0),))
            if found is None:
                return None
            segs = found.segments
        else:
            dist, pred = self._whole_graph(weights, (s,))
            if not math.isfinite(dist[0, t]):
                return None
            segs = self._segments_from_pred(weights, pred[0], s, t)
        coords: list[tuple[float, float]] = [self._segments[segs[0]].coords[0]]
        for i in segs:
            coords.extend(self._segments[i].coords[1:])
        return Route(
            tuple(self._seg_ids[i] for i in segs),
            sum(w[i] for i in segs),
            sum(self._length_m[i] for i in segs),
            tuple(coords),
        )

    def fastest_many(self, pairs: Sequence[tuple[int, int]], weights: Weights) -> list[float]:
        """Fastest travel time (s) for each (from node, to node) pair; inf where none."""
        w = self._times(weights)
        node_idx = self.network._node_idx
        result: list[float] = [0.0] * len(pairs)
        far: dict[int, list[tuple[int, int]]] = {}  # source -> (pair position, target)
        for k, (a, b) in enumerate(pairs):
            s, t = node_idx(a), node_idx(b)
            if s == t:
                continue
            if self._use_alt(s, t):
                found = self._search(w, ((s, 0.0),), ((t, 0.0),))
                result[k] = _INF if found is None else found.cost
            else:
                far.setdefault(s, []).append((k, t))
        sources = list(far)
        for i in range(0, len(sources), _SOURCES_PER_BATCH):
            batch = sources[i : i + _SOURCES_PER_BATCH]
            dist, _ = self._whole_graph(weights, batch)
            for row, s in enumerate(batch):
                for k, t in far[s]:
                    result[k] = float(dist[row, t])
        return result

    def travel_time(self, segment_ids: Iterable[str], weights: Weights) -> float:
        """Travel time (s) of driving these whole segments (inf if one is closed)."""
        w = self._times(weights)
        index = self.segment_index
        return sum((w[index(s)] for s in segment_ids), 0.0)

    def route(
        self,
        from_lonlat: tuple[float, float],
        to_lonlat: tuple[float, float],
        weights: Weights,
        *,
        alternatives: int = 0,
        avoid: Collection[str] = (),
        snap_radius_m: float = 200.0,
    ) -> list[Route]:
        """Fastest route between two points snapped to the road, then up to N alternatives.

        Alternatives by the penalty method: the segments of the routes found so far cost 1.4
        times more and the search runs again; a candidate is kept if it shares less than 70 %
        of its length with every kept route and takes at most 1.5 times the fastest's time.
        Times reported are true times under ``weights``. ``avoid``: segments not to use.
        NoRouteError if no route exists; RoadNetworkError if a point is off the road network.
        """
        if alternatives < 0:
            raise RoadNetworkError("alternatives must be >= 0")
        w = self._times(weights)
        if avoid:
            w = list(w)
            for i in self.segment_indices(avoid).tolist():
                w[i] = _INF
        starts = self._snap(from_lonlat, snap_radius_m, "start")
        ends = self._snap(to_lonlat, snap_radius_m, "end")
        whole: tuple[Any, np.ndarray] | None = None
        s0 = self._seg_to[self._seg_index[starts[0].segment_id]]
        t0 = self._seg_from[self._seg_index[ends[0].segment_id]]
        if not self._use_alt(s0, t0):
            matrix, arc_seg = self._csr(weights)
            if avoid:
                matrix = matrix.copy()
                matrix.data[np.isin(arc_seg, self.segment_indices(avoid))] = _INF
            whole = (matrix, arc_seg)
        first = self._route_once(w, starts, ends, whole)
        if first is None:
            raise NoRouteError(
                f"no route from ({from_lonlat[0]:.6f}, {from_lonlat[1]:.6f}) "
                f"to ({to_lonlat[0]:.6f}, {to_lonlat[1]:.6f})"
            )
        routes = [first]
        if alternatives:
            routes.extend(self._alternatives(w, starts, ends, first, alternatives, whole))
        return [self._to_route(r, w, starts, ends) for r in routes]

    # --- snapping, partial segments and alternatives ---

    def _snap(self, lonlat: tuple[float, float], radius_m: float, what: str) -> list[Candidate]:
        lon, lat = lonlat
        if not (math.isfinite(lon) and math.isfinite(lat)) or not radius_m > 0.0:
            raise RoadNetworkError(f"bad {what} point {lonlat!r} or snap radius {radius_m!r}")
        r = min(_FIRST_SNAP_RADIUS_M, radius_m)
        while True:
            cands = self.network.nearest(lon, lat, radius_m=r, k=8)
            if cands:
                break
            if r >= radius_m:
                raise RoadNetworkError(
                    f"{what} point ({lon:.6f}, {lat:.6f}) is farther than {radius_m:g} m "
                    "from any road"
                )
            r = min(radius_m, 2.0 * r)
        limit = cands[0].distance_m + _SNAP_TIE_M
        return [c for c in cands if c.distance_m <= limit]

    def _part(self, w: list[float], seg: int, a_m: float, b_m: float) -> float:
        """Travel time of the stretch [a_m, b_m] of a segment."""
        t = w[seg]
        length = self._length_m[seg]
        if t == _INF:
            return _INF
        if length <= 0.0:
            return 0.0
        return t * max(0.0, min(b_m, length) - max(0.0, a_m)) / length

    def _route_once(
        self,
        w: list[float],
        starts: list[Candidate],
        ends: list[Candidate],
        whole: tuple[Any, np.ndarray] | None = None,
        limit: float = _INF,
    ) -> _Found | None:
        index = self._seg_index
        seeds = []
        for c in starts:
            i = index[c.segment_id]
            seeds.append((self._seg_to[i], self._part(w, i, c.offset_m, _INF)))
        targets = []
        for c in ends:
            i = index[c.segment_id]
            targets.append((self._seg_from[i], self._part(w, i, 0.0, c.offset_m)))
        direct = []
        pairs = []
        for si, c in enumerate(starts):
            for ei, d in enumerate(ends):
                if c.segment_id == d.segment_id and d.offset_m >= c.offset_m:
                    direct.append(self._part(w, index[c.segment_id], c.offset_m, d.offset_m))
                    pairs.append((si, ei))
        seeds_ok = [(n, c) for n, c in seeds if c != _INF]
        targets_ok = [(n, c) for n, c in targets if c != _INF]
        keep_s = [k for k, (_, c) in enumerate(seeds) if c != _INF]
        keep_t = [k for k, (_, c) in enumerate(targets) if c != _INF]
        if whole is None:
            found = self._search(w, seeds_ok, targets_ok, direct)
        else:
            found = self._search_whole(whole, seeds_ok, targets_ok, direct, limit)
        if found is None:
            return None
        if found.direct:
            si, ei = pairs[found.start]
            return _Found(found.cost, [index[starts[si].segment_id]], si, ei)
        si, ei = keep_s[found.start], keep_t[found.end]
        segs = [index[starts[si].segment_id], *found.segments, index[ends[ei].segment_id]]
        return _Found(found.cost, segs, si, ei)

    def _search_whole(
        self,
        whole: tuple[Any, np.ndarray],
        seeds: Sequence[tuple[int, float]],
        targets: Sequence[tuple[int, float]],
        direct: Sequence[float],
        limit: float = _INF,
    ) -> _Found | None:
        """`_search` by scipy's Dijkstra over the whole graph, one run per seed node.

        ``limit``: a cost some route is known to have; nodes beyond it are not explored.
        """
        import scipy.sparse as sp
        from scipy.sparse.csgraph import dijkstra

        best, best_k = min(((c, k) for k, c in enumerate(direct)), default=(_INF, -1))
        if not seeds or not targets:
            return None if best == _INF else _Found(best, [], best_k, best_k, True)
        if len(seeds) == 1:
            sn, sc = seeds[0]
            dist, pred = dijkstra(whole[0], indices=sn, return_predecessors=True,
                                  limit=max(0.0, limit - sc))
            pick: tuple[int, int] | None = None
            for ti, (tn, tc) in enumerate(targets):
                total = sc + float(dist[tn]) + tc
                if total < best:
                    best, pick = total, (0, ti)
            if best == _INF:
                return None
            if pick is None:
                return _Found(best, [], best_k, best_k, True)
            tn = targets[pick[1]][0]
            return _Found(best, self._segments_from_pred(whole, pred, sn, tn), 0, pick[1])
        # Several seeds (a road's two directions): one search from a virtual source joined to
        # each seed by its starting cost, instead of one whole-graph search per seed.
        matrix = whole[0]
        n = matrix.shape[0]
        cost_of: dict[int, float] = {}
        for node, c in seeds:
            cost_of[node] = min(c, cost_of.get(node, _INF))
        cols = np.array(sorted(cost_of), dtype=np.int32)
        data = np.array([max(cost_of[c], 1e-12) for c in cols.tolist()])
        augmented = sp.csr_matrix(
            (np.concatenate([matrix.data, data]), np.concatenate([matrix.indices, cols]),
             np.concatenate([matrix.indptr, [matrix.indptr[-1] + len(cols)]]).astype(np.int32)),
            shape=(n + 1, n + 1))
        dist, pred = dijkstra(augmented, indices=n, return_predecessors=True, limit=limit)
        pick = None
        for ti, (tn, tc) in enumerate(targets):
            total = float(dist[tn]) + tc
            if total < best:
                best, pick = total, (-1, ti)
        if best == _INF:
            return None
        if pick is None:
            return _Found(best, [], best_k, best_k, True)
        tn = targets[pick[1]][0]
        first = tn
        while int(pred[first]) != n:
            first = int(pred[first])
        segs = self._segments_from_pred(whole, pred, first, tn)
        si = min((k for k, (node, _) in enumerate(seeds) if node == first),
                 key=lambda k: seeds[k][1])
        return _Found(best, segs, si, pick[1])

    def _driven(self, r: _Found, starts: list[Candidate], ends: list[Candidate]
                ) -> list[tuple[int, float, float]]:
        """(segment, from m, to m) of each piece driven."""
        a = starts[r.start].offset_m
        b = ends[r.end].offset_m
        if len(r.segments) == 1:
            return [(r.segments[0], a, b)]
        out = [(r.segments[0], a, self._length_m[r.segments[0]])]
        out.extend((s, 0.0, self._length_m[s]) for s in r.segments[1:-1])
        out.append((r.segments[-1], 0.0, b))
        return out

    def _alternatives(self, w: list[float], starts: list[Candidate], ends: list[Candidate],
                      first: _Found, count: int, whole: tuple[Any, np.ndarray] | None
                      ) -> list[_Found]:
        kept = [first]
        kept_sets = [self._piece_lengths(first, starts, ends)]
        penalised = list(w)
        pen_matrix = None
        entry = np.full(len(w), -1, dtype=np.int64)
        if whole is not None:
            # Only the penalised searches use this matrix, and their times are recomputed
            # under the true weights: a parallel segment left out of it costs no exactness.
            pen_matrix = whole[0].copy()
            entry[whole[1]] = np.arange(len(whole[1]))
        found = first
        for _ in range(3 * count):
            for s in found.segments:
                penalised[s] *= _ALT_PENALTY
            if pen_matrix is not None:
                at = entry[found.segments]
                pen_matrix.data[at[at >= 0]] *= _ALT_PENALTY
            # The last route, penalised again, bounds the next search: a route costing that
            # exists, so nothing farther needs exploring.
            known = sum(self._part(penalised, s, a, b)
                        for s, a, b in self._driven(found, starts, ends))
            cand = self._route_once(
                penalised, starts, ends,
                None if pen_matrix is None or whole is None else (pen_matrix, whole[1]),
                limit=known * (1.0 + 1e-9),
            )
            if cand is None:
                break
            true_s = sum(self._part(w, s, a, b) for s, a, b in self._driven(cand, starts, ends))
            cand = _Found(true_s, cand.segments, cand.start, cand.end)
            found = cand
            if true_s > _ALT_MAX_STRETCH * first.cost:
                continue
            pieces = self._piece_lengths(cand, starts, ends)
            total = sum(pieces.values())
            if total <= 0.0:
                continue
            if all(
                sum(m for s, m in pieces.items() if s in other) < _ALT_MAX_SHARED * total
                for other in kept_sets
            ):
                kept.append(cand)
                kept_sets.append(pieces)
                if len(kept) > count:
                    break
        kept = kept[1:]
        kept.sort(key=lambda r: r.cost)
        return kept

    def _piece_lengths(self, r: _Found, starts: list[Candidate], ends: list[Candidate]
                       ) -> dict[int, float]:
        out: dict[int, float] = {}
        for s, a, b in self._driven(r, starts, ends):
            out[s] = out.get(s, 0.0) + max(0.0, b - a)
        return out

    def _to_route(self, r: _Found, w: list[float], starts: list[Candidate],
                  ends: list[Candidate]) -> Route:
        pieces = self._driven(r, starts, ends)
        coords: list[tuple[float, float]] = []
        for s, a, b in pieces:
            part = _cut(self._segments[s].coords, a, b)
            coords.extend(part[1:] if coords and coords[-1] == part[0] else part)
        c, d = starts[r.start], ends[r.end]
        return Route(
            tuple(self._seg_ids[s] for s in r.segments),
            sum(self._part(w, s, a, b) for s, a, b in pieces),
            sum(max(0.0, min(b, self._length_m[s]) - max(0.0, a)) for s, a, b in pieces),
            tuple(coords),
            Snap(c.segment_id, c.offset_m, c.distance_m, c.lon, c.lat),
            Snap(d.segment_id, d.offset_m, d.distance_m, d.lon, d.lat),
        )

    # --- networkx, for analysis and as a test oracle ---

    def nx_graph(self, weights: Weights) -> nx.MultiDiGraph:
        """A copy of the network's graph with ``travel_time_s`` per edge; closed ones left out."""
        w = self._times(weights)
        g = self.network.graph.copy()
        index = self._seg_index
        closed = []
        for u, v, key, data in g.edges(keys=True, data=True):
            t = w[index[key]]
            if t == _INF:
                closed.append((u, v, key))
            else:
                data["travel_time_s"] = t
        g.remove_edges_from(closed)
        return g


def _cut(coords: Sequence[tuple[float, float]], a_m: float, b_m: float
         ) -> list[tuple[float, float]]:
    """The part of a polyline from a_m to b_m along it (haversine metres, as lengths are)."""
    out: list[tuple[float, float]] = []
    acc = 0.0
    for p, q in pairwise(coords):
        d = haversine_m(p[0], p[1], q[0], q[1])
        lo, hi = acc, acc + d
        if hi >= a_m and lo <= b_m:
            for x in (max(a_m, lo), min(b_m, hi)):
                f = 0.0 if d <= 0.0 else (x - lo) / d
                pt = (p[0] + (q[0] - p[0]) * f, p[1] + (q[1] - p[1]) * f)
                if not out or out[-1] != pt:
                    out.append(pt)
        acc = hi
    if not out:
        end = coords[0] if a_m <= 0.0 else coords[-1]
        out = [end]
    if len(out) == 1:
        out.append(out[0])
    return out
