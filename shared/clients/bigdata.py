"""The client of bigdata's internal HTTP API: the segment catalogue, the region, profiles.

Contract (bigdata implements it): ``GET /v1/segments[?bbox=…]``, ``GET /v1/segments/{id}``,
``GET /v1/region``, ``GET /v1/profiles?at=…`` (time-of-week profile speeds of the bucket
containing ``at``) and ``GET /v1/geofences`` (a GeoJSON FeatureCollection of geofences).
Records that break the contract are skipped and counted by kind instead of failing the whole
catalogue, so one bad row never blanks the map.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from shared.clients.http import JsonClient
from shared.errors import NotFound, TransientError

log = logging.getLogger("tti.clients.bigdata")


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """One directed road segment as bigdata describes it (WGS-84 coordinates)."""

    segment_id: str
    name: str | None
    name_en: str | None
    road_class: str
    lanes: int | None
    speed_limit_kmh: float | None
    free_flow_kmh: float
    oneway: bool
    bridge: bool
    tunnel: bool
    length_m: float
    coords: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Region:
    """The region bigdata holds: its name, bounding box and segment count."""

    name: str
    bbox: tuple[float, float, float, float]
    segment_count: int
    name_en: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSpeed:
    """A segment's usual speed in the current time-of-week bucket (not a live value)."""

    segment_id: str
    speed_kmh: float
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSnapshot:
    """The profile speeds of one time-of-week bucket, valid until ``valid_until`` (UTC)."""

    bucket: int
    valid_until: datetime
    speeds: dict[str, ProfileSpeed]
    rejected: int = 0


@dataclass(slots=True)
class SegmentBatch:
    """The segments parsed from one listing, and how many records were rejected, by kind."""

    segments: list[Segment] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)


