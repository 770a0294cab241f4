"""The ``tti run --safety-demo`` scenario: four 两客一危 vehicles, each breaking one rule once.

On the demo city (``shared/demo.py``), four scripted JT/T 808 terminals authenticate like the
rest of the fleet (registry rows with their classes) and drive:

========  ==================  ==================================================================
 key       class               what it does (local time, Asia/Shanghai)
========  ==================  ==================================================================
speeding  dangerous_goods     02:30: along an arterial (maxspeed 60), 3 km of it at 75 km/h
night     coach               02:25-02:55: a long-distance coach (route K-WH-YC, 320 km) moving
                              between 02:00 and 05:00
tunnel    dangerous_goods     02:35: onto the ring and through 江城隧道, closed to dangerous
                              goods by a geofence the demo imports
fatigue   coach               06:01-10:33: 4.5 h of driving by day without a rest (route
                              K-WH-XG, 65 km: exempt from the night rule anyway)
========  ==================  ==================================================================

Each drives otherwise cleanly, so each raises exactly one alarm: every leg but the speeding
stretch is at least ``MARGIN_KMH`` under the limit that binds that vehicle there (the
segment's limit; dangerous goods at most 80 km/h on expressways and 60 elsewhere; coaches at
80 % of the day limit from 22:00 to 06:00); the night drives last well under the 2-hour night
fatigue limit; before departing and after arriving a vehicle stands with the ignition off
(resting), still connected, so it can take the platform's text message.

**One clock for a night and a morning.** The clock starts at 02:00 local (``clock_start``) and
runs ``CLOCK_RATE`` (150) times faster than real time: the three night drives happen at once,
the day coach leaves at 06:01 and passes 4 h of driving at 10:01 — about 8 h of clock time,
3.4 minutes of real time. Departures are local clock times, not offsets from the start, and
none is earlier than 10 clock minutes after the fleet starts (``fleet.SETTLE_S``: every service
must be consuming first), so a slow start-up (seconds of real time are minutes of clock time)
only delays the night drives within the 02:00-05:00 window; a clock started after 04:00 runs
the scenario the next night.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from shared.roadnet import RoadNetwork, RoadSegment, RoutingGraph, speed_limit

LOCAL_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
CLOCK_RATE = 150.0
"""Default clock rate of the safety demo: 8 h of clock time in about 3.2 minutes."""
CLOCK_START = time(2, 0)
"""Default local time the safety demo's clock starts at."""
MARGIN_KMH = 8.0
"""How far under its binding limit a scenario vehicle drives, except where it speeds."""
EXPRESSWAY = frozenset({"motorway", "motorway_link", "trunk", "trunk_link"})
NIGHT = (time(22, 0), time(6, 0))
SPEEDING_KMH = 75.0
SPEEDING_FROM_M = 600.0
SPEEDING_LENGTH_M = 3000.0
DAY_DRIVE_S = 4.5 * 3600 + 120.0
NIGHT_DRIVE_S = 30 * 60.0
COACH_ROUTES = (("K-WH-YC", 320.0, "武汉—宜昌"), ("K-WH-XG", 65.0, "武汉—孝感"))
"""The demo's coach routes (route_id, length km, name), written for ``TTI_COACH_ROUTES``."""
TUNNEL_FENCE_ID = "demo-tunnel-dangerous-goods"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioVehicle:
    """One scripted vehicle: who it is, when it leaves (local time) and what it drives."""

    key: str
    """``speeding``, ``night``, ``tunnel`` or ``fatigue``."""
    phone: str
    plate: str
    vehicle_class: str
    route_id: str | None
    depart_local: time
    path: tuple[tuple[str, float], ...]
    """(segment id, speed km/h) in driving order; consecutive segments connect."""
    expected_rule: str
    """The one rule it breaks (the warning service's rule name)."""
    description: str


