"""Roadside detectors and cameras over HTTP and MQTT → ``DetectorReading`` / ``DetectedEvent``.

Both transports carry the same JSON (:data:`READING_SCHEMA`, :data:`EVENT_SCHEMA`): one object or
a list of up to ``detector_max_items``, at most ``detector_max_body`` bytes.

* HTTP: ``POST /api/v1/detectors/{detector_id}/readings`` and ``…/events``. 202
  ``{"accepted": n, "rejected": [{"index", "code", "message"}]}`` when at least one record was
  taken; 400 with the same reasons when none was; 413 when the body is too large; 503 when the
  bus did not take the records (a retry is safe: envelope ids are derived from the content, so
  JetStream drops what it already has).
* MQTT (aiomqtt, QoS 1): ``<prefix>/<detector_id>/readings`` and ``…/events`` (prefix
  ``tti/detectors``), through a shared subscription so collector replicas split the messages. A
  message is acknowledged only after the bus took its records; invalid ones are counted, logged
  at most once a minute per reason, and acknowledged (a redelivery would not fix them).
  Retained messages are skipped: every resubscription would replay them.

Every record is validated strictly; the reasons (``code``) form a bounded set that doubles as the
``reason`` label of ``tti_detector_rejected_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import random
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge

from shared.bus import EventBus
from shared.clock import Clock
from shared.config import Config
from shared.errors import BadRequest, BusError, ConfigError, Unauthorized
from shared.events import (
    DETECTED_EVENT,
    DETECTED_EVENT_KINDS,
    DETECTOR_READING,
    DetectedEvent,
    DetectorReading,
)

if TYPE_CHECKING:
    from services.collector.feature_state import FeatureCatalogueView, OncePerSensorLog

log = logging.getLogger("tti.collector.detectors")

RECORDS = Counter("tti_detector_records_total", "Detector records taken onto the bus",
                  ["transport", "record"])
REJECTED = Counter("tti_detector_rejected_total",
                   "Detector records or whole messages rejected, by reason",
                   ["transport", "record", "reason"])
MQTT_UP = Gauge("tti_detector_mqtt_connected", "1 while the MQTT detector input is connected")

DETECTOR_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
EVENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
EVENT_STATUSES = ("active", "cleared")
MAX_FUTURE = timedelta(minutes=5)  # clock skew of field devices
MAX_AGE = timedelta(days=7)  # devices buffer through outages; older data is no use live
MAX_DESCRIPTION = 500
MAX_DETAILS_BYTES = 4096
PUBLISH_CHUNK = 256
_ID_NAMESPACE = uuid.UUID("0b8e3f57-7a3c-4d0e-bb0b-3f6f4d3c9a11")

REASONS = ("unauthorized", "missing_field", "unknown_field", "bad_type", "out_of_range", "bad_time",
           "future_time", "stale_time", "bad_kind", "bad_status", "bad_event_id",
           "no_measurement", "too_large", "bad_json", "bad_body", "empty", "too_many_items",
           "bad_detector_id", "bad_topic", "retained", "unsupported_media_type")
"""Every rejection reason: the ``code`` in responses and the metric's ``reason`` label."""


# ---- the record formats ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Number:
    name: str
    lo: float
    hi: float
    integer: bool
    description: str


_INTERVAL = _Number("interval_s", 1, 3600, False, "Length of the measuring interval, seconds")
_LANE = _Number("lane", 1, 32, True, "Lane number from the kerb lane (1); absent = all lanes")
_MEASURES = (
    _Number("vehicle_count", 0, 100_000, True, "Vehicles counted in the interval"),
    _Number("mean_speed_kmh", 0, 250, False, "Mean (time-mean) speed, km/h"),
    _Number("occupancy_pct", 0, 100, False, "Detector occupancy, percent of the interval"),
    _Number("queue_length_m", 0, 50_000, False, "Queue length at the end of the interval, m"),
)
_CONFIDENCE = _Number("confidence", 0, 1, False, "Detection confidence 0-1")

_TIME_DOC = ("RFC 3339 date-time with an offset, e.g. 2024-05-01T08:00:00Z or "
             "2024-05-01T16:00:00+08:00; at most 5 minutes in the future, at most 7 days old")


def _number_schema(n: _Number) -> dict[str, Any]:
    return {"type": ["integer" if n.integer else "number", "null"], "minimum": n.lo,
            "maximum": n.hi, "description": n.description}


