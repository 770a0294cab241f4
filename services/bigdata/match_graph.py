"""The map matcher's view of the road network: flat topology, routing, projection onto segments.

`MatchGraph` is built once per `RoadNetwork` and shared by every vehicle's matcher
(`services.bigdata.matching`); `directed_road_keys` tells which segments are one road driven one
way (the unit a fix's matching confidence, and the road accuracy of the benchmarks, are about).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections.abc import Hashable, Sequence
from itertools import islice, pairwise

from shared.roadnet import RoadNetwork, ShortestPaths

__all__ = ["M_PER_DEG", "MatchGraph", "directed_road_keys", "planar_m"]

INF = math.inf
M_PER_DEG = 6_371_008.8 * math.pi / 180.0
"""Metres per degree of latitude (mean Earth radius)."""
_UNREACHED = (INF, INF)


def planar_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Equirectangular distance: within 0.1 % of haversine over the few km between fixes."""
    kx = M_PER_DEG * math.cos(math.radians(0.5 * (lat1 + lat2)))
    return math.hypot((lon2 - lon1) * kx, (lat2 - lat1) * M_PER_DEG)


def directed_road_keys(ways: Sequence[Hashable], froms: Sequence[int],
                       tos: Sequence[int]) -> list[int]:
    """Directed road of each segment (given per segment: its way, from node, to node).

    Segments of one way that follow each other (one ends where the next starts, and it is not
    the first one's reverse) are one road; the two directions of a two-way way stay apart. Keys
    are small integers, equal for segments of the same road.
    """
    n = len(ways)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    leaving: dict[int, list[int]] = {}
    for s in range(n):
        leaving.setdefault(froms[s], []).append(s)
    for s in range(n):
        for nxt in leaving.get(tos[s], ()):
            if ways[nxt] == ways[s] and tos[nxt] != froms[s]:
                a, b = find(s), find(nxt)
                if a != b:
                    parent[a] = b
    roots: dict[int, int] = {}
    return [roots.setdefault(find(s), len(roots)) for s in range(n)]


