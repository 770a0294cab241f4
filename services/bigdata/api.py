"""The bigdata service's internal HTTP API under ``/v1`` (used by warning and publisher).

Everything answers JSON; bad parameters are 400 and missing objects 404, both with the
``{"error": {"code", "message"}}`` body of the service base. Coordinates are WGS-84 (lon, lat),
distances metres, times ISO 8601 in UTC (time-of-week profile buckets are counted in local time,
Asia/Shanghai, and say so). Geofences (``/v1/geofences``) are GeoJSON Features; reading them is
open like the rest, writing (PUT, DELETE) needs ``Authorization: Bearer <token>`` with a token of
``TTI_GEOFENCE_TOKENS`` (401 without a valid one, 403 while none is configured). GTFS times of
day are the feed's ``HH:MM:SS`` in its ``agency_timezone`` (hours may exceed 23), with seconds of
the service day beside them.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web
from shapely.geometry import mapping

from services.bigdata.basemap import basemap_answer, parse_layers, parse_zoom
from services.bigdata.geofences import (
    GEOFENCE_KINDS,
    GeofenceError,
    check_geofence_kinds,
    geofence_feature,
    parse_geofence,
    resolve_geofence,
)
from services.bigdata.profiles import (
    BUCKET_S,
    BUCKETS_PER_WEEK,
    TIME_ZONE,
    bucket_end,
    bucket_label,
    bucket_of,
)
from services.bigdata.store import (
    FEATURE_KINDS,
    Feature,
    GeoStore,
    GtfsFeed,
    GtfsRoute,
    GtfsStop,
    GtfsStopTime,
    GtfsTrip,
    RegionInfo,
    SearchHit,
)
from services.bigdata.store.features import SEARCH_KINDS, check_kinds
from services.bigdata.store.gtfs import gtfs_time
from shared.clock import Clock
from shared.codec import dumps
from shared.errors import BadRequest, Forbidden, NotFound, Unauthorized
from shared.events import SegmentSpeed
from shared.params import parse_bbox
from shared.roadnet import RoadSegment
from shared.service import CONFIG

MAX_FEATURES = 5000
MAX_NEAREST = 100
MAX_NEAREST_M = 100_000.0
DEFAULT_NEAREST_M = 5_000.0
MAX_SEARCH = 100
MAX_QUERY_CHARS = 100


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the handlers need: the store, the latest live speed of a segment, the clock
    (what "now" means for the default time ranges)."""

    store: GeoStore
    latest_speed: Callable[[str], SegmentSpeed | None]
    clock: Clock


API = web.AppKey("bigdata_api", ApiContext)


# --- parameters --------------------------------------------------------------------------------


def _parse_time(raw: str | None, default: datetime, name: str) -> datetime:
    if raw is None:
        return default
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an ISO 8601 time") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _number(query: Mapping[str, str], name: str, lo: float, hi: float,
            default: float | None = None) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"{name} is required")
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a number") from exc
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadRequest(f"{name} must be between {lo:g} and {hi:g}")
    return value


