"""The area index: bridges and tunnels as structures, configured corridors and districts, and the
districts of an OSM file's administrative boundaries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.warning.api.public import SERVICE
from services.warning.app import create_app
from services.warning.area_index import (
    AreaGrid,
    compute_index,
    districts_from_osm,
    load_area_file,
    load_areas,
)
from services.warning.levels import level_for_speed, tpi_for_speed
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.errors import ConfigError
from shared.events import AREA_INDEX, SEGMENT_SPEED, AreaIndex, SegmentSpeed
from shared.roadnet import OsmWay, RoadNetwork
from tests.conftest import reference_file
from tests.publisher import wait_for
from tests.warning.support import T0, bigdata_standin, build_network, window

LON0, LAT0 = 114.28, 30.55
STEP = 0.0026  # ≈ 250 m east-west
BRIDGE = ("武汉长江大桥", "Wuhan Yangtze River Bridge")


def _nodes(first_id: int, lat: float, lon0: float, pieces: int) -> list[tuple[int, float, float]]:
    return [(first_id + k, lon0 + k * STEP, lat) for k in range(pieces + 1)]


def build_city() -> RoadNetwork:
    """沿江大道 (way 1, two-way, 10 pieces); 长江大桥 as two one-way carriageways 30 m apart
    (ways 20 and 21) on 京广路 ramps; a second 武汉长江大桥-named bridge 5 km away (way 30);
    an unnamed bridge (way 40) and 长江隧道 (way 50) under 沿江大道's east end."""
    river = _nodes(100, LAT0, LON0, 10)
    ways = [OsmWay(1, river, {"highway": "primary", "name": "沿江大道",
                              "name:en": "Yanjiang Avenue"})]
    north = [(200, LON0, LAT0 + 0.004), (201, LON0 + STEP, LAT0 + 0.004)]
    south = [(210, LON0 + STEP, LAT0 + 0.0043), (211, LON0, LAT0 + 0.0043)]
    bridge_tags = {"highway": "trunk", "oneway": "yes", "bridge": "yes", "name": BRIDGE[0],
                   "name:en": BRIDGE[1]}
    ways += [
        OsmWay(20, north, bridge_tags), OsmWay(21, south, bridge_tags),
        OsmWay(22, [river[0], north[0]], {"highway": "trunk", "name": "京广路"}),
        OsmWay(23, [north[-1], south[0]], {"highway": "trunk", "name": "京广路"}),
        OsmWay(30, _nodes(300, LAT0 + 0.045, LON0, 2), {**bridge_tags, "oneway": "no"}),
        OsmWay(40, [river[8], (400, LON0 + 8 * STEP, LAT0 - 0.003)],
               {"highway": "residential", "bridge": "yes"}),
        OsmWay(50, [river[9], (500, LON0 + 9 * STEP, LAT0 - 0.006)],
               {"highway": "primary", "tunnel": "yes", "name": "长江隧道",
                "name:en": "Yangtze River Tunnel"}),
    ]
    return RoadNetwork.from_ways(ways)


@dataclass
class _Grade:
    level: int | None
    tpi: float | None


@dataclass
class _Held:
    last: SegmentSpeed
    grade: _Grade


def live(network: RoadNetwork, speeds: dict[str, float], *, vehicles: int = 3
         ) -> dict[str, _Held]:
    """Held windows of these segments at these speeds, graded as the engine grades them."""
    out = {}
    for sid, kmh in speeds.items():
        seg = network.get_segment(sid)
        last = SegmentSpeed(segment_id=sid, window_start=T0, observed_at=T0 + timedelta(minutes=1),
                            speed_kmh=kmh, sample_count=vehicles, free_flow_kmh=seg.free_flow_kmh,
                            road_class=seg.road_class, road_name=seg.name, lon=LON0, lat=LAT0)
        out[sid] = _Held(last, _Grade(level_for_speed(kmh, seg.road_class),
                                      tpi_for_speed(kmh, seg.road_class)))
    return out


