"""The bus timetable: GTFS static trips, stop times, stops, shapes and calendars, read for tracking.

A :class:`ScheduleSource` hands over a :class:`Schedule`; today that is :class:`GtfsFileSource`
(a GTFS zip or folder read with gtfs-kit), later the geodatabase. Both only need
:func:`schedule_from_tables`, which takes the GTFS tables as pandas DataFrames.

Trips that share a shape and a stop sequence share one :class:`Pattern`: the shape as a polyline in
metres and each stop projected onto it (distance along the shape, in stop order, so a loop or an
out-and-back shape puts the last stop at its end, not at its start). Trips without a shape get
one made of their stops. Times are seconds from the service day's "noon minus 12 h" in the feed's
time zone, as GTFS defines them (so 25:10:00 is the next morning); frequency-based trips are
expanded into one :class:`Trip` per departure, labelled with ``start_time`` as in GTFS-realtime.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from shared.errors import TtiError
from shared.geo import LocalProjection, bearing_deg

log = logging.getLogger("tti.bigdata.transit")

__all__ = [
    "GtfsFileSource",
    "Pattern",
    "RouteInfo",
    "Schedule",
    "ScheduleError",
    "ScheduleSource",
    "ShapeLine",
    "StopInfo",
    "Trip",
    "TripRun",
    "schedule_from_tables",
]


class ScheduleError(TtiError):
    """A timetable could not be read or makes no sense."""

    code = "bad_schedule"
    http_status = 503


# --- geometry --------------------------------------------------------------------------------


class ShapeLine:
    """A polyline in a local metric frame, with distance along it and point projection.

    Positions are matched to a trip by projecting them onto its shape; ``candidates`` returns one
    projection per pass near the point (a loop or an out-and-back road passes some places twice),
    optionally only within a window of distance along the shape, which is how a tracked bus is
    kept on the pass it is driving.
    """

    __slots__ = ("_dx", "_dy", "_len2", "_seglen", "cum", "length_m", "lonlat", "proj", "x", "y")

    def __init__(self, coords: Sequence[tuple[float, float]]) -> None:
        pts: list[tuple[float, float]] = []
        for lon, lat in coords:
            if not pts or (lon, lat) != pts[-1]:
                pts.append((float(lon), float(lat)))
        if len(pts) == 1:  # one point: a zero-length line is still projectable
            pts.append(pts[0])
        self.lonlat = pts
        self.proj = LocalProjection(pts[0][0], pts[0][1])
        xy = np.array([self.proj.to_xy(lon, lat) for lon, lat in pts], dtype=float)
        self.x = xy[:, 0]
        self.y = xy[:, 1]
        self._dx = np.diff(self.x)
        self._dy = np.diff(self.y)
        self._seglen = np.hypot(self._dx, self._dy)
        # A zero-length piece (only possible for a one-point shape) must not divide by zero.
        self._len2 = np.maximum(self._seglen**2, 1e-9)
        self.cum = np.concatenate(([0.0], np.cumsum(self._seglen)))
        self.length_m = float(self.cum[-1])

    def _piece(self, along_m: float) -> int:
        i = int(np.searchsorted(self.cum, along_m, side="right")) - 1
        return min(max(i, 0), len(self._seglen) - 1)

    def point_at(self, along_m: float) -> tuple[float, float]:
        """The (lon, lat) at a distance along the line (clamped to its ends)."""
        along_m = min(max(along_m, 0.0), self.length_m)
        i = self._piece(along_m)
        f = 0.0 if self._seglen[i] == 0 else (along_m - self.cum[i]) / self._seglen[i]
        lon, lat = self.proj.to_lonlat(float(self.x[i] + f * self._dx[i]),
                                       float(self.y[i] + f * self._dy[i]))
        return lon, lat

    def bearing_at(self, along_m: float) -> float:
        """Direction of travel (degrees from north) at a distance along the line."""
        i = self._piece(min(max(along_m, 0.0), self.length_m))
        (lon1, lat1), (lon2, lat2) = self.lonlat[i], self.lonlat[i + 1]
        return bearing_deg(lon1, lat1, lon2, lat2)

    def _project_range(self, lon: float, lat: float, lo_m: float, hi_m: float
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(along, offset) of the point's projection on each piece overlapping [lo_m, hi_m]."""
        px, py = self.proj.to_xy(lon, lat)
        n = len(self._seglen)
        i0 = 0 if lo_m <= 0 else min(n - 1, max(
            0, int(np.searchsorted(self.cum, lo_m, side="right")) - 1))
        i1 = n if hi_m >= self.length_m else min(n, int(np.searchsorted(self.cum, hi_m)) + 1)
        if i1 <= i0:
            return np.empty(0), np.empty(0)
        ax = self.x[i0:i1]
        ay = self.y[i0:i1]
        dx = self._dx[i0:i1]
        dy = self._dy[i0:i1]
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / self._len2[i0:i1], 0.0, 1.0)
        along = np.clip(self.cum[i0:i1] + t * self._seglen[i0:i1], lo_m, hi_m)
        off = np.hypot(px - (ax + t * dx), py - (ay + t * dy))
        return along, off

    def candidates(self, lon: float, lat: float, *, max_offset_m: float,
                   lo_m: float = -math.inf, hi_m: float = math.inf, limit: int = 4
                   ) -> list[tuple[float, float]]:
        """Projections ``(along_m, offset_m)`` within ``max_offset_m``, one per pass, nearest first.

        Two projections closer along the line than twice the offset limit are the same pass.
        """
        along, off = self._project_range(lon, lat, lo_m, hi_m)
        near = np.flatnonzero(off <= max_offset_m)
        if near.size == 0:
            return []
        out: list[tuple[float, float]] = []
        sep = 2.0 * max_offset_m
        for i in near[np.argsort(off[near], kind="stable")]:
            a = float(along[i])
            if all(abs(a - b) > sep for b, _ in out):
                out.append((a, float(off[i])))
                if len(out) >= limit:
                    break
        return out

    def project_stop(self, lon: float, lat: float, after_m: float) -> tuple[float, float]:
        """Where a stop lies along the line, at or after ``after_m`` (the previous stop).

        The nearest pass wins, except that among passes about as near (within 25 m) the first one
        does: a loop's first and last stops may be the same place.
        """
        along, off = self._project_range(lon, lat, after_m, math.inf)
        if along.size == 0:
            return self.length_m, math.inf
        limit = float(off.min()) + 25.0
        passes: list[tuple[float, float]] = []  # the nearest point of each pass near enough
        for i in np.argsort(off, kind="stable"):
            if off[i] > limit:
                break
            a = float(along[i])
            if all(abs(a - b) > 50.0 for b, _ in passes):
                passes.append((a, float(off[i])))
        return min(passes)


