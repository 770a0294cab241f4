"""GTFS-realtime VehiclePositions poller: bus feeds over HTTP → ``VehiclePosition`` events.

Each configured feed (``name=url``) is polled every ``gtfs_rt_poll_s`` with conditional requests
(``If-None-Match`` / ``If-Modified-Since``; 304 means nothing new). Every entity with a vehicle
position becomes the same ``VehiclePosition`` a JT/T 808 terminal produces, with the feed-scoped
id ``<feed>:<vehicle.id>``, class ``bus`` and source ``gtfs-rt``. A position already published
(same vehicle, same or older timestamp) is skipped; an impossible one is rejected and counted by
kind; the rest are published.

Health: a feed is *up* after a good fetch and while it keeps bringing new data; it is *down* when
fetches fail or when nothing new arrived for ``gtfs_rt_stale_s``. Each change is logged once
(failing, recovered) and shown as ``tti_gtfs_rt_feed_up{feed}``. Readiness: the ``gtfs_rt``
check passes once every feed is primed (its first good fetch); a feed that fails later is
reported in the detail but keeps the pod ready, because taking the collector out of service
cannot repair a remote feed and would cut off the terminals and detectors it still serves. For
the same reason a feed never reached within its first ``gtfs_rt_stale_s`` stops holding
readiness back and is reported as down.

Envelope event ids are derived from (vehicle, timestamp), so replicas polling the same feed
publish duplicates JetStream drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.transit import gtfs_realtime_pb2
from prometheus_client import Counter, Gauge

from shared.bus import EventBus
from shared.clock import Clock
from shared.config import Config
from shared.errors import BusError, ConfigError
from shared.events import VEHICLE_POSITION, VehiclePosition

log = logging.getLogger("tti.collector.gtfs_rt")

FEED_UP = Gauge("tti_gtfs_rt_feed_up", "1 while a GTFS-rt feed answers and brings new data",
                ["feed"])
FETCHES = Counter("tti_gtfs_rt_fetches_total", "GTFS-rt fetches by result", ["feed", "result"])
POSITIONS = Counter("tti_gtfs_rt_positions_total", "GTFS-rt vehicle entities by outcome",
                    ["feed", "outcome"])
REJECTED = Counter("tti_gtfs_rt_rejected_total", "GTFS-rt vehicle entities rejected by kind",
                   ["feed", "kind"])
LAST_SUCCESS = Gauge("tti_gtfs_rt_last_success_timestamp_seconds",
                     "Unix time of the last good fetch (200 or 304)", ["feed"])

REJECT_KINDS = ("no_vehicle_id", "bad_vehicle_id", "no_position", "coordinates_out_of_range",
                "no_time", "future_time", "stale_time", "bad_speed", "bad_bearing")
"""Why a vehicle entity is rejected; the ``kind`` label of ``tti_gtfs_rt_rejected_total``."""

FETCH_RESULTS = ("ok", "not_modified", "http_error", "network_error", "timeout", "too_large",
                 "bad_feed", "bus_error")
"""Outcomes of one fetch; the ``result`` label of ``tti_gtfs_rt_fetches_total``."""

MAX_FUTURE = timedelta(minutes=10)
MAX_AGE = timedelta(hours=1)  # an AVL position older than this says nothing about traffic now
MAX_SPEED_KMH = 250.0
PUBLISH_CHUNK = 256
USER_AGENT = "TTI-collector (GTFS-rt poller)"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_VEHICLE_ID_MAX = 128
_ID_NAMESPACE = uuid.UUID("4f0f6c8e-2d55-4c1e-9a38-7b7d0c1b9e21")


# ---- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedSource:
    """One configured feed: its short name (id prefix and metric label) and URL."""

    name: str
    url: str


def parse_feed_sources(entries: Sequence[str]) -> list[FeedSource]:
    """``name=url`` entries (a bare URL is named after its host) → feeds; names must be unique."""
    feeds: list[FeedSource] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        # "=" may also occur in a URL's query: only a short name before "://" counts as a name.
        if not sep or "://" in name:
            name, url = "", entry
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"TTI_GTFS_RT_URLS: not an http(s) URL: {url!r}")
        if not name:
            name = re.sub(r"[^A-Za-z0-9_.-]", "-", parts.hostname)[:32]
        if not _NAME.match(name):
            raise ConfigError(f"TTI_GTFS_RT_URLS: feed name {name!r} must match {_NAME.pattern}")
        if any(f.name == name for f in feeds):
            raise ConfigError(f"TTI_GTFS_RT_URLS: feed name {name!r} used twice; "
                              "give each feed its own name=url")
        feeds.append(FeedSource(name, url.strip()))
    return feeds


# ---- mapping (pure) -----------------------------------------------------------------------


class RejectedEntity(ValueError):
    """A vehicle entity that cannot become a position; ``kind`` is one of REJECT_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class MappedFeed:
    """What one FeedMessage yields: positions, rejections by kind, entities that aren't ours."""

    header_time: datetime | None
    positions: list[VehiclePosition] = field(default_factory=list)
    rejected: Tally[str] = field(default_factory=Tally)
    ignored: int = 0
    examples: dict[str, str] = field(default_factory=dict)


