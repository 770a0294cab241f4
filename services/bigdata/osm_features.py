"""Non-road features from OpenStreetMap (pyosmium), and the OSM import as a whole.

:func:`extract_features` reads one ``.osm``/``.osm.pbf`` file and returns the features the
geodatabase stores besides road segments:

========================  ===================================================================
kind                      OSM tagging
========================  ===================================================================
``bridge``, ``tunnel``    routable ``highway`` ways with ``bridge``/``tunnel``, grouped by
                          ``bridge:name``/``tunnel:name`` or ``name`` (and nearness: two
                          carriageways are one bridge, two far-apart 长江大桥 are not)
``toll_station``          ``highway=toll_booth``, ``barrier=toll_booth``
``service_area``          ``highway=services`` (``highway=rest_area`` with ``type``)
``bus_stop``              ``highway=bus_stop``, ``public_transport=platform`` + ``bus=yes``
``bus_station``           ``amenity=bus_station``, ``public_transport=station`` + ``bus=yes``
``coach_station``         ``amenity=bus_station`` with coach hints (``coach=yes``, 客运/长途 …)
``rail_station``          ``railway=station|halt``, ``public_transport=station`` + a rail mode
``port``                  ``harbour=yes``, ``landuse=port|harbour``, ``industrial=port``,
                          ``amenity=ferry_terminal``
``waterway``              ``waterway=river|canal``, grouped by name where the ways connect
``parking``               ``amenity=parking`` (``capacity`` parsed; live free spaces later)
``scenic_spot``           ``tourism=attraction|viewpoint|museum|theme_park|zoo``
``hotel``                 ``tourism=hotel|motel|guest_house|hostel``
``weather_station``       ``man_made=monitoring_station`` + ``monitoring:weather=yes``
========================  ===================================================================

The same pass gathers the base map (water, green, land use, place labels; see
:mod:`services.bigdata.basemap`), which the import stores beside the features.

Nodes become points; open ways lines; closed ways and multipolygon relations polygons through
osmium's area assembler (a closed way the assembler rejects falls back to its ring). Feature ids
are OSM-style: ``n<id>``, ``w<id>``, ``r<id>`` (a group takes its smallest way id).

:func:`import_osm_file` is the OSM import both ``tti import-osm`` and the bigdata service run:
roads and features of one file in one transaction, idempotent per file digest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TextIO

import shapely
from shapely.geometry.base import BaseGeometry

from services.bigdata.basemap import BasemapCollector, area_class
from services.bigdata.store import (
    FEATURE_KINDS,
    OSM_FEATURE_SOURCE,
    BasemapItem,
    Feature,
    GeoStore,
)
from shared.errors import TtiError
from shared.geo import LocalProjection, haversine_m
from shared.roadnet import ROUTABLE_HIGHWAYS, RoadNetwork, RoadNetworkError

EXTRACTOR_VERSION = 2
"""Part of the features digest: raising it re-imports features from an unchanged file.
2: the base map is extracted too."""

OSM_KINDS: tuple[str, ...] = tuple(k for k in FEATURE_KINDS if k != "detector")
"""Kinds an OSM import owns (detectors come from their own registry)."""

Progress = Callable[[str], None]

_YES = frozenset({"yes", "true", "1", "designated"})
_RAIL_MODES = ("train", "subway", "light_rail", "monorail", "tram")
_COACH_WORDS = ("客运", "长途", "汽车站", "coach", "long-distance", "long distance", "intercity")
_SCENIC = frozenset({"attraction", "viewpoint", "museum", "theme_park", "zoo"})
_HOTEL = frozenset({"hotel", "motel", "guest_house", "hostel"})
_EXTRA_ATTRS = ("operator", "opening_hours", "website", "phone", "fee", "wikidata", "ele")
_ALT_NAME_KEYS = ("alt_name", "official_name", "short_name", "old_name", "name:zh-Hans",
                  "name:zh-Hant", "alt_name:en", "official_name:en")
_GROUP_GAP_M = 300.0  # same-named structure ways closer than this are one bridge/tunnel
_PROGRESS_EVERY = 250_000


def _yes(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _YES


def _structure_flag(value: str | None) -> bool:
    # bridge=viaduct/cantilever/… are bridges; culverts and building passages are not what a
    # traveller means by a bridge or tunnel.
    if value is None:
        return False
    v = value.strip().lower()
    return v not in ("no", "false", "0", "", "culvert", "building_passage")


def _int(value: str | None) -> int | None:
    if not value:
        return None
    try:
        n = int(value.strip().split(";")[0])
    except ValueError:
        return None
    return n if n >= 0 else None


def _names(tags: Mapping[str, str], prefix: str = "") -> tuple[str | None, str | None]:
    name = (tags.get(f"{prefix}name") or tags.get(f"{prefix}name:zh")
            or tags.get(f"{prefix}name:zh-Hans") or None)
    return name, tags.get(f"{prefix}name:en") or None


def _common_attrs(tags: Mapping[str, str], osm_id: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"osm_id": osm_id}
    for key in _EXTRA_ATTRS:
        if tags.get(key):
            attrs[key] = tags[key]
    alt = [part.strip() for key in _ALT_NAME_KEYS for part in tags.get(key, "").split(";")
           if part.strip()]
    if alt:
        attrs["alt_names"] = list(dict.fromkeys(alt))
    return attrs


def classify(tags: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Point/area kinds an OSM object's tags make it, each with kind-specific attrs."""
    out: list[tuple[str, dict[str, Any]]] = []
    highway = tags.get("highway")
    amenity = tags.get("amenity")
    tourism = tags.get("tourism")
    railway = tags.get("railway")
    pt = tags.get("public_transport")
    if highway == "toll_booth" or tags.get("barrier") == "toll_booth":
        out.append(("toll_station", {}))
    if highway in ("services", "rest_area"):
        out.append(("service_area", {"type": highway}))
    if highway == "bus_stop" or (pt == "platform" and _yes(tags.get("bus")) and not railway):
        out.append(("bus_stop", {"shelter": tags.get("shelter"), "route_ref":
                                 tags.get("route_ref")}))
    rail_mode = next((m for m in _RAIL_MODES if _yes(tags.get(m))), None)
    if amenity == "bus_station":
        text = " ".join(tags.get(k, "") for k in ("name", "name:en", "official_name")).lower()
        coach = (_yes(tags.get("coach")) or tags.get("bus_station") == "coach"
                 or any(w in text for w in _COACH_WORDS))
        out.append(("coach_station" if coach else "bus_station", {}))
    elif pt == "station" and _yes(tags.get("bus")) and rail_mode is None:
        out.append(("bus_station", {}))
    if railway in ("station", "halt") or (pt == "station" and rail_mode is not None):
        station = tags.get("station") or rail_mode or "train"
        out.append(("rail_station", {"station": station, "railway": railway}))
    if (tags.get("harbour") == "yes" or tags.get("landuse") in ("port", "harbour")
            or tags.get("industrial") == "port" or amenity == "ferry_terminal"):
        out.append(("port", {"type": "ferry_terminal" if amenity == "ferry_terminal"
                             else "port"}))
    if amenity == "parking":
        out.append(("parking", {"capacity": _int(tags.get("capacity")),
                                "parking": tags.get("parking"), "access": tags.get("access")}))
    if tourism in _SCENIC:
        out.append(("scenic_spot", {"tourism": tourism}))
    if tourism in _HOTEL:
        out.append(("hotel", {"tourism": tourism, "stars": _int(tags.get("stars")),
                              "rooms": _int(tags.get("rooms"))}))
    if tags.get("man_made") == "monitoring_station" and _yes(tags.get("monitoring:weather")):
        out.append(("weather_station", {}))
    # Drop unset attrs so the stored JSON holds only what OSM says.
    return [(kind, {k: v for k, v in attrs.items() if v is not None}) for kind, attrs in out]


