"""JSON shapes of the publisher's objects, shared by the answers, the stream and the feeds.

Coordinates are WGS-84 here; the API converts them for ``coord=gcj02`` at the edge. Times stay
``datetime`` (encoded as RFC 3339 UTC with a ``Z`` by :func:`shared.codec.dumps`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.publisher.buses import Bus, Prediction
from services.publisher.places import BusRoute, Place, Places, Stop, capacity_of
from services.publisher.roads import Catalogue, live_properties
from services.publisher.warning_board import is_cleared
from shared.clients.bigdata import Segment
from shared.events import AreaIndex, Incident, RoadStatus, Warning

BBox = tuple[float, float, float, float]


def line_bbox(coords: Sequence[Sequence[float]]) -> BBox:
    """The extent of a line."""
    lons = [c[0] for c in coords]
    lats = [c[1] for c in coords]
    return min(lons), min(lats), max(lons), max(lats)


def road_change(segment: Segment, status: RoadStatus) -> dict[str, Any]:
    """A road's new live values, as the change stream sends them (no geometry)."""
    return {"segment_id": segment.segment_id, "name": segment.name,
            "name_en": segment.name_en, **live_properties(status)}


def warning_json(warning: Warning) -> dict[str, Any]:
    """Every field of a Warning, plus ``active``."""
    out: dict[str, Any] = {f.name: getattr(warning, f.name)
                           for f in dataclasses.fields(warning)}
    out["active"] = not is_cleared(warning)
    return out


def warning_bbox(warning: Warning, catalogue: Catalogue | None) -> BBox | None:
    """Where a warning is: its area, else its point, else its roads; None when unknown."""
    if warning.area is not None and warning.area.polygon:
        return line_bbox(warning.area.polygon)
    if warning.area is not None and warning.area.circle is not None:
        lon, lat, radius_m = warning.area.circle
        d = radius_m / 111_195.0
        return lon - d, lat - d, lon + d, lat + d
    if warning.lon is not None and warning.lat is not None:
        return warning.lon, warning.lat, warning.lon, warning.lat
    if catalogue is not None:
        coords = [c for sid in warning.segment_ids
                  if (seg := catalogue.find(sid)) is not None for c in seg.coords]
        if coords:
            return line_bbox(coords)
    return None


def incident_json(incident: Incident) -> dict[str, Any]:
    """Every field of an Incident."""
    return {f.name: getattr(incident, f.name) for f in dataclasses.fields(incident)}


def index_json(area: AreaIndex) -> dict[str, Any]:
    """Every field of an AreaIndex."""
    return {f.name: getattr(area, f.name) for f in dataclasses.fields(area)}


def route_json(route: BusRoute) -> dict[str, Any]:
    """A bus route."""
    return {"route_id": route.route_id, "short_name": route.short_name,
            "long_name": route.long_name, "route_type": route.route_type,
            "color": route.color, "text_color": route.text_color}


def stop_json(stop: Stop, distance_m: float | None = None) -> dict[str, Any]:
    """A stop (with its distance from the point asked about, when there was one)."""
    out: dict[str, Any] = {"stop_id": stop.stop_id, "name": stop.name, "name_en": stop.name_en,
                           "code": stop.code, "lon": stop.lon, "lat": stop.lat,
                           "location_type": stop.location_type,
                           "parent_station": stop.parent_station}
    if distance_m is not None:
        out["distance_m"] = round(distance_m, 1)
    return out


def occupancy_json(bus: Bus | None) -> dict[str, Any] | None:
    """How full a bus is, when its feed says: GTFS-rt status name and percentage."""
    if bus is None or (bus.occupancy is None and bus.occupancy_pct is None):
        return None
    return {"status": bus.occupancy,
            "percentage": None if bus.occupancy_pct is None else round(bus.occupancy_pct, 1)}


def bus_json(bus: Bus, places: Places | None) -> dict[str, Any]:
    """A live bus under its public label (never a phone number or a plate)."""
    route = places.route_by_id.get(bus.route_id) if places and bus.route_id else None
    stop = places.stop_by_id.get(bus.stop_id) if places and bus.stop_id else None
    return {
        "vehicle": bus.ref, "label": _label(bus, route), "lon": bus.lon, "lat": bus.lat,
        "observed_at": bus.observed_at, "speed_kmh": bus.speed_kmh,
        "heading_deg": bus.heading_deg, "route_id": bus.route_id,
        "route_short_name": route.short_name if route else None, "trip_id": bus.trip_id,
        "direction_id": bus.direction_id, "occupancy": occupancy_json(bus),
        "stop_id": bus.stop_id, "stop_name": stop.name if stop else None,
        "stop_status": {"arrival": "stopped_at", "departure": "departed"}.get(bus.stop_event or ""),
        "delay_s": bus.delay_s,
    }


def _label(bus: Bus, route: BusRoute | None) -> str:
    # What a rider reads: the route's short name and a short code of the vehicle.
    code = bus.ref.removeprefix("bus-")[:4]
    return f"{route.short_name} · {code}" if route and route.short_name else code


def prediction_json(pred: Prediction, bus: Bus | None, places: Places | None,
                    now: datetime) -> dict[str, Any]:
    """A live arrival at a stop: when, how sure, how full the bus is."""
    route = places.route_by_id.get(pred.route_id) if places else None
    return {
        "source": "live", "route_id": pred.route_id,
        "route_short_name": route.short_name if route else None, "trip_id": pred.trip_id,
        "direction_id": pred.direction_id, "headsign": None, "stop_id": pred.stop_id,
        "stop_sequence": pred.stop_sequence, "arrival_at": pred.predicted_arrival,
        "predicted_arrival": pred.predicted_arrival,
        "scheduled_arrival": pred.scheduled_arrival,
        "minutes": max(0, round((pred.predicted_arrival - now).total_seconds() / 60)),
        "delay_s": None if pred.scheduled_arrival is None
        else round((pred.predicted_arrival - pred.scheduled_arrival).total_seconds(), 1),
        "made_at": pred.made_at, "vehicle": pred.vehicle_ref,
        "occupancy": occupancy_json(bus),
    }


def parking_json(place: Place, distance_m: float, free_spaces: int | None,
                 observed_at: datetime | None, now: datetime) -> dict[str, Any]:
    """A car park: capacity, free spaces and how old that figure is."""
    return {"parking_id": place.place_id, "name": place.name, "name_en": place.name_en,
            "lon": place.lon, "lat": place.lat, "distance_m": round(distance_m, 1),
            "capacity": capacity_of(place), "free_spaces": free_spaces,
            "observed_at": observed_at,
            "age_s": None if observed_at is None
            else max(0, round((now - observed_at).total_seconds())),
            "access": place.attrs.get("access"), "parking": place.attrs.get("parking")}


def place_json(place: Place) -> dict[str, Any]:
    """A place found by name."""
    return {"kind": place.kind, "id": place.place_id, "name": place.name,
            "name_en": place.name_en, "ref": place.ref, "lon": place.lon, "lat": place.lat}
