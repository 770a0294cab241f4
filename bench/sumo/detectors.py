"""Roadside detectors in the harness: SUMO induction loops replayed through TTI's detector input.

Real cities watch bridges, tunnels and ring roads with loops, radar and video (Chinese tunnels
every few hundred metres), where probe vehicles alone are too few: at 10 % probes 0–1 of them
pass such an edge during a ten-minute incident. ``place_detectors`` puts a detector every
``SPACING_M`` along each watched edge (at least one, none nearer than half that to its ends):
on the demo city its bridges, tunnel and ring road, elsewhere its expressways and their ramps
(``motorway``/``trunk`` and their links). A TTI detector is one position across all lanes of an
edge: in SUMO one E1 induction loop per lane (``inductionLoop``, period 60 s), in TTI's registry
(``tti import-detectors`` CSV: ``detector_id,segment_id,lon,lat,type,name``) watching the TTI
segment at that position (``Mapping.segment_at``).

Every SUMO run has the loops (``Placement.additional``, one output file per run's folder);
``read_loops`` sums each detector's lanes per interval (count: Σ ``nVehContrib``; speed: the
count-weighted mean of the lanes' mean speeds, m/s with −1 for none; occupancy: the lanes'
mean). ``DetectorReplay`` posts each interval's readings to the collector's
``POST /api/v1/detectors/{detector_id}/readings`` (with the sensor token the host configures)
when the harness's clock reaches the interval's end, and counts what was accepted and refused.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp

from bench.sumo.mapping import Mapping
from bench.sumo.network import SumoNetwork, road_category
from shared.clock import Clock

__all__ = ["MODES", "DetectorReplay", "DetectorReplayStats", "Placement", "Reading", "Site",
           "place_detectors", "read_loops"]

log = logging.getLogger("tti.bench.sumo")

MODES = ("none", "structures")
"""``--detectors``: none, or loops on the structures (bridges, tunnels, ring/expressways)."""
PERIOD_S = 60
"""A loop's aggregation interval: one minute, TTI's default speed window."""
SPACING_M = 250.0
"""Between two detectors along an edge (tunnels: every few hundred metres)."""
WATCHED_DEMO = ("bridge", "tunnel", "ring")
WATCHED_TYPES = ("motorway", "motorway_link", "trunk", "trunk_link")
"""Elsewhere (an OSM network without the demo's landmarks): expressways and their ramps."""
LOOPS_FILE = "loops.xml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """One TTI detector: a position on an edge, a loop on each of its lanes."""

    detector_id: str
    edge_id: str
    frac: float
    """Position along the edge, as a fraction of its lanes' lengths."""
    segment_id: str
    lon: float
    lat: float
    place: str
    name: str | None
    loops: tuple[tuple[str, str, float], ...]
    """(SUMO loop id, lane id, position in metres on that lane)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the detectors are; empty for ``--detectors none``."""

    sites: tuple[Site, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.sites)

    @property
    def loop_site(self) -> dict[str, str]:
        """SUMO loop id → TTI detector id."""
        return {loop: s.detector_id for s in self.sites for loop, _, _ in s.loops}

    @property
    def segments(self) -> set[str]:
        """The TTI segments some detector watches."""
        return {s.segment_id for s in self.sites}

    def on_edges(self, edges: Iterable[str]) -> list[Site]:
        """The detectors on any of ``edges``."""
        wanted = set(edges)
        return [s for s in self.sites if s.edge_id in wanted]

    def additional(self, out_dir: Path) -> Path:
        """The loops as a SUMO additional file in ``out_dir``, writing ``out_dir/loops.xml``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "loops.add.xml"
        lines = ["<additional>"]
        for s in self.sites:
            for loop, lane, pos in s.loops:
                lines.append(f'  <inductionLoop id="{loop}" lane="{lane}" pos="{pos:.2f}" '
                             f'period="{PERIOD_S}" file="{LOOPS_FILE}" friendlyPos="true"/>')
        lines.append("</additional>")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def write_registry(self, path: Path) -> Path:
        """The registry as an operator hands it to ``tti import-detectors``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["detector_id", "segment_id", "lon", "lat", "type", "name"])
            for s in self.sites:
                label = f"{s.name or s.place} loop {s.detector_id.rpartition('_')[2]}"
                w.writerow([s.detector_id, s.segment_id, f"{s.lon:.7f}", f"{s.lat:.7f}",
                            "inductive_loop", label])
        return path


