"""Map matching: points/s per core and accuracy, ours against baselines on the same traces.

Networks: the demo region at the size giving ~28,000 directed segments
(``shared.demo.size_for_segments(28000)``), and real OSM of Wuhan's Optics Valley
(``shared/data/osm/wuhan_optics_valley.osm``, read in place; finely cut: median segment 79 m, side
roads 12-15 m beside main roads), skipped when the file is absent. Traces on each: 40 simulator
vehicles (class mix, routes and speeds from ``services.simulator.world``) driving for an hour,
sampled every 10 s and every 30 s (the same drives), with Gaussian position noise σ = 10 m per axis,
heading noise 5° and speed noise 2 km/h (``services.bigdata.traces``). Two accuracies (unmatched
fixes count as wrong): ``segment``, the share of fixes matched to their true *directed segment*, and
``road``, the share matched to a segment of their true road (same OSM way, same direction), the
measure published figures for map matchers (FMM's, for one) use: at a junction the next segment of
the same street counts right. Speed is fixes per CPU second of this process (``time.process_time``),
i.e. per core whatever else runs on the machine.

Matchers:

- ``ours``: `services.bigdata.matching.OnlineMatcher` (online; lag 0, 2 and the default 4 fixes,
  at most 30 s), one shared
  `MatchGraph` built before timing, its routing cache cold at the start of each run;
- ``nearest``: the nearest segment to each fix (ties, such as the two directions of a road,
  broken by the reported heading) — the baseline every ratio refers to;
- ``fastmm``: FMM (Yang & Gidófalvi 2018) as packaged on PyPI (``fastmm``): offline HMM over
  the whole trace with a precomputed upper-bounded origin-destination table (UBODT, built
  before timing and reported separately), on the network in a local metric projection;
- ``mappymatch``: NREL's LCSS matcher (``mappymatch``) on a networkx map in EPSG:3857, as its
  docs do; it is slow, so it runs on a subset of the traces (stated in the table).

``fastmm`` and ``mappymatch`` are benchmark-only, not dependencies of the services: ``make bench``
installs them (the ``bench`` extra holds fastmm and mappymatch's requirements; mappymatch 0.7
declares ``pandas<3`` while the project runs pandas 3, on which its LCSS matcher works, so the
Makefile installs it with ``--no-deps`` rather than let pip downgrade pandas). A matcher that
cannot be imported or fails is listed with the reason instead of figures.

Usage: ``.venv/bin/python bench/bench_matching.py [--traces 40] [--duration 3600]
[--mappymatch-traces 4] [--segments 28000] [--networks demo,wuhan] [--quick]`` (about 2-4
minutes; ``--quick`` runs only ours, default lag, and the baseline, for measuring a change).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.bigdata.matching import MatchGraph, MatchParams, OnlineMatcher
from services.bigdata.traces import NoiseModel, Trace, generate_traces, road_keys
from services.simulator.world import World
from shared.demo import generate_demo_region, size_for_segments
from shared.geo import LocalProjection
from shared.roadnet import RoadNetwork

# ``../shared`` beside the repository (as the tests find it), or TTI_SHARED_DIR.
_SHARED = Path(os.environ.get("TTI_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
_WUHAN_OSM = _SHARED / "data" / "osm" / "wuhan_optics_valley.osm"

# Per fix: the matched directed segment id, or None.
Matched = list[str | None]
MatchFn = Callable[[Trace], Matched]


@dataclass
class Row:
    """One matcher's figures at one sampling interval (or why there are none)."""

    name: str
    interval_s: float
    network: str = ""
    points: int = 0
    cpu_s: float = 0.0
    correct: int = 0
    correct_road: int = 0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.points / self.cpu_s if self.cpu_s > 0 else math.nan

    @property
    def accuracy(self) -> float:
        """Share of fixes on their true directed segment."""
        return self.correct / self.points if self.points else math.nan

    @property
    def road_accuracy(self) -> float:
        """Share of fixes on their true road (OSM way and direction)."""
        return self.correct_road / self.points if self.points else math.nan


def _run(name: str, interval_s: float, traces: Sequence[Trace], fn: MatchFn,
         keys: dict[str, int], note: str = "", network: str = "") -> Row:
    row = Row(name, interval_s, network, note=note)
    for trace in traces:
        start = time.process_time()
        matched = fn(trace)
        row.cpu_s += time.process_time() - start
        row.points += len(trace.points)
        for m, p in zip(matched, trace.points, strict=True):
            if m == p.segment_id:
                row.correct += 1
                row.correct_road += 1
            elif m is not None and keys.get(m, -1) == keys.get(p.segment_id, -2):
                row.correct_road += 1
    return row


# --- ours and the baseline -------------------------------------------------------------------


def ours(graph: MatchGraph, lag: int) -> MatchFn:
    params = MatchParams(lag=lag)

    def match(trace: Trace) -> Matched:
        matcher = OnlineMatcher(graph, params)
        out = []
        for p in trace.points:
            out.extend(matcher.update(p.t, p.lon, p.lat, heading=p.heading_deg,
                                      speed_kmh=p.speed_kmh))
        out.extend(matcher.flush())
        return [r.candidate.segment_id if r.candidate else None for r in out]

    return match


