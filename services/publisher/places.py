"""The publisher's catalogue of stops, bus routes, car parks and places, loaded from bigdata.

An immutable snapshot (like the road catalogue) built from bigdata's HTTP API at start and on
each refresh: GTFS stops (``/v1/gtfs/stops``) and routes (``/v1/gtfs/routes``), and geodatabase
features (``/v1/features``) of the kinds a citizen looks for. Listings are capped by bigdata, so
a box that comes back full is split in four and asked again. Malformed records are skipped and
counted by kind. Car parks' live free spaces change between loads: :class:`ParkingBoard` holds
them, fed by ``tti.feature.state`` and seeded from each load.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from shared.clients.bigdata import BigdataClient
from shared.geo import haversine_m

BBox = tuple[float, float, float, float]

PLACE_KINDS = ("scenic_spot", "hotel", "rail_station", "coach_station", "bus_station", "port",
               "service_area", "toll_station", "parking")
"""Feature kinds ``places?q=`` searches (scenic spots, hotels, stations, ports …)."""

BUS_ROUTE_TYPES = frozenset({3, 11, 200, *range(700, 800)})
"""GTFS ``route_type`` values of buses: bus, trolleybus, coach, and the extended bus types."""

_PAGE = 5000  # bigdata's per-request maximum
_MAX_DEPTH = 8


class RecordError(ValueError):
    """A catalogue record that cannot be used; ``kind`` is the metric label."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """A GTFS stop or station."""

    stop_id: str
    feed_id: str
    name: str
    name_en: str | None
    code: str | None
    lon: float
    lat: float
    location_type: int
    parent_station: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BusRoute:
    """A GTFS route served by buses."""

    route_id: str
    feed_id: str
    short_name: str | None
    long_name: str | None
    route_type: int
    color: str | None
    text_color: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Place:
    """A geodatabase feature a citizen may look for: a hotel, a station, a car park …"""

    kind: str
    place_id: str
    name: str | None
    name_en: str | None
    ref: str | None
    lon: float
    lat: float
    attrs: Mapping[str, Any]
    live: Mapping[str, Any] | None
    live_updated_at: datetime | None


def _lonlat(lon: object, lat: object) -> tuple[float, float]:
    try:
        x, y = float(lon), float(lat)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RecordError("bad_geometry", "lon/lat must be numbers") from None
    if not (math.isfinite(x) and math.isfinite(y) and -180 <= x <= 180 and -90 <= y <= 90):
        raise RecordError("bad_geometry", "lon/lat out of WGS-84 range")
    return x, y


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_stop(r: Mapping[str, Any]) -> Stop:
    """A ``/v1/gtfs/stops`` record → :class:`Stop`; :class:`RecordError` when unusable."""
    stop_id, name = r.get("stop_id"), r.get("name")
    if not isinstance(stop_id, str) or not stop_id or not isinstance(name, str):
        raise RecordError("bad_field", "a stop needs stop_id and name")
    lon, lat = _lonlat(r.get("lon"), r.get("lat"))
    loc = r.get("location_type")
    return Stop(stop_id=stop_id, feed_id=str(r.get("feed_id") or ""), name=name,
                name_en=_opt_str(r.get("name_en")), code=_opt_str(r.get("code")), lon=lon,
                lat=lat, location_type=loc if isinstance(loc, int) else 0,
                parent_station=_opt_str(r.get("parent_station")))


def parse_route(r: Mapping[str, Any]) -> BusRoute:
    """A ``/v1/gtfs/routes`` record → :class:`BusRoute`; :class:`RecordError` when unusable."""
    route_id, route_type = r.get("route_id"), r.get("route_type")
    if not isinstance(route_id, str) or not route_id:
        raise RecordError("bad_field", "a route needs route_id")
    if isinstance(route_type, bool) or not isinstance(route_type, int):
        raise RecordError("bad_field", "route_type must be an integer")
    return BusRoute(route_id=route_id, feed_id=str(r.get("feed_id") or ""),
                    short_name=_opt_str(r.get("short_name")),
                    long_name=_opt_str(r.get("long_name")), route_type=route_type,
                    color=_opt_str(r.get("color")), text_color=_opt_str(r.get("text_color")))


def parse_place(r: Mapping[str, Any]) -> Place:
    """A ``/v1/features`` record → :class:`Place`; :class:`RecordError` when unusable."""
    kind, place_id, center = r.get("kind"), r.get("id"), r.get("center")
    if not isinstance(kind, str) or not isinstance(place_id, str) or not place_id:
        raise RecordError("bad_field", "a feature needs kind and id")
    if not isinstance(center, list) or len(center) != 2:
        raise RecordError("bad_geometry", "a feature needs center [lon, lat]")
    lon, lat = _lonlat(center[0], center[1])
    attrs, live = r.get("attrs"), r.get("live")
    return Place(kind=kind, place_id=place_id, name=_opt_str(r.get("name")),
                 name_en=_opt_str(r.get("name_en")), ref=_opt_str(r.get("ref")), lon=lon,
                 lat=lat, attrs=dict(attrs) if isinstance(attrs, dict) else {},
                 live=dict(live) if isinstance(live, dict) else None,
                 live_updated_at=_time(r.get("live_updated_at")))


def capacity_of(place: Place) -> int | None:
    """A car park's capacity from its OSM ``capacity`` attribute, when it is a count."""
    raw = place.attrs.get("capacity")
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


