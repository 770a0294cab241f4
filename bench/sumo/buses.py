"""SUMO buses on the demo city's GTFS routes: stops, routes, timetabled demand, the truth.

Every trip of the GTFS feed TTI imports (``shared/demo.py`` writes it beside the demo city)
leaving its first stop within the scenario becomes one SUMO vehicle of vClass ``bus``:

* **route**: the trip's GTFS shape, densified to a point every 15 m, mapped onto SUMO edges by
  ``sumolib.route.mapTrace`` (bus-permitted edges, direction-aware, gaps filled by sumolib's
  router), cut to run from the first stop's edge to the last stop's;
* **stops**: a SUMO ``busStop`` on the rightmost bus lane of the route edge nearest each GTFS stop
  (in route order), 18 m long around the stop's projection, one per stop and lane;
* **timetable**: it is inserted at its first stop up to a minute before the timetable's
  departure and leaves at that time (``until``); at every other stop it dwells a seeded random
  time (8-25 s plus an exponential tail of mean 15 s, at most 90 s: the timetable assumes 30 s),
  and it drives the traffic SUMO simulates: signals, queues, the incidents.

SUMO's stop output (``started``) says when each bus really halted at each stop: the truth the
ETAs are scored against (``eta.py``). The buses carry SUMO's FCD device; each is one more JT/T
808 terminal of the replay, and the vehicle registry TTI reads (``TTI_VEHICLE_REGISTRY``, as a
bus operator would hand it over) lists its terminal as a ``bus`` of its route — no direction, no
trip: TTI's tracker works out which trip it runs, as it must for any JT/T 808 bus.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from services.bigdata.transit.schedule import GtfsFileSource, Pattern, Schedule, TripRun

__all__ = ["BusDemand", "BusTrip", "bus_phone", "make_bus_demand", "read_bus_stops",
           "write_registry"]

VTYPE = "bus"
PREFIX = "bus_"
"""SUMO ids of the buses start with this (the probes' are ``v<n>``)."""
TERMINAL_WAIT_S = 60.0
MAX_STOP_DISTANCE_M = 40.0
STEP_M = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BusTrip:
    """One GTFS trip instance driven by one SUMO bus."""

    vehicle: str
    trip_id: str
    route_id: str
    direction_id: int | None
    start_date: str
    stop_ids: tuple[str, ...]
    stop_sequence: tuple[int, ...]
    scheduled_arrival: tuple[float, ...]
    """Timetable arrival at each stop (epoch seconds)."""
    bus_stops: tuple[str, ...]
    """The SUMO busStop of each stop."""
    depart_s: float
    """Timetable departure from the first stop, SUMO seconds."""
    dwell_s: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class BusDemand:
    """The files SUMO loads and what each bus runs."""

    routes: Path
    stops: Path
    trips: list[BusTrip]
    gtfs: Path
    timetable_trips: int
    """Trips of the feed leaving within the scenario (each is in ``trips`` unless unroutable)."""
    unroutable: list[str]


def bus_phone(index: int) -> str:
    """The 12-digit terminal phone of bus number ``index`` (the probes use 139…)."""
    return f"{13_800_000_000 + index:012d}"


def _dense(xy: list[tuple[float, float]], step: float = STEP_M) -> list[tuple[float, float]]:
    out = [xy[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(xy):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) // step))
        out += [(x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n) for k in range(1, n + 1)]
    return out


def _bus_lane(edge: object) -> object | None:
    for lane in edge.getLanes():  # type: ignore[attr-defined]
        if lane.allows("bus"):
            return lane
    return None


def _place_stops(pattern: Pattern, schedule: Schedule, edges: list[object], net: object
                 ) -> list[tuple[int, object, float]] | None:
    """(route edge index, lane, offset on the lane) of each stop, in route order."""
    from sumolib.geomhelper import polygonOffsetAndDistanceToPoint

    out: list[tuple[int, object, float]] = []
    lo, lo_pos = 0, -math.inf
    for sid in pattern.stop_ids:
        stop = schedule.stops[sid]
        pt = net.convertLonLat2XY(stop.lon, stop.lat)  # type: ignore[attr-defined]
        best: tuple[float, int, object, float] | None = None
        for i in range(lo, len(edges)):
            lane = _bus_lane(edges[i])
            if lane is None:
                continue
            off, dist = polygonOffsetAndDistanceToPoint(pt, lane.getShape())  # type: ignore[attr-defined]
            if dist < 0 or (i == lo and off <= lo_pos):
                continue
            if best is None or dist < best[0]:
                best = (dist, i, lane, off)
        if best is None or best[0] > MAX_STOP_DISTANCE_M:
            return None
        _, i, lane, off = best
        out.append((i, lane, off))
        lo, lo_pos = i, off
    return out


def _dwell(rng: random.Random) -> float:
    return float(round(min(90.0, rng.uniform(8.0, 25.0) + rng.expovariate(1 / 15.0))))


def make_bus_demand(net_path: Path, gtfs: Path, out_dir: Path, *, t0: datetime,
                    duration_s: float, seed: int) -> BusDemand:
    """Bus stops and timetabled buses for the trips leaving in [t0, t0 + duration_s)."""
    import sumolib

    net = sumolib.net.readNet(str(net_path))
    schedule = GtfsFileSource(gtfs).load_sync()
    t_from, t_to = t0.timestamp(), t0.timestamp() + duration_s
    runs: list[TripRun] = []
    for route_id in sorted(schedule.routes):
        for run in schedule.runs_between(route_id, None, t_from, t_to):
            if t_from <= run.departure_at(0) < t_to:
                runs.append(run)
    runs.sort(key=lambda r: (r.departure_at(0), r.trip.trip_id))
    rng = random.Random(seed)
    placed: dict[str, tuple[list[str], list[str]] | None] = {}  # pattern → edges, stops
    stops_xml: dict[str, dict[str, str]] = {}
    trips: list[BusTrip] = []
    unroutable: list[str] = []
    root = ET.Element("routes")
    vtype = ET.SubElement(root, "vType", {"id": VTYPE, "vClass": "bus", "length": "12",
                                          "maxSpeed": "16.67", "color": "1,0.8,0"})
    ET.SubElement(vtype, "param", {"key": "has.fcd.device", "value": "true"})
    for run in runs:
        pattern = run.trip.pattern
        if pattern.pattern_id not in placed:
            placed[pattern.pattern_id] = _route(pattern, schedule, net, stops_xml)
        plan = placed[pattern.pattern_id]
        if plan is None:
            unroutable.append(run.trip.trip_id)
            continue
        edges, bus_stops = plan
        depart = run.departure_at(0) - t_from
        dwell = [0.0] + [_dwell(rng) for _ in range(pattern.n_stops - 1)]
        trip = BusTrip(
            vehicle=f"{PREFIX}{run.trip.trip_id}_{run.start_date}", trip_id=run.trip.trip_id,
            route_id=run.trip.route_id, direction_id=run.trip.direction_id,
            start_date=run.start_date, stop_ids=pattern.stop_ids,
            stop_sequence=tuple(int(s) for s in run.trip.stop_sequence),
            scheduled_arrival=tuple(run.arrival_at(k) for k in range(pattern.n_stops)),
            bus_stops=tuple(bus_stops), depart_s=depart, dwell_s=tuple(dwell))
        trips.append(trip)
        first = stops_xml[bus_stops[0]]
        veh = ET.SubElement(root, "vehicle", {
            "id": trip.vehicle, "type": VTYPE,
            "depart": f"{max(0.0, depart - TERMINAL_WAIT_S):.0f}",
            "departLane": first["lane"].rpartition("_")[2], "departPos": first["startPos"],
            "line": run.trip.route_id})
        ET.SubElement(veh, "route", {"edges": " ".join(edges)})
        for k, bs in enumerate(bus_stops):
            attrs = {"busStop": bs, "duration": f"{dwell[k]:.0f}"}
            if k == 0:
                attrs = {"busStop": bs, "duration": "1", "until": f"{depart:.0f}"}
            ET.SubElement(veh, "stop", attrs)
    out_dir.mkdir(parents=True, exist_ok=True)
    routes_path, stops_path = out_dir / "buses.rou.xml", out_dir / "busstops.add.xml"
    ET.ElementTree(root).write(routes_path, encoding="utf-8", xml_declaration=True)
    add = ET.Element("additional")
    for attrs in stops_xml.values():
        ET.SubElement(add, "busStop", attrs)
    ET.ElementTree(add).write(stops_path, encoding="utf-8", xml_declaration=True)
    return BusDemand(routes=routes_path, stops=stops_path, trips=trips, gtfs=gtfs,
                     timetable_trips=len(runs), unroutable=unroutable)


def _route(pattern: Pattern, schedule: Schedule, net: object,
           stops_xml: dict[str, dict[str, str]]) -> tuple[list[str], list[str]] | None:
    """The pattern's SUMO edges (first stop's to last stop's) and its busStop ids."""
    import sumolib

    xy = [net.convertLonLat2XY(lon, lat) for lon, lat in pattern.shape.lonlat]  # type: ignore[attr-defined]
    edges = list(sumolib.route.mapTrace(_dense(xy), net, 25.0, fillGaps=5000.0, vClass="bus",
                                        direction=True))
    if not edges:
        return None
    sites = _place_stops(pattern, schedule, edges, net)
    if sites is None:
        return None
    first, last = sites[0][0], sites[-1][0]
    ids: list[str] = []
    for sid, (_, lane, off) in zip(pattern.stop_ids, sites, strict=True):
        length = lane.getLength()  # type: ignore[attr-defined]
        bs = f"bs_{sid}_{lane.getID()}"  # type: ignore[attr-defined]
        stops_xml.setdefault(bs, {
            "id": bs, "lane": lane.getID(),  # type: ignore[attr-defined]
            "startPos": f"{max(0.0, min(off - 10.0, length - 18.0)):.1f}",
            "endPos": f"{min(length, max(off + 8.0, 18.0)):.1f}", "friendlyPos": "true",
            "name": schedule.stops[sid].name})
        ids.append(bs)
    return [e.getID() for e in edges[first:last + 1]], ids


def read_bus_stops(path: Path) -> dict[str, list[tuple[str, float, float]]]:
    """Bus vehicle → (busStop, started, ended) of each stop it made, in order (SUMO seconds)."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    if not path.is_file():
        return out
    for _, el in ET.iterparse(path):
        if el.tag == "stopinfo" and el.get("busStop"):
            out.setdefault(el.get("id", ""), []).append(
                (el.get("busStop", ""), float(el.get("started", "0")),
                 float(el.get("ended", "0"))))
    for stops in out.values():
        stops.sort(key=lambda s: s[1])
    return out


def write_registry(path: Path, trips: list[BusTrip], phones: dict[str, str]) -> Path:
    """The vehicle registry TTI reads: each bus's terminal, class ``bus`` and its route."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["terminal_phone", "plate", "vehicle_class", "operator", "route_id"])
        for trip in trips:
            phone = phones.get(trip.vehicle)
            if phone is not None:
                w.writerow([phone, f"鄂A{phone[-5:]}", "bus", "SUMO bus", trip.route_id])
    return path


def scenario_start(start: datetime, rate: float, ready_real_s: float = 10.0) -> datetime:
    """When TTI's clock starts so that it is ready before ``start`` (SUMO's second 0)."""
    return start - timedelta(seconds=max(60.0, rate * ready_real_s))
