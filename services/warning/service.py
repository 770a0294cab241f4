"""The warning service's moving parts around the engine: inputs, loops, the lease-gated output.

Start-up, in the background: the road network from bigdata (retried until bigdata has one), the
routing graph, the detector registry, the profiles of the current bucket; the bus handlers wait
for that before they take their first event (JetStream keeps the events meanwhile). Then, on the
one clock: a tick a few times per window (queues of a quiet window, staleness, the index), the
routing weights once per window, the profiles when their bucket turns, the detector registry
and the geofences every few minutes.

The 两客一危 rules (``rules/ruleset.py``) read matched positions, driver identities and terminal
alarm bits from every partition; what they conclude goes out through the engine like every
warning, and a just-raised alarm's driver gets a JT/T 808 text (``tti.terminal.command.<p>``).

Scaling: every replica consumes every event through its own durable consumer into the same
deterministic state; only the holder of the ``warning`` lease publishes (see the README).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from services.warning.area_index import AreaGrid, load_areas
from services.warning.engine import WarningEngine
from services.warning.forecast import Forecaster
from services.warning.network import load_network
from services.warning.routing import LiveRouting
from services.warning.rules.common import RuleSettings, load_coach_routes
from services.warning.rules.geofences import load_fences
from services.warning.rules.ruleset import RuleSet
from services.warning.workflow.store import WorkflowStore
from shared.bus import EventBus
from shared.bus.lease import Lease
from shared.bus.outbox import Outbox, Outgoing
from shared.clients.bigdata import BigdataClient
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.errors import ConfigError, TransientError
from shared.events import (
    DETECTED_EVENT,
    DRIVER_IDENTITY,
    INCIDENT,
    MATCHED_POSITION,
    SEGMENT_SPEED,
    TERMINAL_ALARM,
    TERMINAL_COMMAND,
    WARNING,
    WARNING_ACTION,
    CitizenReport,
    DetectedEvent,
    DriverIdentity,
    MatchedPosition,
    SegmentSpeed,
    Subject,
    TerminalAlarm,
    Warning,
    WarningAction,
)
from shared.roadnet import RoadNetwork

log = logging.getLogger("tti.warning.service")

T = TypeVar("T")

UNSAVED = Counter("tti_warning_unsaved_total",
                  "Warning messages the workflow store refused for a while (retried)")
SUPPRESSED = Counter("tti_warning_standby_suppressed_total",
                     "Events a standby replica computed but did not publish", ["subject"])
ACTIVE_REPLICA = Gauge("tti_warning_active_replica", "1 on the replica that publishes")

DETECTOR_REFRESH_S = 300.0
HELD_BACK = frozenset({WARNING.name, INCIDENT.name, TERMINAL_COMMAND.name})
"""What a standby keeps to send on taking over: what nothing would say again."""


class LeaseOutput:
    """Publishes while this replica holds the lease; a standby computes the same, silently.

    The active replica also logs every warning message in the workflow store (the departments'
    stream and what a restart resumes). Nothing is lost when the bus or the database refuses
    for a while: refused events wait in the outbox (``shared/bus/outbox.py``), refused saves in
    a queue, and `retry` (called every second) sends them again, in order.

    A standby holds back the warnings, incidents and terminal commands it computed in the last
    ``HOLD_S`` and, on taking over (`catch_up`), sends them before anything else: a holder
    that died decided the same events up to ``ttl`` before its lease ran out, and may have
    died before sending them (a warning's version 1 lost, its version 2 out). What the old
    holder did send goes again under the same event id: JetStream drops it inside its
    duplicate window, the workflow store by its event id, and every consumer keeps a
    warning's newest version.
    """

    MAX_PENDING = 100_000
    HOLD_S = 120.0
    """≥ the lease's ttl + poll (17 s by default) + how late the standby is on its consumers."""

    def __init__(self, bus: EventBus, lease: Lease, store: WorkflowStore | None = None, *,
                 hold_s: float = HOLD_S) -> None:
        self.bus = bus
        self.lease = lease
        self.store = store
        self.hold_s = hold_s
        self._outboxes: dict[str, Outbox] = {}
        self._unsaved: list[tuple[Warning, str]] = []
        self._held_back: deque[tuple[float, Subject[Any], Any, str]] = deque()
        self._lock = asyncio.Lock()

    async def publish(self, subject: Subject[T], payload: T, *, event_id: str) -> None:
        """Hand the event to the bus if active (JetStream drops a repeated event id)."""
        if not self.lease.held:
            SUPPRESSED.labels(subject.name).inc()
            if subject.name not in HELD_BACK:
                return  # road status and forecasts: the next window's says it again
            now = time.monotonic()
            held = self._held_back
            held.append((now, subject, payload, event_id))
            while held and (held[0][0] < now - self.hold_s or len(held) > self.MAX_PENDING):
                held.popleft()
            return
        self._enqueue(subject, payload, event_id)
        await self.retry()

    async def catch_up(self) -> int:
        """On taking over: send what was held back, oldest first; returns how many."""
        held, self._held_back = self._held_back, deque()
        cutoff = time.monotonic() - self.hold_s
        sent = 0
        for at, subject, payload, event_id in held:
            if at >= cutoff:
                self._enqueue(subject, payload, event_id)
                sent += 1
        await self.retry()
        return sent

    def _enqueue(self, subject: Subject[Any], payload: Any, event_id: str) -> None:
        if self.store is not None and isinstance(payload, Warning):
            self._unsaved.append((payload, event_id))
            del self._unsaved[:-self.MAX_PENDING]
        box = self._outboxes.get(subject.name)
        if box is None:
            box = self._outboxes[subject.name] = Outbox(self.bus, subject,
                                                        limit=self.MAX_PENDING)
        # Per-vehicle subjects (commands to terminals) go to their vehicle's partition.
        key = getattr(payload, "vehicle_id", None) if subject.partitioned else None
        box.add(Outgoing(event_id=event_id, subject=subject, payload=payload, key=key))

    async def retry(self) -> None:
        """Save and send what is still owed (one caller at a time, so nothing goes twice)."""
        async with self._lock:
            if self.store is not None:
                while self._unsaved:
                    w, event_id = self._unsaved[0]
                    try:
                        await self.store.save_warning(w, event_id)
                    except TransientError as exc:
                        UNSAVED.inc()
                        log.warning("warning %s not saved yet (%d waiting): %s",
                                    w.warning_id, len(self._unsaved), exc)
                        break
                    self._unsaved.pop(0)
            for box in self._outboxes.values():
                await box.send()

    @property
    def pending(self) -> int:
        """Events and saves still owed."""
        return len(self._unsaved) + sum(len(b) for b in self._outboxes.values())


class WarningService:
    """Owns the engine's inputs and loops for one replica."""

    def __init__(self, config: Config, *, bus: EventBus, clock: Clock, bigdata: BigdataClient,
                 engine: WarningEngine, lease: Lease, store: WorkflowStore,
                 output: LeaseOutput, forecaster: Forecaster | None = None) -> None:
        self.config = config
        self.store = store
        self.output = output
        self.bus = bus
        self.clock = clock
        self.bigdata = bigdata
        self.engine = engine
        self.forecaster = forecaster
        self.lease = lease
        self.routing: LiveRouting | None = None
        self.ready = asyncio.Event()
        self.state = "starting"
        self._subs: list[Any] = []
        self._followed_seq = 0
        self.stopping = False
        # Routes are read from their CSV in `prepare` (no I/O here).
        engine.rules = RuleSet(RuleSettings.from_config(config, coach_routes={}), clock=clock)

    @property
    def durable(self) -> str:
        """Each replica consumes everything: its own durable consumer."""
        if self.config.replica_count > 1:
            return f"warning-{self.config.replica_index}"
        return "warning"

    async def on_speed(self, env: Envelope[SegmentSpeed]) -> None:
        """Bus handler: wait for the network, then hand the window to the engine (and then to
        the forecaster: statuses first, forecasts after)."""
        await self.ready.wait()
        await self.engine.on_speed(env)
        if self.forecaster is not None:
            try:
                await self.forecaster.on_speed(env.payload)
            except Exception:
                # A forecast is never worth a redelivery: the engine has applied the window.
                log.exception("forecast of %s failed", env.payload.segment_id)

    async def on_detected_event(self, env: Envelope[DetectedEvent]) -> None:
        """Bus handler: wait for the network, then hand the event to the engine."""
        await self.ready.wait()
        await self.engine.on_detected_event(env)

    async def on_citizen_report(self, report: CitizenReport) -> None:
        """A checked citizen report (the report store has it): word of an incident."""
        await self.ready.wait()
        await self.engine.on_citizen_report(report)

    async def on_terminal_alarm(self, env: Envelope[TerminalAlarm]) -> None:
        """Bus handler: terminals' alarm bits (every partition: the state sees all vehicles)."""
        await self.ready.wait()
        await self.engine.on_terminal_alarm(env)

    async def on_matched(self, env: Envelope[MatchedPosition]) -> None:
        """Bus handler: a 两客一危 fix on its road, through every position rule."""
        await self.ready.wait()
        await self.engine.put_rule_warnings(self.engine.rules.on_matched(env.payload))

    async def on_driver(self, env: Envelope[DriverIdentity]) -> None:
        """Bus handler: a driver signing in or out (0x0702), for the fatigue rule."""
        await self.ready.wait()
        await self.engine.put_rule_warnings(self.engine.rules.on_driver(env.payload))

    async def on_action(self, env: Envelope[WarningAction]) -> None:
        """Bus handler: a department's action, applied by every replica in stream order."""
        await self.ready.wait()
        await self.engine.on_action(env)

    async def subscribe(self) -> None:
        """Start consuming (handlers hold events until `prepare` is done)."""
        self._subs.append(await self.bus.subscribe(SEGMENT_SPEED, self.on_speed,
                                                   durable=self.durable))
        self._subs.append(await self.bus.subscribe(WARNING_ACTION, self.on_action,
                                                   durable=self.durable))
        self._subs.append(await self.bus.subscribe(TERMINAL_ALARM, self.on_terminal_alarm,
                                                   durable=self.durable))
        self._subs.append(await self.bus.subscribe(DETECTED_EVENT, self.on_detected_event,
                                                   durable=self.durable))
        self._subs.append(await self.bus.subscribe(MATCHED_POSITION, self.on_matched,
                                                   durable=self.durable))
        self._subs.append(await self.bus.subscribe(DRIVER_IDENTITY, self.on_driver,
                                                   durable=self.durable))

    async def unsubscribe(self) -> None:
        """Stop consuming; in-flight events finish first."""
        self.stopping = True
        subs, self._subs = self._subs, []
        self.ready.set()  # let waiting handlers through so the subscriptions can drain
        for sub in subs:
            try:
                await sub.stop()
            except Exception:
                log.warning("stopping a warning subscription failed", exc_info=True)

    async def prepare(self) -> None:
        """Network, routing, detectors and profiles, retried until bigdata answers."""
        delay = 0.5
        while True:
            try:
                network = await load_network(self.bigdata)
                break
            except Exception as exc:
                self.state = f"waiting for bigdata: {exc}"
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)
        self.engine.set_network(network)
        self.state = "drawing the index areas"
        self.engine.grid = await self._area_grid(network)
        self._load_coach_routes()
        await self._load_fences()
        while True:
            try:
                # Where following the active replica starts: what is logged from here on.
                self._followed_seq = await self.store.last_seq()
                self.engine.restore(await self.store.active_warnings())
                break
            except TransientError as exc:
                self.state = f"waiting for the database: {exc}"
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)
        self.state = "building the routing graph"
        self.routing = await LiveRouting.build(network, clock=self.clock)
        self.engine.analyst = self.routing.analyse
        await self._load_detectors()
        await self._load_bus_routes()
        await self._load_profiles()
        self.state = f"{len(network)} segments"
        self.ready.set()
        log.info("warning service ready", extra={"segments": len(network)})

    async def _area_grid(self, network: RoadNetwork) -> AreaGrid:
        """The index's areas: the graph's own, TTI_INDEX_AREAS's, TTI_OSM's districts."""
        config = self.config
        specs, problems = await asyncio.to_thread(load_areas, config.index_areas, config.osm)
        for problem in problems:
            log.error("index area not loaded: %s", problem)
        grid = await asyncio.to_thread(AreaGrid, network, areas=specs)
        if grid.empty:
            log.warning("index areas with no road of the network: %s", ", ".join(grid.empty))
        log.info("index areas", extra={"areas": len(grid.names), "given": len(specs)})
        return grid

    def _load_coach_routes(self) -> None:
        try:
            routes = load_coach_routes(self.config.coach_routes)
        except ConfigError as exc:
            # Stricter, not laxer: with no route known no coach is exempt at night.
            log.error("coach routes not loaded, no route is exempt: %s", exc)
            return
        self.engine.rules.set_coach_routes(routes)

    async def _load_fences(self) -> None:
        """The geofences from bigdata; the ones held stay when bigdata does not answer."""
        try:
            fences = await load_fences(self.bigdata)
        except Exception as exc:
            log.info("geofences not loaded (keeping %d): %s",
                     len(self.engine.rules.geofences.fences), exc)
            return
        self.engine.rules.set_fences(fences)

    async def _load_detectors(self) -> None:
        try:
            self.engine.detectors = await self.bigdata.list_detectors()
        except Exception as exc:
            log.info("detector registry not loaded: %s", exc)

    async def _load_bus_routes(self) -> int:
        """The bus routes' road segments (for impact); how many routes are known."""
        if self.routing is None:
            return 0
        try:
            self.routing.bus_routes = await self.bigdata.get_route_segments()
        except Exception as exc:
            log.info("bus route segments not loaded: %s", exc)
        return len(self.routing.bus_routes)

    async def _load_profiles(self) -> float:
        """Load the current bucket's profiles and re-grade; seconds until the bucket turns."""
        at = self.clock.now()
        try:
            snapshot = await self.bigdata.get_profiles(at)
        except Exception as exc:
            log.info("profile speeds not loaded: %s; retrying", exc)
            return 60.0
        count = await self.engine.refresh_profiles(snapshot)
        if self.forecaster is not None and self.forecaster.profiles is not None:
            self.forecaster.profiles.add(snapshot, at=at)  # the bucket forecasts start from
        log.info("profile fallback graded", extra={"segments": count,
                                                   "bucket": snapshot.bucket})
        return max(1.0, (snapshot.valid_until - self.clock.now()).total_seconds() + 1.0)

    async def tick_loop(self) -> None:
        """The engine's tick, and the routing weights once per window."""
        await self.ready.wait()
        interval = max(0.2, min(5.0, self.config.speed_window_s / 4))
        last_weights = -1.0e18
        last_tick = self.clock.monotonic()
        while True:
            # Queues are traced as soon as a window's speeds are in (the warning's latency);
            # the rest of the upkeep walks every segment, so it keeps the slower pace.
            await self.clock.sleep(min(interval, 0.25))
            try:
                now = self.clock.monotonic()
                if now - last_tick < interval:
                    await self.engine.settle()
                    continue
                last_tick = now
                await self.engine.tick()
                if self.routing is not None and now - last_weights >= \
                        self.config.speed_window_s:
                    last_weights = now
                    await self._refresh_weights()
            except Exception:
                log.exception("warning tick failed")

    async def _refresh_weights(self) -> None:
        assert self.routing is not None
        live = {sid: s.last.speed_kmh for sid, s in self.engine.segments.items()
                if not s.stale and s.last.speed_kmh is not None}
        snap = self.engine.profiles
        profile = {} if snap is None else {sid: p.speed_kmh for sid, p in snap.speeds.items()}
        await self.routing.refresh(live, profile, self.clock.now(),
                                   closed=self.engine.closed_segments())

    async def upkeep_loop(self) -> None:
        """Every second: send what the bus or the database refused; daily: the retention."""
        last_prune = -1.0e18
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.lease.held:
                    await self.output.retry()
                    # What it logs itself needs no following if it stands by again later.
                    self._followed_seq = await self.store.last_seq()
                elif self.ready.is_set():
                    await self.follow()
                now = self.clock.monotonic()
                if now - last_prune >= 86_400.0:
                    last_prune = now
                    pruned = await self.store.prune(self.clock.now())
                    if pruned:
                        log.info("workflow store: %d rows past retention pruned", pruned)
            except TransientError as exc:  # the database away: /readyz says so; next second
                log.debug("warning upkeep deferred: %s", exc)
            except Exception:
                log.exception("warning upkeep failed")

    async def profile_loop(self) -> None:
        """Re-grade the no-data segments whenever the profile bucket turns."""
        await self.ready.wait()
        while True:
            await self.clock.sleep(await self._next_profiles())

    async def _next_profiles(self) -> float:
        snap = self.engine.profiles
        if snap is not None and self.clock.now() < snap.valid_until:
            return max(1.0, (snap.valid_until - self.clock.now()).total_seconds() + 1.0)
        return await self._load_profiles()

    async def registry_loop(self) -> None:
        """Reload the detector registry and the bus routes' segments every few minutes.

        bigdata maps bus shapes to roads after it has loaded its timetable, so until it knows
        some routes they are asked for every half minute.
        """
        await self.ready.wait()
        since = 0.0
        while True:
            routes = len(self.routing.bus_routes) if self.routing is not None else 0
            step = 30.0 if routes == 0 else DETECTOR_REFRESH_S
            await self.clock.sleep(step)
            since += step
            await self._load_bus_routes()
            if since >= DETECTOR_REFRESH_S:
                since = 0.0
                await self._load_detectors()
                await self._load_fences()

    async def follow(self) -> int:
        """A standby takes what the active replica logged since the last call (its newer
        versions: `WarningEngine.follow`); returns how many messages it read."""
        read = 0
        while True:
            entries = await self.store.log_after(self._followed_seq)
            for e in entries:
                self._followed_seq = e.seq
                self.engine.follow(e.warning)
            read += len(entries)
            if len(entries) < 500:
                return read

    async def on_lease(self, held: bool) -> None:
        """Lease callback: a replica that becomes active republishes what is active."""
        ACTIVE_REPLICA.set(1 if held else 0)
        if held:
            log.info("this warning replica is now active")
            if self.ready.is_set():
                try:
                    await self.follow()  # what the old holder logged last, before going on
                except TransientError as exc:
                    log.warning("taking over without the old holder's last messages: %s", exc)
                caught = await self.output.catch_up()
                log.info("sent %d events held back as standby", caught)
                await self.engine.republish()
        elif self.stopping:
            log.info("this warning replica handed the lease over (shutting down)")
        else:
            log.warning("this warning replica lost the lease: standing by")

    def readiness(self) -> tuple[bool, str]:
        """Ready once the network is loaded; says whether it is active or standby."""
        role = "active" if self.lease.held else "standby"
        return self.ready.is_set(), f"{self.state} ({role})"