READING_SCHEMA: dict[str, Any] = {
    "title": "DetectorReading",
    "description": "Traffic measured by one detector over one interval (end time observed_at).",
    "type": "object",
    "additionalProperties": False,
    "required": ["observed_at", "interval_s"],
    "properties": {
        "observed_at": {"type": "string", "format": "date-time",
                        "description": "End of the interval. " + _TIME_DOC},
        "interval_s": {**_number_schema(_INTERVAL), "type": "number"},
        "lane": _number_schema(_LANE),
        **{m.name: _number_schema(m) for m in _MEASURES},
    },
    "anyOf": [{"required": [m.name], "properties": {m.name: {"type": "number"}}}
              for m in _MEASURES],
    "examples": [{"observed_at": "2024-05-01T08:05:00+08:00", "interval_s": 60, "lane": 1,
                  "vehicle_count": 23, "mean_speed_kmh": 41.5, "occupancy_pct": 12.0}],
}
"""JSON Schema (2020-12, as OpenAPI 3.1 uses) of one reading; at least one measurement."""

EVENT_SCHEMA: dict[str, Any] = {
    "title": "DetectedEvent",
    "description": "An event a camera or sensor detected. Send the same event_id again with "
                   "status 'cleared' when it is over.",
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "observed_at"],
    "properties": {
        "kind": {"enum": list(DETECTED_EVENT_KINDS)},
        "observed_at": {"type": "string", "format": "date-time", "description": _TIME_DOC},
        "event_id": {"type": "string", "pattern": f"^{EVENT_ID.pattern}$",
                     "description": "The detector's id for this event (required to clear it; "
                                    "derived from the content when absent)"},
        "status": {"enum": list(EVENT_STATUSES), "default": "active"},
        "confidence": _number_schema(_CONFIDENCE),
        "lane": _number_schema(_LANE),
        "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
        "details": {"type": "object", "description": "Free-form extras (at most 4 KiB as JSON), "
                                                     "e.g. image URL, vehicle plate"},
    },
    "if": {"required": ["status"], "properties": {"status": {"const": "cleared"}}},
    "then": {"required": ["event_id"]},
    "examples": [{"kind": "stopped_vehicle", "observed_at": "2024-05-01T08:05:12Z",
                  "event_id": "cam17-000123", "confidence": 0.92, "lane": 2}],
}
"""JSON Schema (2020-12) of one detected event."""