def limit_for(seg: RoadSegment, vehicle_class: str, *, night: bool) -> float:
    """The speed limit binding ``vehicle_class`` on ``seg`` (km/h)."""
    limit, _source = speed_limit(seg)
    value = limit if limit else 30.0  # §45's lowest city default where nothing is known
    if vehicle_class == "dangerous_goods":
        value = min(value, 80.0 if seg.road_class in EXPRESSWAY else 60.0)
    if night and vehicle_class in ("coach", "tourist_bus"):
        value *= 0.8
    return value


def clean_speed(seg: RoadSegment, vehicle_class: str, *, night: bool, cruise_kmh: float) -> float:
    """The cruise speed, or ``MARGIN_KMH`` under the binding limit where that is lower."""
    return max(10.0, min(cruise_kmh, limit_for(seg, vehicle_class, night=night) - MARGIN_KMH))


def is_night(local: time) -> bool:
    """Whether a local time of day is in 22:00-06:00."""
    return local >= NIGHT[0] or local < NIGHT[1]


def clock_start(now: datetime) -> datetime:
    """The demo clock's default start: 02:00 local on the local date of ``now`` (UTC)."""
    day = now.astimezone(LOCAL_TZ).date()
    return datetime.combine(day, CLOCK_START, LOCAL_TZ).astimezone(UTC)


LATEST_START = time(4, 0)
"""A scenario starting later than this (local) waits for the next night: its night drives
(30 min at most) must still end before 05:00."""


def scenario_day(now: datetime) -> date:
    """The local date the scenario runs on: today until ``LATEST_START`` (a departure time
    already past is left at once), else tomorrow."""
    local = now.astimezone(LOCAL_TZ)
    return local.date() if local.time() <= LATEST_START else local.date() + timedelta(days=1)


def departure(vehicle: ScenarioVehicle, day: date) -> datetime:
    """When ``vehicle`` leaves on ``day`` (UTC)."""
    return datetime.combine(day, vehicle.depart_local, LOCAL_TZ).astimezone(UTC)


# ---- paths -----------------------------------------------------------------------------------


class _Planner:
    """Street and ring routes on the demo city, for scripted drives."""

    def __init__(self, network: RoadNetwork) -> None:
        self.network = network
        self.router = RoutingGraph(network, landmarks=4)
        min_lon, min_lat, max_lon, max_lat = network.bbox()
        self.bbox = (min_lon, min_lat, max_lon, max_lat)
        # Streets only: the ring and its ramps cost fifty times their time.
        self.streets = self.router.weights({
            s.segment_id: 50 * s.length_m / (s.free_flow_kmh / 3.6)
            for s in network if s.road_class in EXPRESSWAY})

    def at(self, fx: float, fy: float, *, street: bool = True) -> int:
        """A node near the point at fractions (fx, fy) of the map's box."""
        min_lon, min_lat, max_lon, max_lat = self.bbox
        lon, lat = min_lon + fx * (max_lon - min_lon), min_lat + fy * (max_lat - min_lat)
        for c in self.network.nearest(lon, lat, radius_m=600.0, k=32):
            seg = self.network.get_segment(c.segment_id)
            if not street or seg.road_class not in EXPRESSWAY | {"service"}:
                return seg.from_node
        raise ValueError(f"no street near {lon:.5f}, {lat:.5f}")

    def route(self, a: int, b: int, weights: Any = None) -> list[str]:
        found = self.router.fastest(a, b, weights if weights is not None else self.streets)
        if found is None or not found.segment_ids:
            raise ValueError(f"no route from node {a} to node {b}")
        return list(found.segment_ids)

    def loop(self, corners: Sequence[tuple[float, float]]) -> list[str]:
        """A closed street loop through nodes near ``corners`` (fractions of the box)."""
        nodes = [self.at(x, y) for x, y in corners]
        segs: list[str] = []
        for a, b in zip(nodes, [*nodes[1:], nodes[0]], strict=True):
            segs += self.route(a, b)
        return self.without_u_turns(segs, closed=True)

    def without_u_turns(self, segs: Sequence[str], *, closed: bool = False) -> list[str]:
        """``segs`` with every there-and-back (a segment followed by its reverse) cut out:
        a route into a corner node and out the same way. The path stays connected."""
        reverse = self.network.find_reverse
        out: list[str] = []
        for sid in segs:
            if out and reverse(out[-1]) == sid:
                out.pop()
            else:
                out.append(sid)
        while closed and len(out) > 2 and reverse(out[-1]) == out[0]:
            out = out[1:-1]
        return out

    def straight(self, road_class: str, min_length_m: float) -> list[str]:
        """The longest straight run along one named street of ``road_class`` (no bridge)."""
        best: list[str] = []
        net = self.network
        for seg in sorted(net, key=lambda s: s.segment_id):
            if seg.road_class != road_class or seg.bridge or seg.tunnel:
                continue
            run, cur, length = [seg.segment_id], seg, seg.length_m
            while True:
                nxt = [net.get_segment(n) for n in net.successors(cur.segment_id)]
                nxt = [n for n in nxt if n.name == seg.name and n.road_class == road_class
                       and not n.bridge and n.segment_id != net.find_reverse(cur.segment_id)
                       and n.segment_id not in run]
                if len(nxt) != 1:
                    break
                cur = nxt[0]
                run.append(cur.segment_id)
                length += cur.length_m
            if length > sum(net.get_segment(s).length_m for s in best):
                best = run
        if sum(net.get_segment(s).length_m for s in best) < min_length_m:
            raise ValueError(f"no straight {road_class} street of {min_length_m:.0f} m")
        return best