class _Points:
    """Points with a flat grid-free nearest lookup: numpy over all of them (cheap to ~1e5)."""

    def __init__(self, lonlat: Iterable[tuple[float, float]]) -> None:
        arr = np.array(list(lonlat), dtype=float).reshape(-1, 2)
        self._lon, self._lat = arr[:, 0], arr[:, 1]

    def within(self, lon: float, lat: float, radius_m: float) -> list[tuple[int, float]]:
        """(index, distance in metres) of the points within ``radius_m``, nearest first."""
        if not len(self._lon):
            return []
        dlat = radius_m / 111_195.0
        dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
        near = np.nonzero((np.abs(self._lat - lat) <= dlat)
                          & (np.abs(self._lon - lon) <= dlon))[0]
        hits = [(int(i), haversine_m(lon, lat, float(self._lon[i]), float(self._lat[i])))
                for i in near]
        return sorted((h for h in hits if h[1] <= radius_m), key=lambda h: h[1])


def _matches(query: str, *names: str | None) -> int | None:
    """0 exact, 1 prefix, 2 substring (case-insensitive), None no match."""
    q = query.casefold()
    best: int | None = None
    for name in names:
        if not name:
            continue
        n = name.casefold()
        rank = 0 if n == q else 1 if n.startswith(q) else 2 if q in n else None
        if rank is not None and (best is None or rank < best):
            best = rank
    return best


@dataclass
class Places:
    """Stops, bus routes and places (car parks among them): an immutable snapshot."""

    stops: list[Stop] = field(default_factory=list)
    routes: list[BusRoute] = field(default_factory=list)
    places: list[Place] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    loaded_at: datetime | None = None

    def __post_init__(self) -> None:
        self.stop_by_id = {s.stop_id: s for s in self.stops}
        self.children: dict[str, list[str]] = {}
        for s in self.stops:
            if s.parent_station:
                self.children.setdefault(s.parent_station, []).append(s.stop_id)
        self.route_by_id = {r.route_id: r for r in self.routes}
        self.parking = [p for p in self.places if p.kind == "parking"]
        self.parking_by_id = {p.place_id: p for p in self.parking}
        self._stop_points = _Points((s.lon, s.lat) for s in self.stops)
        self._parking_points = _Points((p.lon, p.lat) for p in self.parking)

    def stop_ids_for(self, stop_id: str) -> list[str]:
        """A stop and, for a station, its platforms."""
        return [stop_id, *self.children.get(stop_id, ())]

    def search_stops(self, query: str, limit: int) -> list[Stop]:
        """Stops whose name, English name or code contains ``query``: exact, prefix, substring."""
        ranked = [(r, s.name, s.stop_id, s) for s in self.stops
                  if (r := _matches(query, s.name, s.name_en, s.code, s.stop_id)) is not None]
        return [s for *_, s in sorted(ranked, key=lambda t: t[:3])[:limit]]

    def stops_near(self, lon: float, lat: float, radius_m: float, limit: int
                   ) -> list[tuple[Stop, float]]:
        """Stops within ``radius_m`` of a point, nearest first, with their distance."""
        return [(self.stops[i], d) for i, d in self._stop_points.within(lon, lat, radius_m)
                ][:limit]

    def parking_near(self, lon: float, lat: float, radius_m: float, limit: int
                     ) -> list[tuple[Place, float]]:
        """Car parks within ``radius_m`` of a point, nearest first."""
        return [(self.parking[i], d)
                for i, d in self._parking_points.within(lon, lat, radius_m)][:limit]

    def search_places(self, query: str, kinds: frozenset[str] | None, limit: int
                      ) -> list[Place]:
        """Places whose name, English name or ref contains ``query``: exact, prefix, substring."""
        ranked = [(r, p.name or "", p.place_id, p) for p in self.places
                  if (kinds is None or p.kind in kinds)
                  and (r := _matches(query, p.name, p.name_en, p.ref)) is not None]
        return [p for *_, p in sorted(ranked, key=lambda t: t[:3])[:limit]]


