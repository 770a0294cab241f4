"""Geofences over bigdata's API: credentials, PUT/GET/DELETE, bad GeoJSON, and the demo tunnel
closed to dangerous goods, imported, served and applied by the warning rule."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import shapely
from aiohttp.test_utils import TestClient, TestServer
from shapely.geometry import mapping
from shapely.ops import unary_union

from services.bigdata.app import create_app
from services.bigdata.geofences import import_geofences_file, parse_geofence
from services.bigdata.osm_features import import_osm_file
from services.bigdata.store import store_from_url
from services.warning.rules.geofences import GeofenceRule
from shared.bus.memory import MemoryBus
from shared.clients.bigdata import parse_geofences
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import CapSeverity, MatchedPosition, WarningKind, WarningStatus
from shared.roadnet import RoadNetwork

TOKEN = "s3cret-geofence-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def net(demo: DemoRegion) -> RoadNetwork:
    return RoadNetwork.from_osm(demo.osm_path)


@pytest.fixture(scope="module")
def imported_db(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo region's roads in SQLite, imported once; each test starts from a copy."""
    path = tmp_path_factory.mktemp("db") / "geo.db"

    async def load() -> None:
        store = store_from_url(f"sqlite:///{path}")
        await store.open()
        try:
            await import_osm_file(store, demo.osm_path)
        finally:
            await store.close()

    asyncio.run(load())
    return path


@asynccontextmanager
async def _client(demo: DemoRegion, db: Path, tmp_path: Path, tokens: tuple[str, ...]
                  ) -> AsyncIterator[TestClient[Any, Any]]:
    """The real bigdata app on ``db`` with these geofence tokens."""
    config = Config(db_url=f"sqlite:///{db}", osm=str(demo.osm_path), var_dir=str(tmp_path),
                    speed_window_s=1.0, partitions=4, geofence_tokens=tokens)
    bus = MemoryBus(partitions=4)
    await bus.start()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, bus=bus)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await bus.close()


