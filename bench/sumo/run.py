"""The SUMO ground-truth harness, one command::

    .venv/bin/python -m bench.sumo.run --network demo --minutes 30 --incidents 2

Builds the network (``netconvert``), the demand (a morning peak), the buses of the demo city's
timetable (``buses.py``), the roadside detectors on its structures (``detectors.py``) and the
incidents, runs SUMO twice with the same demand and seed (with the incidents and without: the
baseline), starts TTI in this process on a clock at ``--rate`` × real time (``--rate 1``: a
real-time replay), replays the probe vehicles and the buses through its JT/T 808 gateway and
the detectors' readings through its HTTP detector input, and prints the table of ``score.py``
(bus ETAs: ``eta.py``).
Generated files go to ``--out`` (default ``var/sumo/<network>``), never into the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import secrets
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.sumo.buses import (
    PREFIX,
    BusDemand,
    bus_phone,
    make_bus_demand,
    read_bus_stops,
    scenario_start,
    write_registry,
)
from bench.sumo.demand import Incident, make_trips, write_incidents
from bench.sumo.detectors import (
    MODES,
    DetectorReplay,
    DetectorReplayStats,
    Placement,
    Reading,
    place_detectors,
    read_loops,
)
from bench.sumo.eta import score_buses
from bench.sumo.fresh import freshness, warning_latency
from bench.sumo.host import Tap, TtiHost
from bench.sumo.mapping import Mapping, map_network
from bench.sumo.network import SumoNetwork, build_network, road_category
from bench.sumo.replay import Replay, ReplayStats, Report, schedule
from bench.sumo.score import Score, format_table, score_run
from bench.sumo.simulate import EdgeMinute, Fix, read_edgedata, read_fcd, read_stops, run_sumo
from shared.roadnet import RoadNetwork

__all__ = ["Options", "Outcome", "main", "run_harness"]

log = logging.getLogger("tti.bench.sumo")

T0 = "2026-06-01T07:00:00+08:00"
"""SUMO's second 0: a Monday, at the morning peak's start (Beijing time). The buses keep the
timetable's times, so this is fixed before SUMO runs; TTI's clock starts early enough
(``buses.scenario_start``) to be ready by then."""
DEFAULT_PEAK = {"demo": 2400.0, "wuhan": 1800.0}
CATEGORIES = {
    "demo": ("arterial", "bridge", "ring", "tunnel"),
    "other": ("arterial", "expressway", "secondary"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """One harness run."""

    network: str = "demo"
    minutes: float = 30.0
    incidents: int = 2
    incident_minutes: float = 10.0
    probe_share: float = 0.10
    interval_s: float = 10.0
    rate: float = 10.0
    seed: int = 1
    peak_per_hour: float | None = None
    noise_m: float = 5.0
    out: Path | None = None
    demo_size: int = 1
    buses: bool = True
    """Buses on the network's GTFS routes (the demo city's), replayed and their ETAs scored."""
    history_days: int = 1
    """Earlier weeks' same weekday and hour replayed first (their own demand seed, no
    incidents), so TTI knows what the place usually has then — its time-of-week profiles —
    as a deployed system does. 0: TTI starts with no history."""
    detectors: str = "structures"
    """Roadside detectors (``detectors.MODES``): ``structures`` — loops on the bridges, tunnels
    and ring road (elsewhere expressways and ramps), replayed through TTI's detector input in
    every run; ``none`` — probes only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a run produced: the score, the replay's counters, the table, where files are."""

    score: Score
    replay: ReplayStats
    table: str
    out: Path
    t0: datetime
    tap: Tap
    mapping: Mapping
    fcd: dict[str, list[Fix]]
    reports: dict[str, list[Report]]
    buses: BusDemand | None = None
    bus_replay: ReplayStats | None = None
    detectors: Placement = field(default_factory=Placement)
    detector_replay: DetectorReplayStats | None = None
    readings: tuple[Reading, ...] = ()
    detectors_loaded: int = 0
    """Detectors TTI's bigdata knew to watch a segment once the registry was imported."""