def watched(edge: str, net: SumoNetwork, mapping: Mapping) -> str | None:
    """The kind of structure a detector watches ``edge`` as, or None."""
    kind = mapping.edge_type.get(edge, "")
    if net.landmarks:
        cat = road_category(edge, kind, net.landmarks)
        return cat if cat in WATCHED_DEMO else None
    return "expressway" if kind in WATCHED_TYPES else None


def place_detectors(net: SumoNetwork, mapping: Mapping, mode: str = "structures") -> Placement:
    """A detector every ``SPACING_M`` on each watched, mapped edge (``mode`` of :data:`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"--detectors must be one of {', '.join(MODES)}: {mode!r}")
    if mode == "none":
        return Placement()
    import sumolib
    from sumolib.geomhelper import positionAtShapeOffset

    sumo = sumolib.net.readNet(str(net.net_path))
    sites: list[Site] = []
    for edge in sorted(mapping.by_edge):
        place = watched(edge, net, mapping)
        if place is None:
            continue
        length = mapping.edge_length_m[edge]
        n = max(1, round(length / SPACING_M))
        lanes = sumo.getEdge(edge).getLanes()
        for k in range(n):
            frac = (k + 0.5) / n
            lane0 = lanes[0]
            piece = mapping.segment_at(lane0.getID(), frac * lane0.getLength())
            if piece is None:
                continue
            mid = lanes[len(lanes) // 2]
            x, y = positionAtShapeOffset(mid.getShape(), frac * mid.getLength())
            lon, lat = sumo.convertXY2LonLat(x, y)
            det = f"loop_{edge.replace('#', '.')}_{k + 1}"
            mapped = mapping.by_segment.get(piece.segment_id)
            sites.append(Site(
                detector_id=det, edge_id=edge, frac=frac, segment_id=piece.segment_id,
                lon=lon, lat=lat, place=place, name=mapped.name if mapped else None,
                loops=tuple((f"{det}_l{ln.getIndex()}", ln.getID(), frac * ln.getLength())
                            for ln in lanes)))
    return Placement(tuple(sites))


@dataclass(frozen=True, slots=True)
class Reading:
    """One detector's interval, all lanes together (what a roadside station sends)."""

    detector_id: str
    begin_s: float
    end_s: float
    vehicle_count: int
    mean_speed_kmh: float | None
    """Count-weighted mean of the lanes' time-mean speeds; None when no vehicle passed."""
    occupancy_pct: float

    def as_json(self, t0: datetime) -> dict[str, object]:
        """The reading as TTI's detector input takes it (``observed_at``: the interval's end)."""
        body: dict[str, object] = {
            "observed_at": (t0 + timedelta(seconds=self.end_s)).isoformat(),
            "interval_s": self.end_s - self.begin_s, "vehicle_count": self.vehicle_count,
            "occupancy_pct": round(min(100.0, self.occupancy_pct), 2)}
        if self.mean_speed_kmh is not None:
            body["mean_speed_kmh"] = round(min(250.0, self.mean_speed_kmh), 2)
        return body


