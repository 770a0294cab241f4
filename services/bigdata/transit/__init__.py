"""Buses in bigdata: timetable, trip tracking, stop arrivals, arrival predictions, ETA accuracy.

**Consumes** ``tti.position.<p>`` (bus positions: ``vehicle_class`` bus, or a bus in the vehicle
registry ``TTI_VEHICLE_REGISTRY``; ``trip_id`` from GTFS-realtime, else ``route_id`` — possibly
``"<route_id>:<direction_id>"`` — from the position or the registry) and ``tti.segment.speed``.
The timetable is a GTFS static feed (``TTI_GTFS``) behind :class:`ScheduleSource`.

**Produces** ``tti.bus.arrival.<p>`` (:class:`~shared.events.BusArrival`, arrivals and departures
at stops) and ``tti.bus.prediction.<p>`` (:class:`~shared.events.ArrivalPrediction`, for each
downstream stop within an hour, when it moved by > 10 s or once a minute; announced slightly
early, see ``service.early_shading_s``), partitioned by vehicle. Accuracy is measured all the
time with the ETA Accuracy Benchmark (``accuracy``), against the timetable as a baseline.

**Endpoints** (times UTC): ``GET /v1/buses[?route_id=]``,
``GET /v1/stops/{stop_id}/arrivals[?horizon_min=60&limit=20]``, ``GET /v1/eta-accuracy``.

Modules: ``schedule`` (GTFS → patterns, trips, calendars), ``tracker`` (trip inference, progress,
stop events), ``predictor`` (run/dwell learning, live speeds, ETAs), ``accuracy`` (ETA Accuracy
Benchmark), ``service`` (bus wiring, API), ``synthetic`` (bus traces with ground truth for tests
and benchmarks).
"""

from services.bigdata.transit.schedule import GtfsFileSource, Schedule, ScheduleSource
from services.bigdata.transit.service import TRANSIT, TransitService, setup_transit

__all__ = ["TRANSIT", "GtfsFileSource", "Schedule", "ScheduleSource", "TransitService",
           "setup_transit"]
