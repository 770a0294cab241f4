"""两客一危 positions on their roads: a `MatchedPosition` per decided fix, for the safety rules.

Bigdata runs every vehicle's map matcher; the warning service's coach and dangerous-goods rules
need to know which road such a vehicle is on, its speed limit and how sure the matcher is, and
must not import the matcher (DESIGN.md, "matched position"). So for a vehicle whose class is in
`TWO_PASSENGER_ONE_DANGER` the app tags each position it hands to the vehicle's probe with the
position's envelope (`VehicleProbe.update(tag=...)`), and each decided fix that comes back
tagged becomes one `MatchedPosition`: the segment and offset the matcher decided, the segment's
speed limit and its source (`shared.roadnet.speed_limit`: OSM ``maxspeed`` or the statutory
default), road class, name (or ref), bridge and tunnel flags, the matcher's confidence, and the
fix's own speed, heading, status bits and route. Other classes are not published (at province
scale that would be some 6,000 events a second nobody reads).

Events go through the outbox (`shared/bus/outbox.py`): nothing the bus refuses is lost while
the process runs, and the id ``matched:<vehicle_id>:<observed_at ms>`` makes a resend, or the
same fix decided again after a replica restarted, a duplicate JetStream drops. The key is the
vehicle id, so the subject is partitioned like positions (``tti.position.matched.<p>``) and a
vehicle's events keep their order. The content depends only on the vehicle's own positions, so
replicas sharing the partitions publish what one process would.

Metric ``tti_bigdata_matched_positions_total{result}``: ``on_road`` / ``off_road`` events queued;
what the bus took is ``tti_bus_outbox_total{subject="tti.position.matched"}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter

from services.bigdata.speeds import ProbeSample
from shared.bus import EventBus
from shared.bus.outbox import Outbox, Outgoing
from shared.codec import Envelope
from shared.events import (
    MATCHED_POSITION,
    TWO_PASSENGER_ONE_DANGER,
    MatchedPosition,
    VehiclePosition,
)
from shared.roadnet import RoadNetwork, speed_limit

__all__ = ["MATCHED", "MatchedPositions", "monitored"]

log = logging.getLogger("tti.bigdata.matched")

MATCHED = Counter("tti_bigdata_matched_positions_total",
                  "MatchedPositions of 两客一危 vehicles queued for the bus, by whether the fix "
                  "matched a road (on_road, off_road)", ["result"])


def monitored(vehicle_class: str) -> bool:
    """Whether positions of this vehicle class are published on their roads."""
    return vehicle_class in TWO_PASSENGER_ONE_DANGER


@dataclass(frozen=True, slots=True)
class _Road:
    """What a MatchedPosition says of its segment (looked up once per segment)."""

    road_class: str
    name: str | None
    limit_kmh: float | None
    limit_source: str
    bridge: bool
    tunnel: bool


class MatchedPositions:
    """Builds the MatchedPositions of tagged samples and owes them to the bus (one outbox)."""

    def __init__(self, bus: EventBus, *, limit: int, batch: int) -> None:
        self.outbox = Outbox(bus, MATCHED_POSITION, limit=limit, batch=batch)
        self.network: RoadNetwork | None = None
        self._roads: dict[str, _Road] = {}
        self.queued = 0
        self.published = 0
        self.known = 0
        """Decided again after a restart but already in the stream: not published twice."""
        self._published_before: set[str] = set()

    def use_network(self, network: RoadNetwork) -> None:
        """The network the matcher runs on (its segments' limits are read from it)."""
        if network is not self.network:
            self.network = network
            self._roads.clear()

    def _road(self, segment_id: str) -> _Road:
        road = self._roads.get(segment_id)
        if road is None:
            assert self.network is not None
            seg = self.network.get_segment(segment_id)
            limit, source = speed_limit(seg)
            road = self._roads[segment_id] = _Road(seg.road_class, seg.name or seg.ref, limit,
                                                   source, seg.bridge, seg.tunnel)
        return road

    def event(self, sample: ProbeSample) -> MatchedPosition | None:
        """The MatchedPosition of a sample tagged with its position's envelope, else None."""
        env = sample.tag
        if not isinstance(env, Envelope) or not isinstance(env.payload, VehiclePosition):
            return None
        pos: VehiclePosition = env.payload
        r = sample.result
        c = r.candidate
        if c is None:
            segment_id, road, lon, lat, offset, confidence = "", None, pos.lon, pos.lat, 0.0, 0.0
        else:
            segment_id, road = c.segment_id, self._road(c.segment_id)
            lon, lat, offset = round(c.lon, 7), round(c.lat, 7), round(c.offset_m, 1)
            confidence = round(r.confidence, 4)
        return MatchedPosition(
            vehicle_id=pos.vehicle_id, vehicle_class=pos.vehicle_class,
            observed_at=pos.observed_at, lon=lon, lat=lat, segment_id=segment_id,
            offset_m=offset, road_class=road.road_class if road else "",
            speed_limit_kmh=road.limit_kmh if road else None,
            speed_limit_source=road.limit_source if road else "none", confidence=confidence,
            speed_kmh=pos.speed_kmh, heading_deg=pos.heading_deg,
            road_name=road.name if road else None, bridge=road.bridge if road else False,
            tunnel=road.tunnel if road else False, status=pos.status, route_id=pos.route_id)

    def published_before(self, event_ids: set[str]) -> None:
        """Ids the stream already holds (read back by recovery): not queued again."""
        self._published_before |= event_ids

    def add(self, sample: ProbeSample) -> None:
        """Queue the MatchedPosition of a tagged sample (an untagged one is not monitored)."""
        event = self.event(sample)
        if event is None:
            return
        env = sample.tag
        assert isinstance(env, Envelope)
        ms = round(event.observed_at.timestamp() * 1000)
        event_id = f"matched:{event.vehicle_id}:{ms}"
        if event_id in self._published_before:
            # Each fix is decided once per matcher, so the id is not needed again.
            self._published_before.discard(event_id)
            self.known += 1
            return
        self.outbox.add(Outgoing(event_id, MATCHED_POSITION, event,
                                 event.vehicle_id, correlation_id=env.correlation_id))
        self.queued += 1
        MATCHED.labels("on_road" if event.segment_id else "off_road").inc()

    async def send(self) -> int:
        """Publish what is queued (what the bus refuses stays for the next call); how many."""
        sent = len(await self.outbox.send())
        self.published += sent
        return sent
