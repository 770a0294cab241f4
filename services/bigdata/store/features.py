"""Non-road features of the geodatabase: the record, the kinds, name search and per-kind rules.

A feature is anything on the map a traveller asks about besides the roads themselves: bridges and
tunnels (grouped OSM road ways), stations and stops, ports, waterways, parking, scenic spots,
hotels, weather stations and roadside detectors. Each has a geometry (point, line or polygon,
WGS-84), a Chinese ``name`` and an English ``name_en`` where known, kind-specific ``attrs`` and an
optional ``live`` state (free parking spaces, current weather) that is updated at run time and
survives re-imports of the feature.

The detector registry (roadside cameras and sensors) is imported from CSV with
:func:`parse_detectors_csv`.
"""

from __future__ import annotations

import csv
import io
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shapely
from shapely.geometry.base import BaseGeometry

from shared.errors import TtiError
from shared.events import (
    FEATURE_KINDS,  # every kind stored; shared: the collector takes live states
    CatalogueEntry,
)
from shared.feature_rules import LiveValueError, bound_names, check_live_values

if TYPE_CHECKING:
    from services.bigdata.store.base import GeoStore



ROAD_KIND = "road"
"""The pseudo-kind of search hits that are roads (segments grouped by name)."""

SEARCH_KINDS: frozenset[str] = frozenset((*FEATURE_KINDS, ROAD_KIND))

_GEOM_TYPES = frozenset({"Point", "LineString", "MultiLineString", "Polygon", "MultiPolygon"})
_SEP = "\x1f"  # field separator inside search_text; never part of a name (stripped from queries)


class FeatureError(TtiError):
    """A feature, import batch or live update is invalid; nothing was written."""

    code = "bad_feature"
    http_status = 400


class AmbiguousIdError(TtiError):
    """An id exists in several GTFS feeds and no feed was named."""

    code = "ambiguous_id"
    http_status = 409


@dataclass(frozen=True, slots=True, kw_only=True)
class Feature:
    """One feature: kind + id identify it; geometry in WGS-84 (lon, lat)."""

    kind: str
    feature_id: str
    geometry: BaseGeometry
    name: str | None = None
    name_en: str | None = None
    ref: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    live: Mapping[str, Any] | None = None
    live_updated_at: datetime | None = None

    @property
    def center(self) -> tuple[float, float]:
        """A point on (or inside) the geometry, for labels and distances shown to people."""
        geom = self.geometry
        pt = geom if geom.geom_type == "Point" else geom.point_on_surface()
        return float(pt.x), float(pt.y)


@dataclass(frozen=True, slots=True)
class NearbyFeature:
    """A feature and its distance in metres from the query point (0 inside a polygon)."""

    feature: Feature
    distance_m: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchHit:
    """One search result: a feature, or a road (its directed segments grouped by name).

    ``match`` is ``exact``, ``prefix`` or ``substring`` (of name, name_en or ref); results come
    exact first, then prefix, then substring, shorter names first within each.
    """

    kind: str
    id: str
    name: str | None
    name_en: str | None
    ref: str | None
    match: str
    center: tuple[float, float]
    bbox: tuple[float, float, float, float]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    segment_ids: tuple[str, ...] = ()

    def sort_key(self) -> tuple[int, int, str, bool, str, str]:
        """The order both backends return: match rank, name length, name, kind, id.

        For equal names a feature comes before the road: "江城隧道" means the tunnel first.
        """
        label = self.name or self.name_en or self.ref or ""
        return (MATCH_RANK[self.match], len(label), label, self.kind == ROAD_KIND, self.kind,
                self.id)


MATCH_RANK = {"exact": 0, "prefix": 1, "substring": 2}
MATCH_NAMES = ("exact", "prefix", "substring")


# --- text search ---------------------------------------------------------------------------