@pytest.fixture
async def db(imported_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "geo.db"
    shutil.copy(imported_db, path)
    return path


@pytest.fixture
async def client(demo: DemoRegion, db: Path, tmp_path: Path
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    async with _client(demo, db, tmp_path, (TOKEN, "another")) as c:
        yield c


def tunnel_polygon(demo: DemoRegion, net: RoadNetwork) -> Any:
    """A polygon drawn 10 m around the demo tunnel's bores (what an officer would draw)."""
    lines = [shapely.LineString(net.segments[s].coords) for s in demo.tunnels[0].segment_ids]
    return unary_union(lines).buffer(0.0001)  # ≈ 10 m


def tunnel_fence(demo: DemoRegion, net: RoadNetwork) -> dict[str, Any]:
    t = demo.tunnels[0]
    return {"type": "Feature", "id": "tunnel-dg",
            "geometry": mapping(tunnel_polygon(demo, net)),
            "properties": {"name": t.name, "name_en": t.name_en, "kind": "restricted_road",
                           "vehicle_classes": ["dangerous_goods"],
                           "description": "危险货物运输车辆禁止通行"}}


async def test_writes_need_a_geofence_token(client: TestClient[Any, Any], demo: DemoRegion,
                                            net: RoadNetwork) -> None:
    body = tunnel_fence(demo, net)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        resp = await client.put("/v1/geofences/tunnel-dg", json=body, headers=headers)
        assert resp.status == 401, await resp.text()
        assert (await resp.json())["error"]["code"] == "unauthorized"
        resp = await client.delete("/v1/geofences/tunnel-dg", headers=headers)
        assert resp.status == 401
    resp = await client.get("/v1/geofences")
    assert resp.status == 200 and (await resp.json())["count"] == 0  # nothing was written


async def test_with_no_token_configured_writes_are_refused_with_the_setting_named(
        demo: DemoRegion, db: Path, tmp_path: Path, net: RoadNetwork) -> None:
    async with _client(demo, db, tmp_path, ()) as c:
        resp = await c.put("/v1/geofences/tunnel-dg", json=tunnel_fence(demo, net),
                           headers=AUTH)
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "geofence_editing_off"
        assert "TTI_GEOFENCE_TOKENS" in error["message"]
        assert (await c.delete("/v1/geofences/x", headers=AUTH)).status == 403
        assert (await c.get("/v1/geofences")).status == 200  # reading stays open


async def test_put_get_list_delete_round_trip(client: TestClient[Any, Any], demo: DemoRegion,
                                              net: RoadNetwork) -> None:
    resp = await client.put("/v1/geofences/tunnel-dg", json=tunnel_fence(demo, net),
                            headers=AUTH)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    props = created["properties"]
    assert props["segments_from"] == "geometry"
    assert set(props["segment_ids"]) == set(demo.tunnels[0].segment_ids)
    assert props["source"] == "api" and props["updated_at"]
    got = await (await client.get("/v1/geofences/tunnel-dg")).json()
    assert got == created
    # PUT what GET returned, changed: replaced (200), the polygon resolved again.
    got["properties"]["time_windows"] = ["22:00-06:00"]
    resp = await client.put("/v1/geofences/tunnel-dg", json=got, headers=AUTH)
    assert resp.status == 200
    replaced = await resp.json()
    assert replaced["properties"]["time_windows"] == ["22:00-06:00"]
    assert set(replaced["properties"]["segment_ids"]) == set(props["segment_ids"])
    zone = {"type": "Feature", "geometry": mapping(shapely.Point(demo.center).buffer(0.005)),
            "properties": {"name": "市中心", "kind": "restricted_zone",
                           "vehicle_classes": ["dangerous_goods"]}}
    assert (await client.put("/v1/geofences/centre", json=zone, headers=AUTH)).status == 201
    listing = await (await client.get("/v1/geofences")).json()
    assert listing["type"] == "FeatureCollection"
    assert [f["id"] for f in listing["features"]] == ["centre", "tunnel-dg"]
    only = await (await client.get("/v1/geofences?kind=restricted_zone")).json()
    assert [f["id"] for f in only["features"]] == ["centre"]
    lon, lat = demo.center
    near = await (await client.get(
        f"/v1/geofences?bbox={lon - 0.001},{lat - 0.001},{lon + 0.001},{lat + 0.001}")).json()
    assert "centre" in [f["id"] for f in near["features"]]
    assert (await client.get("/v1/geofences?kind=parking")).status == 400
    assert (await client.delete("/v1/geofences/centre", headers=AUTH)).status == 204
    assert (await client.get("/v1/geofences/centre")).status == 404
    assert (await client.delete("/v1/geofences/centre", headers=AUTH)).status == 404
    # What the warning service reads.
    batch = parse_geofences(await (await client.get("/v1/geofences")).json())
    assert not batch.rejected
    (fence,) = batch.fences
    assert fence.segment_ids == frozenset(demo.tunnels[0].segment_ids)
    assert fence.time_windows == ((22 * 3600, 6 * 3600),)


@pytest.mark.parametrize(("body", "reason"), [
    ("not json", "GeoJSON Feature"),
    ({"type": "FeatureCollection", "features": []}, "GeoJSON Feature"),
    ({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]},
      "properties": {"name": "x", "kind": "restricted_zone", "vehicle_classes": ["taxi"]}},
     "geometry"),
    ({"type": "Feature", "geometry": None,
      "properties": {"name": "x", "kind": "restricted_zone", "vehicle_classes": ["taxi"]}},
     "Polygon"),
    ({"type": "Feature", "geometry": None,
      "properties": {"name": "x", "kind": "no_go", "vehicle_classes": ["taxi"]}}, "kind"),
    ({"type": "Feature", "geometry": None,
      "properties": {"name": "x", "kind": "restricted_road", "vehicle_classes": ["tank"],
                     "segment_ids": ["1:2:3"]}}, "vehicle class"),
    ({"type": "Feature", "geometry": None,
      "properties": {"name": "x", "kind": "restricted_road", "vehicle_classes": ["taxi"],
                     "segment_ids": ["no:such:segment"]}}, "unknown segment_ids"),
    ({"type": "Feature", "id": "other", "geometry": None,
      "properties": {"name": "x", "kind": "restricted_road", "vehicle_classes": ["taxi"],
                     "segment_ids": ["1:2:3"]}}, "conflicting ids"),
    ({"type": "Feature", "geometry": None,
      "properties": {"name": "x", "kind": "restricted_road", "vehicle_classes": ["taxi"],
                     "segment_ids": ["1:2:3"], "time_windows": ["25:00-06:00"]}},
     "time window"),
    ({"type": "Feature", "geometry": None,
      "properties": {"name": "x", "kind": "assigned_route", "segment_ids": ["1:2:3"]}},
     "vehicle_ids"),
])
async def test_bad_geojson_is_a_400_with_the_reason(client: TestClient[Any, Any], body: Any,
                                                    reason: str) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    resp = await client.put("/v1/geofences/g1", data=data, headers={
        **AUTH, "Content-Type": "application/json"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert reason in error["message"], error
    assert (await client.get("/v1/geofences/g1")).status == 404


def _drive(net: RoadNetwork, segment_ids: list[str], start: datetime, vid: str, cls: str
           ) -> list[MatchedPosition]:
    """One matched fix per segment point, 5 s apart (what bigdata's matcher would publish)."""
    out = []
    t = start
    for sid in segment_ids:
        seg = net.segments[sid]
        for lon, lat in seg.coords[:-1]:
            out.append(MatchedPosition(
                vehicle_id=vid, vehicle_class=cls, observed_at=t, lon=lon, lat=lat,
                segment_id=sid, offset_m=0.0, road_class=seg.road_class,
                speed_limit_kmh=seg.speed_limit_kmh, speed_limit_source="osm",
                confidence=0.9, speed_kmh=50.0, road_name=seg.name, bridge=seg.bridge,
                tunnel=seg.tunnel))
            t += timedelta(seconds=5)
    return out


def _through_tunnel(net: RoadNetwork, demo: DemoRegion) -> list[str]:
    """The segments before, along and after one bore of the demo tunnel, in driving order."""
    bore = list(demo.tunnels[0].segment_ids)
    chain = [bore[0]]
    while True:  # follow the bore forward
        nxt = [s for s in bore if net.segments[s].from_node == net.segments[chain[-1]].to_node
               and s not in chain and net.segments[s].to_node != net.segments[chain[-1]]
               .from_node]
        if not nxt:
            break
        chain.append(nxt[0])
    while True:  # and back to where it begins
        prv = [s for s in bore if net.segments[s].to_node == net.segments[chain[0]].from_node
               and s not in chain and net.segments[s].from_node != net.segments[chain[0]]
               .to_node]
        if not prv:
            break
        chain.insert(0, prv[0])
    first, last = net.segments[chain[0]], net.segments[chain[-1]]
    before = next(s.segment_id for s in net.segments.values()
                  if s.to_node == first.from_node and s.segment_id not in bore
                  and s.from_node != first.to_node)
    after = next(s.segment_id for s in net.segments.values()
                 if s.from_node == last.to_node and s.segment_id not in bore
                 and s.to_node != last.from_node)
    return [before, *chain, after]


async def test_demo_tunnel_closed_to_dangerous_goods_imports_and_applies(
        demo: DemoRegion, net: RoadNetwork, db: Path, tmp_path: Path) -> None:
    assert demo.tunnels, "the demo city has a tunnel"
    path = tmp_path / "tunnels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [tunnel_fence(demo, net)]}), encoding="utf-8")
    store = store_from_url(f"sqlite:///{db}")
    await store.open()
    try:
        result = await import_geofences_file(store, path)
        assert (result.applied, result.features, result.errors) == (1, 1, [])
    finally:
        await store.close()
    async with _client(demo, db, tmp_path, ()) as c:
        batch = parse_geofences(await (await c.get("/v1/geofences")).json())
    assert [f.geofence_id for f in batch.fences] == ["tunnel-dg"]
    rule = GeofenceRule()
    rule.set_fences(batch.fences)
    route = _through_tunnel(net, demo)
    start = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    out = [w for p in _drive(net, route, start, "13800001111", "dangerous_goods")
           for w in rule.on_matched(p)]
    assert len({w.warning_id for w in out}) == 1, "exactly one alarm"
    assert out[0].kind is WarningKind.VEHICLE_ALARM
    assert out[0].severity is CapSeverity.SEVERE
    assert out[0].details["geofence_id"] == "tunnel-dg"
    assert demo.tunnels[0].name in out[0].headline
    assert out[-1].status is WarningStatus.RESOLVED
    taxi = [w for p in _drive(net, route, start, "T8", "taxi") for w in rule.on_matched(p)]
    assert taxi == []


def test_parse_keeps_given_segment_ids_and_resolves_a_round_tripped_geometry() -> None:
    poly = mapping(shapely.box(114.0, 30.0, 114.01, 30.01))
    given = parse_geofence({"type": "Feature", "id": "g", "geometry": poly, "properties": {
        "name": "桥", "kind": "restricted_road", "vehicle_classes": ["dangerous_goods"],
        "segment_ids": ["1:2:3"]}})
    assert given.segments_from == "given" and given.segment_ids == ("1:2:3",)
    again = parse_geofence({"type": "Feature", "id": "g", "geometry": poly, "properties": {
        "name": "桥", "kind": "restricted_road", "vehicle_classes": ["dangerous_goods"],
        "segment_ids": ["1:2:3"], "segments_from": "geometry"}})
    assert again.segments_from == "geometry" and again.segment_ids == ()
