"""The OpenAPI 3.1 description of the publisher's HTTP API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

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
    "Levels": {
        "type": "object", "required": ["levels"],
        "properties": {"levels": {"type": "array", "items": {
            "type": "object", "required": ["level", "name", "name_en"],
            "properties": {"level": {"type": "integer", "minimum": 1, "maximum": 5},
                           "name": {"type": "string"}, "name_en": {"type": "string"}}}}},
    },
    "RouteList": {
        "type": "object", "required": ["routes", "as_of", "time_zone"],
        "properties": {
            "routes": {"type": "array", "items": {
                "type": "object",
                "required": ["travel_time_s", "length_m", "segment_ids", "geometry"],
                "properties": {"travel_time_s": {"type": "number"},
                               "length_m": {"type": "number"},
                               "segment_ids": {"type": "array", "items": {"type": "string"}},
                               "geometry": _ref("LineString")}}},
            "as_of": _NULLABLE_TIME,
            "time_zone": {"const": "UTC"},
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
            "name": {"type": "string"},
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
}


def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint the publisher serves."""
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
        "tags": [{"name": "roads"}, {"name": "warnings"}, {"name": "operations"},
                 {"name": "web"}],
        "paths": {
            "/api/v1/roads": {"get": {
                "tags": ["roads"],
                "operationId": "listRoads",
                "summary": "Roads with their live congestion level, as GeoJSON",
                "parameters": [{"$ref": "#/components/parameters/bbox"},
                               {"$ref": "#/components/parameters/min_level"}],
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
                "parameters": [{"$ref": "#/components/parameters/segment_id"}],
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
                "parameters": [{"$ref": "#/components/parameters/status"}],
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
            "/api/v1/route": {"get": {
                "tags": ["roads"],
                "operationId": "getRoute",
                "summary": "Fastest route between two points under live traffic, and others",
                "parameters": [
                    {"name": "from", "in": "query", "required": True,
                     "description": "Origin LON,LAT (WGS-84)",
                     "schema": {"type": "string", "examples": ["114.405,30.505"]}},
                    {"name": "to", "in": "query", "required": True,
                     "description": "Destination LON,LAT (WGS-84)",
                     "schema": {"type": "string", "examples": ["114.42,30.51"]}},
                    {"name": "alternatives", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": 3, "default": 0}},
                ],
                "responses": {
                    "200": _json(_ref("RouteList"), "Routes, fastest first"),
                    "400": _error("BadRequest"),
                    "404": _error("NotFound"),
                    "503": unavailable,
                },
            }},
            "/api/v1/region": {"get": {
                "tags": ["roads"],
                "operationId": "getRegion",
                "summary": "The region covered: name, bounding box, segment count",
                "responses": {"200": _json(_ref("Region"), "The region"), "503": unavailable},
            }},
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
            "/static/{filename}": {"get": {
                "tags": ["web"],
                "operationId": "getStaticAsset",
                "summary": "A script or style sheet of the web page",
                "parameters": [{"$ref": "#/components/parameters/filename"}],
                "responses": {"200": {"description": "The file"},
                              "404": _error("NotFound")},
            }},
        },
        "components": {"schemas": _SCHEMAS, "responses": _RESPONSES, "parameters": _PARAMETERS},
    }