def fold(text: str) -> str:
    """Normalise for matching: NFKC (full-width → ASCII), case-folded, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.replace(_SEP, " ").replace("\x00", " ").split())


def search_text(*fields: str | None) -> str:
    """The stored match text: folded fields each wrapped in separators (``␟a␟b␟``).

    With the separators, "field equals q" is the substring ``␟q␟`` and "field starts with q"
    the substring ``␟q``, so one substring function answers all three ranks in SQL.
    """
    folded = [fold(f) for f in fields if f]
    return _SEP + _SEP.join(f for f in folded if f) + _SEP


def query_patterns(query: str) -> tuple[str, str, str]:
    """(exact, prefix, substring) patterns of a folded query; FeatureError when empty."""
    q = fold(query)
    if not q:
        raise FeatureError("search query is empty")
    return _SEP + q + _SEP, _SEP + q, q


def check_kinds(kinds: Iterable[str] | None, *, allowed: frozenset[str] = SEARCH_KINDS
                ) -> tuple[str, ...] | None:
    """Validate a kinds filter (None = all); FeatureError naming the unknown kinds."""
    if kinds is None:
        return None
    out = tuple(dict.fromkeys(kinds))
    unknown = [k for k in out if k not in allowed]
    if unknown:
        raise FeatureError(f"unknown feature kind(s): {', '.join(unknown)}",
                           details={"known": sorted(allowed)})
    return out


def feature_search_text(f: Feature) -> str:
    """Match text of a feature: name, name_en, ref and any alternative names in attrs."""
    alt = f.attrs.get("alt_names") or ()
    return search_text(f.name, f.name_en, f.ref, *(a for a in alt if isinstance(a, str)))


# --- validation ------------------------------------------------------------------------------


def validate_feature(f: Feature, kinds: frozenset[str]) -> None:
    """Reject what no backend should store: unknown kind, empty id, bad or non-finite geometry."""
    if f.kind not in kinds:
        raise FeatureError(f"feature {f.kind}/{f.feature_id}: kind {f.kind!r} is not one of "
                           f"the kinds of this import ({', '.join(sorted(kinds))})")
    if not f.feature_id or "/" in f.feature_id:
        raise FeatureError(f"feature of kind {f.kind}: id {f.feature_id!r} is empty or has '/'")
    geom = f.geometry
    if not isinstance(geom, BaseGeometry) or geom.geom_type not in _GEOM_TYPES:
        raise FeatureError(f"feature {f.kind}/{f.feature_id}: geometry must be a point, line or "
                           "polygon")
    if geom.is_empty:
        raise FeatureError(f"feature {f.kind}/{f.feature_id}: empty geometry")
    coords = shapely.get_coordinates(geom)
    if not (coords[:, 0].min() >= -180 and coords[:, 0].max() <= 180
            and coords[:, 1].min() >= -90 and coords[:, 1].max() <= 90):
        raise FeatureError(f"feature {f.kind}/{f.feature_id}: coordinates outside WGS-84 range")


def merge_live(kind: str, attrs: Mapping[str, Any], current: Mapping[str, Any] | None,
               update: Mapping[str, Any]) -> dict[str, Any]:
    """The new live state: ``update`` shallow-merged into ``current`` (None values delete keys).

    Checks what would mislead a traveller with the rules the collector applies at the edge
    (:func:`shared.feature_rules.check_live_values`: e.g. free parking spaces a whole number
    between 0 and the capacity); here they guard the merged state, defensively.
    """
    if not isinstance(update, Mapping):
        raise FeatureError("live state must be a JSON object")
    merged = dict(current or {})
    for key, value in update.items():
        if not isinstance(key, str):
            raise FeatureError("live state keys must be strings")
        if isinstance(value, float) and not math.isfinite(value):
            raise FeatureError(f"live value {key!r} must be finite")
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    try:
        return check_live_values(kind, merged, bounds=catalogue_bounds(kind, attrs))
    except LiveValueError as exc:
        raise FeatureError(exc.message, code=exc.code) from exc


def catalogue_entry(kind: str, feature_id: str, capacity: object) -> CatalogueEntry:
    """A feature's catalogue entry from its stored ``capacity`` attribute (any JSON value)."""
    return CatalogueEntry(feature_id=feature_id,
                          capacity=catalogue_bounds(kind, {"capacity": capacity}).get("capacity"))


def catalogue_bounds(kind: str, attrs: Mapping[str, Any]) -> dict[str, int | None]:
    """The bounds in ``attrs`` the rules of ``kind`` use (the catalogue carries them too)."""
    out: dict[str, int | None] = {}
    for name in bound_names(kind):
        value = attrs.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        out[name] = value if ok else None
    return out


# --- detector registry -------------------------------------------------------------------------

