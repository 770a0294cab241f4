"""Road network at ~100k segments: build time, nearest(), in_bbox() and shortest_path().

Generates the demo region at `SIZE_100K` (about 100,000 directed segments), loads it with
``RoadNetwork.from_osm`` and measures, each against a naive baseline run in the same process:

- ``nearest`` (50 m, k=8) on GPS-like points (most within 30 m of a road, some anywhere):
  queries/s and p50/p99 latency, vs a linear scan over every segment with shapely (vectorized
  ``shapely.distance`` on all LineStrings, pre-projected to metres) for a few queries;
- ``in_bbox`` on map-viewport boxes (~500 m), vs ``shapely.intersects`` over every segment;
- ``shortest_path`` on map-matching transitions (a segment to the candidates 100-400 m on),
  vs ``networkx.single_source_dijkstra`` with the same target and cutoff.

Usage: ``python bench/bench_roadnet.py [--size 48] [--queries 20000] [--baseline-queries 20]``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import networkx as nx
import numpy as np
import shapely

from shared.demo import SIZE_100K, generate_demo_region
from shared.geo import LocalProjection
from shared.roadnet import RoadNetwork

RADIUS_M = 50.0
K = 8
BOX_M = 500.0
MAX_PATH_M = 2000.0


def _percentiles_us(samples_ns: Sequence[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]
    return p50 / 1000, p99 / 1000


def _timed(calls: Sequence[Callable[[], object]]) -> list[int]:
    samples = []
    for call in calls:
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return samples


def _query_points(net: RoadNetwork, n: int, rng: random.Random) -> list[tuple[float, float]]:
    segments = list(net)
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    points = []
    m_per_deg = 111_195.0
    for q in range(n):
        if q % 5 == 4:
            points.append((rng.uniform(min_lon, max_lon), rng.uniform(min_lat, max_lat)))
            continue
        seg = rng.choice(segments)
        (lon1, lat1), (lon2, lat2) = seg.coords[0], seg.coords[1]
        f = rng.random()
        # GPS noise: up to 30 m in each axis.
        dx = rng.uniform(-30, 30) / (m_per_deg * math.cos(math.radians(lat1)))
        dy = rng.uniform(-30, 30) / m_per_deg
        points.append((lon1 + (lon2 - lon1) * f + dx, lat1 + (lat2 - lat1) * f + dy))
    return points


def _report(name: str, ours: list[int], base: list[int]) -> None:
    o50, o99 = _percentiles_us(ours)
    b50, b99 = _percentiles_us(base)
    print(f"  {name:<28} p50 {o50:10.1f} µs   p99 {o99:10.1f} µs   ({len(ours)} queries)")
    print(f"  {'baseline':<28} p50 {b50:10.1f} µs   p99 {b99:10.1f} µs   ({len(base)} queries)")
    print(f"  {'speed-up (p50 ratio)':<28} {b50 / o50:10.0f} x")


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE_100K)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--baseline-queries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        region = generate_demo_region(Path(tmp), size=args.size)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        net = RoadNetwork.from_osm(region.osm_path)
        build_s = time.perf_counter() - start
    start = time.perf_counter()
    RoadNetwork.from_segments(list(net))
    rebuild_s = time.perf_counter() - start
    start = time.perf_counter()
    graph = net.graph
    graph_s = time.perf_counter() - start

    print(f"demo region size {args.size}: {len(net):,} directed segments")
    print(f"  generate OSM + GTFS          {generate_s:8.2f} s")
    print(f"  RoadNetwork.from_osm         {build_s:8.2f} s  (parse, split, index)")
    print(f"  RoadNetwork.from_segments    {rebuild_s:8.2f} s  (index only)")
    print(f"  networkx graph (lazy)        {graph_s:8.2f} s")

    # Baseline geometry, prepared once outside the timed queries.
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    proj = LocalProjection((min_lon + max_lon) / 2, (min_lat + max_lat) / 2)
    ids = np.array(list(net.segments))
    lines_m = np.array([shapely.LineString([proj.to_xy(*p) for p in seg.coords]) for seg in net])
    lines_deg = np.array([shapely.LineString(seg.coords) for seg in net])

    # --- nearest ---
    points = _query_points(net, args.queries, rng)
    start = time.perf_counter()
    hits = sum(len(net.nearest(lon, lat, radius_m=RADIUS_M, k=K)) for lon, lat in points)
    elapsed = time.perf_counter() - start
    ours = _timed([partial(net.nearest, *p, radius_m=RADIUS_M, k=K) for p in points])

    def linear_nearest(lon: float, lat: float) -> list[str]:
        distance = shapely.distance(lines_m, shapely.Point(*proj.to_xy(lon, lat)))
        within = np.nonzero(distance <= RADIUS_M)[0]
        return ids[within[np.argsort(distance[within], kind="stable")][:K]].tolist()

    sample = points[: args.baseline_queries]
    base = _timed([partial(linear_nearest, *p) for p in sample])
    agree = sum(
        bool(linear_nearest(*p)[:1]) == bool(net.nearest(*p, radius_m=RADIUS_M, k=K)[:1])
        for p in sample
    )
    print(f"\nnearest(radius {RADIUS_M:.0f} m, k={K}) on {len(points):,} GPS-like points")
    print(
        f"  throughput                   {len(points) / elapsed:10,.0f} queries/s"
        f"   ({hits / len(points):.1f} candidates per query)"
    )
    base_qps = len(sample) / (sum(base) / 1e9)
    print(f"  baseline throughput          {base_qps:10,.1f} queries/s (shapely linear scan)")
    _report("nearest latency", ours, base)
    print(f"  baseline agrees on hit/miss  {agree}/{len(sample)}")

    # --- in_bbox ---
    half_lon = BOX_M / 2 / proj.m_per_deg_lon
    half_lat = BOX_M / 2 / proj.m_per_deg_lat
    boxes = [
        (lon - half_lon, lat - half_lat, lon + half_lon, lat + half_lat)
        for lon, lat in points[: max(1000, args.baseline_queries)]
    ]
    ours = _timed([partial(net.in_bbox, *b) for b in boxes])

    def linear_bbox(box: tuple[float, float, float, float]) -> list[str]:
        return ids[shapely.intersects(lines_deg, shapely.box(*box))].tolist()

    base_boxes = boxes[: args.baseline_queries]
    base = _timed([partial(linear_bbox, b) for b in base_boxes])
    found = statistics.mean(len(net.in_bbox(*b)) for b in base_boxes)
    same = sum({s.segment_id for s in net.in_bbox(*b)} == set(linear_bbox(b)) for b in base_boxes)
    print(f"\nin_bbox({BOX_M:.0f} m x {BOX_M:.0f} m viewport), ~{found:.0f} segments per box")
    _report("in_bbox latency", ours, base)
    print(f"  baseline returns same set    {same}/{len(base_boxes)}")

    # --- shortest_path ---
    pairs: list[tuple[str, str]] = []
    segments = list(net)
    while len(pairs) < 2000:
        seg = rng.choice(segments)
        lon, lat = seg.coords[-1]
        ahead = net.nearest(
            lon + rng.uniform(-0.003, 0.003), lat + rng.uniform(-0.003, 0.003), radius_m=60.0, k=K
        )
        pairs.extend((seg.segment_id, c.segment_id) for c in ahead)
    pairs = pairs[:2000]
    fresh = RoadNetwork.from_segments(segments)  # cold cache
    ours = _timed([partial(fresh.shortest_path, a, b, max_length_m=MAX_PATH_M) for a, b in pairs])
    warm = _timed([partial(fresh.shortest_path, a, b, max_length_m=MAX_PATH_M) for a, b in pairs])

    def nx_path(a: str, b: str) -> object:
        source = net.get_segment(a).to_node
        target = net.get_segment(b).from_node
        try:
            return nx.single_source_dijkstra(
                graph, source, target, cutoff=MAX_PATH_M, weight="length_m"
            )
        except nx.NetworkXNoPath:
            return None

    base_pairs = pairs[: max(args.baseline_queries * 10, 200)]
    base = _timed([partial(nx_path, a, b) for a, b in base_pairs])
    agree = 0
    for a, b in base_pairs:
        mine = net.shortest_path(a, b, max_length_m=MAX_PATH_M)
        theirs = nx_path(a, b)
        agree += (mine is None) == (theirs is None) and (
            mine is None or math.isclose(mine[1], theirs[0], abs_tol=1e-6)  # type: ignore[index]
        )
    print(f"\nshortest_path(max {MAX_PATH_M:.0f} m) on {len(pairs):,} map-matching transitions")
    _report("cold cache, ~8 per source", ours, base)
    w50, w99 = _percentiles_us(warm)
    print(f"  {'repeat (cached search)':<28} p50 {w50:10.1f} µs   p99 {w99:10.1f} µs")
    print(f"  baseline agrees on distance  {agree}/{len(base_pairs)}")


if __name__ == "__main__":
    main()