Fetch = Callable[[BBox, int], Awaitable[list[dict[str, Any]]]]


async def fetch_tiled(fetch: Fetch, bbox: BBox, *, page: int = _PAGE, depth: int = 0
                      ) -> list[dict[str, Any]]:
    """Everything ``fetch`` lists in ``bbox``: a full page means more, so split the box in four.

    Records on a tile border may come back twice; callers key them by id.
    """
    records = await fetch(bbox, page)
    if len(records) < page or depth >= _MAX_DEPTH:
        return records
    minlon, minlat, maxlon, maxlat = bbox
    midlon, midlat = (minlon + maxlon) / 2, (minlat + maxlat) / 2
    out: list[dict[str, Any]] = []
    for tile in ((minlon, minlat, midlon, midlat), (midlon, minlat, maxlon, midlat),
                 (minlon, midlat, midlon, maxlat), (midlon, midlat, maxlon, maxlat)):
        out.extend(await fetch_tiled(fetch, tile, page=page, depth=depth + 1))
    return out


async def load_places(bigdata: BigdataClient, bbox: BBox, now: datetime) -> Places:
    """Load stops, bus routes and places in the region's ``bbox`` from bigdata."""
    rejected: Counter[str] = Counter()

    def parse_all(records: Iterable[dict[str, Any]], parse: Callable[[dict[str, Any]], Any],
                  key: Callable[[Any], str]) -> list[Any]:
        out: dict[str, Any] = {}
        for r in records:
            try:
                item = parse(r)
            except RecordError as exc:
                rejected[exc.kind] += 1
                continue
            out[key(item)] = item
        return list(out.values())

    async def stops_in(box: BBox, limit: int) -> list[dict[str, Any]]:
        return await bigdata.list_gtfs_stops(box, limit=limit)

    async def places_in(box: BBox, limit: int) -> list[dict[str, Any]]:
        return await bigdata.list_features(PLACE_KINDS, bbox=box, limit=limit)

    # A little margin: bigdata's region box is its roads' extent; a stop may sit just outside.
    pad = 0.01
    region = (max(bbox[0] - pad, -180.0), max(bbox[1] - pad, -90.0),
              min(bbox[2] + pad, 180.0), min(bbox[3] + pad, 90.0))
    stops = parse_all(await fetch_tiled(stops_in, region), parse_stop, lambda s: s.stop_id)
    routes = [r for r in parse_all(await bigdata.list_gtfs_routes(), parse_route,
                                   lambda r: r.route_id) if r.route_type in BUS_ROUTE_TYPES]
    places = parse_all(await fetch_tiled(places_in, region), parse_place,
                       lambda p: f"{p.kind}/{p.place_id}")
    stops.sort(key=lambda s: s.stop_id)
    routes.sort(key=lambda r: r.route_id)
    places.sort(key=lambda p: (p.kind, p.place_id))
    return Places(stops=stops, routes=routes, places=places, rejected=rejected, loaded_at=now)


@dataclass(slots=True)
class ParkingLive:
    """A car park's latest free spaces and when they were counted."""

    free_spaces: int | None
    observed_at: datetime


@dataclass
class ParkingBoard:
    """Live free spaces per car park: newest ``observed_at`` wins; too old is no figure."""

    max_age_s: float = 3600.0
    live: dict[str, ParkingLive] = field(default_factory=dict)

    def apply(self, park_id: str, values: Mapping[str, Any], observed_at: datetime) -> bool:
        """Merge a live state; returns whether it changed what is held."""
        if "free_spaces" not in values:
            return False
        observed = observed_at.astimezone(UTC)
        held = self.live.get(park_id)
        if held is not None and held.observed_at >= observed:
            return False
        raw = values["free_spaces"]
        free = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
        self.live[park_id] = ParkingLive(free_spaces=free, observed_at=observed)
        return True

    def seed(self, places: Iterable[Place]) -> None:
        """Take the live state each car park had when the catalogue was loaded."""
        for p in places:
            if p.kind == "parking" and p.live is not None and p.live_updated_at is not None:
                self.apply(p.place_id, p.live, p.live_updated_at)

    def find(self, park_id: str, now: datetime) -> ParkingLive | None:
        """The live figure, or None when there is none or it is older than ``max_age_s``."""
        held = self.live.get(park_id)
        if held is None or now - held.observed_at > timedelta(seconds=self.max_age_s):
            return None
        return held
