"""Simulated terminals answer platform commands as real ones do, over a real gateway and the
collector's command router: 0x8300 text → 0x0001 result 0 (the text kept, counted and shown by
the status route), 0x8201 → 0x0201 with the current fix, 0x8203 → 0x0001 result 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.simulator.fleet import SimConfig, Simulator, add_incident_routes
from shared.demo import generate_demo_region
from shared.events import TerminalCommand
from shared.roadnet import RoadNetwork
from tests.collector.jt808_support import Cluster, command_cluster, text_command


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> RoadNetwork:
    region = generate_demo_region(tmp_path_factory.mktemp("demo"))
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture
async def fleet(tmp_path: Path, network: RoadNetwork
                ) -> AsyncIterator[tuple[Cluster, Simulator]]:
    async with command_cluster(tmp_path) as cluster:
        port = cluster.replicas[0].port
        sim = Simulator(SimConfig(port=port, vehicles=2, interval_s=0.5, heartbeat_s=5.0,
                                  truth_path=str(tmp_path / "truth.jsonl"),
                                  registry_path=str(tmp_path / "vehicles.csv")),
                        network=network)
        await sim.start()
        try:
            await cluster.replicas[0].wait_for(lambda: sim.stats.authenticated == 2, 10.0)
            yield cluster, sim
        finally:
            await sim.stop()


def command(vehicle_id: str, command_id: str, kind: str) -> TerminalCommand:
    now = datetime.now(UTC)
    return TerminalCommand(command_id=command_id, vehicle_id=vehicle_id, kind=kind,
                           requested_at=now, expires_at=now + timedelta(minutes=1),
                           requested_by="test", alarm_type=1 << 1, correlation="w-sim")


async def test_text_is_answered_kept_and_shown(fleet: tuple[Cluster, Simulator]) -> None:
    cluster, sim = fleet
    vid = sim.fleet[0].vehicle_id
    await cluster.publish(text_command(vid, "sim-text-1"))
    outcome = await cluster.outcome("sim-text-1", "acknowledged", 10.0)
    assert (outcome.result, outcome.result_text, outcome.correlation) == (0, "success", "w-1")
    assert sim.stats.texts_received == 1
    [got] = sim.texts
    assert (got.vehicle_id, got.text) == (vid, "您已连续驾驶4小时，请立即休息")
    assert set(got.flags) == {"tts", "display"}
    app = web.Application()
    add_incident_routes(app, sim)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/sim")
        body = await resp.json()
    assert body["texts_received"] == 1
    assert [(t["vehicle_id"], t["text"]) for t in body["texts"]] == [(vid, got.text)]
    # The other terminal got nothing.
    assert all(t.vehicle_id == vid for t in sim.texts)


async def test_position_query_and_alarm_confirmation(fleet: tuple[Cluster, Simulator]) -> None:
    cluster, sim = fleet
    vid = sim.fleet[1].vehicle_id
    await cluster.publish(command(vid, "sim-query-1", "position_query"))
    answer = await cluster.outcome("sim-query-1", "acknowledged", 10.0)
    assert answer.position is not None and answer.position.vehicle_id == vid
    assert answer.position.source == "jt808"
    assert sim.stats.position_queries == 1
    await cluster.publish(command(vid, "sim-confirm-1", "alarm_confirm"))
    confirmed = await cluster.outcome("sim-confirm-1", "acknowledged", 10.0)
    assert confirmed.result == 0
    assert sim.stats.alarm_confirmations == 1
    assert sim.stats.texts_received == 0
    # Reports keep flowing and being acknowledged around the commands.
    acked = sim.stats.reports_acked
    await cluster.replicas[0].wait_for(lambda: sim.stats.reports_acked > acked + 2, 10.0)
    await asyncio.sleep(0)
    assert sim.stats.reports_nacked == 0