@dataclass(slots=True)
class _LineWay:
    way_id: int
    name: str | None
    name_en: str | None
    ref: str | None
    tags: dict[str, str]
    coords: list[tuple[float, float]]
    ends: tuple[int, int]


def _length_m(coords: list[tuple[float, float]]) -> float:
    return sum(haversine_m(a[0], a[1], b[0], b[1]) for a, b in pairwise(coords))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(slots=True)
class _Extractor:
    features: list[Feature] = field(default_factory=list)
    bridges: list[_LineWay] = field(default_factory=list)
    tunnels: list[_LineWay] = field(default_factory=list)
    waterways: list[_LineWay] = field(default_factory=list)
    # Closed ways waiting for their assembled area: way id → (tags, ring).
    pending: dict[int, tuple[dict[str, str], list[tuple[float, float]]]] = field(
        default_factory=dict)
    basemap: BasemapCollector = field(default_factory=BasemapCollector)

    def add(self, osm_id: str, tags: Mapping[str, str], geom: BaseGeometry,
            kinds: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        name, name_en = _names(tags)
        ref = tags.get("ref") or tags.get("local_ref") or None
        for kind, attrs in kinds if kinds is not None else classify(tags):
            self.features.append(Feature(
                kind=kind, feature_id=osm_id, geometry=geom, name=name, name_en=name_en,
                ref=ref, attrs={**_common_attrs(tags, osm_id), **attrs}))

    def node(self, node_id: int, lon: float, lat: float, tags: dict[str, str]) -> None:
        if "place" in tags:
            self.basemap.node(node_id, lon, lat, tags)
        kinds = classify(tags)
        if kinds:
            self.add(f"n{node_id}", tags, shapely.Point(lon, lat), kinds)

    def way(self, way_id: int, node_ids: list[int], coords: list[tuple[float, float]],
            tags: dict[str, str]) -> None:
        if len(coords) < 2:
            return
        closed = len(coords) >= 4 and node_ids[0] == node_ids[-1]
        self.basemap.way(way_id, closed, coords, tags)
        if tags.get("highway") in ROUTABLE_HIGHWAYS:
            for flag, prefix, bucket in (("bridge", "bridge:", self.bridges),
                                         ("tunnel", "tunnel:", self.tunnels)):
                if _structure_flag(tags.get(flag)):
                    name, name_en = _names(tags, prefix)
                    road_name, road_en = _names(tags)
                    bucket.append(_LineWay(way_id, name or road_name, name_en or road_en,
                                           tags.get("ref"), tags, coords,
                                           (node_ids[0], node_ids[-1])))
        if tags.get("waterway") in ("river", "canal"):
            name, name_en = _names(tags)
            self.waterways.append(_LineWay(way_id, name, name_en, None, tags, coords,
                                           (node_ids[0], node_ids[-1])))
        kinds = classify(tags)
        if not kinds:
            return
        if closed:
            self.pending[way_id] = (tags, coords)
        else:
            self.add(f"w{way_id}", tags, shapely.LineString(coords), kinds)

    def area(self, orig_id: int, from_way: bool, tags: dict[str, str], wkb_hex: str) -> None:
        self.basemap.area(orig_id, from_way, tags, wkb_hex)
        if from_way:
            if self.pending.pop(orig_id, None) is None:
                return
            osm_id = f"w{orig_id}"
        else:
            osm_id = f"r{orig_id}"
        kinds = classify(tags)
        if not kinds:
            return
        geom = shapely.from_wkb(wkb_hex)
        if geom.geom_type == "MultiPolygon" and len(geom.geoms) == 1:
            geom = geom.geoms[0]
        self.add(osm_id, tags, geom, kinds)

    def finish(self) -> list[Feature]:
        for way_id, (tags, ring) in self.pending.items():
            # The assembler rejected the ring (self-intersecting, …): repair it, else a point.
            poly = shapely.make_valid(shapely.Polygon(ring))
            geom = poly if poly.geom_type in ("Polygon", "MultiPolygon") else (
                shapely.LineString(ring).centroid)
            self.add(f"w{way_id}", tags, geom)
        self.pending.clear()
        self.features.extend(_group_structures("bridge", self.bridges))
        self.features.extend(_group_structures("tunnel", self.tunnels))
        self.features.extend(_group_waterways(self.waterways))
        return self.features


def _structure_feature(kind: str, ways: list[_LineWay]) -> Feature:
    ways = sorted(ways, key=lambda w: w.way_id)
    lines = [shapely.LineString(w.coords) for w in ways]
    geom: BaseGeometry = lines[0] if len(lines) == 1 else shapely.MultiLineString(lines)
    first = ways[0]
    refs = sorted({r.strip() for w in ways if w.ref for r in w.ref.split(";") if r.strip()})
    classes = sorted({w.tags.get("highway", "") for w in ways})
    attrs: dict[str, Any] = {
        "osm_id": f"w{first.way_id}",
        "way_ids": [w.way_id for w in ways],
        "road_classes": classes,
        "way_length_m": round(sum(_length_m(w.coords) for w in ways), 1),
    }
    layer = first.tags.get("layer")
    if layer:
        attrs["layer"] = layer
    road_names = sorted({w.tags["name"] for w in ways if w.tags.get("name")} - {first.name})
    if road_names:
        attrs["road_names"] = road_names
    name_en = next((w.name_en for w in ways if w.name_en), None)
    return Feature(kind=kind, feature_id=f"w{first.way_id}", geometry=geom, name=first.name,
                   name_en=name_en, ref=";".join(refs) or None, attrs=attrs)


def _group_structures(kind: str, ways: list[_LineWay]) -> list[Feature]:
    """One feature per named structure (same name, ways within 300 m), one per unnamed way."""
    out: list[Feature] = []
    by_name: dict[str, list[_LineWay]] = defaultdict(list)
    for w in ways:
        if w.name:
            by_name[w.name].append(w)
        else:
            out.append(_structure_feature(kind, [w]))
    for group in by_name.values():
        lat0 = sum(c[1] for w in group for c in w.coords) / sum(len(w.coords) for w in group)
        lon0 = sum(c[0] for w in group for c in w.coords) / sum(len(w.coords) for w in group)
        proj = LocalProjection(lon0, lat0)
        lines = [shapely.LineString([proj.to_xy(*c) for c in w.coords]) for w in group]
        uf = _UnionFind(len(group))
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                if lines[i].distance(lines[j]) <= _GROUP_GAP_M:
                    uf.union(i, j)
        clusters: dict[int, list[_LineWay]] = defaultdict(list)
        for i, w in enumerate(group):
            clusters[uf.find(i)].append(w)
        out.extend(_structure_feature(kind, c) for c in clusters.values())
    return out


def _group_waterways(ways: list[_LineWay]) -> list[Feature]:
    """Named river/canal ways that share end nodes form one waterway."""
    out: list[Feature] = []
    by_name: dict[tuple[str, str], list[_LineWay]] = defaultdict(list)
    for w in ways:
        if w.name:
            by_name[(w.name, w.tags.get("waterway", ""))].append(w)
        else:
            by_name[(f"\x00{w.way_id}", w.tags.get("waterway", ""))].append(w)
    for (_, waterway), group in by_name.items():
        uf = _UnionFind(len(group))
        first_at: dict[int, int] = {}
        for i, w in enumerate(group):
            for node in w.ends:
                if node in first_at:
                    uf.union(i, first_at[node])
                else:
                    first_at[node] = i
        clusters: dict[int, list[_LineWay]] = defaultdict(list)
        for i, w in enumerate(group):
            clusters[uf.find(i)].append(w)
        for members in clusters.values():
            members.sort(key=lambda w: w.way_id)
            merged = shapely.line_merge(shapely.MultiLineString(
                [shapely.LineString(w.coords) for w in members]))
            first = members[0]
            out.append(Feature(
                kind="waterway", feature_id=f"w{first.way_id}", geometry=merged,
                name=first.name, name_en=next((w.name_en for w in members if w.name_en), None),
                attrs={"osm_id": f"w{first.way_id}", "waterway": waterway,
                       "way_ids": [w.way_id for w in members],
                       "length_m": round(sum(_length_m(w.coords) for w in members), 1)}))
    return out


def extract_features(path: str | Path, *, progress: Progress | None = None) -> list[Feature]:
    """Every feature of the kinds in :data:`OSM_KINDS` in one OSM file (see module docstring).

    Raises RoadNetworkError (a TtiError) when the file cannot be read.
    """
    return extract_osm(path, progress=progress)[0]


def extract_osm(path: str | Path, *, progress: Progress | None = None
                ) -> tuple[list[Feature], list[BasemapItem]]:
    """The features and the base map items of one OSM file, in one pass over it."""
    import osmium  # native extension: imported where used, like shared.roadnet

    p = Path(path)
    if not p.is_file():
        raise RoadNetworkError(f"OSM file not found: {p}")
    ex = _Extractor()
    wkb_factory = osmium.geom.WKBFactory()
    seen = 0
    try:
        for obj in osmium.FileProcessor(str(p)).with_locations().with_areas():
            seen += 1
            if progress is not None and seen % _PROGRESS_EVERY == 0:
                progress(f"features: {seen:,} OSM objects read")
            if not obj.tags:
                continue
            if isinstance(obj, osmium.osm.Node):
                if obj.location.valid():
                    ex.node(obj.id, obj.location.lon, obj.location.lat,
                            {t.k: t.v for t in obj.tags})
            elif isinstance(obj, osmium.osm.Way):
                tags = {t.k: t.v for t in obj.tags}
                # Outside an extract some nodes have no location: keep the located ones.
                located = [(n.ref, n.location.lon, n.location.lat) for n in obj.nodes
                           if n.location.valid()]
                ex.way(obj.id, [n[0] for n in located], [(n[1], n[2]) for n in located], tags)
            elif isinstance(obj, osmium.osm.Area):
                tags = {t.k: t.v for t in obj.tags}
                if not classify(tags) and area_class(tags) is None:
                    continue
                try:
                    wkb_hex = wkb_factory.create_multipolygon(obj)
                except RuntimeError:  # an area osmium could not build: the ring fallback
                    continue
                ex.area(obj.orig_id(), obj.from_way(), tags, wkb_hex)
    except RuntimeError as exc:  # pyosmium reports parse and I/O errors as RuntimeError
        raise RoadNetworkError(f"cannot read OSM file {p}: {exc}") from exc
    return ex.finish(), ex.basemap.finish()


def attach_segments(features: Iterable[Feature], network: RoadNetwork) -> list[Feature]:
    """Give bridges and tunnels the ids of the directed segments on them (``segment_ids``)."""
    by_way: dict[int, list[str]] = defaultdict(list)
    for seg in network:
        if seg.bridge or seg.tunnel:
            by_way[seg.way_id].append(seg.segment_id)
    out = []
    for f in features:
        if f.kind in ("bridge", "tunnel") and "way_ids" in f.attrs:
            ids = [sid for w in f.attrs["way_ids"] for sid in by_way.get(w, ())]
            f = dataclasses.replace(f, attrs={**f.attrs, "segment_ids": ids})
        out.append(f)
    return out


# --- the OSM import ----------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """sha256 of a file, read in chunks (imports are keyed by it)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class OsmImportSummary:
    """What an OSM import found and changed."""

    path: Path
    digest: str
    network: RoadNetwork
    segment_count: int
    feature_counts: Mapping[str, int]
    roads_changed: bool
    features_changed: bool
    elapsed_s: float

    @property
    def changed(self) -> bool:
        """True when anything was written."""
        return self.roads_changed or self.features_changed

    def describe(self) -> str:
        """One human line: counts and whether anything changed."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.feature_counts.items())) or "none"
        state = "imported" if self.changed else "already imported (unchanged)"
        return (f"{self.path}: {self.segment_count:,} road segments, features: {kinds} — "
                f"{state} in {self.elapsed_s:.1f} s")


async def import_osm_file(store: GeoStore, path: str | Path, *,
                          progress: Progress | None = None) -> OsmImportSummary:
    """Import the roads and features of one OSM file; a no-op when the file is unchanged.

    Everything is read and checked before anything is written (a missing, unreadable or
    road-less file raises a TtiError and leaves the database as it was); roads and features
    are then written in one transaction.
    """
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    file = Path(path)

    def digest_of() -> str:
        if not file.is_file():
            raise TtiError(f"OSM file not found: {file}", code="bad_input")
        return file_digest(file)

    digest = await asyncio.to_thread(digest_of)
    say(f"roads: reading {file.name}")
    network = await asyncio.to_thread(RoadNetwork.from_osm, file)
    say(f"roads: {len(network):,} directed segments")
    features_digest = f"{digest}:features-v{EXTRACTOR_VERSION}"
    prior = await store.find_import(f"features:{OSM_FEATURE_SOURCE}")
    if prior is not None and prior.digest == features_digest:
        roads_changed = await store.import_segments(str(file), digest,
                                                    prior.region_name or file.stem,
                                                    network.segments.values())
        features_changed = False
        counts = await _imported_counts(store)
    else:
        say("features: extracting")
        features, basemap = await asyncio.to_thread(extract_osm, file, progress=progress)
        features = attach_segments(features, network)
        counts = dict(sorted(_count(features).items()))
        say(f"database: writing {len(network):,} segments, {len(features):,} features and "
            f"{len(basemap):,} base map shapes and labels")
        outcome = await store.import_osm(str(file), digest, region_name(basemap, file),
                                         network.segments.values(), features,
                                         features_digest=features_digest,
                                         feature_kinds=OSM_KINDS, basemap=basemap)
        roads_changed, features_changed = outcome.roads_changed, outcome.features_changed
    return OsmImportSummary(path=file, digest=digest, network=network,
                            segment_count=len(network), feature_counts=counts,
                            roads_changed=roads_changed, features_changed=features_changed,
                            elapsed_s=time.monotonic() - started)


def region_name(basemap: Iterable[BasemapItem], file: Path) -> str:
    """The region's proper name: its most important named place (city before town …, the
    lowest id among equals), else the file's name without its extension."""
    places = [i for i in basemap if i.layer == "place" and i.name]
    if not places:
        return file.stem
    return min(places, key=lambda i: (i.rank, i.item_id)).name or file.stem


async def _imported_counts(store: GeoStore) -> dict[str, int]:
    """Features per kind the OSM import wrote, without those of other sources.

    GTFS feeds add ``bus_stop`` features and detector registries ``detector`` ones; a summary
    of the unchanged OSM file must count only its own.
    """
    of_kinds = sum(n for k, n in (await store.feature_counts()).items() if k in OSM_KINDS)
    features = await store.features_in_bbox(None, kinds=OSM_KINDS, limit=max(of_kinds, 1))
    return dict(sorted(_count(f for f in features if f.source == OSM_FEATURE_SOURCE).items()))


def _count(features: Iterable[Feature]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for f in features:
        counts[f.kind] += 1
    return dict(counts)


def stderr_progress(stream: TextIO | None = None) -> Progress:
    """A progress callback printing ``[12.3 s] message`` lines for long imports."""
    out = stream or sys.stderr
    started = time.monotonic()

    def report(message: str) -> None:
        elapsed = time.monotonic() - started
        print(f"[{elapsed:6.1f} s] {message}", file=out, flush=True)

    return report

