"""The OpenAPI 3.1 description of the publisher's HTTP API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from services.publisher.channels.hotline_api import openapi_paths as _hotline_paths
from services.publisher.channels.wechat.callback import openapi_paths as _wechat_paths
from services.publisher.openapi_schemas import SCHEMAS as _MORE_SCHEMAS
from services.publisher.signs import SIGN_SCHEMA
from shared.events import SPEED_SOURCES
from shared.schemas import NULLABLE_TIME as _NULLABLE_TIME
from shared.schemas import TIME as _TIME
from shared.schemas import contract_schemas, level_properties
from shared.schemas import ref as _ref


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _geojson(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/geo+json": {"schema": schema}}}


def _error(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


_SCHEMAS: dict[str, Any] = {
    **contract_schemas(),
    **_MORE_SCHEMAS,
    "SignAnswer": SIGN_SCHEMA,
    "Levels": {
        "type": "object", "required": ["levels"],
        "properties": {"levels": {"type": "array", "items": {
            "type": "object", "required": ["level", "name", "name_en"],
            "properties": {"level": {"type": "integer", "minimum": 1, "maximum": 5},
                           "name": {"type": "string"}, "name_en": {"type": "string"}}}}},
    },
    "Directions": {
        "type": "object", "required": ["routes", "as_of", "time_zone", "generated_at"],
        "properties": {
            "routes": {"type": "array", "items": {
                "type": "object",
                "required": ["travel_time_s", "length_m", "segment_ids", "geometry"],
                "properties": {"travel_time_s": {"type": "number"},
                               "length_m": {"type": "number"},
                               "segment_ids": {"type": "array", "items": {"type": "string"}},
                               "geometry": _ref("LineString"),
                               "travel_time_min": {"type": "number"},
                               "warning_ids": {"type": "array", "items": {"type": "string"},
                                               "description": "Active warnings on the way"}}}},
            "as_of": _NULLABLE_TIME,
            "generated_at": _TIME,
            "time_zone": {"const": "UTC"},
        },
    },
    "Basemap": {
        "type": "object",
        "required": ["type", "features", "count", "zoom", "truncated", "attribution"],
        "properties": {
            "type": {"const": "FeatureCollection"},
            "features": {"type": "array", "items": {
                "type": "object", "required": ["type", "geometry", "properties"],
                "properties": {
                    "type": {"const": "Feature"}, "id": {"type": "string"},
                    "geometry": {"type": "object", "required": ["type", "coordinates"]},
                    "properties": {
                        "type": "object", "required": ["layer", "class"],
                        "properties": {
                            "layer": {"enum": ["water", "green", "landuse", "place"]},
                            "class": {"type": "string"},
                            "name": {"type": ["string", "null"]},
                            "name_en": {"type": ["string", "null"]},
                            "rank": {"type": "integer"}}}}}},
            "count": {"type": "integer"}, "zoom": {"type": "integer"},
            "bbox": {"type": "array", "items": {"type": "number"}},
            "truncated": {"type": "boolean",
                          "description": "Some shapes were left out to bound the answer"},
            "vertices": {"type": "integer"},
            "attribution": {"type": "string"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code",
                         "examples": ["bad_request", "not_found", "catalogue_loading"]},
                "message": {"type": "string", "description": "Human-readable reason"},
                "details": {"description": "Optional structured details"},
            },
        }},
    },
    "LineString": {
        "type": "object",
        "required": ["type", "coordinates"],
        "properties": {
            "type": {"const": "LineString"},
            "coordinates": {
                "type": "array", "minItems": 2,
                "description": "WGS-84 positions [longitude, latitude] in degrees",
                "items": {"type": "array", "minItems": 2, "maxItems": 2,
                          "items": {"type": "number"}},
            },
        },
    },
    "RoadProperties": {
        "type": "object",
        "required": ["segment_id", "name", "name_en", "road_class", "bridge", "tunnel",
                     "free_flow_kmh", "level", "level_name", "speed_kmh", "tpi", "observed_at",
                     "sample_count", "source"],
        "properties": {
            "segment_id": {"type": "string",
                           "description": "Directed segment id '<way_id>:<from_node>:<to_node>'"},
            "name": {"type": ["string", "null"], "description": "Road name (Chinese)"},
            "name_en": {"type": ["string", "null"], "description": "Road name (English)"},
            "road_class": {"type": "string", "examples": ["motorway", "primary", "residential"]},
            "bridge": {"type": "boolean"},
            "tunnel": {"type": "boolean"},
            "free_flow_kmh": {"type": "number", "description": "Free-flow speed, km/h"},
            "lanes": {"type": ["integer", "null"], "description": "Only on the single-road view"},
            "speed_limit_kmh": {"type": ["number", "null"],
                                "description": "Only on the single-road view"},
            "oneway": {"type": "boolean", "description": "Only on the single-road view"},
            "length_m": {"type": "number", "description": "Only on the single-road view"},
            **level_properties(),
            "speed_kmh": {"type": ["number", "null"], "description": "Live speed, km/h"},
            "tpi": {"type": ["number", "null"], "minimum": 0, "maximum": 10,
                    "description": "GB/T 33171 traffic performance index 0-10, when known"},
            "observed_at": _NULLABLE_TIME,
            "sample_count": {"type": "integer", "minimum": 0,
                             "description": "Observations behind the value; 0 with no data"},
            "source": {"enum": list(SPEED_SOURCES),
                       "description": "Where the value comes from; 'none' means no data (the "
                                      "road is not claimed to be flowing freely)"},
        },
    },
    "RoadFeature": {
        "type": "object",
        "required": ["type", "id", "geometry", "properties"],
        "properties": {
            "type": {"const": "Feature"},
            "id": {"type": "string"},
            "geometry": _ref("LineString"),
            "properties": _ref("RoadProperties"),
            "generated_at": _TIME,
        },
    },
    "RoadCollection": {
        "type": "object",
        "required": ["type", "features", "count", "generated_at"],
        "properties": {
            "type": {"const": "FeatureCollection"},
            "generated_at": _TIME,
            "count": {"type": "integer", "minimum": 0},
            "features": {"type": "array", "items": _ref("RoadFeature")},
        },
    },
    "WarningList": {
        "type": "object",
        "required": ["warnings", "count", "generated_at"],
        "properties": {
            "warnings": {"type": "array", "items": _ref("Warning"),
                         "description": "Newest first (latest started_at)"},
            "count": {"type": "integer", "minimum": 0},
            "generated_at": _TIME,
        },
    },
    "Region": {
        "type": "object",
        "required": ["name", "bbox", "segment_count", "generated_at"],
        "properties": {
            "name": {"type": "string", "description": "The region's proper name (its most "
                                                      "important named place)"},
            "name_en": {"type": ["string", "null"],
                        "description": "Its English name (OSM name:en), when tagged"},
            "bbox": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number"},
                     "description": "[minlon, minlat, maxlon, maxlat], WGS-84 degrees"},
            "segment_count": {"type": "integer", "minimum": 0},
            "generated_at": _TIME,
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "service"],
        "properties": {"status": {"const": "ok"}, "service": {"type": "string"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "service", "checks"],
        "properties": {
            "ready": {"type": "boolean"},
            "service": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {
                "type": "object",
                "properties": {"ready": {"type": "boolean"}, "detail": {"type": "string"}},
            }},
        },
    },
}

_RESPONSES: dict[str, Any] = {
    "BadRequest": _json(_ref("Error"), "Malformed parameter (code 'bad_request')"),
    "NotFound": _json(_ref("Error"), "No such object (code 'not_found')"),
    "Unavailable": _json(_ref("Error"), "Not ready yet: the road catalogue is still loading "
                                        "from bigdata"),
}

_PARAMETERS: dict[str, Any] = {
    "bbox": {
        "name": "bbox", "in": "query", "required": False,
        "description": "minlon,minlat,maxlon,maxlat in WGS-84 degrees (min < max). "
                       "Omitted: the whole region.",
        "schema": {"type": "string", "examples": ["114.38,30.47,114.45,30.52"]},
    },
    "min_level": {
        "name": "min_level", "in": "query", "required": False,
        "description": "Only roads at this congestion level or worse (roads without data "
                       "are left out)",
        "schema": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "segment_id": {
        "name": "segment_id", "in": "path", "required": True,
        "schema": {"type": "string"}, "description": "Directed segment id",
    },
    "status": {
        "name": "status", "in": "query", "required": False,
        "description": "active, cleared (resolved, closed or cancelled) or all",
        "schema": {"enum": ["active", "cleared", "all"], "default": "active"},
    },
    "filename": {
        "name": "filename", "in": "path", "required": True, "schema": {"type": "string"},
    },
    "coord": {
        "name": "coord", "in": "query", "required": False,
        "description": "Coordinate system of the points sent and answered: WGS-84 (default) "
                       "or GCJ-02 (Chinese map SDKs)",
        "schema": {"enum": ["wgs84", "gcj02"], "default": "wgs84"},
    },
    "q": {"name": "q", "in": "query", "required": False, "description": "Name to look for",
          "schema": {"type": "string", "minLength": 1, "maxLength": 100}},
    "bridge": {"name": "bridge", "in": "query", "required": False,
               "description": "Only bridges (true) or no bridges (false)",
               "schema": {"type": "boolean"}},
    "tunnel": {"name": "tunnel", "in": "query", "required": False,
               "description": "Only tunnels (true) or no tunnels (false)",
               "schema": {"type": "boolean"}},
    "limit": {"name": "limit", "in": "query", "required": False,
              "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    "near": {"name": "near", "in": "query", "required": False,
             "description": "LON,LAT (WGS-84 unless coord=gcj02)",
             "schema": {"type": "string", "examples": ["114.405,30.505"]}},
    "radius_m": {"name": "radius_m", "in": "query", "required": False,
                 "schema": {"type": "number", "minimum": 1, "maximum": 5000}},
    "route_id": {"name": "route_id", "in": "path", "required": True,
                 "schema": {"type": "string"}, "description": "GTFS route_id"},
    "stop_id": {"name": "stop_id", "in": "path", "required": True,
                "schema": {"type": "string"}, "description": "GTFS stop_id"},
    "feed_format": {"name": "format", "in": "query", "required": False,
                    "description": "protobuf (default) or json (for debugging)",
                    "schema": {"enum": ["protobuf", "json"], "default": "protobuf"}},
    "incident_status": {
        "name": "status", "in": "query", "required": False,
        "schema": {"enum": ["active", "cleared", "all"], "default": "active"}},
}


def _p(*names: str) -> list[dict[str, str]]:
    return [{"$ref": f"#/components/parameters/{n}"} for n in names]


def _op(op_id: str, tag: str, summary: str, schema: str, *, params: list[Any] | None = None,
        errors: tuple[str, ...] = (), geojson: bool = False) -> dict[str, Any]:
    codes = {"400": "BadRequest", "404": "NotFound", "503": "Unavailable"}
    ok = (_geojson if geojson else _json)(_ref(schema), summary)
    return {"get": {"tags": [tag], "operationId": op_id, "summary": summary,
                    "parameters": params or [],
                    "responses": {"200": ok, "304": {"description": "Not modified (ETag)"},
                                  **{c: _error(codes[c]) for c in errors}}}}


def _feed(op_id: str, summary: str) -> dict[str, Any]:
    return {"get": {"tags": ["feeds"], "operationId": op_id, "summary": summary,
                    "parameters": _p("feed_format"),
                    "responses": {"200": {"description": "A GTFS-realtime FeedMessage",
                                          "content": {"application/x-protobuf": {
                                              "schema": {"type": "string",
                                                         "contentMediaType":
                                                             "application/x-protobuf"}},
                                              "application/json": {
                                                  "schema": {"type": "object"}}}},
                                  "304": {"description": "Not modified (ETag)"},
                                  "400": _error("BadRequest")}}}


_POINT = {"type": "string", "examples": ["114.405,30.505"]}


def _more_paths() -> dict[str, Any]:
    """Buses, stops, parking, places, index, incidents, directions, reports, stream, feeds."""
    route_params = [
        {"name": "from", "in": "query", "required": True,
         "description": "Origin LON,LAT (WGS-84 unless coord=gcj02)", "schema": _POINT},
        {"name": "to", "in": "query", "required": True,
         "description": "Destination LON,LAT", "schema": _POINT},
        {"name": "alternatives", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": 3, "default": 0}},
        *_p("coord")]
    directions = _op("getDirections", "roads", "Routes under live traffic, fastest first, with "
                     "the warnings on them", "Directions", params=route_params,
                     errors=("400", "404", "503"))
    route = {"get": {**directions["get"], "operationId": "getRoute",
                     "summary": "The older name of /api/v1/directions"}}
    xml = {"type": "string"}
    return {
        "/api/v1/directions": directions,
        "/api/v1/route": route,
        "/api/v1/basemap": _op(
            "getBasemap", "web", "The base map (water, green, land use, place labels) from the "
            "geodatabase for a box drawn at a Web Mercator zoom: simplified, clipped, bounded",
            "Basemap", params=[
                {"name": "bbox", "in": "query", "required": True,
                 "description": "minlon,minlat,maxlon,maxlat (WGS-84), at most 10 degrees each "
                                "way", "schema": {"type": "string",
                                                  "examples": ["114.28,30.53,114.32,30.57"]}},
                {"name": "zoom", "in": "query", "required": True,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 20}}],
            errors=("400", "503"), geojson=True),
        "/api/v1/incidents": _op("listIncidents", "warnings", "Incidents, newest first",
                                 "IncidentList", params=_p("incident_status", "coord"),
                                 errors=("400",)),
        "/api/v1/index": _op("getIndex", "roads", "Traffic performance index (GB/T 33171) of "
                             "the network and each area", "IndexAnswer"),
        "/api/v1/routes": _op("listBusRoutes", "buses", "Bus routes", "RouteList",
                              errors=("503",)),
        "/api/v1/routes/{route_id}/vehicles": _op(
            "listRouteVehicles", "buses", "The live buses of a route", "VehicleList",
            params=_p("route_id", "coord"), errors=("400", "404", "503")),
        "/api/v1/vehicles": _op(
            "listVehicles", "buses", "Live buses (public labels only)", "VehicleList",
            params=[*_p("bbox", "coord"), {"name": "route_id", "in": "query",
                                           "required": False, "schema": {"type": "string"}}],
            errors=("400",)),
        "/api/v1/stops": _op("listStops", "buses", "Stops by name (q) or near a point",
                             "StopList", params=_p("q", "near", "radius_m", "limit", "coord"),
                             errors=("400", "503")),
        "/api/v1/stops/{stop_id}/arrivals": _op(
            "listArrivals", "buses", "Next arrivals at a stop: live with occupancy, else the "
            "timetable", "ArrivalList", params=_p("stop_id", "limit", "coord"),
            errors=("400", "404", "503")),
        "/api/v1/stops/{stop_id}/sign": _op(
            "getStopSign", "buses", "What a stop's electronic sign shows: arrivals per route, "
            "the road ahead, warnings near", "SignAnswer", params=_p("stop_id"),
            errors=("404", "503")),
        "/signs/{stop_id}": {"get": {
            "tags": ["web"], "operationId": "getStopSignPage",
            "summary": "A stop's electronic sign, for a roadside screen",
            "parameters": _p("stop_id"),
            "responses": {"200": {"description": "HTML page", "content": {
                "text/html": {"schema": {"type": "string"}}}},
                "404": {"description": "No such stop (JSON when asked for)", "content": {
                    "text/html": {"schema": {"type": "string"}},
                    "application/json": {"schema": _ref("Error")}}}}}},
        "/api/v1/parking": _op(
            "listParking", "places", "Car parks near a point: free spaces, capacity, age",
            "ParkingList", params=[{**_PARAMETERS["near"], "required": True},
                                   *_p("radius_m", "limit", "coord")],
            errors=("400", "503")),
        "/api/v1/places": _op(
            "listPlaces", "places", "Scenic spots, hotels, stations, ports … by name",
            "PlaceList", params=[{**_PARAMETERS["q"], "required": True},
                                 {"name": "kinds", "in": "query", "required": False,
                                  "schema": {"type": "string"}}, *_p("limit", "coord")],
            errors=("400", "503")),
        "/api/v1/reports": {"post": {
            "tags": ["reports"], "operationId": "postReport",
            "summary": "A citizen's report (what, where, when, an optional photo)",
            "parameters": _p("coord"),
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": _ref("ReportForm")},
                "application/json": {"schema": _ref("ReportForm")}}},
            "responses": {"201": _json(_ref("ReportStatus"), "Accepted; its number"),
                          "200": _json(_ref("ReportStatus"), "Sent before (same client_id)"),
                          "400": _error("BadRequest"),
                          "413": _json(_ref("Error"), "Photo or body too large")}}},
        "/api/v1/reports/{number}": _op(
            "getReport", "reports", "A report's status (its owner's, the warning service's)",
            "ReportStatus", params=[{"name": "number", "in": "path", "required": True,
                                     "schema": {"type": "string"}}], errors=("404", "503")),
        "/api/v1/reports/{number}/photo": {"get": {
            "tags": ["reports"], "operationId": "getReportPhoto",
            "summary": "A report's photo (from any replica: photos are kept on the bus's "
                       "object store)",
            "parameters": [{"name": "number", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The photo", "content": {
                "image/jpeg": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string"}}}},
                "304": {"description": "Not modified (ETag)"}, "404": _error("NotFound"),
                "503": _error("Unavailable")}}},
        "/api/v1/stream": {"get": {
            "tags": ["roads"], "operationId": "getStream",
            "summary": "Server-Sent Events of changes: road, warning, incident, vehicle, "
                       "arrival, index (follow exactly one of bbox, stop, route)",
            "parameters": [*_p("bbox", "coord"),
                           {"name": "stop", "in": "query", "required": False,
                            "schema": {"type": "string"}},
                           {"name": "route", "in": "query", "required": False,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "text/event-stream", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}},
                "400": _error("BadRequest"), "503": _error("Unavailable")}}},
        "/gtfs-rt/vehicle-positions": _feed("getGtfsRtVehiclePositions",
                                            "GTFS-realtime VehiclePositions"),
        "/gtfs-rt/trip-updates": _feed("getGtfsRtTripUpdates",
                                       "GTFS-realtime TripUpdates (with uncertainty)"),
        "/gtfs-rt/alerts": _feed("getGtfsRtAlerts",
                                 "GTFS-realtime Alerts (warnings affecting bus routes)"),
        "/cap/alerts.atom": {"get": {
            "tags": ["feeds"], "operationId": "getCapAtom",
            "summary": "Atom index of the public warnings' CAP 1.2 documents",
            "responses": {"200": {"description": "Atom 1.0 feed", "content": {
                "application/atom+xml": {"schema": xml}}},
                "304": {"description": "Not modified (ETag)"}}}},
        "/cap/{name}": {"get": {
            "tags": ["feeds"], "operationId": "getCapDocument",
            "summary": "A public warning's latest CAP 1.2 message ({warning_id}.xml)",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^.+\\.xml$"}}],
            "responses": {"200": {"description": "CAP 1.2 alert", "content": {
                "application/cap+xml": {"schema": xml}}},
                "304": {"description": "Not modified (ETag)"}, "404": _error("NotFound")}}},
    }


def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint the publisher serves."""
    doc = _document(version)
    # Any operation that takes parameters refuses bad ones with a 400.
    for item in doc["paths"].values():
        for operation in item.values():
            if operation.get("parameters") or operation.get("requestBody"):
                operation["responses"].setdefault("400", _error("BadRequest"))
    return doc


