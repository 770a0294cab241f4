"""GTFS static records as the geodatabase stores and returns them.

Every row belongs to a feed (``feed_id``, by default the file's stem): several feeds can live side
by side, and re-importing a feed replaces only its own rows. Times of day are seconds after the
service day's noon minus 12 h, as GTFS defines them, so a trip running past midnight has times
above 86,400 (``25:10:00`` → 90,600); ``None`` where the feed leaves an intermediate stop untimed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from services.bigdata.store.features import Feature

GTFS_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "gtfs_agencies": ("agency_id", "agency_name", "agency_url", "agency_timezone",
                      "agency_lang", "agency_phone"),
    "gtfs_routes": ("route_id", "agency_id", "route_short_name", "route_long_name",
                    "route_desc", "route_type", "route_color", "route_text_color",
                    "route_sort_order"),
    "gtfs_stops": ("stop_id", "stop_code", "stop_name", "stop_name_en", "stop_desc",
                   "stop_lat", "stop_lon", "zone_id", "location_type", "parent_station",
                   "wheelchair_boarding", "platform_code"),
    "gtfs_trips": ("trip_id", "route_id", "service_id", "trip_headsign", "trip_short_name",
                   "direction_id", "block_id", "shape_id", "wheelchair_accessible"),
    "gtfs_stop_times": ("trip_id", "stop_sequence", "stop_id", "arrival_s", "departure_s",
                        "stop_headsign", "pickup_type", "drop_off_type", "shape_dist_traveled",
                        "timepoint"),
    "gtfs_calendar": ("service_id", "monday", "tuesday", "wednesday", "thursday", "friday",
                      "saturday", "sunday", "start_date", "end_date"),
    "gtfs_calendar_dates": ("service_id", "date", "exception_type"),
    "gtfs_frequencies": ("trip_id", "start_s", "end_s", "headway_s", "exact_times"),
}
"""Column order of the rows in :class:`GtfsData` (each table also has ``feed_id`` first)."""

GTFS_TABLES: tuple[str, ...] = (*GTFS_COLUMNS, "gtfs_shapes")
DATE_COLUMNS = frozenset({"start_date", "end_date", "date"})


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsData:
    """A validated feed ready to store: rows per table in :data:`GTFS_COLUMNS` order.

    ``shapes`` rows are ``(shape_id, coords, dist_traveled)`` with coords ``((lon, lat), ...)``
    and dist_traveled per point or None. ``stop_features`` are the stops as searchable features
    (``bus_stop``/``rail_station``, source ``gtfs:<feed_id>``).
    """

    feed_id: str
    source: str
    digest: str
    agency_timezone: str
    feed_info: Mapping[str, Any]
    warnings: Sequence[str]
    tables: Mapping[str, Sequence[tuple[Any, ...]]]
    shapes: Sequence[tuple[str, tuple[tuple[float, float], ...], tuple[float, ...] | None]]
    stop_features: Sequence[Feature] = ()

    def counts(self) -> dict[str, int]:
        """Rows per table (without the ``gtfs_`` prefix)."""
        out = {t.removeprefix("gtfs_"): len(rows) for t, rows in self.tables.items()}
        out["shapes"] = len(self.shapes)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsFeed:
    """An imported feed: where it came from, its time zone, row counts and import warnings."""

    feed_id: str
    source: str
    digest: str
    imported_at: datetime
    agency_timezone: str
    feed_info: Mapping[str, Any] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsRoute:
    """routes.txt row (route_type as in GTFS: 3 bus, 1 subway, 2 rail, 0 tram …)."""

    feed_id: str
    route_id: str
    agency_id: str | None
    short_name: str | None
    long_name: str | None
    desc: str | None
    route_type: int
    color: str | None
    text_color: str | None
    sort_order: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsStop:
    """stops.txt row; name_en from translations.txt when the feed has one."""

    feed_id: str
    stop_id: str
    code: str | None
    name: str | None
    name_en: str | None
    desc: str | None
    lat: float | None
    lon: float | None
    zone_id: str | None
    location_type: int
    parent_station: str | None
    wheelchair_boarding: int | None
    platform_code: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsTrip:
    """trips.txt row."""

    feed_id: str
    trip_id: str
    route_id: str
    service_id: str
    headsign: str | None
    short_name: str | None
    direction_id: int | None
    block_id: str | None
    shape_id: str | None
    wheelchair_accessible: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsStopTime:
    """stop_times.txt row; times in seconds of the service day (see module docstring)."""

    feed_id: str
    trip_id: str
    stop_sequence: int
    stop_id: str
    arrival_s: int | None
    departure_s: int | None
    stop_headsign: str | None
    pickup_type: int | None
    drop_off_type: int | None
    shape_dist_traveled: float | None
    timepoint: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsShape:
    """A shape as a line ``((lon, lat), ...)`` with shape_dist_traveled per point if given."""

    feed_id: str
    shape_id: str
    coords: tuple[tuple[float, float], ...]
    dist_traveled: tuple[float, ...] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsFrequency:
    """frequencies.txt row: a headway-based trip from start_s to end_s."""

    feed_id: str
    trip_id: str
    start_s: int
    end_s: int
    headway_s: int
    exact_times: int | None


def gtfs_time(seconds: int | None) -> str | None:
    """Seconds of the service day → ``HH:MM:SS`` (hours may exceed 23)."""
    if seconds is None:
        return None
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


WEEKDAY_COLUMNS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def active_services(day: date, calendar: Iterable[tuple[str, Sequence[int], date, date]],
                    exceptions: Iterable[tuple[str, int]]) -> set[str]:
    """Service ids running on ``day``: calendar weekday in range, then calendar_dates applied.

    ``calendar`` rows are ``(service_id, weekday flags Mon..Sun, start_date, end_date)``;
    ``exceptions`` the ``(service_id, exception_type)`` rows for that day (1 added, 2 removed).
    """
    out = {sid for sid, flags, start, end in calendar
           if start <= day <= end and flags[day.weekday()]}
    for sid, kind in exceptions:
        if kind == 1:
            out.add(sid)
        elif kind == 2:
            out.discard(sid)
    return out


# --- rows → records (both backends select columns in GTFS_COLUMNS order) ---------------------


def route_from_row(r: Sequence[Any]) -> GtfsRoute:
    """(feed_id, *GTFS_COLUMNS['gtfs_routes']) → GtfsRoute."""
    return GtfsRoute(feed_id=r[0], route_id=r[1], agency_id=r[2], short_name=r[3],
                     long_name=r[4], desc=r[5], route_type=r[6], color=r[7], text_color=r[8],
                     sort_order=r[9])


def trip_from_row(r: Sequence[Any]) -> GtfsTrip:
    """(feed_id, *GTFS_COLUMNS['gtfs_trips']) → GtfsTrip."""
    return GtfsTrip(feed_id=r[0], trip_id=r[1], route_id=r[2], service_id=r[3], headsign=r[4],
                    short_name=r[5], direction_id=r[6], block_id=r[7], shape_id=r[8],
                    wheelchair_accessible=r[9])


def stop_from_row(r: Sequence[Any]) -> GtfsStop:
    """(feed_id, *GTFS_COLUMNS['gtfs_stops']) → GtfsStop."""
    return GtfsStop(feed_id=r[0], stop_id=r[1], code=r[2], name=r[3], name_en=r[4], desc=r[5],
                    lat=r[6], lon=r[7], zone_id=r[8], location_type=r[9], parent_station=r[10],
                    wheelchair_boarding=r[11], platform_code=r[12])


def sort_routes(routes: list[GtfsRoute]) -> list[GtfsRoute]:
    """Feed, then route_sort_order (unset last), short name, id — the same on both backends."""
    return sorted(routes, key=lambda r: (r.feed_id, r.sort_order is None, r.sort_order or 0,
                                         r.short_name or "", r.route_id))


def sort_trips(trips: list[GtfsTrip]) -> list[GtfsTrip]:
    """Feed, direction (unset first), trip id."""
    return sorted(trips, key=lambda t: (t.feed_id, t.direction_id is not None,
                                        t.direction_id or 0, t.trip_id))