def nearest(net: RoadNetwork) -> MatchFn:
    def match(trace: Trace) -> Matched:
        out: Matched = []
        for p in trace.points:
            cands = net.nearest(p.lon, p.lat, radius_m=50.0, k=8)
            if not cands:
                out.append(None)
                continue
            best = cands[0].distance_m
            tied = [c for c in cands if c.distance_m <= best + 1.0]
            out.append(min(tied, key=lambda c: abs((p.heading_deg - c.bearing_deg + 180.0)
                                                   % 360.0 - 180.0)).segment_id)
        return out

    return match


# --- fastmm ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence a native library's logging to stdout/stderr (fastmm logs every UBODT step)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def fastmm_matcher(net: RoadNetwork, cache_dir: Path, delta_m: float) -> tuple[MatchFn, float]:
    """An FMM matcher on a metric copy of the network; also the UBODT build time (s)."""
    import fastmm

    min_lon, min_lat, max_lon, max_lat = net.bbox()
    proj = LocalProjection((min_lon + max_lon) / 2, (min_lat + max_lat) / 2)
    network = fastmm.Network()
    ids = []
    nodes: dict[int, int] = {}
    for i, seg in enumerate(net):
        ids.append(seg.segment_id)
        network.add_edge(i, source=nodes.setdefault(seg.from_node, len(nodes)),
                         target=nodes.setdefault(seg.to_node, len(nodes)),
                         geom=[proj.to_xy(lon, lat) for lon, lat in seg.coords])
    start = time.perf_counter()
    with _quiet():
        network.finalize()
        fmm = fastmm.FastMapMatch(network, fastmm.TransitionMode.SHORTEST,
                                  max_distance_between_candidates=delta_m,
                                  cache_dir=str(cache_dir))
    build_s = time.perf_counter() - start

    keep_alive = network  # FastMapMatch holds a raw reference to it: it must outlive fmm

    def match(trace: Trace) -> Matched:
        assert keep_alive is not None
        pts = [(*proj.to_xy(p.lon, p.lat), p.t) for p in trace.points]
        result = fmm.match(fastmm.Trajectory.from_xyt_tuples(pts), max_candidates=8,
                           candidate_search_radius=50.0, gps_error=10.0)
        out: Matched = [None] * len(pts)
        for sub in result.subtrajectories:
            for seg in sub.segments:
                out[seg.p0.trajectory_index] = ids[seg.edges[0].edge_id]
                out[seg.p1.trajectory_index] = ids[seg.edges[-1].edge_id]
        return out

    return match, build_s


# --- mappymatch ------------------------------------------------------------------------------


def mappymatch_matcher(net: RoadNetwork) -> MatchFn:
    """NREL mappymatch's LCSS matcher on a networkx map of the network (EPSG:3857)."""
    import networkx as nx
    import pandas as pd
    from mappymatch.constructs.trace import Trace as MmTrace
    from mappymatch.maps.nx.nx_map import NxMap
    from mappymatch.matchers.lcss.lcss import LCSSMatcher
    from mappymatch.utils.crs import XY_CRS
    from pyproj import Transformer
    from shapely.geometry import LineString

    to_xy = Transformer.from_crs(4326, 3857, always_xy=True)
    g = nx.MultiDiGraph()
    for seg in net:
        xs, ys = to_xy.transform([c[0] for c in seg.coords], [c[1] for c in seg.coords])
        g.add_edge(seg.from_node, seg.to_node, key=seg.segment_id,
                   geometry=LineString(zip(xs, ys, strict=True)),
                   kilometers=seg.length_m / 1000.0,
                   minutes=seg.length_m / (seg.free_flow_kmh / 3.6) / 60.0)
    g.graph["crs"] = XY_CRS
    matcher = LCSSMatcher(NxMap(g))

    def match(trace: Trace) -> Matched:
        frame = pd.DataFrame({"latitude": [p.lat for p in trace.points],
                              "longitude": [p.lon for p in trace.points]})
        result = matcher.match_trace(MmTrace.from_dataframe(frame))
        return [m.road.road_id.key if m.road is not None else None for m in result.matches]

    return match


# --- main ------------------------------------------------------------------------------------


