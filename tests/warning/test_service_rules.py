"""The safety rules inside the warning service, fed from the real memory bus.

Two replicas consume every matched position, driver identity and terminal alarm; only the lease
holder publishes. Each violation is one vehicle alarm on ``tti.warning`` and one JT/T 808 text
on ``tti.terminal.command.<p>`` to its terminal; the geofences come from bigdata's API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from services.warning.api.public import SERVICE
from services.warning.app import create_app
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.events import (
    DRIVER_IDENTITY,
    MATCHED_POSITION,
    TERMINAL_ALARM,
    TERMINAL_COMMAND,
    WARNING,
    DriverIdentity,
    MatchedPosition,
    TerminalAlarm,
    TerminalCommand,
    Warning,
    WarningKind,
    WarningStatus,
)
from tests.publisher import wait_for
from tests.warning.support import bigdata_standin, build_network

NETWORK = build_network()
TUNNEL = "1:6:7"
FENCES = {"type": "FeatureCollection", "features": [{
    "type": "Feature", "geometry": None,
    "properties": {"geofence_id": "tunnel-1", "name": "长江隧道", "kind": "restricted_road",
                   "vehicle_classes": ["dangerous_goods"], "segment_ids": [TUNNEL]}}]}


DAY = datetime(2026, 3, 3, 6, 0, tzinfo=UTC)
"""The stack's clock starts at 14:00 Beijing time: a drive of the last 6 hours is all by day
(a night drive has a 2 h fatigue limit), whatever the hour the tests run at."""


@dataclass
class Stack:
    bus: MemoryBus
    apps: list[web.Application]
    clock: Clock
    warnings: list[Warning] = field(default_factory=list)
    commands: list[TerminalCommand] = field(default_factory=list)

    def alarms(self, vehicle_id: str) -> list[Warning]:
        return [w for w in self.warnings if w.details.get("vehicle_id") == vehicle_id]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    bigdata_app = bigdata_standin(NETWORK)

    async def geofences(request: web.Request) -> web.Response:
        return web.json_response(FENCES)

    bigdata_app.router.add_get("/v1/geofences", geofences)
    bigdata = TestServer(bigdata_app)
    await bigdata.start_server()
    bus = MemoryBus(partitions=4)
    await bus.start()
    s = Stack(bus, [], Clock(start=DAY))

    async def on_warning(env: Envelope[Warning]) -> None:
        s.warnings.append(env.payload)

    async def on_command(env: Envelope[TerminalCommand]) -> None:
        s.commands.append(env.payload)

    await bus.subscribe(WARNING, on_warning, durable="test")
    await bus.subscribe(TERMINAL_COMMAND, on_command, durable="test")
    runners = []
    for i in range(2):
        app = create_app(Config(bigdata_url=str(bigdata.make_url("/")), speed_window_s=60.0,
                                db_url=f"sqlite:///{tmp_path}/tti-{i}.db", replica_index=i,
                                replica_count=2, partitions=4), bus=bus, clock=s.clock)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        s.apps.append(app)
    try:
        await wait_for(lambda: all(app[SERVICE].ready.is_set() for app in s.apps),
                       within_s=20)
        yield s
    finally:
        for runner in runners:
            await runner.cleanup()
        await bus.close()
        await bigdata.close()


def fix(vid: str, at: datetime, kmh: float, *, cls: str = "dangerous_goods",
        segment: str = "1:3:4", confidence: float = 0.98) -> MatchedPosition:
    seg = NETWORK.get_segment(segment)
    lon, lat = seg.coords[0]
    return MatchedPosition(vehicle_id=vid, vehicle_class=cls, observed_at=at, lon=lon, lat=lat,
                           segment_id=segment, offset_m=5.0, road_class=seg.road_class,
                           speed_limit_kmh=seg.speed_limit_kmh, speed_limit_source="osm",
                           confidence=confidence, speed_kmh=kmh, status=0b11,
                           road_name=seg.name, tunnel=segment == TUNNEL)


async def publish(bus: MemoryBus, p: MatchedPosition) -> None:
    await bus.publish(MATCHED_POSITION, p, key=p.vehicle_id)


async def test_a_speeding_truck_is_one_alarm_and_one_text_from_the_active_replica(
        stack: Stack) -> None:
    t0 = stack.clock.now() - timedelta(minutes=30)
    for i in range(40):  # 75 km/h on 解放大道 (limit 60) for 200 s, then back to 50
        await publish(stack.bus, fix("1391", t0 + timedelta(seconds=5 * i), 75.0))
    for i in range(40, 60):
        await publish(stack.bus, fix("1391", t0 + timedelta(seconds=5 * i), 50.0))
    await wait_for(lambda: any(w.status is WarningStatus.RESOLVED
                               for w in stack.alarms("1391")), within_s=10)
    alarms = stack.alarms("1391")
    assert len({w.warning_id for w in alarms}) == 1
    assert [w.version for w in alarms] == list(range(1, len(alarms) + 1)), \
        "one replica published, each version once"
    first = alarms[0]
    assert first.kind is WarningKind.VEHICLE_ALARM and first.cause == "speeding"
    assert first.details["limit_kmh"] == 60.0
    await wait_for(lambda: len(stack.commands) >= 1, within_s=5)
    [cmd] = [c for c in stack.commands if c.vehicle_id == "1391"]
    assert cmd.kind == "text" and cmd.correlation == first.warning_id
    assert set(cmd.flags) == {"display", "tts"} and "超速" in cmd.text
    assert cmd.expires_at > cmd.requested_at == first.updated_at
    # Both replicas hold the same state; the standby published nothing.
    engines = [app[SERVICE].engine for app in stack.apps]
    assert engines[0].find_warning(first.warning_id) == engines[1].find_warning(first.warning_id)


async def test_a_truck_in_the_tunnel_closed_to_it_and_a_tired_driver(stack: Stack) -> None:
    t0 = stack.clock.now() - timedelta(hours=6)
    await stack.bus.publish(DRIVER_IDENTITY, DriverIdentity(
        vehicle_id="1392", observed_at=t0, state="card_in", driver_id="420100199001011234"),
        key="1392")
    for i in range(1, 275):  # 4 h 34 min at 50 km/h, a fix a minute, never resting
        await publish(stack.bus, fix("1392", t0 + timedelta(minutes=i), 50.0))
    for i in range(6):  # a minute in the tunnel dangerous goods may not use
        await publish(stack.bus, fix("1393", t0 + timedelta(seconds=10 * i), 40.0,
                                     segment=TUNNEL))
    await wait_for(lambda: stack.alarms("1393") and len(stack.alarms("1392")) >= 2,
                   within_s=10)
    fatigue = [w for w in stack.alarms("1392") if w.cause == "fatigue_continuous"]
    assert len({w.warning_id for w in fatigue}) == 1
    assert fatigue[0].details["driver_id"] == "420100199001011234"
    assert fatigue[0].details["subject"] == "driver:420100199001011234"
    fence = stack.alarms("1393")
    assert {w.cause for w in fence} == {"geofence_entry"}
    assert fence[0].details["geofence_id"] == "tunnel-1"
    await wait_for(lambda: {c.vehicle_id for c in stack.commands} >= {"1392", "1393"},
                   within_s=5)
    texts = {c.vehicle_id: c.text for c in stack.commands}
    assert texts["1392"] == "您已连续驾驶4小时，请立即休息"
    assert "长江隧道" in texts["1393"] and "驶离" in texts["1393"]
    assert len(stack.commands) == 2, "one text per alarm, from the active replica only"


async def test_bad_positions_are_counted_and_lose_nothing_else(stack: Stack) -> None:
    def rejected() -> float:
        return REGISTRY.get_sample_value("tti_warning_rule_inputs_rejected_total",
                                         {"input": "matched_position",
                                          "reason": "bad_confidence"}) or 0.0

    before = rejected()
    t0 = stack.clock.now() - timedelta(minutes=10)
    await publish(stack.bus, fix("1394", t0, 90.0, confidence=7.0))
    for i in range(1, 12):
        await publish(stack.bus, fix("1394", t0 + timedelta(seconds=5 * i), 90.0))
    await wait_for(lambda: bool(stack.alarms("1394")), within_s=10)
    assert rejected() - before == 2  # once per replica
    assert stack.alarms("1394")[0].started_at == t0 + timedelta(seconds=5)
    # A taxi's positions and alarm bits are no business of these rules.
    await publish(stack.bus, fix("1395", t0, 120.0, cls="taxi"))
    await stack.bus.publish(TERMINAL_ALARM, TerminalAlarm(
        vehicle_id="1395", lon=114.3, lat=30.5, observed_at=t0, alarms=("overspeed",),
        alarm_bits=2, vehicle_class="taxi"), key="1395")
    await publish(stack.bus, fix("1394", t0 + timedelta(seconds=200), 90.0))
    await wait_for(lambda: len(stack.alarms("1394")) >= 2, within_s=10)
    assert stack.alarms("1395") == []
