"""Demand with peaks and incidents for one SUMO scenario.

Trips come from SUMO's ``randomTrips.py`` with a time-varying insertion rate (a morning peak:
the rate rises to its maximum in the second third of the scenario and falls after), routed and
checked by ``duarouter`` (``--validate``). A seeded share of the vehicles gets the ``probe``
type, whose ``has.fcd.device`` parameter makes SUMO write their 1-s trace (FCD): those are the
vehicles replayed as JT/T 808 terminals.

Incidents are stopped vehicles: ``stopped`` blocks one lane, ``closure`` every lane but one
(on a one-lane road, the road), at a position on an edge from a start for a duration. The same
demand and seed run once with them and once without (the baseline) tell what they caused.
"""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bench.sumo.binaries import run_tool
from bench.sumo.simulate import INCIDENT_VTYPE

__all__ = ["Incident", "make_trips", "peak_rates", "write_incidents"]

INCIDENT_KINDS = ("stopped", "closure")


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    """Vehicles stopped on ``lanes`` of ``edge_id`` at ``pos_m`` from ``start_s`` (SUMO time)."""

    incident_id: str
    kind: str
    edge_id: str
    lanes: tuple[int, ...]
    pos_m: float
    start_s: float
    duration_s: float
    place: str = ""
    """What kind of road it is on (arterial, bridge, tunnel, ring …), for the table."""

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


def peak_rates(peak_per_hour: float, slots: int = 6) -> list[float]:
    """Insertion rates (vehicles/h) for equal time slots: a peak in the second third.

    A raised cosine from 45 % of the peak at the start to the peak at 45 % of the scenario and
    back to 55 % at its end.
    """
    out = []
    for i in range(slots):
        x = (i + 0.5) / slots
        shape = 0.5 * (1 - math.cos(2 * math.pi * min(1.0, x / 0.9)))  # 0 … 1 … 0
        floor = 0.45 if x < 0.45 else 0.55
        out.append(round(peak_per_hour * (floor + (1 - floor) * shape), 1))
    return out


def make_trips(net_path: Path, out_dir: Path, *, duration_s: float, peak_per_hour: float,
               seed: int, probe_share: float) -> Path:
    """Routes for ``duration_s`` of demand; a ``probe_share`` of the vehicles are probes."""
    if not 0 < probe_share <= 1:
        raise ValueError(f"probe share must be in (0, 1], not {probe_share}")
    out_dir.mkdir(parents=True, exist_ok=True)
    trips, routes = out_dir / "trips.trips.xml", out_dir / "raw.rou.xml"
    slots = max(3, min(12, round(duration_s / 600)))
    rates = peak_rates(peak_per_hour, slots)
    run_tool(["randomTrips.py", "-n", str(net_path), "-o", str(trips), "-r", str(routes),
              "-b", "0", "-e", str(duration_s), "--insertion-rate", *map(str, rates),
              "--seed", str(seed), "--fringe-factor", "5", "--min-distance", "600",
              "--vehicle-class", "passenger", "--validate", "--random-depart",
              "--remove-loops", "--prefix", "v"], cwd=out_dir)
    tree = ET.parse(routes)
    root = tree.getroot()
    rng = random.Random(seed)
    base = root.find("vType")
    if base is None:
        raise ValueError(f"randomTrips wrote no vType into {routes}")
    probe = ET.Element("vType", {**base.attrib, "id": "probe"})
    ET.SubElement(probe, "param", {"key": "has.fcd.device", "value": "true"})
    root.insert(list(root).index(base) + 1, probe)
    for veh in root.iter("vehicle"):
        if rng.random() < probe_share:
            veh.set("type", "probe")
    out = out_dir / "demand.rou.xml"
    tree.write(out, encoding="utf-8", xml_declaration=True)
    return out


def write_incidents(incidents: list[Incident], path: Path) -> Path:
    """The stopped vehicles of ``incidents`` as a SUMO route file."""
    root = ET.Element("routes")
    ET.SubElement(root, "vType", {"id": INCIDENT_VTYPE, "vClass": "passenger", "color": "red"})
    for inc in sorted(incidents, key=lambda i: i.start_s):
        for lane in inc.lanes:
            veh = ET.SubElement(root, "vehicle", {
                "id": f"{inc.incident_id}_lane{lane}", "type": INCIDENT_VTYPE,
                "depart": f"{inc.start_s:.0f}", "departLane": str(lane),
                "departPos": f"{inc.pos_m:.1f}", "departSpeed": "0"})
            ET.SubElement(veh, "route", {"edges": inc.edge_id})
            ET.SubElement(veh, "stop", {"lane": f"{inc.edge_id}_{lane}",
                                        "startPos": f"{inc.pos_m:.1f}",
                                        "endPos": f"{inc.pos_m + 8:.1f}",
                                        "duration": f"{inc.duration_s:.0f}"})
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
