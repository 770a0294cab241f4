"""The one resumable, target-bounded Dijkstra every router in the project runs on.

`ShortestPaths` searches a directed graph given as arcs (from node, to node, cost) over nodes
``0..n-1``. A search from a source settles nodes lazily, up to a target or a cost bound, and is
kept (an LRU of searches per source node, behind a lock) so the next query from the same source
resumes it instead of starting over: map matching keeps asking from the same few nodes, which
makes this an on-demand version of FMM's upper-bounded origin-destination table. With a second
per-arc array (``arc_metres``) a search also reports the metres of each cheapest route, for
costs that are not lengths (a penalty per ramp, travel times).

Pausing happens before a pop (bound) or right after the target's arcs are relaxed, so a resumed
search is in exactly the state a fresh one would reach: cached or not, answers are identical.
Ties are broken by node index (the heap holds ``(cost, node)``), which callers may rely on.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence

__all__ = ["SearchState", "ShortestPaths"]

_INF = math.inf


class SearchState:
    """Resumable single-source search state: settles nodes lazily, up to any bound."""

    __slots__ = ("dist", "heap", "length", "pred", "settled")

    def __init__(self, seeds: Iterable[tuple[int, float]]) -> None:
        self.dist: dict[int, float] = {}
        # Metres of the cheapest route to each settled node (only with arc_metres).
        self.length: dict[int, float] = {}
        self.pred: dict[int, int] = {}
        self.heap: list[tuple[float, int]] = []
        self.settled: set[int] = set()
        for node, cost in seeds:
            if cost < self.dist.get(node, _INF):
                self.dist[node] = cost
                self.heap.append((cost, node))
        heapq.heapify(self.heap)


class ShortestPaths:
    """Cheapest routes over arcs with a per-arc cost, searches cached per source node.

    ``arc_cost`` must be non-negative; an arc costing inf is never taken. Thread-safe: the cache
    and every search are guarded by one lock (searches are short and bounded).
    """

    def __init__(
        self,
        n_nodes: int,
        arc_from: Sequence[int],
        arc_to: Sequence[int],
        arc_cost: Sequence[float],
        *,
        arc_metres: Sequence[float] | None = None,
        cache_sources: int = 512,
    ) -> None:
        if not len(arc_from) == len(arc_to) == len(arc_cost):
            raise ValueError("arc_from, arc_to and arc_cost must have the same length")
        if arc_metres is not None and len(arc_metres) != len(arc_cost):
            raise ValueError("arc_metres must have one value per arc")
        self.n_nodes = n_nodes
        self.arc_from: list[int] = list(arc_from)
        self.arc_to: list[int] = list(arc_to)
        self.arc_cost: list[float] = list(arc_cost)
        self.arc_metres: list[float] | None = None if arc_metres is None else list(arc_metres)
        # Adjacency as plain tuples: the inner loop then touches no objects.
        out: list[list[tuple[int, int, float]]] = [[] for _ in range(n_nodes)]
        for i, (a, b, c) in enumerate(zip(self.arc_from, self.arc_to, self.arc_cost, strict=True)):
            if c != _INF:
                out[a].append((i, b, c))
        self._out = out
        self._cache_sources = cache_sources
        self._searches: OrderedDict[int, SearchState] = OrderedDict()
        self._lock = threading.Lock()

    # --- cached single-source queries ---

    def costs(
        self, source: int, targets: Collection[int], bound: float = _INF
    ) -> list[tuple[float, float]]:
        """(cost, metres) of the cheapest route from ``source`` to each target, in order.

        (inf, inf) for a target costing more than ``bound``; metres equal cost when the graph
        has no ``arc_metres``.
        """
        with self._lock:
            search = self._cached(source)
            settled = search.settled
            missing = {t for t in targets if t not in settled}
            if missing:
                self.advance(search, missing, bound)
            dist = search.dist
            length = search.length if self.arc_metres is not None else dist
            return [
                (dist[t], length[t]) if t in settled and dist[t] <= bound else (_INF, _INF)
                for t in targets
            ]

    def cost(self, source: int, target: int, bound: float = _INF) -> float:
        """Cost of the cheapest route from ``source`` to ``target`` (inf beyond ``bound``)."""
        return self.costs(source, (target,), bound)[0][0]

    def path(self, source: int, target: int, bound: float = _INF) -> list[int] | None:
        """Arcs of the cheapest route from ``source`` to ``target``; None if none within bound.

        A target already settled by an earlier, longer search is answered whatever the bound.
        """
        if source == target:
            return []
        with self._lock:
            search = self._searches.get(source)
            if search is None:
                # Not cached: one-off (often unbounded) queries would evict the searches that
                # repeated bounded queries resume.
                search = SearchState(((source, 0.0),))
            if target not in search.settled:
                self.advance(search, {target}, bound)
                if target not in search.settled:
                    return None
            return self.arcs_to(search, target)

    def cached_sources(self) -> int:
        """Number of source nodes with a cached search (at most ``cache_sources``)."""
        return len(self._searches)

    def _cached(self, source: int) -> SearchState:
        searches = self._searches
        search = searches.get(source)
        if search is None:
            search = SearchState(((source, 0.0),))
            searches[source] = search
            if len(searches) > self._cache_sources:
                searches.popitem(last=False)
        else:
            searches.move_to_end(source)
        return search

    # --- the search itself ---

    def first_reached(
        self, seeds: Iterable[tuple[int, float]], targets: Collection[int], bound: float = _INF
    ) -> tuple[int, float, list[int]] | None:
        """Uncached search from several seeded nodes to whichever target is cheapest.

        Returns ``(target, cost, arcs)`` (arcs from the seed the route starts at), or None.
        """
        search = SearchState(seeds)
        target_set = set(targets)
        reached = self.advance(search, target_set, bound, stop_at_first=True)
        if reached is None:
            return None
        return reached, search.dist[reached], self.arcs_to(search, reached)

    def arcs_to(self, search: SearchState, node: int) -> list[int]:
        """Arcs of the settled route to ``node`` in a search, first arc first."""
        arcs: list[int] = []
        pred = search.pred
        arc_from = self.arc_from
        while node in pred:
            arc = pred[node]
            arcs.append(arc)
            node = arc_from[arc]
        arcs.reverse()
        return arcs

    def advance(
        self,
        search: SearchState,
        targets: set[int],
        bound: float,
        *,
        stop_at_first: bool = False,
    ) -> int | None:
        """Settle nodes until every target (or, with stop_at_first, one) is settled or beyond
        ``bound``; consumes ``targets``. Returns the last target settled, if any."""
        heap, dist, pred, settled = search.heap, search.dist, search.pred, search.settled
        out = self._out
        pop, push = heapq.heappop, heapq.heappush
        metres = self.arc_metres
        length = search.length
        arc_from = self.arc_from
        while heap and heap[0][0] <= bound:
            d, node = pop(heap)
            if node in settled:
                continue
            settled.add(node)
            if metres is not None:
                via = pred.get(node)
                length[node] = 0.0 if via is None else length[arc_from[via]] + metres[via]
            for arc, nxt, cost in out[node]:
                nd = d + cost
                if nd < dist.get(nxt, _INF):
                    dist[nxt] = nd
                    pred[nxt] = arc
                    push(heap, (nd, nxt))
            if node in targets:
                targets.discard(node)
                if stop_at_first or not targets:
                    return node
        return None
