"""Live routing over the one road graph (``shared/roadnet``): answers, detours and impact.

One writer (`LiveRouting.refresh`, called once per speed window) builds an immutable `Weights`
snapshot — live speeds, the time-of-week profile where there is none, free flow last — and swaps
it in; queries read whichever snapshot is current, off the event loop. For a warning's blocked
stretch it finds the detour (the fastest way from the road before it to the road after it with
the stretch closed) and the impact: the bus routes whose path uses the stretch, and over a fixed
sample of origin–destination pairs (drawn once, uniformly, from the largest strongly connected
component) those whose fastest travel time rises by more than 20 % and 2 minutes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import networkx as nx
from prometheus_client import Histogram

from shared.clock import Clock
from shared.events import Detour, Impact, Warning
from shared.roadnet import RoadNetwork
from shared.roadnet.routing import Route, RoutingGraph, Weights

log = logging.getLogger("tti.warning.routing")

AFFECTED_RATIO = 1.2
AFFECTED_MIN_S = 120.0
OD_SAMPLE = 200

ROUTE_SECONDS = Histogram("tti_warning_route_seconds", "Time to answer a route query",
                          buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


def od_sample(network: RoadNetwork, n: int, *, seed: int = 7) -> list[tuple[int, int]]:
    """``n`` node pairs drawn uniformly (fixed seed) from the largest strongly connected part."""
    graph = network.graph
    biggest: set[int] = max(nx.strongly_connected_components(graph), key=len, default=set())
    nodes = sorted(biggest)
    if len(nodes) < 2:
        return []
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        a, b = rng.choice(nodes), rng.choice(nodes)
        if a != b:
            pairs.append((a, b))
    return pairs


class LiveRouting:
    """The routing graph, the current weights snapshot, and the analyses built on them."""

    def __init__(self, network: RoadNetwork, graph: RoutingGraph, *, clock: Clock,
                 od_pairs: Sequence[tuple[int, int]] = ()) -> None:
        self.network = network
        self.graph = graph
        self.clock = clock
        self.weights: Weights = graph.weights(as_of=None)
        self.od_pairs = list(od_pairs)
        self.bus_routes: dict[str, frozenset[str]] = {}
        self._baseline: tuple[Weights, list[Route | None]] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def build(cls, network: RoadNetwork, *, clock: Clock,
                    od_pairs: int = OD_SAMPLE) -> LiveRouting:
        """Build the graph (landmarks) and the O–D sample off the event loop."""
        graph = await asyncio.to_thread(RoutingGraph, network)
        pairs = await asyncio.to_thread(od_sample, network, od_pairs)
        return cls(network, graph, clock=clock, od_pairs=pairs)

    async def refresh(self, live_kmh: Mapping[str, float], profile_kmh: Mapping[str, float],
                      as_of: datetime, *, closed: Collection[str] = ()) -> Weights:
        """Swap in a snapshot from live speeds, profiles where none (free flow last).

        ``closed``: segments closed by a warning (a department's closure): routes avoid them.
        """
        speeds = {**profile_kmh, **live_kmh}
        known = [s for s in closed if s in self.network]

        def build() -> Weights:
            weights = self.graph.weights_from_speeds(speeds, as_of=as_of)
            return weights.with_closed(known) if known else weights

        weights = await asyncio.to_thread(build)
        self.weights = weights
        return weights

    async def route(self, origin: tuple[float, float], destination: tuple[float, float], *,
                    alternatives: int = 0) -> tuple[list[Route], Weights]:
        """Fastest route between two points and up to ``alternatives`` others, and the weights."""
        weights = self.weights
        started = self.clock.monotonic()
        routes = await asyncio.to_thread(self.graph.route, origin, destination, weights,
                                         alternatives=alternatives)
        ROUTE_SECONDS.observe(self.clock.real_seconds(self.clock.monotonic() - started))
        return routes, weights

    async def analyse(self, warning: Warning) -> tuple[Detour | None, Impact | None]:
        """Detour around a warning's segments, and who it affects (run off the loop)."""
        blocked = [s for s in warning.segment_ids if s in self.network]
        if not blocked:
            return None, None
        async with self._lock:  # one analysis at a time: they share the baseline cache
            return await asyncio.to_thread(self._analyse, blocked)

    def _analyse(self, blocked: list[str]) -> tuple[Detour | None, Impact | None]:
        weights = self.weights
        closed = weights.with_closed(blocked)
        first = self.network.get_segment(blocked[0])
        last = self.network.get_segment(blocked[-1])
        usual = self.graph.travel_time(blocked, self.graph.weights())
        detour = None
        way_round = self.graph.fastest(first.from_node, last.to_node, closed)
        if way_round is not None:
            detour = Detour(segment_ids=way_round.segment_ids,
                            travel_time_s=round(way_round.travel_time_s, 1),
                            length_m=round(way_round.length_m, 1),
                            usual_travel_time_s=round(usual, 1), coords=way_round.coords)
        stretch = set(blocked)
        buses = tuple(sorted(r for r, segs in self.bus_routes.items() if segs & stretch))
        baseline = self._baseline_routes(weights)
        affected = 0
        worst = 0.0
        for (a, b), before in zip(self.od_pairs, baseline, strict=True):
            if before is None or not stretch.intersection(before.segment_ids):
                continue  # a trip that does not use the stretch is not slowed by closing it
            after = self.graph.fastest(a, b, closed)
            after_s = after.travel_time_s if after is not None else float("inf")
            delay = after_s - before.travel_time_s
            if after_s > before.travel_time_s * AFFECTED_RATIO and delay > AFFECTED_MIN_S:
                affected += 1  # a trip the closure makes impossible counts too
            if after is not None:
                worst = max(worst, delay)
        impact = Impact(bus_routes=buses, trips_sampled=len(self.od_pairs),
                        trips_affected=affected, max_delay_s=round(worst, 1),
                        computed_at=self.clock.now())
        return detour, impact

    def _baseline_routes(self, weights: Weights) -> list[Route | None]:
        if self._baseline is not None and self._baseline[0] is weights:
            return self._baseline[1]
        routes = [self.graph.fastest(a, b, weights) for a, b in self.od_pairs]
        self._baseline = (weights, routes)
        return routes
