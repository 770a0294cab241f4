"""Run SUMO on one scenario and read what it measured: edgeData, the probes' FCD, stops."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.sumo.binaries import run_tool

__all__ = ["EdgeMinute", "Fix", "SumoRun", "read_edgedata", "read_fcd", "read_stops", "run_sumo"]

PERIOD_S = 60
"""edgeData interval: one minute, TTI's default speed window."""


@dataclass(frozen=True, slots=True)
class Fix:
    """One second of one probe vehicle (SUMO's FCD, geo coordinates)."""

    t: float
    lon: float
    lat: float
    speed_ms: float
    angle_deg: float
    lane: str
    pos_m: float

    @property
    def edge(self) -> str:
        """The lane's edge; '' inside a junction (internal lanes start with ':')."""
        return "" if self.lane.startswith(":") else self.lane.rpartition("_")[0]


@dataclass(frozen=True, slots=True)
class EdgeMinute:
    """SUMO's edgeData for one edge and minute, all vehicles."""

    speed_ms: float
    sampled_s: float
    entered: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SumoRun:
    """The files of one SUMO run."""

    edgedata: Path
    fcd: Path | None
    stops: Path
    summary: str


INCIDENT_VTYPE = "incident"
"""The stopped vehicles that make the incidents (``demand.write_incidents``)."""


def traffic_vtypes(routes: list[Path]) -> list[str]:
    """The vehicle types of the route files but the incidents' own stopped vehicles."""
    types: list[str] = []
    for path in routes:
        for _, el in ET.iterparse(path, events=("start",)):
            if el.tag == "vType" and el.get("id") and el.get("id") != INCIDENT_VTYPE:
                types.append(el.get("id", ""))
    return sorted(set(types))


def run_sumo(net: Path, routes: list[Path], out_dir: Path, *, end_s: float, seed: int,
             fcd: bool, additional: tuple[Path, ...] = ()) -> SumoRun:
    """Simulate ``end_s`` seconds (1-s steps); FCD of the vehicles with the FCD device (probes,
    buses) when ``fcd``; ``additional``: more additional files (the buses' stops). edgeData
    counts the traffic, not the incidents' stopped vehicles: their own minutes at 0 km/h on
    the edge would read as a slowdown nobody drove."""
    out_dir.mkdir(parents=True, exist_ok=True)
    add = out_dir / "edgedata.add.xml"
    edgedata = out_dir / "edgedata.xml"
    types = traffic_vtypes(routes)
    only = f' vTypes="{" ".join(types)}"' if types else ""
    add.write_text(f'<additional><edgeData id="minute" file="{edgedata.name}" '
                   f'period="{PERIOD_S}" excludeEmpty="true"{only}/></additional>\n',
                   encoding="utf-8")
    args = ["sumo", "-n", str(net), "-r", ",".join(map(str, routes)),
            "-a", ",".join(map(str, (add, *additional))),
            "--begin", "0", "--end", str(int(end_s)), "--step-length", "1",
            "--seed", str(seed), "--stop-output", str(out_dir / "stops.xml"),
            "--time-to-teleport", "300", "--ignore-route-errors", "true",
            "--no-step-log", "true", "--duration-log.statistics", "true"]
    fcd_path = None
    if fcd:
        fcd_path = out_dir / "fcd.xml"
        args += ["--fcd-output", str(fcd_path), "--fcd-output.geo", "true",
                 "--device.fcd.probability", "0"]  # only vehicles with has.fcd.device
    summary = run_tool(args, cwd=out_dir)
    return SumoRun(edgedata=edgedata, fcd=fcd_path, stops=out_dir / "stops.xml",
                   summary=summary)


def _iter(path: Path, tag: str) -> Iterator[tuple[ET.Element, ET.Element | None]]:
    parent: ET.Element | None = None
    for event, el in ET.iterparse(path, events=("start", "end")):
        if event == "start":
            if el.tag in ("interval", "timestep"):
                parent = el
            continue
        if el.tag == tag:
            yield el, parent
        elif el.tag in ("interval", "timestep"):
            el.clear()


def read_edgedata(path: Path) -> dict[tuple[str, int], EdgeMinute]:
    """(edge, minute index) → speed and samples; edges nobody drove that minute are absent."""
    out: dict[tuple[str, int], EdgeMinute] = {}
    for el, interval in _iter(path, "edge"):
        assert interval is not None
        minute = int(float(interval.get("begin", "0")) // PERIOD_S)
        speed = el.get("speed")
        if speed is None:
            continue
        out[(el.get("id", ""), minute)] = EdgeMinute(
            float(speed), float(el.get("sampledSeconds", "0")), int(el.get("entered", "0")))
    return out


def read_fcd(path: Path) -> dict[str, list[Fix]]:
    """Probe vehicle id → its 1-s fixes in time order."""
    out: dict[str, list[Fix]] = {}
    for el, step in _iter(path, "vehicle"):
        assert step is not None
        out.setdefault(el.get("id", ""), []).append(Fix(
            float(step.get("time", "0")), float(el.get("x", "0")), float(el.get("y", "0")),
            float(el.get("speed", "0")), float(el.get("angle", "0")), el.get("lane", ""),
            float(el.get("pos", "0"))))
    return out


def read_stops(path: Path) -> dict[str, tuple[float, float]]:
    """Stopped vehicle id → (started, ended) in SUMO seconds (the incidents as they happened)."""
    out: dict[str, tuple[float, float]] = {}
    if not path.is_file():
        return out
    for _, el in ET.iterparse(path):
        if el.tag == "stopinfo":
            out[el.get("id", "")] = (float(el.get("started", "0")), float(el.get("ended", "0")))
    return out
