"""Geodatabase benchmark: import, nearest-segment and bbox queries on SQLite and PostGIS.

Builds the demo region at ``SIZE_100K`` (~100,000 directed segments), imports it into each
backend, then times ``nearest_segments`` and ``list_segments(bbox)`` one query at a time (p50,
p99), each against a baseline measured in the same run on the same points: a linear scan of all
segments with vectorised shapely (distance / intersects over 100k lines). Ratios are baseline
time / backend time (higher is better). Nearest answers are checked against the scan.

    .venv/bin/python bench/bench_geodb.py [--size 48] [--queries 1000] [--no-postgis]
        [--pg-dsn postgresql://postgres@127.0.0.1:5432/test]

PostGIS runs in a fresh database created (and dropped) through ``--pg-dsn``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import shapely

from services.bigdata.store import GeoStore, store_from_url
from services.bigdata.store._geo import distances_m, radius_box
from shared.demo import SIZE_100K, generate_demo_region
from shared.roadnet import RoadNetwork, RoadSegment

BOX_M = 500.0  # side of the bbox queries (a map tile at street zoom)


def pct(values: list[float], q: float) -> float:
    """Percentile (q in 0..100) of latencies in seconds, returned in milliseconds."""
    return float(np.percentile(np.asarray(values), q)) * 1000.0


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t0, out


class Baseline:
    """Linear scans over every segment with vectorised shapely (the no-index way)."""

    def __init__(self, segments: list[RoadSegment]) -> None:
        self.ids = [s.segment_id for s in segments]
        self.lines = np.asarray([shapely.LineString(s.coords) for s in segments], dtype=object)

    def nearest(self, lon: float, lat: float) -> tuple[str, float]:
        d = distances_m(lon, lat, self.lines)
        i = int(np.argmin(d))
        return self.ids[i], float(d[i])

    def bbox(self, box: tuple[float, float, float, float]) -> int:
        return int(np.count_nonzero(shapely.intersects(self.lines, shapely.box(*box))))


def sample_points(net: RoadNetwork, n: int, seed: int) -> list[tuple[float, float]]:
    """Points near the roads (where vehicles are): a segment's vertex plus up to ~50 m noise."""
    rng = random.Random(seed)
    segs = list(net)
    out = []
    for _ in range(n):
        lon, lat = rng.choice(rng.choice(segs).coords)
        out.append((lon + rng.uniform(-5e-4, 5e-4), lat + rng.uniform(-5e-4, 5e-4)))
    return out


async def bench_backend(name: str, store: GeoStore, segments: list[RoadSegment],
                        points: list[tuple[float, float]], base: Baseline,
                        base_points: list[tuple[float, float]],
                        base_nearest: list[tuple[str, float]]) -> dict[str, float]:
    await store.open()
    try:
        t_import, _ = await timed(lambda: store.import_segments("bench", uuid.uuid4().hex,
                                                                "bench", segments))
        # Warm up caches and connections before measuring.
        for lon, lat in points[:20]:
            await store.nearest_segments(lon, lat, k=1)
        near_t: list[float] = []
        for lon, lat in points:
            dt, _ = await timed(partial(store.nearest_segments, lon, lat, k=1))
            near_t.append(dt)
        mismatches = 0
        for (lon, lat), (_, ref_d) in zip(base_points, base_nearest, strict=True):
            got = await store.nearest_segments(lon, lat, k=1)
            if not got or abs(got[0].distance_m - ref_d) > max(0.5, ref_d * 3e-3):
                mismatches += 1
        bbox_t: list[float] = []
        counts: list[int] = []
        for lon, lat in points:
            box = radius_box(lon, lat, BOX_M / 2)
            dt, segs = await timed(partial(store.list_segments, box))
            bbox_t.append(dt)
            counts.append(len(segs))
    finally:
        await store.close()
    return {"import_s": t_import, "near_p50": pct(near_t, 50), "near_p99": pct(near_t, 99),
            "bbox_p50": pct(bbox_t, 50), "bbox_p99": pct(bbox_t, 99),
            "bbox_rows": statistics.mean(counts), "mismatches": mismatches}