class SegmentFormatError(ValueError):
    """A segment record breaks the contract; ``kind`` is a bounded label."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _opt_str(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise SegmentFormatError("bad_field", f"{name} must be a string or null")


def _number(value: object, name: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SegmentFormatError("bad_field", f"{name} must be a finite number")
    return float(value)


def _coords(value: object) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise SegmentFormatError("bad_geometry", "coords must list at least two points")
    out = []
    for point in value:
        if not isinstance(point, list | tuple) or len(point) < 2:
            raise SegmentFormatError("bad_geometry", "each point must be [lon, lat]")
        lon = _number(point[0], "lon")
        lat = _number(point[1], "lat")
        assert lon is not None and lat is not None
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise SegmentFormatError("bad_geometry", "point out of WGS-84 range")
        out.append((lon, lat))
    return tuple(out)


def parse_segment(data: object) -> Segment:
    """One contract record → :class:`Segment`; :class:`SegmentFormatError` when malformed."""
    if not isinstance(data, dict):
        raise SegmentFormatError("not_object", "segment must be an object")
    try:
        segment_id = data["segment_id"]
        if not isinstance(segment_id, str) or not segment_id:
            raise SegmentFormatError("bad_field", "segment_id must be a non-empty string")
        lanes = data.get("lanes")
        if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, int)):
            raise SegmentFormatError("bad_field", "lanes must be an integer or null")
        free_flow = _number(data["free_flow_kmh"], "free_flow_kmh")
        length = _number(data["length_m"], "length_m")
        assert free_flow is not None and length is not None
        return Segment(
            segment_id=segment_id,
            name=_opt_str(data.get("name"), "name"),
            name_en=_opt_str(data.get("name_en"), "name_en"),
            road_class=str(data["road_class"]),
            lanes=lanes,
            speed_limit_kmh=_number(data.get("speed_limit_kmh"), "speed_limit_kmh",
                                    optional=True),
            free_flow_kmh=free_flow,
            oneway=bool(data.get("oneway", False)),
            bridge=bool(data.get("bridge", False)),
            tunnel=bool(data.get("tunnel", False)),
            length_m=length,
            coords=_coords(data["coords"]),
        )
    except KeyError as exc:
        raise SegmentFormatError("missing_field", f"segment lacks {exc}") from exc


def parse_region(data: object) -> Region:
    """bigdata's region answer → :class:`Region`; :class:`TransientError` when malformed."""
    try:
        if not isinstance(data, dict):
            raise TypeError("region answer must be an object")
        minlon, minlat, maxlon, maxlat = (float(v) for v in data["bbox"])
        bbox = (minlon, minlat, maxlon, maxlat)
        if not all(math.isfinite(v) for v in bbox):
            raise ValueError("bbox must be four finite numbers")
        name_en = data.get("name_en")
        return Region(name=str(data["name"]), bbox=bbox,
                      segment_count=int(data["segment_count"]),
                      name_en=name_en if isinstance(name_en, str) and name_en else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise TransientError(f"bigdata region answer is malformed: {exc}",
                             code="bigdata_bad_answer") from exc


def _utc(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be an ISO 8601 time")
    dt = datetime.fromisoformat(value)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_profiles(data: object) -> ProfileSnapshot:
    """bigdata's ``/v1/profiles`` answer → :class:`ProfileSnapshot`; malformed rows skipped.

    :class:`TransientError` when the answer as a whole is malformed.
    """
    try:
        if not isinstance(data, dict) or not isinstance(data.get("profiles"), list):
            raise TypeError("profiles answer must be an object with a 'profiles' list")
        bucket = data["bucket"]
        if isinstance(bucket, bool) or not isinstance(bucket, int):
            raise TypeError("bucket must be an integer")
        valid_until = _utc(data["valid_until"], "valid_until")
    except (KeyError, TypeError, ValueError) as exc:
        raise TransientError(f"bigdata profiles answer is malformed: {exc}",
                             code="bigdata_bad_answer") from exc
    speeds: dict[str, ProfileSpeed] = {}
    rejected = 0
    for row in data["profiles"]:
        try:
            if not isinstance(row, dict):
                raise TypeError("profile must be an object")
            sid = row["segment_id"]
            speed = _number(row["speed_kmh"], "speed_kmh")
            if not isinstance(sid, str) or not sid or speed is None or speed < 0:
                raise ValueError("bad segment_id or speed_kmh")
            speeds[sid] = ProfileSpeed(segment_id=sid, speed_kmh=speed,
                                       updated_at=_utc(row["updated_at"], "updated_at"))
        except (KeyError, TypeError, ValueError):
            rejected += 1
    return ProfileSnapshot(bucket=bucket, valid_until=valid_until, speeds=speeds,
                           rejected=rejected)


class BigdataClient(JsonClient):
    """Reads segments, the region and profile speeds from bigdata."""

    service = "bigdata"

    async def list_segments(self, bbox: tuple[float, float, float, float] | None = None
                            ) -> SegmentBatch:
        """Every segment (or those in ``bbox``), malformed records skipped and counted."""
        params = {"bbox": ",".join(repr(v) for v in bbox)} if bbox else None
        data = await self._get("/v1/segments", params)
        records = data.get("segments") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise TransientError("bigdata segment listing lacks 'segments'",
                                 code="bigdata_bad_answer")
        batch = SegmentBatch()
        for record in records:
            try:
                batch.segments.append(parse_segment(record))
            except SegmentFormatError as exc:
                batch.rejected[exc.kind] += 1
        return batch

    async def find_segment(self, segment_id: str) -> Segment | None:
        """One segment by id, or None when bigdata does not know it."""
        try:
            data = await self._get("/v1/segments/" + quote(segment_id, safe=":"))
        except NotFound:
            return None
        try:
            return parse_segment(data)
        except SegmentFormatError as exc:
            raise TransientError(f"bigdata segment {segment_id!r} is malformed: {exc}",
                                 code="bigdata_bad_answer") from exc

    async def get_region(self) -> Region:
        """The region's name, bbox and segment count."""
        return parse_region(await self._get("/v1/region"))

    async def list_detectors(self) -> dict[str, DetectorSite]:
        """The roadside detector and camera registry (id → site)."""
        return parse_detectors(await self._get("/v1/features", {
            "kinds": "detector", "limit": "5000", "geometry": "false"}))

    async def get_route_segments(self) -> dict[str, frozenset[str]]:
        """Road segments each bus route runs on (``GET /v1/routes/segments``), by route id."""
        data = await self._get("/v1/routes/segments")
        routes = data.get("routes") if isinstance(data, dict) else None
        if not isinstance(routes, dict):
            raise TransientError("bigdata route segments lack 'routes'",
                                 code="bigdata_bad_answer")
        return {str(r): frozenset(s for s in segs if isinstance(s, str))
                for r, segs in routes.items() if isinstance(segs, list)}

    async def list_geofences(self) -> GeofenceBatch:
        """Every geofence (restricted zones and roads, assigned routes), malformed ones skipped
        and counted by kind."""
        return parse_geofences(await self._get("/v1/geofences"))

    async def list_features(self, kinds: Sequence[str], *,
                            bbox: tuple[float, float, float, float] | None = None,
                            limit: int = 5000) -> list[dict[str, Any]]:
        """``GET /v1/features`` of ``kinds`` without geometry (center, attrs, live state), as
        bigdata's JSON; the caller parses the records it uses."""
        params = {"kinds": ",".join(kinds), "limit": str(limit), "geometry": "false"}
        if bbox is not None:
            params["bbox"] = ",".join(repr(v) for v in bbox)
        return _records(await self._get("/v1/features", params), "features")

    async def list_gtfs_routes(self) -> list[dict[str, Any]]:
        """``GET /v1/gtfs/routes``: every route of every imported GTFS feed, as bigdata's JSON."""
        return _records(await self._get("/v1/gtfs/routes"), "routes")

    async def list_gtfs_stops(self, bbox: tuple[float, float, float, float], *,
                              limit: int = 5000) -> list[dict[str, Any]]:
        """``GET /v1/gtfs/stops?bbox=``: GTFS stops in a box (at most ``limit``)."""
        return _records(await self._get("/v1/gtfs/stops", {
            "bbox": ",".join(repr(v) for v in bbox), "limit": str(limit)}), "stops")

    async def stop_arrivals(self, stop_id: str, *, horizon_min: int = 60,
                            limit: int = 20) -> dict[str, Any]:
        """``GET /v1/stops/{stop_id}/arrivals``: live and timetable arrivals, as bigdata's JSON."""
        data = await self._get("/v1/stops/" + quote(stop_id, safe="") + "/arrivals",
                               {"horizon_min": str(horizon_min), "limit": str(limit)})
        if not isinstance(data, dict) or not isinstance(data.get("arrivals"), list):
            raise TransientError("bigdata arrivals answer lacks 'arrivals'",
                                 code="bigdata_bad_answer")
        return dict(data)

    async def get_basemap(self, bbox: tuple[float, float, float, float], zoom: int
                          ) -> dict[str, Any]:
        """``GET /v1/basemap?bbox=&zoom=``: the base map's GeoJSON FeatureCollection for a box
        drawn at a Web Mercator zoom, as bigdata's JSON."""
        data = await self._get("/v1/basemap", {"bbox": ",".join(repr(v) for v in bbox),
                                               "zoom": str(zoom)})
        if not isinstance(data, dict) or not isinstance(data.get("features"), list):
            raise TransientError("bigdata base map answer lacks 'features'",
                                 code="bigdata_bad_answer")
        return dict(data)

    async def get_profiles(self, at: datetime) -> ProfileSnapshot:
        """Time-of-week profile speeds of the bucket containing ``at`` (every segment with one)."""
        return parse_profiles(await self._get("/v1/profiles",
                                              {"at": at.astimezone(UTC).isoformat()}))


def _records(data: object, key: str) -> list[dict[str, Any]]:
    records = data.get(key) if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise TransientError(f"bigdata answer lacks {key!r}", code="bigdata_bad_answer")
    return [r for r in records if isinstance(r, dict)]


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorSite:
    """Where a roadside detector or camera is and which segment it watches (if one)."""

    detector_id: str
    lon: float
    lat: float
    segment_id: str | None
    name: str | None = None


def parse_detectors(data: object) -> dict[str, DetectorSite]:
    """bigdata's ``/v1/features?kinds=detector`` answer → sites by id; malformed rows skipped."""
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise TransientError("bigdata feature listing lacks 'features'", code="bigdata_bad_answer")
    out: dict[str, DetectorSite] = {}
    for f in features:
        try:
            attrs = f.get("attrs") or {}
            lon, lat = (float(v) for v in f["center"])
            segment_id = attrs.get("segment_id")
            out[str(f["id"])] = DetectorSite(
                detector_id=str(f["id"]), lon=lon, lat=lat,
                segment_id=segment_id if isinstance(segment_id, str) and segment_id else None,
                name=f.get("name") if isinstance(f.get("name"), str) else None)
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return out


GEOFENCE_KINDS = ("restricted_zone", "restricted_road", "assigned_route")
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Geofence:
    """A geofence as bigdata serves it, for the warning service's geofence rule.

    ``kind``: ``restricted_zone`` (``geometry`` a polygon the ``vehicle_classes`` may not enter),
    ``restricted_road`` (``segment_ids`` they may not use), ``assigned_route`` (a corridor the
    ``vehicle_ids``, or vehicles on ``route_ids``, must keep to: ``geometry`` a line with the full
    corridor ``width_m``, or ``segment_ids``). ``geometry`` is GeoJSON (WGS-84) or None.
    ``time_windows`` are (start, end) seconds of the local day (UTC+8; end < start crosses
    midnight; empty: all day); ``valid_from``/``valid_until`` (exclusive) UTC or None.
    """

    geofence_id: str
    name: str
    kind: str
    vehicle_classes: frozenset[str]
    name_en: str | None = None
    vehicle_ids: frozenset[str] = frozenset()
    route_ids: frozenset[str] = frozenset()
    segment_ids: frozenset[str] = frozenset()
    geometry: Mapping[str, Any] | None = None
    width_m: float | None = None
    time_windows: tuple[tuple[int, int], ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class GeofenceBatch:
    """The geofences of one listing, and how many records were rejected, by kind."""

    fences: list[Geofence] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)


def _time_window(raw: object) -> tuple[int, int]:
    m = _WINDOW.match(raw) if isinstance(raw, str) else None
    if m is None:
        raise SegmentFormatError("bad_field", f"time window {raw!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
    if not (0 <= start <= 86_400 and 0 <= end <= 86_400 and m1 < 60 and m2 < 60):
        raise SegmentFormatError("bad_field", f"time window {raw!r} is out of range")
    return start, end


def _names(value: object, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SegmentFormatError("bad_field", f"{name} must be a list of strings")
    return frozenset(value)


def _opt_time(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return _utc(value, name)
    except ValueError as exc:
        raise SegmentFormatError("bad_field", str(exc)) from exc


def parse_geofence(data: object) -> Geofence:
    """One Feature of ``/v1/geofences`` → :class:`Geofence`; SegmentFormatError when malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
        raise SegmentFormatError("not_object", "geofence must be a Feature with properties")
    p = data["properties"]
    try:
        gid, kind, name = p["geofence_id"], p["kind"], p["name"]
    except KeyError as exc:
        raise SegmentFormatError("missing_field", f"geofence lacks {exc}") from exc
    if not isinstance(gid, str) or not gid or not isinstance(name, str):
        raise SegmentFormatError("bad_field", "geofence_id and name must be strings")
    if kind not in GEOFENCE_KINDS:
        raise SegmentFormatError("unknown_kind", f"unknown geofence kind {kind!r}")
    geometry = data.get("geometry")
    if geometry is not None and not (isinstance(geometry, dict) and "coordinates" in geometry):
        raise SegmentFormatError("bad_geometry", "geometry must be GeoJSON or null")
    segments = _names(p.get("segment_ids"), "segment_ids")
    if kind == "restricted_zone" and geometry is None:
        raise SegmentFormatError("bad_geometry", "a restricted zone without a polygon")
    if kind == "restricted_road" and not segments:
        raise SegmentFormatError("bad_field", "a restricted road without segment_ids")
    if kind == "assigned_route" and geometry is None and not segments:
        raise SegmentFormatError("bad_geometry", "an assigned route without line or segments")
    windows = p.get("time_windows") or []
    if not isinstance(windows, list):
        raise SegmentFormatError("bad_field", "time_windows must be a list")
    return Geofence(
        geofence_id=gid, name=name, kind=kind,
        name_en=_opt_str(p.get("name_en"), "name_en"),
        vehicle_classes=_names(p.get("vehicle_classes"), "vehicle_classes"),
        vehicle_ids=_names(p.get("vehicle_ids"), "vehicle_ids"),
        route_ids=_names(p.get("route_ids"), "route_ids"), segment_ids=segments,
        geometry=geometry,
        width_m=_number(p.get("width_m"), "width_m", optional=True),
        time_windows=tuple(_time_window(w) for w in windows),
        valid_from=_opt_time(p.get("valid_from"), "valid_from"),
        valid_until=_opt_time(p.get("valid_until"), "valid_until"),
        updated_at=_opt_time(p.get("updated_at"), "updated_at"))


def parse_geofences(data: object) -> GeofenceBatch:
    """bigdata's ``/v1/geofences`` answer → fences; malformed ones skipped and counted.

    :class:`TransientError` when the answer as a whole is malformed.
    """
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise TransientError("bigdata geofence listing lacks 'features'",
                             code="bigdata_bad_answer")
    batch = GeofenceBatch()
    for f in features:
        try:
            batch.fences.append(parse_geofence(f))
        except SegmentFormatError as exc:
            batch.rejected[exc.kind] += 1
    return batch
