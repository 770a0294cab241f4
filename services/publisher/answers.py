"""One set of answers for every channel (app API, page, signs, later WeChat and the hotlines).

Each answer is computed from what the publisher holds in memory (:class:`~services.publisher.
state.Publisher`): no database round trip per request. The only answers that go out are the
route (the warning service's router) and the timetable part of a stop's arrivals, which bigdata
computes from its own memory and this module caches per stop for a minute. Each answer returns
its body (without ``generated_at``, which the channel adds) and the time its data last changed.

Coordinates come in and go out through a :class:`Coords` (WGS-84, or GCJ-02 for clients on
Chinese map SDKs); everything inside is WGS-84.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from services.publisher import render
from services.publisher.places import PLACE_KINDS, Places
from services.publisher.roads import Catalogue, road_feature
from services.publisher.warning_board import STATUS_FILTERS
from shared.clients.bigdata import Segment
from shared.errors import BadRequest, NotFound, TransientError
from shared.geo import gcj02_to_wgs84, wgs84_to_gcj02

if TYPE_CHECKING:
    from services.publisher.state import Publisher

BBox = tuple[float, float, float, float]
Answer = tuple[dict[str, Any], datetime | None]
"""An answer's body and when its data last changed (None: unknown)."""

INCIDENT_FILTERS = ("active", "cleared", "all")
MAX_RADIUS_M = 5000.0
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Coords:
    """The coordinate system of one request: ``wgs84`` (default) or ``gcj02``."""

    system: str = "wgs84"

    @property
    def gcj02(self) -> bool:
        """Whether the client speaks GCJ-02."""
        return self.system == "gcj02"

    def inbound(self, point: tuple[float, float]) -> tuple[float, float]:
        """A point the client sent, as WGS-84."""
        return gcj02_to_wgs84(*point) if self.gcj02 else point

    def inbound_bbox(self, bbox: BBox | None) -> BBox | None:
        """A box the client sent, as WGS-84 (corners converted)."""
        if bbox is None or not self.gcj02:
            return bbox
        a, b = gcj02_to_wgs84(bbox[0], bbox[1]), gcj02_to_wgs84(bbox[2], bbox[3])
        return a[0], a[1], b[0], b[1]

    def point(self, lon: float, lat: float) -> tuple[float, float]:
        """A WGS-84 point in the client's system."""
        if not self.gcj02:
            return lon, lat
        x, y = wgs84_to_gcj02(lon, lat)
        return round(x, 7), round(y, 7)

    def line(self, coords: Sequence[Sequence[float]]) -> list[list[float]]:
        """A WGS-84 line in the client's system."""
        return [list(self.point(c[0], c[1])) for c in coords]

    def item(self, item: dict[str, Any]) -> dict[str, Any]:
        """An object with ``lon``/``lat`` keys, converted in place and returned."""
        if self.gcj02 and item.get("lon") is not None and item.get("lat") is not None:
            item["lon"], item["lat"] = self.point(item["lon"], item["lat"])
        return item


WGS84 = Coords()


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


