"""Bus ETA accuracy and tracking throughput on a simulated morning of the demo region.

Every trip of the demo timetable starting in the window is driven by a synthetic bus (buses run
blocks, alternating directions): departure jitter, random dwells, skipped stops, GPS noise, fixes
every ``--interval`` s, traffic with random slowdowns (congestion episodes) that the buses drive
through. Probe speeds of that traffic arrive as ``tti.segment.speed`` every minute. Everything goes
through ``TransitService`` in time order, as the bus would deliver it.

Prints the ETA Accuracy Benchmark per bucket for the live predictions and for the timetable
(scored at the same instants: the baseline), their ratio, the stop arrival/departure detection
error against the ground truth, and positions handled per second.
Usage: ``python bench/bench_eta.py [--hours 3] [--interval 10] [--noise 5] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from services.bigdata.transit.predictor import ShapeSegments
from services.bigdata.transit.schedule import GtfsFileSource, Trip, TripRun
from services.bigdata.transit.service import TransitService, TransitSettings
from services.bigdata.transit.synthetic import Slowdown, Trace, Traffic, drive
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.demo import generate_demo_region
from shared.events import BUS_ARRIVAL, SEGMENT_SPEED, VEHICLE_POSITION, BusArrival, Subject
from shared.roadnet import RoadNetwork

DAY = date(2026, 3, 3)  # a Tuesday


class RecordingBus(MemoryBus):
    """The memory bus, keeping every stop event published."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[BusArrival] = []

    async def publish(self, subject: Subject[Any], payload: Any, **kwargs: Any) -> str:
        if subject is BUS_ARRIVAL:
            self.arrivals.append(payload)
        return await super().publish(subject, payload, **kwargs)