def _timed(network: RoadNetwork, loop: Sequence[str], vehicle_class: str, *, night: bool,
           cruise_kmh: float, drive_s: float) -> tuple[tuple[str, float], ...]:
    """The loop driven again and again, cleanly, until ``drive_s`` of driving."""
    path: list[tuple[str, float]] = []
    t = 0.0
    while t < drive_s:
        for sid in loop:
            seg = network.get_segment(sid)
            speed = clean_speed(seg, vehicle_class, night=night, cruise_kmh=cruise_kmh)
            path.append((sid, speed))
            t += seg.length_m / (speed / 3.6)
            if t >= drive_s:
                break
    return tuple(path)


def _clean(network: RoadNetwork, segs: Sequence[str], vehicle_class: str, *, night: bool,
           cruise_kmh: float) -> tuple[tuple[str, float], ...]:
    return tuple((sid, clean_speed(network.get_segment(sid), vehicle_class, night=night,
                                   cruise_kmh=cruise_kmh)) for sid in segs)


def plan_scenario(network: RoadNetwork, tunnel_segment_ids: Sequence[str]) -> list[ScenarioVehicle]:
    """The four scenario vehicles on the demo city's road network.

    ``tunnel_segment_ids``: the tunnel closed to dangerous goods (both directions); the tunnel
    truck drives through the first one, the others never enter either.
    """
    p = _Planner(network)
    # (a) 3 km of an arterial at 75 km/h (2.4 min over the limit: the 30 s tolerance many
    # times over), the rest of it cleanly.
    run = p.straight("primary", SPEEDING_FROM_M + SPEEDING_LENGTH_M + 600.0)
    speeding: list[tuple[str, float]] = []
    done = 0.0
    for sid in run:
        seg = network.get_segment(sid)
        fast = SPEEDING_FROM_M <= done < SPEEDING_FROM_M + SPEEDING_LENGTH_M
        speeding.append((sid, SPEEDING_KMH if fast else
                         clean_speed(seg, "dangerous_goods", night=True, cruise_kmh=50.0)))
        done += seg.length_m
    # (b), (c): loops round the blocks south of the river.
    south = p.loop([(0.3, 0.2), (0.7, 0.2), (0.7, 0.4), (0.3, 0.4)])
    north = p.loop([(0.3, 0.8), (0.3, 0.6), (0.7, 0.6), (0.7, 0.8)])
    # (d) from the north-west streets onto the ring, through the tunnel, off to the south-west.
    tunnel = network.get_segment(tunnel_segment_ids[0])
    avoid = p.router.free_flow().with_closed([s for s in tunnel_segment_ids
                                              if s != tunnel.segment_id])
    before = p.route(p.at(0.2, 0.75), tunnel.from_node, avoid)
    after = p.route(tunnel.to_node, p.at(0.25, 0.2), avoid)
    tunnel_path = [*before, tunnel.segment_id, *after]
    return [
        ScenarioVehicle(
            key="speeding", phone="019900000001", plate="鄂A90001", vehicle_class="dangerous_goods",
            route_id=None, depart_local=time(2, 30), path=tuple(speeding),
            expected_rule="speeding",
            description=f"dangerous goods at {SPEEDING_KMH:.0f} km/h on an arterial limited "
                        f"to 60"),
        ScenarioVehicle(
            key="night", phone="019900000002", plate="鄂A90002", vehicle_class="coach",
            route_id=COACH_ROUTES[0][0], depart_local=time(2, 25),
            path=_timed(network, north, "coach", night=True, cruise_kmh=45.0,
                        drive_s=NIGHT_DRIVE_S),
            expected_rule="night_driving",
            description="a long-distance coach (320 km route) moving at 02:30"),
        ScenarioVehicle(
            key="tunnel", phone="019900000003", plate="鄂A90003", vehicle_class="dangerous_goods",
            route_id=None, depart_local=time(2, 35),
            path=_clean(network, tunnel_path, "dangerous_goods", night=True, cruise_kmh=60.0),
            expected_rule="geofence",
            description="dangerous goods entering 江城隧道, closed to them"),
        ScenarioVehicle(
            key="fatigue", phone="019900000004", plate="鄂A90004", vehicle_class="coach",
            route_id=COACH_ROUTES[1][0], depart_local=time(6, 1),
            path=_timed(network, south, "coach", night=False, cruise_kmh=50.0,
                        drive_s=DAY_DRIVE_S),
            expected_rule="fatigue_continuous",
            description="a coach driving 4.5 h by day without a 20-minute rest"),
    ]


