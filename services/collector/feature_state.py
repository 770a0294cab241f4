"""Live state of geodatabase features over HTTP (and MQTT) → ``FeatureState`` on the bus.

Parking guidance systems report free spaces, weather stations their readings, toll stations
and tunnels whether they are open: ``POST /api/v1/features/{kind}/{feature_id}/state`` with

    {"observed_at": "2026-11-29T08:00:00+08:00", "values": {"free_spaces": 120}}

``kind`` is one of :data:`shared.events.FEATURE_KINDS`; ``feature_id`` the feature's id in the
geodatabase (as ``GET /bigdata/v1/features/...`` shows it). ``observed_at`` (RFC 3339, at most
5 minutes ahead, default now) is when the values were true. ``values``: at most
:data:`MAX_VALUES` keys (``[a-z][a-z0-9_]*``, up to 40 characters), each a finite number, a
string of at most :data:`MAX_STRING` characters, a boolean, or null (null deletes the key).

**Closed by default.** The collector knows which features exist from bigdata's
:class:`~shared.events.FeatureCatalogue` (kept by :class:`FeatureCatalogueView`, never read
from bigdata's tables) and checks each state at the edge with the one set of rules
(:mod:`shared.feature_rules`: free spaces a whole number from 0 to the lot's capacity …).

Answers: 202 ``{"accepted": 1}`` once the bus took it; 400 for a malformed body or a value of
the wrong type; 404 ``unknown_feature`` for an id the catalogue does not hold for that kind; 422
``implausible_value`` for an impossible value, with the reason; 503 ``catalogue_loading`` (with
``Retry-After``) until the catalogue has arrived; 401 without a valid sensor token when tokens
are configured (the same ``TTI_SENSOR_TOKENS`` as the detector inputs); 413 past
``detector_max_body`` bytes; 415 for a body that is not JSON; 503 ``bus_error`` when the bus did
not take it (a retry is safe: the event id is derived from the content). Nothing refused is
published. Refusals are counted in ``tti_feature_state_rejected_total{transport, kind,
reason}`` (``kind`` ``unknown`` when it is not a feature kind).

Over MQTT the same JSON goes to ``<TTI_MQTT_FEATURES_PREFIX>/<kind>/<feature_id>/state``
(``tti/features``); the detectors' MQTT input (``detectors.MqttDetectorInput``) handles it with
:func:`check_state` too. There is no reply, so a refused message is counted, logged once per
sensor and kind (:class:`OncePerSensorLog`, at WARNING: it is the sender's mistake) and
published on ``…/state/rejected`` as ``{"reason", "code", "received_at"}``. Before the catalogue
has arrived an MQTT state is checked for its values only and passed on (bigdata checks the id):
dropping it would lose data the sensor cannot resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge

from services.collector.detectors import (
    DetectorIntake,
    InvalidRecord,
    load_json,
    parse_rfc3339,
    read_sensor_request,
)
from shared.bus import EventBus
from shared.bus.base import Subscription
from shared.clock import Clock
from shared.codec import Envelope
from shared.errors import BadRequest, BusError, DecodeError, NotFound, TtiError
from shared.events import (
    FEATURE_CATALOGUE,
    FEATURE_CATALOGUE_REQUEST,
    FEATURE_KINDS,
    FEATURE_STATE,
    CatalogueEntry,
    CatalogueRequest,
    FeatureCatalogue,
    FeatureState,
)
from shared.feature_rules import LiveValueError, check_live_values
from shared.service import json_error

log = logging.getLogger("tti.collector.features")

MAX_VALUES = 32
MAX_STRING = 200
FEATURE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
VALUE_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")

ACCEPTED = Counter("tti_feature_states_total", "Feature live states taken onto the bus", ["kind"])
REJECTED = Counter("tti_feature_state_rejected_total", "Feature live states refused, by reason",
                   ["transport", "kind", "reason"])
CATALOGUE_SIZE = Gauge("tti_collector_catalogue_features",
                       "Features in the catalogue the collector holds, by kind", ["kind"])

HTTP_STATUS = {"unknown_feature": 404, "implausible_value": 422, "catalogue_loading": 503}
"""HTTP status of a refusal by its code; any other code is a 400."""
RETRY_AFTER_S = 5


def count_rejection(transport: str, kind: str, reason: str) -> None:
    """Count one refused state; a kind that is not a feature kind is ``unknown`` (bounded)."""
    REJECTED.labels(transport, kind if kind in FEATURE_KINDS else "unknown", reason).inc()

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


# ---- the catalogue -------------------------------------------------------------------------


@dataclass(slots=True)
class _HeldKind:
    version: str
    published_at: datetime
    entries: dict[str, CatalogueEntry]


@dataclass(slots=True)
class _Assembly:
    chunks: int
    published_at: datetime
    parts: dict[int, tuple[CatalogueEntry, ...]] = field(default_factory=dict)


class FeatureCatalogueView:
    """The newest feature catalogue bigdata published, per kind, assembled from its chunks.

    A kind's features are replaced only by a complete catalogue published later than the one
    held (a replayed older one never wins); chunks of a few versions at most are assembled at
    once per kind. Fed by :meth:`on_catalogue` (a bus handler).
    """

    MAX_PENDING = 4
    MAX_CHUNKS = 100_000
    READY_GRACE_S = 30.0
    """Readiness waits this long for the catalogue, then reports it without holding the
    collector's other inputs (JT/T 808, detectors) out of service."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._kinds: dict[str, _HeldKind] = {}
        self._pending: dict[str, OrderedDict[str, _Assembly]] = {}
        self._monotonic = monotonic
        self._started = monotonic()
        self._announced = False

    def loaded(self, kind: str) -> bool:
        """Whether the features of ``kind`` are known (an empty kind counts as known)."""
        return kind in self._kinds

    @property
    def complete(self) -> bool:
        """Whether every feature kind has arrived."""
        return all(k in self._kinds for k in FEATURE_KINDS)

    def find(self, kind: str, feature_id: str) -> CatalogueEntry | None:
        """The catalogue entry of one feature, or None when it is not held."""
        held = self._kinds.get(kind)
        return held.entries.get(feature_id) if held else None

    def __len__(self) -> int:
        return sum(len(h.entries) for h in self._kinds.values())

    async def on_catalogue(self, env: Envelope[FeatureCatalogue]) -> None:
        """Bus handler of ``tti.feature.catalogue``."""
        self.add(env.payload)

    def add(self, c: FeatureCatalogue) -> bool:
        """Take one chunk; True when it completed a newer catalogue of its kind.

        DecodeError (the message is terminated, counted by the bus) for an impossible chunk.
        """
        if c.kind not in FEATURE_KINDS:
            raise DecodeError(f"catalogue of unknown kind {c.kind!r}", code="bad_catalogue")
        if not (1 <= c.chunks <= self.MAX_CHUNKS and 0 <= c.chunk < c.chunks):
            raise DecodeError(f"catalogue chunk {c.chunk} of {c.chunks}", code="bad_catalogue")
        held = self._kinds.get(c.kind)
        if held is not None:
            if c.version == held.version:  # the same content again: only fresher
                held.published_at = max(held.published_at, c.published_at)
                return False
            if c.published_at <= held.published_at:
                return False  # an older catalogue, replayed from the stream
        pending = self._pending.setdefault(c.kind, OrderedDict())
        assembly = pending.get(c.version)
        if assembly is None or assembly.chunks != c.chunks:
            assembly = pending[c.version] = _Assembly(c.chunks, c.published_at)
            while len(pending) > self.MAX_PENDING:
                pending.popitem(last=False)
        assembly.parts[c.chunk] = c.features
        assembly.published_at = max(assembly.published_at, c.published_at)
        if len(assembly.parts) < assembly.chunks:
            return False
        del pending[c.version]
        entries = {e.feature_id: e for i in range(assembly.chunks) for e in assembly.parts[i]}
        self._kinds[c.kind] = _HeldKind(c.version, assembly.published_at, entries)
        for version in [v for v, a in pending.items() if a.published_at <= assembly.published_at]:
            del pending[version]
        CATALOGUE_SIZE.labels(c.kind).set(len(entries))
        log.debug("feature catalogue of %s: %d features (version %s)", c.kind, len(entries),
                  c.version)
        if not self._announced and self.complete:
            self._announced = True
            log.info("feature catalogue from bigdata: %d features of %d kinds", len(self),
                     len(self._kinds))
        return True

    def readiness(self) -> tuple[bool, str]:
        """Ready once every kind arrived, or past the grace (feature states then get 503)."""
        if self.complete:
            newest = max(h.published_at for h in self._kinds.values())
            return True, (f"{len(self)} features of {len(self._kinds)} kinds, published "
                          f"{newest:%Y-%m-%dT%H:%M:%SZ}")
        missing = [k for k in FEATURE_KINDS if k not in self._kinds]
        waited = self._monotonic() - self._started
        return (waited >= self.READY_GRACE_S,
                f"loading: no catalogue from bigdata yet for {len(missing)} kinds "
                f"({', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}); feature "
                "states are answered 503 catalogue_loading")