def _bench_network(label: str, net: RoadNetwork, args: argparse.Namespace,
                   tmp: Path) -> list[Row]:
    """All matchers on one network's traces at 10 s and 30 s."""
    keys = road_keys(net)
    noise = NoiseModel(position_sigma_m=10.0)
    start = time.perf_counter()
    # Two Worlds seeded alike drive the same trips: only the sampling differs.
    traces = {iv: generate_traces(World(net, seed=42), count=args.traces,
                                  duration_s=args.duration, interval_s=iv, noise=noise, seed=42)
              for iv in (10.0, 30.0)}
    print(f"{label}: {args.traces} vehicles x {args.duration:.0f} s, "
          f"{sum(len(t.points) for t in traces[10.0]):,} fixes at 10 s and "
          f"{sum(len(t.points) for t in traces[30.0]):,} at 30 s "
          f"(generated in {time.perf_counter() - start:.1f} s)")

    rows: list[Row] = []
    default_lag = MatchParams().lag
    lags = (default_lag,) if args.quick else (0, 2, default_lag)
    for iv, ts in traces.items():
        rows.append(_run("nearest segment (baseline)", iv, ts, nearest(net), keys,
                         network=label))
        for lag in lags:
            start = time.process_time()
            graph = MatchGraph(net)
            build = time.process_time() - start
            name = f"ours, lag {lag}" + (" (default)" if lag == default_lag else "")
            rows.append(_run(name, iv, ts, ours(graph, lag), keys,
                             f"graph built in {build:.2f} s, route cache cold", label))
    if args.quick:
        return rows

    try:
        fmm, build_s = fastmm_matcher(net, tmp / f"ubodt-{label}", args.ubodt_delta)
    except Exception as exc:  # ImportError, or the wheel failing on this platform
        rows += [Row("fastmm", iv, label, note=f"not run: {type(exc).__name__}: {exc}")
                 for iv in traces]
    else:
        for iv, ts in traces.items():
            rows.append(_run("fastmm (FMM)", iv, ts, fmm, keys,
                             f"UBODT delta {args.ubodt_delta:.0f} m built in "
                             f"{build_s:.1f} s, not timed", label))

    try:
        mm = mappymatch_matcher(net)
    except Exception as exc:
        rows += [Row("mappymatch", iv, label, note=f"not run: {type(exc).__name__}: {exc}")
                 for iv in traces]
    else:
        n = args.mappymatch_traces
        for iv, ts in traces.items():
            try:
                rows.append(_run("mappymatch (LCSS)", iv, ts[:n], mm, keys,
                                 f"first {n} of the traces", label))
            except Exception as exc:
                rows.append(Row("mappymatch (LCSS)", iv, label,
                                note=f"failed: {type(exc).__name__}: {exc}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--segments", type=int, default=28_000)
    ap.add_argument("--traces", type=int, default=40)
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--mappymatch-traces", type=int, default=4)
    ap.add_argument("--ubodt-delta", type=float, default=1500.0)
    ap.add_argument("--networks", default="demo,wuhan",
                    help="comma-separated: demo, wuhan (default both)")
    ap.add_argument("--wuhan-osm", type=Path, default=_WUHAN_OSM)
    ap.add_argument("--quick", action="store_true",
                    help="only the baseline and ours at the default lag (no fastmm, mappymatch)")
    args = ap.parse_args()
    wanted = {n.strip() for n in args.networks.split(",") if n.strip()}

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "demo" in wanted:
            size = size_for_segments(args.segments)
            region = generate_demo_region(Path(tmp) / "demo", size=size)
            net = RoadNetwork.from_osm(region.osm_path)
            label = f"demo {len(net) // 1000}k"
            print(f"network {label}: demo region size {size}, {len(net):,} directed segments")
            rows += _bench_network(label, net, args, Path(tmp))
        if "wuhan" in wanted:
            if args.wuhan_osm.is_file():
                net = RoadNetwork.from_osm(args.wuhan_osm)
                print(f"network wuhan: {args.wuhan_osm.name}, {len(net):,} directed segments")
                rows += _bench_network("wuhan", net, args, Path(tmp))
            else:
                print(f"network wuhan: skipped, {args.wuhan_osm} not found")
        print()
    _table(rows)


def _table(rows: list[Row]) -> None:
    base = {(r.network, r.interval_s): r.rate for r in rows if r.name.startswith("nearest")}
    print(f"{'network':<9} {'matcher':<28} {'interval':>8} {'fixes':>7} {'fixes/s/core':>13} "
          f"{'segment':>8} {'road':>7} {'x baseline':>10}  notes")
    for r in sorted(rows, key=lambda r: (r.network, r.interval_s, rows.index(r))):
        if not r.points:
            print(f"{r.network:<9} {r.name:<28} {r.interval_s:>7.0f}s {'-':>7} {'-':>13} "
                  f"{'-':>8} {'-':>7} {'-':>10}  {r.note}")
            continue
        print(f"{r.network:<9} {r.name:<28} {r.interval_s:>7.0f}s {r.points:>7,} "
              f"{r.rate:>13,.0f} {r.accuracy:>7.1%} {r.road_accuracy:>6.1%} "
              f"{r.rate / base[(r.network, r.interval_s)]:>9.2f}x  {r.note}")
    print("\nsegment = fixes on their true directed segment, road = on their true road (OSM way "
          "and direction);\ntarget for ours: >= 10,000 fixes/s per core at >= 95 % segment "
          "accuracy (10 s, 10 m), >= 90 % at 30 s")


if __name__ == "__main__":
    main()
