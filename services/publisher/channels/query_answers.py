"""The typed answers of the text-query resolver (:mod:`services.publisher.channels.query`).

Frozen dataclasses with the data a channel needs to word an answer — names, minutes,
occupancy, level names, ages — and no wording of their own. Each has a ``kind`` (a class
attribute) naming it for JSON and logs. Times are UTC, distances metres, speeds km/h.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One bus expected at a stop: ``live`` (a tracked bus) or ``schedule`` (the timetable)."""

    route_id: str | None
    route_short_name: str | None
    headsign: str | None
    stop_id: str | None
    minutes: int
    arrival_at: datetime
    source: str
    delay_s: float | None
    occupancy: str | None
    """GTFS-rt OccupancyStatus name (``FEW_SEATS_AVAILABLE`` …), None when not said."""
    occupancy_pct: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StopArrivals:
    """A stop's next arrivals (all routes; every platform of that name nearby)."""

    kind: ClassVar[str] = "stop_arrivals"
    stop_name: str
    stop_name_en: str | None
    stop_ids: tuple[str, ...]
    lon: float
    lat: float
    arrivals: tuple[Arrival, ...]
    timetable: str
    """``included``, ``none`` (no timetable here) or ``unavailable`` (bigdata did not answer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveBus:
    """A route's live bus and where it goes next."""

    label: str
    direction_id: int | None
    next_stop_name: str | None
    next_stop_minutes: int | None
    speed_kmh: float | None
    occupancy: str | None
    occupancy_pct: float | None
    age_s: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteArrivals:
    """A bus route: its next arrivals at the stop asked about (``stop_name`` set), or its live
    buses and their next stops (no stop named)."""

    kind: ClassVar[str] = "route_arrivals"
    route_id: str
    route_short_name: str
    long_name: str | None
    stop_name: str | None
    stop_ids: tuple[str, ...]
    arrivals: tuple[Arrival, ...]
    buses: tuple[LiveBus, ...]
    timetable: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelReading:
    """A congestion level as the warning service graded it, with a speed."""

    level: int
    level_name: str
    level_name_en: str
    speed_kmh: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WarningBrief:
    """A public warning in force, as much as a spoken or short answer needs."""

    warning_id: str
    kind: str
    severity: str
    headline: str
    headline_en: str
    started_at: datetime
    level: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoadStatusAnswer:
    """A named road, bridge or tunnel, aggregated over its segments.

    ``worst`` is the most congested segment (the jam a driver meets), ``typical`` the level of
    half its measured length and its space-mean speed; both None when no segment has data.
    ``source`` is ``live`` when any segment has a live value, ``profile`` when all are usual
    speeds for the time of week, ``none`` without data.
    """

    kind: ClassVar[str] = "road_status"
    name: str
    name_en: str | None
    road_class: str
    bridge: bool
    tunnel: bool
    segment_count: int
    measured_count: int
    length_m: float
    congested_length_m: float
    worst: LevelReading | None
    typical: LevelReading | None
    source: str
    observed_at: datetime | None
    age_s: int | None
    warnings: tuple[WarningBrief, ...]
    warnings_more: int
    distance_m: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CarPark:
    """A car park near the place asked about."""

    name: str | None
    name_en: str | None
    distance_m: float
    capacity: int | None
    free_spaces: int | None
    age_s: int | None
    """How old the free-spaces figure is; None when there is no figure (or it is over 1 h)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ParkingAnswer:
    """Car parks near a place (``place_name``) or the sender's location (no name)."""

    kind: ClassVar[str] = "parking"
    place_name: str | None
    lon: float
    lat: float
    radius_m: float
    car_parks: tuple[CarPark, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AreaReading:
    """The traffic performance index (0-10) of the network or one area."""

    area_id: str
    name: str
    tpi: float | None
    level: int | None
    level_name: str | None
    level_name_en: str | None
    speed_kmh: float | None
    congested_share: float


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexAnswer:
    """The network's traffic index and its areas' (most congested first)."""

    kind: ClassVar[str] = "index"
    network: AreaReading | None
    areas: tuple[AreaReading, ...]
    observed_at: datetime | None
    age_s: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NearbyAnswer:
    """The roads and car parks around a point (or a named place)."""

    kind: ClassVar[str] = "nearby"
    place_name: str | None
    lon: float
    lat: float
    roads: tuple[RoadStatusAnswer, ...]
    car_parks: tuple[CarPark, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One of several equally good matches."""

    kind: str
    """``road``, ``stop``, ``route`` or ``place``."""
    name: str
    name_en: str | None
    detail: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ambiguous:
    """Several names match the text equally well: the sender should pick one."""

    kind: ClassVar[str] = "ambiguous"
    text: str
    candidates: tuple[Candidate, ...]


NOT_UNDERSTOOD_REASONS = ("empty", "too_long", "no_match", "unknown_route", "unknown_stop",
                          "needs_location")


@dataclass(frozen=True, slots=True, kw_only=True)
class NotUnderstood:
    """The text could not be answered: why (:data:`NOT_UNDERSTOOD_REASONS`), what part was not
    known (``subject``), and example queries from this region's own data."""

    kind: ClassVar[str] = "not_understood"
    text: str
    reason: str
    subject: str | None
    examples: tuple[str, ...]


QueryAnswer = (StopArrivals | RouteArrivals | RoadStatusAnswer | ParkingAnswer | IndexAnswer
               | NearbyAnswer | Ambiguous | NotUnderstood)
