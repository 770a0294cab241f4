"""Every event type on the bus, each tied to its subject by a typed constant.

Payloads are frozen, slotted, keyword-only dataclasses. Times are aware UTC datetimes, speeds
km/h, distances metres. Per-vehicle subjects are partitioned: the wire subject is
``<name>.<p>`` with ``p = crc32(vehicle_id) mod P`` (see :func:`partition_of`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

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
    """Congestion level of a segment (GB/T 33171 levels 1-5), as the warning service judges it."""

    segment_id: str
    level: int | None
    level_name: str | None
    speed_kmh: float | None
    free_flow_kmh: float | None
    observed_at: datetime
    sample_count: int
    source: str
    tpi: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Warning:
    """A warning for police, departments and citizens; the same id moves through its lifecycle."""

    warning_id: str
    kind: str
    severity: str
    status: str
    segment_id: str | None
    started_at: datetime
    updated_at: datetime
    headline: str
    description: str = ""
    level: int | None = None
    speed_kmh: float | None = None
    lon: float | None = None
    lat: float | None = None
    details: dict[str, object] = field(default_factory=dict)


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


VEHICLE_POSITION: Subject[VehiclePosition] = Subject("tti.position", VehiclePosition, True)
TERMINAL_ALARM: Subject[TerminalAlarm] = Subject("tti.alarm", TerminalAlarm, True)
SEGMENT_SPEED: Subject[SegmentSpeed] = Subject("tti.segment.speed", SegmentSpeed)
ROAD_STATUS: Subject[RoadStatus] = Subject("tti.road.status", RoadStatus)
WARNING: Subject[Warning] = Subject("tti.warning", Warning)
DETECTOR_READING: Subject[DetectorReading] = Subject("tti.detector.reading", DetectorReading)
DETECTED_EVENT: Subject[DetectedEvent] = Subject("tti.detector.event", DetectedEvent)
FEATURE_STATE: Subject[FeatureState] = Subject("tti.feature.state", FeatureState)
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
    stops and ignition-off time, left out of the speed.
    """

    segment_id: str
    bucket: int
    window_s: float
    moving: dict[str, Any]
    stopped: dict[str, Any]
    parked: dict[str, Any]
    excluded_ms: int = 0


# Partitioned by segment id (not vehicle): every share of a segment reaches the one replica that
# owns the segment's partition, which merges them.
SEGMENT_SPEED_PARTIAL: Subject[SegmentSpeedPartial] = Subject(
    "tti.segment.partial", SegmentSpeedPartial, partitioned=True)


ALL_SUBJECTS: tuple[Subject[Any], ...] = (
    VEHICLE_POSITION,
    TERMINAL_ALARM,
    SEGMENT_SPEED,
    ROAD_STATUS,
    WARNING,
    DETECTOR_READING,
    DETECTED_EVENT,
    FEATURE_STATE,
    BUS_ARRIVAL,
    ARRIVAL_PREDICTION,
    SEGMENT_SPEED_PARTIAL,
)
