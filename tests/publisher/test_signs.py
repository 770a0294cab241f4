"""The bus-stop sign's answer over the real bigdata and warning apps: arrivals per route from
real prediction events, the road ahead and its level, warnings near the stop, unknown stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.publisher.signs import SIGNS, group_arrivals, road_ahead_json
from shared.demo import DemoRegion, generate_demo_region
from shared.events import (
    ARRIVAL_PREDICTION,
    ROAD_STATUS,
    VEHICLE_POSITION,
    WARNING,
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
from tests.publisher import wait_for
from tests.publisher.stack import Stack, import_demo, running_stack

STOP = "1479"  # 解放大道八一路, on route R1 ("1")
PHONE = "13800000001"


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


async def feed_live_bus(stack: Stack, *, stop_id: str = STOP, seq: int = 2, in_s: float = 240,
                        phone: str = PHONE, occupancy: str = "FEW_SEATS_AVAILABLE") -> None:
    """A bus off the demo network (bigdata's tracker leaves it alone) and its prediction."""
    now = stack.clock.now()
    await stack.bus.publish(VEHICLE_POSITION, VehiclePosition(
        vehicle_id=phone, lon=115.5, lat=30.567, observed_at=now, speed_kmh=22.0,
        heading_deg=180.0, vehicle_class="bus", occupancy=occupancy, occupancy_pct=85.0),
        key=phone)
    held = stack.publisher.buses.held
    await wait_for(lambda: any(b.occupancy == occupancy
                               for b in stack.publisher.buses.buses.values()))
    await stack.bus.publish(ARRIVAL_PREDICTION, ArrivalPrediction(
        trip_id="R1_0_0900", route_id="R1", stop_id=stop_id, stop_sequence=seq,
        vehicle_id=phone, predicted_arrival=now + timedelta(seconds=in_s), made_at=now,
        start_date="20260303", scheduled_arrival=now + timedelta(seconds=in_s - 120)),
        key=phone)
    await wait_for(lambda: stack.publisher.buses.held > held
                   or any(p.made_at == now for p in stack.publisher.buses.predictions_at(
                       [stop_id], stack.clock.now())))


def warning(stack: Stack, warning_id: str, *, segment_ids: tuple[str, ...] = (),
            lon: float | None = None, lat: float | None = None,
            kind: WarningKind = WarningKind.CONGESTION) -> Warning:
    now = stack.clock.now()
    return Warning(
        warning_id=warning_id, kind=kind, status=WarningStatus.RAISED,
        category=CapCategory.TRANSPORT, severity=CapSeverity.SEVERE,
        urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
        msg_type=CapMsgType.ALERT, started_at=now, updated_at=now,
        headline=f"{warning_id} 严重拥堵", headline_en=f"{warning_id} severe congestion",
        cause="severe_congestion", segment_ids=segment_ids, level=5, lon=lon, lat=lat)


async def sign(stack: Stack, stop_id: str = STOP, status: int = 200) -> Any:
    resp = await stack.client.get(f"/api/v1/stops/{stop_id}/sign")
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_sign_groups_live_and_timetable_arrivals_per_route(stack: Stack) -> None:
    await feed_live_bus(stack)
    body = await sign(stack)
    assert body["stop"]["name"] == "解放大道八一路" and body["time_zone"] == "UTC"
    assert body["feed"] == {"bus": "connected", "timetable": "included",
                            "live_as_of": body["feed"]["live_as_of"]}
    assert body["feed"]["live_as_of"] is not None
    route = next(r for r in body["routes"] if r["route_id"] == "R1")
    first = route["arrivals"][0]
    assert route["route_short_name"] == "1"
    assert first["source"] == "live" and first["minutes"] == 4
    assert first["occupancy"] == {"status": "FEW_SEATS_AVAILABLE", "percentage": 85.0}
    assert PHONE not in str(body)
    # The timetable fills each route's next departures after the live bus; none repeats it.
    assert 1 <= len(route["arrivals"]) <= 3
    times = [a["arrival_at"] for r in body["routes"] for a in r["arrivals"][:1]]
    assert times == sorted(times)
    assert len({(r["route_id"], r["direction_id"]) for r in body["routes"]}) == len(
        body["routes"])


async def test_road_ahead_is_the_segments_the_stops_buses_drive_next(
        stack: Stack, demo: DemoRegion) -> None:
    body = await sign(stack)
    ahead = body["road_ahead"]
    assert ahead is not None and ahead["segments"], body
    assert ahead["level"] is None and ahead["level_name"] is None  # nothing graded yet
    ids = [s["segment_id"] for s in ahead["segments"]]
    # The demo knows where route 1's buses drive: past the stop on its segment, then on.
    pattern = next(p for r in demo.bus_routes if r.route_id == "R1" for p in r.patterns
                   if any(st.stop_id == STOP for st in p.stops))
    beside = next(st for st in pattern.stops if st.stop_id == STOP).segment_id
    assert ids[0] == beside
    start = pattern.segment_ids.index(beside)
    assert ids == list(pattern.segment_ids[start:start + len(ids)])
    assert ahead["length_m"] >= 800 or start + len(ids) == len(pattern.segment_ids)
    assert ahead["name"] == ahead["segments"][0]["name"]
    # A jam on the second segment is the sign's level; the first stays smooth.
    now = stack.clock.now()
    for sid, level, name, speed in ((ids[0], 1, "畅通", 40.0), (ids[-1], 4, "中度拥堵", 12.0)):
        await stack.bus.publish(ROAD_STATUS, RoadStatus(
            segment_id=sid, level=level, level_name=name, level_name_en=None,
            speed_kmh=speed, free_flow_kmh=50.0, observed_at=now, sample_count=6,
            source="probe"))
    await wait_for(lambda: stack.publisher.roads.find(ids[-1], stack.clock.now()))
    await wait_for(lambda: stack.publisher.roads.find(ids[0], stack.clock.now()))
    ahead = (await sign(stack))["road_ahead"]
    expected = 4 if len(ids) > 1 else 1
    assert ahead["level"] == expected and ahead["worst_segment_id"] == ids[-1]
    assert ahead["level_name"] == ("中度拥堵" if expected == 4 else "畅通")
    assert ahead["segments"][0]["level"] == 1


def test_road_ahead_level_is_the_worst_graded_segment() -> None:
    from datetime import UTC, datetime

    from shared.clients.bigdata import Segment

    def seg(sid: str) -> Segment:
        return Segment(segment_id=sid, name="路", name_en=None, road_class="primary",
                       lanes=2, speed_limit_kmh=60.0, free_flow_kmh=50.0, oneway=True,
                       bridge=False, tunnel=False, length_m=300.0,
                       coords=((114.0, 30.0), (114.003, 30.0)))

    at = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
    status = RoadStatus(segment_id="1:2:3", level=3, level_name="轻度拥堵", level_name_en=None,
                        speed_kmh=20.0, free_flow_kmh=50.0, observed_at=at, sample_count=3,
                        source="probe")
    none = RoadStatus(segment_id="1:1:2", level=None, level_name=None, level_name_en=None,
                      speed_kmh=None, free_flow_kmh=50.0, observed_at=at, sample_count=0,
                      source="none")
    out = road_ahead_json([seg("1:1:2"), seg("1:2:3"), seg("1:3:4")], [none, status, None])
    assert out["level"] == 3 and out["worst_segment_id"] == "1:2:3"
    assert out["observed_at"] == at and out["length_m"] == 900.0
    assert [s["source"] for s in out["segments"]] == ["none", "probe", "none"]
    empty = road_ahead_json([seg("1:1:2")], [None])
    assert empty["level"] is None and empty["speed_kmh"] is None


async def test_warnings_near_the_stop_only_and_never_vehicle_alarms(stack: Stack) -> None:
    ahead = (await sign(stack))["road_ahead"]
    on_road = ahead["segments"][0]["segment_id"]
    places = stack.publisher.places
    assert places is not None
    stop = places.stop_by_id[STOP]
    for w in (warning(stack, "on-road", segment_ids=(on_road,)),
              warning(stack, "close-by", lon=stop.lon + 0.005, lat=stop.lat),
              warning(stack, "far-away", lon=stop.lon + 0.2, lat=stop.lat),
              warning(stack, "alarm", lon=stop.lon, lat=stop.lat,
                      kind=WarningKind.VEHICLE_ALARM)):
        await stack.bus.publish(WARNING, w)
    await wait_for(lambda: stack.publisher.warnings.find("alarm") is not None)
    body = await sign(stack)
    ids = {w["warning_id"] for w in body["warnings"]}
    assert ids == {"on-road", "close-by"}
    assert all(w["headline_en"] for w in body["warnings"])


async def test_unknown_stop_is_404_page_and_json(stack: Stack) -> None:
    body = await sign(stack, "nope", 404)
    assert body["error"]["code"] == "not_found"
    page = await stack.client.get("/signs/nope")
    assert page.status == 404 and "无此站点" in await page.text()
    assert page.headers["Content-Type"].startswith("text/html")
    as_json = await stack.client.get("/signs/nope", headers={"Accept": "application/json"})
    assert as_json.status == 404 and (await as_json.json())["error"]["code"] == "not_found"
    ok = await stack.client.get(f"/signs/{STOP}")
    assert ok.status == 200 and "default-src 'self'" in ok.headers["Content-Security-Policy"]
    assert "/static/signs.js" in await ok.text()


async def test_sign_answer_caches_and_revalidates(stack: Stack) -> None:
    first = await stack.client.get(f"/api/v1/stops/{STOP}/sign")
    tag = first.headers["ETag"]
    again = await stack.client.get(f"/api/v1/stops/{STOP}/sign",
                                   headers={"If-None-Match": tag})
    assert again.status == 304
    await feed_live_bus(stack, in_s=420)
    changed = await stack.client.get(f"/api/v1/stops/{STOP}/sign",
                                     headers={"If-None-Match": tag})
    assert changed.status == 200 and changed.headers["ETag"] != tag
    assert stack.client.app is not None and stack.client.app[SIGNS] is not None


def test_arrivals_group_per_route_and_direction_in_order() -> None:
    def row(route: str, direction: int | None, minutes: int, source: str = "schedule",
            headsign: str | None = "终点") -> dict[str, Any]:
        return {"route_id": route, "route_short_name": route, "direction_id": direction,
                "headsign": headsign, "source": source, "arrival_at": f"t{minutes:03d}",
                "minutes": minutes, "occupancy": None, "vehicle": None, "delay_s": None}

    groups = group_arrivals([row("A", None, 1, "live", None), row("B", 0, 2), row("A", 0, 3),
                             row("A", 1, 4), row("A", 0, 5), row("A", 0, 6), row("A", 0, 7)])
    assert [(g["route_id"], g["direction_id"]) for g in groups] == [("A", 0), ("B", 0),
                                                                    ("A", 1)]
    first = groups[0]
    assert first["headsign"] == "终点" and len(first["arrivals"]) == 3
    assert [a["minutes"] for a in first["arrivals"]] == [1, 3, 5]
    assert first["arrivals"][0]["source"] == "live"


async def test_answers_are_rendered_once_until_their_data_changes(stack: Stack) -> None:
    url = f"/api/v1/stops/{STOP}/arrivals"
    first = await (await stack.client.get(url)).read()
    assert await (await stack.client.get(url)).read() == first  # the same bytes, generated_at too
    # A burst of clients on a stop whose answer must be rendered: bigdata is asked once.
    stack.publisher.timetables.clear()
    await feed_live_bus(stack, in_s=300)
    asked: list[str] = []
    original = stack.publisher.bigdata.stop_arrivals

    async def counted(stop_id: str, **kw: Any) -> dict[str, Any]:
        asked.append(stop_id)
        return await original(stop_id, **kw)

    stack.publisher.bigdata.stop_arrivals = counted  # type: ignore[method-assign]
    bodies = await asyncio.gather(*(stack.client.get(url) for _ in range(20)))
    texts = {await b.read() for b in bodies}
    assert asked == [STOP] and len(texts) == 1 and texts != {first}
    assert all(b.status == 200 for b in bodies)
