"""Geofences for 两客一危 monitoring: the record, its GeoJSON form, validation, resolution, import.

A geofence is one GeoJSON Feature whose ``properties`` say what it is:

- ``restricted_zone``: a (multi)polygon the listed ``vehicle_classes`` may not enter;
- ``restricted_road``: road segments those classes may not use (a tunnel, a bridge), given as
  ``segment_ids`` or as a polygon or line that is resolved to the segments it covers (a segment
  is covered when at least half its length lies inside the polygon, or within ``width_m / 2`` of
  the line; default width :data:`DEFAULT_ROAD_WIDTH_M`);
- ``assigned_route``: a corridor the listed ``vehicle_ids`` (or vehicles on ``route_ids``) must
  stay on: a line with a full ``width_m`` (default :data:`DEFAULT_CORRIDOR_WIDTH_M`), or
  ``segment_ids``. Leaving it is a deviation.

Optional: ``name_en``, ``description``, ``time_windows`` (``["22:00-06:00"]``, local time
Asia/Shanghai, UTC+8; a window may cross midnight; none = all day) and ``valid_from`` /
``valid_until`` (ISO 8601 dates in local time, inclusive, or times with an offset). The id is the
Feature's ``id`` or ``properties.geofence_id``.

``tti import-geofences FILE`` reads a FeatureCollection: bad features are reported by index and
reason and skipped, the rest stored in one transaction (:func:`import_geofences_file`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from shared.errors import TtiError
from shared.events import VEHICLE_CLASSES
from shared.geo import EARTH_RADIUS_M

if TYPE_CHECKING:
    from services.bigdata.store.base import GeoStore

BBox = tuple[float, float, float, float]

GEOFENCE_KINDS = ("restricted_zone", "restricted_road", "assigned_route")
LOCAL_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Time windows and validity dates are local time: UTC+8 all year."""
DEFAULT_ROAD_WIDTH_M = 40.0
"""A restricted road drawn as a line takes the segments within 20 m of it (both directions of a
tunnel bore, not the parallel street)."""
DEFAULT_CORRIDOR_WIDTH_M = 100.0
"""An assigned route's corridor: 50 m either side of its line (GNSS noise plus road width)."""
MIN_COVERED_SHARE = 0.5
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
MAX_FEATURES = 10_000
MAX_SEGMENT_IDS = 20_000
_POLYGONS = frozenset({"Polygon", "MultiPolygon"})
_LINES = frozenset({"LineString", "MultiLineString"})
_WINDOW = re.compile(r"^\s*([01]?\d|2[0-4]):([0-5]\d)\s*-\s*([01]?\d|2[0-4]):([0-5]\d)\s*$")
_KNOWN_PROPS = frozenset({
    "geofence_id", "name", "name_en", "kind", "vehicle_classes", "vehicle_ids", "route_ids",
    "segment_ids", "segments_from", "width_m", "time_windows", "valid_from", "valid_until",
    "description", "source", "updated_at", "bbox"})


class GeofenceError(TtiError):
    """A geofence (or a file of them) is invalid; nothing of it was written."""

    code = "bad_geofence"
    http_status = 400


