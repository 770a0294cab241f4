"""The transit part of bigdata: consumes positions and speeds, publishes arrivals and predictions.

Wiring (`setup_transit`) adds a ``cleanup_ctx`` that loads the timetable in the background, then
subscribes to ``tti.position.<p>`` (this replica's partitions, durable ``bigdata-transit``) and to
``tti.segment.speed`` (all of it, one durable per replica, since every replica needs every speed);
the HTTP endpoints answer from the live state. Each replica tracks the buses of its partitions,
so in a scaled-out deployment its endpoints cover those buses (the timetable fills the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from services.bigdata.transit.accuracy import Accuracy, PredictionLog
from services.bigdata.transit.predictor import NetworkGetter, Predictor, PredictorSettings
from services.bigdata.transit.schedule import (
    GtfsFileSource,
    Schedule,
    ScheduleError,
    ScheduleSource,
    TripRun,
)
from services.bigdata.transit.tracker import (
    StopEvent,
    Tracker,
    TrackerSettings,
    VehicleState,
)
from shared.bus import EventBus, Subscription
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.errors import BadRequest, NotFound, TtiError
from shared.events import (
    ARRIVAL_PREDICTION,
    BUS_ARRIVAL,
    SEGMENT_SPEED,
    VEHICLE_POSITION,
    ArrivalPrediction,
    BusArrival,
    SegmentSpeed,
    VehiclePosition,
)
from shared.roadnet import RoadNetwork
from shared.service import add_readiness_check, spawn

log = logging.getLogger("tti.bigdata.transit")

POSITIONS = Counter("tti_bigdata_bus_positions_total",
                    "Positions seen by bus tracking, by result", ["result"])
STOP_EVENTS = Counter("tti_bigdata_bus_stop_events_total", "Detected bus stop events", ["kind"])
PREDICTIONS = Counter("tti_bigdata_bus_predictions_published_total",
                      "Arrival predictions published")
TRIPS_ENDED = Counter("tti_bigdata_bus_trips_ended_total", "Tracked trips that ended, by reason",
                      ["reason"])
TRACKED = Gauge("tti_bigdata_bus_tracked", "Buses currently assigned to a trip")
SCHEDULE_TRIPS = Gauge("tti_bigdata_schedule_trips", "Trips in the loaded timetable")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitSettings:
    """Publishing and API knobs (seconds)."""

    publish_change_s: float = 10.0  # republish a prediction when it moved by more than this
    refresh_s: float = 60.0  # ... or when it was last published this long ago
    prediction_ttl_s: float = 150.0  # a prediction not refreshed for this long is stale
    reliable_gap_s: float = 90.0  # stop events bracketed by a wider gap are not scored/learned
    housekeeping_s: float = 30.0
    bus_ttl_s: float = 600.0  # /v1/buses lists vehicles heard from within this
    early_shading: bool = True  # tell riders a little early (see early_shading_s)


_SHADING = ((90.0, 30.0), (270.0, 45.0), (480.0, 75.0), (750.0, 90.0))


def early_shading_s(lead_s: float) -> float:
    """How much earlier than the expected arrival to announce a bus, by time to arrival.

    A bus earlier than announced makes riders miss it, one later only makes them wait, so the
    ETA Accuracy Benchmark accepts 30 s early but 90 s late (0-3 min) up to 90 s early but 270 s
    late (10-15 min). Announcing the expected time minus half that asymmetry centres the
    accepted window on the expectation: 30 s at 1.5 min, rising to 90 s at 12.5 min ahead,
    interpolated in between so predictions do not jump at bucket edges.
    """
    pts = _SHADING
    if lead_s <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in pairwise(pts):
        if lead_s <= x1:
            return y0 + (y1 - y0) * (lead_s - x0) / (x1 - x0)
    return pts[-1][1]


@dataclass(slots=True)
class LiveEntry:
    """A published prediction as the arrivals board holds it."""

    run: TripRun
    stop_index: int
    vehicle_id: str
    predicted: float
    made_at: float


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def load_registry(path: str | Path) -> dict[str, tuple[str | None, str | None]]:
    """vehicle id → (class, route) from a vehicle registry CSV (terminal_phone, …, route_id).

    bigdata owns the imported registries; services do not import each other, so the collector's
    reader is not reused. Rows without a terminal are skipped.
    """
    out: dict[str, tuple[str | None, str | None]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            vid = (row.get("terminal_phone") or "").strip().lstrip("0")
            if vid:
                out[vid] = ((row.get("vehicle_class") or "").strip() or None,
                            (row.get("route_id") or "").strip() or None)
    return out


class TransitService:
    """Live bus tracking, predictions, accuracy and the arrivals board of one replica."""

    def __init__(self, config: Config, bus: EventBus, *, source: ScheduleSource | None,
                 network: RoadNetwork | NetworkGetter | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 settings: TransitSettings | None = None,
                 tracker_settings: TrackerSettings | None = None,
                 predictor_settings: PredictorSettings | None = None) -> None:
        self.config = config
        self.bus = bus
        self.source = source
        self.network: NetworkGetter | None = (
            (lambda: network) if isinstance(network, RoadNetwork) else network)
        self.clock = clock
        """Epoch seconds now (the service's clock; a benchmark may drive it by hand)."""
        self.sleep = sleep
        self.settings = settings or TransitSettings()
        self.tracker_settings = tracker_settings
        self.predictor_settings = predictor_settings
        self.schedule: Schedule | None = None
        self.tracker: Tracker | None = None
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self.loaded = asyncio.Event()
        self.accuracy = Accuracy(fresh_s=self.settings.prediction_ttl_s)
        self.log = PredictionLog()
        self.registry: dict[str, tuple[str | None, str | None]] = {}
        # run key -> stop index -> entry (what riders are being told)
        self.live: dict[str, dict[int, LiveEntry]] = {}
        self.by_stop: dict[str, set[tuple[str, int]]] = {}
        self.ignored: dict[str, int] = {}
        self.positions_handled = 0
        self._subs: list[Subscription] = []

    # ---- lifecycle -----------------------------------------------------------------------
    async def load(self) -> None:
        """Load the timetable and the vehicle registry; on failure keep the reason."""
        if self.source is None:
            return
        try:
            schedule = await self.source.load()
        except TtiError as exc:
            self.error = exc.message
            log.error("timetable not loaded: %s", exc.message)
            return
        except Exception as exc:  # a feed gtfs-kit reads but that makes no sense to us
            self.error = f"cannot use {self.source.describe()}: {exc!r}"
            log.exception("timetable not loaded")
            return
        if self.config.vehicle_registry:
            try:
                self.registry = await asyncio.to_thread(load_registry,
                                                        self.config.vehicle_registry)
            except OSError as exc:
                log.warning("vehicle registry %s unreadable: %s", self.config.vehicle_registry,
                            exc)
        self.schedule = schedule
        self.tracker = Tracker(schedule, self.tracker_settings, registry=self.registry.get)
        self.predictor = Predictor(schedule, network=self.network,
                                   settings=self.predictor_settings)
        SCHEDULE_TRIPS.set(schedule.trip_count)
        log.info("timetable loaded", extra={"source": self.source.describe(),
                                            "trips": schedule.trip_count,
                                            "patterns": len(schedule.patterns),
                                            "stops": len(schedule.stops)})
        self.loaded.set()

    async def start_consuming(self) -> None:
        """Subscribe to positions (own partitions) and segment speeds (all)."""
        self._subs.append(await self.bus.subscribe(
            VEHICLE_POSITION, self.on_position, durable="bigdata-transit",
            partitions=self.config.owned_partitions()))
        self._subs.append(await self.bus.subscribe(
            SEGMENT_SPEED, self.on_speed,
            durable=f"bigdata-transit-speeds-{self.config.replica_index}"))

    async def stop(self) -> None:
        """Stop consuming (in-flight handlers finish first)."""
        subs, self._subs = self._subs, []
        for s in subs:
            await s.stop()

    async def run(self) -> None:
        """Background task: load, subscribe, then keep house until cancelled."""
        await self.load()
        if self.tracker is None:
            return
        await self.start_consuming()
        if self.predictor is not None and self.network is not None:
            # Shapes → road segments once, off the event loop (first use would block it).
            mapped = await asyncio.to_thread(self.predictor.map_all)
            log.info("bus shapes mapped to road segments", extra={"patterns": mapped})
        while True:
            await self.sleep(self.settings.housekeeping_s)
            try:
                self.housekeeping(self.clock())
            except Exception:
                log.exception("transit housekeeping failed")

    def readiness(self) -> tuple[bool, str]:
        """Not ready while the timetable loads; a feed that failed is reported, but (as for the
        GTFS import) does not take the rest of bigdata out of service."""
        if self.source is None:
            return True, "disabled: no timetable configured (TTI_GTFS)"
        if self.error:
            return True, f"unavailable: {self.error}"
        if self.schedule is None:
            return False, f"loading {self.source.describe()}"
        return True, f"{self.schedule.trip_count} trips, {len(self.schedule.stops)} stops"

    # ---- handlers ------------------------------------------------------------------------
    async def on_speed(self, env: Envelope[SegmentSpeed]) -> None:
        """Keep the segment's window with how much it says (vehicles, confidence, length)."""
        if self.predictor is not None:
            s = env.payload
            self.predictor.speeds.update(
                s.segment_id, s.speed_kmh, s.observed_at.timestamp(), sample_count=s.sample_count,
                confidence=s.confidence if s.confidence > 0 else None,
                window_s=(s.observed_at - s.window_start).total_seconds(),
                free_flow_kmh=s.free_flow_kmh)

    async def on_position(self, env: Envelope[VehiclePosition]) -> None:
        """Track one position; publish stop events and changed predictions."""
        tracker, predictor = self.tracker, self.predictor
        if tracker is None or predictor is None:
            POSITIONS.labels("no_schedule").inc()
            self.positions_handled += 1
            return
        res = tracker.update(env.payload)
        POSITIONS.labels(res.status).inc()
        if res.status in ("unknown_route", "unknown_trip"):
            self.ignored[res.status] = self.ignored.get(res.status, 0) + 1
        vid = env.payload.vehicle_id
        for ev in res.events:
            await self._stop_event(vid, ev, env.correlation_id)
        for run, reason in res.ended:
            self._forget_run(run, vid)
            TRIPS_ENDED.labels(reason).inc()
        st = res.state
        if st is not None and st.run is not None and res.status == "tracked" and st.last:
            await self._predict(st, st.last.t, env.correlation_id)
        self.positions_handled += 1

    async def _stop_event(self, vid: str, ev: StopEvent, correlation_id: str) -> None:
        assert self.predictor is not None
        run = ev.run
        trip = run.trip
        k = ev.stop_index
        reliable = ev.uncertainty_s <= self.settings.reliable_gap_s
        self.predictor.learn(vid, ev.kind, run, k, ev.t, ev.dwell_s, reliable)
        scheduled = run.arrival_at(k) if ev.kind == "arrival" else run.departure_at(k)
        if ev.kind == "arrival":
            logged = self.log.pop(run.key, k)
            if logged is not None and reliable:
                self.accuracy.score(ev.t, logged[0], logged[1], run.arrival_at(k))
            self._drop_entry(run.key, k)
        STOP_EVENTS.labels(ev.kind).inc()
        await self.bus.publish(BUS_ARRIVAL, BusArrival(
            vehicle_id=vid, kind=ev.kind, trip_id=trip.trip_id, route_id=trip.route_id,
            stop_id=trip.pattern.stop_ids[k], stop_sequence=int(trip.stop_sequence[k]),
            observed_at=_dt(ev.t), start_date=run.start_date, start_time=trip.start_time,
            direction_id=trip.direction_id, scheduled_at=_dt(scheduled),
            delay_s=round(ev.t - scheduled, 1),
            dwell_s=None if ev.dwell_s is None else round(ev.dwell_s, 1),
            uncertainty_s=round(ev.uncertainty_s, 1)), key=vid, correlation_id=correlation_id)

    async def _predict(self, st: VehicleState, t: float, correlation_id: str) -> None:
        assert self.predictor is not None and st.run is not None
        run = st.run
        trip = run.trip
        entries = self.live.setdefault(run.key, {})
        for k in [k for k in entries if k < st.next_stop]:
            self._drop_entry(run.key, k)  # passed
        for k, expected in self.predictor.predict(st, t):
            predicted = expected - (early_shading_s(expected - t)
                                    if self.settings.early_shading else 0.0)
            predicted = max(t, predicted)
            old = entries.get(k)
            if (old is not None and abs(old.predicted - predicted) <= self.settings.publish_change_s
                    and t - old.made_at < self.settings.refresh_s):
                continue
            entries[k] = LiveEntry(run, k, st.vehicle_id, predicted, t)
            self.by_stop.setdefault(trip.pattern.stop_ids[k], set()).add((run.key, k))
            self.log.add(run.key, k, t, predicted)
            PREDICTIONS.inc()
            await self.bus.publish(ARRIVAL_PREDICTION, ArrivalPrediction(
                trip_id=trip.trip_id, route_id=trip.route_id, stop_id=trip.pattern.stop_ids[k],
                stop_sequence=int(trip.stop_sequence[k]), vehicle_id=st.vehicle_id,
                predicted_arrival=_dt(round(predicted, 1)), made_at=_dt(t), source="live",
                start_date=run.start_date, start_time=trip.start_time,
                direction_id=trip.direction_id, scheduled_arrival=_dt(run.arrival_at(k))),
                key=st.vehicle_id, correlation_id=correlation_id)

    def _drop_entry(self, run_key: str, k: int) -> None:
        entries = self.live.get(run_key)
        if not entries:
            return
        e = entries.pop(k, None)
        if e is not None:
            stop_set = self.by_stop.get(e.run.trip.pattern.stop_ids[k])
            if stop_set is not None:
                stop_set.discard((run_key, k))
        if not entries:
            del self.live[run_key]

    def _forget_run(self, run: TripRun, vehicle_id: str) -> None:
        for k in list(self.live.get(run.key, {})):
            self._drop_entry(run.key, k)
        self.log.forget(run.key)
        if self.predictor is not None:
            self.predictor.forget_vehicle(vehicle_id)

    def housekeeping(self, now: float) -> None:
        """Forget silent vehicles and stale predictions; refresh gauges."""
        if self.tracker is None:
            return
        for vid, run, reason in self.tracker.prune(now):
            self._forget_run(run, vid)
            TRIPS_ENDED.labels(reason).inc()
        stale = now - 4 * self.settings.prediction_ttl_s
        for run_key, entries in list(self.live.items()):
            if all(e.made_at < stale for e in entries.values()):
                for k in list(entries):
                    self._drop_entry(run_key, k)
                self.log.forget(run_key)
        TRACKED.set(sum(1 for st in self.tracker.vehicles.values() if st.run is not None))

    # ---- queries -------------------------------------------------------------------------
    def require_schedule(self) -> Schedule:
        """The timetable, or a 503 saying why there is none."""
        if self.schedule is None:
            raise ScheduleError(f"no timetable: {self.readiness()[1]}",
                                code="transit_unavailable")
        return self.schedule

    def route_segments(self) -> dict[str, list[str]]:
        """Road segments each bus route's shapes run on (patterns mapped so far), by route id."""
        predictor = self.predictor
        if predictor is None:
            return {}
        out: dict[str, dict[str, None]] = {}
        for pattern in predictor.schedule.patterns:
            mapped = predictor.segments_of(pattern) if predictor.mapped(pattern) else None
            if mapped is not None:
                out.setdefault(pattern.route_id, {}).update(dict.fromkeys(mapped.ids))
        return {route: list(segs) for route, segs in sorted(out.items())}

    def buses(self, *, route_id: str | None = None) -> list[dict[str, Any]]:
        """Buses heard from recently: position, trip, next stop, occupancy."""
        schedule = self.require_schedule()
        assert self.tracker is not None
        now = self.clock()
        out = []
        for st in self.tracker.vehicles.values():
            pos = st.position
            if pos is None or st.last is None or now - st.last.t > self.settings.bus_ttl_s:
                continue
            run = st.run
            if route_id is not None and (run.trip.route_id if run else st.route_id) != route_id:
                continue
            item: dict[str, Any] = {
                "vehicle_id": st.vehicle_id, "lon": pos.lon, "lat": pos.lat,
                "observed_at": _iso(st.last.t), "speed_kmh": pos.speed_kmh,
                "heading_deg": pos.heading_deg, "route_id": run.trip.route_id if run
                else st.route_id, "trip": None, "next_stop": None,
                "status": "unassigned", "occupancy": None}
            if st.occupancy_at is not None:
                item["occupancy"] = {"status": st.occupancy, "percentage": st.occupancy_pct,
                                     "observed_at": _iso(st.occupancy_at)}
            if run is not None:
                trip = run.trip
                route = schedule.routes.get(trip.route_id)
                item["trip"] = {
                    "trip_id": trip.trip_id, "start_date": run.start_date,
                    "start_time": trip.start_time, "route_id": trip.route_id,
                    "route_short_name": route.short_name if route else None,
                    "direction_id": trip.direction_id, "headsign": trip.headsign,
                    "delay_s": round(st.last.t - run.scheduled_time_at(st.along_m), 1),
                    "shape_dist_m": round(st.along_m, 1)}
                k = st.at_stop if st.at_stop is not None else st.next_stop
                item["status"] = "stopped_at" if st.at_stop is not None else "in_transit_to"
                if k < trip.pattern.n_stops:
                    sid = trip.pattern.stop_ids[k]
                    entry = self.live.get(run.key, {}).get(k)
                    item["next_stop"] = {
                        "stop_id": sid, "name": schedule.stops[sid].name,
                        "stop_sequence": int(trip.stop_sequence[k]),
                        "scheduled_arrival": _iso(run.arrival_at(k)),
                        "predicted_arrival": _iso(round(entry.predicted)) if entry else None}
            out.append(item)
        out.sort(key=lambda b: b["vehicle_id"])
        return out

    def arrivals(self, stop_id: str, *, horizon_s: float = 3600.0, limit: int = 20
                 ) -> dict[str, Any]:
        """Next arrivals at a stop (or a station's stops): live first-hand, else the timetable."""
        schedule = self.require_schedule()
        stop = schedule.stops.get(stop_id)
        if stop is None:
            raise NotFound(f"no stop {stop_id!r}")
        now = self.clock()
        ttl = self.settings.prediction_ttl_s
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for sid in schedule.stop_ids_for(stop_id):
            for run_key, k in self.by_stop.get(sid, ()):
                e = self.live[run_key][k]
                if now - e.made_at > ttl or not now - 60 <= e.predicted <= now + horizon_s:
                    continue
                seen.add((run_key, sid))
                rows.append(self._row(e.run, k, e.predicted, e.made_at, "live", e.vehicle_id))
        tracked = {st.run.key: st for st in (self.tracker.vehicles.values() if self.tracker
                                              else ()) if st.run is not None}
        for sid in schedule.stop_ids_for(stop_id):
            for pattern, k in schedule.stop_patterns.get(sid, ()):
                for day, day0 in schedule.service_days(now):
                    active = schedule.calendar.active(day)
                    for trip in pattern.trips:
                        t_arr = day0 + float(trip.arrival_s[k])
                        if (trip.service_id not in active
                                or not now - 60 <= t_arr <= now + horizon_s):
                            continue
                        run = TripRun(trip, day, day0)
                        st = tracked.get(run.key)
                        if (run.key, sid) in seen or (st is not None and st.next_stop > k):
                            continue
                        rows.append(self._row(run, k, t_arr, None, "schedule", None))
        rows.sort(key=lambda r: r["predicted_arrival"])
        return {"stop_id": stop.stop_id, "name": stop.name, "lon": stop.lon, "lat": stop.lat,
                "generated_at": _iso(now), "arrivals": rows[:limit]}

    def _row(self, run: TripRun, k: int, predicted: float, made_at: float | None, source: str,
             vehicle_id: str | None) -> dict[str, Any]:
        assert self.schedule is not None
        trip = run.trip
        route = self.schedule.routes.get(trip.route_id)
        scheduled = run.arrival_at(k)
        return {"trip_id": trip.trip_id, "start_date": run.start_date,
                "start_time": trip.start_time, "route_id": trip.route_id,
                "route_short_name": route.short_name if route else None,
                "direction_id": trip.direction_id, "headsign": trip.headsign,
                "stop_id": trip.pattern.stop_ids[k], "stop_sequence": int(trip.stop_sequence[k]),
                "vehicle_id": vehicle_id, "predicted_arrival": _iso(round(predicted)),
                "scheduled_arrival": _iso(scheduled), "delay_s": round(predicted - scheduled, 1),
                "made_at": _iso(made_at), "source": source}

    def accuracy_report(self) -> dict[str, Any]:
        """The ETA Accuracy Benchmark figures since start, live and the timetable baseline."""
        return {"method": "ETA Accuracy Benchmark (time to actual arrival buckets, asymmetric "
                          "windows, predictions sampled every 30 s before each arrival)",
                "arrivals_scored": self.accuracy.arrivals_scored,
                "live": self.accuracy.report("live"),
                "schedule_baseline": self.accuracy.report("schedule"),
                "ignored_positions": dict(self.ignored)}


TRANSIT = web.AppKey("transit", TransitService)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer") from exc
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be in [{lo}, {hi}]")
    return value


async def _buses(request: web.Request) -> web.Response:
    svc = request.app[TRANSIT]
    buses = svc.buses(route_id=request.query.get("route_id"))
    return web.json_response({"generated_at": _iso(svc.clock()), "time_zone": "UTC",
                              "count": len(buses), "buses": buses})


async def _arrivals(request: web.Request) -> web.Response:
    svc = request.app[TRANSIT]
    horizon = _int_param(request, "horizon_min", 60, 1, 240)
    limit = _int_param(request, "limit", 20, 1, 100)
    body = svc.arrivals(request.match_info["stop_id"], horizon_s=horizon * 60.0, limit=limit)
    body["time_zone"] = "UTC"
    return web.json_response(body)


async def _route_segments(request: web.Request) -> web.Response:
    routes = request.app[TRANSIT].route_segments()
    return web.json_response({"count": len(routes), "routes": routes})


async def _accuracy(request: web.Request) -> web.Response:
    return web.json_response(request.app[TRANSIT].accuracy_report())


def schedule_source_from(config: Config) -> ScheduleSource | None:
    """The configured timetable: ``TTI_GTFS`` (a GTFS zip), or none."""
    return GtfsFileSource(config.gtfs) if config.gtfs else None


def setup_transit(app: web.Application, config: Config, bus: EventBus, *,
                  network: RoadNetwork | NetworkGetter | None = None,
                  source: ScheduleSource | None = None,
                  clock: Clock | None = None, **kwargs: Any) -> TransitService:
    """Add bus tracking, predictions and accuracy to the bigdata app.

    Registers ``GET /v1/buses``, ``GET /v1/stops/{stop_id}/arrivals``, ``GET /v1/eta-accuracy``,
    a readiness check and a ``cleanup_ctx`` that loads the timetable (``source``, default
    ``TTI_GTFS``) in the background and then consumes positions and segment speeds. ``network``
    (or a function returning it once loaded) maps shapes to road segments for live speeds.
    ``clock`` (default: the configured one) is the time of tracking, predictions and
    housekeeping.
    """
    clock = clock or config.make_clock()
    svc = TransitService(config, bus, source=source or schedule_source_from(config),
                         network=network, clock=clock.time, sleep=clock.sleep, **kwargs)
    app[TRANSIT] = svc

    async def transit_ctx(app: web.Application) -> AsyncIterator[None]:
        task = spawn(app, svc.run(), name="bigdata-transit")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await svc.stop()

    app.cleanup_ctx.append(transit_ctx)
    add_readiness_check(app, "transit_schedule", svc.readiness)
    app.router.add_get("/v1/buses", _buses)
    app.router.add_get("/v1/stops/{stop_id}/arrivals", _arrivals)
    app.router.add_get("/v1/eta-accuracy", _accuracy)
    app.router.add_get("/v1/routes/segments", _route_segments)
    return svc
