"""JSON Schemas of the warning contract, built from the typed values in :mod:`shared.events`.

Both OpenAPI documents (the warning service's and the publisher's) take their ``Warning``,
``Area``, ``Detour``, ``Impact``, ``Incident`` and ``AreaIndex`` schemas from here, so an enum
added to the contract shows up in both.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from shared.events import (
    CITIZEN_REPORT_CHANNELS,
    CITIZEN_REPORT_KINDS,
    INCIDENT_STATUSES,
    REPORT_STATUSES,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    WarningKind,
    WarningStatus,
)
from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN

TIME_NOTE = ("RFC 3339 date-time in UTC with a 'Z' suffix "
             "(Beijing time is UTC+8; convert for display).")
TIME: dict[str, Any] = {"type": "string", "format": "date-time", "description": TIME_NOTE}
NULLABLE_TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time",
                                 "description": TIME_NOTE}
LON_LAT: dict[str, Any] = {"type": "array", "minItems": 2, "maxItems": 2,
                           "items": {"type": "number"},
                           "description": "WGS-84 [longitude, latitude] in degrees"}


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(values: type[StrEnum], description: str) -> dict[str, Any]:
    return {"type": "string", "enum": [v.value for v in values], "description": description}


def level_properties() -> dict[str, Any]:
    """``level``, ``level_name``, ``level_name_en`` as every answer carries them."""
    return {
        "level": {"type": ["integer", "null"], "minimum": 1, "maximum": 5,
                  "description": "GB/T 33171 congestion level, 1 smooth … 5 severe; null when "
                                 "there is no data"},
        "level_name": {"enum": [*LEVEL_NAMES.values(), None]},
        "level_name_en": {"enum": [*LEVEL_NAMES_EN.values(), None]},
    }


def contract_schemas() -> dict[str, Any]:
    """Component schemas of the warning contract."""
    number_or_null = {"type": ["number", "null"]}
    return {
        "Area": {
            "type": "object", "required": ["description", "polygon", "circle"],
            "properties": {
                "description": {"type": "string"},
                "polygon": {"type": "array", "items": LON_LAT,
                            "description": "Closed ring (first = last), WGS-84; empty if none"},
                "circle": {"type": ["array", "null"], "minItems": 3, "maxItems": 3,
                           "items": {"type": "number"},
                           "description": "[longitude, latitude, radius_m]"},
            },
        },
        "Detour": {
            "type": "object",
            "required": ["segment_ids", "travel_time_s", "length_m", "usual_travel_time_s"],
            "properties": {
                "segment_ids": {"type": "array", "items": {"type": "string"}},
                "travel_time_s": {"type": "number"}, "length_m": {"type": "number"},
                "usual_travel_time_s": {"type": "number", "description":
                                        "Through the blocked stretch at free flow"},
                "coords": {"type": "array", "items": LON_LAT},
            },
        },
        "Impact": {
            "type": "object",
            "required": ["bus_routes", "trips_sampled", "trips_affected", "max_delay_s",
                         "computed_at"],
            "properties": {
                "bus_routes": {"type": "array", "items": {"type": "string"},
                               "description": "Bus routes whose path uses the stretch"},
                "trips_sampled": {"type": "integer", "minimum": 0},
                "trips_affected": {"type": "integer", "minimum": 0, "description":
                                   "Sampled trips slower by > 20 % and > 2 min (or cut off)"},
                "max_delay_s": {"type": "number"},
                "computed_at": TIME,
            },
        },
        "Warning": {
            "type": "object",
            "required": ["warning_id", "kind", "status", "category", "severity", "urgency",
                         "certainty", "msg_type", "started_at", "updated_at", "headline",
                         "cause", "segment_ids", "version", "active"],
            "properties": {
                "warning_id": {"type": "string", "description":
                               "Deterministic from what it is about; stable across updates"},
                "kind": _enum(WarningKind, "What the warning is about"),
                "status": _enum(WarningStatus, "Lifecycle status"),
                "active": {"type": "boolean", "description":
                           "False once resolved, closed or cancelled"},
                "category": _enum(CapCategory, "CAP 1.2 category"),
                "severity": _enum(CapSeverity, "CAP 1.2 severity"),
                "urgency": _enum(CapUrgency, "CAP 1.2 urgency"),
                "certainty": _enum(CapCertainty, "CAP 1.2 certainty"),
                "msg_type": _enum(CapMsgType, "CAP 1.2 msgType"),
                "version": {"type": "integer", "minimum": 1,
                            "description": "Number of messages about this warning so far"},
                "started_at": TIME, "updated_at": TIME,
                "expected_end": NULLABLE_TIME, "ended_at": NULLABLE_TIME,
                "headline": {"type": "string"}, "headline_en": {"type": "string"},
                "description": {"type": "string", "description": "Rewritten at every update"},
                "description_en": {"type": "string"},
                "cause": {"type": "string", "examples": ["severe_congestion", "accident"]},
                "segment_ids": {"type": "array", "items": {"type": "string"},
                                "description": "Directed segments, upstream first"},
                "road_names": {"type": "array", "items": {"type": "string"}},
                "area": {"oneOf": [ref("Area"), {"type": "null"}]},
                "level": {"type": ["integer", "null"], "minimum": 1, "maximum": 5},
                "speed_kmh": number_or_null,
                "lon": number_or_null, "lat": number_or_null,
                "detour": {"oneOf": [ref("Detour"), {"type": "null"}]},
                "impact": {"oneOf": [ref("Impact"), {"type": "null"}]},
                "details": {"type": "object", "additionalProperties": True},
            },
        },
        "Incident": {
            "type": "object",
            "required": ["incident_id", "kind", "status", "detected_at", "updated_at"],
            "properties": {
                "incident_id": {"type": "string"},
                "kind": {"type": "string", "examples": ["accident", "stopped_vehicle"]},
                "status": {"enum": list(INCIDENT_STATUSES)},
                "detected_at": TIME, "updated_at": TIME,
                "lon": number_or_null, "lat": number_or_null,
                "segment_ids": {"type": "array", "items": {"type": "string"}},
                "sources": {"type": "array", "items": {"type": "string"}},
                "confidence": number_or_null,
                "lane": {"type": ["integer", "null"]},
                "description": {"type": "string"},
                "warning_id": {"type": ["string", "null"]},
            },
        },
        "AreaIndex": {
            "type": "object",
            "required": ["area_id", "name", "observed_at", "tpi", "level", "speed_kmh",
                         "congested_share", "segment_count", "measured_count"],
            "properties": {
                "area_id": {"type": "string", "examples": [
                    "network", "group:arterial", "cell:3:4", "bridge:w123456",
                    "tunnel:w234567", "district:r3080399", "corridor:luoyu"]},
                "name": {"type": "string", "examples": ["武汉长江大桥", "洪山区"]},
                "name_en": {"type": ["string", "null"],
                            "examples": ["Wuhan Yangtze River Bridge", "Hongshan District"]},
                "observed_at": TIME,
                "tpi": {"type": ["number", "null"], "minimum": 0, "maximum": 10},
                **level_properties(),
                "speed_kmh": number_or_null,
                "congested_share": {"type": "number", "minimum": 0, "maximum": 1},
                "segment_count": {"type": "integer", "minimum": 0},
                "measured_count": {"type": "integer", "minimum": 0},
                "bbox": {"type": ["array", "null"], "items": {"type": "number"}},
            },
        },
        "ReportStatus": {
            "type": "object",
            "required": ["number", "status", "status_name", "status_name_en", "status_at",
                         "final", "kind", "channel", "reported_at", "status_owner"],
            "description": "A citizen report's or hotline ticket's public status: never the "
                           "reporter's contact or the departments' notes.",
            "properties": {
                "number": {"type": "string", "pattern": r"^\d{8}-[A-Z2-7]{6}$",
                           "description": "Quote it to the hotline"},
                "status": {"enum": list(REPORT_STATUSES)},
                "status_name": {"enum": [zh for zh, _ in REPORT_STATUSES.values()]},
                "status_name_en": {"enum": [en for _, en in REPORT_STATUSES.values()]},
                "status_at": TIME, "final": {"type": "boolean"},
                "reply": {"type": ["string", "null"],
                          "description": "What the department answered the reporter"},
                "warning_id": {"type": ["string", "null"],
                               "description": "The warning the report led to"},
                "kind": {"enum": list(CITIZEN_REPORT_KINDS)},
                "channel": {"enum": list(CITIZEN_REPORT_CHANNELS)},
                "reported_at": TIME, "occurred_at": NULLABLE_TIME,
                "lon": number_or_null, "lat": number_or_null,
                "segment_id": {"type": ["string", "null"]}, "text": {"type": "string"},
                "photo": {"type": ["object", "null"]},
                "status_owner": {"enum": ["warning", "publisher"],
                                 "description": "warning: the status as its owner holds it; "
                                                "publisher: as the publisher that took it "
                                                "knew it (the warning service not reached "
                                                "or not yet told)"}},
        },
    }
