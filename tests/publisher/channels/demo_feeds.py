"""What the channel tests feed the running stack: road statuses, warnings, a live bus, an index.

Everything goes over the stack's real bus and is waited for in the publisher's state, so a test
asks the channel only once the data is there.
"""

from __future__ import annotations

from datetime import timedelta

from services.publisher.answers import Answers
from services.publisher.api import ANSWERS
from shared.clock import Clock
from shared.events import (
    AREA_INDEX,
    ARRIVAL_PREDICTION,
    ROAD_STATUS,
    VEHICLE_POSITION,
    WARNING,
    AreaIndex,
    ArrivalPrediction,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    RoadStatus,
    VehiclePosition,
    Warning,
    WarningKind,
    WarningStatus,
)
from shared.levels import level_names
from tests.publisher import wait_for
from tests.publisher.stack import Stack

PHONE = "13800000001"
STOP = "1479"
"""解放大道八一路, on route 1 (R1) direction 0, stop sequence 2."""


def answers_of(stack: Stack) -> Answers:
    """The publisher's one set of answers."""
    app = stack.client.app
    assert app is not None
    return app[ANSWERS]


async def road_status(stack: Stack, segment_id: str, level: int, speed_kmh: float) -> None:
    """Publish a live status of a segment and wait until the publisher holds it."""
    name, name_en = level_names(level)
    now = stack.clock.now()
    await stack.bus.publish(ROAD_STATUS, RoadStatus(
        segment_id=segment_id, level=level, level_name=name, level_name_en=name_en,
        speed_kmh=speed_kmh, free_flow_kmh=60.0, observed_at=now, sample_count=9,
        source="probe"))
    await wait_for(lambda: (s := stack.publisher.roads.find(segment_id, stack.clock.now()))
                   is not None and s.observed_at >= now)


def warning(at: Stack | Clock, warning_id: str, *, segment_ids: tuple[str, ...] = (),
            kind: WarningKind = WarningKind.CONGESTION,
            severity: CapSeverity = CapSeverity.SEVERE,
            status: WarningStatus = WarningStatus.RAISED, version: int = 1,
            road_names: tuple[str, ...] = (), level: int | None = 5) -> Warning:
    """A public warning as the warning service sends it, started now on the stack's clock
    (or ``at``, a clock)."""
    now = (at.clock if isinstance(at, Stack) else at).now()
    return Warning(
        warning_id=warning_id, kind=kind, status=status, category=CapCategory.TRANSPORT,
        severity=severity, urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
        msg_type=CapMsgType.ALERT if version == 1 else CapMsgType.UPDATE, started_at=now,
        updated_at=now, headline="江城一桥严重拥堵", headline_en="First Bridge: severe congestion",
        cause="severe_congestion", segment_ids=segment_ids, level=level, version=version,
        road_names=road_names)


async def publish_warning(stack: Stack, w: Warning) -> None:
    """Publish a warning and wait until the publisher holds that version."""
    await stack.bus.publish(WARNING, w)
    await wait_for(lambda: (h := stack.publisher.warnings.find(w.warning_id)) is not None
                   and h.version == w.version and h.status == w.status)


async def live_bus(stack: Stack, *, stop_id: str = STOP, seq: int = 2, in_s: float = 240
                   ) -> None:
    """A route-1 bus (off the demo network, so bigdata's tracker leaves it alone) and its
    prediction at ``stop_id``."""
    now = stack.clock.now()
    await stack.bus.publish(VEHICLE_POSITION, VehiclePosition(
        vehicle_id=PHONE, lon=115.5, lat=30.567, observed_at=now, speed_kmh=22.0,
        heading_deg=180.0, vehicle_class="bus", route_id="R1", trip_id="R1_0_0900",
        occupancy="STANDING_ROOM_ONLY", occupancy_pct=85.0), key=PHONE)
    await wait_for(lambda: stack.publisher.buses.buses)
    await stack.bus.publish(ARRIVAL_PREDICTION, ArrivalPrediction(
        trip_id="R1_0_0900", route_id="R1", stop_id=stop_id, stop_sequence=seq,
        vehicle_id=PHONE, predicted_arrival=now + timedelta(seconds=in_s), made_at=now,
        start_date="20260303", scheduled_arrival=now + timedelta(seconds=in_s - 120)),
        key=PHONE)
    await wait_for(lambda: stack.publisher.buses.predictions_at([stop_id], stack.clock.now()))


async def network_index(stack: Stack, tpi: float, level: int) -> None:
    """The network's traffic index and one area's."""
    name, name_en = level_names(level)
    now = stack.clock.now()
    for area_id, area_name, value in (("network", "全路网", tpi),
                                      ("group:arterial", "主干道", tpi + 1.0)):
        await stack.bus.publish(AREA_INDEX, AreaIndex(
            area_id=area_id, name=area_name, observed_at=now, tpi=value, level=level,
            level_name=name, level_name_en=name_en, speed_kmh=31.0, congested_share=0.2,
            segment_count=100, measured_count=80))
    await wait_for(lambda: (n := stack.publisher.index.network(stack.clock.now())) is not None
                   and n.tpi == tpi)