class InvalidRecord(ValueError):
    """A record or message that cannot be taken; ``code`` is one of :data:`REASONS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PayloadTooLarge(BadRequest):
    """The request body exceeds the configured limit (HTTP 413)."""

    code = "too_large"
    http_status = 413


class UnsupportedMediaType(BadRequest):
    """The request body is declared as something other than JSON (HTTP 415)."""

    code = "unsupported_media_type"
    http_status = 415


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?"
                      r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_rfc3339(raw: object, *, now: datetime, name: str = "observed_at") -> datetime:
    """An RFC 3339 date-time with offset → aware UTC datetime; not far future, not too old."""
    if not isinstance(raw, str):
        raise InvalidRecord("bad_type", f"{name} must be an RFC 3339 string")
    m = _RFC3339.fullmatch(raw)
    if not m:
        raise InvalidRecord("bad_time", f"{name} is not an RFC 3339 date-time with offset: "
                            f"{raw[:40]!r}")
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    micro = int((m.group(7) or ".0")[1:].ljust(6, "0")[:6])
    if m.group(8):
        tz: timezone = UTC
    else:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            raise InvalidRecord("bad_time", f"{name} has an impossible offset: {raw!r}")
        delta = timedelta(hours=off_h, minutes=off_m)
        tz = timezone(-delta if m.group(9) == "-" else delta)
    try:
        t = datetime(y, mo, d, h, mi, s, micro, tzinfo=tz).astimezone(UTC)
    except ValueError as exc:  # month 13, 25:00, second 60 (leap seconds are not kept)
        raise InvalidRecord("bad_time", f"{name} is not a valid date-time: {raw!r}") from exc
    if t > now + MAX_FUTURE:
        raise InvalidRecord("future_time", f"{name} {raw} is in the future")
    if t < now - MAX_AGE:
        raise InvalidRecord("stale_time", f"{name} {raw} is more than 7 days old")
    return t


def _check_fields(obj: Mapping[str, object], allowed: Sequence[str]) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        names = ", ".join(sorted(unknown))[:200]
        raise InvalidRecord("unknown_field", f"unknown field(s): {names}")


def _number(obj: Mapping[str, object], n: _Number, *, required: bool = False) -> float | None:
    v = obj.get(n.name)
    if v is None:
        if required:
            raise InvalidRecord("missing_field", f"{n.name} is required")
        return None
    # bool is an int in Python but true/false is never a measurement.
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidRecord("bad_type", f"{n.name} must be a number")
    if n.integer:
        if isinstance(v, float) and not v.is_integer():
            raise InvalidRecord("bad_type", f"{n.name} must be an integer")
        v = int(v)
    if not (math.isfinite(v) and n.lo <= v <= n.hi):
        raise InvalidRecord("out_of_range", f"{n.name} must be in [{n.lo:g}, {n.hi:g}]: {v}")
    return v


_READING_FIELDS = ("observed_at", "interval_s", "lane", *(m.name for m in _MEASURES))
_EVENT_FIELDS = ("kind", "observed_at", "event_id", "status", "confidence", "lane",
                 "description", "details")


def parse_reading(detector_id: str, obj: object, *, source: str, now: datetime
                  ) -> DetectorReading:
    """One JSON reading → ``DetectorReading``; raises :class:`InvalidRecord`."""
    if not isinstance(obj, dict):
        raise InvalidRecord("bad_type", "a reading must be a JSON object")
    _check_fields(obj, _READING_FIELDS)
    if "observed_at" not in obj:
        raise InvalidRecord("missing_field", "observed_at is required")
    observed = parse_rfc3339(obj["observed_at"], now=now)
    interval = _number(obj, _INTERVAL, required=True)
    lane = _number(obj, _LANE)
    values = {m.name: _number(obj, m) for m in _MEASURES}
    if all(v is None for v in values.values()):
        raise InvalidRecord("no_measurement", "a reading needs at least one of "
                            + ", ".join(m.name for m in _MEASURES))
    count = values["vehicle_count"]
    return DetectorReading(
        detector_id=detector_id, observed_at=observed, interval_s=float(interval or 0),
        lane=None if lane is None else int(lane),
        vehicle_count=None if count is None else int(count),
        mean_speed_kmh=values["mean_speed_kmh"], occupancy_pct=values["occupancy_pct"],
        queue_length_m=values["queue_length_m"], source=source)


def parse_event(detector_id: str, obj: object, *, source: str, now: datetime) -> DetectedEvent:
    """One JSON detected event → ``DetectedEvent``; raises :class:`InvalidRecord`."""
    if not isinstance(obj, dict):
        raise InvalidRecord("bad_type", "an event must be a JSON object")
    _check_fields(obj, _EVENT_FIELDS)
    kind = obj.get("kind")
    if kind is None:
        raise InvalidRecord("missing_field", "kind is required")
    if not isinstance(kind, str) or kind not in DETECTED_EVENT_KINDS:
        raise InvalidRecord("bad_kind", "kind must be one of " + ", ".join(DETECTED_EVENT_KINDS))
    if "observed_at" not in obj:
        raise InvalidRecord("missing_field", "observed_at is required")
    observed = parse_rfc3339(obj["observed_at"], now=now)
    status = obj.get("status") or "active"
    if status not in EVENT_STATUSES:
        raise InvalidRecord("bad_status", "status must be one of " + ", ".join(EVENT_STATUSES))
    confidence = _number(obj, _CONFIDENCE)
    lane = _number(obj, _LANE)
    description = obj.get("description") or ""
    if not isinstance(description, str):
        raise InvalidRecord("bad_type", "description must be a string")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidRecord("out_of_range", f"description exceeds {MAX_DESCRIPTION} characters")
    details = obj.get("details") or {}
    if not isinstance(details, dict):
        raise InvalidRecord("bad_type", "details must be a JSON object")
    if len(orjson.dumps(details)) > MAX_DETAILS_BYTES:
        raise InvalidRecord("out_of_range", f"details exceed {MAX_DETAILS_BYTES} bytes as JSON")
    event_id = obj.get("event_id")
    if event_id is None:
        if status == "cleared":
            raise InvalidRecord("missing_field", "event_id is required to clear an event")
        # Derived from the content so a retried message keeps its id.
        event_id = f"{kind}-" + uuid.uuid5(
            _ID_NAMESPACE, f"{detector_id}|{kind}|{observed.isoformat()}|{lane}").hex[:16]
    elif not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise InvalidRecord("bad_event_id", f"event_id must match {EVENT_ID.pattern}")
    return DetectedEvent(
        detector_id=detector_id, event_id=event_id, kind=kind, observed_at=observed,
        status=status, confidence=confidence, lane=None if lane is None else int(lane),
        description=description, source=source, details=details)


def record_event_id(record: DetectorReading | DetectedEvent) -> str:
    """A stable envelope id from the record's content: a retried record is a duplicate."""
    return uuid.uuid5(_ID_NAMESPACE, orjson.dumps(
        record, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z).decode()).hex


