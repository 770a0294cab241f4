"""The bigdata HTTP API: the real app on SQLite over the demo region, with a MemoryBus."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import shapely
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from services.bigdata.app import BIGDATA, create_app
from services.bigdata.gtfs_import import import_gtfs_file
from services.bigdata.osm_features import import_osm_file
from services.bigdata.store import Feature, store_from_url
from shared.bus.memory import MemoryBus
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import FEATURE_STATE, FeatureState

SEGMENT_KEYS = {"segment_id", "name", "name_en", "ref", "road_class", "lanes",
                "speed_limit_kmh", "free_flow_kmh", "oneway", "bridge", "tunnel", "length_m",
                "coords"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def imported_db(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database with the demo region imported once; each test starts from a copy."""
    path = tmp_path_factory.mktemp("db") / "geo.db"

    async def load() -> None:
        store = store_from_url(f"sqlite:///{path}")
        await store.open()
        try:
            await import_osm_file(store, demo.osm_path)
            await import_gtfs_file(store, demo.gtfs_path)
        finally:
            await store.close()

    asyncio.run(load())
    return path


@pytest.fixture
async def client(demo: DemoRegion, imported_db: Path, tmp_path: Path
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    db = tmp_path / "geo.db"
    shutil.copy(imported_db, db)
    config = Config(db_url=f"sqlite:///{db}", osm=str(demo.osm_path), gtfs=str(demo.gtfs_path),
                    var_dir=str(tmp_path), speed_window_s=1.0, partitions=4)
    bus = MemoryBus(partitions=4)
    await bus.start()
    app = create_app(config, bus=bus)
    c: TestClient[Any, Any] = TestClient(TestServer(app))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()
        await bus.close()


async def get(client: TestClient[Any, Any], url: str, status: int = 200) -> Any:
    resp = await client.get(url)
    body = await resp.json()
    assert resp.status == status, body
    if status >= 400:
        assert set(body["error"]) >= {"code", "message"}
    return body


async def test_region_and_segments_keep_their_contract(client: TestClient[Any, Any],
                                                      demo: DemoRegion) -> None:
    region = await get(client, "/v1/region")
    # The region's proper name: its city's place label in the OSM file.
    assert region["name"] == demo.name and region["segment_count"] == demo.segment_count
    assert region["name_en"] == demo.name_en, "its name:en, for the page's English switch"
    assert len(region["bbox"]) == 4
    body = await get(client, "/v1/segments")
    assert body["count"] == demo.segment_count
    assert set(body["segments"][0]) == SEGMENT_KEYS
    lon, lat = demo.center
    box = await get(client, f"/v1/segments?bbox={lon - 0.002},{lat - 0.002},{lon + 0.002},"
                            f"{lat + 0.002}")
    assert 0 < box["count"] < demo.segment_count
    await get(client, "/v1/segments?bbox=1,2,3", 400)
    await get(client, "/v1/segments?bbox=10,10,5,5", 400)
    sid = demo.bridges[0].segment_ids[0]
    one = await get(client, f"/v1/segments/{sid}")
    assert one["bridge"] is True and one["live"] is None and one["name"] == "江城一桥"
    await get(client, "/v1/segments/1:2:3", 404)
    speeds = await get(client, f"/v1/segments/{sid}/speeds")
    assert speeds == {"segment_id": sid, "speeds": []}
    await get(client, f"/v1/segments/{sid}/speeds?since=yesterday", 400)


async def test_search(client: TestClient[Any, Any], demo: DemoRegion) -> None:
    body = await get(client, "/v1/search?q=江城一桥")
    top = body["results"][0]
    assert (top["kind"], top["name"], top["match"]) == ("bridge", "江城一桥", "exact")
    assert "segment_ids" not in top and len(top["center"]) == 2
    road = next(r for r in body["results"] if r["kind"] == "road")
    assert set(road["segment_ids"]) == set(demo.bridges[0].segment_ids)
    tunnel = await get(client, "/v1/search?q=jiangcheng%20tunnel&kinds=tunnel")
    assert [r["name"] for r in tunnel["results"]] == ["江城隧道"]
    roads = await get(client, "/v1/search?q=江城&kinds=road&limit=2")
    assert len(roads["results"]) == 2 and {r["kind"] for r in roads["results"]} == {"road"}
    await get(client, "/v1/search", 400)
    await get(client, "/v1/search?q=%20", 400)
    await get(client, "/v1/search?q=x&kinds=castle", 400)
    await get(client, "/v1/search?q=x&limit=0", 400)
    await get(client, "/v1/search?q=" + "长" * 101, 400)


async def test_features_bbox_nearest_and_one(client: TestClient[Any, Any],
                                             demo: DemoRegion) -> None:
    bbox = ",".join(str(v) for v in demo.bbox)
    bridges = await get(client, f"/v1/features?bbox={bbox}&kinds=bridge")
    names = {f["name"] for f in bridges["features"]}
    assert {"江城一桥", "江城二桥"} <= names
    first = next(f for f in bridges["features"] if f["name"] == "江城一桥")
    assert first["geometry"]["type"] == "LineString" and first["live"] is None
    assert set(first["attrs"]["segment_ids"]) == set(demo.bridges[0].segment_ids)
    lean = await get(client, f"/v1/features?bbox={bbox}&kinds=bridge&geometry=false&limit=1")
    assert lean["count"] == 1 and "geometry" not in lean["features"][0]
    await get(client, "/v1/features?kinds=bridge,castle", 400)
    await get(client, "/v1/features?limit=100000", 400)
    stop = demo.bus_routes[0].stops[0]
    near = await get(client, f"/v1/features/nearest?lon={stop.lon}&lat={stop.lat}"
                             "&kinds=bus_stop&k=3")
    dists = [f["distance_m"] for f in near["features"]]
    assert len(dists) == 3 and dists == sorted(dists) and dists[0] == 0.0
    assert near["features"][0]["name"] == stop.name
    await get(client, "/v1/features/nearest?lat=30.5", 400)
    await get(client, "/v1/features/nearest?lon=114.3&lat=200", 400)
    await get(client, "/v1/features/nearest?lon=114.3&lat=30.5&k=abc", 400)
    await get(client, "/v1/features/nearest?lon=114.3&lat=30.5&max_distance_m=-1", 400)
    one = await get(client, f"/v1/features/bridge/{first['id']}")
    assert one["name"] == "江城一桥" and one["name_en"] == "First Bridge"
    await get(client, "/v1/features/bridge/w999999", 404)
    await get(client, "/v1/features/castle/w1", 400)


async def test_feature_live_state_is_served(client: TestClient[Any, Any],
                                            demo: DemoRegion) -> None:
    store = client.app[BIGDATA].store
    lon, lat = demo.center
    await store.import_features("parking-registry", "p1", ["parking"], [
        Feature(kind="parking", feature_id="P-001", geometry=shapely.Point(lon, lat),
                name="江城广场停车场", attrs={"capacity": 300})])
    await store.update_live("parking", "P-001", {"free_spaces": 42})
    body = await get(client, "/v1/features/parking/P-001")
    assert body["live"] == {"free_spaces": 42} and body["attrs"] == {"capacity": 300}
    assert body["live_updated_at"].endswith("+00:00")
    near = await get(client, f"/v1/features/nearest?lon={lon}&lat={lat}&kinds=parking")
    assert near["features"][0]["live"] == {"free_spaces": 42}


async def test_feature_states_from_the_bus_update_live_state(client: TestClient[Any, Any],
                                                            demo: DemoRegion) -> None:
    # What the collector publishes for POST /api/v1/features/parking/P-002/state.
    bus = client.app[BIGDATA].bus
    store = client.app[BIGDATA].store
    lon, lat = demo.center
    await store.import_features("parking-registry", "p2", ["parking"], [
        Feature(kind="parking", feature_id="P-002", geometry=shapely.Point(lon, lat),
                name="汉江路停车场", attrs={"capacity": 120})])
    t0 = datetime.now(UTC) - timedelta(minutes=5)

    def outcome(result: str) -> float:
        return REGISTRY.get_sample_value("tti_bigdata_feature_states_total",
                                         {"result": result}) or 0.0

    before = {r: outcome(r) for r in ("applied", "stale", "unknown_feature", "rejected")}

    async def publish(feature_id: str, at: datetime, **values: Any) -> None:
        await bus.publish(FEATURE_STATE, FeatureState(
            kind="parking", feature_id=feature_id, observed_at=at, values=values))

    await publish("P-002", t0 + timedelta(minutes=2), free_spaces=40, status="open")
    await publish("P-002", t0, free_spaces=99)  # older: ignored
    await publish("P-404", t0, free_spaces=1)  # no such lot
    await publish("P-002", t0 + timedelta(minutes=3), free_spaces=500)  # > capacity
    for _ in range(100):
        if sum(outcome(r) - before[r] for r in before) >= 4:
            break
        await asyncio.sleep(0.02)
    body = await get(client, "/v1/features/parking/P-002")
    assert body["live"] == {"free_spaces": 40, "status": "open"}
    assert datetime.fromisoformat(body["live_updated_at"]) == t0 + timedelta(minutes=2)
    assert {r: outcome(r) - before[r] for r in before} == {
        "applied": 1, "stale": 1, "unknown_feature": 1, "rejected": 1}


async def test_gtfs_endpoints(client: TestClient[Any, Any], demo: DemoRegion) -> None:
    feeds = await get(client, "/v1/gtfs/feeds")
    assert [f["feed_id"] for f in feeds["feeds"]] == ["demo_gtfs"]
    assert feeds["feeds"][0]["agency_timezone"] == "Asia/Shanghai"
    routes = await get(client, "/v1/gtfs/routes")
    assert [r["route_id"] for r in routes["routes"]] == [r.route_id for r in demo.bus_routes]
    trips = await get(client, "/v1/gtfs/routes/demo_gtfs/R1/trips")
    assert trips["trips"] and trips["trips"][0]["route_id"] == "R1"
    await get(client, "/v1/gtfs/routes/demo_gtfs/R404/trips", 404)
    trip_id = trips["trips"][0]["trip_id"]
    trip = await get(client, f"/v1/gtfs/trips/demo_gtfs/{trip_id}")
    first = trip["stop_times"][0]
    assert first["arrival_time"] == "06:00:00" and first["arrival_s"] == 21600
    assert [s["stop_id"] for s in trip["stop_times"]] == [
        s.stop_id for s in demo.bus_routes[0].patterns[0].stops]
    await get(client, "/v1/gtfs/trips/demo_gtfs/nope", 404)
    stop = demo.bus_routes[0].stops[0]
    found = await get(client, f"/v1/gtfs/stops?q={stop.name}")
    assert stop.stop_id in [s["stop_id"] for s in found["stops"]]
    assert found["stops"][0]["name_en"] is not None
    in_box = await get(client, f"/v1/gtfs/stops?bbox={stop.lon - 0.0005},{stop.lat - 0.0005},"
                               f"{stop.lon + 0.0005},{stop.lat + 0.0005}")
    assert stop.stop_id in [s["stop_id"] for s in in_box["stops"]]
    await get(client, "/v1/gtfs/stops", 400)
    one = await get(client, f"/v1/gtfs/stops/demo_gtfs/{stop.stop_id}")
    assert one["name"] == stop.name
    await get(client, "/v1/gtfs/stops/demo_gtfs/nope", 404)
    shape = await get(client, "/v1/gtfs/shapes/demo_gtfs/R1_0")
    assert len(shape["coords"]) > 2
    await get(client, "/v1/gtfs/shapes/demo_gtfs/nope", 404)


async def test_readiness_reports_network_and_gtfs(client: TestClient[Any, Any]) -> None:
    # The transit timetable loads in the background: ready once it has.
    async with asyncio.timeout(30):
        while (resp := await client.get("/readyz")).status != 200:  # noqa: ASYNC110 - polling HTTP
            await asyncio.sleep(0.1)
    body = await resp.json()
    assert body["checks"]["road_network"]["ready"] is True
    assert body["checks"]["transit_schedule"]["ready"] is True
    assert body["checks"]["gtfs"] == {"ready": True, "detail": "ready"}
