"""Component schemas of the publisher's buses, stops, parking, places, index and reports answers
(the road and warning ones are in :mod:`services.publisher.openapi`)."""

from __future__ import annotations

from typing import Any

from shared.events import CITIZEN_REPORT_KINDS
from shared.schemas import NULLABLE_TIME, TIME, ref

_STR_OR_NULL = {"type": ["string", "null"]}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}
_LON = {"type": "number", "minimum": -180, "maximum": 180,
        "description": "Longitude, WGS-84 (GCJ-02 with coord=gcj02)"}
_LAT = {"type": "number", "minimum": -90, "maximum": 90,
        "description": "Latitude, WGS-84 (GCJ-02 with coord=gcj02)"}


def _list(key: str, item: dict[str, Any], *extra: str) -> dict[str, Any]:
    return {"type": "object", "required": [key, "count", "generated_at", *extra],
            "properties": {key: {"type": "array", "items": item},
                           "count": {"type": "integer", "minimum": 0}, "generated_at": TIME}}


OCCUPANCY: dict[str, Any] = {
    "type": ["object", "null"], "required": ["status", "percentage"],
    "description": "How full the bus is, when its feed says (GTFS-realtime OccupancyStatus)",
    "properties": {"status": _STR_OR_NULL,
                   "percentage": {"type": ["number", "null"], "minimum": 0}},
}

