"""Live state of geodatabase features over HTTP (and MQTT) → ``FeatureState`` on the bus.

Parking guidance systems report free spaces, weather stations their readings, toll stations
and tunnels whether they are open: ``POST /api/v1/features/{kind}/{feature_id}/state`` with

    {"observed_at": "2026-11-29T08:00:00+08:00", "values": {"free_spaces": 120}}

``kind`` is one of :data:`shared.events.FEATURE_KINDS`; ``feature_id`` the feature's id in the
geodatabase (as ``GET /bigdata/v1/features/...`` shows it). ``observed_at`` (RFC 3339, at most
5 minutes ahead, default now) is when the values were true. ``values``: at most
:data:`MAX_VALUES` keys (``[a-z][a-z0-9_]*``, up to 40 characters), each a finite number, a
string of at most :data:`MAX_STRING` characters, a boolean, or null (null deletes the key).

Answers: 202 ``{"accepted": 1}`` once the bus took it; 400 with a JSON reason for anything
invalid (nothing is published); 401 without a valid sensor token when tokens are configured
(the same ``TTI_SENSOR_TOKENS`` as the detector inputs); 413 past ``detector_max_body`` bytes;
415 for a body that is not JSON; 503 when the bus did not take it (a retry is safe: the event id
is derived from the content). Bigdata merges the values into the feature's live state (older
than what it holds: ignored; unknown feature or implausible values such as more free spaces
than capacity: counted and dropped, see its README). Rejections are counted in
``tti_feature_state_rejected_total{reason}``.

Over MQTT the same JSON goes to ``<TTI_MQTT_FEATURES_PREFIX>/<kind>/<feature_id>/state``
(``tti/features``); the detectors' MQTT input (``detectors.MqttDetectorInput``) subscribes to it
and handles it like this endpoint, acknowledging a message once the bus took it.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter

from services.collector.detectors import (
    DetectorIntake,
    InvalidRecord,
    load_json,
    parse_rfc3339,
    read_sensor_request,
)
from shared.bus import EventBus
from shared.errors import BadRequest
from shared.events import FEATURE_KINDS, FEATURE_STATE, FeatureState

MAX_VALUES = 32
MAX_STRING = 200
FEATURE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
VALUE_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")

ACCEPTED = Counter("tti_feature_states_total", "Feature live states taken onto the bus", ["kind"])
REJECTED = Counter("tti_feature_state_rejected_total", "Feature live states refused, by reason",
                   ["reason"])

STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["values"],
    "properties": {
        "observed_at": {"type": "string", "format": "date-time",
                        "description": "when the values were true (default: now)"},
        "values": {
            "type": "object", "minProperties": 1, "maxProperties": MAX_VALUES,
            "propertyNames": {"pattern": f"^{VALUE_KEY.pattern}$"},
            "additionalProperties": {"anyOf": [
                {"type": "number"}, {"type": "string", "maxLength": MAX_STRING},
                {"type": "boolean"}, {"type": "null"}]},
        },
    },
}


def parse_state(kind: str, feature_id: str, body: object, *, now: datetime,
                source: str = "http") -> FeatureState:
    """Validate one state message; InvalidRecord (code, message) when it is not usable."""
    if kind not in FEATURE_KINDS:
        raise InvalidRecord("bad_kind", f"kind must be one of {', '.join(FEATURE_KINDS)}")
    if not FEATURE_ID.fullmatch(feature_id):
        raise InvalidRecord("bad_feature_id", f"feature id must match {FEATURE_ID.pattern}")
    if not isinstance(body, dict):
        raise InvalidRecord("bad_body", "the body must be a JSON object")
    extra = sorted(set(body) - {"observed_at", "values"})
    if extra:
        raise InvalidRecord("unknown_field", f"unknown field(s): {', '.join(extra)}")
    values = body.get("values")
    if not isinstance(values, dict) or not values:
        raise InvalidRecord("bad_values", "values must be a non-empty object")
    if len(values) > MAX_VALUES:
        raise InvalidRecord("too_many_values", f"{len(values)} values; at most {MAX_VALUES}")
    for key, value in values.items():
        if not VALUE_KEY.fullmatch(key):
            raise InvalidRecord("bad_values", f"value name {key!r} must match {VALUE_KEY.pattern}")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise InvalidRecord("bad_values", f"{key} must be a finite number")
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                raise InvalidRecord("bad_values", f"{key} is longer than {MAX_STRING} characters")
        else:
            raise InvalidRecord("bad_values",
                                f"{key} must be a number, a string, a boolean or null")
    observed_at = (parse_rfc3339(body["observed_at"], now=now) if "observed_at" in body
                   else now)
    return FeatureState(kind=kind, feature_id=feature_id, observed_at=observed_at,
                        values=dict(values), source=source)


def state_event_id(state: FeatureState) -> str:
    """Envelope id derived from the content, so a retried POST is dropped as a duplicate."""
    digest = hashlib.sha256(orjson.dumps(
        [state.kind, state.feature_id, state.observed_at.isoformat(), state.values],
        option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"fs-{digest[:32]}"


async def publish_state(bus: EventBus, state: FeatureState) -> None:
    """Hand one state to the bus (BusError when it does not take it; a retry is safe)."""
    await bus.publish(FEATURE_STATE, state, event_id=state_event_id(state))


async def _post_state(request: web.Request) -> web.Response:
    intake = request.app[STATE_INTAKE]
    raw = await read_sensor_request(request, intake, lambda code: REJECTED.labels(code).inc())
    try:
        state = parse_state(request.match_info["kind"], request.match_info["feature_id"],
                            load_json(raw), now=intake.now())
    except InvalidRecord as exc:
        REJECTED.labels(exc.code).inc()
        raise BadRequest(exc.message, code=exc.code) from exc
    await publish_state(intake.bus, state)
    ACCEPTED.labels(state.kind).inc()
    return web.json_response({"accepted": 1}, status=202)


STATE_INTAKE = web.AppKey("feature_state_intake", DetectorIntake)


def add_feature_state_routes(app: web.Application, intake: DetectorIntake) -> None:
    """``POST /api/v1/features/{kind}/{feature_id}/state``, with the detectors' limits, tokens."""
    app[STATE_INTAKE] = intake
    app.router.add_post("/api/v1/features/{kind}/{feature_id}/state", _post_state)


def openapi_paths() -> dict[str, Any]:
    """OpenAPI 3.1 ``paths`` for the feature state endpoint (relative to the collector)."""
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}

    def err(description: str) -> dict[str, Any]:
        return {"description": description,
                "content": {"application/json": {"schema": error}}}

    return {"/api/v1/features/{kind}/{feature_id}/state": {"post": {
        "summary": "Submit the live state of a feature (parking free spaces, weather, status)",
        "parameters": [
            {"name": "kind", "in": "path", "required": True,
             "schema": {"type": "string", "enum": list(FEATURE_KINDS)}},
            {"name": "feature_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": f"^{FEATURE_ID.pattern}$"}}],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": STATE_SCHEMA}}},
        "responses": {
            "202": {"description": "taken onto the bus",
                    "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"accepted": {"type": "integer"}}}}}},
            "400": err("invalid state (nothing published)"),
            "401": err("sensor token missing or wrong"),
            "413": err("body too large"),
            "415": err("not JSON"),
            "503": err("the bus did not take it; retry"),
        }}}}