@dataclass(frozen=True, slots=True, kw_only=True)
class GeofenceRecord:
    """One stored geofence. Geometry WGS-84; times UTC; ``bbox`` its extent (or its segments')."""

    geofence_id: str
    name: str
    kind: str
    vehicle_classes: tuple[str, ...]
    name_en: str | None = None
    vehicle_ids: tuple[str, ...] = ()
    route_ids: tuple[str, ...] = ()
    geometry: BaseGeometry | None = None
    segment_ids: tuple[str, ...] = ()
    segments_from: str = "given"
    """``given`` (listed in the fence) or ``geometry`` (resolved from its polygon or line)."""
    width_m: float | None = None
    time_windows: tuple[str, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    """Exclusive end."""
    description: str | None = None
    bbox: BBox | None = None
    source: str = "api"
    updated_at: datetime | None = None

    def props(self) -> dict[str, Any]:
        """What the store keeps beside the indexed columns (JSON)."""
        return {"vehicle_classes": list(self.vehicle_classes),
                "vehicle_ids": list(self.vehicle_ids), "route_ids": list(self.route_ids),
                "segment_ids": list(self.segment_ids), "segments_from": self.segments_from,
                "width_m": self.width_m, "time_windows": list(self.time_windows),
                "valid_from": _iso(self.valid_from), "valid_until": _iso(self.valid_until),
                "description": self.description}


def record_from_row(*, geofence_id: str, kind: str, name: str, name_en: str | None,
                    source: str, geometry: BaseGeometry | None, bbox: BBox | None,
                    props: Mapping[str, Any], updated_at: datetime) -> GeofenceRecord:
    """A stored row (either backend) → :class:`GeofenceRecord`."""
    def times(key: str) -> datetime | None:
        raw = props.get(key)
        return None if raw is None else datetime.fromisoformat(raw).astimezone(UTC)
    width = props.get("width_m")
    return GeofenceRecord(
        geofence_id=geofence_id, kind=kind, name=name, name_en=name_en, source=source,
        geometry=geometry, bbox=bbox,
        vehicle_classes=tuple(props.get("vehicle_classes") or ()),
        vehicle_ids=tuple(props.get("vehicle_ids") or ()),
        route_ids=tuple(props.get("route_ids") or ()),
        segment_ids=tuple(props.get("segment_ids") or ()),
        segments_from=str(props.get("segments_from") or "given"),
        width_m=None if width is None else float(width),
        time_windows=tuple(props.get("time_windows") or ()),
        valid_from=times("valid_from"), valid_until=times("valid_until"),
        description=props.get("description"), updated_at=updated_at.astimezone(UTC))


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat()


# --- what a store accepts ---------------------------------------------------------------------


def check_geofence_kinds(kinds: Sequence[str] | None) -> tuple[str, ...] | None:
    """``kinds`` as a tuple, or GeofenceError naming an unknown one (None: every kind)."""
    if kinds is None:
        return None
    bad = [k for k in kinds if k not in GEOFENCE_KINDS]
    if bad:
        raise GeofenceError(f"unknown geofence kind {bad[0]!r} (one of "
                            f"{', '.join(GEOFENCE_KINDS)})")
    return tuple(kinds)


def check_storable(f: GeofenceRecord) -> None:
    """What no backend stores: unknown kind, bad id, no extent, a road fence without segments."""
    check_geofence_kinds([f.kind])
    if not f.geofence_id or "/" in f.geofence_id:
        raise GeofenceError(f"geofence id {f.geofence_id!r} is empty or has '/'")
    if f.bbox is None:
        raise GeofenceError(f"geofence {f.geofence_id}: no extent (resolve it first)")
    if f.kind == "restricted_road" and not f.segment_ids:
        raise GeofenceError(f"geofence {f.geofence_id}: a restricted road without segments")
    if f.kind == "restricted_zone" and (f.geometry is None
                                        or f.geometry.geom_type not in _POLYGONS):
        raise GeofenceError(f"geofence {f.geofence_id}: a restricted zone needs a polygon")
    if f.kind == "assigned_route" and f.geometry is None and not f.segment_ids:
        raise GeofenceError(f"geofence {f.geofence_id}: an assigned route needs a line or "
                            "segments")


def check_unique(fences: Sequence[GeofenceRecord]) -> None:
    """GeofenceError on a duplicate id in one batch."""
    seen: set[str] = set()
    for f in fences:
        if f.geofence_id in seen:
            raise GeofenceError(f"duplicate geofence {f.geofence_id!r} in one import")
        seen.add(f.geofence_id)


# --- GeoJSON in -------------------------------------------------------------------------------


def _strings(props: Mapping[str, Any], key: str, *, limit: int = 10_000) -> tuple[str, ...]:
    raw = props.get(key)
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(v, str) and v.strip() for v in raw):
        raise GeofenceError(f"{key} must be a list of non-empty strings")
    if len(raw) > limit:
        raise GeofenceError(f"{key} lists more than {limit} entries")
    return tuple(dict.fromkeys(v.strip() for v in raw))


