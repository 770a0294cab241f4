"""Buses as the publisher holds them: live positions, arrival predictions, public labels.

Fed by the bus: ``tti.position.<p>`` (only buses are kept: ``vehicle_class`` bus, or a position
that names its trip or route), ``tti.bus.prediction.<p>`` (bigdata's predictions; the newest per
trip instance and stop wins) and ``tti.bus.arrival.<p>`` (a bus reached a stop: its predictions
for that stop and those before it are over). Nothing here leaves the process with a vehicle id:
every answer names a bus by its public label (:class:`PublicLabels`), never by the terminal's
phone number or a plate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.errors import DecodeError
from shared.events import ArrivalPrediction, BusArrival, VehiclePosition

OCCUPANCY_STATUSES = ("EMPTY", "MANY_SEATS_AVAILABLE", "FEW_SEATS_AVAILABLE",
                      "STANDING_ROOM_ONLY", "CRUSHED_STANDING_ROOM_ONLY", "FULL",
                      "NOT_ACCEPTING_PASSENGERS", "NO_DATA_AVAILABLE", "NOT_BOARDABLE")
"""GTFS-realtime's ``OccupancyStatus`` names, as positions carry them."""

TripKey = tuple[str, str | None, str | None]
"""A trip instance: (trip_id, start_date, start_time), as in GTFS-realtime's TripDescriptor."""


def _utc(dt: datetime) -> datetime:
    return dt if dt.utcoffset() == timedelta(0) else dt.astimezone(UTC)


class PublicLabels:
    """Stable public labels of vehicles: ``bus-`` + a keyed hash of the vehicle id.

    Keyed (HMAC-SHA256) because a plain hash of an 11-digit phone number is reversed by trying
    them all; replicas given the same key (``TTI_PUBLIC_ID_KEY``) label a bus alike.
    """

    def __init__(self, key: str = "") -> None:
        self._key = key.encode() if key else secrets.token_bytes(32)
        self._cache: dict[str, str] = {}

    def label(self, vehicle_id: str) -> str:
        """The public label of ``vehicle_id``."""
        found = self._cache.get(vehicle_id)
        if found is None:
            digest = hmac.new(self._key, vehicle_id.encode(), hashlib.sha256).digest()
            found = "bus-" + base64.b32encode(digest[:5]).decode().lower()
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[vehicle_id] = found
        return found


@dataclass(slots=True)
class Bus:
    """One live bus: where it is, which trip it runs, how full it is, its last stop event."""

    ref: str
    lon: float
    lat: float
    observed_at: datetime
    speed_kmh: float | None = None
    heading_deg: float | None = None
    route_id: str | None = None
    trip_id: str | None = None
    start_date: str | None = None
    start_time: str | None = None
    direction_id: int | None = None
    occupancy: str | None = None
    occupancy_pct: float | None = None
    stop_id: str | None = None
    stop_sequence: int | None = None
    stop_event: str | None = None
    """``arrival`` (at the stop now) or ``departure`` (left it) of its last stop event."""
    stop_event_at: datetime | None = None
    delay_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """bigdata's latest prediction for one trip instance at one stop, the bus named publicly."""

    trip_id: str
    route_id: str
    stop_id: str
    stop_sequence: int
    vehicle_ref: str | None
    predicted_arrival: datetime
    made_at: datetime
    source: str
    start_date: str | None
    start_time: str | None
    direction_id: int | None
    scheduled_arrival: datetime | None

    @property
    def trip_key(self) -> TripKey:
        """The trip instance it belongs to."""
        return (self.trip_id, self.start_date, self.start_time)


def _finite(value: float | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value)):
        raise DecodeError(f"{name} must be a finite number or null", code="bad_field")


def is_bus(p: VehiclePosition) -> bool:
    """Whether a position is a bus's: class bus, or it names a trip or a route."""
    return p.vehicle_class == "bus" or p.trip_id is not None or p.route_id is not None


