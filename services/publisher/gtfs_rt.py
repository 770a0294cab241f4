"""GTFS-realtime feeds of the live buses, their arrival predictions and the warnings on routes.

``/gtfs-rt/vehicle-positions``, ``/gtfs-rt/trip-updates`` and ``/gtfs-rt/alerts``: protobuf
(``application/x-protobuf``, built with the official ``gtfs-realtime-bindings``) or, with
``?format=json``, the same message as JSON (field names as in the .proto) for debugging. Full
datasets; the header's timestamp is when the data last changed. Vehicles are named by their
public label only.

A stop time's ``uncertainty`` (seconds) is half the width of the window the ETA Accuracy
Benchmark accepts at that lead time (30 s early to 90 s late under 3 minutes ahead, up to 90 s
early to 270 s late at 10–15 minutes): the error the predictions are tuned to stay within.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from google.protobuf import json_format
from google.transit import gtfs_realtime_pb2 as rt

from services.publisher.answers import Answers
from services.publisher.api import ANSWERS, cached_response
from services.publisher.buses import OCCUPANCY_STATUSES, Bus
from services.publisher.render import bus_json
from shared.codec import dumps
from shared.errors import BadRequest
from shared.events import CapSeverity, Warning, WarningKind

PROTOBUF = "application/x-protobuf"

_UNCERTAINTY = ((180.0, 60), (360.0, 105), (600.0, 135), (900.0, 180))
_CAUSE = {WarningKind.INCIDENT: rt.Alert.ACCIDENT, WarningKind.WEATHER: rt.Alert.WEATHER,
          WarningKind.CLOSURE: rt.Alert.POLICE_ACTIVITY,
          WarningKind.CONGESTION: rt.Alert.OTHER_CAUSE}
_EFFECT = {WarningKind.CLOSURE: rt.Alert.DETOUR, WarningKind.INCIDENT: rt.Alert.SIGNIFICANT_DELAYS,
           WarningKind.CONGESTION: rt.Alert.SIGNIFICANT_DELAYS,
           WarningKind.WEATHER: rt.Alert.OTHER_EFFECT}
_SEVERITY = {CapSeverity.EXTREME: rt.Alert.SEVERE, CapSeverity.SEVERE: rt.Alert.SEVERE,
             CapSeverity.MODERATE: rt.Alert.WARNING, CapSeverity.MINOR: rt.Alert.INFO}


def uncertainty_s(lead_s: float) -> int:
    """Expected error of a prediction this far ahead (see the module's notes)."""
    for upto, value in _UNCERTAINTY:
        if lead_s <= upto:
            return value
    return 240


def _header(feed: rt.FeedMessage, at: datetime) -> None:
    feed.header.gtfs_realtime_version = "2.0"
    feed.header.incrementality = rt.FeedHeader.FULL_DATASET
    feed.header.timestamp = int(at.timestamp())


def _epoch(at: datetime) -> int:
    return round(at.timestamp())


def vehicle_positions(answers: Answers, now: datetime) -> rt.FeedMessage:
    """Every live bus as a VehiclePosition entity."""
    feed = rt.FeedMessage()
    _header(feed, answers.p.changed.get("buses") or now)
    places = answers.p.places
    for bus in answers.p.buses.live_buses(now):
        entity = feed.entity.add()
        entity.id = bus.ref
        v = entity.vehicle
        v.vehicle.id = bus.ref
        v.vehicle.label = bus_json(bus, places)["label"]
        _trip(v.trip, bus)
        v.position.longitude, v.position.latitude = bus.lon, bus.lat
        if bus.heading_deg is not None:
            v.position.bearing = float(bus.heading_deg)
        if bus.speed_kmh is not None:
            v.position.speed = float(bus.speed_kmh) / 3.6  # GTFS-rt speaks metres per second
        v.timestamp = _epoch(bus.observed_at)
        if bus.stop_id is not None and bus.stop_event == "arrival":
            v.stop_id = bus.stop_id
            v.current_status = rt.VehiclePosition.STOPPED_AT
            if bus.stop_sequence is not None:
                v.current_stop_sequence = bus.stop_sequence
        if bus.occupancy in OCCUPANCY_STATUSES:
            v.occupancy_status = rt.VehiclePosition.OccupancyStatus.Value(bus.occupancy)
        if bus.occupancy_pct is not None:
            v.occupancy_percentage = max(0, round(bus.occupancy_pct))
    return feed


def _trip(trip: rt.TripDescriptor, bus: Bus) -> None:
    if bus.trip_id:
        trip.trip_id = bus.trip_id
        if bus.start_date:
            trip.start_date = bus.start_date
        if bus.start_time:
            trip.start_time = bus.start_time
        if bus.direction_id is not None:
            trip.direction_id = bus.direction_id
    if bus.route_id:
        trip.route_id = bus.route_id


def trip_updates(answers: Answers, now: datetime) -> rt.FeedMessage:
    """Every trip with fresh predictions as a TripUpdate, stops in sequence."""
    feed = rt.FeedMessage()
    _header(feed, answers.p.changed.get("buses") or now)
    for (trip_id, start_date, start_time), preds in sorted(
            answers.p.buses.trips(now).items(), key=lambda kv: kv[0][0]):
        entity = feed.entity.add()
        entity.id = f"{trip_id}:{start_date or ''}:{start_time or ''}"
        tu = entity.trip_update
        tu.trip.trip_id = trip_id
        tu.trip.route_id = preds[0].route_id
        if start_date:
            tu.trip.start_date = start_date
        if start_time:
            tu.trip.start_time = start_time
        if preds[0].direction_id is not None:
            tu.trip.direction_id = preds[0].direction_id
        refs = [p.vehicle_ref for p in preds if p.vehicle_ref]
        if refs:
            tu.vehicle.id = refs[-1]
        tu.timestamp = _epoch(max(p.made_at for p in preds))
        for pred in preds:
            stu = tu.stop_time_update.add()
            stu.stop_sequence = pred.stop_sequence
            stu.stop_id = pred.stop_id
            stu.arrival.time = _epoch(pred.predicted_arrival)
            stu.arrival.uncertainty = uncertainty_s(
                (pred.predicted_arrival - pred.made_at).total_seconds())
            if pred.scheduled_arrival is not None:
                stu.arrival.delay = round(
                    (pred.predicted_arrival - pred.scheduled_arrival).total_seconds())
    return feed


def affects_buses(warning: Warning) -> bool:
    """A public warning in force whose impact analysis names bus routes through it."""
    return (warning.active and warning.kind is not WarningKind.VEHICLE_ALARM
            and warning.impact is not None and bool(warning.impact.bus_routes))


def alerts(answers: Answers, now: datetime) -> rt.FeedMessage:
    """Warnings affecting bus routes as Alerts (Chinese and English texts)."""
    feed = rt.FeedMessage()
    _header(feed, answers.p.changed.get("warnings") or now)
    for w in answers.p.warnings.list_warnings("active"):
        if not affects_buses(w):
            continue
        assert w.impact is not None
        entity = feed.entity.add()
        entity.id = w.warning_id
        alert = entity.alert
        period = alert.active_period.add()
        period.start = _epoch(w.started_at)
        if w.expected_end is not None:
            period.end = _epoch(w.expected_end)
        for route_id in w.impact.bus_routes:
            alert.informed_entity.add().route_id = route_id
        alert.cause = _CAUSE.get(w.kind, rt.Alert.UNKNOWN_CAUSE)
        alert.effect = _EFFECT.get(w.kind, rt.Alert.UNKNOWN_EFFECT)
        alert.severity_level = _SEVERITY.get(w.severity, rt.Alert.UNKNOWN_SEVERITY)
        for field, zh, en in ((alert.header_text, w.headline, w.headline_en),
                              (alert.description_text, w.description, w.description_en)):
            for language, value in (("zh-CN", zh), ("en", en)):
                if value:
                    tr = field.translation.add()
                    tr.text, tr.language = value, language
    return feed


def _feed_response(request: web.Request, feed: rt.FeedMessage) -> web.Response:
    fmt = request.query.get("format", "protobuf")
    if fmt == "json":
        body = dumps(json_format.MessageToDict(feed, preserving_proto_field_name=True))
        content_type = "application/json"
    elif fmt in ("protobuf", "pb"):
        body, content_type = feed.SerializeToString(), PROTOBUF
    else:
        raise BadRequest("format must be protobuf or json")
    return cached_response(request, body, content_type=content_type,
                           last_modified=datetime.fromtimestamp(feed.header.timestamp,
                                                                tz=request.app[ANSWERS].p.clock
                                                                .now().tzinfo))


async def _vehicle_positions(request: web.Request) -> web.Response:
    answers = request.app[ANSWERS]
    return _feed_response(request, vehicle_positions(answers, answers.p.clock.now()))


async def _trip_updates(request: web.Request) -> web.Response:
    answers = request.app[ANSWERS]
    return _feed_response(request, trip_updates(answers, answers.p.clock.now()))


async def _alerts(request: web.Request) -> web.Response:
    answers = request.app[ANSWERS]
    return _feed_response(request, alerts(answers, answers.p.clock.now()))


def add_gtfs_rt_routes(app: web.Application) -> None:
    """Register the three GTFS-realtime feeds."""
    app.router.add_get("/gtfs-rt/vehicle-positions", _vehicle_positions)
    app.router.add_get("/gtfs-rt/trip-updates", _trip_updates)
    app.router.add_get("/gtfs-rt/alerts", _alerts)