def _text(props: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    raw = props.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            raise GeofenceError(f"{key} is required")
        return None
    if not isinstance(raw, str):
        raise GeofenceError(f"{key} must be a string")
    if len(raw) > 500:
        raise GeofenceError(f"{key} is longer than 500 characters")
    return raw.strip()


def parse_time_window(raw: str) -> tuple[int, int]:
    """``"22:00-06:00"`` → (start, end), seconds of the local day; end < start crosses midnight."""
    m = _WINDOW.match(raw)
    if m is None:
        raise GeofenceError(f"time window {raw!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
    if start > 86_400 or end > 86_400 or start == end:
        raise GeofenceError(f"time window {raw!r} is empty or past 24:00")
    return start, end


def _validity(props: Mapping[str, Any], key: str) -> datetime | None:
    raw = props.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise GeofenceError(f"{key} must be an ISO 8601 date or time")
    try:
        if len(raw.strip()) == 10:
            d = date.fromisoformat(raw.strip())
            if key == "valid_until":  # a date is inclusive: valid to the end of that local day
                d += timedelta(days=1)
            return datetime.combine(d, time(0), LOCAL_TZ).astimezone(UTC)
        dt = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise GeofenceError(f"{key} {raw!r} is not an ISO 8601 date or time") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=LOCAL_TZ)
    return dt.astimezone(UTC)


def _geometry(raw: object) -> BaseGeometry | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "type" not in raw:
        raise GeofenceError("geometry must be a GeoJSON geometry object or null")
    try:
        geom = shape(raw)
    except (ValueError, TypeError, KeyError, AttributeError, shapely.errors.GEOSException) as exc:
        raise GeofenceError(f"geometry is not valid GeoJSON: {exc}") from exc
    if geom.is_empty:
        raise GeofenceError("geometry is empty")
    xy = shapely.get_coordinates(geom)
    if not np.isfinite(xy).all() or not (
            (xy[:, 0] >= -180).all() and (xy[:, 0] <= 180).all()
            and (xy[:, 1] >= -90).all() and (xy[:, 1] <= 90).all()):
        raise GeofenceError("geometry coordinates are outside the WGS-84 range (lon, lat)")
    if geom.geom_type in _POLYGONS and not geom.is_valid:
        raise GeofenceError(f"polygon is invalid: {shapely.is_valid_reason(geom)}")
    return geom


def parse_geofence(feature: object, *, geofence_id: str | None = None) -> GeofenceRecord:
    """One GeoJSON Feature → :class:`GeofenceRecord` (segments not yet resolved or checked).

    ``geofence_id`` (the API's path) must agree with the Feature's id when both are given.
    :class:`GeofenceError` names the first problem.
    """
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise GeofenceError('a geofence must be a GeoJSON Feature ({"type": "Feature", …})')
    props = feature.get("properties")
    if not isinstance(props, dict):
        raise GeofenceError("properties must be an object")
    ids = {str(v) for v in (feature.get("id"), props.get("geofence_id"), geofence_id)
           if v not in (None, "")}
    if not ids:
        raise GeofenceError("geofence_id is required (the Feature's id or properties)")
    if len(ids) > 1:
        raise GeofenceError(f"conflicting ids: {', '.join(sorted(ids))}")
    gid = ids.pop()
    if "/" in gid or len(gid) > 200 or not gid.strip():
        raise GeofenceError(f"geofence_id {gid!r} is empty, too long or contains '/'")
    kind = props.get("kind")
    if kind not in GEOFENCE_KINDS:
        raise GeofenceError(f"kind must be one of {', '.join(GEOFENCE_KINDS)}, got {kind!r}")
    name = _text(props, "name", required=True)
    assert name is not None
    classes = _strings(props, "vehicle_classes", limit=len(VEHICLE_CLASSES))
    unknown = [c for c in classes if c not in VEHICLE_CLASSES]
    if unknown:
        raise GeofenceError(f"unknown vehicle class {unknown[0]!r} (one of "
                            f"{', '.join(VEHICLE_CLASSES)})")
    vehicle_ids = _strings(props, "vehicle_ids")
    route_ids = _strings(props, "route_ids")
    segment_ids = _strings(props, "segment_ids", limit=MAX_SEGMENT_IDS)
    geom = _geometry(feature.get("geometry"))
    width = props.get("width_m")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int | float)
                              or not math.isfinite(width) or not 1 <= width <= 5000):
        raise GeofenceError("width_m must be a number of metres between 1 and 5000")
    windows = _strings(props, "time_windows", limit=24)
    for w in windows:
        parse_time_window(w)
    valid_from, valid_until = _validity(props, "valid_from"), _validity(props, "valid_until")
    if valid_from and valid_until and valid_until <= valid_from:
        raise GeofenceError("valid_until must be after valid_from")
    segments_from = "given"
    if kind == "restricted_zone":
        if geom is None or geom.geom_type not in _POLYGONS:
            raise GeofenceError("a restricted_zone needs a Polygon or MultiPolygon geometry")
        if not classes:
            raise GeofenceError("a restricted_zone needs vehicle_classes")
        segment_ids = ()
    elif kind == "restricted_road":
        if not classes:
            raise GeofenceError("a restricted_road needs vehicle_classes")
        if geom is not None and geom.geom_type not in _POLYGONS | _LINES:
            raise GeofenceError("a restricted_road's geometry must be a polygon or a line")
        # Resolved from the geometry unless ids were given for it (a round trip of our own
        # answer says which it was).
        if geom is not None and (not segment_ids or props.get("segments_from") == "geometry"):
            segments_from, segment_ids = "geometry", ()
        elif not segment_ids:
            raise GeofenceError("a restricted_road needs segment_ids or a polygon/line geometry")
    else:
        if not (vehicle_ids or route_ids):
            raise GeofenceError("an assigned_route needs vehicle_ids or route_ids (whose route "
                                "it is)")
        if geom is not None and geom.geom_type not in _LINES:
            raise GeofenceError("an assigned_route's geometry must be a LineString")
        if geom is None and not segment_ids:
            raise GeofenceError("an assigned_route needs a LineString with width_m, or "
                                "segment_ids")
        if geom is not None:
            segment_ids = ()  # the corridor is the line; ids would be a second, rival truth
            width = width or DEFAULT_CORRIDOR_WIDTH_M
    unknown_props = sorted(set(props) - _KNOWN_PROPS)
    if unknown_props:
        raise GeofenceError(f"unknown propert{'y' if len(unknown_props) == 1 else 'ies'} "
                            f"{', '.join(unknown_props)}")
    return GeofenceRecord(
        geofence_id=gid, name=name, name_en=_text(props, "name_en"), kind=kind,
        vehicle_classes=classes, vehicle_ids=vehicle_ids, route_ids=route_ids, geometry=geom,
        segment_ids=segment_ids, segments_from=segments_from,
        width_m=None if width is None else float(width), time_windows=windows,
        valid_from=valid_from, valid_until=valid_until,
        description=_text(props, "description"),
        bbox=None if geom is None else _bounds(geom))