def _count(query: Mapping[str, str], name: str, hi: int, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer") from exc
    if not 1 <= value <= hi:
        raise BadRequest(f"{name} must be between 1 and {hi}")
    return value


def _kinds(query: Mapping[str, str], allowed: frozenset[str]) -> tuple[str, ...] | None:
    raw = query.get("kinds")
    if raw is None or raw.strip() == "":
        return None
    return check_kinds([k.strip() for k in raw.split(",") if k.strip()], allowed=allowed)


def _text(query: Mapping[str, str], name: str) -> str:
    raw = (query.get(name) or "").strip()
    if not raw:
        raise BadRequest(f"{name} is required")
    if len(raw) > MAX_QUERY_CHARS:
        raise BadRequest(f"{name} is longer than {MAX_QUERY_CHARS} characters")
    return raw


# --- JSON shapes -------------------------------------------------------------------------------


def segment_json(seg: RoadSegment) -> dict[str, object]:
    """A segment as ``/v1/segments`` returns it (the publisher depends on this shape)."""
    return {
        "segment_id": seg.segment_id, "name": seg.name, "name_en": seg.name_en,
        "ref": seg.ref, "road_class": seg.road_class, "lanes": seg.lanes,
        "speed_limit_kmh": seg.speed_limit_kmh, "free_flow_kmh": seg.free_flow_kmh,
        "oneway": seg.oneway, "bridge": seg.bridge, "tunnel": seg.tunnel,
        "length_m": round(seg.length_m, 2), "coords": [list(c) for c in seg.coords],
    }


def feature_json(f: Feature, *, geometry: bool = True) -> dict[str, object]:
    """A feature with its live state (``live_updated_at`` UTC, None when never updated)."""
    body: dict[str, object] = {
        "kind": f.kind, "id": f.feature_id, "name": f.name, "name_en": f.name_en,
        "ref": f.ref, "source": f.source, "center": list(f.center),
        "bbox": list(f.geometry.bounds), "attrs": dict(f.attrs),
        "live": None if f.live is None else dict(f.live),
        "live_updated_at": None if f.live_updated_at is None
        else f.live_updated_at.astimezone(UTC).isoformat(),
    }
    if geometry:
        body["geometry"] = mapping(f.geometry)
    return body


def hit_json(h: SearchHit) -> dict[str, object]:
    """A search result (roads carry their segment ids)."""
    body: dict[str, object] = {
        "kind": h.kind, "id": h.id, "name": h.name, "name_en": h.name_en, "ref": h.ref,
        "match": h.match, "center": list(h.center), "bbox": list(h.bbox), "attrs": dict(h.attrs),
    }
    if h.kind == "road":
        body["segment_ids"] = list(h.segment_ids)
    return body


def _feed_json(f: GtfsFeed) -> dict[str, object]:
    return {"feed_id": f.feed_id, "source": f.source, "imported_at": f.imported_at.isoformat(),
            "agency_timezone": f.agency_timezone, "feed_info": dict(f.feed_info),
            "counts": dict(f.counts), "warnings": list(f.warnings)}


def _route_json(r: GtfsRoute) -> dict[str, object]:
    return {"feed_id": r.feed_id, "route_id": r.route_id, "agency_id": r.agency_id,
            "short_name": r.short_name, "long_name": r.long_name, "desc": r.desc,
            "route_type": r.route_type, "color": r.color, "text_color": r.text_color}


def _stop_json(s: GtfsStop) -> dict[str, object]:
    return {"feed_id": s.feed_id, "stop_id": s.stop_id, "code": s.code, "name": s.name,
            "name_en": s.name_en, "lat": s.lat, "lon": s.lon, "location_type": s.location_type,
            "parent_station": s.parent_station, "platform_code": s.platform_code,
            "wheelchair_boarding": s.wheelchair_boarding}


def _trip_json(t: GtfsTrip) -> dict[str, object]:
    return {"feed_id": t.feed_id, "trip_id": t.trip_id, "route_id": t.route_id,
            "service_id": t.service_id, "headsign": t.headsign, "short_name": t.short_name,
            "direction_id": t.direction_id, "block_id": t.block_id, "shape_id": t.shape_id}


def _stop_time_json(st: GtfsStopTime) -> dict[str, object]:
    return {"stop_sequence": st.stop_sequence, "stop_id": st.stop_id,
            "arrival_time": gtfs_time(st.arrival_s), "departure_time": gtfs_time(st.departure_s),
            "arrival_s": st.arrival_s, "departure_s": st.departure_s,
            "stop_headsign": st.stop_headsign, "pickup_type": st.pickup_type,
            "drop_off_type": st.drop_off_type, "shape_dist_traveled": st.shape_dist_traveled,
            "timepoint": st.timepoint}


# --- handlers ----------------------------------------------------------------------------------


def _store(request: web.Request) -> GeoStore:
    return request.app[API].store


async def _region(request: web.Request) -> web.Response:
    store = _store(request)
    info = await store.region()
    return web.json_response({"name": info.name, "name_en": await _region_name_en(store, info),
                              "bbox": info.bbox, "segment_count": info.segment_count})


async def _region_name_en(store: GeoStore, info: RegionInfo) -> str | None:
    """The English name (OSM ``name:en``) of the place the region is named after, if tagged."""
    if not info.name or info.bbox is None:
        return None
    places = await store.basemap_in_bbox(info.bbox, layers=["place"], limit=1000)
    named = [p for p in places if p.name == info.name and p.name_en]
    return min(named, key=lambda p: (p.rank, p.item_id)).name_en if named else None


async def _segments(request: web.Request) -> web.Response:
    bbox = parse_bbox(request.query.get("bbox"))
    segs = await _store(request).list_segments(bbox)
    return web.json_response({"segments": [segment_json(s) for s in segs], "count": len(segs)})


async def _segment(request: web.Request) -> web.Response:
    ctx = request.app[API]
    sid = request.match_info["segment_id"]
    seg = await ctx.store.find_segment(sid)
    if seg is None:
        raise NotFound(f"no segment {sid!r}")
    body = segment_json(seg)
    live = ctx.latest_speed(sid)
    body["live"] = None if live is None else {
        "speed_kmh": live.speed_kmh, "observed_at": live.observed_at.isoformat(),
        "sample_count": live.sample_count, "source": live.source, "confidence": live.confidence}
    return web.json_response(body)


async def _speeds(request: web.Request) -> web.Response:
    store = _store(request)
    sid = request.match_info["segment_id"]
    if await store.find_segment(sid) is None:
        raise NotFound(f"no segment {sid!r}")
    now = request.app[API].clock.now()
    since = _parse_time(request.query.get("since"), now - timedelta(hours=24), "since")
    until = _parse_time(request.query.get("until"), now + timedelta(minutes=1), "until")
    if since >= until:
        raise BadRequest("since must be before until")
    rows = await store.speed_history(sid, since, until)
    return web.json_response({"segment_id": sid, "speeds": [
        {"window_start": r.window_start.isoformat(), "observed_at": r.observed_at.isoformat(),
         "speed_kmh": r.speed_kmh, "sample_count": r.sample_count, "source": r.source,
         "confidence": r.confidence} for r in rows]})


async def _segment_profile(request: web.Request) -> web.Response:
    store = _store(request)
    sid = request.match_info["segment_id"]
    if await store.find_segment(sid) is None:
        raise NotFound(f"no segment {sid!r}")
    buckets = await store.segment_profile(sid)
    free = (await store.learned_free_flow([sid])).get(sid)
    updated_at = max((p.updated_at for p in buckets), default=None)
    return web.json_response({
        "segment_id": sid, "time_zone": TIME_ZONE, "bucket_minutes": BUCKET_S // 60,
        "bucket_count": BUCKETS_PER_WEEK,
        "updated_at": None if updated_at is None else updated_at.isoformat(),
        "buckets": [{"bucket": p.bucket, "label": bucket_label(p.bucket),
                     "speed_kmh": round(p.speed_kmh, 2), "sample_windows": p.sample_windows}
                    for p in buckets],
        "free_flow": None if free is None else {
            "speed_kmh": round(free.speed_kmh, 2), "source": free.source,
            "sample_windows": free.sample_windows, "default_kmh": free.default_kmh,
            "updated_at": None if free.updated_at is None else free.updated_at.isoformat()},
    })


async def _profiles(request: web.Request) -> web.Response:
    at = _parse_time(request.query.get("at"), request.app[API].clock.now(), "at")
    profiles = await _store(request).profiles_at(at)
    bucket = bucket_of(at)
    return web.json_response({
        "at": at.astimezone(UTC).isoformat(), "bucket": bucket, "label": bucket_label(bucket),
        "time_zone": TIME_ZONE, "valid_until": bucket_end(at).isoformat(),
        "count": len(profiles),
        "profiles": [{"segment_id": p.segment_id, "speed_kmh": round(p.speed_kmh, 2),
                      "sample_windows": p.sample_windows, "updated_at": p.updated_at.isoformat()}
                     for p in profiles.values()],
    })


def _want_geometry(query: Mapping[str, str]) -> bool:
    return query.get("geometry", "true").lower() not in ("0", "false", "no")


async def _basemap(request: web.Request) -> web.Response:
    q = request.query
    bbox = parse_bbox(q.get("bbox"))
    if bbox is None:
        raise BadRequest("bbox is required: bbox=minlon,minlat,maxlon,maxlat")
    answer = await basemap_answer(_store(request), bbox, parse_zoom(q.get("zoom")),
                                  parse_layers(q.get("layers")))
    return web.Response(body=dumps(answer), content_type="application/geo+json")


async def _features(request: web.Request) -> web.Response:
    q = request.query
    bbox = parse_bbox(q.get("bbox"))
    kinds = _kinds(q, frozenset(FEATURE_KINDS))
    limit = _count(q, "limit", MAX_FEATURES, 500)
    feats = await _store(request).features_in_bbox(bbox, kinds, limit)
    geometry = _want_geometry(q)
    return web.json_response({"features": [feature_json(f, geometry=geometry) for f in feats],
                              "count": len(feats)})


async def _nearest(request: web.Request) -> web.Response:
    q = request.query
    lon = _number(q, "lon", -180, 180)
    lat = _number(q, "lat", -90, 90)
    kinds = _kinds(q, frozenset(FEATURE_KINDS))
    k = _count(q, "k", MAX_NEAREST, 5)
    max_m = _number(q, "max_distance_m", 0, MAX_NEAREST_M, DEFAULT_NEAREST_M)
    hits = await _store(request).nearest_features(lon, lat, kinds, k, max_m)
    geometry = _want_geometry(q)
    return web.json_response({"lon": lon, "lat": lat, "features": [
        {**feature_json(h.feature, geometry=geometry), "distance_m": round(h.distance_m, 1)}
        for h in hits]})


async def _feature(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    check_kinds([kind], allowed=frozenset(FEATURE_KINDS))
    feature = await _store(request).get_feature(kind, request.match_info["feature_id"])
    return web.json_response(feature_json(feature))


async def _search(request: web.Request) -> web.Response:
    q = request.query
    text = _text(q, "q")
    kinds = _kinds(q, SEARCH_KINDS)
    limit = _count(q, "limit", MAX_SEARCH, 20)
    hits = await _store(request).search(text, kinds, limit)
    return web.json_response({"query": text, "results": [hit_json(h) for h in hits]})


async def _gtfs_feeds(request: web.Request) -> web.Response:
    return web.json_response({"feeds": [_feed_json(f) for f in
                                        await _store(request).list_feeds()]})


async def _gtfs_routes(request: web.Request) -> web.Response:
    routes = await _store(request).list_routes(request.query.get("feed_id") or None)
    return web.json_response({"routes": [_route_json(r) for r in routes]})


async def _gtfs_route_trips(request: web.Request) -> web.Response:
    store = _store(request)
    feed_id, route_id = request.match_info["feed_id"], request.match_info["route_id"]
    if not any(r.route_id == route_id for r in await store.list_routes(feed_id)):
        raise NotFound(f"no route {route_id!r} in feed {feed_id!r}")
    trips = await store.trips_for_route(route_id, feed_id)
    return web.json_response({"feed_id": feed_id, "route_id": route_id,
                              "trips": [_trip_json(t) for t in trips]})


async def _gtfs_trip(request: web.Request) -> web.Response:
    store = _store(request)
    feed_id, trip_id = request.match_info["feed_id"], request.match_info["trip_id"]
    trip = await store.find_trip(trip_id, feed_id)
    if trip is None:
        raise NotFound(f"no trip {trip_id!r} in feed {feed_id!r}")
    stop_times = await store.get_trip_stop_times(trip_id, feed_id)
    freqs = await store.trip_frequencies(trip_id, feed_id)
    return web.json_response({
        **_trip_json(trip), "stop_times": [_stop_time_json(s) for s in stop_times],
        "frequencies": [{"start_time": gtfs_time(f.start_s), "end_time": gtfs_time(f.end_s),
                         "headway_s": f.headway_s, "exact_times": f.exact_times}
                        for f in freqs]})


async def _gtfs_stops(request: web.Request) -> web.Response:
    q = request.query
    feed_id = q.get("feed_id") or None
    limit = _count(q, "limit", MAX_FEATURES, 100)
    store = _store(request)
    bbox = parse_bbox(q.get("bbox"))
    if q.get("q") is not None:
        stops = await store.search_stops(_text(q, "q"), feed_id, min(limit, MAX_SEARCH))
    elif bbox is not None:
        stops = await store.stops_in_bbox(bbox, feed_id, limit)
    else:
        raise BadRequest("give q (stop name or code) or bbox")
    return web.json_response({"stops": [_stop_json(s) for s in stops], "count": len(stops)})


async def _gtfs_stop(request: web.Request) -> web.Response:
    feed_id, stop_id = request.match_info["feed_id"], request.match_info["stop_id"]
    stop = await _store(request).stop_by_id(stop_id, feed_id)
    if stop is None:
        raise NotFound(f"no stop {stop_id!r} in feed {feed_id!r}")
    return web.json_response(_stop_json(stop))


async def _gtfs_shape(request: web.Request) -> web.Response:
    feed_id, shape_id = request.match_info["feed_id"], request.match_info["shape_id"]
    shape = await _store(request).get_shape(shape_id, feed_id)
    if shape is None:
        raise NotFound(f"no shape {shape_id!r} in feed {feed_id!r}")
    return web.json_response({"feed_id": feed_id, "shape_id": shape_id,
                              "coords": [list(c) for c in shape.coords],
                              "dist_traveled": None if shape.dist_traveled is None
                              else list(shape.dist_traveled)})


# --- geofences --------------------------------------------------------------------------------


def check_geofence_token(request: web.Request) -> None:
    """Writes need a bearer token of ``TTI_GEOFENCE_TOKENS``; with none configured, no one may.

    Compared in constant time so the check does not leak how much of a token was right.
    """
    tokens = [t for t in request.app[CONFIG].geofence_tokens if t]
    if not tokens:
        raise Forbidden("geofence editing is switched off: set TTI_GEOFENCE_TOKENS (bigdata) to "
                        "the bearer tokens of those who may edit geofences, or import them with "
                        "tti import-geofences FILE", code="geofence_editing_off")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    token = given.strip().encode()  # bytes: compare_digest takes non-ASCII only as bytes
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token, t.encode())
                                             for t in tokens):
        raise Unauthorized("a valid geofence token is required (Authorization: Bearer …)")


