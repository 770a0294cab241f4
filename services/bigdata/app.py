"""Bigdata service: the traffic geodatabase, map matching and live segment speeds.

Consumes ``tti.position.<p>`` (its share of partitions), matches each vehicle online to the road
network, aggregates space-mean speeds per segment and window, persists them and publishes
``tti.segment.speed``. At start it imports the configured OSM file (roads and features) and GTFS
feed into the geodatabase (each a no-op when unchanged). Serves the internal geodatabase API
under ``/v1`` (``api.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import Counter, Gauge

from services.bigdata.api import ApiContext, add_routes
from services.bigdata.gtfs_import import import_gtfs_file
from services.bigdata.matching import MatchGraph, MatchResult, OnlineMatcher
from services.bigdata.osm_features import import_osm_file
from services.bigdata.speeds import SpeedWindows, WindowSpeed
from services.bigdata.store import GeoStore, SpeedRecord, store_from_url
from services.bigdata.transit import setup_transit
from shared.bus import EventBus
from shared.codec import Envelope
from shared.config import Config
from shared.errors import TransientError, TtiError
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
        self.graph: MatchGraph | None = None
        self.matchers: OrderedDict[str, tuple[float, OnlineMatcher]] = OrderedDict()
        self.windows = SpeedWindows(config.speed_window_s)
        self.latest: dict[str, SegmentSpeed] = {}
        self.gtfs_state = "not configured"

    async def load_network(self) -> RoadNetwork:
        """Import the configured OSM file (idempotent) or load the network already stored."""
        osm = self.config.osm
        if osm:
            summary = await import_osm_file(self.store, osm)
            log.info("road network %s", summary.describe())
            network = summary.network
        else:
            segments = await self.store.list_segments()
            if not segments:
                raise RuntimeError("no road network: set TTI_OSM or run `tti import-osm FILE`")
            network = RoadNetwork.from_segments(segments)
        SEGMENTS.set(len(network.segments))
        # One routing graph shared by every vehicle's matcher (its search cache is the point).
        self.graph = MatchGraph(network)
        self.network = network
        return network

    async def load_gtfs(self) -> None:
        """Import the configured GTFS feed (idempotent); a bad feed is logged, not fatal."""
        path = self.config.gtfs
        if not path:
            return
        self.gtfs_state = "importing"
        try:
            summary = await import_gtfs_file(self.store, path)
        except TtiError as exc:
            self.gtfs_state = f"rejected: {exc.message}"
            log.error("GTFS feed %s not imported: %s", path, exc.message)
            return
        self.gtfs_state = "ready"
        log.info("GTFS %s", summary.describe())

    async def on_position(self, env: Envelope[VehiclePosition]) -> None:
        """Match one position and add what the vehicle drove to the open windows."""
        if self.graph is None:
            raise TransientError("road network not loaded yet")
        pos = env.payload
        t = pos.observed_at.timestamp()
        entry = self.matchers.get(pos.vehicle_id)
        if entry is None:
            matcher = OnlineMatcher(self.graph)
            if len(self.matchers) >= self.MAX_VEHICLES:
                _, (_, oldest) = self.matchers.popitem(last=False)
                self._add_results("evicted", oldest.flush())
        else:
            matcher = entry[1]
            self.matchers.move_to_end(pos.vehicle_id)
        self.matchers[pos.vehicle_id] = (time.time(), matcher)
        results = matcher.update(t, pos.lon, pos.lat, heading=pos.heading_deg,
                                 speed_kmh=pos.speed_kmh)
        self._add_results(pos.vehicle_id, results)

    def _add_results(self, vehicle_id: str, results: list[MatchResult]) -> None:
        # The matcher decides fixes a little late (its lag): each result carries its own time.
        for result in results:
            POSITIONS.labels("matched" if result.candidate else "unmatched").inc()
            if result.pieces:
                before = self.windows.late_pieces
                self.windows.add(vehicle_id, result.t, result.pieces, now=time.time())
                if self.windows.late_pieces != before:
                    LATE.inc()

    def _evict_idle(self, now: float) -> None:
        while self.matchers:
            vid, (seen, matcher) = next(iter(self.matchers.items()))
            if now - seen < self.IDLE_S:
                break
            del self.matchers[vid]
            self._add_results(vid, matcher.flush())
        VEHICLES.set(len(self.matchers))

    async def flush(self, now: float, *, final: bool = False) -> list[SegmentSpeed]:
        """Close due windows: persist them and publish one SegmentSpeed per segment.

        ``final`` (shutdown) first decides every vehicle's pending fixes.
        """
        if final:
            for vid, (_, matcher) in list(self.matchers.items()):
                self._add_results(vid, matcher.flush())
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


BIGDATA = web.AppKey("bigdata", Bigdata)


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
            await bd.load_gtfs()
            sub = await bus.subscribe(VEHICLE_POSITION, bd.on_position, durable="bigdata",
                                      partitions=config.owned_partitions())
            spawn(app, bd.flush_loop(), name="bigdata-flush")
            yield
            await sub.stop()
            await bd.flush(time.time() + config.speed_window_s * 2, final=True)
        finally:
            await store.close()

    app.cleanup_ctx.append(resources)
    # After `resources`: transit needs the road network loaded.
    setup_transit(app, config, bus, network=lambda: bd.network)
    add_readiness_check(app, "road_network", lambda: (
        bd.network is not None,
        f"{len(bd.network.segments)} segments" if bd.network else "not loaded"))
    add_readiness_check(app, "bus", lambda: (bus.connected, "connected" if bus.connected
                                             else "disconnected"))
    if config.gtfs:
        # A rejected feed is reported here but does not take the road API out of service.
        add_readiness_check(app, "gtfs", lambda: (bd.gtfs_state != "importing", bd.gtfs_state))
    add_routes(app, ApiContext(store, bd.latest.get))
    return app