def _blocks(trips: list[Trip]) -> list[list[Trip]]:
    """Chain trips into vehicle blocks: after a trip, the bus takes the next trip of the route
    leaving from near where it ended at least 3 minutes later (the other direction)."""
    pending = sorted(trips, key=lambda t: t.first_s)
    blocks: list[list[Trip]] = []
    free: list[tuple[float, int]] = []  # (free from, block index) per route
    by_route: dict[str, list[tuple[float, int]]] = {}
    for trip in pending:
        free = by_route.setdefault(trip.route_id, [])
        pick = None
        for i, (ready, b) in enumerate(free):
            last = blocks[b][-1]
            if ready + 180 <= trip.first_s and last.direction_id != trip.direction_id:
                pick = i
                break
        if pick is None:
            blocks.append([trip])
            free.append((trip.last_s, len(blocks) - 1))
        else:
            _, b = free.pop(pick)
            blocks[b].append(trip)
            free.append((trip.last_s, b))
    return blocks


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--start", type=float, default=7.0, help="local hour the window starts")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between bus fixes")
    ap.add_argument("--noise", type=float, default=5.0, help="GPS noise, metres (1 sigma)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-live", action="store_true", help="withhold segment speeds")
    ap.add_argument("--no-shading", action="store_true",
                    help="announce the expected time itself, not shaded early")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    region = generate_demo_region(Path(tempfile.mkdtemp(prefix="tti-bench-eta-")))
    network = RoadNetwork.from_osm(region.osm_path)
    schedule = GtfsFileSource(region.gtfs_path).load_sync()
    day0 = schedule.service_day_start(DAY)
    t_from, t_to = args.start * 3600, (args.start + args.hours) * 3600
    trips = [t for ts in schedule.trips_by_id.values() for t in ts
             if t_from <= t.first_s < t_to]

    shape_segs = {p.pattern_id: ShapeSegments.from_network(p.shape, network)
                  for p in schedule.patterns}
    route_segs = sorted({s for m in shape_segs.values() for s in m.ids})
    base = {sid: network.get_segment(sid).free_flow_kmh * rng.uniform(0.45, 0.8)
            for sid in route_segs}
    slowdowns = []
    t = day0 + t_from
    while t < day0 + t_to:  # a congestion episode somewhere on the routes every ~20 min
        ids = shape_segs[rng.choice(schedule.patterns).pattern_id].ids
        i = rng.randrange(len(ids))
        slowdowns.append(Slowdown(frozenset(ids[i:i + rng.randint(2, 4)]), t,
                                  t + rng.uniform(900, 1800), rng.uniform(6, 12)))
        t += rng.uniform(600, 1800)
    traffic = Traffic(base, slowdowns)

    traces: list[Trace] = []
    for b, block in enumerate(_blocks(trips)):
        vid = f"bus-{b:03d}"
        free_at = 0.0  # a late bus starts its next trip late
        for trip in block:
            run = TripRun(trip, DAY, day0)
            depart = max(run.departure_at(0) + rng.uniform(-20, 150), free_at + 180.0)
            traces.append(drive(
                run, vehicle_id=vid,
                speed=traffic.bus_speed(shape_segs[trip.pattern.pattern_id], cap_kmh=35.0),
                dwell=lambda k: rng.choice((0.0, rng.uniform(8, 25), rng.uniform(15, 60))),
                rng=rng, depart_at=depart,
                interval_s=args.interval, noise_m=args.noise, route_id=trip.route_id,
                stop_offset_m=lambda k: rng.uniform(-10, 5),
                skip=[k for k in range(1, trip.pattern.n_stops - 1) if rng.random() < 0.1],
                occupancy="MANY_SEATS_AVAILABLE", wait_before_s=120.0, stay_after_s=60.0))
            free_at = traces[-1].positions[-1].observed_at.timestamp()

    events: list[tuple[float, int, Any]] = []
    seq = 0
    for tr in traces:
        for p in tr.positions:
            events.append((p.observed_at.timestamp(), seq, p))
            seq += 1
    if not args.no_live:
        w = day0 + t_from - 600
        while w < day0 + t_to + 3600:
            for e in traffic.window_events(route_segs, w, 60.0, rng):
                events.append((w + 60.0, seq, e))
                seq += 1
            w += 60.0
    heapq.heapify(events)
    ordered = [heapq.heappop(events) for _ in range(len(events))]

    now = [day0 + t_from]
    bus = RecordingBus()
    await bus.start()
    svc = TransitService(Config(), bus, source=GtfsFileSource(region.gtfs_path),
                         network=network, clock=lambda: now[0],
                         settings=TransitSettings(early_shading=not args.no_shading))
    await svc.load()
    n_pos = 0
    t0 = time.perf_counter()
    for t_ev, _, payload in ordered:
        now[0] = t_ev
        if isinstance(payload, type(traces[0].positions[0])):
            await svc.on_position(Envelope.new(VEHICLE_POSITION, payload))
            n_pos += 1
        else:
            await svc.on_speed(Envelope.new(SEGMENT_SPEED, payload))
    elapsed = time.perf_counter() - t0
    await bus.close()

    truth = {(tr.vehicle_id, tr.run.trip.trip_id, s.index): s for tr in traces for s in tr.truth}
    errs: dict[str, list[float]] = {"arrival": [], "departure": []}
    wrong = 0
    for ev in bus.arrivals:
        stop = truth.get((ev.vehicle_id, ev.trip_id, ev.stop_sequence - 1))
        if stop is None:
            wrong += 1
            continue
        real = stop.arrival if ev.kind == "arrival" else stop.departure
        errs[ev.kind].append(ev.observed_at.timestamp() - real)
    expected = sum(2 * (tr.run.trip.pattern.n_stops - 1) for tr in traces)

    report = svc.accuracy_report()
    print(f"demo region, {len(traces)} trips by {len(_blocks(trips))} buses over "
          f"{args.hours:g} h, fixes every {args.interval:g} s, GPS noise {args.noise:g} m, "
          f"{len(slowdowns)} congestion episodes, live speeds {'off' if args.no_live else 'on'}, "
          f"early shading {'off' if args.no_shading else 'on'}")
    print(f"positions: {n_pos}, handled at {n_pos / elapsed:,.0f}/s "
          f"(incl. predictions and publishing)")
    for kind, v in errs.items():
        a = sorted(abs(x) for x in v)
        print(f"{kind} detection: {len(v)}, error median {statistics.median(a):.1f} s, "
              f"p90 {a[int(0.9 * (len(a) - 1))]:.1f} s, mean {statistics.fmean(v):+.1f} s")
    print(f"stop events expected {expected}, got {len(bus.arrivals)}, unmatched {wrong}")
    print(f"arrivals scored: {report['arrivals_scored']}")
    print(f"{'bucket':>7} {'window':>12} {'live n':>7} {'live':>7} {'sched':>7}  ratio"
          f"  {'bias':>6} {'mae':>5}  (live, s)")
    live, sched = report["live"], report["schedule_baseline"]
    for lb, sb in zip(live["buckets"], sched["buckets"], strict=True):
        ls, ss = lb["share"], sb["share"]
        print(f"{lb['bucket']:>7} {lb['window_s'][0]:>5.0f}/{lb['window_s'][1]:<+6.0f} "
              f"{lb['count']:>7} {ls or 0:>7.1%} {ss or 0:>7.1%}  "
              f"{(ls / ss) if ls and ss else float('nan'):.2f}  "
              f"{lb['mean_error_s'] or 0:>+6.1f} {lb['mean_abs_error_s'] or 0:>5.1f}")
    lo, so = live["overall"], sched["overall"]
    print(f"overall (mean of buckets): live {lo or 0:.1%}, timetable {so or 0:.1%}, "
          f"ratio {(lo / so) if lo and so else float('nan'):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
