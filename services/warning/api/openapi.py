"""The OpenAPI 3.1 description of every route of the warning service (``/openapi.json``): the
public API, the departments' API (texts to drivers and citizens' reports included), the console
and its map data, and the operational endpoints. ``tests/warning/test_dept_api.py`` checks that
no route is missing."""

from __future__ import annotations

from typing import Any

from shared.schemas import NULLABLE_TIME, TIME, contract_schemas, level_properties, ref

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
    paths.update(_forecast_paths())
    paths.update(_dept_paths())
    paths.update(_message_paths())
    paths.update(_report_paths())
    paths.update(_console_paths())
    paths.update(_ops_paths())
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
    "TextBody": {"type": "object", "required": ["text"], "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "What the driver reads or hears; GBK-encodable (the "
                                "terminal's encoding), no control characters"},
        "flags": {"type": "array", "uniqueItems": True,
                  "items": {"enum": ["emergency", "display", "tts", "ad_screen", "can_info"]},
                  "default": ["display", "tts"],
                  "description": "JT/T 808 0x8300 flags"},
        "warning_id": {"type": "string",
                       "description": "The warning the text concerns: its outcomes are "
                                      "recorded on that warning's audit"}}},
    "DriverCommandOutcome": {"type": "object", "required": ["status", "at"], "properties": {
        "status": {"enum": ["offline_waiting", "sent", "acknowledged", "failed",
                            "unsupported", "expired"]},
        "at": {"type": "string", "format": "date-time"}, "detail": {"type": "string"},
        "result": {"type": ["integer", "null"], "description": "The 0x0001 result code"},
        "result_text": {"type": "string"}, "replica": {"type": "integer"},
        "summary": {"type": "string"}, "summary_en": {"type": "string"}}},
    "DriverCommand": {"type": "object", "required": ["command_id", "vehicle_id", "kind",
                                                     "status", "requested_at"], "properties": {
        "command_id": {"type": "string"}, "vehicle_id": {"type": "string"},
        "kind": {"enum": ["text", "position_query", "alarm_confirm"]},
        "text": {"type": "string"}, "flags": {"type": "array", "items": {"type": "string"}},
        "requested_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "requested_by": {"type": "string",
                         "description": "A department user, or rule:<name> for a rule"},
        "warning_id": {"type": ["string", "null"]},
        "status": {"type": "string", "description": "requested, or the latest outcome"},
        "status_at": {"type": "string", "format": "date-time"},
        "summary": {"type": "string"}, "summary_en": {"type": "string"},
        "outcomes": {"type": "array", "items": ref("DriverCommandOutcome")}}},
    "FeatureCollection": {"type": "object", "required": ["type", "features"], "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {"type": "object"}}}},
}


def _secured() -> tuple[list[dict[str, list[str]]], dict[str, Any]]:
    return ([{"bearer": []}, {"session": []}],
            {"401": _error("No or bad credentials"),
             "403": _error("This role may not (or a console write without its CSRF token)")})


def _message_paths() -> dict[str, Any]:
    secured, errors = _secured()
    vehicle = {"name": "vehicle_id", "in": "path", "required": True,
               "description": "The terminal's phone number without leading zeros",
               "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$"}}
    accepted = _json({"type": "object", "required": ["command_id", "duplicate", "status",
                                                     "expires_at"],
                      "properties": {"command_id": {"type": "string"},
                                     "duplicate": {"type": "boolean"},
                                     "status": {"type": "string"},
                                     "expires_at": {"type": "string", "format": "date-time"},
                                     "command": ref("DriverCommand")}},
                     "Accepted: on its way to the terminal")
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "maxLength": 128}}
    return {"/v1/dept/vehicles/{vehicle_id}/messages": {
        "post": {
            "summary": "Text the driver (JT/T 808 0x8300 through the collector)",
            "description": "Safety, transport and admin text any vehicle; police only about a "
                           "warning they see (warning_id). Answers once the command is on the "
                           "bus; its outcomes follow in GET and on the warning's audit. The "
                           "same Idempotency-Key (or, without one, the same text to the same "
                           "vehicle about the same warning while it is pending or delivered) "
                           "is the same command.",
            "security": secured,
            "parameters": [vehicle, idempotency],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": ref("TextBody")}}},
            "responses": {
                "202": accepted,
                "400": _error("Bad vehicle id, body or Idempotency-Key"),
                "404": _error("Unknown warning_id"),
                "409": _error("The Idempotency-Key was used for another message"),
                "422": _error("A text no terminal can take (empty, too long, not GBK, bad "
                              "flags) or a warning about another vehicle, with the reason"),
                **errors}},
        "get": {
            "summary": "The commands sent to a vehicle, newest first, with their outcomes",
            "security": secured,
            "parameters": [vehicle, _query("limit", "At most this many",
                                           {"type": "integer", "minimum": 1, "maximum": 200,
                                            "default": 50}),
                           _query("command_id", "Only this command", {"type": "string"})],
            "responses": {
                "200": _json({"type": "object", "required": ["vehicle_id", "commands",
                                                             "count"],
                              "properties": {"vehicle_id": {"type": "string"},
                                             "commands": {"type": "array",
                                                          "items": ref("DriverCommand")},
                                             "count": {"type": "integer"}}},
                             "The vehicle's command log"),
                "400": _error("Bad vehicle id or limit"), **errors}}},
        "/v1/dept/vehicles/{vehicle_id}/position-query": {"post": {
            "summary": "Ask the terminal where it is (JT/T 808 0x8201 through the collector)",
            "description": "Safety, transport and admin. Its 0x0201 answer arrives as the "
                           "command's acknowledged outcome, with position, in GET …/messages. "
                           "The same Idempotency-Key is the same query; without one each "
                           "request is a new query.",
            "security": secured,
            "parameters": [vehicle, idempotency],
            "responses": {
                "202": accepted,
                "400": _error("Bad vehicle id or Idempotency-Key"), **errors}}}}