SCHEMAS: dict[str, Any] = {
    "Occupancy": OCCUPANCY,
    "BusRoute": {
        "type": "object", "required": ["route_id", "short_name", "long_name", "route_type"],
        "properties": {"route_id": {"type": "string"}, "short_name": _STR_OR_NULL,
                       "long_name": _STR_OR_NULL, "route_type": {"type": "integer"},
                       "color": _STR_OR_NULL, "text_color": _STR_OR_NULL,
                       "vehicles_live": {"type": "integer", "minimum": 0}},
    },
    "Vehicle": {
        "type": "object", "required": ["vehicle", "label", "lon", "lat", "observed_at"],
        "properties": {
            "vehicle": {"type": "string", "pattern": "^bus-[a-z2-7]{8}$",
                        "description": "Public label: a keyed hash, never a phone or plate"},
            "label": {"type": "string", "description": "Route short name and a short code"},
            "lon": _LON, "lat": _LAT, "observed_at": TIME, "speed_kmh": _NUM_OR_NULL,
            "heading_deg": _NUM_OR_NULL, "route_id": _STR_OR_NULL,
            "route_short_name": _STR_OR_NULL, "trip_id": _STR_OR_NULL,
            "direction_id": _INT_OR_NULL, "occupancy": OCCUPANCY, "stop_id": _STR_OR_NULL,
            "stop_name": _STR_OR_NULL,
            "stop_status": {"enum": ["stopped_at", "departed", None]},
            "delay_s": _NUM_OR_NULL},
    },
    "Stop": {
        "type": "object", "required": ["stop_id", "name", "lon", "lat"],
        "properties": {"stop_id": {"type": "string"}, "name": {"type": "string"},
                       "name_en": _STR_OR_NULL, "code": _STR_OR_NULL, "lon": _LON, "lat": _LAT,
                       "location_type": {"type": "integer"}, "parent_station": _STR_OR_NULL,
                       "distance_m": {"type": "number", "minimum": 0}},
    },
    "Arrival": {
        "type": "object",
        "required": ["source", "route_id", "trip_id", "arrival_at", "minutes", "occupancy"],
        "properties": {
            "source": {"enum": ["live", "schedule"],
                       "description": "live: a tracked bus's prediction; schedule: the "
                                      "timetable alone"},
            "route_id": {"type": "string"}, "route_short_name": _STR_OR_NULL,
            "trip_id": {"type": "string"}, "direction_id": _INT_OR_NULL,
            "headsign": _STR_OR_NULL, "stop_id": {"type": "string"},
            "stop_sequence": {"type": "integer"}, "arrival_at": TIME,
            "predicted_arrival": NULLABLE_TIME, "scheduled_arrival": NULLABLE_TIME,
            "minutes": {"type": "integer", "minimum": 0}, "delay_s": _NUM_OR_NULL,
            "made_at": NULLABLE_TIME,
            "vehicle": {"type": ["string", "null"], "description": "Public label"},
            "occupancy": OCCUPANCY},
    },
    "Parking": {
        "type": "object",
        "required": ["parking_id", "name", "lon", "lat", "distance_m", "capacity",
                     "free_spaces", "observed_at", "age_s"],
        "properties": {"parking_id": {"type": "string"}, "name": _STR_OR_NULL,
                       "name_en": _STR_OR_NULL, "lon": _LON, "lat": _LAT,
                       "distance_m": {"type": "number", "minimum": 0},
                       "capacity": {"type": ["integer", "null"], "minimum": 0},
                       "free_spaces": {"type": ["integer", "null"], "minimum": 0},
                       "observed_at": NULLABLE_TIME,
                       "age_s": {"type": ["integer", "null"], "minimum": 0,
                                 "description": "Age of the free-spaces figure, seconds"},
                       "access": _STR_OR_NULL, "parking": _STR_OR_NULL},
    },
    "Place": {
        "type": "object", "required": ["kind", "id", "name", "lon", "lat"],
        "properties": {"kind": {"type": "string"}, "id": {"type": "string"},
                       "name": _STR_OR_NULL, "name_en": _STR_OR_NULL, "ref": _STR_OR_NULL,
                       "lon": _LON, "lat": _LAT},
    },
    "RouteList": _list("routes", ref("BusRoute")),
    "VehicleList": {**_list("vehicles", ref("Vehicle")), "properties": {
        **_list("vehicles", ref("Vehicle"))["properties"], "route": ref("BusRoute"),
        "time_zone": {"const": "UTC"}}},
    "StopList": _list("stops", ref("Stop")),
    "ArrivalList": {
        "type": "object", "required": ["stop", "arrivals", "timetable", "generated_at"],
        "properties": {"stop": ref("Stop"), "arrivals": {"type": "array",
                                                         "items": ref("Arrival")},
                       "timetable": {"enum": ["included", "none", "unavailable"],
                                     "description": "Whether timetable arrivals are in the "
                                                    "list (unavailable: bigdata did not "
                                                    "answer; live ones still are)"},
                       "generated_at": TIME, "time_zone": {"const": "UTC"}},
    },
    "ParkingList": _list("parking", ref("Parking")),
    "PlaceList": _list("places", ref("Place")),
    "IncidentList": _list("incidents", ref("Incident")),
    "IndexAnswer": {
        "type": "object", "required": ["network", "areas", "observed_at", "generated_at"],
        "properties": {"network": {"oneOf": [ref("AreaIndex"), {"type": "null"}]},
                       "areas": {"type": "array", "items": ref("AreaIndex")},
                       "observed_at": NULLABLE_TIME, "generated_at": TIME,
                       "time_zone": {"const": "UTC"}},
    },
    "ReportForm": {
        "type": "object", "required": ["kind"],
        "properties": {
            "kind": {"enum": list(CITIZEN_REPORT_KINDS)},
            "text": {"type": "string", "maxLength": 2000, "description": "What happened"},
            "lon": {"type": "number"}, "lat": {"type": "number"},
            "segment_id": {"type": "string"},
            "occurred_at": {"type": "string", "format": "date-time",
                            "description": "When it happened (RFC 3339 with a zone)"},
            "contact": {"type": "string", "maxLength": 100,
                        "description": "Kept for the warning service; never shown back"},
            "client_id": {"type": "string", "maxLength": 100,
                          "description": "The client's own message id: a resent report "
                                         "with the same one is the same report"},
            "channel": {"enum": ["app", "web"]},
            "coord": {"enum": ["wgs84", "gcj02"]},
            "photo": {"type": "string", "contentMediaType": "image/jpeg",
                      "description": "Multipart only: one JPEG or PNG of at most 2 MiB"}},
    },
}