class CatalogueFollower:
    """Keeps a :class:`FeatureCatalogueView` fed from the bus while the app runs.

    Every collector replica needs the whole catalogue: its own durable. It asks bigdata for the
    catalogue when it starts (a bus that does not retain messages, like the embedded one, would
    otherwise keep it waiting for the next periodic publication) and again every
    ``REQUEST_EVERY_S`` until every kind has arrived.
    """

    REQUEST_EVERY_S = 30.0

    def __init__(self, bus: EventBus, view: FeatureCatalogueView, *, clock: Clock,
                 replica_index: int = 0, replica_count: int = 1) -> None:
        self.bus = bus
        self.view = view
        self.clock = clock
        self.replica_index = replica_index
        self.durable = ("collector-catalogue" if replica_count <= 1
                        else f"collector-catalogue-{replica_index}")
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def request(self) -> None:
        """Ask bigdata to publish the catalogue (BusError when the bus does not take it)."""
        await self.bus.publish(FEATURE_CATALOGUE_REQUEST, CatalogueRequest(
            requested_by=f"collector-{self.replica_index}", requested_at=self.clock.now()))

    async def _keep_asking(self) -> None:
        while not self.view.complete:
            try:
                await self.request()
            except BusError as exc:
                log.info("feature catalogue request not sent (%s); retrying", exc.message)
            await self.clock.sleep(self.REQUEST_EVERY_S)

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx`` entry: subscribe, ask, stop on the way out."""
        self._sub = await self.bus.subscribe(FEATURE_CATALOGUE, self.view.on_catalogue,
                                             durable=self.durable)
        self._task = asyncio.create_task(self._keep_asking(), name="collector-catalogue")
        try:
            yield
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self._sub.stop()


# ---- checking a state -----------------------------------------------------------------------


def check_state(state: FeatureState, catalogue: FeatureCatalogueView | None
                ) -> tuple[FeatureState, bool]:
    """The state with its values as they may be stored, and whether the catalogue vouched for
    the feature; InvalidRecord ``unknown_feature``, ``implausible_value`` or ``bad_type``.

    Without the catalogue of the state's kind only the values are checked (without bounds).
    """
    entry = None
    known = catalogue is not None and catalogue.loaded(state.kind)
    if known and catalogue is not None:
        entry = catalogue.find(state.kind, state.feature_id)
        if entry is None:
            raise InvalidRecord("unknown_feature", f"the geodatabase has no {state.kind} "
                                f"{state.feature_id!r}")
    try:
        values = check_live_values(state.kind, state.values,
                                   bounds={"capacity": entry.capacity} if entry else None)
    except LiveValueError as exc:
        raise InvalidRecord(exc.code, exc.message) from exc
    return dataclasses.replace(state, values=values), known


class OncePerSensorLog:
    """Logs a sensor's refused states once per (kind, feature id), not once per message.

    A misconfigured sensor sending every second logs one WARNING (never ERROR: the mistake is
    the sender's) and, once it sends a good state again, one INFO line saying so. At most
    ``max_keys`` sensors are remembered (the oldest forgotten first).
    """

    def __init__(self, logger: logging.Logger, *, max_keys: int = 10_000) -> None:
        self.logger = logger
        self.max_keys = max_keys
        self._failing: OrderedDict[tuple[str, str], int] = OrderedDict()

    def refused(self, kind: str, feature_id: str, code: str, message: str, where: str) -> bool:
        """Note a refusal; True when it was logged (the first since the sensor was fine)."""
        key = (kind, feature_id)
        if key in self._failing:
            self._failing[key] += 1
            self._failing.move_to_end(key)
            return False
        self._failing[key] = 1
        while len(self._failing) > self.max_keys:
            self._failing.popitem(last=False)
        self.logger.warning("feature state refused on %s: %s: %s (logged once until it is "
                            "accepted again)", where, code, message,
                            extra={"kind": kind, "feature_id": feature_id, "code": code})
        return True

    def accepted(self, kind: str, feature_id: str) -> None:
        """The sensor sent a good state: log its recovery if it had been refused."""
        refused = self._failing.pop((kind, feature_id), 0)
        if refused:
            self.logger.info("feature state of %s/%s accepted again after %d refused",
                             kind, feature_id, refused)


# ---- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureStateIntake:
    """What the HTTP endpoint needs: the detectors' intake (bus, limits, tokens) and the
    catalogue."""

    intake: DetectorIntake
    catalogue: FeatureCatalogueView


def _refusal(code: str, message: str) -> TtiError:
    status = HTTP_STATUS.get(code, 400)
    if status == 404:
        return NotFound(message, code=code)
    err = BadRequest(message, code=code)
    err.http_status = status
    return err


async def _post_state(request: web.Request) -> web.Response:
    ctx = request.app[STATE_INTAKE]
    intake = ctx.intake
    kind = request.match_info["kind"]
    raw = await read_sensor_request(request, intake,
                                    lambda code: count_rejection("http", kind, code))
    try:
        state = parse_state(kind, request.match_info["feature_id"], load_json(raw),
                            now=intake.now())
        state, known = check_state(state, ctx.catalogue)
    except InvalidRecord as exc:
        count_rejection("http", kind, exc.code)
        raise _refusal(exc.code, exc.message) from exc
    if not known:
        # Closed by default: an id cannot be vouched for yet, so the sensor retries shortly.
        count_rejection("http", kind, "catalogue_loading")
        resp = json_error(503, "catalogue_loading", "the feature catalogue has not arrived "
                          f"from bigdata yet; retry in {RETRY_AFTER_S} s")
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp
    await publish_state(intake.bus, state)
    ACCEPTED.labels(state.kind).inc()
    return web.json_response({"accepted": 1}, status=202)


STATE_INTAKE = web.AppKey("feature_state_intake", FeatureStateIntake)


def add_feature_state_routes(app: web.Application, intake: DetectorIntake,
                             catalogue: FeatureCatalogueView) -> None:
    """``POST /api/v1/features/{kind}/{feature_id}/state``, with the detectors' limits, tokens,
    checked against ``catalogue``."""
    app[STATE_INTAKE] = FeatureStateIntake(intake, catalogue)
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
            "400": err("malformed body or a value of the wrong type (nothing published)"),
            "401": err("sensor token missing or wrong"),
            "404": err("unknown_feature: the geodatabase has no such feature of this kind"),
            "413": err("body too large"),
            "415": err("not JSON"),
            "422": err("implausible_value: an impossible value (e.g. negative or fractional "
                       "free_spaces, more than the capacity), with the reason"),
            "503": err("catalogue_loading (the collector just started; see Retry-After) or "
                       "bus_error (the bus did not take it); retry"),
        }}}}
