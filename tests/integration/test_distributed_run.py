"""``tti serve`` for each service on real NATS JetStream, driven by ``tti simulate``.

The production shape on one machine: four processes, the JetStream bus, one geodatabase file,
and the simulator as a separate process speaking JT/T 808 to the collector.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import SERVICES, ServiceProcesses, free_port, get_json

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _route_query(osm: Path, segment_id: str) -> str:
    """from/to a kilometre or so apart around the incident segment (points on the map)."""
    from shared.roadnet import RoadNetwork

    net = RoadNetwork.from_osm(osm)
    seg = net.get_segment(segment_id)
    (lon0, lat0), (lon1, lat1) = seg.coords[0], seg.coords[-1]
    return f"from={lon0 - 0.005},{lat0}&to={lon1 + 0.005},{lat1}"


@pytest.fixture
def cluster(tmp_path: Path, nats_url: str, unique_name: str) -> Iterator[dict[str, object]]:
    from shared.demo import generate_demo_region

    region = generate_demo_region(tmp_path / "demo")
    ports = {s: free_port() for s in SERVICES}
    jt808 = free_port()
    env = {**os.environ, "TTI_BUS_URL": nats_url, "TTI_BUS_STREAM": unique_name.upper(),
           "TTI_BUS_PREFIX": unique_name, "TTI_DB_URL": f"sqlite:///{tmp_path}/tti.db",
           "TTI_VAR_DIR": str(tmp_path / "var"), "TTI_SPEED_WINDOW_S": "4",
           "TTI_JT808_PORT": str(jt808), "TTI_OSM": str(region.osm_path),
           "TTI_GTFS": str(region.gtfs_path),
           "TTI_BIGDATA_URL": f"http://127.0.0.1:{ports['bigdata']}",
           "TTI_WARNING_URL": f"http://127.0.0.1:{ports['warning']}", "TTI_LOG_FORMAT": "text",
           "TTI_HTTP_HOST": "127.0.0.1",
           # `tti serve collector` refuses open inputs: sensors get a token, and the simulated
           # terminals register themselves, which this run allows on purpose.
           "TTI_SENSOR_TOKENS": "distributed-test-token", "TTI_ALLOW_OPEN_REGISTRATION": "true"}
    services = ServiceProcesses(env, ports, tmp_path)
    try:
        services.start()
        services.wait_ready(60)
        # Without TTI_OSM the simulator generates the same (deterministic) demo city itself,
        # and with it the bus routes and the demo incident segment.
        sim_env = {k: v for k, v in env.items() if k not in ("TTI_OSM", "TTI_GTFS")}
        services.spawn(["simulate", "--vehicles", "240", "--sim-interval-s", "1",
                        "--incident", "demo@2+300:4"], "sim", env=sim_env)
        seg = region.incident_segment_id
        yield {"ports": ports, "incident": seg, "services": services,
               "route_query": _route_query(region.osm_path, seg)}
    finally:
        services.stop()
        import asyncio

        import nats

        async def drop() -> None:
            nc = await nats.connect(nats_url)
            try:
                await nc.jetstream().delete_stream(unique_name.upper())
            finally:
                await nc.close()

        asyncio.run(drop())


def test_four_services_and_simulator_over_jetstream(cluster: dict[str, object]) -> None:
    ports: dict[str, int] = cluster["ports"]  # type: ignore[assignment]
    base = f"http://127.0.0.1:{ports['publisher']}"
    deadline = time.monotonic() + 150
    probe: list[object] = []
    warned: list[object] = []
    routed: list[object] = []
    while time.monotonic() < deadline and not (probe and warned and routed):
        _, roads = get_json(base + "/api/v1/roads")
        probe = [f for f in roads["features"]  # type: ignore[index]
                 if f["properties"]["source"] == "probe"]
        _, body = get_json(base + "/api/v1/warnings")
        warned = [w for w in body["warnings"]  # type: ignore[index]
                  if cluster["incident"] in w["segment_ids"]]
        # A route through the publisher, answered by the warning service on its own port.
        status, answer = get_json(base + "/api/v1/route?" + cluster["route_query"])  # type: ignore
        routed = answer["routes"] if status == 200 else []  # type: ignore[index]
        time.sleep(2)
    services: ServiceProcesses = cluster["services"]  # type: ignore[assignment]

    def logs() -> str:
        return services.logs("sim", "collector", "bigdata", "warning", tail=1500)

    assert probe, logs()
    assert warned, logs()
    assert routed and routed[0]["travel_time_s"] > 0, logs()  # type: ignore[index]
    # Every process drains and exits cleanly on SIGTERM.
    assert set(services.stop().values()) == {0}
