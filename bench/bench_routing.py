"""Fastest routes under live weights at ~100k segments: ours against networkx, same pairs.

Network: the demo region at ``SIZE_100K`` (>= 100,000 directed segments), generated in a temp
dir. Live weights: 20 % of the segments slowed to 20-90 % of free flow and 20 closed, by a
seeded RNG. Pairs: 1,000 origin-destination nodes drawn uniformly (fixed seed) from the largest
strongly connected component of the live graph.

- ``fastest`` (node to node, no snapping) per query, against ``networkx.bidirectional_dijkstra``
  on ``nx_graph(weights)`` (the baseline; timed on a subset, it is slow). Travel times must
  agree within 1e-6 s for every pair of the subset and ``fastest_many`` must agree with
  ``fastest`` on all pairs: the script exits 1 otherwise;
- ``route()`` from random points near roads (snapping, partial first/last segments) with 2
  alternatives;
- a full weight update: ``weights_from_speeds`` for every segment.

Targets: fastest p50 <= 5 ms, p99 <= 20 ms; route with 2 alternatives p50 <= 25 ms; full update
<= 1 s.

Usage: ``.venv/bin/python bench/bench_routing.py [--size 48] [--pairs 1000] [--baseline 200]
[--routes 200] [--seed 42]`` (about a minute).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import networkx as nx

from shared.demo import SIZE_100K, generate_demo_region
from shared.roadnet import NoRouteError, RoadNetwork, RoutingGraph

M_PER_DEG = 111_195.0


def _pct(samples_s: Sequence[float], q: float) -> float:
    ordered = sorted(samples_s)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q) - 1))] * 1e3


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE_100K)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=200, help="pairs timed with networkx")
    parser.add_argument("--routes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        generate_demo_region(Path(tmp), size=args.size)
        net = RoadNetwork.from_osm(Path(tmp) / "demo.osm")
    start = time.perf_counter()
    graph = RoutingGraph(net)
    build_s = time.perf_counter() - start
    ids = list(net.segments)
    print(f"network: demo size {args.size}, {len(ids):,} directed segments, "
          f"{graph.n_nodes:,} nodes; RoutingGraph built in {build_s:.2f} s "
          f"({len(graph.landmark_nodes())} landmarks)")

    slowed = rng.sample(ids, len(ids) // 5)
    speeds = {s: net.segments[s].free_flow_kmh * rng.uniform(0.2, 0.9) for s in slowed}
    weights = graph.weights_from_speeds(speeds).with_closed(rng.sample(ids, 20))
    all_speeds = {s: seg.free_flow_kmh * rng.uniform(0.2, 1.0) for s, seg in net.segments.items()}
    start = time.perf_counter()
    graph.weights_from_speeds(all_speeds)
    update_s = time.perf_counter() - start

    g = graph.nx_graph(weights)
    main_scc = sorted(max(nx.strongly_connected_components(g), key=len))
    pairs = [(rng.choice(main_scc), rng.choice(main_scc)) for _ in range(args.pairs)]

    ours_s: list[float] = []
    ours_tt: list[float] = []
    for a, b in pairs:
        t0 = time.perf_counter()
        route = graph.fastest(a, b, weights)
        ours_s.append(time.perf_counter() - t0)
        ours_tt.append(math.inf if route is None else route.travel_time_s)
    many = graph.fastest_many(pairs, weights)
    base_pairs = pairs[: args.baseline]
    base_s: list[float] = []
    max_diff = 0.0
    for (a, b), ours in zip(base_pairs, ours_tt, strict=False):
        t0 = time.perf_counter()
        ref, _ = nx.bidirectional_dijkstra(g, a, b, weight="travel_time_s")
        base_s.append(time.perf_counter() - t0)
        max_diff = max(max_diff, abs(ref - ours))
    many_diff = max(abs(x - y) for x, y in zip(many, ours_tt, strict=True))

    segments = list(net)
    route_s: list[float] = []
    n_alts: list[int] = []
    no_route = 0
    for _ in range(args.routes):
        ends = []
        for _ in range(2):
            seg = rng.choice(segments)
            (lon1, lat1), (lon2, lat2) = seg.coords[0], seg.coords[-1]
            f = rng.random()
            dx = rng.uniform(-20, 20) / (M_PER_DEG * math.cos(math.radians(lat1)))
            dy = rng.uniform(-20, 20) / M_PER_DEG
            ends.append((lon1 + (lon2 - lon1) * f + dx, lat1 + (lat2 - lat1) * f + dy))
        t0 = time.perf_counter()
        try:
            routes = graph.route(ends[0], ends[1], weights, alternatives=2)
        except NoRouteError:
            no_route += 1
            routes = []
        route_s.append(time.perf_counter() - t0)
        n_alts.append(max(0, len(routes) - 1))

    o50, o90, o99 = (_pct(ours_s, q) for q in (0.5, 0.9, 0.99))
    b50, b90, b99 = (_pct(base_s, q) for q in (0.5, 0.9, 0.99))
    print(f"\nfastest, node to node, live weights, {len(pairs):,} pairs "
          f"(networkx on the first {len(base_pairs)})")
    print(f"  {'':<36} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
    print(f"  {'ours RoutingGraph.fastest':<36} {o50:9.2f} {o90:9.2f} {o99:9.2f}")
    print(f"  {'networkx bidirectional_dijkstra':<36} {b50:9.2f} {b90:9.2f} {b99:9.2f}")
    print(f"  {'speed-up (networkx / ours)':<36} {b50 / o50:8.1f}x {b90 / o90:8.1f}x "
          f"{b99 / o99:8.1f}x")
    print(f"  max |travel time ours - networkx| = {max_diff:.3g} s; "
          f"fastest_many vs fastest: {many_diff:.3g} s")
    r50, r99 = _pct(route_s, 0.5), _pct(route_s, 0.99)
    print(f"\nroute() with snapping and 2 alternatives, {args.routes} random point pairs")
    print(f"  p50 {r50:.2f} ms   p99 {r99:.2f} ms   alternatives found: "
          f"{sum(n_alts) / len(n_alts):.2f} per query; no route: {no_route}")
    print(f"\nfull weight update (weights_from_speeds, {len(all_speeds):,} segments): "
          f"{update_s * 1e3:.0f} ms")
    print("\ntargets: fastest p50 <= 5 ms, p99 <= 20 ms; route+2 alternatives p50 <= 25 ms; "
          "update <= 1 s")
    if max_diff > 1e-6 or many_diff > 1e-6 or math.isnan(max_diff):
        print(f"FAIL: travel times differ from networkx by up to {max_diff:.3g} s "
              f"(fastest_many by {many_diff:.3g} s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