@dataclass
class BusBoard:
    """Live buses by public label and predictions by (trip instance, stop sequence); bounded.

    A bus not heard from for ``bus_ttl_s`` is gone; a prediction not refreshed for
    ``prediction_ttl_s`` is stale (bigdata refreshes live ones about once a minute).
    """

    labels: PublicLabels = field(default_factory=PublicLabels)
    bus_ttl_s: float = 600.0
    prediction_ttl_s: float = 150.0
    max_buses: int = 100_000
    max_predictions: int = 1_000_000
    buses: dict[str, Bus] = field(default_factory=dict)
    by_trip: dict[TripKey, dict[int, Prediction]] = field(default_factory=dict)
    held: int = 0
    by_stop: dict[str, set[tuple[TripKey, int]]] = field(default_factory=dict)

    def apply_position(self, p: VehiclePosition) -> Bus | None:
        """Keep a bus's newest position; None when it is not a bus or is older than held."""
        if not is_bus(p):
            return None
        _finite(p.lon, "lon")
        _finite(p.lat, "lat")
        if not (-180.0 <= p.lon <= 180.0 and -90.0 <= p.lat <= 90.0):
            raise DecodeError("position out of WGS-84 range", code="bad_field")
        _finite(p.speed_kmh, "speed_kmh")
        _finite(p.heading_deg, "heading_deg")
        _finite(p.occupancy_pct, "occupancy_pct")
        observed = _utc(p.observed_at)
        ref = self.labels.label(p.vehicle_id)
        bus = self.buses.get(ref)
        if bus is not None and bus.observed_at > observed:
            return None
        if bus is None:
            if len(self.buses) >= self.max_buses:
                oldest = min(self.buses.values(), key=lambda b: b.observed_at)
                del self.buses[oldest.ref]
            bus = self.buses[ref] = Bus(ref=ref, lon=p.lon, lat=p.lat, observed_at=observed)
        if p.trip_id is not None and p.trip_id != bus.trip_id:
            bus.stop_id = bus.stop_sequence = bus.stop_event = bus.stop_event_at = None
        bus.lon, bus.lat, bus.observed_at = p.lon, p.lat, observed
        bus.speed_kmh, bus.heading_deg = p.speed_kmh, p.heading_deg
        if p.route_id is not None:
            bus.route_id = p.route_id.split(":")[0] if ":" in p.route_id else p.route_id
        if p.trip_id is not None:
            bus.trip_id = p.trip_id
        if p.occupancy is not None or p.occupancy_pct is not None:
            bus.occupancy = p.occupancy if p.occupancy in OCCUPANCY_STATUSES else None
            bus.occupancy_pct = p.occupancy_pct
        return bus

    def apply_arrival(self, a: BusArrival) -> Bus | None:
        """A stop event: the bus's trip and stop; predictions up to that stop are over."""
        key: TripKey = (a.trip_id, a.start_date, a.start_time)
        if a.kind == "arrival":
            for seq in [s for s in self.by_trip.get(key, {}) if s <= a.stop_sequence]:
                self._drop((key, seq))
        if a.vehicle_id is None:
            return None
        bus = self.buses.get(self.labels.label(a.vehicle_id))
        at = _utc(a.observed_at)
        if bus is None or (bus.stop_event_at is not None and bus.stop_event_at > at):
            return bus
        bus.trip_id, bus.route_id = a.trip_id, a.route_id
        bus.start_date, bus.start_time, bus.direction_id = (a.start_date, a.start_time,
                                                            a.direction_id)
        bus.stop_id, bus.stop_sequence, bus.stop_event = a.stop_id, a.stop_sequence, a.kind
        bus.stop_event_at, bus.delay_s = at, a.delay_s
        return bus

    def apply_prediction(self, p: ArrivalPrediction) -> Prediction | None:
        """Keep the newest prediction per trip instance and stop; None when an older one."""
        if not p.trip_id or not p.stop_id:
            raise DecodeError("a prediction needs trip_id and stop_id", code="bad_field")
        pred = Prediction(
            trip_id=p.trip_id, route_id=p.route_id, stop_id=p.stop_id,
            stop_sequence=p.stop_sequence,
            vehicle_ref=None if p.vehicle_id is None else self.labels.label(p.vehicle_id),
            predicted_arrival=_utc(p.predicted_arrival), made_at=_utc(p.made_at),
            source=p.source, start_date=p.start_date, start_time=p.start_time,
            direction_id=p.direction_id,
            scheduled_arrival=None if p.scheduled_arrival is None
            else _utc(p.scheduled_arrival))
        key = (pred.trip_key, pred.stop_sequence)
        stops = self.by_trip.get(pred.trip_key)
        held = None if stops is None else stops.get(pred.stop_sequence)
        if held is not None and held.made_at > pred.made_at:
            return None
        if held is None and self.held >= self.max_predictions:
            oldest = min(self._all(), key=lambda p: p.made_at)
            self._drop((oldest.trip_key, oldest.stop_sequence))
        if held is None:
            self.held += 1
        self.by_trip.setdefault(pred.trip_key, {})[pred.stop_sequence] = pred
        self.by_stop.setdefault(pred.stop_id, set()).add(key)
        if pred.vehicle_ref is not None:
            bus = self.buses.get(pred.vehicle_ref)
            if bus is not None:
                bus.trip_id, bus.route_id = pred.trip_id, pred.route_id
                bus.start_date, bus.start_time = pred.start_date, pred.start_time
                bus.direction_id = pred.direction_id
        return pred

    def _all(self) -> Iterable[Prediction]:
        for stops in self.by_trip.values():
            yield from stops.values()

    def _find(self, key: tuple[TripKey, int]) -> Prediction | None:
        stops = self.by_trip.get(key[0])
        return None if stops is None else stops.get(key[1])

    def _drop(self, key: tuple[TripKey, int]) -> None:
        stops = self.by_trip.get(key[0])
        pred = None if stops is None else stops.pop(key[1], None)
        if stops is not None and not stops:
            del self.by_trip[key[0]]
        if pred is not None:
            self.held -= 1
            keys = self.by_stop.get(pred.stop_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_stop[pred.stop_id]

    # -- reading -----------------------------------------------------------------------------

    def live_buses(self, now: datetime) -> list[Bus]:
        """Buses heard from within ``bus_ttl_s``, by label."""
        cutoff = now - timedelta(seconds=self.bus_ttl_s)
        return sorted((b for b in self.buses.values() if b.observed_at >= cutoff),
                      key=lambda b: b.ref)

    def find_bus(self, ref: str, now: datetime) -> Bus | None:
        """A live bus by label, or None."""
        bus = self.buses.get(ref)
        if bus is None or (now - bus.observed_at).total_seconds() > self.bus_ttl_s:
            return None
        return bus

    def fresh(self, pred: Prediction, now: datetime) -> bool:
        """Whether a prediction still stands: refreshed lately and not long past."""
        return ((now - pred.made_at).total_seconds() <= self.prediction_ttl_s
                and pred.predicted_arrival >= now - timedelta(seconds=60))

    def predictions_at(self, stop_ids: Iterable[str], now: datetime) -> list[Prediction]:
        """Fresh predictions at these stops, soonest first."""
        found = (self._find(k) for sid in stop_ids for k in self.by_stop.get(sid, ()))
        return sorted((p for p in found if p is not None and self.fresh(p, now)),
                      key=lambda p: p.predicted_arrival)

    def trips(self, now: datetime) -> dict[TripKey, list[Prediction]]:
        """Fresh predictions grouped by trip instance, each in stop order."""
        out: dict[TripKey, list[Prediction]] = {}
        for key, stops in self.by_trip.items():
            preds = [stops[s] for s in sorted(stops) if self.fresh(stops[s], now)]
            if preds:
                out[key] = preds
        return out

    def prune(self, now: datetime) -> int:
        """Forget buses gone silent and stale predictions; returns how many were dropped."""
        cutoff = now - timedelta(seconds=self.bus_ttl_s)
        gone = [ref for ref, b in self.buses.items() if b.observed_at < cutoff]
        for ref in gone:
            del self.buses[ref]
        stale = [(p.trip_key, p.stop_sequence) for p in self._all() if not self.fresh(p, now)]
        for k in stale:
            self._drop(k)
        return len(gone) + len(stale)
