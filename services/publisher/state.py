"""The publisher's live state and the tasks that feed it: bus consumers and the catalogue loader.

One event loop owns all of it, so handlers and HTTP readers need no locks; the catalogue is
replaced as a whole snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime

from prometheus_client import Counter, Gauge

from services.publisher.roads import Catalogue, RoadStatusBoard
from services.publisher.warning_board import WarningBoard
from shared.bus.base import EventBus, Subscription
from shared.clients.bigdata import BigdataClient, Region, Segment
from shared.clients.warning import WarningClient
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.errors import TtiError
from shared.events import ROAD_STATUS, WARNING, RoadStatus, Warning

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
        self.roads = RoadStatusBoard()
        self.warnings = WarningBoard()
        self.max_features = 50_000
        self.retry_initial_s = 0.5
        self.retry_max_s = 30.0
        self.refresh_s = 600.0
        self.housekeeping_s = 60.0
        self.warn_after_s = 10.0
        self.last_load_error: str | None = None
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

    async def on_road_status(self, env: Envelope[RoadStatus]) -> None:
        """Bus handler: keep the newest status per segment."""
        try:
            applied = self.roads.apply(env.payload)
        except TtiError:
            EVENTS.labels(ROAD_STATUS.name, "rejected").inc()
            raise
        EVENTS.labels(ROAD_STATUS.name, "applied" if applied else "stale").inc()
        ROAD_STATUS_HELD.set(len(self.roads))

    async def on_warning(self, env: Envelope[Warning]) -> None:
        """Bus handler: insert or update a warning by id."""
        try:
            applied = self.warnings.apply(env.payload)
        except TtiError:
            EVENTS.labels(WARNING.name, "rejected").inc()
            raise
        EVENTS.labels(WARNING.name, "applied" if applied else "stale").inc()
        WARNINGS_ACTIVE.set(self.warnings.active_count)

    async def subscribe(self) -> None:
        """Start consuming road status and warnings."""
        self._subscriptions.append(
            await self.bus.subscribe(ROAD_STATUS, self.on_road_status, durable=self.durable))
        self._subscriptions.append(
            await self.bus.subscribe(WARNING, self.on_warning, durable=self.durable))

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
        SEGMENTS_CACHED.set(len(catalogue))
        rejected = sum(batch.rejected.values())
        log.info("segment catalogue loaded: %d segments (%d of %d records rejected%s)",
                 len(catalogue), rejected, rejected + len(batch.segments),
                 f": {dict(batch.rejected)}" if rejected else "")
        return catalogue

    async def keep_catalogue(self) -> None:
        """Load the catalogue, retrying with backoff until bigdata answers; then refresh it."""
        delay = self.retry_initial_s
        failing_since: float | None = None
        warned = False
        while True:
            try:
                await self.load_catalogue()
            except Exception as exc:
                CATALOGUE_LOADS.labels("failed").inc()
                self.last_load_error = str(exc) or type(exc).__name__
                expected = isinstance(exc, TtiError | _EmptyCatalogue)
                now = self.clock.monotonic()
                # Log when it starts failing and once more if it persists, not on every try.
                # The first miss is routine in the embedded run: bigdata is served by this very
                # server, which is not listening yet when the first attempt goes out.
                if failing_since is None:
                    failing_since = now
                    log.log(logging.INFO if expected else logging.WARNING,
                            "segment catalogue not loaded from %s yet: %s; retrying",
                            self.bigdata.base_url, self.last_load_error, exc_info=not expected)
                elif not warned and now - failing_since >= self.warn_after_s:
                    warned = True
                    log.warning("cannot load the segment catalogue from %s for %.0f s: %s; "
                                "still retrying", self.bigdata.base_url, now - failing_since,
                                self.last_load_error)
                if self.catalogue is None:
                    await self.clock.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self.retry_max_s)
                    continue
            else:
                CATALOGUE_LOADS.labels("ok").inc()
                if failing_since is not None:
                    log.info("segment catalogue source %s recovered", self.bigdata.base_url)
                failing_since, warned = None, False
                self.last_load_error = None
                delay = self.retry_initial_s
            await self.clock.sleep(self.refresh_s)

    def catalogue_readiness(self) -> tuple[bool, str]:
        """Readiness: true once a catalogue is loaded."""
        if self.catalogue is not None:
            return True, f"{len(self.catalogue)} segments"
        return False, f"waiting for bigdata: {self.last_load_error or 'loading'}"

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
        ROAD_STATUS_HELD.set(len(self.roads))
        WARNINGS_ACTIVE.set(self.warnings.active_count)

    async def housekeeping(self) -> None:
        """Prune periodically, forever."""
        while True:
            await self.clock.sleep(self.housekeeping_s)
            self.prune()


class _EmptyCatalogue(Exception):
    """bigdata answered with no segments."""