def _geofence_kinds(query: Mapping[str, str]) -> tuple[str, ...] | None:
    raw = query.get("kind") or query.get("kinds")
    if raw is None or not raw.strip():
        return None
    try:
        return check_geofence_kinds([k.strip() for k in raw.split(",") if k.strip()])
    except GeofenceError as exc:
        raise BadRequest(exc.message) from exc


async def _geofences(request: web.Request) -> web.Response:
    q = request.query
    fences = await _store(request).list_geofences(parse_bbox(q.get("bbox")), _geofence_kinds(q))
    return web.json_response({"type": "FeatureCollection", "count": len(fences),
                              "kinds": list(GEOFENCE_KINDS),
                              "features": [geofence_feature(f) for f in fences]})


async def _geofence(request: web.Request) -> web.Response:
    fence = await _store(request).get_geofence(request.match_info["geofence_id"])
    return web.json_response(geofence_feature(fence))


async def _put_geofence(request: web.Request) -> web.Response:
    check_geofence_token(request)
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the body must be a GeoJSON Feature (JSON)") from exc
    store = _store(request)
    fence = parse_geofence(body, geofence_id=request.match_info["geofence_id"])
    stored, created = await store.put_geofence(await resolve_geofence(store, fence))
    return web.json_response(geofence_feature(stored), status=201 if created else 200)