# ---- intake (transport-independent) ------------------------------------------------------

RECORD_KINDS = ("reading", "event")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why record ``index`` of a message was not taken."""

    index: int
    code: str
    message: str

    def as_json(self) -> dict[str, object]:
        """The response form ``{"index", "code", "message"}``."""
        return {"index": self.index, "code": self.code, "message": self.message}


@dataclass(slots=True)
class IntakeResult:
    """What one message yielded."""

    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)


class DetectorIntake:
    """Validates detector messages and hands their records to the bus, whatever the transport."""

    def __init__(self, bus: EventBus, *, max_body: int = 1_048_576, max_items: int = 500,
                 tokens: Iterable[str] = (),
                 wall: Callable[[], datetime] | None = None) -> None:
        if max_body <= 0 or max_items <= 0:
            raise ConfigError("TTI_DETECTOR_MAX_BODY and TTI_DETECTOR_MAX_ITEMS must be positive")
        self.bus = bus
        self.max_body = max_body
        self.max_items = max_items
        self.tokens = frozenset(t for t in tokens if t)
        self._wall = wall or Clock().now  # the collector passes its clock's ``now``

    def now(self) -> datetime:
        """The time records are checked against (the service's clock; UTC)."""
        return self._wall()

    def reject(self, transport: str, record: str, code: str, n: int = 1) -> None:
        """Count ``n`` rejections (``code`` must be one of :data:`REASONS`)."""
        REJECTED.labels(transport, record, code).inc(n)

    def parse(self, transport: str, record: str, detector_id: str, payload: bytes
              ) -> tuple[list[DetectorReading | DetectedEvent], list[Rejection]]:
        """Decode and validate one message; raises InvalidRecord when nothing in it is usable."""
        if not DETECTOR_ID.fullmatch(detector_id):
            raise InvalidRecord("bad_detector_id",
                                f"detector id must match {DETECTOR_ID.pattern}")
        if len(payload) > self.max_body:
            raise InvalidRecord("too_large", f"message exceeds {self.max_body} bytes")
        if not payload.strip():  # also how MQTT clients clear a retained message
            raise InvalidRecord("empty", "the message is empty")
        body = load_json(payload)
        if isinstance(body, dict):
            items: list[object] = [body]
        elif isinstance(body, list):
            items = body
        else:
            raise InvalidRecord("bad_body", "the body must be a JSON object or a list of them")
        if not items:
            raise InvalidRecord("empty", "the list is empty")
        if len(items) > self.max_items:
            raise InvalidRecord("too_many_items",
                                f"{len(items)} records; at most {self.max_items} per message")
        parse_one = parse_reading if record == "reading" else parse_event
        source = transport
        now = self._wall()
        good: list[DetectorReading | DetectedEvent] = []
        bad: list[Rejection] = []
        for i, item in enumerate(items):
            try:
                good.append(parse_one(detector_id, item, source=source, now=now))
            except InvalidRecord as exc:
                bad.append(Rejection(i, exc.code, exc.message))
        return good, bad

    async def publish(self, records: Sequence[DetectorReading | DetectedEvent]) -> None:
        """Hand records to the bus (concurrently, so JetStream batches); BusError if any fails."""
        failed = 0
        first: BaseException | None = None
        for i in range(0, len(records), PUBLISH_CHUNK):
            chunk = records[i:i + PUBLISH_CHUNK]
            results = await asyncio.gather(*(self._publish_one(r) for r in chunk),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    failed += 1
                    first = first or r
        if first is not None:
            if isinstance(first, asyncio.CancelledError):
                raise first
            raise BusError(f"the bus did not take {failed} of {len(records)} records; retry "
                           "(JetStream drops the ones it already has)") from first

    async def _publish_one(self, r: DetectorReading | DetectedEvent) -> None:
        if isinstance(r, DetectorReading):
            await self.bus.publish(DETECTOR_READING, r, event_id=record_event_id(r))
        else:
            await self.bus.publish(DETECTED_EVENT, r, event_id=record_event_id(r))

    async def ingest(self, transport: str, record: str, detector_id: str, payload: bytes
                     ) -> IntakeResult:
        """Parse, publish and count one message. Raises InvalidRecord (nothing usable) or
        BusError (the bus did not take the records)."""
        try:
            good, bad = self.parse(transport, record, detector_id, payload)
        except InvalidRecord as exc:
            self.reject(transport, record, exc.code)
            raise
        for rej in bad:
            self.reject(transport, record, rej.code)
        if good:
            await self.publish(good)
            RECORDS.labels(transport, record).inc(len(good))
        return IntakeResult(len(good), bad)


# ---- HTTP --------------------------------------------------------------------------------

DETECTORS = web.AppKey("detector_intake", DetectorIntake)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (chunked bodies included)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes exceeds {limit}")
    buf = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
    return bytes(buf)


def check_sensor_token(request: web.Request, tokens: frozenset[str]) -> None:
    """``Authorization: Bearer <token>`` must name a configured sensor token (when any are).

    Compared in constant time so the check does not leak how much of a token was right.
    """
    if not tokens:
        return
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), t)
                                             for t in tokens):
        raise Unauthorized("a valid sensor token is required (Authorization: Bearer …)")


