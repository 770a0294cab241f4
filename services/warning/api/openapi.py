"""The OpenAPI 3.1 description of the warning service's public HTTP API (``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from shared.schemas import contract_schemas, ref

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"},
                                            "message": {"type": "string"},
                                            "details": {}}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


def _query(name: str, description: str, schema: dict[str, Any], *,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


def build_openapi() -> dict[str, Any]:
    """The whole document."""
    schemas = {
        "Error": _ERROR,
        **contract_schemas(),
        "Route": {
            "type": "object", "required": ["travel_time_s", "length_m", "segment_ids",
                                           "geometry"],
            "properties": {
                "travel_time_s": {"type": "number", "description": "Under live weights"},
                "length_m": {"type": "number"},
                "segment_ids": {"type": "array", "items": {"type": "string"}},
                "geometry": {"type": "object", "required": ["type", "coordinates"],
                             "properties": {"type": {"const": "LineString"},
                                            "coordinates": {"type": "array"}}},
            },
        },
    }
    point = {"type": "string", "pattern": r"^-?\d+(\.\d+)?,-?\d+(\.\d+)?$",
             "examples": ["114.405,30.505"]}
    paths = {
        "/v1/route": {"get": {
            "summary": "Fastest route between two points under live speeds, and alternatives",
            "parameters": [
                _query("from", "Origin LON,LAT (WGS-84), snapped to the nearest road", point,
                       required=True),
                _query("to", "Destination LON,LAT (WGS-84)", point, required=True),
                _query("alternatives", "How many alternatives besides the fastest",
                       {"type": "integer", "minimum": 0, "maximum": 3, "default": 0}),
            ],
            "responses": {
                "200": _json({"type": "object", "required": ["routes", "as_of", "time_zone"],
                              "properties": {
                                  "routes": {"type": "array", "items": ref("Route")},
                                  "as_of": {"type": ["string", "null"], "format": "date-time",
                                            "description": "Time of the weights (UTC)"},
                                  "time_zone": {"const": "UTC"}}}, "Routes, fastest first"),
                "400": _error("Bad point, or a point too far from any road"),
                "404": _error("No route between the points"),
                "503": _error("The road network is still loading"),
            }}},
        "/v1/warnings": {"get": {
            "summary": "Warnings, newest first",
            "parameters": [
                _query("status", "active, ended or all", {"enum": ["active", "ended", "all"],
                                                          "default": "active"}),
                _query("kind", "Only this kind", {"type": "string"}),
            ],
            "responses": {
                "200": _json({"type": "object", "required": ["warnings", "count"],
                              "properties": {"warnings": {"type": "array",
                                                          "items": ref("Warning")},
                                             "count": {"type": "integer"}}}, "Warnings"),
                "400": _error("Bad filter"),
            }}},
        "/v1/warnings/{warning_id}": {"get": {
            "summary": "One warning",
            "parameters": [{"name": "warning_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json(ref("Warning"), "The warning"),
                          "404": _error("Unknown warning")}}},
        "/v1/incidents": {"get": {
            "summary": "Incidents from cameras and sensors, newest first",
            "parameters": [_query("status", "active, cleared or all",
                                  {"enum": ["active", "cleared", "all"], "default": "active"})],
            "responses": {
                "200": _json({"type": "object", "required": ["incidents", "count"],
                              "properties": {"incidents": {"type": "array",
                                                           "items": ref("Incident")},
                                             "count": {"type": "integer"}}}, "Incidents"),
                "400": _error("Bad filter"),
            }}},
        "/v1/index": {"get": {
            "summary": "Traffic performance index of the network and its areas",
            "responses": {"200": _json({
                "type": "object", "required": ["network", "areas", "observed_at"],
                "properties": {
                    "network": {"oneOf": [ref("AreaIndex"), {"type": "null"}]},
                    "areas": {"type": "array", "items": ref("AreaIndex")},
                    "observed_at": {"type": ["string", "null"], "format": "date-time"}}},
                "The index, as of the last window")}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "TTI warning service", "version": "1",
                 "description": "Routes under live speeds, warnings (typed after CAP 1.2), "
                                "incidents and the GB/T 33171 traffic index. Times are UTC."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
