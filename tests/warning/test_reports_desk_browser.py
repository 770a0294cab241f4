"""The reports desk (``/console/reports``) in a real headless Chromium: a hotline agent signs in
at the console, lands on the desk, finds a ticket and a citizen's report, moves one on with a
reply and an internal note; the reporter's public status shows the reply and never the note."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.warning.workflow.store import WorkflowStore
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.db import database_from_url
from shared.events import CITIZEN_REPORT, CitizenReport, report_number
from tests.publisher import wait_for
from tests.warning.test_console_browser import open_console
from tests.warning.test_dept_api import Dept, start


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Dept]:
    db_url = f"sqlite:///{tmp_path}/tti.db"
    store = WorkflowStore(database_from_url(db_url))
    await store.open()
    now = Clock().now()
    tokens = {role: await store.add_user(f"{role}-1", role, now)
              for role in ("hotline", "safety")}
    await store.close()
    bus = MemoryBus(partitions=2)
    await bus.start()
    client, bigdata = await start(tmp_path, db_url, bus)
    try:
        yield Dept(client, bus, tokens, db_url)
    finally:
        await client.close()
        await bus.close()
        await bigdata.close()


async def publish(desk: Dept, r: CitizenReport) -> str:
    await desk.bus.publish(CITIZEN_REPORT, r, event_id=f"report:{r.report_id}")
    number = report_number(r.report_id, r.reported_at)

    async def kept() -> bool:
        return (await desk.client.get(f"/v1/reports/{number}")).status == 200

    await wait_for(kept, within_s=10)
    return number


async def test_a_hotline_agent_moves_a_ticket_on_and_the_reporter_reads_the_reply(
        desk: Dept, browser: Any) -> None:
    now = Clock().now().replace(microsecond=0)
    app_report = await publish(desk, CitizenReport(
        report_id="app:m-1", channel="app", kind="road_damage", reported_at=now - timedelta(
            minutes=5), text="光谷大道路面塌陷", lon=114.41, lat=30.51))
    ticket = await publish(desk, CitizenReport(
        report_id="hotline_12328:t-1", channel="hotline_12328", kind="complaint",
        reported_at=now, text="512路公交车长时间不来", contact="138****5678"))

    watched = await open_console(browser, str(desk.client.make_url("/console/")))
    page = watched.page
    await page.locator("#signin-form").wait_for()
    await page.fill("#token", desk.tokens["hotline"])
    await page.click("#signin-submit")
    # A hotline agent has no warnings to watch: the console takes them to the desk.
    await page.locator("#desk").wait_for()
    assert page.url.endswith("/console/reports")
    rows = page.locator("#reports li")
    await rows.nth(1).wait_for()
    assert [await r.get_attribute("data-number") for r in await rows.all()] == [
        ticket, app_report], "newest first"

    await page.click(f'#reports li[data-number="{ticket}"]')
    await page.locator("#d-number", has_text=ticket).wait_for()
    assert "138****5678" in await page.locator("#d-fields").inner_text()
    await page.select_option("#sf-status", "reviewing")
    await page.fill("#sf-reply", "已转公交集团调度核查")
    await page.fill("#sf-note", "来电人第三次反映")
    await page.click("#sf-submit")
    await page.locator("#action-msg", has_text="核查中").wait_for()
    history = page.locator('#history tbody tr[data-status="reviewing"]')
    await history.wait_for()
    assert "hotline-1" in await history.inner_text()

    public = await (await desk.client.get(f"/v1/reports/{ticket}")).json()
    assert (public["status"], public["reply"]) == ("reviewing", "已转公交集团调度核查")
    assert "来电人第三次反映" not in str(public)

    # Finished tickets have their own filter; this one is still to do.
    await page.select_option("#f-status", "resolved,rejected")
    await page.locator("#empty").wait_for()
    assert await page.locator("#reports li").count() == 0
    # English at the flick of a switch, statuses included.
    await page.select_option("#f-status", "received,reviewing,confirmed")
    await page.locator(f'#reports li[data-number="{ticket}"]').wait_for()
    await page.click("#lang")
    await page.locator("#reports li .status", has_text="being checked").wait_for()
    watched.check()


async def test_a_role_that_does_not_handle_reports_is_told_so(desk: Dept, browser: Any
                                                              ) -> None:
    watched = await open_console(browser, str(desk.client.make_url("/console/reports")))
    page = watched.page
    await page.locator("#signin-msg", has_text="请先在值班台登录").wait_for()
    await page.goto(str(desk.client.make_url("/console/")))
    await page.fill("#token", desk.tokens["safety"])
    await page.click("#signin-submit")
    await page.locator("#who-name", has_text="safety-1").wait_for()
    assert await page.locator("#to-reports").is_hidden()
    await page.goto(str(desk.client.make_url("/console/reports")))
    await page.locator("#signin-msg", has_text="您的角色不处理市民报料").wait_for()
    assert await page.locator("#desk").is_hidden()
    watched.check()