# --- the timetable model ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StopInfo:
    """A stop (or station) of the feed."""

    stop_id: str
    name: str
    lon: float
    lat: float
    parent_station: str | None = None


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """A route of the feed."""

    route_id: str
    short_name: str
    long_name: str
    route_type: int | None = None


@dataclass(eq=False, slots=True)
class Pattern:
    """A stop sequence on a shape, shared by the trips that run it."""

    pattern_id: str
    route_id: str
    direction_id: int | None
    shape_id: str | None
    shape: ShapeLine
    stop_ids: tuple[str, ...]
    stop_dist_m: np.ndarray
    stop_offset_m: np.ndarray
    trips: list[Trip] = field(default_factory=list)
    stop_dist: tuple[float, ...] = field(init=False)  # the same as plain floats, for scalar use

    def __post_init__(self) -> None:
        self.stop_dist = tuple(float(x) for x in self.stop_dist_m)

    @property
    def n_stops(self) -> int:
        """Number of stops served."""
        return len(self.stop_ids)


@dataclass(eq=False, slots=True)
class Trip:
    """One scheduled journey: its pattern and its times (seconds from the service day start).

    ``sched_x``/``sched_t`` interleave each stop's arrival and departure at its distance, so the
    scheduled time at any point along the shape is one ``np.interp``.
    """

    trip_id: str
    route_id: str
    direction_id: int | None
    service_id: str
    headsign: str
    pattern: Pattern
    arrival_s: np.ndarray
    departure_s: np.ndarray
    stop_sequence: np.ndarray
    start_time: str | None = None
    block_id: str | None = None
    sched_x: np.ndarray = field(init=False)
    sched_t: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.sched_x = np.repeat(self.pattern.stop_dist_m, 2)
        self.sched_t = np.column_stack((self.arrival_s, self.departure_s)).ravel()

    @property
    def key(self) -> str:
        """Unique per trip (frequency-based instances differ by start time)."""
        return self.trip_id if self.start_time is None else f"{self.trip_id}@{self.start_time}"

    @property
    def first_s(self) -> float:
        """Scheduled first departure."""
        return float(self.departure_s[0])

    @property
    def last_s(self) -> float:
        """Scheduled last arrival."""
        return float(self.arrival_s[-1])


