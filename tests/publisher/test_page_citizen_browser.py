"""The citizen map page in a real headless Chromium over the real publisher, bigdata and warning
apps (tests/publisher/stack.py), with real events on the memory bus.

Tried as a citizen would: find a congested bridge, a stop's arrivals, a car park with free
spaces and a route; on a phone the legend leaves the map visible; nothing is fetched from any
other origin; stale data and a lost server say so. Debian's ``chromium`` through Playwright
(``executable_path``); locally a missing browser skips, in CI it fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.demo import DemoRegion, generate_demo_region
from shared.events import (
    ARRIVAL_PREDICTION,
    FEATURE_STATE,
    ROAD_STATUS,
    VEHICLE_POSITION,
    ArrivalPrediction,
    FeatureState,
    RoadStatus,
    VehiclePosition,
)
from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN
from tests.publisher import wait_for
from tests.publisher.stack import Stack, import_demo, running_stack

PHONE = "13800000077"
TIMEOUT_MS = 20_000


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




class Visit:
    """One page with its request log and script errors."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def foreign(self) -> list[str]:
        return [u for u in self.requests
                if not (u.startswith(self.origin + "/") or u.startswith("data:"))]


async def open_page(browser: Any, stack: Stack, **context: Any) -> Visit:
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    origin = str(stack.client.make_url("/")).rstrip("/")
    visit = Visit(page, origin)
    await page.goto(origin + "/")
    await page.locator("#legend-levels li").nth(4).wait_for(state="attached")
    return visit


async def wait_for_title(page: Any, text: str) -> None:
    # A Python loop, not wait_for_function: the page's policy forbids eval, and rightly so.
    async def titled() -> bool:
        return text in await page.title()
    await wait_for(titled, within_s=TIMEOUT_MS / 1000)


def road_status(stack: Stack, segment_id: str, level: int, *, age_s: float = 0.0
                ) -> RoadStatus:
    speeds = {1: 55.0, 2: 40.0, 3: 28.0, 4: 16.0, 5: 6.0}
    return RoadStatus(segment_id=segment_id, level=level, level_name=LEVEL_NAMES[level],
                      level_name_en=LEVEL_NAMES_EN[level], speed_kmh=speeds[level],
                      free_flow_kmh=60.0, observed_at=stack.clock.now() - timedelta(
                          seconds=age_s), sample_count=6, source="probe", tpi=8.5)