def _document(version: str) -> dict[str, Any]:
    unavailable = _error("Unavailable")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TTI publisher API (湖北交通出行信息)",
            "version": version,
            "description": (
                "Live road conditions and traffic warnings for Hubei. All times are RFC 3339 "
                "date-times in UTC with a 'Z' suffix. Coordinates are WGS-84 [lon, lat]; speeds "
                "are km/h; lengths metres. Every live value carries observed_at, sample_count "
                "and source; a road without data says source 'none' instead of claiming free "
                "flow. Errors are JSON: {\"error\": {\"code\", \"message\"}}."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": "roads"}, {"name": "warnings"}, {"name": "buses"},
                 {"name": "places"}, {"name": "reports"}, {"name": "feeds"},
                 {"name": "operations"}, {"name": "web"}],
        "paths": {
            "/api/v1/roads": {"get": {
                "tags": ["roads"],
                "operationId": "listRoads",
                "summary": "Roads with their live congestion level, as GeoJSON",
                "parameters": _p("bbox", "min_level", "q", "bridge", "tunnel", "coord"),
                "responses": {
                    "200": _geojson(_ref("RoadCollection"),
                                    "A GeoJSON FeatureCollection of LineStrings"),
                    "400": _error("BadRequest"),
                    "503": unavailable,
                },
            }},
            "/api/v1/roads/{segment_id}": {"get": {
                "tags": ["roads"],
                "operationId": "getRoad",
                "summary": "One road segment with all attributes and its live values",
                "parameters": _p("segment_id", "coord"),
                "responses": {
                    "200": _geojson(_ref("RoadFeature"), "A GeoJSON Feature"),
                    "404": _error("NotFound"),
                    "503": unavailable,
                },
            }},
            "/api/v1/warnings": {"get": {
                "tags": ["warnings"],
                "operationId": "listWarnings",
                "summary": "Traffic warnings, newest first",
                "parameters": _p("status", "coord"),
                "responses": {
                    "200": _json(_ref("WarningList"), "Warnings matching the status filter"),
                    "400": _error("BadRequest"),
                },
            }},
            "/api/v1/levels": {"get": {
                "tags": ["roads"],
                "operationId": "listLevels",
                "summary": "The five GB/T 33171 congestion levels and their names",
                "responses": {"200": _json(_ref("Levels"), "Levels 1 (smooth) to 5")},
            }},
            "/api/v1/region": {"get": {
                "tags": ["roads"],
                "operationId": "getRegion",
                "summary": "The region covered: name, bounding box, segment count",
                "responses": {"200": _json(_ref("Region"), "The region"), "503": unavailable},
            }},
            **_more_paths(),
            **_wechat_paths(),
            **_hotline_paths(),
            "/openapi.json": {"get": {
                "tags": ["operations"],
                "operationId": "getOpenapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
            }},
            "/healthz": {"get": {
                "tags": ["operations"],
                "operationId": "getHealth",
                "summary": "Liveness: the process is up",
                "responses": {"200": _json(_ref("Health"), "Alive")},
            }},
            "/readyz": {"get": {
                "tags": ["operations"],
                "operationId": "getReadiness",
                "summary": "Readiness: the road catalogue is loaded and the bus connected",
                "responses": {"200": _json(_ref("Readiness"), "Ready"),
                              "503": _json(_ref("Readiness"), "Not ready; see checks")},
            }},
            "/metrics": {"get": {
                "tags": ["operations"],
                "operationId": "getMetrics",
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {"200": {"description": "Metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }},
            "/": {"get": {
                "tags": ["web"],
                "operationId": "getWebPage",
                "summary": "The live road map web page",
                "responses": {"200": {"description": "HTML page",
                                      "content": {"text/html": {"schema": {"type": "string"}}}}},
            }},
            "/static/vendor/{path}": {"get": {
                "tags": ["web"],
                "operationId": "getVendoredAsset",
                "summary": "A file of the page's vendored Leaflet (script, style, images)",
                "parameters": [{"name": "path", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The file"},
                              "404": _error("NotFound")},
            }},
            "/static/{filename}": {"get": {
                "tags": ["web"],
                "operationId": "getStaticAsset",
                "summary": "A script or style sheet of the web page",
                "parameters": [{"$ref": "#/components/parameters/filename"}],
                "responses": {"200": {"description": "The file"},
                              "404": _error("NotFound")},
            }},
        },
        "components": {"schemas": _SCHEMAS, "responses": _RESPONSES, "parameters": _PARAMETERS,
                       "securitySchemes": {"bearer": {
                           "type": "http", "scheme": "bearer",
                           "description": "A department user's token (tti users add); the "
                                          "hotline API takes roles hotline and admin"}}},
    }