def _category(edge: str, net: SumoNetwork, mapping: Mapping) -> str | None:
    return road_category(edge, mapping.edge_type.get(edge, ""), net.landmarks)


def choose_incidents(opts: Options, net: SumoNetwork, mapping: Mapping,
                     baseline: dict[tuple[str, int], EdgeMinute]) -> list[Incident]:
    """``opts.incidents`` incidents on the busiest long edges of each kind of road in turn,
    spread over the scenario (the first after 5 minutes), alternating a stopped vehicle on
    one lane and a closure of all lanes but one."""
    if opts.incidents <= 0:
        return []
    use: dict[str, float] = {}
    for (edge, _), em in baseline.items():
        use[edge] = use.get(edge, 0.0) + em.sampled_s
    by_cat: dict[str, list[str]] = {}
    for edge in sorted(use, key=lambda e: -use[e]):
        cat = _category(edge, net, mapping)
        if cat and mapping.edge_length_m.get(edge, 0) >= 120 and edge in mapping.by_edge:
            by_cat.setdefault(cat, []).append(edge)
    cats = [c for c in CATEGORIES["demo" if net.landmarks else "other"] if by_cat.get(c)]
    if not cats:
        raise ValueError("no road long and busy enough for an incident")
    duration = opts.incident_minutes * 60
    total = opts.minutes * 60
    first = min(300.0, total / 4)
    spacing = (max(0.0, total - first - duration - 300) / (opts.incidents - 1)
               if opts.incidents > 1 else 0.0)
    out, used_ways = [], set()
    for k in range(opts.incidents):
        cat = cats[k % len(cats)]
        edge = next((e for e in by_cat[cat] if e.lstrip("-").split("#")[0] not in used_ways),
                    by_cat[cat][0])
        used_ways.add(edge.lstrip("-").split("#")[0])
        lanes = mapping.edge_lanes[edge]
        kind = "stopped" if k % 2 == 0 else "closure"
        blocked = (0,) if kind == "stopped" or lanes == 1 else tuple(range(lanes - 1))
        out.append(Incident(incident_id=f"incident{k}", kind=kind, edge_id=edge, lanes=blocked,
                            pos_m=round(0.6 * mapping.edge_length_m[edge], 1),
                            start_s=round(first + k * spacing), duration_s=duration, place=cat))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Sensors:
    """The detectors' side of one replay: the registry, its readings, the sensor token."""

    registry: Path
    readings: list[Reading]
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Replayed:
    """What one replay into TTI did."""

    host: TtiHost
    replay: Replay
    bus_replay: Replay | None
    detector_replay: DetectorReplay | None
    t0: datetime


async def _replay(opts: Options, net: SumoNetwork, reports: dict, work: Path, *,
                  start: datetime, buses: dict[str, list[Report]], phones: dict[str, str],
                  settings: dict[str, Any], sensors: Sensors | None = None,
                  fresh: bool = True) -> Replayed:
    if sensors is not None:
        settings = {**settings, "sensor_tokens": (sensors.token,)}
    host = TtiHost(net.osm_path, work / "tti", clock_rate=opts.rate,
                   clock_start=scenario_start(start, opts.rate).isoformat(),
                   log_level="WARNING", fresh=fresh,
                   detectors=sensors.registry if sensors else None, **settings)
    async with host:
        clock = host.clock
        t0 = start
        if clock.time() + 5 > start.timestamp():
            # Ready too late: SUMO's second 0 is the next whole minute (windows are whole
            # minutes), and the buses run that much behind their timetable.
            t0 = datetime.fromtimestamp(math.ceil((clock.time() + 20) / 60) * 60,
                                        clock.now().tzinfo)
            log.warning("TTI was ready after %s: the replay starts at %s", start, t0)
        replay = Replay(reports, host="127.0.0.1", port=host.jt808_port, clock=clock, t0=t0)
        bus_replay = (Replay(buses, host="127.0.0.1", port=host.jt808_port, clock=clock, t0=t0,
                             phones=phones) if buses else None)
        detector_replay = (DetectorReplay(sensors.readings, collector_url=host.base_url
                                          + "/collector", clock=clock, t0=t0,
                                          token=sensors.token) if sensors else None)
        real0 = time.monotonic()
        await asyncio.gather(replay.run(), *([bus_replay.run()] if bus_replay else []),
                             *([detector_replay.run()] if detector_replay else []))
        # The last windows close one window plus the grace after they end.
        end = t0 + timedelta(seconds=opts.minutes * 60 + 150)
        await clock.sleep((end - clock.now()).total_seconds())
        log.info("replay done in %.0f s real", time.monotonic() - real0)
    return Replayed(host=host, replay=replay, bus_replay=bus_replay,
                    detector_replay=detector_replay, t0=t0)