async def create_pg_database(admin_dsn: str) -> tuple[str, str]:
    import asyncpg

    name = "tbench_" + uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return name, urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))


async def drop_pg_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=SIZE_100K)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--baseline-queries", type=int, default=50)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-postgis", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        region = generate_demo_region(Path(tmp) / "demo", size=args.size)
        net = RoadNetwork.from_osm(region.osm_path)
        segments = list(net)
        print(f"demo region size {args.size}: {len(segments):,} directed segments "
              f"(generated and parsed in {time.perf_counter() - t0:.1f} s)")
        points = sample_points(net, args.queries, seed=1)
        base_points = sample_points(net, args.baseline_queries, seed=2)

        base = Baseline(segments)
        near_b: list[float] = []
        base_nearest = []
        for lon, lat in base_points:
            t = time.perf_counter()
            base_nearest.append(base.nearest(lon, lat))
            near_b.append(time.perf_counter() - t)
        bbox_b: list[float] = []
        for lon, lat in base_points:
            t = time.perf_counter()
            base.bbox(radius_box(lon, lat, BOX_M / 2))
            bbox_b.append(time.perf_counter() - t)
        # For scale: the in-memory grid index every service holds (RoadNetwork).
        grid_t: list[float] = []
        for lon, lat in points:
            t = time.perf_counter()
            net.nearest(lon, lat, radius_m=200, k=1)
            grid_t.append(time.perf_counter() - t)

        results: dict[str, dict[str, float]] = {}
        results["sqlite"] = await bench_backend(
            "sqlite", store_from_url(f"sqlite:///{tmp}/bench.db"), segments, points, base,
            base_points, base_nearest)
        if not args.no_postgis:
            name, url = await create_pg_database(args.pg_dsn)
            try:
                results["postgis"] = await bench_backend(
                    "postgis", store_from_url(url), segments, points, base, base_points,
                    base_nearest)
            finally:
                await drop_pg_database(args.pg_dsn, name)

    nb50, nb99 = pct(near_b, 50), pct(near_b, 99)
    bb50, bb99 = pct(bbox_b, 50), pct(bbox_b, 99)
    print(f"\nqueries: {args.queries} nearest-segment (k=1) and {args.queries} bbox "
          f"({BOX_M:.0f} m square), one at a time; baseline on {args.baseline_queries} points")
    print(f"baseline linear shapely scan: nearest p50 {nb50:8.2f} ms  p99 {nb99:8.2f} ms | "
          f"bbox p50 {bb50:8.2f} ms  p99 {bb99:8.2f} ms")
    print(f"in-memory grid (RoadNetwork.nearest, for scale): p50 {pct(grid_t, 50):.3f} ms  "
          f"p99 {pct(grid_t, 99):.3f} ms")
    header = (f"{'backend':<8} {'import s':>9} {'near p50':>9} {'near p99':>9} {'x base':>7} "
              f"{'bbox p50':>9} {'bbox p99':>9} {'x base':>7} {'rows/box':>9} {'wrong':>6}")
    print("\n" + header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<8} {r['import_s']:9.2f} {r['near_p50']:9.3f} {r['near_p99']:9.3f} "
              f"{nb50 / r['near_p50']:7.0f} {r['bbox_p50']:9.3f} {r['bbox_p99']:9.3f} "
              f"{bb50 / r['bbox_p50']:7.0f} {r['bbox_rows']:9.1f} {int(r['mismatches']):6d}")
    print("\n(times in ms unless noted; 'x base' = baseline p50 / backend p50; 'wrong' = "
          "nearest answers farther than the linear scan's by > max(0.5 m, 0.3 %))")


if __name__ == "__main__":
    asyncio.run(main())