# ---- files the demo writes --------------------------------------------------------------------


def coach_routes_csv() -> str:
    """``route_id,length_km`` of the demo's coach routes (``TTI_COACH_ROUTES``)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["route_id", "length_km"])
    for route_id, length_km, _name in COACH_ROUTES:
        w.writerow([route_id, f"{length_km:g}"])
    return out.getvalue()


def tunnel_geofence(name: str, name_en: str, segment_ids: Sequence[str]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection closing the tunnel (both bores) to dangerous goods."""
    return {"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": TUNNEL_FENCE_ID, "geometry": None,
        "properties": {"name": name, "name_en": name_en, "kind": "restricted_road",
                       "description": f"{name}禁止危险货物运输车通行 ({name_en}: closed to "
                                      f"dangerous goods)",
                       "vehicle_classes": ["dangerous_goods"],
                       "segment_ids": list(segment_ids), "source": "tti run --safety-demo"}}]}


def write_files(folder: Path, *, tunnel_name: str, tunnel_name_en: str,
                tunnel_segment_ids: Sequence[str]) -> tuple[Path, Path]:
    """Write the coach routes CSV and the tunnel geofence; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    routes = folder / "coach_routes.csv"
    routes.write_text(coach_routes_csv(), encoding="utf-8")
    fences = folder / "geofences.geojson"
    fences.write_bytes(orjson.dumps(tunnel_geofence(tunnel_name, tunnel_name_en,
                                                    tunnel_segment_ids)))
    return routes, fences
