"""The publisher's live state and the tasks that feed it: bus consumers and the catalogue loaders.

One event loop owns all of it, so handlers and HTTP readers need no locks; the catalogues are
replaced as whole snapshots. Every change is stamped (``changed``, for Last-Modified) and pushed
to the clients following it (:mod:`services.publisher.hub`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

from services.publisher import render
from services.publisher.buses import BusBoard, PublicLabels
from services.publisher.hub import PushHub, Where
from services.publisher.places import ParkingBoard, Places, load_places
from services.publisher.reports import ReportBoard
from services.publisher.roads import Catalogue, RoadStatusBoard
from services.publisher.warning_board import IncidentBoard, IndexBoard, WarningBoard
from shared.bus.base import EventBus, Handler, Subscription
from shared.bus.objects import objects_for_bus
from shared.clients.bigdata import BigdataClient, Region, Segment
from shared.clients.warning import WarningClient
from shared.clock import Clock
from shared.codec import Envelope, payload_from_dict
from shared.config import Config
from shared.errors import TtiError
from shared.events import (
    AREA_INDEX,
    ARRIVAL_PREDICTION,
    BUS_ARRIVAL,
    FEATURE_STATE,
    INCIDENT,
    ROAD_STATUS,
    VEHICLE_POSITION,
    WARNING,
    AreaIndex,
    ArrivalPrediction,
    BusArrival,
    FeatureState,
    Incident,
    RoadStatus,
    Subject,
    VehiclePosition,
    Warning,
)

log = logging.getLogger("tti.publisher")

SEGMENTS_CACHED = Gauge("tti_publisher_segments_cached", "Segments in the publisher's catalogue")
WARNINGS_ACTIVE = Gauge("tti_publisher_warnings_active", "Active warnings the publisher holds")
ROAD_STATUS_HELD = Gauge("tti_publisher_road_status_held", "Segments with a held road status")
EVENTS = Counter("tti_publisher_events_total", "Bus events the publisher consumed, by result",
                 ["subject", "result"])
CATALOGUE_LOADS = Counter("tti_publisher_catalogue_loads_total",
                          "Attempts to load the segment catalogue from bigdata, by result",
                          ["result"])
SEGMENTS_REJECTED = Counter("tti_publisher_segments_rejected_total",
                            "Segment records from bigdata skipped as malformed, by kind", ["kind"])
PLACES_REJECTED = Counter("tti_publisher_places_rejected_total",
                          "Stop, route and place records from bigdata skipped, by kind", ["kind"])
PLACES_LOADS = Counter("tti_publisher_places_loads_total",
                       "Attempts to load stops, routes and places from bigdata, by result",
                       ["result"])
BUSES_LIVE = Gauge("tti_publisher_buses_live", "Live buses the publisher holds")
PREDICTIONS_HELD = Gauge("tti_publisher_predictions_held", "Arrival predictions held")


PHOTO_RETENTION_S = 180 * 86_400.0
"""Report photos are kept as long as the warning service keeps the reports (180 days)."""
PHOTO_STORE_BYTES = 20 << 30
"""At most 20 GiB of photos on the bus's object store (≈ 10 000 full-size photos)."""