@dataclass(frozen=True, slots=True)
class TripRun:
    """A trip on one service day: what a bus is actually assigned to."""

    trip: Trip
    service_date: date
    day_start: float  # epoch seconds of the service day's "noon minus 12 h"

    @property
    def key(self) -> str:
        """Unique per trip instance and day (used for state and accuracy, never as a label)."""
        return f"{self.trip.key}|{self.start_date}"

    @property
    def start_date(self) -> str:
        """GTFS-realtime ``start_date`` (``YYYYMMDD``)."""
        return self.service_date.strftime("%Y%m%d")

    def arrival_at(self, i: int) -> float:
        """Scheduled arrival at stop index ``i`` (epoch seconds)."""
        return self.day_start + float(self.trip.arrival_s[i])

    def departure_at(self, i: int) -> float:
        """Scheduled departure from stop index ``i`` (epoch seconds)."""
        return self.day_start + float(self.trip.departure_s[i])

    def scheduled_time_at(self, along_m: float) -> float:
        """When the timetable has the bus at ``along_m`` (epoch seconds)."""
        return self.day_start + float(np.interp(along_m, self.trip.sched_x, self.trip.sched_t))


class ServiceCalendar:
    """Which service ids run on a date (calendar.txt with calendar_dates.txt exceptions)."""

    def __init__(self, weekly: dict[str, tuple[tuple[bool, ...], date, date]],
                 added: dict[date, set[str]], removed: dict[date, set[str]]) -> None:
        self._weekly = weekly
        self._added = added
        self._removed = removed
        self.active = lru_cache(maxsize=16)(self._active)

    def _active(self, day: date) -> frozenset[str]:
        wd = day.weekday()
        out = {sid for sid, (days, start, end) in self._weekly.items()
               if start <= day <= end and days[wd]}
        out |= self._added.get(day, set())
        out -= self._removed.get(day, set())
        return frozenset(out)

    @property
    def service_ids(self) -> set[str]:
        """Every service id the calendar mentions."""
        ids = set(self._weekly)
        for s in (*self._added.values(), *self._removed.values()):
            ids |= s
        return ids


@dataclass(slots=True)
class _RouteIndex:
    trips: list[Trip]
    starts: list[float]
    max_duration_s: float


