"""The web page in a real headless Chromium: levels named as the warning service names them.

Debian's ``chromium`` driven by Playwright (``executable_path``, no downloaded browser). The
page's legend comes from ``/api/v1/levels``; a road's badge and a warning's line show what the
bus carried. Locally a missing browser skips; in CI it fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.events import (
    ROAD_STATUS,
    WARNING,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    RoadStatus,
    Warning,
    WarningKind,
    WarningStatus,
)
from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN
from tests.publisher import Env, running_publisher, wait_for


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running_publisher() as e:
        yield e


async def test_legend_and_warnings_use_the_warning_services_names(env: Env, browser: Any
                                                                  ) -> None:
    now = datetime.now(UTC)
    await env.bus.publish(ROAD_STATUS, RoadStatus(
        segment_id="101:1:2", level=5, level_name=LEVEL_NAMES[5], level_name_en=LEVEL_NAMES_EN[5],
        speed_kmh=6.0, free_flow_kmh=50.0, observed_at=now, sample_count=5, source="probe",
        tpi=9.2))
    await env.bus.publish(WARNING, Warning(
        warning_id="cong-1", kind=WarningKind.CONGESTION, status=WarningStatus.RAISED,
        category=CapCategory.TRANSPORT, severity=CapSeverity.SEVERE,
        urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED, msg_type=CapMsgType.ALERT,
        started_at=now, updated_at=now, headline="珞喻路 严重拥堵", cause="severe_congestion",
        segment_ids=("101:1:2",), level=5, speed_kmh=6.0, lon=114.405, lat=30.5))
    await wait_for(lambda: env.publisher.warnings.find("cong-1") is not None)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(env.client.make_url("/")))
    # Locators, not wait_for_function: the page's CSP forbids eval, and rightly so.
    await page.locator("#legend-levels li").nth(4).wait_for()
    legend = await page.inner_text("#legend-levels")
    for n in range(1, 6):
        assert LEVEL_NAMES[n] in legend  # Chinese first
    await page.wait_for_selector("#warnings li")
    item = await page.inner_text("#warnings li")
    assert "珞喻路 严重拥堵" in item
    assert LEVEL_NAMES[5] in item
    # The English switch names the levels as the warning service does in English.
    await page.click("#lang")
    await page.locator("#legend-levels li", has_text=LEVEL_NAMES_EN[5]).wait_for(
        state="attached")
    legend = await page.inner_text("#legend-levels")
    for n in range(1, 6):
        assert LEVEL_NAMES_EN[n] in legend
    assert LEVEL_NAMES_EN[5] in await page.inner_text("#warnings li")
    assert errors == []
    await page.close()