def by_id(index: list[AreaIndex]) -> dict[str, AreaIndex]:
    return {a.area_id: a for a in index}


@pytest.fixture(scope="module")
def city() -> RoadNetwork:
    return build_city()


def test_a_congested_bridge_is_high_while_the_network_stays_low(city: RoadNetwork) -> None:
    grid = AreaGrid(city)
    on_bridge = [s.segment_id for s in city if s.way_id in (20, 21)]
    speeds = {s.segment_id: 55.0 for s in city if s.way_id == 1}
    speeds.update({sid: 6.0 for sid in on_bridge})
    index = by_id(compute_index(grid, live(city, speeds), T0))
    bridge = index["bridge:w20"]
    assert (bridge.name, bridge.name_en) == BRIDGE
    assert bridge.segment_count == 2 and bridge.measured_count == 2, "both carriageways, one area"
    assert bridge.tpi is not None and bridge.tpi >= 8 and bridge.level == 5
    assert bridge.congested_share == 1.0
    net = index["network"]
    assert net.tpi is not None and net.tpi < 4, net
    assert bridge.bbox is not None and bridge.bbox[1] < LAT0 + 0.0041 < bridge.bbox[3]


def test_each_bridge_and_tunnel_is_one_structure_with_its_name(city: RoadNetwork) -> None:
    grid = AreaGrid(city)
    structures = {a: (grid.names[a], grid.names_en[a], grid.sizes[a]) for a in grid.names
                  if a.startswith(("bridge:", "tunnel:"))}
    assert structures == {
        "bridge:w20": (*BRIDGE, 2),
        "bridge:w30": (*BRIDGE, 2),  # the same name 5 km away: another bridge (both ways)
        "bridge:w40": ("桥梁 w40", "Bridge w40", 2),
        "tunnel:w50": ("长江隧道", "Yangtze River Tunnel", 2),
    }
    index = by_id(compute_index(grid, {}, T0))
    assert index["tunnel:w50"].tpi is None and index["tunnel:w50"].measured_count == 0


def _write(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features},
                               ensure_ascii=False), encoding="utf-8")
    return path


def _box(lon0: float, lat0: float, lon1: float, lat1: float) -> dict[str, Any]:
    return {"type": "Polygon",
            "coordinates": [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]}