class Schedule:
    """The loaded timetable with the look-ups tracking needs."""

    def __init__(self, *, timezone: ZoneInfo, stops: dict[str, StopInfo],
                 routes: dict[str, RouteInfo], patterns: list[Pattern], trips: list[Trip],
                 calendar: ServiceCalendar, source: str = "") -> None:
        self.timezone = timezone
        self.stops = stops
        self.routes = routes
        self.patterns = patterns
        self.calendar = calendar
        self.source = source
        self.trip_count = len(trips)
        self.trips_by_id: dict[str, list[Trip]] = {}
        for t in trips:
            self.trips_by_id.setdefault(t.trip_id, []).append(t)
        groups: dict[tuple[str, int | None], list[Trip]] = {}
        for t in trips:
            groups.setdefault((t.route_id, t.direction_id), []).append(t)
            if t.direction_id is not None:
                groups.setdefault((t.route_id, None), []).append(t)
        self._route_ids = {t.route_id for t in trips}
        self._by_route: dict[tuple[str, int | None], _RouteIndex] = {}
        for k, ts in groups.items():
            ts.sort(key=lambda t: t.first_s)
            self._by_route[k] = _RouteIndex(ts, [t.first_s for t in ts],
                                            max(t.last_s - t.first_s for t in ts))
        # stop_id -> (pattern, stop index) for every pattern serving it
        self.stop_patterns: dict[str, list[tuple[Pattern, int]]] = {}
        for p in patterns:
            for i, sid in enumerate(p.stop_ids):
                self.stop_patterns.setdefault(sid, []).append((p, i))
        self.children: dict[str, list[str]] = {}
        for s in stops.values():
            if s.parent_station:
                self.children.setdefault(s.parent_station, []).append(s.stop_id)

    def service_day_start(self, day: date) -> float:
        """Epoch seconds of the service day's reference: local noon minus 12 hours."""
        noon = datetime.combine(day, time(12), tzinfo=self.timezone)
        return noon.timestamp() - 12 * 3600

    def local_date(self, t: float) -> date:
        """The local calendar date at epoch seconds ``t``."""
        return datetime.fromtimestamp(t, UTC).astimezone(self.timezone).date()

    def service_days(self, t: float) -> list[tuple[date, float]]:
        """The service days a trip running at ``t`` can belong to: yesterday and today."""
        today = self.local_date(t)
        return [(d, self.service_day_start(d)) for d in (today - timedelta(days=1), today)]

    def runs_between(self, route_id: str, direction_id: int | None, t_from: float, t_to: float
                     ) -> list[TripRun]:
        """Runs of a route (and direction) in service at some moment of [t_from, t_to]."""
        idx = self._by_route.get((route_id, direction_id))
        if idx is None:
            return []
        out = []
        for day, day0 in self.service_days(t_to):
            active = self.calendar.active(day)
            lo = bisect_left(idx.starts, t_from - day0 - idx.max_duration_s)
            hi = bisect_right(idx.starts, t_to - day0)
            for trip in idx.trips[lo:hi]:
                if (trip.service_id in active and trip.last_s >= t_from - day0
                        and trip.first_s <= t_to - day0):
                    out.append(TripRun(trip, day, day0))
        return out

    def find_runs(self, trip_id: str, t: float, *, slack_s: float = 3600.0) -> list[TripRun]:
        """Instances of ``trip_id`` in service around ``t`` (within ``slack_s``), nearest first."""
        out: list[tuple[float, TripRun]] = []
        for day, day0 in self.service_days(t):
            active = self.calendar.active(day)
            for trip in self.trips_by_id.get(trip_id, ()):
                if trip.service_id not in active:
                    continue
                first, last = day0 + trip.first_s, day0 + trip.last_s
                gap = max(first - t, t - last, 0.0)
                if gap <= slack_s:
                    out.append((gap, TripRun(trip, day, day0)))
        out.sort(key=lambda x: x[0])
        return [r for _, r in out]

    def has_route(self, route_id: str) -> bool:
        """Whether the feed has trips on this route."""
        return route_id in self._route_ids

    def stop_ids_for(self, stop_id: str) -> list[str]:
        """A stop, or a station's child stops (and the station itself)."""
        return [stop_id, *self.children.get(stop_id, ())]


# --- loading ---------------------------------------------------------------------------------


class ScheduleSource(abc.ABC):
    """Where the timetable comes from (a GTFS file today, the geodatabase later)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human-readable name for logs and readiness."""

    @abc.abstractmethod
    async def load(self) -> Schedule:
        """Read the timetable; raises :class:`ScheduleError` with a reason when it cannot."""