def read_loops(path: Path, placement: Placement, *, until_s: float | None = None
               ) -> list[Reading]:
    """Every detector's readings from a run's E1 output, lanes summed, intervals ending by
    ``until_s`` (None: all), in time order."""
    site_of = placement.loop_site
    # (detector, begin, end) -> [vehicles, Σ vehicles × speed (m/s), Σ occupancy, lanes]
    acc: dict[tuple[str, float, float], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for _, el in ET.iterparse(path):
        if el.tag != "interval":
            continue
        det = site_of.get(el.get("id", ""))
        begin, end = float(el.get("begin", "0")), float(el.get("end", "0"))
        if det is not None and (until_s is None or end <= until_s + 1e-6):
            n = int(float(el.get("nVehContrib", "0")))
            speed = float(el.get("speed", "-1"))
            a = acc[(det, begin, end)]
            a[3] += 1
            a[2] += float(el.get("occupancy", "0"))
            if n > 0 and speed >= 0:
                a[0] += n
                a[1] += n * speed
        el.clear()
    out = [Reading(det, begin, end, int(a[0]),
                   a[1] / a[0] * 3.6 if a[0] else None, a[2] / max(1, a[3]))
           for (det, begin, end), a in acc.items()]
    return sorted(out, key=lambda r: (r.end_s, r.detector_id))


@dataclass(slots=True)
class DetectorReplayStats:
    """What the detector replay did, for the table's notes and the test."""

    detectors: int = 0
    intervals: int = 0
    readings_sent: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_code: dict[str, int] = field(default_factory=dict)
    late_s_max: float = 0.0
    """Largest delay (clock seconds) of a post behind its interval's end."""
    failures: list[str] = field(default_factory=list)


class DetectorReplay:
    """Posts each interval's readings to the collector when ``clock`` reaches its end."""

    CONCURRENCY = 16

    def __init__(self, readings: list[Reading], *, collector_url: str, clock: Clock,
                 t0: datetime, token: str | None) -> None:
        self.readings = readings
        self.url = collector_url.rstrip("/")
        self.clock, self.t0 = clock, t0
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.stats = DetectorReplayStats(detectors=len({r.detector_id for r in readings}))
        self._codes: Counter[str] = Counter()

    async def run(self) -> None:
        """Replay every interval; returns after the last one's posts were answered."""
        by_end: dict[float, list[Reading]] = defaultdict(list)
        for r in self.readings:
            by_end[r.end_s].append(r)
        gate = asyncio.Semaphore(self.CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers=self.headers, timeout=timeout) as http:
            for end in sorted(by_end):
                when = (self.t0 + timedelta(seconds=end)).timestamp()
                await self.clock.sleep(when - self.clock.time())
                self.stats.late_s_max = max(self.stats.late_s_max, self.clock.time() - when)
                self.stats.intervals += 1
                await asyncio.gather(*(self._post(http, gate, r) for r in by_end[end]))
        self.stats.rejected_by_code = dict(self._codes)

    async def _post(self, http: aiohttp.ClientSession, gate: asyncio.Semaphore,
                    r: Reading) -> None:
        url = f"{self.url}/api/v1/detectors/{r.detector_id}/readings"
        async with gate:
            self.stats.readings_sent += 1
            try:
                async with http.post(url, json=r.as_json(self.t0)) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 202:
                        self.stats.accepted += int(body.get("accepted", 0))
                        for rej in body.get("rejected", ()):
                            self._reject(str(rej.get("code")))
                    else:
                        err = body.get("error", {}) if isinstance(body, dict) else {}
                        self._reject(str(err.get("code") or f"http_{resp.status}"))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self._reject("failed")
                if len(self.stats.failures) < 20:
                    self.stats.failures.append(f"{r.detector_id}: {type(exc).__name__}: {exc}")

    def _reject(self, code: str) -> None:
        self.stats.rejected += 1
        self._codes[code] += 1


def loop_minutes(readings: Iterable[Reading]) -> dict[tuple[str, int], Reading]:
    """(detector, minute index) → its reading (intervals of one minute)."""
    return {(r.detector_id, int(r.begin_s // PERIOD_S)): r for r in readings}
