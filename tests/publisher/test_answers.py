"""The answers over the real bigdata and warning apps: stops, arrivals, buses, parking, places,
roads by name and kind, caching headers, GCJ-02, the change stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.publisher.buses import PublicLabels
from shared.demo import DemoRegion, generate_demo_region
from shared.events import (
    ARRIVAL_PREDICTION,
    BUS_ARRIVAL,
    FEATURE_STATE,
    ROAD_STATUS,
    VEHICLE_POSITION,
    ArrivalPrediction,
    BusArrival,
    FeatureState,
    RoadStatus,
    VehiclePosition,
)
from shared.geo import gcj02_to_wgs84, haversine_m, wgs84_to_gcj02
from tests.publisher import wait_for
from tests.publisher.stack import Stack, import_demo, running_stack

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


async def get(stack: Stack, url: str, status: int = 200, **headers: str) -> Any:
    resp = await stack.client.get(url, headers=headers)
    assert resp.status == status, await resp.text()
    return None if status == 304 else await resp.json(content_type=None)


def bus_position(stack: Stack, **kw: Any) -> VehiclePosition:
    fields: dict[str, Any] = dict(vehicle_id=PHONE, lon=114.2999, lat=30.567,
                                  observed_at=stack.clock.now(), speed_kmh=22.0,
                                  heading_deg=180.0, vehicle_class="bus", route_id="R1",
                                  occupancy="FEW_SEATS_AVAILABLE", occupancy_pct=85.0)
    fields.update(kw)
    return VehiclePosition(**fields)


def prediction(stack: Stack, stop_id: str, seq: int, in_s: float) -> ArrivalPrediction:
    now = stack.clock.now()
    return ArrivalPrediction(trip_id="R1_0_0900", route_id="R1", stop_id=stop_id,
                             stop_sequence=seq, vehicle_id=PHONE,
                             predicted_arrival=now + timedelta(seconds=in_s), made_at=now,
                             start_date="20260303",
                             scheduled_arrival=now + timedelta(seconds=in_s - 120))


async def test_stops_by_name_and_near_a_point(stack: Stack) -> None:
    body = await get(stack, "/api/v1/stops?q=解放大道八一路")
    assert body["stops"][0]["stop_id"] == "1479"
    assert body["stops"][0]["name"] == "解放大道八一路"
    stop = body["stops"][0]
    near = await get(stack, f"/api/v1/stops?near={stop['lon']},{stop['lat']}&radius_m=300")
    assert near["stops"][0]["stop_id"] == "1479" and near["stops"][0]["distance_m"] < 1
    assert all(s["distance_m"] <= 300 for s in near["stops"])
    assert [s["distance_m"] for s in near["stops"]] == sorted(s["distance_m"]
                                                               for s in near["stops"])
    resp = await stack.client.get("/api/v1/stops")
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_request"


async def test_arrivals_live_with_occupancy_then_the_timetable(stack: Stack) -> None:
    # Off the demo network and without a route, so bigdata's own tracker leaves it alone and
    # the only prediction is the one published here.
    await stack.bus.publish(VEHICLE_POSITION, bus_position(stack, lon=115.5, route_id=None),
                            key=PHONE)
    await wait_for(lambda: stack.publisher.buses.buses)
    await stack.bus.publish(ARRIVAL_PREDICTION, prediction(stack, "1479", 2, 240), key=PHONE)
    await wait_for(lambda: stack.publisher.buses.held == 1)
    body = await get(stack, "/api/v1/stops/1479/arrivals")
    assert body["stop"]["name"] == "解放大道八一路" and body["time_zone"] == "UTC"
    live = [a for a in body["arrivals"] if a["source"] == "live"]
    assert len(live) == 1
    row = live[0]
    assert row["route_short_name"] == "1" and row["minutes"] == 4
    assert row["occupancy"] == {"status": "FEW_SEATS_AVAILABLE", "percentage": 85.0}
    assert row["delay_s"] == 120.0
    assert row["vehicle"] == PublicLabels("test-key").label(PHONE)
    assert PHONE not in orjson.dumps(body).decode()
    timetable = [a for a in body["arrivals"] if a["source"] == "schedule"]
    assert body["timetable"] == "included" and timetable, body
    assert all(a["predicted_arrival"] is None and a["vehicle"] is None for a in timetable)
    assert all(a["trip_id"] != "R1_0_0900" for a in timetable)
    # The bus reaches the stop: its prediction is over.
    await stack.bus.publish(BUS_ARRIVAL, BusArrival(
        vehicle_id=PHONE, kind="arrival", trip_id="R1_0_0900", route_id="R1", stop_id="1479",
        stop_sequence=2, observed_at=stack.clock.now(), start_date="20260303"), key=PHONE)
    await wait_for(lambda: stack.publisher.buses.held == 0)
    body = await get(stack, "/api/v1/stops/1479/arrivals")
    assert all(a["source"] == "schedule" for a in body["arrivals"])
    await get(stack, "/api/v1/stops/nope/arrivals", 404)


async def test_vehicles_have_public_labels_only(stack: Stack) -> None:
    await stack.bus.publish(VEHICLE_POSITION, bus_position(stack), key=PHONE)
    car = bus_position(stack, vehicle_id="13900000002", vehicle_class="taxi", route_id=None)
    await stack.bus.publish(VEHICLE_POSITION, car, key=car.vehicle_id)
    await wait_for(lambda: len(stack.publisher.buses.buses) == 1)
    body = await get(stack, "/api/v1/vehicles")
    assert body["count"] == 1
    bus = body["vehicles"][0]
    assert bus["vehicle"].startswith("bus-") and bus["label"].startswith("1 · ")
    assert bus["route_id"] == "R1" and bus["occupancy"]["status"] == "FEW_SEATS_AVAILABLE"
    text = orjson.dumps(body).decode()
    assert PHONE not in text and "13900000002" not in text
    route = await get(stack, "/api/v1/routes/R1/vehicles")
    assert route["route"]["short_name"] == "1" and route["count"] == 1
    await get(stack, "/api/v1/routes/nope/vehicles", 404)
    routes = await get(stack, "/api/v1/routes")
    r1 = next(r for r in routes["routes"] if r["route_id"] == "R1")
    assert r1["vehicles_live"] == 1 and r1["route_type"] == 3
    assert (await get(stack, "/api/v1/vehicles?bbox=100,20,101,21"))["count"] == 0


async def test_parking_near_with_live_free_spaces(stack: Stack) -> None:
    places = await get(stack, "/api/v1/places?q=江城广场停车场")
    park = places["places"][0]
    assert park["kind"] == "parking"
    body = await get(stack, f"/api/v1/parking?near={park['lon']},{park['lat']}&radius_m=800")
    first = body["parking"][0]
    assert first["parking_id"] == park["id"] and first["capacity"] == 300
    assert first["free_spaces"] is None and first["age_s"] is None
    observed = stack.clock.now() - timedelta(seconds=90)
    await stack.bus.publish(FEATURE_STATE, FeatureState(
        kind="parking", feature_id=park["id"], observed_at=observed,
        values={"free_spaces": 42}))
    await wait_for(lambda: stack.publisher.parking.live)
    first = (await get(stack, f"/api/v1/parking?near={park['lon']},{park['lat']}"))["parking"][0]
    assert first["free_spaces"] == 42 and 90 <= first["age_s"] < 200
    await get(stack, "/api/v1/parking", 400)


async def test_places_by_name(stack: Stack) -> None:
    body = await get(stack, "/api/v1/places?q=江城大酒店")
    assert body["places"][0]["kind"] == "hotel"
    assert (await get(stack, "/api/v1/places?q=江城大酒店&kinds=parking"))["count"] == 0
    await get(stack, "/api/v1/places?q=x&kinds=volcano", 400)
    await get(stack, "/api/v1/places", 400)


async def test_roads_by_name_bridge_and_tunnel(stack: Stack) -> None:
    bridges = await get(stack, "/api/v1/roads?bridge=true")
    assert bridges["count"] > 0
    assert all(f["properties"]["bridge"] for f in bridges["features"])
    tunnels = await get(stack, "/api/v1/roads?tunnel=true")
    assert tunnels["count"] > 0 and all(f["properties"]["tunnel"] for f in tunnels["features"])
    name = bridges["features"][0]["properties"]["name"]
    named = await get(stack, f"/api/v1/roads?q={name}")
    assert named["count"] > 0 and all(name in (f["properties"]["name"] or "")
                                      for f in named["features"])
    await get(stack, "/api/v1/roads?bridge=maybe", 400)


async def test_etag_and_last_modified_then_304_until_a_change(stack: Stack) -> None:
    segment = (await get(stack, "/api/v1/roads?bridge=true"))["features"][0]["id"]
    url = f"/api/v1/roads/{segment}"
    first = await stack.client.get(url)
    etag = first.headers["ETag"]
    assert first.headers["Last-Modified"]
    second = await stack.client.get(url, headers={"If-None-Match": etag})
    assert second.status == 304 and second.headers["ETag"] == etag
    assert await second.read() == b""
    await stack.bus.publish(ROAD_STATUS, RoadStatus(
        segment_id=segment, level=5, level_name="严重拥堵", level_name_en="severe congestion",
        speed_kmh=6.0, free_flow_kmh=50.0, observed_at=stack.clock.now(), sample_count=9,
        source="probe"))
    await wait_for(lambda: stack.publisher.roads.find(segment, stack.clock.now()))
    third = await stack.client.get(url, headers={"If-None-Match": etag})
    assert third.status == 200 and third.headers["ETag"] != etag
    assert (await third.json(content_type=None))["properties"]["level"] == 5
    for path in ("/api/v1/levels", "/openapi.json", "/api/v1/routes", "/gtfs-rt/alerts"):
        resp = await stack.client.get(path)
        assert resp.status == 200 and resp.headers.get("ETag"), path
        again = await stack.client.get(path, headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status == 304, path


async def test_gcj02_in_and_out(stack: Stack) -> None:
    stop = (await get(stack, "/api/v1/stops?q=解放大道八一路"))["stops"][0]
    glon, glat = wgs84_to_gcj02(stop["lon"], stop["lat"])
    body = await get(stack, f"/api/v1/stops?near={glon},{glat}&radius_m=50&coord=gcj02")
    found = body["stops"][0]
    assert found["stop_id"] == "1479" and found["distance_m"] < 1
    assert haversine_m(found["lon"], found["lat"], glon, glat) < 0.05
    back = gcj02_to_wgs84(found["lon"], found["lat"])
    assert haversine_m(*back, stop["lon"], stop["lat"]) < 0.05
    assert haversine_m(glon, glat, stop["lon"], stop["lat"]) > 100  # the offset is real
    await get(stack, "/api/v1/stops?q=x&coord=bd09", 400)


async def test_stream_follows_a_stop(stack: Stack) -> None:
    resp = await stack.client.get("/api/v1/stream?stop=1479")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")

    async def next_event() -> tuple[str, dict[str, Any]]:
        kind, data = "", ""
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and kind:
                return kind, orjson.loads(data)

    assert (await asyncio.wait_for(next_event(), 5))[0] == "hello"
    await stack.bus.publish(ARRIVAL_PREDICTION, prediction(stack, "1480", 3, 300), key=PHONE)
    await stack.bus.publish(ARRIVAL_PREDICTION, prediction(stack, "1479", 2, 240), key=PHONE)
    kind, data = await asyncio.wait_for(next_event(), 5)
    assert kind == "arrival" and data["stop_id"] == "1479" and data["minutes"] == 4
    resp.close()
    await get(stack, "/api/v1/stream", 400)
    await get(stack, "/api/v1/stream?stop=nope", 400)


async def test_directions_through_the_warning_router(stack: Stack) -> None:
    stop_a = (await get(stack, "/api/v1/stops?q=解放大道纬二十一路"))["stops"][0]
    stop_b = (await get(stack, "/api/v1/stops?q=解放大道纬十五路"))["stops"][0]

    async def routed() -> bool:
        resp = await stack.client.get(
            f"/api/v1/directions?from={stop_a['lon']},{stop_a['lat']}"
            f"&to={stop_b['lon']},{stop_b['lat']}&alternatives=1")
        return resp.status == 200

    await wait_for(routed, within_s=30.0)
    body = await get(stack, f"/api/v1/directions?from={stop_a['lon']},{stop_a['lat']}"
                            f"&to={stop_b['lon']},{stop_b['lat']}")
    route = body["routes"][0]
    assert route["travel_time_s"] > 0 and route["travel_time_min"] == round(
        route["travel_time_s"] / 60, 1)
    assert route["warning_ids"] == [] and route["geometry"]["type"] == "LineString"


async def test_a_stream_ends_at_once_when_the_server_shuts_down(stack: Stack) -> None:
    resp = await stack.client.get("/api/v1/stream?bbox=114.0,30.0,115.0,31.0")
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readline(), 5)
    assert first.startswith(b"retry:")
    assert stack.publisher.hub  # following
    stack.publisher.hub.close_all()  # what the app's on_shutdown does
    rest = await asyncio.wait_for(resp.content.read(), 5)  # the stream ends: EOF, no wait
    assert b"event: closing\n" in rest
    assert not stack.publisher.hub