def _sensors(placement: Placement, registry: Path, loops: Path, duration_s: float
             ) -> Sensors | None:
    """The readings of one SUMO run's loops up to ``duration_s``, for the replay."""
    if not placement:
        return None
    return Sensors(registry=registry, readings=read_loops(loops, placement, until_s=duration_s),
                   token=secrets.token_urlsafe(16))


def _detector_note(label: str, st: DetectorReplayStats | None) -> str | None:
    if st is None:
        return None
    codes = ", ".join(f"{k} {v}" for k, v in sorted(st.rejected_by_code.items()))
    return (f"{label}: {st.detectors} detectors, {st.intervals} intervals, "
            f"{st.readings_sent} readings posted, {st.accepted} accepted, {st.rejected} "
            f"rejected{f' ({codes})' if codes else ''}, at most {st.late_s_max:.1f} clock s late")


def _secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f} s"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1000:.0f} ms"


def replay_history(opts: Options, net: SumoNetwork, out: Path, *, start: datetime,
                   peak: float, settings: dict[str, Any], placement: Placement | None = None,
                   registry: Path | None = None) -> list[str]:
    """The earlier weeks (``Options.history_days``), replayed into TTI's database in turn, so
    the scenario's TTI starts with their speed history. Returns a note per week."""
    notes = []
    duration = opts.minutes * 60
    placement = placement or Placement()
    for d in range(opts.history_days):
        day = start - timedelta(days=7 * (opts.history_days - d))
        seed = opts.seed + 101 + d
        folder = out / f"history{d + 1}"
        demand = make_trips(net.net_path, folder / "demand", duration_s=duration,
                            peak_per_hour=peak, seed=seed, probe_share=opts.probe_share)
        loops = (placement.additional(folder / "sumo"),) if placement else ()
        run = run_sumo(net.net_path, [demand], folder / "sumo", end_s=duration, seed=seed,
                       fcd=True, additional=loops)
        assert run.fcd is not None
        sensors = (_sensors(placement, registry, folder / "sumo" / "loops.xml", duration)
                   if registry is not None else None)
        fcd = {v: [f for f in fixes if f.t < duration] for v, fixes in read_fcd(run.fcd).items()}
        reports = schedule({v: f for v, f in fcd.items() if f}, interval_s=opts.interval_s,
                           noise_m=opts.noise_m, seed=seed)
        done = asyncio.run(_replay(opts, net, reports, out, start=day, buses={}, phones={},
                                   settings=settings, sensors=sensors, fresh=d == 0))
        st = done.replay.stats
        dst = done.detector_replay.stats if done.detector_replay else None
        notes.append(f"history: {day:%Y-%m-%d} (seed {seed}), {st.terminals} probes, "
                     f"{st.reports_acked} of {st.reports_sent} reports acknowledged"
                     + (f"; {dst.accepted} of {dst.readings_sent} detector readings accepted"
                        if dst else ""))
    if opts.history_days:
        # A week later, nothing of what those days warned of is still going on.
        with sqlite3.connect(out / "tti" / "tti.db") as db:
            db.execute("DELETE FROM warnings_current")
    return notes