class MatchGraph:
    """The network's topology as flat lists, plus cached routing searches; one per network.

    Build it once per `RoadNetwork` (about 0.1 s per 30,000 segments) and give it to every
    vehicle's `OnlineMatcher`. Routes are costed as length plus ``link_penalty_m`` per ramp
    segment. ``seg_road`` numbers the directed roads (`directed_road_keys`). The search cache
    holds at most ``cache_sources`` source nodes, the answers at most ``cache_pairs`` node pairs;
    both are guarded by locks, so matchers in several threads may share one graph.
    """

    def __init__(self, network: RoadNetwork, *, link_penalty_m: float = 40.0,
                 cache_sources: int = 8192, cache_pairs: int = 1 << 18) -> None:
        self.network = network
        segments = list(network)
        self.seg_ids: list[str] = [s.segment_id for s in segments]
        self.seg_index: dict[str, int] = {sid: i for i, sid in enumerate(self.seg_ids)}
        self.seg_len: list[float] = [s.length_m for s in segments]
        self.seg_free_flow_kmh: list[float] = [s.free_flow_kmh for s in segments]
        self._coords = [s.coords for s in segments]
        ways: dict[str, int] = {}
        self.seg_way: list[int] = [ways.setdefault(str(s.way_id), len(ways)) for s in segments]
        # Cumulative sub-edge lengths, filled on first use (only for segments matched to).
        self._cum: dict[int, list[float]] = {}
        nodes: dict[int, int] = {}
        self.seg_from: list[int] = [nodes.setdefault(s.from_node, len(nodes)) for s in segments]
        self.seg_to: list[int] = [nodes.setdefault(s.to_node, len(nodes)) for s in segments]
        # Directed road of each segment (same way, same direction): what a fix's confidence
        # is about, since the limit, class and name are the way's.
        self.seg_road: list[int] = directed_road_keys(self.seg_way, self.seg_from, self.seg_to)
        self.seg_cost: list[float] = [
            s.length_m + (link_penalty_m if s.road_class.endswith("_link") else 0.0)
            for s in segments]
        self._paths = ShortestPaths(len(nodes), self.seg_from, self.seg_to, self.seg_cost,
                                    arc_metres=self.seg_len, cache_sources=cache_sources)
        self._n_nodes = len(nodes)
        # Node pair (source * n_nodes + target) → (cost, metres) of its cheapest route, or
        # (inf, b) when it costs more than b: consecutive fixes of a vehicle keep asking for
        # the same few pairs, and a dict probe is ~30 times cheaper than a (resumed) search.
        self._pairs: dict[int, tuple[float, float]] = {}
        self._max_pairs = cache_pairs
        self._lock = threading.Lock()

    def costs(self, source: int, targets: list[int],
              bound: float) -> list[tuple[float, float]]:
        """(cost, metres) of the cheapest route from node ``source`` to each target node.

        Cost is length plus the ramp penalties; (inf, inf) for targets beyond ``bound``.
        Answers are the searches' own, kept per node pair (at most ``cache_pairs``).
        """
        pairs = self._pairs
        base = source * self._n_nodes
        out: list[tuple[float, float]] = []
        missing = False
        for t in targets:
            hit = pairs.get(base + t)
            if hit is None:
                missing = True
                break
            cost, metres = hit
            if cost == INF:
                if bound > metres:  # only known to cost more than a smaller bound
                    missing = True
                    break
                out.append(_UNREACHED)
            else:
                out.append(hit if cost <= bound else _UNREACHED)
        if not missing:
            return out
        found = self._paths.costs(source, targets, bound)
        with self._lock:
            if len(pairs) >= self._max_pairs:
                # Forget the older half (dicts keep insertion order).
                for key in list(islice(pairs, len(pairs) // 2)):
                    del pairs[key]
            for t, hit in zip(targets, found, strict=True):
                pairs[base + t] = hit if hit[0] != INF else (INF, bound)
        return found

    def path(self, source: int, target: int, bound: float = INF) -> list[int] | None:
        """Segments of the cheapest route from node source to node target (None if none)."""
        return self._paths.path(source, target, bound)

    def cached_sources(self) -> int:
        """Number of source nodes with a cached search (at most ``cache_sources``)."""
        return self._paths.cached_sources()

    def _cumulative(self, seg: int) -> list[float]:
        cum = self._cum.get(seg)
        if cum is None:
            cum = [0.0]
            for (x1, y1), (x2, y2) in pairwise(self._coords[seg]):
                cum.append(cum[-1] + planar_m(x1, y1, x2, y2))
            self._cum[seg] = cum
        return cum

    def project(self, seg: int, lon: float, lat: float) -> tuple[float, float, float]:
        """(offset, distance, bearing°) of a point's projection onto segment index ``seg``.

        Unlike a `Candidate`'s, the offset is not clamped to the segment: a point beyond an end
        projects onto the extension of the end's sub-edge (offset < 0 or > length).
        """
        coords = self._coords[seg]
        cum = self._cumulative(seg)
        kx = M_PER_DEG * math.cos(math.radians(lat))
        ky = M_PER_DEG
        best = (INF, 0.0, 0.0, 0.0)
        last = len(coords) - 2
        for k, ((x1, y1), (x2, y2)) in enumerate(pairwise(coords)):
            ax, ay = (x1 - lon) * kx, (y1 - lat) * ky
            dx, dy = (x2 - x1) * kx, (y2 - y1) * ky
            ll = dx * dx + dy * dy
            f = 0.0 if ll <= 0.0 else -(ax * dx + ay * dy) / ll
            fc = f if (f < 0.0 and k == 0) or (f > 1.0 and k == last) else min(1.0, max(0.0, f))
            px, py = ax + fc * dx, ay + fc * dy
            d2 = px * px + py * py
            if d2 < best[0]:
                best = (d2, cum[k] + fc * (cum[k + 1] - cum[k]), dx, dy)
        d2, off, dx, dy = best
        return off, math.sqrt(d2), math.degrees(math.atan2(dx, dy)) % 360.0

    def point_at(self, seg: int, offset_m: float) -> tuple[float, float, float]:
        """(lon, lat, bearing°) at ``offset_m`` along segment index ``seg``."""
        cum = self._cumulative(seg)
        coords = self._coords[seg]
        k = min(max(bisect_right(cum, offset_m) - 1, 0), len(coords) - 2)
        (x1, y1), (x2, y2) = coords[k], coords[k + 1]
        d = cum[k + 1] - cum[k]
        f = 0.0 if d <= 0.0 else min(1.0, max(0.0, (offset_m - cum[k]) / d))
        kx = math.cos(math.radians(y1))
        bearing = math.degrees(math.atan2((x2 - x1) * kx, y2 - y1)) % 360.0
        return x1 + (x2 - x1) * f, y1 + (y2 - y1) * f, bearing
