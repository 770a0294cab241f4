"""The warning service over HTTP on the real memory bus: routes, warnings, incidents, index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from services.warning.api.public import SERVICE
from services.warning.app import create_app
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.events import SEGMENT_SPEED, WARNING, Warning
from tests.publisher import wait_for
from tests.warning.support import LON0, bigdata_standin, build_network, main_road, window

NETWORK = build_network()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], MemoryBus,
                                                      list[Warning]]]:
    bigdata = TestServer(bigdata_standin(NETWORK, bus_routes={
        "R7": main_road(NETWORK, 0, 11), "R9": [f"2:{100 + k}:{101 + k}" for k in range(12)]}))
    await bigdata.start_server()
    bus = MemoryBus(partitions=2)
    await bus.start()
    seen: list[Warning] = []

    async def on_warning(env: Envelope[Warning]) -> None:
        seen.append(env.payload)

    await bus.subscribe(WARNING, on_warning, durable="test")
    app = create_app(Config(bigdata_url=str(bigdata.make_url("/")), speed_window_s=60.0,
                            db_url=f"sqlite:///{tmp_path}/tti.db"), bus=bus)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        await wait_for(lambda: app[SERVICE].ready.is_set(), within_s=20)
        yield client, bus, seen
    finally:
        await client.close()
        await bus.close()
        await bigdata.close()


async def test_route_between_two_points_with_alternatives(env: Any) -> None:
    client, _, _ = env
    resp = await client.get("/v1/route", params={
        "from": f"{LON0 + 0.0005},30.50002", "to": f"{LON0 + 0.028},30.50002",
        "alternatives": "2"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    routes = body["routes"]
    assert routes and body["time_zone"] == "UTC"
    fastest = routes[0]
    assert fastest["segment_ids"][0].startswith("1:") and fastest["length_m"] > 2500
    assert fastest["geometry"]["type"] == "LineString"
    assert all(r["travel_time_s"] >= fastest["travel_time_s"] for r in routes)


@pytest.mark.parametrize("query, code", [
    ({"from": "114.3,30.5"}, "bad_request"),
    ({"from": "x,y", "to": "114.3,30.5"}, "bad_request"),
    ({"from": "114.3,30.5", "to": "114.31,30.5", "alternatives": "9"}, "bad_request"),
    ({"from": "100.0,20.0", "to": "114.31,30.5"}, None),
])
async def test_bad_route_queries_get_a_json_400(env: Any, query: dict[str, str],
                                                code: str | None) -> None:
    client, _, _ = env
    resp = await client.get("/v1/route", params=query)
    assert resp.status == 400
    body = await resp.json()
    assert "message" in body["error"] and (code is None or body["error"]["code"] == code)


async def test_a_queue_is_one_warning_with_its_detour_and_impact(env: Any) -> None:
    client, bus, seen = env
    queue = main_road(NETWORK, 2, 7)
    for m, kmh in ((0, 5.0), (1, 4.0)):
        for sid in queue:
            await bus.publish(SEGMENT_SPEED, window(sid, m, kmh))
    await wait_for(lambda: any(w.detour is not None for w in seen), within_s=20)
    resp = await client.get("/v1/warnings")
    body = await resp.json()
    assert body["count"] == 1
    w = body["warnings"][0]
    assert w["segment_ids"] == queue and w["kind"] == "congestion" and w["active"]
    assert w["severity"] == "Severe" and w["status"] in ("raised", "updated")
    detour = w["detour"]
    assert detour is not None and not set(detour["segment_ids"]) & set(queue)
    assert any(s.startswith("2:") for s in detour["segment_ids"]), "over 和平大道"
    assert detour["travel_time_s"] > detour["usual_travel_time_s"]
    assert w["impact"]["trips_sampled"] > 0
    assert w["impact"]["bus_routes"] == ["R7"], "R7 runs 解放大道, R9 the parallel road"
    one = await client.get(f"/v1/warnings/{w['warning_id']}")
    assert (await one.json())["warning_id"] == w["warning_id"]
    assert (await client.get("/v1/warnings/nope")).status == 404
    assert (await client.get("/v1/warnings?status=bogus")).status == 400
    index = await (await client.get("/v1/index")).json()
    assert index["network"]["measured_count"] == len(queue)
    assert (await (await client.get("/v1/incidents")).json())["count"] == 0


async def test_the_openapi_document_is_valid_and_lists_every_route(env: Any) -> None:
    client, _, _ = env
    doc = await (await client.get("/openapi.json")).json()
    validate(doc)
    assert {"/v1/route", "/v1/warnings", "/v1/warnings/{warning_id}", "/v1/incidents",
            "/v1/index"} <= set(doc["paths"])