def run_harness(opts: Options) -> Outcome:
    """Everything from the network to the table (blocking; runs its own event loop)."""
    name = opts.network if opts.network in ("demo", "wuhan") else Path(opts.network).stem
    out = (opts.out or Path("var") / "sumo" / name).resolve()  # tools run in its folders
    net = build_network(opts.network, out, demo_size=opts.demo_size)
    duration = opts.minutes * 60
    peak = opts.peak_per_hour or DEFAULT_PEAK.get(name, 1800.0)
    demand = make_trips(net.net_path, out / "demand", duration_s=duration, peak_per_hour=peak,
                        seed=opts.seed, probe_share=opts.probe_share)
    mapping = map_network(net.net_path, RoadNetwork.from_osm(net.osm_path))
    placement = place_detectors(net, mapping, opts.detectors)
    detector_registry = (placement.write_registry(out / "detectors" / "registry.csv")
                         if placement else None)
    start = datetime.fromisoformat(T0)
    buses = None
    if opts.buses and net.gtfs_path is not None:
        buses = make_bus_demand(net.net_path, net.gtfs_path, out / "buses", t0=start,
                                duration_s=duration, seed=opts.seed)
    routes = [demand, *([buses.routes] if buses else [])]
    stops_add = (buses.stops,) if buses else ()
    # Vehicles still driving at the end are simulated a little longer, so queues can dissolve.
    end = duration + 600
    def loops(folder: Path) -> tuple[Path, ...]:
        return (placement.additional(folder),) if placement else ()

    base_run = run_sumo(net.net_path, routes, out / "baseline", end_s=end, seed=opts.seed,
                        fcd=opts.incidents <= 0,
                        additional=(*stops_add, *loops(out / "baseline")))
    baseline = read_edgedata(base_run.edgedata)
    incidents = choose_incidents(opts, net, mapping, baseline)
    if incidents:
        inc_file = write_incidents(incidents, out / "incidents" / "incidents.rou.xml")
        run = run_sumo(net.net_path, [*routes, inc_file], out / "incidents", end_s=end,
                       seed=opts.seed, fcd=True,
                       additional=(*stops_add, *loops(out / "incidents")))
        stops = read_stops(run.stops)
        incidents = [_as_happened(i, stops) for i in incidents]
    else:
        run = base_run
    edgedata = read_edgedata(run.edgedata)
    run_dir = run.edgedata.parent
    sensors = (_sensors(placement, detector_registry, run_dir / "loops.xml", duration)
               if detector_registry else None)
    base_readings = (read_loops(out / "baseline" / "loops.xml", placement)
                     if placement and incidents else [])
    assert run.fcd is not None
    fcd = {v: [f for f in fixes if f.t < duration] for v, fixes in read_fcd(run.fcd).items()}
    fcd = {v: f for v, f in fcd.items() if f}
    # The buses report like the probes, as terminals the registry lists as buses of a route.
    bus_fcd = {v: fcd.pop(v) for v in [v for v in fcd if v.startswith(PREFIX)]}
    reports = schedule(fcd, interval_s=opts.interval_s, noise_m=opts.noise_m, seed=opts.seed)
    bus_reports = schedule(bus_fcd, interval_s=opts.interval_s, noise_m=opts.noise_m,
                           seed=opts.seed + 1)
    phones = {v: bus_phone(i + 1) for i, v in enumerate(sorted(bus_reports))}
    settings: dict[str, Any] = {}
    if net.gtfs_path is not None:  # as tti run imports the demo city's timetable
        settings["gtfs"] = str(net.gtfs_path)
    if buses is not None:
        vehicles = write_registry(out / "buses" / "vehicles.csv", buses.trips, phones)
        settings["vehicle_registry"] = str(vehicles)
    history = replay_history(opts, net, out, start=start, peak=peak, settings=settings,
                             placement=placement, registry=detector_registry)
    done = asyncio.run(_replay(
        opts, net, reports, out, start=start, buses=bus_reports, phones=phones,
        settings=settings, sensors=sensors, fresh=not opts.history_days))
    host, replay, bus_replay, t0 = done.host, done.replay, done.bus_replay, done.t0
    dst = done.detector_replay.stats if done.detector_replay else None
    readings = (read_loops(run_dir / "loops.xml", placement) if placement else [])
    score = score_run(mapping=mapping, fcd=fcd, reports=reports, edgedata=edgedata,
                      baseline=baseline if incidents else None, incidents=incidents,
                      tap=host.tap, t0=t0, duration_s=duration, detectors=placement,
                      readings=readings, base_readings=base_readings)
    st = replay.stats
    fresh_score = freshness(fcd=fcd, reports=reports, mapping=mapping, tap=host.tap, t0=t0)
    fs = fresh_score
    score.notes.append(
        f"freshness: {fs.published} of {fs.traversals} completed traversals in a published "
        f"window; from the report completing one to the road speed including it p50 "
        f"{_secs(fs.p50_s)}, p95 {_secs(fs.p95_s)} (target p95 <= 60 s); first colours "
        f"{_secs(fs.first_colour_s)} after the first report")
    lat = warning_latency(host.tap)
    score.notes.append(
        f"warning latency: {lat.warnings} warning messages, from the speed window completing "
        f"the evidence to the warning on the bus p50 {_ms(lat.p50_s)}, p95 {_ms(lat.p95_s)} "
        f"(target p95 < 2 s)")
    score.notes.extend(history)
    score.notes.append(
        f"replay: {st.terminals} terminals, {st.reports_sent} reports sent, "
        f"{st.reports_acked} acknowledged (0x8001), {st.reports_nacked} refused, "
        f"{len(st.failures)} terminal failures, at most {st.late_s_max:.1f} clock s late; "
        f"clock rate {opts.rate:g}, reports every {opts.interval_s:g} s, "
        f"{100 * opts.probe_share:g} % probes, peak {peak:g} veh/h")
    if placement:
        imported = host.detector_import
        score.notes.append(
            f"detectors: {len(placement.sites)} on {len({s.edge_id for s in placement.sites})} "
            f"edges ({', '.join(f'{k} {v}' for k, v in _places(placement))}), "
            f"{sum(len(s.loops) for s in placement.sites)} SUMO loops (one a lane), watching "
            f"{len(placement.segments)} TTI segments; registry "
            f"{imported.applied if imported else 0} of {imported.rows if imported else 0} rows "
            f"imported, {host.detectors_loaded} loaded by bigdata")
        note = _detector_note("detector replay (HTTP, sensor token)", dst)
        if note:
            score.notes.append(note)
    else:
        score.notes.append("detectors: none (--detectors none)")
    if buses is not None:
        bst = bus_replay.stats if bus_replay else ReplayStats()
        bus_score = score_buses(trips=buses.trips, stops=read_bus_stops(run.stops), tap=host.tap,
                                t0=t0, duration_s=duration, phones=phones,
                                first_report_s={v: r[0].fix.t for v, r in bus_reports.items()},
                                timetable_trips=buses.timetable_trips)
        bus_score.notes.append(
            f"bus replay: {bst.terminals} terminals, {bst.reports_sent} reports sent, "
            f"{bst.reports_acked} acknowledged, {bst.reports_nacked} refused, "
            f"{len(bst.failures)} terminal failures")
        if t0 != start:
            bus_score.notes.append(f"TTI was ready late: the buses left "
                                   f"{(t0 - start).total_seconds():.0f} s after the timetable")
        score = replace(score, buses=bus_score)
    title = (f"SUMO ground truth: {name}, {opts.minutes:g} min, {len(incidents)} incidents, "
             f"seed {opts.seed}")
    table = format_table(score, title)
    (out / "score.json").write_text(json.dumps({
        "options": {k: str(v) for k, v in asdict(opts).items()},
        "speeds": [asdict(s) for s in score.speeds],
        "incidents": [{**asdict(i.incident), "affected_edges": i.affected_edges,
                       "dissolved_s": i.dissolved_s, "detected_s": i.detected_s,
                       "cleared_s": i.cleared_s, "warning_ids": i.warning_ids}
                      for i in score.incidents],
        "warnings": score.warnings, "false_alarms": score.false_alarms,
        "replay": asdict(st), "table": table, "alarms": score.alarms,
        "detectors": {"sites": [asdict(s) for s in placement.sites],
                      "replay": asdict(dst) if dst else None,
                      "segment_minutes": score.detector_details},
        "freshness": {**asdict(fresh_score), "coverage": fresh_score.coverage},
        "warning_latency": asdict(lat),
        "segment_minutes": score.details,
        "buses": None if score.buses is None else {
            **asdict(score.buses), "coverage": score.buses.coverage,
            "replay": asdict(bus_replay.stats) if bus_replay else None}},
        indent=1, ensure_ascii=False), encoding="utf-8")
    return Outcome(score=score, replay=st, table=table, out=out, t0=t0, tap=host.tap,
                   mapping=mapping, fcd=fcd, reports=reports, buses=buses,
                   bus_replay=bus_replay.stats if bus_replay else None, detectors=placement,
                   detector_replay=dst, readings=tuple(sensors.readings) if sensors else (),
                   detectors_loaded=host.detectors_loaded)


