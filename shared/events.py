"""Every event type on the bus, each tied to its subject by a typed constant.

Payloads are frozen, slotted, keyword-only dataclasses. Times are aware UTC datetimes, speeds
km/h, distances metres. Per-vehicle subjects are partitioned: the wire subject is
``<name>.<p>`` with ``p = crc32(vehicle_id) mod P`` (see :func:`partition_of`).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Generic, TypeVar

_BEIJING = timezone(timedelta(hours=8))

T = TypeVar("T")

VEHICLE_CLASSES = ("coach", "tourist_bus", "dangerous_goods", "bus", "taxi", "other")
"""Vehicle classes of the registry; JT/T 808 registration carries none, so unknown is ``other``."""

FEATURE_KINDS: tuple[str, ...] = (
    "bridge",
    "tunnel",
    "toll_station",
    "service_area",
    "bus_stop",
    "bus_station",
    "rail_station",
    "coach_station",
    "port",
    "waterway",
    "parking",
    "scenic_spot",
    "hotel",
    "weather_station",
    "detector",
)
"""Every feature kind of the traffic geodatabase (bigdata owns it; the collector takes their live
state)."""

SPEED_SOURCES = ("probe", "detector", "probe+detector", "profile", "none")
"""Where a live road value comes from (DESIGN.md road status record); ``probe+detector`` fuses
probe vehicles with roadside detectors on the same segment and window."""


@dataclass(frozen=True, slots=True)
class Subject(Generic[T]):
    """A bus subject and the payload type it carries."""

    name: str
    payload_type: type[T]
    partitioned: bool = False


def partition_of(key: str, partitions: int) -> int:
    """The partition of a per-vehicle key: crc32(key) mod ``partitions``."""
    return zlib.crc32(key.encode()) % partitions


@dataclass(frozen=True, slots=True, kw_only=True)
class VehiclePosition:
    """One position of one vehicle, whatever its source (JT/T 808, GTFS-rt, simulator)."""

    vehicle_id: str
    lon: float
    lat: float
    observed_at: datetime
    speed_kmh: float | None = None
    heading_deg: float | None = None
    vehicle_class: str = "other"
    source: str = "jt808"
    alarm: int = 0
    status: int = 0
    trip_id: str | None = None
    route_id: str | None = None
    occupancy: str | None = None
    # Passengers in percent of the vehicle's capacity, seated and standing (GTFS-rt
    # occupancy_percentage: may exceed 100 in a crush).
    occupancy_pct: float | None = None
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalAlarm:
    """Alarm bits a terminal raised in a location report (emergency/SOS first)."""

    vehicle_id: str
    lon: float
    lat: float
    observed_at: datetime
    alarms: tuple[str, ...]
    alarm_bits: int
    vehicle_class: str = "other"


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentSpeed:
    """Space-mean speed on one directed segment over one window."""

    segment_id: str
    window_start: datetime
    observed_at: datetime
    speed_kmh: float | None
    sample_count: int
    source: str = "probe"
    confidence: float = 0.0
    free_flow_kmh: float | None = None
    road_class: str | None = None
    road_name: str | None = None
    lon: float | None = None
    lat: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoadStatus:
    """Congestion level of a segment (GB/T 33171 levels 1-5), as the warning service grades it.

    ``source`` ``profile``: no fresh live value, so the segment's usual speed at this time of
    the week stands in (``sample_count`` 0, ``observed_at`` the start of the profile's bucket);
    ``none``: neither, and the level is None. ``level_name`` / ``level_name_en`` come from
    :mod:`shared.levels`, the one vocabulary; channels render them as sent.
    """

    segment_id: str
    level: int | None
    level_name: str | None
    speed_kmh: float | None
    free_flow_kmh: float | None
    observed_at: datetime
    sample_count: int
    source: str
    tpi: float | None = None
    level_name_en: str | None = None


class WarningKind(StrEnum):
    """What a warning is about."""

    CONGESTION = "congestion"
    INCIDENT = "incident"
    VEHICLE_ALARM = "vehicle_alarm"
    CLOSURE = "closure"
    WEATHER = "weather"


class WarningStatus(StrEnum):
    """Where a warning is in its lifecycle (the departments' workflow; not CAP's vocabulary).

    ``raised`` → ``updated`` (as its facts change) → ``acknowledged`` / ``assigned`` by a
    department → ``resolved`` (the condition is over), then ``closed`` by a department;
    ``cancelled``: it should not have been raised.
    """

    RAISED = "raised"
    UPDATED = "updated"
    ACKNOWLEDGED = "acknowledged"
    ASSIGNED = "assigned"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELLED = "cancelled"

    @property
    def is_active(self) -> bool:
        """Whether the condition is still going on (raised, updated, acknowledged, assigned)."""
        return self not in _OVER


_OVER = frozenset({WarningStatus.RESOLVED, WarningStatus.CLOSED, WarningStatus.CANCELLED})


class CapCategory(StrEnum):
    """OASIS CAP 1.2 ``category``."""

    GEO = "Geo"
    MET = "Met"
    SAFETY = "Safety"
    SECURITY = "Security"
    RESCUE = "Rescue"
    FIRE = "Fire"
    HEALTH = "Health"
    ENV = "Env"
    TRANSPORT = "Transport"
    INFRA = "Infra"
    CBRNE = "CBRNE"
    OTHER = "Other"


class CapSeverity(StrEnum):
    """OASIS CAP 1.2 ``severity``."""

    EXTREME = "Extreme"
    SEVERE = "Severe"
    MODERATE = "Moderate"
    MINOR = "Minor"
    UNKNOWN = "Unknown"


class CapUrgency(StrEnum):
    """OASIS CAP 1.2 ``urgency``."""

    IMMEDIATE = "Immediate"
    EXPECTED = "Expected"
    FUTURE = "Future"
    PAST = "Past"
    UNKNOWN = "Unknown"


class CapCertainty(StrEnum):
    """OASIS CAP 1.2 ``certainty``."""

    OBSERVED = "Observed"
    LIKELY = "Likely"
    POSSIBLE = "Possible"
    UNLIKELY = "Unlikely"
    UNKNOWN = "Unknown"


class CapMsgType(StrEnum):
    """OASIS CAP 1.2 ``msgType``: the first message is an Alert, later ones Update or Cancel."""

    ALERT = "Alert"
    UPDATE = "Update"
    CANCEL = "Cancel"
    ACK = "Ack"
    ERROR = "Error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Area:
    """Where a warning applies (CAP ``area``): a polygon, a circle, or both.

    ``polygon`` is a closed ring of (lon, lat) pairs (first = last, WGS-84); ``circle`` is
    (lon, lat, radius_m).
    """

    description: str
    polygon: tuple[tuple[float, float], ...] = ()
    circle: tuple[float, float, float] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Detour:
    """The fastest way around what a warning blocks, between the roads before and after it."""

    segment_ids: tuple[str, ...]
    travel_time_s: float
    length_m: float
    usual_travel_time_s: float
    """The same trip through the blocked stretch at its free-flow travel time."""
    coords: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Impact:
    """Who a warning affects: bus routes through it, and trips it slows down.

    Over a fixed sample of origin–destination pairs, ``trips_affected`` counts those whose
    fastest travel time rises by more than 20 % and more than 2 min with the blocked segments
    closed (``trips_sampled`` pairs were tried).
    """

    bus_routes: tuple[str, ...]
    trips_sampled: int
    trips_affected: int
    max_delay_s: float
    computed_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Warning:
    """A warning for police, departments and citizens; the same id moves through its lifecycle.

    ``warning_id`` is deterministic from what the warning is about (kind, where, when it began),
    so a redelivered or replayed event never makes a second one. ``version`` counts the changes
    the stream decided (1 for the Alert), so every replica numbers them alike; the detour and
    impact, computed beside the stream, arrive as a second message of the version they describe.
    CAP 1.2's vocabulary rides along as typed values; the lifecycle ``status`` is kept apart
    from it. ``headline`` and ``description`` are rewritten at every update so they stay true
    (Chinese, with ``*_en`` English versions).
    """

    warning_id: str
    kind: WarningKind
    status: WarningStatus
    category: CapCategory
    severity: CapSeverity
    urgency: CapUrgency
    certainty: CapCertainty
    msg_type: CapMsgType
    started_at: datetime
    updated_at: datetime
    headline: str
    cause: str
    segment_ids: tuple[str, ...] = ()
    area: Area | None = None
    expected_end: datetime | None = None
    ended_at: datetime | None = None
    headline_en: str = ""
    description: str = ""
    description_en: str = ""
    road_names: tuple[str, ...] = ()
    level: int | None = None
    speed_kmh: float | None = None
    lon: float | None = None
    lat: float | None = None
    version: int = 1
    detour: Detour | None = None
    impact: Impact | None = None
    details: dict[str, object] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether the condition is still going on."""
        return self.status.is_active


INCIDENT_STATUSES = ("suspected", "confirmed", "cleared")
"""An incident is ``suspected`` on one source, ``confirmed`` by a second or by a reliable one,
``cleared`` when its source says it is over."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    """A traffic incident the warning service knows of (GB/T 29100 event classes).

    ``kind`` is one of :data:`DETECTED_EVENT_KINDS`; ``sources`` name what reported it
    (``detector:<id>``, ``citizen:<report id>`` …). The same ``incident_id`` follows it.
    """

    incident_id: str
    kind: str
    status: str
    detected_at: datetime
    updated_at: datetime
    lon: float | None = None
    lat: float | None = None
    segment_ids: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    confidence: float | None = None
    lane: int | None = None
    description: str = ""
    warning_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AreaIndex:
    """Traffic performance index (GB/T 33171, 0-10) of an area over one window.

    The index of an area is the vehicle-kilometre-weighted mean of its segments' TPI (length ×
    vehicles seen, length alone for a profile value). ``area_id`` ``network`` is the whole road
    network, ``group:<expressway|arterial|minor>`` a road group, ``cell:<x>:<y>`` a square of
    the grid the warning README describes, ``bridge:w<way>`` / ``tunnel:w<way>`` one bridge or
    tunnel (both directions), ``district:<id>`` and ``corridor:<id>`` districts and corridors
    of the configuration or the map's administrative boundaries; ``bbox`` is its extent.
    ``name`` is the Chinese name (or the only one known), ``name_en`` the English one.
    """

    area_id: str
    name: str
    name_en: str | None = None
    observed_at: datetime
    tpi: float | None
    level: int | None
    level_name: str | None
    level_name_en: str | None
    speed_kmh: float | None
    congested_share: float
    """Share of the measured length at level 4 or 5."""
    segment_count: int
    measured_count: int
    bbox: tuple[float, float, float, float] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentForecast:
    """Expected state of a segment ``horizon_s`` ahead (``valid_at``), said at ``made_at``."""

    segment_id: str
    made_at: datetime
    valid_at: datetime
    horizon_s: float
    speed_kmh: float | None
    level: int | None
    level_name: str | None
    level_name_en: str | None
    source: str
    """``live+profile`` (today's deviation from the time-of-week profile carried over, decaying
    toward the profile), ``live+trend`` (no profile: the recent trend, damped toward the
    segment's recent mean)."""


CITIZEN_REPORT_CHANNELS = ("app", "web", "wechat", "weibo", "hotline_12328", "hotline_12122")
CITIZEN_REPORT_KINDS = ("congestion", "accident", "road_damage", "closure", "bus", "complaint",
                        "suggestion", "enquiry", "help", "other")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportPhoto:
    """A photo attached to a citizen report: too large for the bus, so it is referenced.

    ``url`` is where the publisher that took it serves it; ``sha256`` (hex) its content,
    ``content_type`` ``image/jpeg`` or ``image/png`` as checked from the bytes themselves.
    """

    url: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None


REPORT_STATUSES = {
    "received": ("已受理", "received"),
    "reviewing": ("核查中", "being checked"),
    "confirmed": ("已核实", "confirmed"),
    "resolved": ("已办结", "resolved"),
    "rejected": ("不予采纳", "not taken up"),
}
"""A citizen report's (or hotline ticket's) status, owned by the warning service: its Chinese
and English names. ``resolved`` and ``rejected`` are final."""

REPORT_STATUS_NEXT = {
    "received": frozenset({"reviewing", "confirmed", "resolved", "rejected"}),
    "reviewing": frozenset({"confirmed", "resolved", "rejected"}),
    "confirmed": frozenset({"resolved"}),
    "resolved": frozenset(),
    "rejected": frozenset(),
}
"""The statuses a report may move on to from each (never back)."""


def report_id_for(channel: str, message_id: str | None) -> str:
    """A report's id: from the channel's own message id (a resend is the same report, on any
    replica, any day), else new."""
    if not message_id:
        return f"{channel}-{uuid.uuid4().hex[:24]}"
    return f"{channel}-" + hashlib.sha256(f"{channel}\x00{message_id}".encode()).hexdigest()[:24]


def report_number(report_id: str, reported_at: datetime) -> str:
    """The number a citizen quotes: Beijing date and six characters of the report id's hash.

    Computed alike by the publisher that takes a report and the warning service that owns it.
    """
    code = base64.b32encode(hashlib.sha256(report_id.encode()).digest()[:5]).decode()[:6]
    return f"{reported_at.astimezone(_BEIJING):%Y%m%d}-{code}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CitizenReport:
    """A report from a citizen or a hotline agent, accepted by the publisher.

    The warning service owns reports: it stores and numbers them and answers their status.
    ``report_id`` is deterministic from the channel and the channel's own message id, so a
    resent report is one report. ``reported_at`` is when it was submitted, ``occurred_at`` when
    the reporter says it happened (if they said).
    """

    report_id: str
    channel: str
    kind: str
    reported_at: datetime
    text: str = ""
    lon: float | None = None
    lat: float | None = None
    segment_id: str | None = None
    contact: str | None = None
    details: dict[str, object] = field(default_factory=dict)
    occurred_at: datetime | None = None
    photo: ReportPhoto | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorReading:
    """Aggregated traffic measured by a roadside detector or camera over one interval.

    ``lane`` None means all lanes together. Counts are vehicles per interval, occupancy in
    percent of the interval, queue length in metres.
    """

    detector_id: str
    observed_at: datetime
    interval_s: float
    lane: int | None = None
    vehicle_count: int | None = None
    mean_speed_kmh: float | None = None
    occupancy_pct: float | None = None
    queue_length_m: float | None = None
    source: str = "http"


DETECTED_EVENT_KINDS = ("stopped_vehicle", "accident", "wrong_way", "congestion", "fog", "ice",
                        "water", "fire", "pedestrian", "debris", "other")
"""Kinds of events a camera or sensor reports (after GB/T 29100 event classes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectedEvent:
    """An event a camera or sensor detected (stopped vehicle, accident, fog, ice …)."""

    detector_id: str
    event_id: str
    kind: str
    observed_at: datetime
    status: str = "active"
    confidence: float | None = None
    lane: int | None = None
    description: str = ""
    source: str = "http"
    details: dict[str, object] = field(default_factory=dict)


BUS_STOP_EVENT_KINDS = ("arrival", "departure")
"""Kinds of :class:`BusArrival`: the bus reached the stop, or left it."""

PREDICTION_SOURCES = ("live", "schedule")
"""Where an arrival time comes from: a tracked vehicle, or the timetable alone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BusArrival:
    """A bus arrived at or departed from a stop of its trip, detected from its positions.

    ``observed_at`` is the estimated instant (UTC) of the arrival or departure, interpolated
    between the two positions bracketing it; ``uncertainty_s`` is the time between them. A bus
    that passed a stop between two positions yields an arrival and a departure at about the same
    time (``dwell_s`` 0). ``start_date`` (``YYYYMMDD``, the GTFS service day) and, for
    frequency-based trips, ``start_time`` identify the trip instance as in GTFS-realtime.
    """

    vehicle_id: str
    kind: str
    trip_id: str
    route_id: str
    stop_id: str
    stop_sequence: int
    observed_at: datetime
    start_date: str | None = None
    start_time: str | None = None
    direction_id: int | None = None
    scheduled_at: datetime | None = None
    delay_s: float | None = None
    dwell_s: float | None = None
    uncertainty_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalPrediction:
    """When a bus is expected at a downstream stop of its trip (UTC), and when that was said.

    Published for tracked vehicles (``source`` ``live``) when the time moved by more than a few
    seconds, and refreshed about once a minute otherwise; a prediction not refreshed for a few
    minutes is stale. The newest prediction for a (trip instance, stop) replaces older ones.
    ``predicted_arrival`` is what riders should be told: the expected arrival shaded a little
    early (30-90 s, more the further ahead), since a bus earlier than announced is missed.
    """

    trip_id: str
    route_id: str
    stop_id: str
    stop_sequence: int
    vehicle_id: str | None
    predicted_arrival: datetime
    made_at: datetime
    source: str = "live"
    start_date: str | None = None
    start_time: str | None = None
    direction_id: int | None = None
    scheduled_arrival: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureState:
    """Live state of a geodatabase feature, from its operator or a sensor.

    A parking lot's ``free_spaces``, a weather station's ``temperature_c`` or ``visibility_m``, a
    toll station's or tunnel's ``status``. ``values`` are merged into the feature's live state
    (a None value deletes that key); ``observed_at`` is when they were true.
    """

    kind: str
    feature_id: str
    observed_at: datetime
    values: dict[str, Any]
    source: str = "http"


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogueEntry:
    """One feature the geodatabase holds, with the bounds its live values must keep.

    ``capacity``: a parking lot's number of spaces (``free_spaces`` may not exceed it), when
    known. The rules that use these bounds are :mod:`shared.feature_rules`.
    """

    feature_id: str
    capacity: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureCatalogue:
    """One chunk of the features of one kind, as bigdata (their owner) holds them.

    A kind's catalogue is ``chunks`` messages (chunk 0 … chunks-1, each well under JetStream's
    1 MB payload limit) sharing one ``version``, a digest of the kind's whole content. A kind
    with no feature is one chunk with none. The newest ``published_at`` wins: a replayed older
    catalogue never replaces a newer one.
    """

    kind: str
    version: str
    published_at: datetime
    chunk: int
    chunks: int
    features: tuple[CatalogueEntry, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogueRequest:
    """A consumer of the catalogue (a collector replica that just started) asks for it.

    Bigdata answers by publishing the whole catalogue again, unless it began a publication after
    ``requested_at`` (which the requester will receive anyway).
    """

    requested_by: str
    requested_at: datetime


SPEED_LIMIT_SOURCES = ("osm", "statutory", "none")
"""Where a segment's speed limit comes from: its OSM ``maxspeed``, the statutory default for its
kind of road (道路交通安全法实施条例 §45), or nowhere."""


TWO_PASSENGER_ONE_DANGER: frozenset[str] = frozenset({"coach", "tourist_bus", "dangerous_goods"})
"""两客一危 (long-distance and tourist coaches, dangerous-goods trucks): the vehicle classes bigdata
publishes as `MatchedPosition` and the warning service's safety rules watch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchedPosition:
    """One decided fix of a 两客一危 vehicle on its road, as bigdata's matcher placed it.

    Published on ``tti.position.matched.<p>`` (partitioned like positions) for coaches, tourist
    buses and dangerous-goods trucks only (`TWO_PASSENGER_ONE_DANGER`), so the warning service's
    rules never import the matcher. ``confidence`` (0-1) is how sure the matcher is of the road
    (the segment's OSM way in its direction: the posterior over every path through the fixes
    it had; low where an elevated road runs over its ground road, say); ``status`` the
    terminal's status bits (bit 0: ignition on). Times UTC, speeds km/h.

    ``lon``/``lat`` are where the matcher placed the fix on the segment, ``offset_m`` from the
    segment's start; ``speed_kmh``, ``heading_deg``, ``status`` and ``route_id`` are the fix's
    own as reported. A fix that matched no road (off the network: a yard, a service area's
    parking) is published too, so the rules see the vehicle's time go on: ``segment_id`` and
    ``road_class`` empty, ``speed_limit_kmh`` None with source ``none``, ``confidence`` 0, and
    the reported ``lon``/``lat``. Event id ``matched:<vehicle_id>:<observed_at ms>``, the same
    from whichever replica decides it.
    """

    vehicle_id: str
    vehicle_class: str
    observed_at: datetime
    lon: float
    lat: float
    segment_id: str
    offset_m: float
    road_class: str
    speed_limit_kmh: float | None
    speed_limit_source: str
    confidence: float
    speed_kmh: float | None = None
    heading_deg: float | None = None
    road_name: str | None = None
    bridge: bool = False
    tunnel: bool = False
    status: int = 0
    route_id: str | None = None


DRIVER_IDENTITY_STATES = ("card_in", "card_out")


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverIdentity:
    """A driver signing in or out on a terminal (JT/T 808 0x0702, IC card), for fatigue rules.

    ``driver_id`` is the qualification certificate number (从业资格证编码), the stable key of a
    driver across vehicles; ``id_card`` the 2019 layout's identity card number when sent.
    """

    vehicle_id: str
    observed_at: datetime
    state: str
    driver_id: str | None = None
    driver_name: str | None = None
    authority: str | None = None
    valid_until: str | None = None
    id_card: str | None = None
    ic_result: int | None = None


DEPARTMENT_ROLES = ("police", "transport", "safety", "hotline", "admin")
"""Roles of department users (who may see and act on what: services/warning/workflow)."""

WARNING_ACTIONS = ("raise", "ack", "assign", "note", "close", "cancel")
"""What a department user may do with a warning."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WarningAction:
    """A department user's action on a warning, applied by every warning replica in order.

    ``action_id`` is unique (the HTTP request's); ``raise`` carries the new warning's facts in
    ``details`` (kind, headline, segments, area …) and ``warning_id`` is derived from the
    ``action_id``, so every replica makes the same warning.
    """

    action_id: str
    action: str
    warning_id: str
    user: str
    role: str
    at: datetime
    note: str = ""
    assignee: str | None = None
    address: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


VEHICLE_POSITION: Subject[VehiclePosition] = Subject("tti.position", VehiclePosition, True)
TERMINAL_ALARM: Subject[TerminalAlarm] = Subject("tti.alarm", TerminalAlarm, True)
SEGMENT_SPEED: Subject[SegmentSpeed] = Subject("tti.segment.speed", SegmentSpeed)
ROAD_STATUS: Subject[RoadStatus] = Subject("tti.road.status", RoadStatus)
WARNING: Subject[Warning] = Subject("tti.warning", Warning)
INCIDENT: Subject[Incident] = Subject("tti.incident", Incident)
AREA_INDEX: Subject[AreaIndex] = Subject("tti.area.index", AreaIndex)
FORECAST: Subject[SegmentForecast] = Subject("tti.forecast", SegmentForecast)
CITIZEN_REPORT: Subject[CitizenReport] = Subject("tti.citizen.report", CitizenReport)
WARNING_ACTION: Subject[WarningAction] = Subject("tti.warning.action", WarningAction)
MATCHED_POSITION: Subject[MatchedPosition] = Subject("tti.position.matched", MatchedPosition,
                                                     True)
DRIVER_IDENTITY: Subject[DriverIdentity] = Subject("tti.driver.identity", DriverIdentity, True)
DETECTOR_READING: Subject[DetectorReading] = Subject("tti.detector.reading", DetectorReading)
DETECTED_EVENT: Subject[DetectedEvent] = Subject("tti.detector.event", DetectedEvent)
FEATURE_STATE: Subject[FeatureState] = Subject("tti.feature.state", FeatureState)
FEATURE_CATALOGUE: Subject[FeatureCatalogue] = Subject("tti.feature.catalogue",
                                                      FeatureCatalogue)
FEATURE_CATALOGUE_REQUEST: Subject[CatalogueRequest] = Subject("tti.feature.catalogue_request",
                                                               CatalogueRequest)
# Per-vehicle like positions: partitioned by vehicle id, so each replica publishes what its own
# share of vehicles did, in order, and consumers can scale out the same way.
BUS_ARRIVAL: Subject[BusArrival] = Subject("tti.bus.arrival", BusArrival, True)
ARRIVAL_PREDICTION: Subject[ArrivalPrediction] = Subject("tti.bus.prediction", ArrivalPrediction,
                                                         True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentSpeedPartial:
    """One bigdata replica's share of one segment × speed window, for the replica that merges it.

    Vehicles are partitioned across bigdata replicas, so each sees part of every segment's
    traffic; the replica owning the segment's partition merges every share and publishes the
    `SegmentSpeed`. ``bucket`` numbers the window (it starts at ``bucket × window_s`` epoch
    seconds). ``moving``, ``stopped`` and ``parked`` are ``{"mm": int, "ms": int, "vehicles":
    [int, …]}``: distance driven (millimetres), time (milliseconds) and 64-bit vehicle keys of
    that motion class, integers so that merging shares is exact; ``excluded_ms`` is dwell at bus
    stops and ignition-off time, left out of the speed; ``queued`` (same form) is standing in
    the approach to the segment's end (a red light, a queue), counted as travel time — None
    from a replica that predates it.
    """

    segment_id: str
    bucket: int
    window_s: float
    moving: dict[str, Any]
    stopped: dict[str, Any]
    parked: dict[str, Any]
    excluded_ms: int = 0
    queued: dict[str, Any] | None = None


# Partitioned by segment id (not vehicle): every share of a segment reaches the one replica that
# owns the segment's partition, which merges them.
SEGMENT_SPEED_PARTIAL: Subject[SegmentSpeedPartial] = Subject(
    "tti.segment.partial", SegmentSpeedPartial, partitioned=True)


COMMAND_KINDS = ("text", "position_query", "alarm_confirm")
"""Platform → terminal commands: 0x8300 text, 0x8201 position query, 0x8203 alarm confirmation."""

COMMAND_STATUSES = ("sent", "acknowledged", "failed", "unsupported", "expired",
                    "offline_waiting")
"""What became of a command (``CommandOutcome.status``)."""

TEXT_FLAGS = ("emergency", "display", "tts", "ad_screen", "can_info")
"""0x8300 flags a text command may carry (``TerminalCommand.flags``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalCommand:
    """A command for one vehicle's JT/T 808 terminal; the collector replica holding the
    terminal's connection sends it.

    ``command_id`` is unique and deterministic from the caller (e.g. derived from the warning
    id), so a redelivered or republished command is sent once. ``text`` and ``flags`` (of
    :data:`TEXT_FLAGS`) and ``text_type`` (2019: 1 notice, 2 service) are for ``text``;
    ``alarm_serial`` (the alarm report's serial, 0 = every one) and ``alarm_type`` (the alarm
    bits) for ``alarm_confirm``. After ``expires_at`` it is not sent any more. ``correlation``
    names what it belongs to (the warning id), for whoever follows the outcomes.
    """

    command_id: str
    vehicle_id: str
    kind: str
    requested_at: datetime
    expires_at: datetime
    requested_by: str
    text: str = ""
    flags: tuple[str, ...] = ()
    text_type: int = 1
    alarm_serial: int = 0
    alarm_type: int = 0
    correlation: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandOutcome:
    """What became of a :class:`TerminalCommand`, one event per step.

    ``status``: ``offline_waiting`` (no session: queued until the terminal authenticates),
    ``sent`` (written to the terminal), ``acknowledged`` (the terminal's 0x0001 result 0, or
    its 0x0201 answer), ``failed`` (result 1/2, no reply within the timeout, connection lost,
    queue full…), ``unsupported`` (result 3, or a command the platform cannot build),
    ``expired`` (``expires_at`` passed before it could be sent). ``result`` is the terminal's
    0x0001 result code and ``result_text`` its meaning; ``position`` the place a 0x0201
    reported. ``replica`` is the collector replica that decided, ``detail`` says why.
    """

    command_id: str
    vehicle_id: str
    kind: str
    status: str
    at: datetime
    replica: int
    detail: str = ""
    result: int | None = None
    result_text: str = ""
    position: VehiclePosition | None = None
    correlation: str = ""


# Partitioned by vehicle: the collector replica owning a partition routes its commands, and an
# alarm's owner (same partition of the same vehicle) follows the outcomes of its own.
TERMINAL_COMMAND: Subject[TerminalCommand] = Subject("tti.terminal.command", TerminalCommand,
                                                     True)
COMMAND_OUTCOME: Subject[CommandOutcome] = Subject("tti.terminal.command.outcome",
                                                   CommandOutcome, True)


ALL_SUBJECTS: tuple[Subject[Any], ...] = (
    VEHICLE_POSITION,
    TERMINAL_ALARM,
    SEGMENT_SPEED,
    ROAD_STATUS,
    WARNING,
    INCIDENT,
    AREA_INDEX,
    FORECAST,
    CITIZEN_REPORT,
    WARNING_ACTION,
    MATCHED_POSITION,
    DRIVER_IDENTITY,
    DETECTOR_READING,
    DETECTED_EVENT,
    FEATURE_STATE,
    FEATURE_CATALOGUE,
    FEATURE_CATALOGUE_REQUEST,
    BUS_ARRIVAL,
    ARRIVAL_PREDICTION,
    SEGMENT_SPEED_PARTIAL,
    TERMINAL_COMMAND,
    COMMAND_OUTCOME,
)
