"""The OpenAPI 3.1 description of the publisher's HTTP API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from services.publisher.roads import LEVEL_NAMES, LEVEL_NAMES_EN
from shared.events import SPEED_SOURCES

TIME_NOTE = ("RFC 3339 date-time in UTC with a 'Z' suffix "
             "(Beijing time is UTC+8; convert for display).")

_TIME = {"type": "string", "format": "date-time", "description": TIME_NOTE}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time", "description": TIME_NOTE}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _geojson(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/geo+json": {"schema": schema}}}


def _error(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


_SCHEMAS: dict[str, Any] = {
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
            "level": {"type": ["integer", "null"], "minimum": 1, "maximum": 5,
                      "description": "GB/T 33171 congestion level, 1 smooth … 5 severe; "
                                     "null when there is no live data"},
            "level_name": {"enum": [*LEVEL_NAMES.values(), None]},
            "level_name_en": {"enum": [*LEVEL_NAMES_EN.values(), None]},
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
    "Warning": {
        "type": "object",
        "required": ["warning_id", "kind", "severity", "status", "segment_id", "started_at",
                     "updated_at", "headline", "description", "level", "speed_kmh", "lon",
                     "lat", "details", "active"],
        "properties": {
            "warning_id": {"type": "string", "description": "Stable across the lifecycle"},
            "kind": {"type": "string", "examples": ["congestion", "incident"]},
            "severity": {"type": "string", "examples": ["minor", "moderate", "severe"]},
            "status": {"type": "string", "examples": ["active", "acknowledged", "cleared"]},
            "active": {"type": "boolean", "description": "False once the warning is cleared"},
            "segment_id": {"type": ["string", "null"]},
            "started_at": _TIME,
            "updated_at": _TIME,
            "headline": {"type": "string"},
            "description": {"type": "string"},
            "level": {"type": ["integer", "null"], "minimum": 1, "maximum": 5},
            "speed_kmh": {"type": ["number", "null"]},
            "lon": {"type": ["number", "null"], "description": "WGS-84 longitude"},
            "lat": {"type": ["number", "null"], "description": "WGS-84 latitude"},
            "details": {"type": "object", "additionalProperties": True},
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