DETECTOR_COLUMNS = ("detector_id", "segment_id", "lon", "lat", "type", "name", "name_en",
                    "direction")
"""CSV header of the detector registry: id and location required; the rest optional."""


@dataclass(frozen=True, slots=True)
class DetectorParse:
    """Result of reading a registry: the features and per-row errors (``line: reason``)."""

    features: list[Feature]
    errors: list[str]
    rows: int


def parse_detectors_csv(text: str, *, known_segments: Mapping[str, BaseGeometry] | None = None
                        ) -> DetectorParse:
    """Read ``detector_id,segment_id,lon,lat[,type,name,name_en,direction]`` rows.

    A row without lon/lat is placed at the middle of its watched segment when
    ``known_segments`` (segment id → line) is given. With ``known_segments``, a row watching an
    unknown segment is an error. Errors are collected per row, not raised.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = set(reader.fieldnames or ())
    if "detector_id" not in header or not ({"lon", "lat"} <= header or "segment_id" in header):
        return DetectorParse([], ["header: need detector_id and lon,lat or segment_id"], 0)
    features: list[Feature] = []
    errors: list[str] = []
    seen: set[str] = set()
    rows = 0
    for line, row in enumerate(reader, start=2):
        rows += 1
        did = (row.get("detector_id") or "").strip()
        sid = (row.get("segment_id") or "").strip() or None
        if not did or "/" in did:
            errors.append(f"line {line}: detector_id missing or contains '/'")
            continue
        if did in seen:
            errors.append(f"line {line}: duplicate detector_id {did!r}")
            continue
        if sid is not None and known_segments is not None and sid not in known_segments:
            errors.append(f"line {line}: unknown segment_id {sid!r}")
            continue
        lon_raw, lat_raw = (row.get("lon") or "").strip(), (row.get("lat") or "").strip()
        point: BaseGeometry
        if lon_raw and lat_raw:
            try:
                lon, lat = float(lon_raw), float(lat_raw)
            except ValueError:
                errors.append(f"line {line}: lon/lat are not numbers")
                continue
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                errors.append(f"line {line}: lon/lat out of range")
                continue
            point = shapely.Point(lon, lat)
        elif sid is not None and known_segments is not None:
            line_geom = known_segments[sid]
            point = line_geom.interpolate(0.5, normalized=True)
        else:
            errors.append(f"line {line}: no lon/lat and no known segment to place it on")
            continue
        seen.add(did)
        attrs: dict[str, Any] = {"segment_id": sid}
        for key in ("type", "direction"):
            if (row.get(key) or "").strip():
                attrs[key] = row[key].strip()
        features.append(Feature(
            kind="detector", feature_id=did, geometry=point,
            name=(row.get("name") or "").strip() or None,
            name_en=(row.get("name_en") or "").strip() or None, ref=did, attrs=attrs))
    return DetectorParse(features, errors, rows)


@dataclass(frozen=True, slots=True)
class DetectorImport:
    """Outcome of a registry import: "N of M applied; failures by reason"."""

    applied: int
    rows: int
    errors: list[str]
    changed: bool


async def import_detectors_csv(store: GeoStore, path: str | Path, *,
                               digest: str | None = None) -> DetectorImport:
    """Import a detector registry CSV as ``detector`` features (source ``detectors``).

    Rows are checked against the stored road segments; bad rows are reported and skipped, the
    good ones replace the previous registry in one transaction. A registry with no usable row
    is rejected (FeatureError) and changes nothing.
    """
    import asyncio
    import hashlib

    file = Path(path)

    def read() -> tuple[str, str]:
        if not file.is_file():
            raise FeatureError(f"detector registry not found: {file}")
        raw = file.read_bytes()
        return raw.decode("utf-8-sig"), hashlib.sha256(raw).hexdigest()

    text, sha = await asyncio.to_thread(read)
    segments = {s.segment_id: shapely.LineString(s.coords) for s in await store.list_segments()}
    parsed = parse_detectors_csv(text, known_segments=segments)
    if not parsed.features:
        raise FeatureError(f"detector registry {file.name}: no usable row",
                           details={"errors": parsed.errors})
    changed = await store.import_features("detectors", digest or sha, ["detector"],
                                          parsed.features)
    return DetectorImport(len(parsed.features), parsed.rows, parsed.errors, changed)