def _report_paths() -> dict[str, Any]:
    secured, errors = _secured()
    number = {"name": "number", "in": "path", "required": True,
              "schema": {"type": "string", "examples": ["20260303-ABC234"]}}
    record = {"allOf": [ref("ReportStatus"), {"type": "object", "properties": {
        "report_id": {"type": "string"}, "contact": {"type": ["string", "null"]},
        "details": {"type": "object"}, "received_at": {"type": "string", "format": "date-time"},
        "status_by": {"type": ["string", "null"]}}}]}
    return {
        "/v1/reports/{number}": {"get": {
            "summary": "A citizen report's or hotline ticket's public status",
            "description": "Whoever holds the number may read it: never the reporter's "
                           "contact or the departments' notes.",
            "parameters": [number],
            "responses": {"200": _json(ref("ReportStatus"), "Its status"),
                          "404": _error("No such report (yet)")}}},
        "/v1/dept/reports": {"get": {
            "summary": "Citizens' reports and hotline tickets, newest first",
            "description": "Police, transport, hotline and admin.",
            "security": secured,
            "parameters": [
                _query("status", "Comma-separated statuses", {"type": "string"}),
                _query("channel", "Comma-separated channels", {"type": "string"}),
                _query("limit", "At most this many", {"type": "integer", "minimum": 1,
                                                      "maximum": 200, "default": 50}),
                _query("before", "Reported before this time (paging)",
                       {"type": "string", "format": "date-time"})],
            "responses": {"200": _json({"type": "object", "required": ["reports", "count"],
                                        "properties": {"reports": {"type": "array",
                                                                   "items": record},
                                                       "count": {"type": "integer"}}},
                                       "Reports"),
                          "400": _error("Bad filter"), **errors}}},
        "/v1/dept/reports/{number}": {"get": {
            "summary": "One report with every status change (and its internal notes)",
            "security": secured, "parameters": [number],
            "responses": {"200": _json({"allOf": [record, {"type": "object", "properties": {
                "history": {"type": "array", "items": {"type": "object"}}}}]}, "The report"),
                "404": _error("No such report"), **errors}}},
        "/v1/dept/reports/{number}/status": {"post": {
            "summary": "Move a report on: reviewing, confirmed, resolved or rejected",
            "description": "Forward only. reply is what the reporter reads; note stays "
                           "inside; warning_id links the warning it led to. The same request "
                           "again changes nothing (changed: false).",
            "security": secured, "parameters": [number],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "properties": {
                    "status": {"enum": ["reviewing", "confirmed", "resolved", "rejected"]},
                    "reply": {"type": "string", "maxLength": 500},
                    "note": {"type": "string", "maxLength": 2000},
                    "warning_id": {"type": "string"}}}}}},
            "responses": {"200": _json({"allOf": [record, {"type": "object", "properties": {
                "changed": {"type": "boolean"}}}]}, "The report as it became"),
                "400": _error("Bad status, texts or unknown warning_id"),
                "404": _error("No such report"),
                "409": _error("The lifecycle does not allow that step"), **errors}}},
    }