class GtfsFileSource(ScheduleSource):
    """A GTFS static feed (zip or folder) read with gtfs-kit, off the event loop."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"GTFS {self.path}"

    async def load(self) -> Schedule:
        return await asyncio.to_thread(self.load_sync)

    def load_sync(self) -> Schedule:
        """Blocking load (tests and tools)."""
        import gtfs_kit  # heavy import, only when a feed is really read

        if not self.path.exists():
            raise ScheduleError(f"GTFS feed {self.path} not found")
        try:
            feed = gtfs_kit.read_feed(self.path, dist_units="km")
        except Exception as exc:  # gtfs-kit raises plain ValueError/KeyError/zip errors
            raise ScheduleError(f"cannot read GTFS feed {self.path}: {exc}") from exc
        tables = {name: getattr(feed, name, None) for name in (
            "agency", "stops", "routes", "trips", "stop_times", "shapes", "calendar",
            "calendar_dates", "frequencies")}
        return schedule_from_tables(tables, source=str(self.path))


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """A column as strings with missing values as None (absent columns are all None)."""
    if name not in df.columns:
        return pd.Series([None] * len(df), index=df.index, dtype=object)
    s = df[name].astype(object)
    return s.where(s.notna(), None)


def gtfs_seconds(values: pd.Series) -> np.ndarray:
    """``H:MM:SS`` strings (hours may exceed 24) → seconds as float, NaN where empty or bad."""
    s = values.astype("string").str.strip()
    parts = s.str.split(":", expand=True)
    if parts.shape[1] < 3:
        return np.full(len(values), np.nan)
    h, m, sec = (pd.to_numeric(parts[i], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
                 for i in range(3))
    return h * 3600 + m * 60 + sec


def _fmt_time(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _parse_date(raw: object) -> date | None:
    if isinstance(raw, datetime):
        return raw.date()
    if isinstance(raw, date):
        return raw
    try:
        return datetime.strptime(str(raw).strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _calendar(cal: pd.DataFrame | None, dates: pd.DataFrame | None) -> ServiceCalendar:
    weekly: dict[str, tuple[tuple[bool, ...], date, date]] = {}
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    if cal is not None and len(cal):
        for row in cal.itertuples(index=False):
            r = row._asdict()
            start, end = _parse_date(r.get("start_date")), _parse_date(r.get("end_date"))
            if start is None or end is None:
                continue
            weekly[str(r["service_id"])] = (tuple(str(r.get(d, 0)) == "1" for d in days),
                                            start, end)
    added: dict[date, set[str]] = {}
    removed: dict[date, set[str]] = {}
    if dates is not None and len(dates):
        for sid, raw, kind in zip(dates["service_id"].astype(str), dates["date"],
                                  dates["exception_type"], strict=True):
            day = _parse_date(raw)
            if day is None:
                continue
            (added if str(kind) == "1" else removed).setdefault(day, set()).add(sid)
    return ServiceCalendar(weekly, added, removed)


def _timezone(agency: pd.DataFrame | None, name: str | None = None) -> ZoneInfo:
    if not name and agency is not None and "agency_timezone" in agency.columns and len(agency):
        name = str(agency["agency_timezone"].iloc[0]).strip()
    if not name:
        raise ScheduleError("GTFS feed has no agency_timezone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown agency_timezone {name!r}") from exc


def _fill_times(arr: np.ndarray, dep: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Fill a missing arrival from the departure and back; interpolate untimed stops by distance."""
    arr = np.where(np.isnan(arr), dep, arr)
    dep = np.where(np.isnan(dep), arr, dep)
    bad = np.isnan(arr)
    if bad.any():
        good = ~bad
        if good.sum() < 2:
            raise ValueError("fewer than two timed stops")
        arr[bad] = np.interp(dist[bad], dist[good], arr[good])
        dep[bad] = arr[bad]
    return arr, np.maximum(dep, arr)


def _seconds_col(df: pd.DataFrame, seconds_name: str, text_name: str) -> np.ndarray:
    """Seconds of the service day from a numeric column if there is one, else ``H:MM:SS``."""
    if seconds_name in df.columns:
        return pd.to_numeric(df[seconds_name], errors="coerce").to_numpy(dtype=float,
                                                                         na_value=np.nan)
    return gtfs_seconds(_col(df, text_name))


