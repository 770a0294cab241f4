"""SUMO networks by ``netconvert``: from the Wuhan OSM extract (read in place) or the demo city.

The OSM way ids survive in the edge ids (``<way>#<n>``, ``-<way>#<n>`` for the reverse
direction) and in each lane's ``origId`` (``--output.original-names``), which is how SUMO edges
are mapped back onto TTI's segments (``mapping.py``). Signals: OSM's ``traffic_signals`` nodes
(``--tls.guess-signals``) and guessed ones at big junctions (``--tls.guess``); the threshold is
lowered from SUMO's 250 km/h of incoming lane speeds because the Wuhan extract tags no signals
and its junctions would otherwise get none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.sumo.binaries import run_tool

__all__ = ["SumoNetwork", "build_network", "road_category", "shared_osm"]

WUHAN_OSM = Path("data") / "osm" / "wuhan_optics_valley.osm"

NETCONVERT_OPTIONS = (
    "--output.original-names", "true",
    "--geometry.remove", "false",  # keep every OSM node in the shapes: mapping is geometric
    "--tls.guess", "true",
    "--tls.guess.threshold", "40",  # m/s of incoming lane speeds (SUMO's default is 69.4)
    "--tls.guess-signals", "true",
    "--tls.join", "true",
    "--tls.default-type", "static",
    "--junctions.join", "true",
    "--ramps.guess", "true",
    "--remove-edges.isolated", "true",
    "--keep-edges.by-vclass", "passenger",
    "--no-turnarounds.except-deadend", "true",
    "--no-warnings", "true",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SumoNetwork:
    """A network ready for SUMO: the OSM TTI loads and the ``.net.xml`` built from it."""

    name: str
    osm_path: Path
    net_path: Path
    landmarks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """OSM way ids of named places incidents go to (demo: bridge, tunnel), by kind."""
    gtfs_path: Path | None = None
    """The timetable TTI imports and the buses run (the demo city's GTFS; None elsewhere)."""


def shared_osm() -> Path:
    """The Wuhan extract in the reference folder beside the repository (or TTI_SHARED_DIR)."""
    import os

    root = Path(os.environ.get("TTI_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared")
    path = root / WUHAN_OSM
    if not path.is_file():
        raise FileNotFoundError(f"the Wuhan OSM extract is not at {path} (set TTI_SHARED_DIR)")
    return path


def build_network(name: str, out_dir: Path, *, demo_size: int = 1) -> SumoNetwork:
    """``demo`` (generated into ``out_dir``), ``wuhan`` or a path to an ``.osm`` file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    landmarks: dict[str, tuple[int, ...]] = {}
    gtfs = None
    if name == "demo":
        from shared.demo import generate_demo_region

        region = generate_demo_region(out_dir / "demo", size=demo_size)
        osm, gtfs = region.osm_path, region.gtfs_path
        landmarks["bridge"] = tuple(w for b in region.bridges for w in b.way_ids)
        landmarks["tunnel"] = tuple(w for t in region.tunnels for w in t.way_ids)
    elif name == "wuhan":
        osm = shared_osm()
    else:
        osm = Path(name)
        if not osm.is_file():
            raise FileNotFoundError(f"no OSM file {osm} (networks: demo, wuhan or a path)")
        name = osm.stem
    net = out_dir / f"{name}.net.xml"
    if not net.is_file() or net.stat().st_mtime < osm.stat().st_mtime:
        tmp = net.with_suffix(".tmp.xml")
        run_tool(["netconvert", "--osm-files", str(osm), "-o", str(tmp), *NETCONVERT_OPTIONS])
        tmp.replace(net)
    return SumoNetwork(name=name, osm_path=osm, net_path=net, landmarks=landmarks,
                       gtfs_path=gtfs)


def road_category(edge: str, kind: str, landmarks: dict[str, tuple[int, ...]]) -> str | None:
    """What kind of road SUMO edge ``edge`` (OSM highway type ``kind``) is, for incidents and
    detectors: with the demo's landmarks bridge, tunnel, ring (its motorway) or arterial;
    elsewhere expressway (motorway, trunk), arterial (primary) or secondary; None otherwise."""
    head = edge.lstrip("-").split("#")[0]
    way = int(head) if head.isdigit() else None
    if landmarks:
        if way in landmarks.get("bridge", ()):
            return "bridge"
        if way in landmarks.get("tunnel", ()):
            return "tunnel"
        if kind == "motorway":
            return "ring"
        return "arterial" if kind in ("primary", "trunk") else None
    if kind in ("motorway", "trunk"):
        return "expressway"
    if kind == "primary":
        return "arterial"
    return "secondary" if kind == "secondary" else None