def test_a_configured_corridor_and_district_are_indexed_by_name(
        city: RoadNetwork, tmp_path: Path) -> None:
    path = _write(tmp_path / "areas.geojson", [
        {"type": "Feature", "geometry": None, "properties": {
            "kind": "corridor", "id": "jingguang", "name": "京广路走廊",
            "name_en": "Jingguang Road corridor", "road_names": ["京广路", BRIDGE[0]],
            "segment_ids": ["1:100:108"]}},
        {"type": "Feature", "id": "jiang-an", "geometry": _box(
            LON0 + 4.5 * STEP, LAT0 - 0.01, LON0 + 11 * STEP, LAT0 + 0.001),
         "properties": {"kind": "district", "name": "江岸区", "name_en": "Jiang'an District"}},
        {"type": "Feature", "geometry": None, "properties": {"kind": "county", "id": "x",
                                                             "name": "x", "road_names": ["a"]}},
        {"type": "Feature", "geometry": None, "properties": {"kind": "corridor", "id": "y",
                                                             "name": "no roads"}},
        {"type": "Feature", "geometry": None, "properties": {
            "kind": "corridor", "id": "nowhere", "name": "无此路", "road_names": ["无此路"]}},
    ])
    specs, problems = load_area_file(path)
    assert [s.area_id for s in specs] == ["corridor:jingguang", "district:jiang-an",
                                          "corridor:nowhere"]
    assert len(problems) == 2 and "kind" in problems[0] and "neither" in problems[1]
    grid = AreaGrid(city, areas=specs)
    assert grid.empty == ["corridor:nowhere"] and "corridor:nowhere" not in grid.names

    corridor_segments = [s.segment_id for s in city if s.way_id in (20, 21, 22, 23, 30)]
    speeds = {sid: 5.0 for sid in corridor_segments}
    speeds.update({s.segment_id: 55.0 for s in city if s.way_id == 1})
    index = by_id(compute_index(grid, live(city, speeds), T0))
    corridor = index["corridor:jingguang"]
    assert (corridor.name, corridor.name_en) == ("京广路走廊", "Jingguang Road corridor")
    # 京广路 both ways (2 pieces), the bridges (2 + 2) and the one listed 沿江大道 segment.
    assert corridor.segment_count == len(corridor_segments) + 1
    # Jammed on all but its listed 2 km of free-flowing 沿江大道, which weighs in by length.
    assert corridor.tpi is not None and corridor.tpi > 5 > (index["network"].tpi or 0)
    district = index["district:jiang-an"]
    assert district.name == "江岸区" and district.level == 1 and district.measured_count == 4
    # 沿江大道 is cut where the bridge and the tunnel join it (nodes 108, 109): its two short
    # pieces at the east end both ways, and the unnamed bridge and the tunnel below them.
    assert district.segment_count == 4 + 2 + 2
    assert district.bbox == pytest.approx((LON0 + 4.5 * STEP, LAT0 - 0.01, LON0 + 11 * STEP,
                                           LAT0 + 0.001))


def test_an_unreadable_area_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ConfigError, match="FeatureCollection"):
        load_area_file(tmp_path / "list.json")
    specs, problems = load_areas(str(tmp_path / "missing.geojson"), "")
    assert specs == [] and len(problems) == 1 and "missing.geojson" in problems[0]


def _osm(path: Path, *, lon0: float, lat0: float) -> Path:
    """珞喻路 across a closed 洪山区 boundary (a relation), 雄楚大道 outside it; a cut boundary
    (江夏区: one of its ways missing) and a street-level (admin_level 8) one, not indexed."""
    box = [(lon0, lat0), (lon0 + 0.01, lat0), (lon0 + 0.01, lat0 + 0.01), (lon0, lat0 + 0.01)]
    points = {i + 1: p for i, p in enumerate(box)}
    points |= {11: (lon0 - 0.005, lat0 + 0.005), 12: (lon0 + 0.015, lat0 + 0.005),
               21: (lon0 - 0.005, lat0 + 0.02), 22: (lon0 + 0.015, lat0 + 0.02)}
    nodes = "".join(f'<node id="{n}" lat="{lat}" lon="{lon}" version="1"/>'
                    for n, (lon, lat) in points.items())
    ring = "".join(f'<nd ref="{n}"/>' for n in (1, 2, 3, 4, 1))

    def road(way: int, a: int, b: int, name: str) -> str:
        return (f'<way id="{way}" version="1"><nd ref="{a}"/><nd ref="{b}"/>'
                f'<tag k="highway" v="primary"/><tag k="name" v="{name}"/></way>')

    def relation(rid: int, level: int, name: str, extra: str = "") -> str:
        return (f'<relation id="{rid}" version="1"><member type="way" ref="7" role="outer"/>'
                f'{extra}<tag k="type" v="boundary"/><tag k="boundary" v="administrative"/>'
                f'<tag k="admin_level" v="{level}"/><tag k="name" v="{name}"/>'
                + ('<tag k="name:en" v="Hongshan District"/>' if rid == 3080399 else "")
                + "</relation>")

    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><osm version="0.6">' + nodes
        + f'<way id="7" version="1">{ring}</way>'
        + road(8, 11, 12, "珞喻路") + road(10, 21, 22, "雄楚大道")
        + relation(3080399, 6, "洪山区")
        + relation(3080400, 6, "江夏区", '<member type="way" ref="9" role="outer"/>')
        + relation(3160551, 8, "九峰街道")
        + "</osm>", encoding="utf-8")
    return path