async def test_a_citizen_finds_a_congested_bridge_a_stops_buses_a_car_park_and_a_route(
        stack: Stack, demo: DemoRegion, browser: Any) -> None:
    bridge = demo.bridges[0]
    for sid in bridge.segment_ids:
        await stack.bus.publish(ROAD_STATUS, road_status(stack, sid, 5))
    pattern = demo.bus_routes[0].patterns[0]
    stop, last = pattern.stops[1], pattern.stops[-1]
    now = stack.clock.now()
    # A bus off the network (bigdata's own tracker leaves it alone), predicted at the stop.
    await stack.bus.publish(VEHICLE_POSITION, VehiclePosition(
        vehicle_id=PHONE, lon=115.5, lat=30.567, observed_at=now, speed_kmh=20.0,
        vehicle_class="bus", occupancy="FEW_SEATS_AVAILABLE", occupancy_pct=80.0), key=PHONE)
    await wait_for(lambda: stack.publisher.buses.buses)
    await stack.bus.publish(ARRIVAL_PREDICTION, ArrivalPrediction(
        trip_id="R1_0_0900", route_id=demo.bus_routes[0].route_id, stop_id=stop.stop_id,
        stop_sequence=2, vehicle_id=PHONE, predicted_arrival=now + timedelta(minutes=4),
        made_at=now, start_date="20260303", scheduled_arrival=now + timedelta(minutes=3)),
        key=PHONE)
    parks = (await (await stack.client.get(
        f"/api/v1/places?q={'江城广场停车场'}")).json())["places"]
    park = parks[0]
    await stack.bus.publish(FEATURE_STATE, FeatureState(
        kind="parking", feature_id=park["id"], observed_at=now, values={"free_spaces": 123}))
    await wait_for(lambda: stack.publisher.buses.held == 1 and stack.publisher.parking.live)
    await wait_for(lambda: all(stack.publisher.roads.find(s, stack.clock.now()) is not None
                               for s in bridge.segment_ids))

    visit = await open_page(browser, stack)
    page = visit.page
    # The region's proper name in the title, the base map drawn from the geodatabase.
    await wait_for_title(page, demo.name)
    await page.locator("#map[data-basemap-features]").wait_for(state="attached")
    assert int(await page.get_attribute("#map", "data-basemap-features") or 0) > 10
    assert await page.locator(".place-label", has_text=demo.name).count() == 1

    # 1. The congested bridge: search for it, see its level, open it on the map.
    await page.fill("#search-q", bridge.name)
    await page.click("#search button")
    result = page.locator("#results li", has_text=bridge.name).first
    await result.wait_for()
    assert LEVEL_NAMES[5] in await result.inner_text()
    assert "桥梁" in await result.inner_text()
    await result.click()
    popup = page.locator(".leaflet-popup-content .road-popup")
    await popup.wait_for()
    text = await popup.inner_text()
    assert bridge.name in text and LEVEL_NAMES[5] in text and "6 km/h" in text

    # 2. A stop's arrivals: the live bus first, with its occupancy, then the timetable.
    await page.fill("#search-q", stop.name)
    await page.click("#search button")
    await page.locator("#results li", has_text=stop.name).first.click()
    arrivals = page.locator(".stop-popup .arrivals li")
    await arrivals.first.wait_for()
    first = await arrivals.first.inner_text()
    assert "4 分钟" in first and "实时" in first and "座位不多" in first
    assert await page.locator(".stop-popup .arrivals li.schedule").count() >= 1

    # 3. A car park with free spaces, near the map's centre.
    await page.click("#tab-parking")
    item = page.locator("#parking li", has_text="江城广场停车场")
    await item.wait_for()
    assert "空位 123 / 300" in await item.inner_text()

    # 4. A route between two stops, with its live travel time.
    await page.click("#tab-route")
    await page.fill("#route-from", stop.name)
    await page.fill("#route-to", last.name)
    await page.click("#route-form button")
    fastest = page.locator("#routes li.fastest")
    await fastest.wait_for()
    assert "预计用时" in await fastest.inner_text() and "分钟" in await fastest.inner_text()
    assert await page.locator(".leaflet-overlay-pane path").count() >= 1

    # English at the flick of a switch.
    await page.click("#lang")
    await page.locator("#legend-levels li", has_text=LEVEL_NAMES_EN[5]).wait_for(
        state="attached")
    assert await page.get_attribute("html", "lang") == "en"
    await wait_for_title(page, demo.name_en)  # the region's English name, from OSM name:en

    assert visit.errors == []
    assert visit.foreign() == []
    assert any("/api/v1/basemap?" in u for u in visit.requests)
    assert any("/api/v1/stream?" in u for u in visit.requests)


async def test_on_a_phone_the_legend_leaves_the_map_visible(stack: Stack, browser: Any
                                                            ) -> None:
    visit = await open_page(browser, stack, viewport={"width": 390, "height": 844},
                            is_mobile=True, has_touch=True)
    page = visit.page

    async def share() -> float:
        legend = await page.locator("#legend").bounding_box()
        map_box = await page.locator("#map").bounding_box()
        assert legend and map_box and map_box["height"] > 300
        return (legend["width"] * legend["height"]) / (map_box["width"] * map_box["height"])

    assert await page.locator("#legend-body").is_hidden()  # folded on a phone
    assert await share() < 0.05
    await page.click("#legend-toggle")
    await page.locator("#legend-body").wait_for()
    assert await share() < 1 / 3
    assert visit.errors == [] and visit.foreign() == []


async def test_stale_data_and_a_lost_server_are_announced(stack: Stack, demo: DemoRegion,
                                                          browser: Any) -> None:
    sid = demo.bridges[1].segment_ids[0]
    await stack.bus.publish(ROAD_STATUS, road_status(stack, sid, 3, age_s=900))
    await wait_for(lambda: stack.publisher.roads.find(sid, stack.clock.now()) is not None)
    visit = await open_page(browser, stack)
    banner = visit.page.locator("#banner")
    await banner.wait_for()
    assert "实时数据已过时" in await banner.inner_text()
    # The server goes away: the next poll says so (the stream's loss is announced first).
    await stack.client.close()
    await visit.page.locator("#banner", has_text="无法连接服务器").wait_for(timeout=40_000)
    assert visit.foreign() == []