async def _delete_geofence(request: web.Request) -> web.Response:
    check_geofence_token(request)
    await _store(request).delete_geofence(request.match_info["geofence_id"])
    return web.Response(status=204)


def add_routes(app: web.Application, context: ApiContext) -> None:
    """Register the ``/v1`` geodatabase endpoints on the bigdata app."""
    app[API] = context
    r = app.router
    r.add_get("/v1/region", _region)
    r.add_get("/v1/segments", _segments)
    r.add_get("/v1/segments/{segment_id}", _segment)
    r.add_get("/v1/segments/{segment_id}/speeds", _speeds)
    r.add_get("/v1/segments/{segment_id}/profile", _segment_profile)
    r.add_get("/v1/profiles", _profiles)
    r.add_get("/v1/basemap", _basemap)
    r.add_get("/v1/features", _features)
    r.add_get("/v1/features/nearest", _nearest)
    # Feature ids may contain ':' (GTFS stops are "<feed>:<stop_id>"), never '/'.
    r.add_get("/v1/features/{kind}/{feature_id}", _feature)
    r.add_get("/v1/search", _search)
    r.add_get("/v1/geofences", _geofences)
    r.add_get("/v1/geofences/{geofence_id}", _geofence)
    r.add_put("/v1/geofences/{geofence_id}", _put_geofence)
    r.add_delete("/v1/geofences/{geofence_id}", _delete_geofence)
    r.add_get("/v1/gtfs/feeds", _gtfs_feeds)
    r.add_get("/v1/gtfs/routes", _gtfs_routes)
    r.add_get("/v1/gtfs/routes/{feed_id}/{route_id}/trips", _gtfs_route_trips)
    r.add_get("/v1/gtfs/trips/{feed_id}/{trip_id}", _gtfs_trip)
    r.add_get("/v1/gtfs/stops", _gtfs_stops)
    r.add_get("/v1/gtfs/stops/{feed_id}/{stop_id}", _gtfs_stop)
    r.add_get("/v1/gtfs/shapes/{feed_id}/{shape_id}", _gtfs_shape)