def schedule_from_tables(tables: dict[str, Any], *, source: str = "",
                         timezone: str | None = None) -> Schedule:
    """Build a :class:`Schedule` from GTFS tables as pandas DataFrames.

    Column names are GTFS's (as gtfs-kit reads them); times may also come as seconds of the
    service day (``arrival_s``, ``departure_s``; ``start_s``, ``end_s``, ``headway_s`` for
    frequencies) and dates as ``date`` objects, and ``shapes`` may be a mapping
    ``shape_id → ((lon, lat), …)`` — the form the geodatabase keeps them in. ``timezone``
    overrides the agency's.

    Trips with fewer than two stops, unknown stops or unusable times are skipped and counted in
    the log (one line), not fatal: one bad trip must not take the timetable down.
    """
    tz = _timezone(tables.get("agency"), timezone)
    stops_df = tables.get("stops")
    trips_df = tables.get("trips")
    st_df = tables.get("stop_times")
    if stops_df is None or trips_df is None or st_df is None or not len(st_df):
        raise ScheduleError("GTFS feed lacks stops, trips or stop_times")

    stops: dict[str, StopInfo] = {}
    parents = _col(stops_df, "parent_station")
    names = _col(stops_df, "stop_name")
    for sid, name, lat, lon, parent in zip(stops_df["stop_id"].astype(str), names,
                                           stops_df["stop_lat"], stops_df["stop_lon"], parents,
                                           strict=True):
        if pd.isna(lat) or pd.isna(lon):
            continue
        stops[sid] = StopInfo(sid, str(name or ""), float(lon), float(lat),
                              str(parent) if parent else None)

    routes: dict[str, RouteInfo] = {}
    routes_df = tables.get("routes")
    if routes_df is not None:
        for rid, short, long_, rtype in zip(routes_df["route_id"].astype(str),
                                            _col(routes_df, "route_short_name"),
                                            _col(routes_df, "route_long_name"),
                                            _col(routes_df, "route_type"), strict=True):
            routes[rid] = RouteInfo(rid, str(short or ""), str(long_ or ""),
                                    int(rtype) if rtype is not None else None)

    shapes: dict[str, list[tuple[float, float]]] = {}
    shapes_df = tables.get("shapes")
    if isinstance(shapes_df, dict):
        shapes = {str(k): [(float(x), float(y)) for x, y in v] for k, v in shapes_df.items()}
    elif shapes_df is not None and len(shapes_df):
        sdf = shapes_df.sort_values(["shape_id", "shape_pt_sequence"], kind="stable")
        ids = sdf["shape_id"].astype(str).to_numpy()
        lons = sdf["shape_pt_lon"].to_numpy(dtype=float)
        lats = sdf["shape_pt_lat"].to_numpy(dtype=float)
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(ids)])),
                        strict=True):
            shapes[str(ids[a])] = list(zip(lons[a:b].tolist(), lats[a:b].tolist(), strict=True))

    trip_info: dict[str, tuple[str, str, int | None, str | None, str, str | None]] = {}
    for tid, rid, sid, did, shp, head, blk in zip(
            trips_df["trip_id"].astype(str), trips_df["route_id"].astype(str),
            trips_df["service_id"].astype(str), _col(trips_df, "direction_id"),
            _col(trips_df, "shape_id"), _col(trips_df, "trip_headsign"),
            _col(trips_df, "block_id"), strict=True):
        trip_info[tid] = (rid, sid, int(did) if did is not None else None,
                          str(shp) if shp is not None else None, str(head or ""),
                          str(blk) if blk is not None else None)

    st = st_df[["trip_id", "stop_id", "stop_sequence"]].copy()
    st["stop_sequence"] = pd.to_numeric(st["stop_sequence"], errors="coerce")
    st["trip_id"] = st["trip_id"].astype(str)
    st["stop_id"] = st["stop_id"].astype(str)
    st["arr"] = _seconds_col(st_df, "arrival_s", "arrival_time")
    st["dep"] = _seconds_col(st_df, "departure_s", "departure_time")
    st = st.sort_values(["trip_id", "stop_sequence"], kind="stable")
    tids = st["trip_id"].to_numpy()
    sids = st["stop_id"].to_numpy()
    arrs = st["arr"].to_numpy(dtype=float)
    deps = st["dep"].to_numpy(dtype=float)
    seqs = st["stop_sequence"].to_numpy(dtype=float, na_value=np.nan)
    cuts = np.flatnonzero(tids[1:] != tids[:-1]) + 1

    patterns: dict[tuple[str, str | None, int | None, tuple[str, ...]], Pattern] = {}
    line_cache: dict[str, ShapeLine] = {}
    trips: dict[str, Trip] = {}
    skipped: dict[str, int] = {}

    def skip(kind: str) -> None:
        skipped[kind] = skipped.get(kind, 0) + 1

    for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(tids)])),
                    strict=True):
        tid = str(tids[a])
        info = trip_info.get(tid)
        if info is None:
            skip("unknown_trip")
            continue
        rid, service_id, did, shape_id, head, block = info
        stop_ids = tuple(str(s) for s in sids[a:b])
        if len(stop_ids) < 2:
            skip("too_few_stops")
            continue
        if any(s not in stops for s in stop_ids):
            skip("unknown_stop")
            continue
        if shape_id is not None and shape_id not in shapes:
            shape_id = None
        key = (rid, shape_id, did, stop_ids)
        pattern = patterns.get(key)
        if pattern is None:
            pattern = _make_pattern(f"p{len(patterns)}", rid, did, shape_id, stop_ids, stops,
                                    shapes, line_cache)
            patterns[key] = pattern
        try:
            arr, dep = _fill_times(arrs[a:b].copy(), deps[a:b].copy(), pattern.stop_dist_m)
        except ValueError:
            skip("bad_times")
            continue
        if np.any(np.diff(arr) < 0):
            skip("times_decrease")
            continue
        seq = seqs[a:b]
        if np.isnan(seq).any():
            skip("bad_stop_sequence")
            continue
        trip = Trip(tid, rid, did, service_id, head, pattern, arr, dep, seq.astype(np.int64),
                    block_id=block)
        trips[tid] = trip

    all_trips = _expand_frequencies(trips, tables.get("frequencies"))
    for t in all_trips:
        t.pattern.trips.append(t)
    used = [p for p in patterns.values() if p.trips]
    if not all_trips:
        raise ScheduleError("GTFS feed has no usable trips")
    if skipped:
        log.warning("GTFS %s: trips skipped %s", source, skipped)
    calendar = _calendar(tables.get("calendar"), tables.get("calendar_dates"))
    return Schedule(timezone=tz, stops=stops, routes=routes, patterns=used, trips=all_trips,
                    calendar=calendar, source=source)


