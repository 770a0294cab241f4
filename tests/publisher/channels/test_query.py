"""The text-query resolver over the real publisher, bigdata and warning apps on the demo city:
real route, stop, road, bridge and car-park names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.publisher.channels.query import (
    Ambiguous,
    IndexAnswer,
    NearbyAnswer,
    NotedPoint,
    NotUnderstood,
    ParkingAnswer,
    RoadStatusAnswer,
    RouteArrivals,
    StopArrivals,
    normalize,
    resolve,
)
from shared.demo import DemoRegion, generate_demo_region
from shared.events import CapSeverity, WarningKind
from tests.publisher.channels.demo_feeds import (
    STOP,
    answers_of,
    live_bus,
    network_index,
    publish_warning,
    road_status,
    warning,
)
from tests.publisher.stack import Stack, import_demo, running_stack


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def imported(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_demo(demo, tmp_path_factory.mktemp("db") / "geo.db")


@pytest.fixture
async def stack(demo: DemoRegion, imported: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(demo, imported, tmp_path) as s:
        yield s


def test_normalize_folds_full_width_forms() -> None:
    assert normalize("  １路　解放大道八一路？ ") == "1路 解放大道八一路?"
    assert normalize("FIRST  Bridge") == "first bridge"


async def test_a_bridge_by_name_worst_and_typical_level_and_its_warnings(
        stack: Stack, demo: DemoRegion) -> None:
    answers = answers_of(stack)
    bridge = demo.bridges[0]
    assert bridge.name == "江城一桥"
    jammed, *rest = bridge.segment_ids
    await road_status(stack, jammed, 5, 6.0)
    for sid in rest:
        await road_status(stack, sid, 2, 40.0)
    await publish_warning(stack, warning(stack, "w-bridge", segment_ids=(jammed,)))
    # A vehicle alarm on the bridge is the departments' business, never a citizen's answer.
    await publish_warning(stack, warning(stack, "w-alarm", segment_ids=(jammed,),
                                         kind=WarningKind.VEHICLE_ALARM,
                                         severity=CapSeverity.EXTREME))
    for text in ("江城一桥", "江城一桥现在堵吗？", "请问江城一桥路况怎么样", "FIRST BRIDGE",
                 "一桥"):
        answer = await resolve(answers, text)
        assert isinstance(answer, RoadStatusAnswer), (text, answer)
        assert answer.name == "江城一桥" and answer.name_en == "First Bridge"
        assert answer.bridge and not answer.tunnel
        assert answer.segment_count == len(bridge.segment_ids)
        assert answer.measured_count == answer.segment_count and answer.source == "live"
        assert answer.worst is not None and answer.worst.level == 5
        assert answer.worst.level_name == "严重拥堵" and answer.worst.speed_kmh == 6.0
        assert answer.typical is not None and answer.typical.level == 2
        assert answer.typical.level_name == "基本畅通"
        assert answer.typical.speed_kmh is not None and 6.0 < answer.typical.speed_kmh < 40.0
        assert answer.age_s == 0
        assert [w.warning_id for w in answer.warnings] == ["w-bridge"]
        assert answer.warnings[0].severity == "Severe"
    # A road with no data says so instead of guessing.
    tunnel = await resolve(answers, "江城隧道")
    assert isinstance(tunnel, RoadStatusAnswer) and tunnel.tunnel
    assert tunnel.worst is None and tunnel.typical is None and tunnel.source == "none"
    assert tunnel.measured_count == 0 and tunnel.age_s is None and tunnel.warnings == ()


async def test_a_stop_by_name_has_its_arrivals_live_and_timetabled(stack: Stack) -> None:
    answers = answers_of(stack)
    await live_bus(stack)
    for text in ("解放大道八一路", "解放大道八一路站", "Jiefang Avenue & Bayi Road"):
        answer = await resolve(answers, text)
        assert isinstance(answer, StopArrivals), (text, answer)
        assert answer.stop_name == "解放大道八一路"
        # Both directions' platforms of that name.
        assert set(answer.stop_ids) == {"1479", "1492"}
        assert answer.timetable == "included"
        live = [a for a in answer.arrivals if a.source == "live"]
        assert len(live) == 1 and live[0].minutes == 4 and live[0].route_short_name == "1"
        assert live[0].occupancy == "STANDING_ROOM_ONLY" and live[0].occupancy_pct == 85.0
        assert live[0].delay_s == 120.0
        assert any(a.source == "schedule" for a in answer.arrivals)
        assert [a.arrival_at for a in answer.arrivals] == sorted(a.arrival_at
                                                                  for a in answer.arrivals)


async def test_a_route_at_a_stop_and_its_live_buses(stack: Stack) -> None:
    answers = answers_of(stack)
    await live_bus(stack)
    for text in ("1路 解放大道八一路", "1路解放大道八一路", "１路　解放大道八一路",
                 "公交1路 解放大道八一路站", "1 解放大道八一路"):
        answer = await resolve(answers, text)
        assert isinstance(answer, RouteArrivals), (text, answer)
        assert answer.route_short_name == "1" and answer.stop_name == "解放大道八一路"
        assert answer.arrivals and all(a.route_id == "R1" for a in answer.arrivals)
        live = [a for a in answer.arrivals if a.source == "live"]
        assert len(live) == 1 and live[0].minutes == 4 and live[0].stop_id == STOP
    # Route 2 does not call at 解放大道八一路: no arrivals, said as such.
    other = await resolve(answers, "2路 解放大道八一路")
    assert isinstance(other, RouteArrivals) and other.route_id == "R2"
    assert other.arrivals == () and other.timetable == "included"
    alone = await resolve(answers, "1路还有多久到")
    assert isinstance(alone, RouteArrivals) and alone.stop_name is None
    assert alone.long_name == "解放大道纬二十一路 — 解放大道青年路"
    assert len(alone.buses) == 1
    bus = alone.buses[0]
    assert bus.next_stop_name == "解放大道八一路" and bus.next_stop_minutes == 4
    assert bus.label.startswith("bus-") and bus.occupancy == "STANDING_ROOM_ONLY"
    assert isinstance(await resolve(answers, "Bus 1"), RouteArrivals)
    unknown = await resolve(answers, "512路")
    assert isinstance(unknown, NotUnderstood) and unknown.reason == "unknown_route"
    assert unknown.subject == "512" and any(e.startswith("1路") for e in unknown.examples)
    nostop = await resolve(answers, "1路 不存在的站")
    assert isinstance(nostop, NotUnderstood) and nostop.reason == "unknown_stop"
    assert nostop.subject == "不存在的站"


async def test_parking_near_a_named_place_or_the_sender(stack: Stack) -> None:
    answers = answers_of(stack)
    answer = await resolve(answers, "江城大酒店附近停车场")
    assert isinstance(answer, ParkingAnswer) and answer.place_name == "江城大酒店"
    names = [c.name for c in answer.car_parks]
    assert "江城广场停车场" in names
    park = answer.car_parks[names.index("江城广场停车场")]
    assert park.capacity == 300 and park.free_spaces is None and park.age_s is None
    assert [c.distance_m for c in answer.car_parks] == sorted(c.distance_m
                                                              for c in answer.car_parks)
    mine = await resolve(answers, "停车", near=(answer.lon, answer.lat))
    assert isinstance(mine, ParkingAnswer) and mine.place_name is None
    assert [c.name for c in mine.car_parks] == names
    nowhere = await resolve(answers, "哪里可以停车")
    assert isinstance(nowhere, NotUnderstood) and nowhere.reason == "needs_location"


async def test_the_traffic_index(stack: Stack) -> None:
    answers = answers_of(stack)
    await network_index(stack, 4.2, 3)
    for text in ("路况", "交通指数", "现在全市路况怎么样", "traffic"):
        answer = await resolve(answers, text)
        assert isinstance(answer, IndexAnswer), (text, answer)
        assert answer.network is not None and answer.network.tpi == 4.2
        assert answer.network.level_name == "轻度拥堵" and answer.age_s == 0
        assert answer.areas and answer.areas[0].area_id == "group:arterial"


async def test_nearby_roads_and_car_parks_of_a_point(stack: Stack, demo: DemoRegion) -> None:
    answers = answers_of(stack)
    bridge = stack.publisher.catalogue.find(demo.bridges[0].segment_ids[0])  # type: ignore[union-attr]
    assert bridge is not None
    lon, lat = bridge.coords[0]
    await road_status(stack, bridge.segment_id, 4, 15.0)
    for answer in (await resolve(answers, "", near=(lon, lat)),
                   await resolve(answers, "附近路况", near=(lon, lat)),
                   await resolve(answers, f"{lon},{lat}")):
        assert isinstance(answer, NearbyAnswer)
        names = [r.name for r in answer.roads]
        assert "江城一桥" in names
        road = answer.roads[names.index("江城一桥")]
        assert road.distance_m is not None and road.distance_m < 5
        assert road.worst is not None and road.worst.level == 4
        assert [r.distance_m for r in answer.roads] == sorted(r.distance_m or 0
                                                              for r in answer.roads)
    needs = await resolve(answers, "附近")
    assert isinstance(needs, NotUnderstood) and needs.reason == "needs_location"
    hotel = await resolve(answers, "江城大酒店")
    assert isinstance(hotel, NearbyAnswer) and hotel.place_name == "江城大酒店"
    assert hotel.roads and hotel.car_parks


async def test_ambiguous_and_not_understood(stack: Stack) -> None:
    answers = answers_of(stack)
    both = await resolve(answers, "滨江路")
    assert isinstance(both, Ambiguous)
    assert {c.name for c in both.candidates} >= {"南滨江路", "北滨江路"}
    assert len(both.candidates) <= 5
    for text, reason in (("今天天气真好", "no_match"), ("   ", "empty"), ("路" * 101, "too_long")):
        answer = await resolve(answers, text)
        assert isinstance(answer, NotUnderstood) and answer.reason == reason, (text, answer)
        assert "路况" in answer.examples and len(answer.text) <= 100
    examples = (await resolve(answers, "?")).examples  # type: ignore[union-attr]
    for example in examples:  # every example the help offers is understood
        assert not isinstance(await resolve(answers, example), NotUnderstood), example
    assert STOP in {s for a in [await resolve(answers, "解放大道八一路")]
                    for s in getattr(a, "stop_ids", ())}


async def test_an_answer_that_did_not_read_the_location_is_everyones(
        stack: Stack, demo: DemoRegion) -> None:
    """WeChat shares an answer that never read the sender's location with every sender, and
    then does not look the location up: it must be the same answer without a location and
    with any other one."""
    answers = answers_of(stack)
    await live_bus(stack)
    await network_index(stack, 4.2, 3)
    bridge = stack.publisher.catalogue.find(demo.bridges[0].segment_ids[0])  # type: ignore[union-attr]
    assert bridge is not None
    here, far = bridge.coords[0], (bridge.coords[0][0] + 0.05, bridge.coords[0][1] - 0.04)
    texts = ("江城一桥", "路况", "1路 解放大道八一路", "解放大道八一路", "1路", "江城大酒店",
             "江城大酒店附近停车场", "滨江路", "今天天气真好", "停车", "附近", "", "?",
             "附近路况", "江城一桥停车", "2路 滨江路")
    read: dict[str, bool] = {}
    for text in texts:
        noted = NotedPoint(here)
        answer = await resolve(answers, text, near=noted)
        read[text] = noted.read
        if not noted.read:
            assert await resolve(answers, text) == answer, text
            assert await resolve(answers, text, near=far) == answer, text
    # Where the sender is counts only for what is around them (and which stretch of a road
    # they park by).
    assert {t for t, r in read.items() if r} == {"停车", "附近", "", "?", "附近路况",
                                                 "江城一桥停车"}, read