async def read_sensor_request(request: web.Request, intake: DetectorIntake,
                              reject: Callable[[str], None]) -> bytes:
    """The checks every sensor endpoint makes (token, JSON media type, size); the body.

    ``reject(code)`` counts a refusal (``unauthorized``, ``unsupported_media_type``,
    ``too_large``) before its error (401, 415, 413) goes out.
    """
    try:
        check_sensor_token(request, intake.tokens)
    except Unauthorized:
        reject("unauthorized")
        raise
    if request.headers.get("Content-Type") is not None and not (
            request.content_type == "application/json" or request.content_type.endswith("+json")):
        reject("unsupported_media_type")
        raise UnsupportedMediaType(f"send application/json, not {request.content_type}")
    try:
        return await _read_body(request, intake.max_body)
    except PayloadTooLarge:
        reject("too_large")
        raise


def load_json(payload: bytes) -> object:
    """Decode a message body; InvalidRecord ``bad_json`` when it is not JSON."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("bad_json", f"not JSON (UTF-8): {exc}") from exc


async def _post(request: web.Request, record: str) -> web.Response:
    intake = request.app[DETECTORS]
    body = await read_sensor_request(request, intake,
                                     lambda code: intake.reject("http", record, code))
    detector_id = request.match_info["detector_id"]
    try:
        result = await intake.ingest("http", record, detector_id, body)
    except InvalidRecord as exc:
        raise BadRequest(exc.message, code=exc.code) from exc
    if not result.accepted:
        noun = "reading" if record == "reading" else "event"
        raise BadRequest(f"no valid {noun}: {len(result.rejected)} rejected",
                         code=f"invalid_{noun}s",
                         details={"rejected": [r.as_json() for r in result.rejected]})
    return web.json_response({"accepted": result.accepted,
                              "rejected": [r.as_json() for r in result.rejected]}, status=202)


async def _post_readings(request: web.Request) -> web.Response:
    return await _post(request, "reading")


async def _post_events(request: web.Request) -> web.Response:
    return await _post(request, "event")


def add_detector_routes(app: web.Application, intake: DetectorIntake) -> None:
    """``POST /api/v1/detectors/{detector_id}/readings`` and ``…/events`` on ``app``."""
    app[DETECTORS] = intake
    app.router.add_post("/api/v1/detectors/{detector_id}/readings", _post_readings)
    app.router.add_post("/api/v1/detectors/{detector_id}/events", _post_events)


def openapi_paths() -> dict[str, Any]:
    """OpenAPI 3.1 ``paths`` for the two detector endpoints (relative to the collector)."""
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "description": "Stable code: one of "
                                + ", ".join(REASONS) + ", invalid_readings, invalid_events"},
                       "message": {"type": "string"},
                       "details": {"description": "For invalid_*: {rejected: [...]}"}}}}}
    rejection = {"type": "object", "required": ["index", "code", "message"], "properties": {
        "index": {"type": "integer", "minimum": 0,
                  "description": "Position in the list (0 for a single object)"},
        "code": {"enum": list(REASONS)}, "message": {"type": "string"}}}
    accepted = {"type": "object", "required": ["accepted", "rejected"], "properties": {
        "accepted": {"type": "integer", "minimum": 1},
        "rejected": {"type": "array", "items": rejection}}}

    def err(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": error}}}

    def op(noun: str, schema: dict[str, Any], summary: str) -> dict[str, Any]:
        return {
            "tags": ["detectors"],
            "summary": summary,
            "operationId": f"postDetector{noun.capitalize()}",
            "description": ("One JSON object or a list of up to 500 (configurable). Valid "
                            "records are taken even when others are rejected. The same JSON "
                            f"may be published over MQTT to tti/detectors/{{detector_id}}/{noun}"
                            " (QoS 1, not retained)."),
            "parameters": [{"name": "detector_id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": f"^{DETECTOR_ID.pattern}$"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [schema, {"type": "array", "minItems": 1, "maxItems": 500,
                                   "items": schema}]}}}},
            "responses": {
                "202": {"description": "Taken (some records may be rejected, see 'rejected')",
                        "content": {"application/json": {"schema": accepted}}},
                "400": err("Nothing usable: bad JSON, bad detector id, or every record invalid"),
                "413": err("Body larger than the limit (1 MiB by default)"),
                "415": err("Body declared as something other than JSON"),
                "503": err("The event bus did not take the records; retry"),
            },
        }

    return {
        "/api/v1/detectors/{detector_id}/readings": {"post": op(
            "readings", READING_SCHEMA, "Submit traffic readings of a roadside detector")},
        "/api/v1/detectors/{detector_id}/events": {"post": op(
            "events", EVENT_SCHEMA, "Submit events a camera or sensor detected")},
    }


# ---- MQTT --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where the broker is: from ``mqtt://[user:pass@]host[:port]`` (``mqtts://`` for TLS)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_mqtt_url(url: str) -> MqttTarget:
    """Parse ``TTI_MQTT_URL``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ConfigError(f"TTI_MQTT_URL must be mqtt://host[:port] or mqtts://…: {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"TTI_MQTT_URL has a bad port: {url!r}") from exc
    return MqttTarget(parts.hostname, port,
                      unquote(parts.username) if parts.username else None,
                      unquote(parts.password) if parts.password else None, tls)


class RateLimitedLog:
    """At most one line per key per ``interval_s``, saying how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log unless ``key`` was logged within the interval; True if it was written."""
        now = self._monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        suffix = f" ({more} more like it since the last report)" if more else ""
        self.logger.warning(msg + suffix, *args)
        return True


class MqttDetectorInput:
    """Subscribes to the detector topics and feeds every message through the intake."""

    READY_GRACE_S = 30.0

    def __init__(self, intake: DetectorIntake, target: MqttTarget, *,
                 prefix: str = "tti/detectors", features_prefix: str = "tti/features",
                 share_group: str = "tti-collector",
                 client_id: str = "", max_backoff_s: float = 60.0,
                 catalogue: FeatureCatalogueView | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        prefix = prefix.strip("/")
        features_prefix = features_prefix.strip("/")
        for name, value in (("TOPIC", prefix), ("FEATURES", features_prefix)):
            if not value or any(c in value for c in "+#"):
                raise ConfigError(f"TTI_MQTT_{name}_PREFIX must be a plain topic: {value!r}")
        self.intake = intake
        self.target = target
        self.prefix = prefix
        self.features_prefix = features_prefix
        self.share_group = share_group
        self.client_id = client_id
        self.max_backoff_s = max_backoff_s
        self.connected = False
        self.primed = False
        self.messages = 0
        self.last_error = ""
        self.down_since: datetime | None = None
        self._down_logged = False
        self._waiting_logged = False
        self._monotonic = monotonic
        self._started = monotonic()
        self._task: asyncio.Task[None] | None = None
        self._invalid_log = RateLimitedLog(log)
        # Feature states: checked against bigdata's catalogue (None: values only, as while it
        # is loading); refusals logged once per sensor and answered on …/state/rejected.
        from services.collector.feature_state import OncePerSensorLog

        self.catalogue = catalogue
        self._state_log: OncePerSensorLog = OncePerSensorLog(log)
        self._client_now: aiomqtt.Client | None = None

    @classmethod
    def from_config(cls, config: Config, *, intake: DetectorIntake,
                    catalogue: FeatureCatalogueView | None = None) -> MqttDetectorInput:
        """The MQTT input ``TTI_MQTT_*`` describes."""
        return cls(intake, parse_mqtt_url(config.mqtt_url), prefix=config.mqtt_topic_prefix,
                   features_prefix=config.mqtt_features_prefix,
                   share_group=config.mqtt_share_group, client_id=config.mqtt_client_id,
                   catalogue=catalogue)

    def topic_filters(self) -> list[str]:
        """The subscriptions, as shared subscriptions when a group is configured."""
        share = f"$share/{self.share_group}/" if self.share_group else ""
        return [f"{share}{self.prefix}/+/readings", f"{share}{self.prefix}/+/events",
                f"{share}{self.features_prefix}/+/+/state"]

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the connection loop (it reconnects by itself)."""
        self._started = self._monotonic()
        self._task = asyncio.create_task(self._run(), name="mqtt-detectors")

    async def stop(self) -> None:
        """Disconnect; the message in hand is finished or left unacknowledged for redelivery."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected = False
        MQTT_UP.set(0)

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx`` entry: consume while the app runs."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def readiness(self) -> tuple[bool, str]:
        """Ready once connected the first time (or past the grace); outages are detail only."""
        where = f"{self.target.host}:{self.target.port}"
        if self.connected:
            return True, f"connected to {where}, {self.messages} messages"
        if not self.primed:
            waited = self._monotonic() - self._started
            return (waited >= self.READY_GRACE_S,
                    f"not connected to {where} yet" + (f" ({self.last_error})"
                                                       if self.last_error else ""))
        since = f" since {self.down_since:%Y-%m-%dT%H:%M:%SZ}" if self.down_since else ""
        return True, f"disconnected from {where}{since} ({self.last_error}); reconnecting"

    def _client(self) -> aiomqtt.Client:
        tls_context = ssl.create_default_context() if self.target.tls else None
        return aiomqtt.Client(
            self.target.host, self.target.port, username=self.target.username,
            password=self.target.password, identifier=self.client_id or None,
            # A fixed client id asks the broker to keep our session (and queue QoS 1
            # messages) while we are away; without one, a clean session.
            clean_session=not self.client_id, keepalive=30, timeout=10,
            tls_context=tls_context)

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                client = self._client()
                paho: Any = getattr(client, "_client", None)
                # aiomqtt acks QoS 1 messages as soon as they are queued; paho's manual acks
                # let us ack only once the bus has taken the records, and cap what the broker
                # sends ahead (its in-flight window) instead of queueing without bound.
                manual = paho is not None and hasattr(paho, "manual_ack_set")
                if manual:
                    paho.manual_ack_set(True)
                async with client:
                    self._client_now = client
                    for topic in self.topic_filters():
                        granted = await client.subscribe(topic, qos=1)
                        if any(_failed(g) for g in granted):
                            raise aiomqtt.MqttError(f"broker refused subscription to {topic}")
                    self._set_connected()
                    backoff = 1.0
                    async for message in client.messages:
                        await self._on_message(message)
                        if manual:
                            paho.ack(message.mid, message.qos)
            except aiomqtt.MqttError as exc:
                self._set_disconnected(f"{type(exc).__name__}: {exc}")
            except OSError as exc:
                self._set_disconnected(f"{type(exc).__name__}: {exc}")
            finally:
                self._client_now = None
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(self.max_backoff_s, backoff * 2)

    def _set_connected(self) -> None:
        where = f"{self.target.host}:{self.target.port}"
        if self.primed and self._down_logged:
            down = (self.intake.now() - self.down_since).total_seconds() \
                if self.down_since else 0.0
            log.info("MQTT detector input reconnected to %s after %.0f s", where, down)
        elif not self.primed:
            log.info("MQTT detector input subscribed", extra={
                "broker": where, "topics": self.topic_filters()})
        self.connected = self.primed = True
        self._down_logged = self._waiting_logged = False
        self.down_since = None
        self.last_error = ""
        MQTT_UP.set(1)

    def _set_disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        self.last_error = reason
        MQTT_UP.set(0)
        where = f"{self.target.host}:{self.target.port}"
        if self.down_since is None:
            self.down_since = self.intake.now()
        if self._down_logged:
            log.debug("MQTT reconnect to %s failed: %s", where, reason)
        elif was or self.primed or self._monotonic() - self._started >= self.READY_GRACE_S:
            log.warning("MQTT detector input down (%s): %s; reconnecting with backoff",
                        where, reason)
            self._down_logged = True
        elif not self._waiting_logged:
            log.info("MQTT broker %s not reachable yet (%s); retrying", where, reason)
            self._waiting_logged = True

    async def _on_message(self, message: aiomqtt.Message) -> None:
        """Validate and publish one message; only the bus being away blocks (and retries)."""
        self.messages += 1
        payload = message.payload
        if isinstance(payload, bytearray):
            payload = bytes(payload)
        elif isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes):
            payload = b""
        await self.handle(message.topic.value, payload, retained=bool(message.retain))

    async def handle(self, topic: str, payload: bytes, *, retained: bool = False
                     ) -> IntakeResult | None:
        """One message from ``topic``: parse, publish (retrying while the bus is away), count."""
        if topic.startswith(self.features_prefix + "/"):
            return await self._handle_state(topic, payload, retained=retained)
        rest = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else ""
        parts = rest.split("/")
        record = "event" if topic.endswith("/events") else "reading"
        if len(parts) != 2 or parts[1] not in ("readings", "events"):
            self.intake.reject("mqtt", record, "bad_topic")
            self._invalid_log.warning("bad_topic", "MQTT message on unexpected topic %r", topic)
            return None
        detector_id = parts[0]
        if retained:
            self.intake.reject("mqtt", record, "retained")
            self._invalid_log.warning("retained", "skipping retained MQTT message on %s "
                                      "(devices must publish without the retain flag)", topic)
            return None
        try:
            good, bad = self.intake.parse("mqtt", record, detector_id, payload)
        except InvalidRecord as exc:
            self.intake.reject("mqtt", record, exc.code)
            self._invalid_log.warning(exc.code, "invalid MQTT message on %s: %s: %s", topic,
                                      exc.code, exc.message)
            return None
        for rej in bad:
            self.intake.reject("mqtt", record, rej.code)
        if bad:
            self._invalid_log.warning(bad[0].code, "MQTT message on %s: %d of %d records "
                                      "rejected, e.g. [%d] %s: %s", topic, len(bad),
                                      len(bad) + len(good), bad[0].index, bad[0].code,
                                      bad[0].message)
        if good:
            await self._publish_until_taken(good)
            RECORDS.labels("mqtt", record).inc(len(good))
        return IntakeResult(len(good), bad)

    async def _handle_state(self, topic: str, payload: bytes, *, retained: bool
                            ) -> IntakeResult | None:
        """``<features_prefix>/<kind>/<feature_id>/state``: one feature's live state."""
        # Imported here: feature_state builds on this module's HTTP helpers.
        from services.collector.feature_state import (
            ACCEPTED,
            check_state,
            count_rejection,
            parse_state,
            publish_state,
        )

        received_at = self.intake.now()
        parts = topic[len(self.features_prefix) + 1:].split("/")
        kind, feature_id = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
        try:
            if len(parts) != 3 or parts[2] != "state":
                raise InvalidRecord("bad_topic", f"unexpected topic {topic!r}")
            if retained:
                raise InvalidRecord("retained", "retained message (devices must publish "
                                    "without the retain flag)")
            if len(payload) > self.intake.max_body:
                raise InvalidRecord("too_large", f"message exceeds {self.intake.max_body} bytes")
            state = parse_state(kind, feature_id, load_json(payload), now=received_at,
                                source="mqtt")
            state, _ = check_state(state, self.catalogue)
        except InvalidRecord as exc:
            count_rejection("mqtt", kind, exc.code)
            if exc.code == "bad_topic":
                # Not a sensor's topic: no sensor to name, no …/rejected topic to answer on.
                self._invalid_log.warning("state-bad_topic", "MQTT feature state on unexpected "
                                          "topic %r", topic)
            else:
                self._state_log.refused(kind, feature_id, exc.code, exc.message, topic)
                await self._answer_rejection(topic, exc, received_at)
            return None
        await self._until_taken(lambda: publish_state(self.intake.bus, state))
        ACCEPTED.labels(state.kind).inc()
        self._state_log.accepted(kind, feature_id)
        return IntakeResult(1, [])

    async def _answer_rejection(self, topic: str, exc: InvalidRecord, received_at: datetime
                                ) -> None:
        """Publish why a state was refused on ``<topic>/rejected`` (MQTT has no reply).

        Not retained, QoS 1; when the broker does not take it, the count and the log remain.
        """
        client = self._client_now
        if client is None:
            return
        body = orjson.dumps({"reason": exc.message, "code": exc.code,
                             "received_at": received_at}, option=orjson.OPT_UTC_Z)
        try:
            await client.publish(f"{topic}/rejected", body, qos=1, timeout=5)
        except aiomqtt.MqttError as err:
            log.debug("could not publish the rejection on %s/rejected: %s", topic, err)

    async def _publish_until_taken(self, records: Sequence[DetectorReading | DetectedEvent]
                                   ) -> None:
        await self._until_taken(lambda: self.intake.publish(records))

    async def _until_taken(self, publish: Callable[[], Awaitable[object]]) -> None:
        # The message stays unacknowledged meanwhile, so the broker holds back more (its
        # in-flight window) rather than us dropping records. Retries reuse content-derived ids.
        delay = 0.5
        while True:
            try:
                await publish()
                return
            except BusError as exc:
                self._invalid_log.warning("bus_error", "bus did not take MQTT records (%s); "
                                          "retrying", exc)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)


def _failed(granted: object) -> bool:
    """Whether a SUBACK entry (QoS int or paho ReasonCode) says the subscription failed."""
    is_failure = getattr(granted, "is_failure", None)
    if isinstance(is_failure, bool):
        return is_failure
    return isinstance(granted, int) and granted >= 0x80