def test_the_districts_of_the_maps_administrative_boundaries(tmp_path: Path) -> None:
    path = _osm(tmp_path / "hongshan.osm", lon0=114.35, lat0=30.50)
    districts = districts_from_osm(path)
    assert [(d.area_id, d.name, d.name_en) for d in districts] == [
        ("district:r3080399", "洪山区", "Hongshan District")]
    network = RoadNetwork.from_osm(path)
    grid = AreaGrid(network, areas=districts)
    inside = {sid for sid, where in grid.where.items() if "district:r3080399" in where.areas}
    assert inside == {"8:11:12", "8:12:11"}, "珞喻路 both ways (its midpoint is inside)"
    speeds = {s.segment_id: 8.0 if s.way_id == 8 else 50.0 for s in network}
    index = by_id(compute_index(grid, live(network, speeds), T0))
    hongshan = index["district:r3080399"]
    assert hongshan.level == 5 and hongshan.measured_count == 2
    assert (index["network"].tpi or 0) < (hongshan.tpi or 0)
    assert hongshan.bbox == pytest.approx((114.35, 30.50, 114.36, 30.51))
    specs, problems = load_areas("", str(path))
    assert [s.area_id for s in specs] == ["district:r3080399"] and problems == []


def test_the_optics_valley_extract_cuts_its_boundaries_so_it_has_no_districts() -> None:
    # The extract holds the relations of 武汉市, 洪山区, 江夏区 … but one boundary way of them:
    # no polygon can be closed, and none is guessed.
    osm = reference_file("osm", "wuhan_optics_valley.osm")
    assert districts_from_osm(osm) == []
    grid = AreaGrid(RoadNetwork.from_osm(osm), areas=districts_from_osm(osm))
    assert not any(a.startswith("district:") for a in grid.names)
    assert grid.names["network"] == "全路网" and grid.names_en["network"] == "Whole network"


async def test_the_service_indexes_the_configured_areas(tmp_path: Path) -> None:
    """TTI_INDEX_AREAS reaches the running service's index, name and all."""
    network = build_network()
    areas = _write(tmp_path / "areas.geojson", [{
        "type": "Feature", "geometry": None,
        "properties": {"kind": "corridor", "id": "jiefang", "name": "解放大道",
                       "name_en": "Jiefang Avenue", "road_names": ["解放大道"]}}])
    bigdata = TestServer(bigdata_standin(network))
    await bigdata.start_server()
    bus = MemoryBus(partitions=4)
    await bus.start()
    seen: list[AreaIndex] = []

    async def on_index(env: Envelope[AreaIndex]) -> None:
        seen.append(env.payload)

    await bus.subscribe(AREA_INDEX, on_index, durable="test")
    app = create_app(Config(bigdata_url=str(bigdata.make_url("/")), speed_window_s=1.0,
                            db_url=f"sqlite:///{tmp_path}/tti.db", partitions=4,
                            index_areas=str(areas)), bus=bus, clock=Clock(start=T0))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await wait_for(lambda: app[SERVICE].ready.is_set(), within_s=20)
        grid = app[SERVICE].engine.grid
        assert grid is not None and grid.sizes["corridor:jiefang"] == 24  # 12 pieces, 2 ways
        await bus.publish(SEGMENT_SPEED, window("1:0:1", 0, 6.0), event_id="w-1")
        await wait_for(lambda: any(a.area_id == "corridor:jiefang" and a.tpi for a in seen),
                       within_s=20)
        corridor = next(a for a in seen if a.area_id == "corridor:jiefang" and a.tpi)
        assert corridor.name_en == "Jiefang Avenue" and corridor.level == 5
    finally:
        await runner.cleanup()
        await bus.close()
        await bigdata.close()
