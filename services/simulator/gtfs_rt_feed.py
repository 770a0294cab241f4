"""The simulator's GTFS-realtime VehiclePositions feed, served over HTTP like an operator's AVL.

Each bus of the fleet becomes one ``FeedEntity``: vehicle id and plate, a trip of its route from
the GTFS static timetable (the departure that best matches how far along its route the bus is,
one bus per trip), position, bearing, speed, status and an occupancy from a simulated load that
peaks in the rush hours. The message is rebuilt at most every ``refresh_s`` and served with an
``ETag`` and ``Last-Modified``, so conditional requests get 304 until the next rebuild.
``?format=text`` shows the message in protobuf text form for people debugging.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from google.protobuf import text_format
from google.transit import gtfs_realtime_pb2

from services.simulator.fleet import BusFix
from shared.clock import Clock

FEED_PATH = "/api/v1/sim/gtfs-rt/vehicle-positions.pb"
"""Where the embedded run serves the feed (on its HTTP port)."""

log = logging.getLogger("tti.simulator.gtfs_rt")

CONTENT_TYPE = "application/x-protobuf"
DEFAULT_TIMEZONE = "Asia/Shanghai"

_Rt = gtfs_realtime_pb2.VehiclePosition


# ---- timetable ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduledTrip:
    """One GTFS trip: its id, first departure (seconds after local midnight) and run time."""

    trip_id: str
    route_id: str
    direction_id: int | None
    start_s: int
    run_s: int


@dataclass(frozen=True, slots=True)
class TripAssignment:
    """The trip a bus is said to run now, as a GTFS-rt TripDescriptor needs it."""

    trip_id: str
    start_date: str  # YYYYMMDD, local service day
    start_time: str  # HH:MM:SS, local


def _gtfs_seconds(raw: str) -> int | None:
    parts = raw.strip().split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    h, m, s = (int(p) for p in parts)
    return h * 3600 + m * 60 + s


class Timetable:
    """Trips per (route_id, direction_id) from a GTFS static feed, to give buses trip ids."""

    def __init__(self, trips: Sequence[ScheduledTrip], *, timezone: str = DEFAULT_TIMEZONE
                 ) -> None:
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            self.tz = ZoneInfo(DEFAULT_TIMEZONE)
        self._by_key: dict[tuple[str, int | None], list[ScheduledTrip]] = {}
        for t in sorted(trips, key=lambda t: t.start_s):
            self._by_key.setdefault((t.route_id, t.direction_id), []).append(t)
            self._by_key.setdefault((t.route_id, None), []).append(t)

    def __len__(self) -> int:
        return sum(len(v) for k, v in self._by_key.items() if k[1] is not None)

    @classmethod
    def from_gtfs(cls, path: str | Path) -> Timetable:
        """Read agency timezone, trips and first/last stop times from a GTFS zip."""
        with zipfile.ZipFile(path) as z:
            def rows(name: str) -> list[dict[str, str]]:
                if name not in z.namelist():
                    return []
                with z.open(name) as f:
                    text = io.TextIOWrapper(f, encoding="utf-8-sig")
                    return list(csv.DictReader(text))

            tz = next((r.get("agency_timezone", "") for r in rows("agency.txt")), "")
            first: dict[str, int] = {}
            last: dict[str, int] = {}
            for r in rows("stop_times.txt"):
                tid = r.get("trip_id", "")
                dep = _gtfs_seconds(r.get("departure_time") or r.get("arrival_time") or "")
                arr = _gtfs_seconds(r.get("arrival_time") or r.get("departure_time") or "")
                if dep is not None and dep < first.get(tid, 1 << 30):
                    first[tid] = dep
                if arr is not None and arr > last.get(tid, -1):
                    last[tid] = arr
            trips = []
            for r in rows("trips.txt"):
                tid = r.get("trip_id", "")
                if tid not in first:
                    continue
                d = r.get("direction_id", "").strip()
                trips.append(ScheduledTrip(tid, r.get("route_id", ""),
                                           int(d) if d.isdigit() else None, first[tid],
                                           max(0, last.get(tid, first[tid]) - first[tid])))
        return cls(trips, timezone=tz or DEFAULT_TIMEZONE)

    def assign(self, buses: Sequence[BusFix], now: datetime) -> dict[str, TripAssignment]:
        """A distinct plausible trip per bus: the departure closest to when it would have left.

        A bus ``p`` of the way along a trip of run time ``r`` left about ``p·r`` ago; buses on
        the same route and direction never share a trip.
        """
        local = now.astimezone(self.tz)
        now_s = local.hour * 3600 + local.minute * 60 + local.second
        out: dict[str, TripAssignment] = {}
        groups: dict[tuple[str, int | None], list[tuple[float, BusFix]]] = {}
        for b in buses:
            key = (b.route_id, b.direction_id)
            trips = self._by_key.get(key)
            if not trips:
                continue
            run_s = sorted(t.run_s for t in trips)[len(trips) // 2]
            target = now_s - (b.route_progress or 0.0) * run_s
            groups.setdefault(key, []).append((target, b))
        for key, members in groups.items():
            trips = self._by_key[key]
            used: set[str] = set()
            for target, b in sorted(members, key=lambda m: m[0]):
                free = [t for t in trips if t.trip_id not in used] or trips
                best = min(free, key=lambda t: abs(t.start_s - target))
                used.add(best.trip_id)
                s = best.start_s
                out[b.vehicle_id] = TripAssignment(
                    best.trip_id, local.strftime("%Y%m%d"),
                    f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}")
        return out


def load_timetable(path: str | Path) -> Timetable | None:
    """``Timetable.from_gtfs`` or None (logged) when the file is missing or unreadable."""
    if not path:
        return None
    try:
        return Timetable.from_gtfs(path)
    except (OSError, zipfile.BadZipFile, csv.Error, UnicodeDecodeError) as exc:
        log.warning("GTFS-rt feed: no timetable from %s (%s); trips get no trip_id", path, exc)
        return None


# ---- occupancy ------------------------------------------------------------------------------


def simulated_load_pct(vehicle_id: str, now: datetime, tz: ZoneInfo) -> int:
    """Passengers as % of total (seated + standing) capacity: rush-hour peaks, per-bus spread."""
    local = now.astimezone(tz)
    h = local.hour + local.minute / 60
    base = (12 + 60 * math.exp(-(((h - 7.75) / 1.2) ** 2))
            + 50 * math.exp(-(((h - 17.75) / 1.5) ** 2)) + (15 if 6 <= h < 22 else 0))
    k = zlib.crc32(vehicle_id.encode())
    spread = 0.6 + 0.7 * (k % 1000) / 1000
    # A slow wobble so loads change between rebuilds, different for each bus.
    wobble = 1 + 0.2 * math.sin(now.timestamp() / 600 * 2 * math.pi + (k >> 10) % 628 / 100)
    return max(0, min(110, round(base * spread * wobble)))


def occupancy_status(pct: int) -> int:
    """GTFS-rt OccupancyStatus for a load in % of total capacity."""
    if pct < 5:
        return _Rt.EMPTY
    if pct < 40:
        return _Rt.MANY_SEATS_AVAILABLE
    if pct < 60:
        return _Rt.FEW_SEATS_AVAILABLE
    if pct < 85:
        return _Rt.STANDING_ROOM_ONLY
    if pct < 100:
        return _Rt.CRUSHED_STANDING_ROOM_ONLY
    return _Rt.FULL


# ---- the feed ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedSnapshot:
    """One serialized FeedMessage and its HTTP validators."""

    body: bytes
    etag: str
    last_modified: datetime  # whole seconds, as HTTP dates carry
    vehicles: int

    @property
    def http_date(self) -> str:
        """``Last-Modified`` header value."""
        return format_datetime(self.last_modified, usegmt=True)


def build_feed_message(buses: Sequence[BusFix], now: datetime, *,
                       timetable: Timetable | None = None) -> gtfs_realtime_pb2.FeedMessage:
    """A FULL_DATASET VehiclePositions FeedMessage (GTFS-rt 2.0) for the given buses."""
    msg = gtfs_realtime_pb2.FeedMessage()
    msg.header.gtfs_realtime_version = "2.0"
    msg.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    msg.header.timestamp = int(now.timestamp())
    trips = timetable.assign(buses, now) if timetable is not None else {}
    tz = timetable.tz if timetable is not None else ZoneInfo(DEFAULT_TIMEZONE)
    for b in buses:
        e = msg.entity.add()
        e.id = b.vehicle_id
        vp = e.vehicle
        vp.vehicle.id = b.vehicle_id
        vp.vehicle.label = b.plate
        vp.vehicle.license_plate = b.plate
        vp.trip.route_id = b.route_id
        if b.direction_id is not None:
            vp.trip.direction_id = b.direction_id
        trip = trips.get(b.vehicle_id)
        if trip is not None:
            vp.trip.trip_id = trip.trip_id
            vp.trip.start_date = trip.start_date
            vp.trip.start_time = trip.start_time
            vp.trip.schedule_relationship = gtfs_realtime_pb2.TripDescriptor.SCHEDULED
        vp.position.latitude = b.lat
        vp.position.longitude = b.lon
        vp.position.bearing = b.heading_deg % 360
        vp.position.speed = b.speed_kmh / 3.6  # GTFS-rt speed is m/s
        vp.current_status = _Rt.IN_TRANSIT_TO
        vp.timestamp = int(b.observed_at.timestamp())
        pct = simulated_load_pct(b.vehicle_id, now, tz)
        vp.occupancy_status = occupancy_status(pct)
        vp.occupancy_percentage = pct
    return msg


class SimGtfsRtFeed:
    """The simulator's feed: rebuilt at most every ``refresh_s``, served with validators."""

    def __init__(self, source: Callable[[], Sequence[BusFix]], *,
                 timetable: Timetable | None = None, refresh_s: float = 5.0,
                 clock: Clock | None = None, monotonic: Callable[[], float] | None = None,
                 wall: Callable[[], datetime] | None = None) -> None:
        """``clock`` (the simulator's) dates the feed and paces rebuilds; ``monotonic`` and
        ``wall`` (default: the clock's) can be moved by hand in tests."""
        clock = clock or Clock()
        self.source = source
        self.timetable = timetable
        # HTTP dates have whole seconds: faster rebuilds would defeat If-Modified-Since.
        self.refresh_s = max(1.0, refresh_s)
        self._monotonic = monotonic or clock.monotonic
        self._wall = wall or clock.now
        self._snapshot: FeedSnapshot | None = None
        self._built_mono = 0.0

    def invalidate(self) -> None:
        """Rebuild on the next request (tests, or after the fleet changed)."""
        self._snapshot = None

    def snapshot(self) -> FeedSnapshot:
        """The current serialized feed, rebuilt when older than ``refresh_s``."""
        mono = self._monotonic()
        if self._snapshot is None or mono - self._built_mono >= self.refresh_s:
            now = self._wall().replace(microsecond=0)
            if self._snapshot is not None and now <= self._snapshot.last_modified:
                # The wall clock did not move on (or stepped back): keep Last-Modified rising.
                now = self._snapshot.last_modified + timedelta(seconds=1)
            buses = self.source()
            body = build_feed_message(buses, now, timetable=self.timetable).SerializeToString()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._snapshot = FeedSnapshot(body, etag, now, len(buses))
            self._built_mono = mono
        return self._snapshot

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET`` the feed: 200 with the message, or 304 for a matching conditional request."""
        snap = self.snapshot()
        headers = {"ETag": snap.etag, "Last-Modified": snap.http_date,
                   "Cache-Control": "no-cache"}  # may be stored, but revalidate every time
        if _not_modified(request, snap):
            return web.Response(status=304, headers=headers)
        if request.query.get("format") == "text":
            msg = gtfs_realtime_pb2.FeedMessage.FromString(snap.body)
            return web.Response(text=text_format.MessageToString(msg, as_utf8=True),
                                content_type="text/plain", headers=headers)
        return web.Response(body=snap.body, content_type=CONTENT_TYPE, headers=headers)


def _not_modified(request: web.Request, snap: FeedSnapshot) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present; else If-Modified-Since."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or snap.etag in tags
    ims = request.if_modified_since
    return ims is not None and snap.last_modified <= ims


def add_gtfs_rt_feed_route(app: web.Application, feed: SimGtfsRtFeed, *,
                           path: str = FEED_PATH) -> None:
    """Serve ``feed`` at ``GET path`` (HEAD too) on ``app``."""
    app.router.add_get(path, feed.handle)