def _bounds(geom: BaseGeometry) -> BBox:
    b = geom.bounds
    return float(b[0]), float(b[1]), float(b[2]), float(b[3])


@dataclass(slots=True)
class GeofenceParse:
    """A file's fences and its per-feature errors (``feature 3 (id): reason``)."""

    fences: list[GeofenceRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    features: int = 0
    index: dict[str, int] = field(default_factory=dict)
    """Feature index of each fence, for errors found later (unknown segments)."""


def parse_collection(data: object) -> GeofenceParse:
    """A GeoJSON FeatureCollection → fences; a bad feature is an error, not an exception.

    :class:`GeofenceError` only when the document itself is not a FeatureCollection.
    """
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(
            data.get("features"), list):
        raise GeofenceError("a geofence file must be a GeoJSON FeatureCollection")
    features = data["features"]
    if len(features) > MAX_FEATURES:
        raise GeofenceError(f"a geofence file may hold at most {MAX_FEATURES} features")
    out = GeofenceParse(features=len(features))
    seen: set[str] = set()
    for i, f in enumerate(features):
        label = _label(i, f)
        try:
            fence = parse_geofence(f)
        except GeofenceError as exc:
            out.errors.append(f"{label}: {exc.message}")
            continue
        if fence.geofence_id in seen:
            out.errors.append(f"{label}: duplicate geofence_id {fence.geofence_id!r}")
            continue
        seen.add(fence.geofence_id)
        out.index[fence.geofence_id] = i
        out.fences.append(fence)
    return out


def _label(i: int, f: object) -> str:
    fid = None
    if isinstance(f, dict):
        props = f.get("properties")
        fid = f.get("id") or (props.get("geofence_id") if isinstance(props, dict) else None)
    return f"feature {i}" + (f" ({fid})" if isinstance(fid, str | int) else "")


# --- segments --------------------------------------------------------------------------------


def covered_segment_ids(geom: BaseGeometry, width_m: float | None,
                        segments: Sequence[tuple[str, Sequence[tuple[float, float]]]]
                        ) -> list[str]:
    """Which of ``segments`` (id, coords) a restricted road's polygon or line covers.

    Covered: at least half the segment's length inside the polygon, or within ``width_m / 2``
    of the line. Measured in a local metric frame around the geometry (exact enough over the
    few kilometres a fence spans), so both backends give the same answer.
    """
    if not segments:
        return []
    cx, cy = geom.centroid.x, geom.centroid.y
    kx = M_PER_DEG * math.cos(math.radians(cy))

    def local(xy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xy)
        out[:, 0] = (xy[:, 0] - cx) * kx
        out[:, 1] = (xy[:, 1] - cy) * M_PER_DEG
        return out

    area = shapely.transform(geom, local)
    if geom.geom_type in _LINES:
        area = area.buffer((width_m or DEFAULT_ROAD_WIDTH_M) / 2.0, cap_style="flat")
    shapely.prepare(area)
    lines = shapely.transform(
        np.asarray([shapely.LineString(c) for _, c in segments], dtype=object), local)
    inside = shapely.length(shapely.intersection(lines, area))
    total = shapely.length(lines)
    keep = inside >= MIN_COVERED_SHARE * np.maximum(total, 1e-9)
    return [sid for (sid, _), k in zip(segments, keep, strict=True) if k]


async def resolve_geofence(store: GeoStore, fence: GeofenceRecord) -> GeofenceRecord:
    """The fence ready to store: road segments resolved from its geometry or checked to exist.

    :class:`GeofenceError` when a restricted road covers no segment or names unknown ones.
    """
    if fence.kind == "restricted_zone" or (fence.kind == "assigned_route"
                                           and fence.geometry is not None):
        return fence
    if fence.segments_from == "geometry" and fence.geometry is not None:
        ids = await store.covered_segments(fence.geometry, fence.width_m)
        if not ids:
            raise GeofenceError("the geometry covers no road segment of the region")
        return replace(fence, segment_ids=tuple(ids))
    found = await store.segments_by_id(fence.segment_ids)
    missing = [sid for sid in fence.segment_ids if sid not in found]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise GeofenceError(f"unknown segment_ids {', '.join(missing[:3])}{more}")
    if fence.bbox is None:
        xy = np.asarray([c for s in found.values() for c in s.coords], dtype=np.float64)
        fence = replace(fence, bbox=(float(xy[:, 0].min()), float(xy[:, 1].min()),
                                     float(xy[:, 0].max()), float(xy[:, 1].max())))
    return fence


# --- GeoJSON out -----------------------------------------------------------------------------


def geofence_feature(f: GeofenceRecord) -> dict[str, Any]:
    """A stored fence as the GeoJSON Feature the API returns (and accepts back)."""
    props: dict[str, Any] = {"geofence_id": f.geofence_id, "name": f.name, "name_en": f.name_en,
                             "kind": f.kind, **f.props(), "source": f.source,
                             "updated_at": _iso(f.updated_at),
                             "bbox": None if f.bbox is None else list(f.bbox)}
    return {"type": "Feature", "id": f.geofence_id,
            "geometry": None if f.geometry is None else mapping(f.geometry),
            "properties": props}


# --- import ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeofenceImport:
    """Outcome of a file import: "N of M features imported", failures by feature."""

    applied: int
    features: int
    errors: list[str]


def import_source(path: Path) -> str:
    """Import source of a file: its name, so another file's fences are left alone."""
    return f"file:{path.name}"


async def import_geofences_file(store: GeoStore, path: str | Path) -> GeofenceImport:
    """Read a GeoJSON FeatureCollection of fences and store the good ones in one transaction.

    Fences this file imported before and no longer lists are deleted; fences from the API or
    other files stay. No usable feature: rejected (GeofenceError), nothing written.
    """
    file = Path(path)

    def read() -> tuple[bytes, str]:
        if not file.is_file():
            raise GeofenceError(f"geofence file not found: {file}")
        raw = file.read_bytes()
        return raw, hashlib.sha256(raw).hexdigest()

    raw, digest = await asyncio.to_thread(read)
    try:
        data = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        raise GeofenceError(f"geofence file {file.name} is not JSON: {exc}") from exc
    parsed = parse_collection(data)
    fences: list[GeofenceRecord] = []
    errors = list(parsed.errors)
    for fence in parsed.fences:
        try:
            fences.append(await resolve_geofence(store, fence))
        except GeofenceError as exc:
            i = parsed.index[fence.geofence_id]
            errors.append(f"feature {i} ({fence.geofence_id}): {exc.message}")
    errors.sort(key=_feature_index)
    if not fences:
        raise GeofenceError(f"geofence file {file.name}: no usable feature",
                            details={"errors": errors})
    await store.import_geofences(import_source(file), digest, fences)
    return GeofenceImport(len(fences), parsed.features, errors)


def _feature_index(error: str) -> int:
    m = re.match(r"feature (\d+)", error)
    return int(m.group(1)) if m else -1