def _make_pattern(pattern_id: str, route_id: str, direction_id: int | None, shape_id: str | None,
                  stop_ids: tuple[str, ...], stops: dict[str, StopInfo],
                  shapes: dict[str, list[tuple[float, float]]],
                  line_cache: dict[str, ShapeLine]) -> Pattern:
    if shape_id is not None:
        line = line_cache.get(shape_id)
        if line is None:
            line = line_cache[shape_id] = ShapeLine(shapes[shape_id])
    else:
        # No shape: straight lines between the stops are the best geometry there is.
        line = ShapeLine([(stops[s].lon, stops[s].lat) for s in stop_ids])
    dist = np.empty(len(stop_ids))
    off = np.empty(len(stop_ids))
    after = 0.0
    for i, sid in enumerate(stop_ids):
        s = stops[sid]
        dist[i], off[i] = line.project_stop(s.lon, s.lat, after)
        after = dist[i]
    return Pattern(pattern_id, route_id, direction_id, shape_id, line, stop_ids, dist, off)


def _expand_frequencies(trips: dict[str, Trip], freq: pd.DataFrame | None) -> list[Trip]:
    """Replace each frequency-based template trip by one trip per departure."""
    if freq is None or not len(freq):
        return list(trips.values())
    starts = _seconds_col(freq, "start_s", "start_time")
    ends = _seconds_col(freq, "end_s", "end_time")
    heads = pd.to_numeric(freq["headway_s" if "headway_s" in freq.columns else "headway_secs"],
                          errors="coerce").to_numpy(dtype=float)
    templates: set[str] = set()
    out: list[Trip] = []
    for tid, start, end, headway in zip(freq["trip_id"].astype(str), starts, ends, heads,
                                        strict=True):
        tmpl = trips.get(tid)
        if tmpl is None or not (headway > 0) or np.isnan(start) or np.isnan(end):
            continue
        templates.add(tid)
        shift0 = tmpl.arrival_s[0]
        s = float(start)
        while s < end:
            out.append(Trip(tid, tmpl.route_id, tmpl.direction_id, tmpl.service_id,
                            tmpl.headsign, tmpl.pattern, tmpl.arrival_s - shift0 + s,
                            tmpl.departure_s - shift0 + s, tmpl.stop_sequence,
                            start_time=_fmt_time(s),
                            block_id=tmpl.block_id))
            s += headway
    out.extend(t for tid, t in trips.items() if tid not in templates)
    return out