def _places(placement: Placement) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for s in placement.sites:
        counts[s.place] = counts.get(s.place, 0) + 1
    return sorted(counts.items())


def _as_happened(inc: Incident, stops: dict[str, tuple[float, float]]) -> Incident:
    """The incident's start and end as SUMO's stop output says (insertion can be delayed)."""
    times = [stops[f"{inc.incident_id}_lane{lane}"] for lane in inc.lanes
             if f"{inc.incident_id}_lane{lane}" in stops]
    if not times:
        return inc
    start = min(t[0] for t in times)
    end = max(t[1] for t in times)
    return Incident(incident_id=inc.incident_id, kind=inc.kind, edge_id=inc.edge_id,
                    lanes=inc.lanes, pos_m=inc.pos_m, start_s=start, duration_s=end - start,
                    place=inc.place)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sumo.run", description=__doc__)
    p.add_argument("--network", default="demo", help="demo, wuhan or an .osm file")
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of traffic scored")
    p.add_argument("--incidents", type=int, default=2)
    p.add_argument("--incident-minutes", type=float, default=10.0)
    p.add_argument("--probe-share", type=float, default=0.10,
                   help="share of vehicles replayed as JT/T 808 terminals")
    p.add_argument("--interval-s", type=float, default=10.0, help="seconds between reports")
    p.add_argument("--rate", type=float, default=10.0,
                   help="clock rate: 10 replays ten times faster than real time")
    p.add_argument("--realtime", action="store_true", help="same as --rate 1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peak", type=float, default=None, help="peak insertion rate, veh/h")
    p.add_argument("--noise-m", type=float, default=5.0, help="GPS noise (metres, 1 sigma)")
    p.add_argument("--demo-size", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--history-days", type=int, default=1,
                   help="earlier weeks replayed first, so TTI has time-of-week profiles")
    p.add_argument("--no-buses", action="store_true",
                   help="no buses on the demo city's GTFS routes (no bus ETAs)")
    p.add_argument("--detectors", choices=MODES, default="structures",
                   help="roadside loops on the bridges, tunnels and ring road (elsewhere "
                        "expressways and ramps), replayed through TTI's detector input; none: "
                        "probes only")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    opts = Options(network=a.network, minutes=a.minutes, incidents=a.incidents,
                   incident_minutes=a.incident_minutes, probe_share=a.probe_share,
                   interval_s=a.interval_s, rate=1.0 if a.realtime else a.rate, seed=a.seed,
                   peak_per_hour=a.peak, noise_m=a.noise_m, out=a.out, demo_size=a.demo_size,
                   buses=not a.no_buses, history_days=a.history_days,
                   detectors=a.detectors)
    real0 = time.monotonic()
    outcome = run_harness(opts)
    print(outcome.table)
    print(f"\n(files in {outcome.out}; {time.monotonic() - real0:.0f} s wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