class BadFeed(ValueError):
    """The response is not a GTFS-realtime FeedMessage we can read."""


def parse_feed(data: bytes) -> gtfs_realtime_pb2.FeedMessage:
    """Bytes → FeedMessage; raises :class:`BadFeed` for garbage or an unusable header.

    Required fields are checked per entity rather than by the protobuf parser, so one entity
    missing a latitude is rejected alone instead of failing the whole feed.
    """
    msg = gtfs_realtime_pb2.FeedMessage()
    try:
        msg.ParseFromString(data)
    except (ProtobufDecodeError, ValueError) as exc:
        raise BadFeed(f"not a protobuf FeedMessage: {exc}") from exc
    if not msg.HasField("header") or not msg.header.gtfs_realtime_version:
        raise BadFeed("no FeedHeader with gtfs_realtime_version")
    if msg.header.gtfs_realtime_version.split(".")[0] not in ("1", "2"):
        raise BadFeed(f"unsupported gtfs_realtime_version {msg.header.gtfs_realtime_version!r}")
    return msg


def _utc(seconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise RejectedEntity("future_time", f"timestamp {seconds} out of range") from exc


def position_from_entity(feed: str, v: gtfs_realtime_pb2.VehiclePosition, *,
                         header_time: datetime | None, now: datetime) -> VehiclePosition:
    """One GTFS-rt ``VehiclePosition`` message → our ``VehiclePosition``; raises RejectedEntity.

    Speed is m/s in GTFS-rt and km/h here; a missing timestamp falls back to the feed header's.
    """
    raw_id = v.vehicle.id if v.HasField("vehicle") else ""
    # entity.id only supports incrementality and need not be stable, so it is no substitute.
    if not raw_id:
        raise RejectedEntity("no_vehicle_id", "entity has no vehicle.id")
    if len(raw_id) > _VEHICLE_ID_MAX or not raw_id.isprintable():
        raise RejectedEntity("bad_vehicle_id", f"vehicle.id unusable: {raw_id[:40]!r}")
    if not v.HasField("position"):
        raise RejectedEntity("no_position", f"vehicle {raw_id!r} has no position")
    pos = v.position
    if not (pos.HasField("latitude") and pos.HasField("longitude")):
        raise RejectedEntity("no_position", f"vehicle {raw_id!r}: position lacks lat/lon")
    lat, lon = pos.latitude, pos.longitude
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90
            and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        raise RejectedEntity("coordinates_out_of_range",
                             f"vehicle {raw_id!r}: lat {lat} lon {lon} impossible")
    if v.HasField("timestamp") and v.timestamp:
        observed = _utc(v.timestamp)
    elif header_time is not None:
        observed = header_time
    else:
        raise RejectedEntity("no_time", f"vehicle {raw_id!r}: no timestamp, none in the header")
    if observed > now + MAX_FUTURE:
        raise RejectedEntity("future_time", f"vehicle {raw_id!r}: time {observed.isoformat()} "
                             "is in the future (milliseconds instead of seconds?)")
    if observed < now - MAX_AGE:
        raise RejectedEntity("stale_time", f"vehicle {raw_id!r}: time {observed.isoformat()} "
                             "is too old")
    speed_kmh = None
    if pos.HasField("speed"):
        if not (math.isfinite(pos.speed) and 0 <= pos.speed * 3.6 <= MAX_SPEED_KMH):
            raise RejectedEntity("bad_speed", f"vehicle {raw_id!r}: speed {pos.speed} m/s")
        speed_kmh = round(pos.speed * 3.6, 2)
    heading = None
    if pos.HasField("bearing"):
        if not math.isfinite(pos.bearing):
            raise RejectedEntity("bad_bearing", f"vehicle {raw_id!r}: bearing {pos.bearing}")
        heading = float(pos.bearing) % 360.0
    trip_id = route_id = None
    if v.HasField("trip"):
        trip_id = v.trip.trip_id or None
        route_id = v.trip.route_id or None
    occupancy = None
    if v.HasField("occupancy_status"):
        with contextlib.suppress(ValueError):  # a value newer than our bindings know
            occupancy = gtfs_realtime_pb2.VehiclePosition.OccupancyStatus.Name(
                v.occupancy_status)
    # A load beyond 300 % of capacity is a broken counter, not a crowd: left out, the rest kept.
    occupancy_pct = (float(v.occupancy_percentage)
                     if v.HasField("occupancy_percentage") and v.occupancy_percentage <= 300
                     else None)
    return VehiclePosition(
        vehicle_id=f"{feed}:{raw_id}", lon=lon, lat=lat, observed_at=observed,
        speed_kmh=speed_kmh, heading_deg=heading, vehicle_class="bus", source="gtfs-rt",
        trip_id=trip_id, route_id=route_id, occupancy=occupancy, occupancy_pct=occupancy_pct,
        received_at=now)


def map_feed(feed: str, msg: gtfs_realtime_pb2.FeedMessage, *, now: datetime) -> MappedFeed:
    """Every entity of a parsed FeedMessage → positions and rejections (no I/O, no state)."""
    header_time = None
    if msg.header.timestamp:
        try:
            header_time = _utc(msg.header.timestamp)
        except RejectedEntity as exc:
            raise BadFeed(f"header timestamp unusable: {exc}") from exc
    out = MappedFeed(header_time=header_time)
    for entity in msg.entity:
        # Deletions (DIFFERENTIAL feeds) and trip updates or alerts in a combined feed aren't
        # positions: ignored, not errors.
        if entity.is_deleted or not entity.HasField("vehicle"):
            out.ignored += 1
            continue
        try:
            out.positions.append(position_from_entity(feed, entity.vehicle,
                                                      header_time=header_time, now=now))
        except RejectedEntity as exc:
            out.rejected[exc.kind] += 1
            out.examples.setdefault(exc.kind, str(exc))
    return out


def position_event_id(pos: VehiclePosition) -> str:
    """A stable envelope id per (vehicle, time), so duplicates from replicas are dropped."""
    return uuid.uuid5(_ID_NAMESPACE, f"gtfs-rt|{pos.vehicle_id}|{pos.observed_at.timestamp()}").hex


# ---- polling ------------------------------------------------------------------------------


class FetchError(Exception):
    """A fetch that failed; ``result`` is one of FETCH_RESULTS."""

    def __init__(self, result: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class FeedState:
    """What the poller knows about one feed."""

    source: FeedSource
    etag: str | None = None
    last_modified: str | None = None
    header_time: datetime | None = None
    primed: bool = False
    up: bool | None = None  # None until the first verdict
    started_mono: float = 0.0
    last_success_mono: float | None = None
    last_new_data_mono: float | None = None
    down_since: datetime | None = None
    last_error: str = ""
    waiting_logged: bool = False
    vehicles: int = 0
    published: int = 0
    duplicates: int = 0
    rejected: Tally[str] = field(default_factory=Tally)
    # vehicle id -> last published observation (POSIX seconds): duplicate suppression.
    last_seen: dict[str, float] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class PollResult:
    """The outcome of one poll of one feed."""

    result: str
    published: int = 0
    duplicates: int = 0
    rejected: int = 0
    ignored: int = 0
    error: str = ""
    retry_after_s: float | None = None


class GtfsRtPoller:
    """Polls every configured feed in its own task; ``start``/``stop`` around its lifetime."""

    def __init__(self, sources: Sequence[FeedSource], *, bus: EventBus, poll_s: float = 15.0,
                 stale_s: float = 120.0, timeout_s: float = 10.0, max_bytes: int = 10_000_000,
                 session: aiohttp.ClientSession | None = None, clock: Clock | None = None,
                 monotonic: Callable[[], float] | None = None,
                 wall: Callable[[], datetime] | None = None) -> None:
        """``clock`` paces the polls and dates the positions; ``monotonic`` and ``wall``
        (default: the clock's) can be moved by hand in tests of staleness and ages."""
        if poll_s <= 0 or stale_s <= 0 or timeout_s <= 0 or max_bytes <= 0:
            raise ConfigError("GTFS-rt poll, stale, timeout and size limits must be positive")
        self.feeds = [FeedState(s) for s in sources]
        self.bus = bus
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._session = session
        self._own_session = session is None
        self.clock = clock = clock or Clock()
        self._monotonic = monotonic or clock.monotonic
        self._wall = wall or clock.now
        self._tasks: set[asyncio.Task[None]] = set()
        now = self._monotonic()
        for f in self.feeds:
            f.started_mono = now
            FEED_UP.labels(f.source.name).set(0)

    @classmethod
    def from_config(cls, config: Config, *, bus: EventBus,
                    clock: Clock | None = None) -> GtfsRtPoller:
        """A poller for ``TTI_GTFS_RT_URLS`` with the configured timings."""
        return cls(parse_feed_sources(config.gtfs_rt_urls), bus=bus, clock=clock,
                   poll_s=config.gtfs_rt_poll_s, stale_s=config.gtfs_rt_stale_s,
                   timeout_s=config.gtfs_rt_timeout_s, max_bytes=config.gtfs_rt_max_bytes)

    def find_feed(self, name: str) -> FeedState | None:
        """The state of the feed called ``name``, if configured."""
        return next((f for f in self.feeds if f.source.name == name), None)

    # ---- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the HTTP client (``start`` does; tests drive ``poll_once`` after this alone)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s,
                                              connect=min(5.0, self.timeout_s)),
                headers={"User-Agent": USER_AGENT,
                         "Accept": "application/x-protobuf, application/octet-stream;q=0.9"})

    async def start(self) -> None:
        """Open the HTTP client and start one polling task per feed."""
        await self.open()
        for f in self.feeds:
            t = asyncio.create_task(self._run(f), name=f"gtfs-rt:{f.source.name}")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel the polling tasks and close the HTTP client."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx`` entry: poll while the app runs."""
        await self.start()
        log.info("GTFS-rt poller started", extra={"feeds": [f.source.name for f in self.feeds],
                                                  "poll_s": self.poll_s})
        try:
            yield
        finally:
            await self.stop()

    async def _run(self, feed: FeedState) -> None:
        backoff = 1.0
        while True:
            try:
                result = await self.poll_once(feed)
            except Exception:  # a bug must not end polling for good
                log.exception("GTFS-rt poll of %s failed unexpectedly", feed.source.name)
                result = PollResult("bad_feed", error="internal error")
            if feed.primed:
                delay = self.poll_s
            else:
                # Until the first good fetch, retry sooner: the feed may just be starting too.
                delay = min(self.poll_s, backoff)
                backoff *= 2
            if result.retry_after_s:  # the server asked us to back off (429/503)
                # Its Retry-After counts real seconds; our delays count clock seconds.
                delay = max(delay, self.clock.clock_seconds(result.retry_after_s))
            # Jitter keeps replicas polling the same feed from hitting it in lockstep.
            await self.clock.sleep(delay * random.uniform(0.9, 1.1))

    # ---- one poll -------------------------------------------------------------------------
    async def poll_once(self, feed: FeedState) -> PollResult:
        """Fetch, map and publish one feed once; updates its health. Never raises BusError."""
        async with feed.lock:  # one poll per feed at a time, or duplicates could slip through
            return await self._poll(feed)

    async def _poll(self, feed: FeedState) -> PollResult:
        name = feed.source.name
        try:
            status, body, headers = await self._fetch(feed)
        except FetchError as exc:
            FETCHES.labels(name, exc.result).inc()
            self._failed(feed, f"{exc.result}: {exc}")
            return PollResult(exc.result, error=str(exc), retry_after_s=exc.retry_after_s)
        if status == 304:
            FETCHES.labels(name, "not_modified").inc()
            self._succeeded(feed, new_data=False)
            return PollResult("not_modified")
        now = self._wall()
        try:
            mapped = await asyncio.to_thread(_parse_and_map, name, body, now)
        except BadFeed as exc:
            FETCHES.labels(name, "bad_feed").inc()
            self._failed(feed, f"bad_feed: {exc}")
            return PollResult("bad_feed", error=str(exc))
        fresh, dupes = self._fresh(feed, mapped.positions)
        try:
            await self._publish(feed, fresh)
        except BusError as exc:
            # Validators are not stored: the next poll fetches the whole feed again, and the
            # dedup state only holds what the bus took.
            FETCHES.labels(name, "bus_error").inc()
            self._failed(feed, f"bus_error: {exc}")
            return PollResult("bus_error", error=str(exc))
        FETCHES.labels(name, "ok").inc()
        feed.etag = headers.get("ETag")
        feed.last_modified = headers.get("Last-Modified")
        for kind, n in mapped.rejected.items():
            REJECTED.labels(name, kind).inc(n)
            feed.rejected[kind] += n
        if mapped.rejected:
            log.debug("GTFS-rt %s: rejected %s, e.g. %s", name, dict(mapped.rejected),
                      next(iter(mapped.examples.values())))
        POSITIONS.labels(name, "published").inc(len(fresh))
        POSITIONS.labels(name, "duplicate").inc(dupes)
        POSITIONS.labels(name, "rejected").inc(sum(mapped.rejected.values()))
        POSITIONS.labels(name, "ignored").inc(mapped.ignored)
        feed.published += len(fresh)
        feed.duplicates += dupes
        feed.vehicles = len(mapped.positions)
        advanced = (mapped.header_time is not None
                    and (feed.header_time is None or mapped.header_time > feed.header_time))
        if mapped.header_time is not None:
            feed.header_time = mapped.header_time
        self._prune(feed, now)
        self._succeeded(feed, new_data=advanced or bool(fresh))
        return PollResult("ok", published=len(fresh), duplicates=dupes,
                          rejected=sum(mapped.rejected.values()), ignored=mapped.ignored)

    async def _fetch(self, feed: FeedState) -> tuple[int, bytes, dict[str, str]]:
        if self._session is None:
            raise RuntimeError("GtfsRtPoller.open() or start() was not called")
        headers = {}
        if feed.etag:
            headers["If-None-Match"] = feed.etag
        if feed.last_modified:
            headers["If-Modified-Since"] = feed.last_modified
        try:
            async with asyncio.timeout(self.timeout_s), self._session.get(
                    feed.source.url, headers=headers, allow_redirects=True,
                    max_redirects=5) as resp:
                if resp.status == 304:
                    return 304, b"", {}
                if resp.status != 200:
                    raise FetchError("http_error", f"HTTP {resp.status} {resp.reason or ''}"
                                     .strip(), _retry_after(resp.headers.get("Retry-After")))
                length = resp.content_length
                if length is not None and length > self.max_bytes:
                    raise FetchError("too_large", f"Content-Length {length} exceeds "
                                     f"{self.max_bytes} bytes")
                body = await _read_bounded(resp.content, self.max_bytes)
                keep = {k: v for k in ("ETag", "Last-Modified")
                        if (v := resp.headers.get(k)) is not None}
                return 200, body, keep
        except TimeoutError as exc:
            raise FetchError("timeout", f"no complete answer within {self.timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise FetchError("network_error", f"{type(exc).__name__}: {exc}") from exc

    def _fresh(self, feed: FeedState, positions: list[VehiclePosition]
               ) -> tuple[list[VehiclePosition], int]:
        fresh: dict[str, VehiclePosition] = {}
        dupes = 0
        for p in positions:
            ts = p.observed_at.timestamp()
            last = feed.last_seen.get(p.vehicle_id)
            prev = fresh.get(p.vehicle_id)
            if (last is not None and ts <= last) or (
                    prev is not None and ts <= prev.observed_at.timestamp()):
                dupes += 1
                continue
            if prev is not None:  # the same vehicle twice in one message: keep the newer
                dupes += 1
            fresh[p.vehicle_id] = p
        return list(fresh.values()), dupes

    async def _publish(self, feed: FeedState, positions: list[VehiclePosition]) -> None:
        """Hand positions to the bus in chunks; remembers each one the bus took."""
        for i in range(0, len(positions), PUBLISH_CHUNK):
            chunk = positions[i:i + PUBLISH_CHUNK]
            results = await asyncio.gather(
                *(self.bus.publish(VEHICLE_POSITION, p, key=p.vehicle_id,
                                   event_id=position_event_id(p)) for p in chunk),
                return_exceptions=True)
            failure: BaseException | None = None
            for p, r in zip(chunk, results, strict=True):
                if isinstance(r, BaseException):
                    failure = failure or r
                    continue
                feed.last_seen[p.vehicle_id] = p.observed_at.timestamp()
            if failure is not None:
                if isinstance(failure, BusError):
                    raise failure
                raise BusError(f"publish failed: {failure}") from failure

    def _prune(self, feed: FeedState, now: datetime) -> None:
        # Entries older than MAX_AGE can never be duplicates again (they'd be rejected as stale).
        cutoff = (now - MAX_AGE).timestamp()
        if len(feed.last_seen) > 2 * max(feed.vehicles, 1):
            feed.last_seen = {k: v for k, v in feed.last_seen.items() if v >= cutoff}

    # ---- health ---------------------------------------------------------------------------
    def _succeeded(self, feed: FeedState, *, new_data: bool) -> None:
        now = self._monotonic()
        feed.last_success_mono = now
        LAST_SUCCESS.labels(feed.source.name).set(self._wall().timestamp())
        if not feed.primed:
            feed.primed = True
            new_data = True
        if new_data:
            feed.last_new_data_mono = now
        assert feed.last_new_data_mono is not None
        idle = now - feed.last_new_data_mono
        if idle > self.stale_s:
            self._mark(feed, False, f"stale: no new data for {idle:.0f} s")
        else:
            self._mark(feed, True, "")

    def _failed(self, feed: FeedState, reason: str) -> None:
        self._mark(feed, False, reason)

    def _mark(self, feed: FeedState, up: bool, reason: str) -> None:
        name = feed.source.name
        if up:
            feed.last_error = ""
            if feed.up is False:
                down_s = (self._wall() - feed.down_since).total_seconds() \
                    if feed.down_since else 0.0
                log.info("GTFS-rt feed %s recovered after %.0f s", name, down_s,
                         extra={"feed": name, "vehicles": feed.vehicles})
            elif feed.up is None:
                log.info("GTFS-rt feed %s primed: %d vehicles", name, feed.vehicles,
                         extra={"feed": name})
            feed.up = True
            feed.down_since = None
            FEED_UP.labels(name).set(1)
            return
        feed.last_error = reason
        FEED_UP.labels(name).set(0)
        if feed.up is True or (feed.up is None and self._grace_over(feed)):
            log.warning("GTFS-rt feed %s failing: %s", name, reason,
                        extra={"feed": name, "url": feed.source.url})
            feed.up = False
            feed.down_since = self._wall()
        elif feed.up is None and not feed.waiting_logged:
            # A feed starting alongside us is normal; only warn once the grace period is over.
            log.info("GTFS-rt feed %s not reachable yet (%s); retrying", name, reason,
                     extra={"feed": name, "url": feed.source.url})
            feed.waiting_logged = True

    def _grace_over(self, feed: FeedState) -> bool:
        return self._monotonic() - feed.started_mono >= self.stale_s

    def check_staleness(self) -> None:
        """Mark feeds that answer but bring nothing new as down (called by readiness too)."""
        now = self._monotonic()
        for f in self.feeds:
            if f.up is True and f.last_new_data_mono is not None \
                    and now - f.last_new_data_mono > self.stale_s:
                self._mark(f, False, f"stale: no new data for {now - f.last_new_data_mono:.0f} s")

    def readiness(self) -> tuple[bool, str]:
        """Ready once every feed is primed (or past its startup grace); detail per feed."""
        self.check_staleness()
        ready = True
        parts = []
        for f in self.feeds:
            if not f.primed and not self._grace_over(f):
                ready = False
                parts.append(f"{f.source.name}: not primed yet"
                             + (f" ({f.last_error})" if f.last_error else ""))
            elif f.up:
                age = ""
                if f.header_time is not None:
                    age = f", data {max(0.0, (self._wall() - f.header_time).total_seconds()):.0f}"\
                          " s old"
                parts.append(f"{f.source.name}: up, {f.vehicles} vehicles{age}")
            else:
                since = f" since {f.down_since:%Y-%m-%dT%H:%M:%SZ}" if f.down_since else ""
                parts.append(f"{f.source.name}: down{since} ({f.last_error})")
        return ready, "; ".join(parts) or "no feeds"


def _parse_and_map(name: str, body: bytes, now: datetime) -> MappedFeed:
    return map_feed(name, parse_feed(body), now=now)


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Read a body but stop past ``limit`` bytes (after decompression, so a gzip bomb stops)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise FetchError("too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(raw: str | None) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), capped at an hour."""
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            # An HTTP date is the server's real time, so it is measured against real time.
            seconds = (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, 3600.0)) if math.isfinite(seconds) else None