class Publisher:
    """Holds the catalogue, road statuses and warnings, and keeps them current.

    The tunables are plain attributes so a test (or the CLI) can set them before the app starts.
    """

    def __init__(self, config: Config, bus: EventBus, bigdata: BigdataClient, *,
                 warning: WarningClient, clock: Clock) -> None:
        self.config = config
        self.bus = bus
        self.bigdata = bigdata
        self.warning = warning
        self.clock = clock
        self.catalogue: Catalogue | None = None
        self.places: Places | None = None
        self.roads = RoadStatusBoard()
        self.warnings = WarningBoard()
        self.incidents = IncidentBoard()
        self.index = IndexBoard()
        self.buses = BusBoard(labels=PublicLabels(config.public_id_key))
        self.parking = ParkingBoard()
        self.reports = ReportBoard()
        self.photos = objects_for_bus(bus, "report-photos", ttl_s=PHOTO_RETENTION_S,
                                      max_bytes=PHOTO_STORE_BYTES)
        """Report photos, shared by every replica (the event references them by SHA-256)."""
        self.hub = PushHub()
        self.changed: dict[str, datetime] = {}
        """Topic (roads, warnings, incidents, index, buses, places, parking) → last change."""
        self.timetables: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self.timetable_ttl_s = 60.0
        self.places_refresh_s = 600.0
        self.max_features = 50_000
        self.retry_initial_s = 0.5
        self.retry_max_s = 30.0
        self.refresh_s = 600.0
        self.housekeeping_s = 60.0
        self.warn_after_s = 10.0
        self.load_errors: dict[str, str] = {}
        self.warning_listeners: list[Callable[[Warning], None]] = []
        """Called with every valid warning event, applied or not (a channel's notifier: the
        impact of a version arrives as a second message of that version); must not block."""
        self.primed = False
        self._subscriptions: list[Subscription] = []

    @property
    def durable(self) -> str:
        """Consumer group name: every replica needs every event, so replicas never share one."""
        if self.config.replica_count > 1:
            return f"publisher-{self.config.replica_index}"
        return "publisher"

    @property
    def region(self) -> Region | None:
        """The region of the loaded catalogue, if any."""
        return None if self.catalogue is None else self.catalogue.region

    # -- bus ---------------------------------------------------------------------------------

    def _touch(self, topic: str) -> None:
        self.changed[topic] = self.clock.now()

    async def on_road_status(self, env: Envelope[RoadStatus]) -> None:
        """Bus handler: keep the newest status per segment."""
        try:
            applied = self.roads.apply(env.payload)
        except TtiError:
            EVENTS.labels(ROAD_STATUS.name, "rejected").inc()
            raise
        EVENTS.labels(ROAD_STATUS.name, "applied" if applied else "stale").inc()
        ROAD_STATUS_HELD.set(len(self.roads))
        if applied:
            self._touch("roads")
            if self.hub and self.catalogue is not None:
                segment = self.catalogue.find(env.payload.segment_id)
                if segment is not None:
                    self.hub.push("road", render.road_change(segment, env.payload),
                                  Where(bbox=render.line_bbox(segment.coords)))

    async def on_warning(self, env: Envelope[Warning]) -> None:
        """Bus handler: insert or update a warning by id."""
        try:
            applied = self.warnings.apply(env.payload)
        except TtiError:
            EVENTS.labels(WARNING.name, "rejected").inc()
            raise
        EVENTS.labels(WARNING.name, "applied" if applied else "stale").inc()
        WARNINGS_ACTIVE.set(self.warnings.active_count)
        for listener in self.warning_listeners:
            listener(env.payload)
        if applied:
            self._touch("warnings")
            if self.hub:
                w = self.warnings.find(env.payload.warning_id)
                assert w is not None
                box = render.warning_bbox(w, self.catalogue)
                self.hub.push("warning", render.warning_json(w),
                              Where(bbox=box, everywhere=box is None))

    async def on_incident(self, env: Envelope[Incident]) -> None:
        """Bus handler: insert or update an incident by id."""
        applied = self._apply(INCIDENT, self.incidents.apply, env.payload)
        if applied:
            self._touch("incidents")
            inc = env.payload
            if self.hub:
                box = (None if inc.lon is None or inc.lat is None
                       else (inc.lon, inc.lat, inc.lon, inc.lat))
                self.hub.push("incident", render.incident_json(inc),
                              Where(bbox=box, everywhere=box is None))

    async def on_area_index(self, env: Envelope[AreaIndex]) -> None:
        """Bus handler: the newest traffic index per area."""
        if self._apply(AREA_INDEX, self.index.apply, env.payload):
            self._touch("index")
            if self.hub and env.payload.area_id == "network":
                self.hub.push("index", render.index_json(env.payload), Where(everywhere=True))

    async def on_position(self, env: Envelope[VehiclePosition]) -> None:
        """Bus handler: a bus's position (other vehicles are passed over)."""
        bus = self._apply(VEHICLE_POSITION, self.buses.apply_position, env.payload,
                          skipped="not_bus")
        if bus is not None:
            self._touch("buses")
            if self.hub:
                self.hub.push("vehicle", render.bus_json(bus, self.places),
                              Where(bbox=(bus.lon, bus.lat, bus.lon, bus.lat),
                                    route_id=bus.route_id))

    async def on_arrival(self, env: Envelope[BusArrival]) -> None:
        """Bus handler: a bus reached or left a stop."""
        self._apply(BUS_ARRIVAL, self.buses.apply_arrival, env.payload, skipped="unknown_bus")
        self._touch("buses")

    async def on_prediction(self, env: Envelope[ArrivalPrediction]) -> None:
        """Bus handler: bigdata's newest arrival prediction for a trip at a stop."""
        pred = self._apply(ARRIVAL_PREDICTION, self.buses.apply_prediction, env.payload)
        if pred is not None:
            self._touch("buses")
            if self.hub:
                stops = {pred.stop_id}
                stop = self.places.stop_by_id.get(pred.stop_id) if self.places else None
                if stop is not None and stop.parent_station:
                    stops.add(stop.parent_station)
                self.hub.push("arrival", render.prediction_json(
                    pred, self.buses.find_bus(pred.vehicle_ref, self.clock.now())
                    if pred.vehicle_ref else None, self.places, self.clock.now()),
                    Where(stop_ids=frozenset(stops), route_id=pred.route_id))

    async def on_feature_state(self, env: Envelope[FeatureState]) -> None:
        """Bus handler: a car park's free spaces (other features' states are passed over)."""
        st = env.payload
        if st.kind != "parking":
            EVENTS.labels(FEATURE_STATE.name, "skipped").inc()
            return
        applied = self.parking.apply(st.feature_id, st.values, st.observed_at)
        EVENTS.labels(FEATURE_STATE.name, "applied" if applied else "stale").inc()
        if applied:
            self._touch("parking")

    def _apply(self, subject: Subject[object] | Subject[Any], apply: Callable[[Any], Any],
               payload: object, *, skipped: str = "stale") -> Any:
        try:
            result = apply(payload)
        except TtiError:
            EVENTS.labels(subject.name, "rejected").inc()
            raise
        EVENTS.labels(subject.name, "applied" if result else skipped).inc()
        return result

    async def subscribe(self) -> None:
        """Start consuming everything the answers are made of."""
        feeds: list[tuple[Subject[Any], Handler[Any]]] = [
            (ROAD_STATUS, self.on_road_status), (WARNING, self.on_warning),
            (INCIDENT, self.on_incident), (AREA_INDEX, self.on_area_index),
            (VEHICLE_POSITION, self.on_position), (BUS_ARRIVAL, self.on_arrival),
            (ARRIVAL_PREDICTION, self.on_prediction), (FEATURE_STATE, self.on_feature_state)]
        for subject, handler in feeds:
            self._subscriptions.append(
                await self.bus.subscribe(subject, handler, durable=self.durable))

    async def unsubscribe(self) -> None:
        """Stop consuming; in-flight events finish first."""
        subs, self._subscriptions = self._subscriptions, []
        for sub in subs:
            try:
                await sub.stop()
            except Exception:  # the bus may already be closed by its owner
                log.warning("stopping a publisher subscription failed", exc_info=True)

    # -- catalogue ---------------------------------------------------------------------------

    async def load_catalogue(self) -> Catalogue:
        """Fetch the whole catalogue and region from bigdata and swap the snapshot in."""
        region = await self.bigdata.get_region()
        batch = await self.bigdata.list_segments()
        for kind, n in batch.rejected.items():
            SEGMENTS_REJECTED.labels(kind).inc(n)
        if not batch.segments:
            # bigdata answers before its import finishes; an empty map is not "ready".
            raise _EmptyCatalogue(f"bigdata has no segments yet (region {region.name!r})")
        # Building the STRtree for a large region takes a while; keep the loop responsive.
        catalogue = await asyncio.to_thread(Catalogue, batch.segments, region)
        self.catalogue = catalogue
        self._touch("catalogue")
        SEGMENTS_CACHED.set(len(catalogue))
        rejected = sum(batch.rejected.values())
        log.info("segment catalogue loaded: %d segments (%d of %d records rejected%s)",
                 len(catalogue), rejected, rejected + len(batch.segments),
                 f": {dict(batch.rejected)}" if rejected else "")
        return catalogue

    async def keep_catalogue(self) -> None:
        """Load the catalogue, retrying with backoff until bigdata answers; then refresh it."""
        await self._keep("segment catalogue", self.load_catalogue, CATALOGUE_LOADS,
                         lambda: self.catalogue is not None, lambda: self.refresh_s)

    async def load_places(self) -> Places:
        """Fetch stops, bus routes and places from bigdata and swap the snapshot in."""
        region = self.region or await self.bigdata.get_region()
        places = await load_places(self.bigdata, region.bbox, self.clock.now())
        for kind, n in places.rejected.items():
            PLACES_REJECTED.labels(kind).inc(n)
        self.places = places
        self.parking.seed(places.places)
        self.timetables.clear()
        self._touch("places")
        self._touch("parking")
        log.info("stops, routes and places loaded: %d stops, %d bus routes, %d places "
                 "(%d car parks), %d records rejected", len(places.stops), len(places.routes),
                 len(places.places), len(places.parking), sum(places.rejected.values()))
        return places

    async def keep_places(self) -> None:
        """Load stops, routes and places, retrying until bigdata answers; then refresh them."""
        await self._keep("stops and places", self.load_places, PLACES_LOADS,
                         lambda: self.places is not None, lambda: self.places_refresh_s)

    async def prime_from_warning(self) -> None:
        """Take the warning service's current index and incidents once at start.

        The bus carries every later change; until the first index window closes (or for an
        incident raised before this replica started) this is what the answers know.
        """

        async def prime() -> None:
            index = await self.warning.get_index()
            for raw in [index.get("network"), *(index.get("areas") or [])]:
                if isinstance(raw, dict):
                    self._prime(self.index.apply, AreaIndex, raw)
            incidents = await self.warning.list_incidents("active")
            for raw in incidents.get("incidents") or []:
                if isinstance(raw, dict):
                    self._prime(self.incidents.apply, Incident, raw)
            self._touch("index")
            self._touch("incidents")
            self.primed = True

        await self._keep("warning index and incidents", prime, None, lambda: self.primed,
                         lambda: None)

    def _prime(self, apply: Callable[[Any], bool], cls: type[Any], raw: dict[str, Any]) -> None:
        try:
            apply(payload_from_dict(cls, raw))
        except TtiError as exc:
            log.warning("skipped a malformed %s from the warning service: %s", cls.__name__,
                        exc)

    async def _keep(self, what: str, load: Callable[[], Awaitable[object]],
                    counter: Counter | None, loaded: Callable[[], bool],
                    refresh_s: Callable[[], float | None]) -> None:
        """Run ``load`` until it succeeds (backoff), then every ``refresh_s()`` (None: once).

        A failure is logged when it starts, once more if it persists, and at recovery. The
        first miss is routine in the embedded run: bigdata is served by this very server, which
        is not listening yet when the first attempt goes out.
        """
        delay = self.retry_initial_s
        failing_since: float | None = None
        warned = False
        while True:
            try:
                await load()
            except Exception as exc:
                if counter is not None:
                    counter.labels("failed").inc()
                error = str(exc) or type(exc).__name__
                self.load_errors[what] = error
                expected = isinstance(exc, TtiError | _EmptyCatalogue)
                now = self.clock.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.log(logging.INFO if expected else logging.WARNING,
                            "%s not loaded yet: %s; retrying", what, error,
                            exc_info=not expected)
                elif not warned and now - failing_since >= self.warn_after_s:
                    warned = True
                    log.warning("cannot load the %s for %.0f s: %s; still retrying", what,
                                now - failing_since, error)
                if not loaded():
                    await self.clock.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self.retry_max_s)
                    continue
            else:
                if counter is not None:
                    counter.labels("ok").inc()
                if failing_since is not None:
                    log.info("%s source recovered", what)
                failing_since, warned = None, False
                self.load_errors.pop(what, None)
                delay = self.retry_initial_s
            period = refresh_s()
            if period is None:
                return
            await self.clock.sleep(period)

    @property
    def last_load_error(self) -> str | None:
        """Why the segment catalogue is not loaded (None when it is, or nothing failed)."""
        return self.load_errors.get("segment catalogue")

    def catalogue_readiness(self) -> tuple[bool, str]:
        """Readiness: true once a catalogue is loaded."""
        if self.catalogue is not None:
            return True, f"{len(self.catalogue)} segments"
        return False, f"waiting for bigdata: {self.last_load_error or 'loading'}"

    def places_readiness(self) -> tuple[bool, str]:
        """Readiness: true once stops, routes and places are loaded."""
        if self.places is not None:
            return True, (f"{len(self.places.stops)} stops, {len(self.places.routes)} routes, "
                          f"{len(self.places.places)} places")
        return False, f"waiting for bigdata: {self.load_errors.get('stops and places', 'loading')}"

    def bus_readiness(self) -> tuple[bool, str]:
        """Readiness: the bus is connected."""
        return (True, "connected") if self.bus.connected else (False, "bus disconnected")

    # -- road status -------------------------------------------------------------------------

    def road_status(self, segment: Segment, now: datetime) -> RoadStatus | None:
        """The segment's status as the warning service graded it (live, profile or none)."""
        return self.roads.find(segment.segment_id, now)

    # -- housekeeping ------------------------------------------------------------------------

    def prune(self, now: datetime | None = None) -> None:
        """Expire old road statuses and long-cleared warnings; refresh the gauges."""
        now = now or self.clock.now()
        self.roads.prune(now)
        self.warnings.prune(now)
        self.incidents.prune(now)
        if self.buses.prune(now):
            self._touch("buses")
        BUSES_LIVE.set(len(self.buses.buses))
        PREDICTIONS_HELD.set(self.buses.held)
        mono = self.clock.monotonic()
        for stop_id in [k for k, (t, _) in self.timetables.items()
                        if mono - t > self.timetable_ttl_s]:
            del self.timetables[stop_id]
        ROAD_STATUS_HELD.set(len(self.roads))
        WARNINGS_ACTIVE.set(self.warnings.active_count)

    async def housekeeping(self) -> None:
        """Prune periodically, forever."""
        while True:
            await self.clock.sleep(self.housekeeping_s)
            self.prune()


class _EmptyCatalogue(Exception):
    """bigdata answered with no segments."""