class Answers:
    """The answers, over one publisher's state."""

    def __init__(self, publisher: Publisher) -> None:
        self.p = publisher
        self._refreshing: dict[str, asyncio.Task[Any]] = {}

    # -- state helpers -----------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.p.clock.now()

    def _changed(self, *topics: str) -> datetime | None:
        return _latest(*(self.p.changed.get(t) for t in topics))

    def catalogue(self) -> Catalogue:
        """The road catalogue, or 503 while it loads."""
        if self.p.catalogue is None:
            raise TransientError("the road catalogue is still loading from bigdata; retry "
                                 "shortly", code="catalogue_loading")
        return self.p.catalogue

    def places(self) -> Places:
        """Stops, routes and places, or 503 while they load."""
        if self.p.places is None:
            raise TransientError("stops and places are still loading from bigdata; retry "
                                 "shortly", code="catalogue_loading")
        return self.p.places

    # -- roads -------------------------------------------------------------------------------

    def roads(self, *, bbox: BBox | None = None, q: str | None = None,
              bridge: bool | None = None, tunnel: bool | None = None,
              min_level: int | None = None, coords: Coords = WGS84) -> Answer:
        """Roads in a box, by name, bridges or tunnels, with their live level (GeoJSON)."""
        catalogue = self.catalogue()
        segments = catalogue.list_segments(bbox) if q is None else [
            s for s in catalogue.search(q) if bbox is None or _in_bbox(s, bbox)]
        if bridge is not None:
            segments = [s for s in segments if s.bridge == bridge]
        if tunnel is not None:
            segments = [s for s in segments if s.tunnel == tunnel]
        most = self.p.max_features
        if min_level is None and len(segments) > most:
            raise BadRequest(f"the request selects {len(segments)} roads, more than {most}: "
                             "pass a smaller bbox, a name or a min_level")
        now = self._now()
        features = []
        for segment in segments:
            status = self.p.road_status(segment, now)
            if min_level is not None and (status is None or status.source == "none"
                                          or status.level is None or status.level < min_level):
                continue
            features.append(self._feature(segment, status, coords))
        if len(features) > most:
            raise BadRequest(f"the request selects {len(features)} roads, more than {most}: "
                             "pass a smaller bbox or a higher min_level")
        return ({"type": "FeatureCollection", "count": len(features), "features": features},
                self._changed("roads", "catalogue"))

    def _feature(self, segment: Segment, status: Any, coords: Coords, *,
                 detail: bool = False) -> dict[str, Any]:
        feature = road_feature(segment, status, detail=detail)
        if coords.gcj02:
            feature["geometry"] = {"type": "LineString", "coordinates": coords.line(
                segment.coords)}
        return feature

    async def road(self, segment_id: str, coords: Coords = WGS84) -> Answer:
        """One road with all its attributes and live values."""
        segment = self.catalogue().find(segment_id)
        if segment is None:
            # The catalogue is refreshed only every few minutes; bigdata may know a newer road.
            segment = await self.p.bigdata.find_segment(segment_id)
            if segment is None:
                raise NotFound(f"unknown road segment {segment_id!r}")
        status = self.p.road_status(segment, self._now())
        return (self._feature(segment, status, coords, detail=True),
                self._changed("roads", "catalogue"))

    # -- warnings, incidents, index ----------------------------------------------------------

    def warnings(self, status: str = "active", coords: Coords = WGS84) -> Answer:
        """Warnings, newest first."""
        if status not in STATUS_FILTERS:
            raise BadRequest(f"status must be one of {', '.join(STATUS_FILTERS)}")
        items = [coords.item(render.warning_json(w))
                 for w in self.p.warnings.list_warnings(status)]
        return {"warnings": items, "count": len(items)}, self._changed("warnings")

    def incidents(self, status: str = "active", coords: Coords = WGS84) -> Answer:
        """Incidents (GB/T 29100 event classes), newest first."""
        if status not in INCIDENT_FILTERS:
            raise BadRequest(f"status must be one of {', '.join(INCIDENT_FILTERS)}")
        items = [coords.item(render.incident_json(i))
                 for i in self.p.incidents.list_incidents(status)]
        return {"incidents": items, "count": len(items)}, self._changed("incidents")

    def index(self) -> Answer:
        """The traffic performance index of the network and of each area."""
        now = self._now()
        network = self.p.index.network(now)
        return ({"network": None if network is None else render.index_json(network),
                 "areas": [render.index_json(a) for a in self.p.index.areas(now)],
                 "observed_at": None if network is None else network.observed_at,
                 "time_zone": "UTC"}, self._changed("index"))

    # -- buses -------------------------------------------------------------------------------

    def routes(self) -> Answer:
        """Bus routes, with how many of their buses are live."""
        places = self.places()
        live: dict[str, int] = {}
        for bus in self.p.buses.live_buses(self._now()):
            if bus.route_id:
                live[bus.route_id] = live.get(bus.route_id, 0) + 1
        items = [{**render.route_json(r), "vehicles_live": live.get(r.route_id, 0)}
                 for r in places.routes]
        return {"routes": items, "count": len(items)}, self._changed("places", "buses")

    def route_vehicles(self, route_id: str, coords: Coords = WGS84) -> Answer:
        """The live buses of one route."""
        places = self.places()
        if route_id not in places.route_by_id:
            raise NotFound(f"no bus route {route_id!r}")
        body, changed = self.vehicles(route_id=route_id, coords=coords)
        body["route"] = render.route_json(places.route_by_id[route_id])
        return body, changed

    def vehicles(self, *, bbox: BBox | None = None, route_id: str | None = None,
                 coords: Coords = WGS84) -> Answer:
        """Live buses under their public labels."""
        places = self.p.places
        items = [coords.item(render.bus_json(b, places))
                 for b in self.p.buses.live_buses(self._now())
                 if (route_id is None or b.route_id == route_id)
                 and (bbox is None or (bbox[0] <= b.lon <= bbox[2]
                                       and bbox[1] <= b.lat <= bbox[3]))]
        return ({"vehicles": items, "count": len(items), "time_zone": "UTC"},
                self._changed("buses"))

    def stops(self, *, q: str | None = None, near: tuple[float, float] | None = None,
              radius_m: float = 500.0, limit: int = 20, coords: Coords = WGS84) -> Answer:
        """Stops by name or code, or near a point (nearest first, with distance)."""
        places = self.places()
        found: list[tuple[Any, float | None]]
        if q is not None:
            found = [(s, None) for s in places.search_stops(q, limit)]
        elif near is not None:
            found = [(s, d) for s, d in places.stops_near(near[0], near[1], radius_m, limit)]
        else:
            raise BadRequest("give q (a stop's name or code) or near=LON,LAT")
        items = [coords.item(render.stop_json(s, d)) for s, d in found]
        return {"stops": items, "count": len(items)}, self._changed("places")

    async def arrivals(self, stop_id: str, *, limit: int = 20,
                       coords: Coords = WGS84) -> Answer:
        """Next arrivals at a stop (or a station's platforms): live predictions with the bus's
        occupancy, and the timetable (``source: "schedule"``) for trips with no live bus."""
        places = self.places()
        stop = places.stop_by_id.get(stop_id)
        if stop is None:
            raise NotFound(f"no stop {stop_id!r}")
        now = self._now()
        timetable, timetable_state = await self._timetable(stop_id)
        headsigns = {str(r.get("trip_id")): r.get("headsign") for r in timetable}
        rows: list[dict[str, Any]] = []
        live_trips: set[tuple[str, str | None]] = set()
        for pred in self.p.buses.predictions_at(places.stop_ids_for(stop_id), now):
            bus = self.p.buses.find_bus(pred.vehicle_ref, now) if pred.vehicle_ref else None
            row = render.prediction_json(pred, bus, places, now)
            row["headsign"] = headsigns.get(pred.trip_id)
            rows.append(row)
            live_trips.add((pred.trip_id, pred.start_date))
        for r in timetable:
            if r.get("source") != "schedule" or (r.get("trip_id"),
                                                 r.get("start_date")) in live_trips:
                continue
            at = _parse_time(r.get("scheduled_arrival"))
            if at is None or at < now - timedelta(seconds=60):
                continue
            route = places.route_by_id.get(str(r.get("route_id")))
            rows.append({
                "source": "schedule", "route_id": r.get("route_id"),
                "route_short_name": route.short_name if route else r.get("route_short_name"),
                "trip_id": r.get("trip_id"), "direction_id": r.get("direction_id"),
                "headsign": r.get("headsign"), "stop_id": r.get("stop_id"),
                "stop_sequence": r.get("stop_sequence"), "arrival_at": at,
                "predicted_arrival": None, "scheduled_arrival": at,
                "minutes": max(0, round((at - now).total_seconds() / 60)), "delay_s": None,
                "made_at": None, "vehicle": None, "occupancy": None})
        rows.sort(key=lambda r: r["arrival_at"])
        return ({"stop": coords.item(render.stop_json(stop)), "arrivals": rows[:limit],
                 "timetable": timetable_state, "time_zone": "UTC"},
                self._changed("buses", "places"))

    async def _timetable(self, stop_id: str) -> tuple[list[dict[str, Any]], str]:
        """bigdata's arrivals at the stop, cached for ``timetable_ttl_s``; and whether the
        timetable is ``included``, ``none`` (no timetable here) or ``unavailable``."""
        held = self.p.timetables.get(stop_id)
        mono = self.p.clock.monotonic()
        if held is not None and mono - held[0] <= self.p.timetable_ttl_s:
            if mono - held[0] > self.p.timetable_ttl_s / 2 and stop_id not in self._refreshing:
                # Refreshed ahead, in the background: a busy stop's answer never waits for
                # bigdata (its clients would all wait on that one request).
                task = asyncio.get_running_loop().create_task(self._fetch_timetable(stop_id))
                self._refreshing[stop_id] = task
                task.add_done_callback(lambda _: self._refreshing.pop(stop_id, None))
            return list(held[1]), "included"
        return await self._fetch_timetable(stop_id)

    async def close(self) -> None:
        """Cancel and await the timetable refreshes still running (app cleanup)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch_timetable(self, stop_id: str) -> tuple[list[dict[str, Any]], str]:
        mono = self.p.clock.monotonic()
        try:
            answer = await self.p.bigdata.stop_arrivals(stop_id, limit=40)
        except NotFound:
            self.p.timetables[stop_id] = (mono, [])
            return [], "none"
        except (TransientError, BadRequest):
            return [], "unavailable"
        rows = [r for r in answer["arrivals"] if isinstance(r, dict)]
        if len(self.p.timetables) > 5000:
            self.p.timetables.clear()
        self.p.timetables[stop_id] = (mono, rows)
        return rows, "included"

    # -- parking and places ------------------------------------------------------------------

    def parking(self, near: tuple[float, float], *, radius_m: float = 1000.0, limit: int = 20,
                coords: Coords = WGS84) -> Answer:
        """Car parks near a point, nearest first: capacity, free spaces, age of the figure."""
        places = self.places()
        now = self._now()
        items = []
        for place, distance in places.parking_near(near[0], near[1], radius_m, limit):
            live = self.p.parking.find(place.place_id, now)
            items.append(coords.item(render.parking_json(
                place, distance, None if live is None else live.free_spaces,
                None if live is None else live.observed_at, now)))
        return ({"parking": items, "count": len(items), "time_zone": "UTC"},
                self._changed("places", "parking"))

    def search_places(self, q: str, *, kinds: frozenset[str] | None = None, limit: int = 20,
                      coords: Coords = WGS84) -> Answer:
        """Scenic spots, hotels, stations, ports … by name."""
        if kinds is not None and not kinds <= set(PLACE_KINDS):
            raise BadRequest(f"kinds must be of {', '.join(PLACE_KINDS)}")
        items = [coords.item(render.place_json(p))
                 for p in self.places().search_places(q, kinds, limit)]
        return {"places": items, "count": len(items)}, self._changed("places")

    # -- directions --------------------------------------------------------------------------

    async def directions(self, origin: tuple[float, float], destination: tuple[float, float],
                         *, alternatives: int = 0, coords: Coords = WGS84) -> Answer:
        """Routes under live traffic from the warning service's router, fastest first, each
        with the active warnings on it."""
        answer = await self.p.warning.route(origin, destination, alternatives=alternatives)
        active = self.p.warnings.list_warnings("active")
        for route in answer.get("routes") or []:
            if not isinstance(route, dict):
                continue
            on_route = set(route.get("segment_ids") or ())
            route["warning_ids"] = [w.warning_id for w in active
                                    if on_route.intersection(w.segment_ids)]
            travel = route.get("travel_time_s")
            if isinstance(travel, int | float):
                route["travel_time_min"] = round(travel / 60.0, 1)
            geometry = route.get("geometry")
            if coords.gcj02 and isinstance(geometry, dict):
                geometry["coordinates"] = coords.line(geometry.get("coordinates") or [])
        return answer, None


def _in_bbox(segment: Segment, bbox: BBox) -> bool:
    lons = [c[0] for c in segment.coords]
    lats = [c[1] for c in segment.coords]
    return not (max(lons) < bbox[0] or min(lons) > bbox[2] or max(lats) < bbox[1]
                or min(lats) > bbox[3])


def _parse_time(raw: object) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