def _console_paths() -> dict[str, Any]:
    secured, errors = _secured()
    html = {"content": {"text/html": {"schema": {"type": "string"}}}}
    wid = {"name": "warning_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/console": {"get": {"summary": "Redirects to the console page",
                             "responses": {"302": {"description": "To console/"}}}},
        "/console/": {"get": {"summary": "The departments' duty console (no credentials to "
                                         "load; it signs in itself)",
                              "responses": {"200": {"description": "The page", **html}}}},
        "/console/reports": {"get": {"summary": "The desk for citizens' reports and hotline "
                                                "tickets (uses the console's session)",
                                     "responses": {"200": {"description": "The page", **html}}}},
        "/console/static/{filename}": {"get": {
            "summary": "The console's script, style and vendored Leaflet (only listed files)",
            "parameters": [{"name": "filename", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file"},
                          "404": _error("Not a console file")}}},
        "/v1/dept/region": {"get": {
            "summary": "The road network's extent (the console fits its map to it)",
            "security": secured,
            "responses": {"200": _json({"type": "object", "required": ["bbox",
                                                                       "segment_count"],
                                        "properties": {"bbox": {"type": "array",
                                                                "items": {"type": "number"},
                                                                "minItems": 4, "maxItems": 4},
                                                       "segment_count": {"type": "integer"}}},
                                       "[minlon, minlat, maxlon, maxlat] (WGS-84)"),
                          "503": _error("The road network is still loading"), **errors}}},
        "/v1/dept/map": {"get": {
            "summary": "The roads in a box as GeoJSON, thinned to bigger classes when many",
            "security": secured,
            "parameters": [_query("bbox", "minlon,minlat,maxlon,maxlat (WGS-84); without: "
                                          "the whole network", {"type": "string"})],
            "responses": {"200": _json(ref("FeatureCollection"),
                                       "Road pieces (min_class, truncated)"),
                          "400": _error("Bad bbox"),
                          "503": _error("The road network is still loading"), **errors}}},
        "/v1/dept/warnings/{warning_id}/map": {"get": {
            "summary": "A warning's shapes: its segments (queue), detour and area",
            "security": secured, "parameters": [wid],
            "responses": {"200": _json(ref("FeatureCollection"), "GeoJSON, part per feature"),
                          "404": _error("Unknown warning"), **errors}}},
    }


def _forecast_paths() -> dict[str, Any]:
    errors = {"type": "object", "required": ["mae_kmh", "within_25pct"], "properties": {
        "mae_kmh": {"type": ["number", "null"], "description": "Mean absolute error, km/h"},
        "within_25pct": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                         "description": "Share within 25 % of the speed that came true"}}}
    forecast = {
        "type": "object",
        "required": ["segment_id", "made_at", "valid_at", "horizon_s", "speed_kmh", "level",
                     "level_name", "level_name_en", "source"],
        "properties": {
            "segment_id": {"type": "string"},
            "made_at": {**TIME, "description": "End of the window it was made from (UTC)"},
            "valid_at": {**TIME, "description": "made_at + horizon_s (UTC)"},
            "horizon_s": {"type": "number", "description": "900 or 1800"},
            "speed_kmh": {"type": ["number", "null"]},
            **level_properties(),
            "source": {"enum": ["live+profile", "live+trend"],
                       "description": "live+profile: today's deviation from the time-of-week "
                                      "profile, decaying toward it; live+trend: no profile, the "
                                      "recent trend damped toward the recent mean"}}}
    return {
        "/v1/forecasts": {"get": {
            "summary": "A segment's latest speed forecasts, 15 and 30 minutes ahead",
            "parameters": [_query("segment", "The directed segment id", {"type": "string"},
                                  required=True)],
            "responses": {
                "200": _json({"type": "object",
                              "required": ["segment_id", "forecasts", "count", "time_zone"],
                              "properties": {
                                  "segment_id": {"type": "string"},
                                  "forecasts": {"type": "array", "items": forecast,
                                                "description": "Empty without live data"},
                                  "count": {"type": "integer"},
                                  "time_zone": {"const": "UTC"}}},
                             "Nearest horizon first"),
                "400": _error("No segment given"),
            }}},
        "/v1/forecasts/score": {"get": {
            "summary": "Forecasts and persistence against what came true, per horizon",
            "responses": {"200": _json({
                "type": "object", "required": ["horizons", "as_of", "time_zone", "segments"],
                "properties": {
                    "horizons": {"type": "array", "items": {
                        "type": "object",
                        "required": ["horizon_s", "scored", "unverified", "forecast",
                                     "persistence", "skill"],
                        "properties": {
                            "horizon_s": {"type": "number"},
                            "scored": {"type": "integer",
                                       "description": "Forecasts compared with the truth"},
                            "unverified": {"type": "integer",
                                           "description": "Target window never came"},
                            "forecast": errors,
                            "persistence": {**errors, "description":
                                            "The speed when the forecast was made"},
                            "skill": {"type": ["number", "null"],
                                      "description": "1 - MAE(forecast) / MAE(persistence): "
                                                     "above 0 the forecast is the better"}}}},
                    "as_of": {**NULLABLE_TIME, "description": "The newest window seen (UTC)"},
                    "time_zone": {"const": "UTC"},
                    "segments": {"type": "integer", "description": "Segments tracked"}}},
                "Running scores since this replica started")}}},
    }


def _ops_paths() -> dict[str, Any]:
    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {
            "description": "The process runs"}}}},
        "/readyz": {"get": {"summary": "Readiness (the network loaded; active or standby)",
                            "responses": {"200": {"description": "Ready"},
                                          "503": {"description": "Not ready, and why"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (tti_warning_*, tti_lease_*)",
                             "responses": {"200": {"description": "Exposition format",
                                                   **text}}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": _json({"type": "object"},
                                                             "OpenAPI 3.1")}}},
    }


def _dept_paths() -> dict[str, Any]:
    secured, errors = _secured()
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
