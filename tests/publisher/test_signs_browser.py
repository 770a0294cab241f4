"""The bus-stop sign in a real headless Chromium, over the real bigdata and warning apps.

Debian's ``chromium`` driven by Playwright (``executable_path``). The sign shows arrivals from
prediction events on the bus, fits landscape and portrait screens without scrolling, and — the
acceptance — when the server is stopped it keeps its last arrivals and says its data is stale,
then recovers by itself when the server is back; a live feed that goes down is said too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.publisher.app import PUBLISHER, create_app
from shared.demo import DemoRegion, generate_demo_region
from shared.events import ARRIVAL_PREDICTION, ArrivalPrediction
from tests.publisher import is_ready, wait_for
from tests.publisher.stack import Stack, import_demo, running_stack
from tests.publisher.test_signs import PHONE, STOP, feed_live_bus

SIZES = {"landscape": (1920, 1080), "portrait": (1080, 1920)}
STALE = "暂时无法连接"


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


async def open_sign(chromium: Any, client: TestClient[Any, Any], size: tuple[int, int]
                    ) -> tuple[Any, list[str]]:
    page = await chromium.new_page(viewport={"width": size[0], "height": size[1]})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
            and "Failed to load resource" not in msg.text else None)
    await page.goto(str(client.make_url(f"/signs/{STOP}?poll=1")))
    return page, errors


async def state_of(page: Any) -> str:
    return str(await page.get_attribute("body", "data-state"))


async def wait_state(page: Any, wanted: str) -> None:
    await page.locator(f'body[data-state="{wanted}"]').wait_for(timeout=15_000)


async def fits(page: Any) -> dict[str, Any]:
    """How the page sits in its viewport: overflow, and any element outside the screen."""
    result: dict[str, Any] = await page.evaluate("""() => {
        const w = innerWidth, h = innerHeight, out = [];
        for (const e of document.querySelectorAll('body *')) {
            const r = e.getBoundingClientRect();
            if (!r.width || !r.height || getComputedStyle(e).visibility === 'hidden') continue;
            if (e.closest('[hidden]')) continue;
            if (r.bottom > h + 1 || r.right > w + 1 || r.top < -1 || r.left < -1)
                out.push(e.tagName + '.' + e.className + ' ' + JSON.stringify(r));
        }
        const s = document.scrollingElement;
        return {scrollH: s.scrollHeight, scrollW: s.scrollWidth, h, w, outside: out,
                routeFont: parseFloat(getComputedStyle(
                    document.querySelector('.route .num') || document.body).fontSize)};
    }""")
    return result


@pytest.mark.parametrize("orientation", ["landscape", "portrait"])
async def test_sign_shows_live_arrivals_and_fits_the_screen(stack: Stack, browser: Any,
                                                            orientation: str) -> None:
    await feed_live_bus(stack, in_s=240)
    page, errors = await open_sign(browser, stack.client, SIZES[orientation])
    await wait_state(page, "live")
    row = page.locator('.route[data-route-id="R1"]')
    await row.wait_for()
    text = await row.inner_text()
    assert "1" in text and "4" in text and "分" in text and "座位较少" in text, text
    assert "解放大道八一路" in await page.inner_text("#stop-name")
    assert await page.inner_text("#stop-name-en") == "Jiefang Avenue & Bayi Road"
    assert "解放大道" in await page.inner_text("#road-name")
    assert not await page.locator("#banner").is_visible()
    layout = await fits(page)
    assert layout["scrollH"] <= layout["h"] and layout["outside"] == [], layout
    # A busy stop: more routes than the screen holds. The rows that do not fit are dropped
    # and counted, the page still does not scroll.
    now = stack.clock.now()
    for n in range(12):
        await stack.bus.publish(ARRIVAL_PREDICTION, ArrivalPrediction(
            trip_id=f"X{n}_trip", route_id=f"X{n}", stop_id=STOP, stop_sequence=3,
            vehicle_id=None, predicted_arrival=now + timedelta(seconds=300 + 60 * n),
            made_at=now, start_date="20260303"), key=f"X{n}")
    await wait_for(lambda: len(stack.publisher.buses.predictions_at([STOP], now)) >= 13)
    await page.locator("#more-routes:not([hidden])").wait_for(timeout=15_000)
    assert "条线路" in await page.inner_text("#more-routes")
    assert await page.locator(".route").count() >= 4
    layout = await fits(page)
    assert layout["scrollH"] <= layout["h"] and layout["scrollW"] <= layout["w"], layout
    assert layout["outside"] == [], layout["outside"]
    # Readable at 5 m: a route number at least ~7 % of the short side of the screen.
    assert layout["routeFont"] >= 0.07 * min(SIZES[orientation]), layout
    assert errors == []
    await page.close()


async def test_stopped_server_the_sign_says_stale_then_recovers(stack: Stack, browser: Any
                                                                ) -> None:
    await feed_live_bus(stack, in_s=240)
    page, errors = await open_sign(browser, stack.client, SIZES["landscape"])
    await wait_state(page, "live")
    await page.locator('.route[data-route-id="R1"] .eta').first.wait_for()
    before = await page.inner_text("#routes")
    port = stack.client.port
    config = stack.publisher.config
    # Stop the server.
    await stack.client.close()
    await wait_state(page, "stale")
    banner = await page.inner_text("#banner")
    assert STALE in banner and "数据更新于" in banner and "connection lost" in banner, banner
    # It still shows the last arrivals (the live bus counting down), not an empty board.
    after = await page.inner_text("#routes")
    assert "座位较少" in after and after.split()[0] == before.split()[0], (before, after)
    # Start it again on the same address: the sign reconnects by itself.
    app = create_app(config, bus=stack.bus, clock=stack.clock)
    app[PUBLISHER].retry_initial_s = 0.05
    app[PUBLISHER].retry_max_s = 0.2
    client: TestClient[Any, Any] = TestClient(TestServer(app, port=port))
    await client.start_server()
    try:
        await wait_for(lambda: is_ready(client), within_s=60.0)
        restarted = dataclasses.replace(stack, client=client, publisher=app[PUBLISHER])
        await feed_live_bus(restarted, in_s=480, phone=PHONE,
                            occupancy="STANDING_ROOM_ONLY")
        await wait_state(page, "live")
        await page.locator('.route[data-route-id="R1"] .occ.o3').wait_for(timeout=15_000)
        assert not await page.locator("#banner").is_visible()
        # The live feed goes down while the server stays up: said too, last data kept.
        await stack.bus.close()
        await wait_state(page, "stale")
        banner = await page.inner_text("#banner")
        assert "实时数据中断" in banner and "live feed down" in banner, banner
        assert "有站位" in await page.inner_text("#routes")
    finally:
        await client.close()
    assert errors == [], errors
    await page.close()
