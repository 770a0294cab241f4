"""Bigdata service: the traffic geodatabase, map matching and live segment speeds.

Consumes ``tti.position.<p>`` (its share of partitions), matches each vehicle online to the road
network, aggregates space-mean speeds per segment and window, persists them and publishes
``tti.segment.speed``. Serves the internal geodatabase API under ``/v1``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter, Gauge

from services.bigdata.matching import OnlineMatcher
from services.bigdata.speeds import SpeedWindows, WindowSpeed
from services.bigdata.store import GeoStore, SpeedRecord, store_from_url
from shared.bus import EventBus
from shared.codec import Envelope
from shared.config import Config
from shared.errors import BadRequest, NotFound
from shared.events import SEGMENT_SPEED, VEHICLE_POSITION, SegmentSpeed, VehiclePosition
from shared.roadnet import RoadNetwork, RoadSegment
from shared.service import add_readiness_check, create_base_app, spawn

log = logging.getLogger("tti.bigdata")

POSITIONS = Counter("tti_bigdata_positions_total", "Positions processed by match result",
                    ["result"])
WINDOWS = Counter("tti_bigdata_speed_windows_total", "Segment speed windows published")
LATE = Counter("tti_bigdata_late_pieces_total", "Matched pieces that arrived after their window")
VEHICLES = Gauge("tti_bigdata_tracked_vehicles", "Vehicles with live matcher state")
SEGMENTS = Gauge("tti_bigdata_segments", "Road segments in the loaded network")


class Bigdata:
    """Live state of the service: network, per-vehicle matchers, open speed windows."""

    MAX_VEHICLES = 200_000
    IDLE_S = 600.0

    def __init__(self, config: Config, bus: EventBus, store: GeoStore) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        self.network: RoadNetwork | None = None
        self.matchers: OrderedDict[str, tuple[float, OnlineMatcher]] = OrderedDict()
        self.windows = SpeedWindows(config.speed_window_s)
        self.latest: dict[str, SegmentSpeed] = {}

    async def load_network(self) -> RoadNetwork:
        """Import the configured OSM file (idempotent) or load the network already stored."""
        osm = self.config.osm
        if osm:
            path = Path(osm)
            digest = await asyncio.to_thread(_sha256, path)
            network = await asyncio.to_thread(RoadNetwork.from_osm, path)
            changed = await self.store.import_segments(str(path), digest, path.stem,
                                                       network.segments.values())
            log.info("road network %s: %d segments (%s)", path, len(network.segments),
                     "imported" if changed else "unchanged")
        else:
            segments = await self.store.list_segments()
            if not segments:
                raise RuntimeError("no road network: set TTI_OSM or run `tti import-osm FILE`")
            network = RoadNetwork.from_segments(segments)
        SEGMENTS.set(len(network.segments))
        self.network = network
        return network

    async def on_position(self, env: Envelope[VehiclePosition]) -> None:
        """Match one position and add what the vehicle drove to the open windows."""
        network = self.network
        if network is None:
            from shared.errors import TransientError

            raise TransientError("road network not loaded yet")
        pos = env.payload
        t = pos.observed_at.timestamp()
        entry = self.matchers.get(pos.vehicle_id)
        if entry is None:
            matcher = OnlineMatcher(network)
            if len(self.matchers) >= self.MAX_VEHICLES:
                self.matchers.popitem(last=False)
        else:
            matcher = entry[1]
            self.matchers.move_to_end(pos.vehicle_id)
        self.matchers[pos.vehicle_id] = (time.time(), matcher)
        result = matcher.update(t, pos.lon, pos.lat, heading=pos.heading_deg,
                                speed_kmh=pos.speed_kmh)
        POSITIONS.labels("matched" if result.candidate else "unmatched").inc()
        if result.pieces:
            before = self.windows.late_pieces
            self.windows.add(pos.vehicle_id, t, result.pieces, now=time.time())
            if self.windows.late_pieces != before:
                LATE.inc()

    def _evict_idle(self, now: float) -> None:
        while self.matchers:
            vid, (seen, _) = next(iter(self.matchers.items()))
            if now - seen < self.IDLE_S:
                break
            del self.matchers[vid]
        VEHICLES.set(len(self.matchers))

    async def flush(self, now: float) -> list[SegmentSpeed]:
        """Close due windows: persist them and publish one SegmentSpeed per segment."""
        closed = self.windows.close_due(now)
        self._evict_idle(now)
        if not closed or self.network is None:
            return []
        events = [self._event(w, self.network.get_segment(w.segment_id)) for w in closed]
        await self.store.insert_speeds([
            SpeedRecord(segment_id=e.segment_id, window_start=e.window_start,
                        observed_at=e.observed_at, speed_kmh=e.speed_kmh,
                        sample_count=e.sample_count, source=e.source, confidence=e.confidence)
            for e in events])
        for e in events:
            self.latest[e.segment_id] = e
            await self.bus.publish(SEGMENT_SPEED, e)
        WINDOWS.inc(len(events))
        return events

    @staticmethod
    def _event(w: WindowSpeed, seg: RoadSegment) -> SegmentSpeed:
        mid = seg.coords[len(seg.coords) // 2]
        # Confidence grows with independent vehicles and time observed; 5 vehicles → 1.
        confidence = round(min(1.0, w.sample_count / 5) * min(1.0, w.duration_s / 30), 3)
        return SegmentSpeed(
            segment_id=w.segment_id, window_start=w.window_start, observed_at=w.window_end,
            speed_kmh=round(w.speed_kmh, 2), sample_count=w.sample_count, source="probe",
            confidence=confidence, free_flow_kmh=seg.free_flow_kmh, road_class=seg.road_class,
            road_name=seg.name, lon=mid[0], lat=mid[1])

    async def flush_loop(self) -> None:
        """Close windows a few times per window length, forever."""
        interval = max(0.2, min(5.0, self.config.speed_window_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(time.time())
            except Exception:
                log.exception("flushing speed windows failed")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


BIGDATA = web.AppKey("bigdata", Bigdata)


def _segment_json(seg: RoadSegment) -> dict[str, object]:
    return {
        "segment_id": seg.segment_id, "name": seg.name, "name_en": seg.name_en,
        "ref": seg.ref, "road_class": seg.road_class, "lanes": seg.lanes,
        "speed_limit_kmh": seg.speed_limit_kmh, "free_flow_kmh": seg.free_flow_kmh,
        "oneway": seg.oneway, "bridge": seg.bridge, "tunnel": seg.tunnel,
        "length_m": round(seg.length_m, 2), "coords": [list(c) for c in seg.coords],
    }


def parse_bbox(raw: str | None) -> tuple[float, float, float, float] | None:
    """``minlon,minlat,maxlon,maxlat`` → tuple; BadRequest with a reason when malformed."""
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) != 4:
        raise BadRequest("bbox must be minlon,minlat,maxlon,maxlat")
    try:
        vals = [float(p) for p in parts]
    except ValueError as exc:
        raise BadRequest("bbox values must be numbers") from exc
    if not all(math.isfinite(v) for v in vals):
        raise BadRequest("bbox values must be finite")
    min_lon, min_lat, max_lon, max_lat = vals
    if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise BadRequest("bbox out of range or min > max")
    return min_lon, min_lat, max_lon, max_lat


def _parse_time(raw: str | None, default: datetime, name: str) -> datetime:
    if raw is None:
        return default
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an ISO 8601 time") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


async def _segments(request: web.Request) -> web.Response:
    bbox = parse_bbox(request.query.get("bbox"))
    segs = await request.app[BIGDATA].store.list_segments(bbox)
    return web.json_response({"segments": [_segment_json(s) for s in segs], "count": len(segs)})


async def _segment(request: web.Request) -> web.Response:
    bd = request.app[BIGDATA]
    sid = request.match_info["segment_id"]
    seg = await bd.store.find_segment(sid)
    if seg is None:
        raise NotFound(f"no segment {sid!r}")
    body = _segment_json(seg)
    live = bd.latest.get(sid)
    body["live"] = None if live is None else {
        "speed_kmh": live.speed_kmh, "observed_at": live.observed_at.isoformat(),
        "sample_count": live.sample_count, "source": live.source, "confidence": live.confidence}
    return web.json_response(body)


async def _speeds(request: web.Request) -> web.Response:
    bd = request.app[BIGDATA]
    sid = request.match_info["segment_id"]
    if await bd.store.find_segment(sid) is None:
        raise NotFound(f"no segment {sid!r}")
    now = datetime.now(UTC)
    since = _parse_time(request.query.get("since"), now - timedelta(hours=24), "since")
    until = _parse_time(request.query.get("until"), now + timedelta(minutes=1), "until")
    if since >= until:
        raise BadRequest("since must be before until")
    rows = await bd.store.speed_history(sid, since, until)
    return web.json_response({"segment_id": sid, "speeds": [
        {"window_start": r.window_start.isoformat(), "observed_at": r.observed_at.isoformat(),
         "speed_kmh": r.speed_kmh, "sample_count": r.sample_count, "source": r.source,
         "confidence": r.confidence} for r in rows]})


async def _region(request: web.Request) -> web.Response:
    info = await request.app[BIGDATA].store.region()
    return web.json_response({"name": info.name, "bbox": info.bbox,
                              "segment_count": info.segment_count})


def create_app(config: Config, *, bus: EventBus, store: GeoStore | None = None) -> web.Application:
    """Wire the bigdata service; resources open in ``cleanup_ctx``, nothing happens here."""
    app = create_base_app("bigdata", config)
    store = store or store_from_url(config.db_url)
    bd = Bigdata(config, bus, store)
    app[BIGDATA] = bd

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        try:
            await bd.load_network()
            sub = await bus.subscribe(VEHICLE_POSITION, bd.on_position, durable="bigdata",
                                      partitions=config.owned_partitions())
            spawn(app, bd.flush_loop(), name="bigdata-flush")
            yield
            await sub.stop()
            await bd.flush(time.time() + config.speed_window_s * 2)
        finally:
            await store.close()

    app.cleanup_ctx.append(resources)
    add_readiness_check(app, "road_network", lambda: (
        bd.network is not None,
        f"{len(bd.network.segments)} segments" if bd.network else "not loaded"))
    add_readiness_check(app, "bus", lambda: (bus.connected, "connected" if bus.connected
                                             else "disconnected"))
    app.router.add_get("/v1/region", _region)
    app.router.add_get("/v1/segments", _segments)
    app.router.add_get("/v1/segments/{segment_id}", _segment)
    app.router.add_get("/v1/segments/{segment_id}/speeds", _speeds)
    return app
