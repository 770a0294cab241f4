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
    paths.update(_dept_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "TTI warning service", "version": "1",
                 "description": "Routes under live speeds, warnings (typed after CAP 1.2), "
                                "incidents and the GB/T 33171 traffic index. Times are UTC."},
        "paths": paths,
        "components": {
            "schemas": {**schemas, **_DEPT_SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A department user's token (tti users add)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "tti_session",
                            "description": "The console's session; writes also send "
                                           "X-CSRF-Token"},
            },
        },
    }


_DEPT_SCHEMAS: dict[str, Any] = {
    "ActionBody": {"type": "object", "properties": {
        "note": {"type": "string", "maxLength": 2000},
        "assignee": {"type": "string", "maxLength": 64,
                     "description": "For assign: the unit or user it goes to"}}},
    "RaiseBody": {"type": "object", "required": ["kind", "headline"], "properties": {
        "kind": {"enum": ["incident", "vehicle_alarm", "closure", "weather"]},
        "headline": {"type": "string"}, "headline_en": {"type": "string"},
        "description": {"type": "string"}, "description_en": {"type": "string"},
        "segment_ids": {"type": "array", "items": {"type": "string"}, "maxItems": 500},
        "lon": {"type": "number"}, "lat": {"type": "number"},
        "radius_m": {"type": "number"},
        "severity": {"enum": ["Extreme", "Severe", "Moderate", "Minor", "Unknown"]},
        "cause": {"type": "string"},
        "expected_end": {"type": "string", "format": "date-time"},
        "note": {"type": "string"}}},
    "Session": {"type": "object", "required": ["user", "role"], "properties": {
        "user": {"type": "string"}, "role": {"type": "string"},
        "csrf": {"type": ["string", "null"]}, "expires_at": {"type": "string"}}},
    "Audit": {"type": "object", "required": ["warning_id", "audit", "messages"], "properties": {
        "warning_id": {"type": "string"},
        "audit": {"type": "array", "items": {"type": "object", "properties": {
            "seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
            "user": {"type": "string"}, "role": {"type": "string"},
            "action": {"type": "string"}, "address": {"type": ["string", "null"]},
            "outcome": {"type": "string"}, "details": {"type": "object"}}}},
        "messages": {"type": "array", "items": {"type": "object"}}}},
}


def _dept_paths() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
    errors = {"401": _error("No or bad credentials"),
              "403": _error("This role may not (or a console write without its CSRF token)")}
    warning_list = _json({"type": "object", "required": ["warnings", "count"],
                          "properties": {"warnings": {"type": "array", "items": ref("Warning")},
                                         "count": {"type": "integer"}}}, "Warnings")
    wid = {"name": "warning_id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/v1/dept/session": {
            "post": {"summary": "Sign in with a token once: sets the session cookie",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "required": ["token"],
                         "properties": {"token": {"type": "string"}}}}}},
                     "responses": {"200": _json(ref("Session"), "Signed in"),
                                   "401": _error("Unknown or revoked token"),
                                   "429": _error("Too many attempts from this address")}},
            "delete": {"summary": "Sign out", "security": secured,
                       "responses": {"200": _json({"type": "object"}, "Signed out"), **errors}},
        },
        "/v1/dept/me": {"get": {"summary": "Who is signed in, and what the role sees",
                                "security": secured,
                                "responses": {"200": _json(ref("Session"), "The user"),
                                              **errors}}},
        "/v1/dept/warnings": {
            "get": {"summary": "Warnings this role sees", "security": secured,
                    "parameters": [_query("status", "active, ended or all",
                                          {"enum": ["active", "ended", "all"]}),
                                   _query("kind", "Only this kind", {"type": "string"})],
                    "responses": {"200": warning_list, "400": _error("Bad filter"), **errors}},
            "post": {"summary": "Raise a warning by hand (a closure, an event)",
                     "security": secured,
                     "requestBody": {"content": {"application/json": {
                         "schema": ref("RaiseBody")}}},
                     "responses": {"201": _json(ref("Warning"), "Raised"),
                                   "400": _error("Bad facts"), **errors}},
        },
        "/v1/dept/alarms": {"get": {"summary": "Vehicle alarms (两客一危)", "security": secured,
                                    "responses": {"200": warning_list, **errors}}},
        "/v1/dept/warnings/{warning_id}/audit": {"get": {
            "summary": "Who did what to a warning, and its messages", "security": secured,
            "parameters": [wid],
            "responses": {"200": _json(ref("Audit"), "The audit"),
                          "404": _error("Unknown warning"), **errors}}},
        "/v1/dept/stream": {"get": {
            "summary": "Server-Sent Events of the warnings this role sees; resumable with "
                       "Last-Event-ID (or ?last_event_id=)", "security": secured,
            "responses": {"200": {"description": "text/event-stream: id, event: warning, "
                                                 "data: a Warning",
                                  "content": {"text/event-stream": {"schema": {
                                      "type": "string"}}}}, **errors}}},
        "/v1/cap/{name}": {"get": {
            "summary": "A traffic warning as OASIS CAP 1.2 ({warning_id}.xml; ?version=N)",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": r"\.xml$"}},
                           _query("version", "One version's message", {"type": "integer"})],
            "responses": {"200": {"description": "CAP 1.2",
                                  "content": {"application/cap+xml": {"schema": {
                                      "type": "string"}}}},
                          "404": _error("Unknown warning or version")}}},
        "/v1/dept/cap/{name}": {"get": {
            "summary": "Any warning the role sees as CAP 1.2 (vehicle alarms: Restricted)",
            "security": secured,
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "CAP 1.2", "content": {
                "application/cap+xml": {"schema": {"type": "string"}}}}, **errors}}},
    }
    for action, summary in (("ack", "Acknowledge"), ("assign", "Assign to a unit or user"),
                            ("notes", "Add a note"), ("close", "Close"),
                            ("cancel", "Cancel a false warning")):
        paths[f"/v1/dept/warnings/{{warning_id}}/{action}"] = {"post": {
            "summary": summary, "security": secured, "parameters": [wid],
            "requestBody": {"content": {"application/json": {"schema": ref("ActionBody")}}},
            "responses": {"200": _json(ref("Warning"), "The warning after the action"),
                          "404": _error("Unknown warning"),
                          "409": _error("The warning's state does not allow it"), **errors}}}
    return paths
