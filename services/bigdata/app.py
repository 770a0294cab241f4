"""Bigdata service: the traffic geodatabase, map matching and live segment speeds.

Consumes ``tti.position.<p>`` (its share of partitions): matches each vehicle online to the road
network and aggregates space-mean speeds per segment and window, keeping buses dwelling at stops,
parked vehicles and ignition-off time out of them (``speeds.py``). Consumes
``tti.detector.reading``: a reading of a detector in the registry (``detector`` features in the
geodatabase) is fused with the probe window of the segment it watches (``source``
``probe+detector``), or published alone (``detector``) when no probe drove the segment. Persists
each value in the speed history and publishes ``tti.segment.speed``; once closed, a value is owed
to both, each retried on its own: what the bus refuses waits in an outbox and is sent again on
the next flush (``outbox.py``, event id ``speed:<segment>:<bucket>``, so JetStream drops a
duplicate resend), and what the database refuses waits in ``unstored`` for the next flush (the
history is an upsert), so live values keep flowing while the database is away. ``/readyz``
probes the database every 2 s (check ``database``).

**Time** is the service's clock (``shared/clock.py``): it decides which windows are due, what
arrived late, and paces the flush loop, so under a clock at rate 10 a window of 60 s closes after
6 real seconds.

**Several replicas** (``TTI_REPLICA_COUNT`` > 1): vehicles are partitioned, so each replica sees
part of every segment's traffic. Each publishes its share of a window once the window is over
(``tti.segment.partial.<p>``, partitioned by segment id); replica i merges the partitions it owns,
applies the dwell rules to the merged data, fuses its segments' detector readings and publishes
their speeds: the values one replica fed every vehicle would give. Each replica also follows
``tti.segment.speed`` so that its API knows every segment's latest value. With one replica (the
embedded run) windows close locally and no share goes on the bus.

**Feature catalogue**: bigdata owns the geodatabase, so it tells the collector which features
exist (ids per kind, and a parking lot's capacity) on ``tti.feature.catalogue``: after loading
at start, whenever a check every 5 minutes finds it changed, every 30 minutes unchanged, and on
a ``tti.feature.catalogue_request`` (a collector that just started). The collector checks live
states against it at the edge; ``on_feature_state`` keeps a defensive check with the same rules
(``shared/feature_rules.py``).

At start it imports the configured OSM file (roads and features) and GTFS feed into the
geodatabase (each a no-op when unchanged). Recomputes time-of-week speed profiles and learned
free-flow speeds from the speed history at start and hourly (``profiles.py``). Serves the
internal geodatabase API under ``/v1`` (``api.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from services.bigdata.api import ApiContext, add_routes
from services.bigdata.gtfs_import import import_gtfs_file
from services.bigdata.matched import MatchedPositions, monitored
from services.bigdata.matching import MatchGraph, OnlineMatcher
from services.bigdata.osm_features import import_osm_file
from services.bigdata.profiles import keep_profiles
from services.bigdata.speeds import (
    FusedSpeed,
    ProbeSample,
    SettleSchedule,
    SpeedPartial,
    SpeedWindows,
    StopIndex,
    VehicleProbe,
    fuse_speeds,
)
from services.bigdata.store import GeoStore, SpeedRecord, store_from_url
from services.bigdata.transit import setup_transit
from shared.bus import EventBus
from shared.bus.base import Subscription
from shared.bus.outbox import Outbox, Outgoing
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.errors import DecodeError, NotFound, TransientError, TtiError
from shared.events import (
    DETECTOR_READING,
    FEATURE_CATALOGUE,
    FEATURE_CATALOGUE_REQUEST,
    FEATURE_KINDS,
    FEATURE_STATE,
    MATCHED_POSITION,
    SEGMENT_SPEED,
    SEGMENT_SPEED_PARTIAL,
    VEHICLE_POSITION,
    CatalogueEntry,
    CatalogueRequest,
    DetectorReading,
    FeatureCatalogue,
    FeatureState,
    SegmentSpeed,
    SegmentSpeedPartial,
    VehiclePosition,
    partition_of,
)
from shared.roadnet import RoadNetwork, RoadSegment
from shared.service import add_probe_check, add_readiness_check, create_base_app, spawn

log = logging.getLogger("tti.bigdata")

POSITIONS = Counter("tti_bigdata_positions_total", "Positions processed by match result",
                    ["result"])
WINDOWS = Counter("tti_bigdata_speed_windows_total", "Segment speed windows published, by source",
                  ["source"])
HISTORY = Counter("tti_bigdata_speed_history_total",
                  "Closed speed values written to the speed history, by outcome (stored; retried: "
                  "the database refused and they wait for the next flush; dropped: over the bound)",
                  ["result"])
LATE = Counter("tti_bigdata_late_pieces_total", "Matched pieces that arrived after their window")
READINGS = Counter("tti_bigdata_detector_readings_total",
                   "Detector readings by outcome (buffered for fusion or why dropped)", ["result"])
PARTIALS = Counter("tti_bigdata_speed_partials_total",
                   "Partial windows exchanged between replicas, by outcome", ["result"])
VEHICLES = Gauge("tti_bigdata_tracked_vehicles", "Vehicles with live matcher state")
SEGMENTS = Gauge("tti_bigdata_segments", "Road segments in the loaded network")
DETECTORS = Gauge("tti_bigdata_detectors", "Registered detectors that watch a road segment")
FEATURE_STATES = Counter("tti_bigdata_feature_states_total",
                         "Live feature states by outcome (applied, or why dropped)", ["result"])
CATALOGUES = Counter("tti_bigdata_feature_catalogues_total",
                     "Feature catalogue publications, by what caused them", ["cause"])
RECOVERED = Counter("tti_bigdata_recovered_total",
                    "Events read again from the stream at start to rebuild what the replica "
                    "before this one held in memory (matchers, merger windows), by subject",
                    ["subject"])
CATALOGUE_FEATURES = Gauge("tti_bigdata_catalogue_features",
                           "Features in the catalogue last published")

CATALOGUE_CHUNK_BYTES = 256 * 1024
"""A catalogue chunk's JSON stays below this (JetStream's default max payload is 1 MB)."""
_ENTRY_OVERHEAD = 40  # '{"feature_id":"","capacity":null},' around each id


def catalogue_chunks(kind: str, entries: Sequence[CatalogueEntry], *, published_at: datetime,
                     max_bytes: int = CATALOGUE_CHUNK_BYTES) -> list[FeatureCatalogue]:
    """One kind's catalogue as messages of at most ``max_bytes`` of JSON each (≥ 1 message).

    ``version`` is a digest of the kind's whole content: the same features give the same
    version whoever publishes them, so a consumer can tell an unchanged catalogue at a glance.
    """
    digest = hashlib.sha256(kind.encode())
    for e in entries:
        digest.update(f"\x1f{e.feature_id}\x1e{e.capacity}".encode())
    version = digest.hexdigest()[:16]
    parts: list[list[CatalogueEntry]] = [[]]
    size = 0
    for e in entries:
        n = len(e.feature_id.encode()) + _ENTRY_OVERHEAD
        if parts[-1] and size + n > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(e)
        size += n
    return [FeatureCatalogue(kind=kind, version=version, published_at=published_at, chunk=i,
                             chunks=len(parts), features=tuple(part))
            for i, part in enumerate(parts)]

_ReadingKey = tuple[str, int | None, datetime]  # detector, lane, end of interval


class Bigdata:
    """Live state of the service: network, per-vehicle probes, open windows, detector readings.

    ``clock`` (default: the configured one) decides which windows are due and what arrived
    late, and paces the flush loop. With one replica ``merger`` is ``windows`` itself; with
    several it merges every replica's shares of the segments this replica owns.
    """

    MAX_VEHICLES = 200_000
    IDLE_S = 600.0
    MAX_GRACE_S = 45.0
    MERGE_SLACK_S = 10.0
    """Shares are published on a replica's flush tick (≤ 5 s apart) and cross the bus: the
    merger waits this much longer than a replica holds its own windows."""
    DETECTOR_REFRESH_S = 60.0
    CATALOGUE_CHECK_S = 300.0
    """How often the stored catalogue is read again; it is published when it changed."""
    CATALOGUE_REPUBLISH_S = 1800.0
    """An unchanged catalogue is published again this often (its copy in the stream, kept for
    ``stream_max_age``, stays fresh); requests get it at once."""
    LAG_COVER_S = 60.0
    """Recovery re-reads this much of a partition before the last position the replica before
    this one was handed: the matcher's lag (≤ 30 s, or one reporting interval) and the fixes
    its chain starts from."""
    MAX_DETECTORS = 1_000_000
    MAX_OUTBOX = 200_000
    PUBLISH_BATCH = 256
    STORE_BATCH = 5000

    def __init__(self, config: Config, bus: EventBus, store: GeoStore, *,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        self.clock = clock or config.make_clock()
        self.network: RoadNetwork | None = None
        self.graph: MatchGraph | None = None
        self.matchers: OrderedDict[str, tuple[float, VehicleProbe]] = OrderedDict()
        self.stops: StopIndex | None = None
        self.window_s = config.speed_window_s
        # Fixes are decided late (the matcher's lag: at most 30 s, or one reporting interval
        # when that is longer): grace covers that plus transport for intervals up to 40 s.
        self.grace_s = min(self.window_s, self.MAX_GRACE_S)
        self.windows = SpeedWindows(self.window_s, grace_s=self.grace_s)
        self.flush_interval_s = max(0.2, min(5.0, self.window_s / 4))
        # A vehicle gone quiet has its last fixes decided before their windows close.
        self.settling = SettleSchedule(self.windows, lead_s=self.flush_interval_s)
        self.sharded = config.replica_count > 1
        self.owned = frozenset(config.owned_partitions())
        self.merger = (SpeedWindows(self.window_s, grace_s=self.grace_s + self.MERGE_SLACK_S)
                       if self.sharded else self.windows)
        self.detectors: dict[str, str] = {}  # detector id -> segment id it watches
        self.detectors_loaded_at = -math.inf
        # (segment, window) -> readings; keyed per reading so a redelivery replaces, not adds.
        self.readings: dict[tuple[str, int], dict[_ReadingKey, DetectorReading]] = {}
        # What the bus has not taken yet: shares for the mergers, closed values for everyone.
        self.partials_out = Outbox(bus, SEGMENT_SPEED_PARTIAL, limit=self.MAX_OUTBOX,
                                   batch=self.PUBLISH_BATCH)
        self.speeds_out = Outbox(bus, SEGMENT_SPEED, limit=self.MAX_OUTBOX,
                                 batch=self.PUBLISH_BATCH)
        # 两客一危 vehicles' decided fixes on their roads, for the warning service's rules.
        self.matched = MatchedPositions(bus, limit=self.MAX_OUTBOX, batch=self.PUBLISH_BATCH)
        # Closed values the speed history has not taken yet (the database away for a while).
        self.unstored: list[SpeedRecord] = []
        self._history_failing = False
        self._position_sub: Subscription | None = None
        self._subs: list[Subscription] = []
        self.partials_published = 0
        self.partials_merged = 0
        # Shares merged, by window: a redelivered share (or one recovery read) is merged once.
        self._merged_ids: dict[int, set[str]] = {}
        # Vehicles whose fixes recovery replayed -> the newest such fix (epoch s): samples up to
        # it are not added to windows (the replica before this one counted what it decided).
        self._replayed_until: dict[str, float] = {}
        self.recovered = 0
        self.latest: dict[str, SegmentSpeed] = {}
        self.gtfs_state = "not configured"
        self._catalogue_lock = asyncio.Lock()
        self._catalogue_version = ""
        self.catalogue_checked_at = -math.inf
        self.catalogue_published_at = -math.inf  # clock time the last publication began

    # --- loading -----------------------------------------------------------------------------

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
        self.matched.use_network(network)
        return network

    async def load_gtfs(self) -> None:
        """Import the configured GTFS feed (idempotent); a bad feed is logged, not fatal.

        Then index the stored bus stops, whether this import changed them or not (a feed may
        also have been imported with ``tti import-gtfs``).
        """
        path = self.config.gtfs
        if path:
            self.gtfs_state = "importing"
            try:
                summary = await import_gtfs_file(self.store, path)
            except TtiError as exc:
                self.gtfs_state = f"rejected: {exc.message}"
                log.error("GTFS feed %s not imported: %s", path, exc.message)
            else:
                self.gtfs_state = "ready"
                log.info("GTFS %s", summary.describe())
        await self.load_stops()

    async def load_stops(self) -> None:
        """Index the stored bus stops: a bus standing at one is dwelling, not queueing."""
        if self.network is None:
            return
        stops = await self.store.stops_in_bbox(self.network.bbox(), limit=100_000)
        points = [(s.lon, s.lat) for s in stops if s.lon is not None and s.lat is not None]
        # OSM bus stops too: a map without a GTFS feed still has its stops tagged.
        osm_stops = await self.store.features_in_bbox(self.network.bbox(), ["bus_stop"],
                                                      limit=100_000)
        points += [(f.geometry.centroid.x, f.geometry.centroid.y) for f in osm_stops]
        self.stops = StopIndex(points)

    async def load_detectors(self) -> None:
        """(Re)load the detector registry: the segment each roadside detector watches."""
        features = await self.store.features_in_bbox(None, ["detector"],
                                                     limit=self.MAX_DETECTORS)
        mapping: dict[str, str] = {}
        for f in features:
            segment_id = f.attrs.get("segment_id")
            if isinstance(segment_id, str) and segment_id:
                mapping[f.feature_id] = segment_id
        if mapping != self.detectors:
            log.info("detector registry: %d of %d detectors watch a segment", len(mapping),
                     len(features))
        self.detectors = mapping
        self.detectors_loaded_at = self.clock.time()
        DETECTORS.set(len(mapping))

    # --- consumers -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover, then subscribe: detector readings, and shares and speeds when sharded;
        positions last."""
        cfg = self.config
        owned = cfg.owned_partitions()
        await self.recover()
        if self.sharded:
            # Each replica reads every reading (its own durable) and keeps those of the
            # segments it merges: readings are few, and no router is needed.
            self._subs.append(await self.bus.subscribe(
                DETECTOR_READING, self.on_detector_reading,
                durable=f"bigdata-detectors-{cfg.replica_index}"))
            self._subs.append(await self.bus.subscribe(
                SEGMENT_SPEED_PARTIAL, self.on_partial, durable="bigdata-merge",
                partitions=owned))
            self._subs.append(await self.bus.subscribe(
                SEGMENT_SPEED, self.on_speed, durable=f"bigdata-live-{cfg.replica_index}"))
        else:
            self._subs.append(await self.bus.subscribe(
                DETECTOR_READING, self.on_detector_reading, durable="bigdata-detectors"))
        # The geodatabase is shared: replicas split the states between them (one durable).
        self._subs.append(await self.bus.subscribe(
            FEATURE_STATE, self.on_feature_state, durable="bigdata-features"))
        # Any replica may answer a request: one shared durable.
        self._subs.append(await self.bus.subscribe(
            FEATURE_CATALOGUE_REQUEST, self.on_catalogue_request, durable="bigdata-catalogue"))
        self._position_sub = await self.bus.subscribe(
            VEHICLE_POSITION, self.on_position, durable="bigdata", partitions=owned)

    # --- recovery --------------------------------------------------------------------------------

    def recovery_span_s(self) -> float:
        """How much of a partition recovery reads before its last delivered position."""
        return self.LAG_COVER_S + self.window_s + self.grace_s + self.flush_interval_s

    async def recover(self) -> None:
        """Rebuild, from the stream, what the replica before this one held only in memory.

        A position is acked once ``on_position`` returns, but its effects are not durable yet:
        the matcher holds the newest fixes of each vehicle undecided (its lag), so a replica
        that dies (SIGKILL, a node lost) takes the MatchedPositions of those fixes with it,
        and the 两客一危 rules would never see them. Acking later instead would hold every
        position for its lag and its window (minutes at province rates) and JetStream would
        redeliver them after ``ack_wait`` behind the newer fixes, out of order. So the
        stream is the log this state is rebuilt from, as a stream processor restores its
        state from its changelog: for each owned partition, re-read (``EventBus.replay``, an
        ephemeral consumer by start time) the positions from ``recovery_span_s`` before the
        last one the partition's durable consumer handed out, through that one, into fresh
        matchers. What the restarted replica decides again is published only if the stream
        does not hold it yet: the partition's MatchedPositions of the span are read first,
        so a fix the replica before decided is never published twice, however long the
        restart took (JetStream's duplicate window, 2 min, would only cover a quick one).
        The replayed fixes are not added to speed windows again (`_add_samples`): the replica
        before counted those it decided, and the windows around a crash may differ. With
        several replicas the merger's open windows are rebuilt too, from the shares stored
        on its partitions (merged once per event id). The consumers' redeliveries of what
        was handed out but not acked then find the matchers past them and are ignored.
        Costs a start ``recovery_span_s`` of matching per partition; a clean stop is
        replayed too (everything is then already published, nothing goes out twice).
        """
        owned = sorted(self.owned)
        started = asyncio.get_running_loop().time()
        if self.sharded:
            await asyncio.gather(*(self._recover_merger(p) for p in owned))
        counts = await asyncio.gather(*(self._recover_positions(p) for p in owned))
        replayed = sum(n for n, _ in counts)
        if replayed:
            self.recovered += replayed
            log.info("recovered %d positions of %d partitions (%d MatchedPositions already "
                     "published) in %.1f s", replayed, sum(1 for n, _ in counts if n),
                     sum(k for _, k in counts), asyncio.get_running_loop().time() - started)

    async def _recover_positions(self, partition: int) -> tuple[int, int]:
        point = await self.bus.resume_point(VEHICLE_POSITION, durable="bigdata",
                                            partition=partition)
        if point is None:
            return 0, 0
        since = point.stored_at - timedelta(seconds=self.recovery_span_s())
        known: set[str] = set()

        async def note(env: Envelope[Any]) -> None:
            known.add(env.event_id)

        await self.bus.replay(MATCHED_POSITION, note, partition=partition, since=since)
        self.matched.published_before(known)

        async def replayed(env: Envelope[VehiclePosition]) -> None:
            pos = env.payload
            t = pos.observed_at.timestamp()
            if t > self._replayed_until.get(pos.vehicle_id, -math.inf):
                self._replayed_until[pos.vehicle_id] = t  # before: it may decide this fix
            await self.on_position(env)

        n = await self.bus.replay(VEHICLE_POSITION, _skipping_bad(replayed),
                                  partition=partition, since=since, through=point.seq)
        RECOVERED.labels(VEHICLE_POSITION.name).inc(n)
        return n, len(known)

    async def _recover_merger(self, partition: int) -> None:
        point = await self.bus.resume_point(SEGMENT_SPEED_PARTIAL, durable="bigdata-merge",
                                            partition=partition)
        if point is None:
            return
        # Shares of a window are published from its end + grace on; the merger closes it
        # MERGE_SLACK_S later. Shares of windows already closed are refused as late.
        span = self.window_s + self.merger.grace_s + 2 * self.flush_interval_s
        n = await self.bus.replay(SEGMENT_SPEED_PARTIAL, _skipping_bad(self.on_partial),
                                  partition=partition,
                                  since=point.stored_at - timedelta(seconds=span),
                                  through=point.seq)
        RECOVERED.labels(SEGMENT_SPEED_PARTIAL.name).inc(n)

    async def stop(self) -> None:
        """Drain: stop taking positions, hand over or close every window, stop the rest."""
        try:
            if self._position_sub is not None:
                await self._position_sub.stop()
                self._position_sub = None
            await self.flush(self.clock.time(), final=True)
        finally:
            subs, self._subs = self._subs, []
            for sub in subs:
                await sub.stop()
        # What is still open is closed now rather than lost with the process (its messages are
        # acked). Shares of these windows that arrive later go to the restarted replica, which
        # publishes them as a value of their own; from the next window on all is exact again.
        await self._close(math.inf, self.clock.time())
        await self._store_speeds()
        await self._send_speeds()
        await self.matched.send()
        unsent = len(self.partials_out) + len(self.speeds_out) + len(self.matched.outbox)
        if unsent:
            log.error("stopping with %d events the bus did not take (lost)", unsent)
        if self.unstored:
            log.error("stopping with %d speed values the history did not take (lost)",
                      len(self.unstored))

    async def on_position(self, env: Envelope[VehiclePosition]) -> None:
        """Match one position and add what the vehicle did to the open windows."""
        if self.graph is None:
            raise TransientError("road network not loaded yet")
        pos = env.payload
        t = pos.observed_at.timestamp()
        entry = self.matchers.get(pos.vehicle_id)
        if entry is None:
            probe = VehicleProbe(pos.vehicle_id, OnlineMatcher(self.graph),
                                 vehicle_class=pos.vehicle_class, stops=self.stops)
            if len(self.matchers) >= self.MAX_VEHICLES:
                old_id, (_, oldest) = self.matchers.popitem(last=False)
                self._add_samples(old_id, oldest.flush())
        else:
            probe = entry[1]
            self.matchers.move_to_end(pos.vehicle_id)
        self.matchers[pos.vehicle_id] = (self.clock.time(), probe)
        # JT/T 808 status bit 0 is ACC (ignition); other sources do not say.
        acc_on = bool(pos.status & 1) if pos.source == "jt808" else None
        # A 两客一危 vehicle's fix carries its envelope to its decision (matched.py).
        self._add_samples(pos.vehicle_id, probe.update(
            t, pos.lon, pos.lat, heading=pos.heading_deg, speed_kmh=pos.speed_kmh,
            acc_on=acc_on, vehicle_class=pos.vehicle_class,
            tag=env if monitored(pos.vehicle_class) else None))
        self.settling.note(pos.vehicle_id, probe)

    def _add_samples(self, vehicle_id: str, samples: list[ProbeSample]) -> None:
        # The matcher decides fixes a little late (its lag): each sample carries its own time.
        now = self.clock.time()
        replayed_until = self._replayed_until.get(vehicle_id) if self._replayed_until else None
        for sample in samples:
            if replayed_until is not None:
                if sample.result.t <= replayed_until:
                    # Recovery decided this fix again: only its MatchedPosition may be owed.
                    if sample.tag is not None:
                        self.matched.add(sample)
                    continue
                del self._replayed_until[vehicle_id]
                replayed_until = None
            POSITIONS.labels("matched" if sample.result.candidate else "unmatched").inc()
            before = self.windows.late_pieces
            self.windows.add_sample(vehicle_id, sample, now=now)
            if self.windows.late_pieces != before:
                LATE.inc(self.windows.late_pieces - before)
            if sample.tag is not None:
                self.matched.add(sample)

    async def on_detector_reading(self, env: Envelope[DetectorReading]) -> None:
        """Keep a reading of a registered detector until its segment's window closes."""
        reading = env.payload
        segment_id = self.detectors.get(reading.detector_id)
        if segment_id is None:
            READINGS.labels("unknown_detector").inc()
            return
        if self.sharded and partition_of(segment_id, self.config.partitions) not in self.owned:
            READINGS.labels("other_replica").inc()
            return
        # observed_at ends the interval: the window is the one holding the interval's middle,
        # or a minute's reading ending on the minute would land in the next minute's window.
        middle = reading.observed_at.timestamp() - max(0.0, reading.interval_s) / 2
        bucket = math.floor(middle / self.window_s)
        now = self.clock.time()
        if self._merge_due(bucket, now):
            READINGS.labels("late").inc()
            return
        if bucket * self.window_s > now + self.window_s:
            READINGS.labels("future").inc()
            return
        held = self.readings.setdefault((segment_id, bucket), {})
        held[(reading.detector_id, reading.lane, reading.observed_at)] = reading
        READINGS.labels("buffered").inc()

    async def on_feature_state(self, env: Envelope[FeatureState]) -> None:
        """Merge a feature's live state (parking free spaces, weather …) into the geodatabase.

        A state older than the one held is ignored (redeliveries, a slow sender); an unknown
        feature or an implausible state is counted and dropped: retrying cannot fix it.
        """
        state = env.payload
        try:
            held = await self.store.update_live(state.kind, state.feature_id, state.values,
                                                observed_at=state.observed_at)
        except NotFound:
            FEATURE_STATES.labels("unknown_feature").inc()
            log.warning("live state for unknown feature %s/%s dropped", state.kind,
                        state.feature_id)
            return
        except TransientError:
            raise
        except TtiError as exc:
            FEATURE_STATES.labels("rejected").inc()
            log.warning("live state for %s/%s rejected: %s", state.kind, state.feature_id, exc)
            return
        newer = held.live_updated_at is not None and held.live_updated_at > state.observed_at
        FEATURE_STATES.labels("stale" if newer else "applied").inc()

    # --- the feature catalogue ------------------------------------------------------------------

    async def publish_catalogue(self, cause: str, *, only_if_changed: bool = False) -> bool:
        """Read the stored catalogue and publish every kind of it (chunked); True if published.

        ``only_if_changed``: skip when the content is what was last published (and that is not
        older than ``CATALOGUE_REPUBLISH_S``). A kind with no feature goes out as one empty
        chunk, so the collector knows it is empty rather than still loading. BusError when the
        bus does not take it (the next check tries again).
        """
        async with self._catalogue_lock:
            now = self.clock.time()
            stored = await self.store.list_feature_catalogue()
            self.catalogue_checked_at = now
            published_at = self.clock.now()
            messages = [m for kind in FEATURE_KINDS
                        for m in catalogue_chunks(kind, stored.get(kind, ()),
                                                  published_at=published_at)]
            version = ",".join(dict.fromkeys(m.version for m in messages))
            fresh = now - self.catalogue_published_at < self.CATALOGUE_REPUBLISH_S
            if only_if_changed and version == self._catalogue_version and fresh:
                return False
            self.catalogue_published_at = now
            self._catalogue_version = ""  # until every chunk is taken
            stamp = int(published_at.timestamp() * 1000)
            for m in messages:
                # One id per publication: a republication answers a consumer that acked the
                # last one before it restarted, and must not be dropped as its duplicate.
                await self.bus.publish(FEATURE_CATALOGUE, m, event_id=(
                    f"catalogue:{m.kind}:{m.version}:{m.chunk}:{stamp}"))
            self._catalogue_version = version
        CATALOGUES.labels(cause).inc()
        CATALOGUE_FEATURES.set(sum(len(v) for v in stored.values()))
        log.info("feature catalogue published (%s): %d features in %d messages", cause,
                 sum(len(v) for v in stored.values()), len(messages))
        return True

    async def on_catalogue_request(self, env: Envelope[CatalogueRequest]) -> None:
        """Publish the catalogue again for a consumer that may have missed it.

        A request made before the last publication began is answered by that one (the requester
        receives it); replayed old requests and a burst from many replicas cost one publication.
        """
        asked = env.payload.requested_at.timestamp()
        if asked < self.catalogue_published_at:
            return
        try:
            await self.publish_catalogue("request")
        except TtiError as exc:
            raise TransientError(f"catalogue not published: {exc.message}") from exc

    async def catalogue_loop(self) -> None:
        """Read the catalogue every ``CATALOGUE_CHECK_S``; publish it when it changed (an import
        by ``tti import-osm`` or a new detector registry) or has not gone out for a while."""
        while True:
            await self.clock.sleep(self.CATALOGUE_CHECK_S)
            try:
                await self.publish_catalogue("refresh", only_if_changed=True)
            except TtiError as exc:  # the bus or the database away: the next check retries
                log.warning("feature catalogue not published: %s", exc.message)
            except Exception:
                log.exception("publishing the feature catalogue failed")

    async def on_partial(self, env: Envelope[SegmentSpeedPartial]) -> None:
        """Merge another replica's (or this one's) share of a segment window."""
        try:
            partial = SpeedPartial.from_payload(dataclasses.asdict(env.payload))
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"malformed speed partial: {exc!r}", code="bad_partial") from exc
        if partial.window_s != self.window_s:
            # A replica configured with another window length: its shares cannot be merged.
            raise DecodeError(f"partial of a {partial.window_s} s window, this replica uses "
                              f"{self.window_s} s", code="window_mismatch")
        merged = self._merged_ids.setdefault(partial.bucket, set())
        if env.event_id in merged:
            PARTIALS.labels("duplicate").inc()  # redelivered, or read by recovery already
            return
        if self.merger.add_partial(partial, now=self.clock.time()):
            merged.add(env.event_id)
            self.partials_merged += 1
            PARTIALS.labels("merged").inc()
        else:
            PARTIALS.labels("late").inc()

    async def on_speed(self, env: Envelope[SegmentSpeed]) -> None:
        """Remember the newest value of every segment, whichever replica merged it."""
        speed = env.payload
        known = self.latest.get(speed.segment_id)
        if known is None or speed.observed_at >= known.observed_at:
            self.latest[speed.segment_id] = speed

    # --- windows -------------------------------------------------------------------------------

    def _merge_due(self, bucket: int, now: float) -> bool:
        """Whether the window ``bucket`` is closed (or closing) into SegmentSpeeds here."""
        return (bucket + 1) * self.window_s + self.merger.grace_s <= now

    def _find_probe(self, vehicle_id: str) -> VehicleProbe | None:
        entry = self.matchers.get(vehicle_id)
        return None if entry is None else entry[1]

    def _evict_idle(self, now: float) -> None:
        while self.matchers:
            vid, (seen, probe) = next(iter(self.matchers.items()))
            if now - seen < self.IDLE_S:
                break
            del self.matchers[vid]
            self._add_samples(vid, probe.flush())
            self._replayed_until.pop(vid, None)
        VEHICLES.set(len(self.matchers))

    async def flush(self, now: float, *, final: bool = False) -> list[SegmentSpeed]:
        """Close due windows: persist them and publish one SegmentSpeed per segment and window.

        With several replicas, first publish this replica's shares of the windows that are over.
        ``final`` (shutdown) first decides every vehicle's pending fixes and hands over the
        shares of windows still open too. Returns the values closed (and stored) now; what the
        bus refuses, now or from earlier flushes, is sent again on the next flush.
        """
        if final:
            for vid, (_, probe) in list(self.matchers.items()):
                self._add_samples(vid, probe.flush())
        for vid, samples in self.settling.settle(now, self._find_probe):
            self._add_samples(vid, samples)
        if self.sharded:
            shares = self.windows.drain_partials(math.inf if final else now, hold_s=self.grace_s)
            await self._publish_partials(shares, now)
        self._evict_idle(now)
        await self.matched.send()
        closed = await self._close(now, now)
        await self._store_speeds()
        await self._send_speeds()
        return closed

    async def _publish_partials(self, shares: Sequence[SpeedPartial], now: float) -> None:
        index = self.config.replica_index
        for p in shares:
            # A share of a window not over yet (at shutdown) gets its own id: the restarted
            # replica's share of the same window must not be taken for a duplicate of it.
            over = (p.bucket + 1) * self.window_s + self.grace_s <= now
            self.partials_out.add(Outgoing(
                f"{index}:{p.segment_id}:{p.bucket}{'' if over else ':final'}",
                SEGMENT_SPEED_PARTIAL, SegmentSpeedPartial(**p.to_payload()), p.segment_id,
                p.bucket))
        # A share the merger would refuse as late is not worth sending.
        expired = self.partials_out.expire(lambda item: self._merge_due(item.bucket, now))
        if expired:
            PARTIALS.labels("expired").inc(expired)
        sent = len(await self.partials_out.send())
        self.partials_published += sent
        PARTIALS.labels("published").inc(sent)

    async def _send_speeds(self) -> None:
        for item in await self.speeds_out.send():
            WINDOWS.labels(item.payload.source).inc()

    def _add_unstored(self, records: Sequence[SpeedRecord]) -> None:
        self.unstored.extend(records)
        over = len(self.unstored) - self.MAX_OUTBOX
        if over > 0:
            del self.unstored[:over]
            HISTORY.labels("dropped").inc(over)
            log.error("speed history backlog full: %d oldest values dropped", over)

    async def _store_speeds(self) -> None:
        """Write the closed values the history does not hold yet, a batch at a time; what the
        database refuses stays for the next flush (an upsert: a repeat does no harm)."""
        while self.unstored:
            batch = self.unstored[:self.STORE_BATCH]
            try:
                await self.store.insert_speeds(batch)
            except Exception as exc:  # the database away (or refusing): keep them, try later
                HISTORY.labels("retried").inc(len(batch))
                if not self._history_failing:  # once when it starts failing, once when it ends
                    self._history_failing = True
                    log.warning("speed history not written (%d values wait): %s",
                                len(self.unstored), exc)
                return
            del self.unstored[:len(batch)]
            HISTORY.labels("stored").inc(len(batch))
        if self._history_failing:
            self._history_failing = False
            log.warning("speed history written again")

    async def _close(self, due_before: float, now: float) -> list[SegmentSpeed]:
        """Close the windows and detector-only readings due by ``due_before``; queue them for
        the history and the bus (written and sent by the caller: ``_store_speeds``,
        ``_send_speeds``). ``now`` is the clock's time."""
        if self.network is None:
            return []
        w_s = self.window_s
        for bucket in [b for b in self._merged_ids if self._merge_due(b, due_before)]:
            del self._merged_ids[bucket]  # closed: a share of it now is refused as late
        values: list[tuple[str, int, FusedSpeed]] = []
        for w in self.merger.close_due(due_before):
            bucket = round(w.window_start.timestamp() / w_s)
            held = self.readings.pop((w.segment_id, bucket), None)
            fused = fuse_speeds(w, list(held.values()) if held else (), window_s=w_s)
            if fused is not None:
                values.append((w.segment_id, bucket, fused))
        # Detectors on segments no probe drove in the window speak for themselves.
        for key in sorted(k for k in self.readings if self._merge_due(k[1], due_before)):
            fused = fuse_speeds(None, list(self.readings.pop(key).values()), window_s=w_s)
            if fused is not None:
                values.append((key[0], key[1], fused))
        events: list[tuple[int, SegmentSpeed]] = []
        for segment_id, bucket, fused in values:
            seg = self.network.segments.get(segment_id)
            if seg is None:  # a registry naming a segment the loaded network lacks
                READINGS.labels("unknown_segment").inc()
                continue
            events.append((bucket, self._event(seg, bucket, fused)))
        if not events:
            return []
        # Owed to the history and to the bus from here on; each is retried on its own, so
        # live values keep flowing while the database is away, and the other way round.
        self._add_unstored([
            SpeedRecord(segment_id=e.segment_id, window_start=e.window_start,
                        observed_at=e.observed_at, speed_kmh=e.speed_kmh,
                        sample_count=e.sample_count, source=e.source, confidence=e.confidence)
            for _, e in events])
        for bucket, e in events:
            self.latest[e.segment_id] = e
            # One id per segment and window: a resend is a duplicate JetStream drops. A window
            # closed early at shutdown gets its own: the restarted replica publishes the rest of
            # that window as a value of its own, which must not be taken for a duplicate.
            final = "" if self._merge_due(bucket, now) else ":final"
            self.speeds_out.add(Outgoing(f"speed:{e.segment_id}:{bucket}{final}", SEGMENT_SPEED,
                                         e, None, bucket))
        return [e for _, e in events]

    def _event(self, seg: RoadSegment, bucket: int, fused: FusedSpeed) -> SegmentSpeed:
        mid = seg.coords[len(seg.coords) // 2]
        return SegmentSpeed(
            segment_id=seg.segment_id,
            window_start=datetime.fromtimestamp(bucket * self.window_s, UTC),
            observed_at=datetime.fromtimestamp((bucket + 1) * self.window_s, UTC),
            speed_kmh=round(fused.speed_kmh, 2), sample_count=fused.sample_count,
            source=fused.source, confidence=fused.confidence, free_flow_kmh=seg.free_flow_kmh,
            road_class=seg.road_class, road_name=seg.name, lon=mid[0], lat=mid[1])

    async def flush_loop(self) -> None:
        """Close windows a few times per window length, refresh the detector registry, forever."""
        interval = self.flush_interval_s
        while True:
            await self.clock.sleep(interval)
            now = self.clock.time()
            if now - self.detectors_loaded_at >= self.DETECTOR_REFRESH_S:
                try:
                    await self.load_detectors()
                except Exception:
                    # Keep the registry we have; try again next time round.
                    self.detectors_loaded_at = now
                    log.exception("reloading the detector registry failed")
            try:
                await self.flush(now)
            except Exception:
                log.exception("flushing speed windows failed")


def _skipping_bad(handler: Callable[[Envelope[Any]], Awaitable[None]]
                  ) -> Callable[[Envelope[Any]], Awaitable[None]]:
    """A replay handler that skips what the live consumer would terminate (DecodeError)."""
    async def handle(env: Envelope[Any]) -> None:
        try:
            await handler(env)
        except DecodeError as exc:
            log.warning("recovery skips event %s: %s", env.event_id, exc)

    return handle


BIGDATA = web.AppKey("bigdata", Bigdata)

HISTORY_UPKEEP_S = 3600.0
HISTORY_FIRST_UPKEEP_S = 600.0


async def keep_speed_history(store: GeoStore, *, clock: Clock, keep_days: int,
                             first_s: float = HISTORY_FIRST_UPKEEP_S,
                             interval_s: float = HISTORY_UPKEEP_S) -> None:
    """Expire the speed history beyond ``keep_days`` and prepare the coming days' partitions,
    ``first_s`` after start (opening the store already prepared them; start is busy enough),
    then every ``interval_s`` (clock time), forever; a failure is logged and retried then."""
    await clock.sleep(first_s)
    while True:
        try:
            done = await store.maintain_speed_history(keep_days=keep_days)
            log.info("speed history kept from %s: %d partitions created, %d dropped, %d rows "
                     "deleted", done.kept_from.isoformat(), done.partitions_created,
                     done.partitions_dropped, done.rows_deleted)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("speed history upkeep failed")
        await clock.sleep(interval_s)


def create_app(config: Config, *, bus: EventBus, store: GeoStore | None = None,
               clock: Clock | None = None) -> web.Application:
    """Wire the bigdata service; resources open in ``cleanup_ctx``, nothing happens here.

    ``clock`` (default: the configured one) is the time of windows, profiles, bus ETAs and the
    API's defaults.
    """
    clock = clock or config.make_clock()
    app = create_base_app("bigdata", config)
    store = store or store_from_url(config.db_url, clock=clock)
    bd = Bigdata(config, bus, store, clock=clock)
    app[BIGDATA] = bd

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        try:
            await bd.load_network()
            await bd.load_gtfs()
            await bd.load_detectors()
            await bd.start()
            try:
                await bd.publish_catalogue("load")
            except TtiError as exc:
                log.warning("feature catalogue not published at start (%s); retrying every "
                            "%.0f s", exc.message, bd.CATALOGUE_CHECK_S)
            spawn(app, bd.flush_loop(), name="bigdata-flush")
            spawn(app, bd.catalogue_loop(), name="bigdata-catalogue")
            # Time-of-week profiles and learned free flow: at start, then hourly (profiles.py).
            spawn(app, keep_profiles(store, clock=clock), name="bigdata-profiles")
            spawn(app, keep_speed_history(store, clock=clock,
                                          keep_days=config.speed_history_days),
                  name="bigdata-history")
            yield
            await bd.stop()
        finally:
            await store.close()

    app.cleanup_ctx.append(resources)
    # After `resources`: transit needs the road network loaded.
    setup_transit(app, config, bus, network=lambda: bd.network, clock=clock)
    add_readiness_check(app, "road_network", lambda: (
        bd.network is not None,
        f"{len(bd.network.segments)} segments" if bd.network else "not loaded"))
    add_readiness_check(app, "bus", lambda: (bus.connected, "connected" if bus.connected
                                             else "disconnected"))
    # The geodatabase behind the API and the speed history (after `resources` opened it).
    add_probe_check(app, "database", store.schema_version)
    if config.gtfs:
        # A rejected feed is reported here but does not take the road API out of service.
        add_readiness_check(app, "gtfs", lambda: (bd.gtfs_state != "importing", bd.gtfs_state))
    add_routes(app, ApiContext(store, bd.latest.get, clock))
    return app
