"""The duty console in a real headless Chromium: sign in, the live list, the workflow's buttons.

Debian's ``chromium`` driven by Playwright (``executable_path``, no downloaded browser), against
the real warning app (memory bus, SQLite, the bigdata stand-in's map) and, marked slow, against
``tti run --incident demo``. Locators only: the page's CSP forbids eval, so no
``wait_for_function`` strings. Locally a missing browser skips; in CI it fails.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from services.warning.workflow.store import WorkflowStore
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.db import database_from_url
from shared.events import SEGMENT_SPEED, TERMINAL_ALARM, TerminalAlarm
from shared.jt808 import MsgId, TextMessage
from tests.collector.jt808_support import command_cluster
from tests.publisher import wait_for
from tests.warning.support import window
from tests.warning.test_dept_api import QUEUE, Dept, start

BEIJING = timezone(timedelta(hours=8))
TIME_CELL = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
WAIT_MS = 20_000




class Console(Dept):
    """The dept API's harness, with a queue measured now: a browser test outlasts old data."""

    async def queue_warning(self) -> str:
        start = Clock().now().replace(microsecond=0) - timedelta(minutes=2)
        for m, kmh in ((0, 5.0), (1, 4.0)):
            for sid in QUEUE:
                w = window(sid, m, kmh)
                await self.bus.publish(SEGMENT_SPEED, replace(
                    w, window_start=start + timedelta(minutes=m),
                    observed_at=start + timedelta(minutes=m + 1)))

        async def raised() -> str | None:
            body = await (await self.client.get("/v1/dept/warnings",
                                                headers=self.auth("police"))).json()
            return str(body["warnings"][0]["warning_id"]) if body["count"] else None

        await wait_for(raised, within_s=20)
        found = await raised()
        assert found is not None
        return found


@pytest.fixture
async def dept(tmp_path: Path) -> AsyncIterator[Dept]:
    """The warning app with a user per role, and a second police officer (``police2``)."""
    db_url = f"sqlite:///{tmp_path}/tti.db"
    store = WorkflowStore(database_from_url(db_url))
    await store.open()
    now = Clock().now()
    tokens = {role: await store.add_user(f"{role}-1", role, now)
              for role in ("police", "safety", "transport", "admin")}
    tokens["police2"] = await store.add_user("police-2", "police", now)
    await store.close()
    bus = MemoryBus(partitions=2)
    await bus.start()
    client, bigdata = await start(tmp_path, db_url, bus)
    try:
        yield Console(client, bus, tokens, db_url)
    finally:
        await client.close()
        await bus.close()
        await bigdata.close()


class Watched:
    """A page with what it asked for and what the browser complained about."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                and "Content Security Policy" in m.text else None)

    def check(self) -> None:
        """No script error, no CSP violation, and not one request to another origin."""
        assert self.errors == []
        foreign = [u for u in self.requests if not u.startswith(self.origin)
                   and not u.startswith("data:")]
        assert foreign == [], "the console made external requests"


async def open_console(browser: Any, url: str, **context: Any) -> Watched:
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    origin = re.match(r"^https?://[^/]+", url)
    assert origin is not None
    watched = Watched(page, origin.group(0))
    await page.goto(url)
    return watched


async def sign_in(browser: Any, url: str, token: str, user: str, **context: Any) -> Watched:
    w = await open_console(browser, url, **context)
    page = w.page
    await page.locator("#signin-form").wait_for()
    await page.fill("#token", token)
    await page.click("#signin-submit")
    await page.locator("#who-name", has_text=user).wait_for()
    await page.locator('#conn[data-state="connected"]').wait_for()
    return w


async def act(page: Any, button: str, *, assignee: str | None = None,
              note: str | None = None) -> None:
    """Press an action button, fill its form if it has one, submit."""
    await page.click(f"#act-{button}")
    if button == "ack":
        return
    await page.locator("#action-form").wait_for()
    if assignee is not None:
        await page.fill("#af-assignee", assignee)
    if note is not None:
        await page.fill("#af-note", note)
    await page.click("#af-submit")


async def check_audit(page: Any, user: str, actions: list[str], trail: dict[str, Any]) -> None:
    """The audit panel lists ``actions`` by ``user``, at the API's times in Beijing time."""
    rows = page.locator('#audit tbody tr[data-outcome="ok"]')
    await rows.nth(len(actions) - 1).wait_for()
    ok = [e for e in trail["audit"] if e["outcome"] == "ok"]
    assert [e["action"] for e in ok] == actions and all(e["user"] == user for e in ok)
    for i, entry in enumerate(ok):
        cells = await rows.nth(i).locator("td").all_inner_texts()
        assert cells[1] == user, cells
        assert TIME_CELL.match(cells[0]), cells
        at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).astimezone(BEIJING)
        assert cells[0] == at.strftime("%Y-%m-%d %H:%M:%S"), "times are shown in Beijing time"


async def test_police_acknowledge_assign_and_close_in_the_console(dept: Dept, browser: Any
                                                                  ) -> None:
    url = str(dept.client.make_url("/console/"))
    a = await sign_in(browser, url, dept.tokens["police"], "police-1")
    page = a.page
    assert await page.locator("#tab-alarms").is_hidden(), "police do not see vehicle alarms"
    wid = await dept.queue_warning()
    item = page.locator(f'#warnings li[data-id="{wid}"]')
    await item.wait_for()
    assert "sev-severe" in (await item.get_attribute("class") or "") or \
        "sev-extreme" in (await item.get_attribute("class") or "")
    await page.locator("#toast", has_text="新预警").wait_for()  # it came live, with a sound
    await item.click()
    await page.locator('#d-status[data-status="raised"]').wait_for()
    # The queue, its area and, once computed, its detour are drawn on the map.
    await page.locator("#map path.shape-queue").first.wait_for(state="attached")
    await page.locator("#map path.shape-area").first.wait_for(state="attached")
    await page.locator("#map path.shape-detour").wait_for(state="attached")
    assert await page.locator("#map path.shape-queue").count() == 6

    await act(page, "ack")
    await page.locator('#d-status[data-status="acknowledged"]').wait_for()
    assert await page.locator("#act-ack").is_disabled(), "acknowledged already"
    await act(page, "assign", assignee="交警三大队")
    await page.locator('#d-status[data-status="assigned"]').wait_for()
    await page.locator("#d-assigned", has_text="交警三大队").wait_for()
    await act(page, "note", note="三大队已到场")
    await page.locator("#d-notes", has_text="三大队已到场").wait_for()

    # A colleague has the same warning open and starts to cancel it …
    b = await sign_in(browser, url, dept.tokens["police2"], "police-2")
    await b.page.locator(f'#warnings li[data-id="{wid}"]').click()
    await b.page.click("#act-cancel")
    await b.page.locator("#action-form").wait_for()
    # … while the first closes it.
    await act(page, "close")
    await page.locator('#d-status[data-status="closed"]').wait_for()
    await page.locator('#action-msg[data-kind="ok"]').wait_for()
    await b.page.click("#af-submit")
    msg = b.page.locator('#action-msg[data-kind="error"]')
    await msg.wait_for()
    text = await msg.inner_text()
    assert "409" in text and "only an active warning can be cancelled" in text, text
    await b.page.locator('#audit tbody tr[data-outcome="conflict"]', has_text="police-2"
                         ).wait_for()

    resp = await dept.client.get(f"/v1/dept/warnings/{wid}/audit", headers=dept.auth("police"))
    trail = await resp.json()
    await check_audit(page, "police-1", ["ack", "assign", "note", "close"],
                      {"audit": [e for e in trail["audit"] if e["user"] == "police-1"]})
    # Closed: it leaves the active list and is found under "ended".
    await page.locator(f'#warnings li[data-id="{wid}"]').wait_for(state="detached")
    await page.select_option("#f-status", "ended")
    await page.locator(f'#warnings li[data-id="{wid}"][data-status="closed"]').wait_for()
    a.check()
    b.check()


async def test_safety_sees_alarms_not_traffic_and_gets_403_on_a_traffic_warning(
        dept: Dept, browser: Any) -> None:
    wid = await dept.queue_warning()
    url = str(dept.client.make_url("/console/"))
    w = await sign_in(browser, url, dept.tokens["safety"], "safety-1")
    page = w.page
    await page.locator('#tab-alarms[aria-selected="true"]').wait_for()
    assert await page.locator("#tab-warnings").is_hidden()
    assert await page.locator(f'#warnings li[data-id="{wid}"]').count() == 0
    # The console offers safety no button on a traffic warning; the API refuses it anyway.
    status, body = await dept.post(f"/v1/dept/warnings/{wid}/ack", "safety")
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert "does not act on congestion" in body["error"]["message"]

    status, alarm = await dept.post("/v1/dept/warnings", "safety", {
        "kind": "vehicle_alarm", "headline": "危化品车辆超速 鄂A12345", "severity": "Severe",
        "lon": 114.31, "lat": 30.50, "radius_m": 200})
    assert status == 201, alarm
    item = page.locator(f'#warnings li[data-id="{alarm["warning_id"]}"]')
    await item.wait_for()
    await item.click()
    # Texting the driver is offered for alarms: a text no terminal can take is refused with
    # the reason; a good one is on its way, in the vehicle's log (nobody answers here).
    await page.locator("#act-text").wait_for()
    await page.click("#act-text")
    await page.fill("#af-vehicle", "13800000001")
    await page.fill("#af-note", "请立即减速🚚")
    await page.click("#af-submit")
    await page.locator('#action-msg[data-kind="error"]', has_text="422").wait_for()
    await page.locator("#action-msg", has_text="GBK").wait_for()
    await page.fill("#af-note", "请立即减速")
    await page.click("#af-submit")
    await page.locator('#action-msg[data-kind="ok"]', has_text="txt-").wait_for()
    row = page.locator('#commands tbody tr[data-status="requested"]', has_text="请立即减速")
    await row.wait_for()
    assert "safety-1" in await row.inner_text()
    await page.locator('#audit tbody tr[data-action="driver_text"][data-outcome="text_not_gbk"]'
                       ).wait_for()
    # The English toggle, and it persists.
    await page.click("#lang")
    await page.locator("#act-ack", has_text="Acknowledge").wait_for()
    await page.reload()
    await page.locator("#act-ack", has_text="Acknowledge").wait_for(state="attached")
    await page.locator("#tab-alarms", has_text="Vehicle alarms").wait_for()
    w.check()


async def test_a_text_to_the_driver_reaches_a_real_terminal_and_its_answer_the_console(
        dept: Dept, browser: Any, tmp_path: Path) -> None:
    phone = "13912345678"
    async with command_cluster(tmp_path, buses=[dept.bus]) as collector:
        terminal = await collector.replicas[0].terminal(phone)
        await terminal.login()
        await dept.bus.publish(TERMINAL_ALARM, TerminalAlarm(
            vehicle_id=phone, lon=114.301, lat=30.5, observed_at=Clock().now(),
            alarms=("emergency",), alarm_bits=1, vehicle_class="coach"), key=phone)
        url = str(dept.client.make_url("/console/"))
        w = await sign_in(browser, url, dept.tokens["safety"], "safety-1")
        page = w.page
        item = page.locator("#warnings li[data-id]").first
        await item.wait_for()
        await item.click()
        await page.locator("#commands-box").wait_for()
        await page.locator("#commands tbody td.muted").wait_for()  # nothing sent yet
        await page.click("#act-text")
        assert await page.input_value("#af-vehicle") == phone, "the alarm's vehicle"
        await page.fill("#af-note", "请立即靠边停车并报告情况")
        await page.uncheck("#af-flag-display")
        await page.click("#af-submit")
        await page.locator('#action-msg[data-kind="ok"]', has_text="txt-").wait_for()
        # The terminal gets the 0x8300 and answers; the console shows it without a reload.
        frame = await terminal.command()
        assert frame.msg_id == MsgId.P_TEXT_MESSAGE and isinstance(frame.body, TextMessage)
        assert frame.body.text == "请立即靠边停车并报告情况" and frame.body.flags == ["tts"]
        await page.locator('#commands tbody tr[data-status="sent"]').wait_for()
        await terminal.answer(frame, 0)
        row = page.locator('#commands tbody tr[data-status="acknowledged"]')
        await row.wait_for()
        assert "终端已确认（0x0001 结果 0）" in await row.inner_text()
        acked = page.locator('#audit tbody tr[data-action="driver_text"]'
                             '[data-outcome="acknowledged"]')
        await acked.wait_for()
        assert "车载终端" in await acked.inner_text()
        assert await page.locator('#audit tbody tr[data-action="driver_text"]').count() == 3
        await page.click("#lang")
        await page.locator("#commands tbody tr", has_text="terminal acknowledged (0x0001 "
                           "result 0)").wait_for()
        w.check()


async def test_without_a_session_the_page_asks_to_sign_in_and_the_api_says_401(
        dept: Dept, browser: Any) -> None:
    w = await open_console(browser, str(dept.client.make_url("/console/")))
    await w.page.locator("#signin-form").wait_for()
    assert await w.page.locator("#console").is_hidden()
    for path in ("/v1/dept/me", "/v1/dept/warnings", "/v1/dept/stream", "/v1/dept/map",
                 "/v1/dept/region"):
        assert (await dept.client.get(path)).status == 401, path
    await w.page.fill("#token", "wrong")
    await w.page.click("#signin-submit")
    await w.page.locator("#signin-error", has_text="401").wait_for()
    w.check()


async def test_the_page_and_its_files_are_served_strictly(dept: Dept) -> None:
    client = dept.client
    resp = await client.get("/console/")
    assert resp.status == 200 and resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert "img-src 'self' data:" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-cache"
    html = await resp.text()
    assert "<script>" not in html and "style=" not in html and "http" not in html.split(
        "<body>")[1], "no inline script or style, no absolute URL"
    resp = await client.get("/console", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "console/"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css"),
                       ("vendor/leaflet/leaflet.js", "text/javascript"),
                       ("vendor/leaflet/images/layers.png", "image/png")):
        resp = await client.get(f"/console/static/{name}")
        assert resp.status == 200 and resp.content_type == kind, name
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for name in ("index.html", "../__init__.py", "%2e%2e/__init__.py", "vendor/leaflet/LICENSE",
                 "vendor/leaflet/leaflet.js.map", "nope.js"):
        resp = await client.get(f"/console/static/{name}")
        assert resp.status == 404, name


async def test_the_map_data_needs_credentials_and_a_good_bbox(dept: Dept) -> None:
    client, auth = dept.client, dept.auth("police")
    region = await (await client.get("/v1/dept/region", headers=auth)).json()
    minlon, minlat, maxlon, maxlat = region["bbox"]
    assert minlon < maxlon and minlat < maxlat and region["segment_count"] > 0
    resp = await client.get("/v1/dept/map", headers=auth,
                            params={"bbox": f"{minlon},{minlat},{maxlon},{maxlat}"})
    fc = await resp.json()
    assert resp.status == 200 and fc["type"] == "FeatureCollection"
    assert fc["min_class"] == "all" and not fc["truncated"]
    ids = {f["properties"]["segment_id"] for f in fc["features"]}
    assert "1:0:1" in ids and "1:1:0" not in ids, "a two-way road is drawn once"
    assert fc["count"] == 12 * 2 + 13, "two roads of 12 pieces and 13 links"
    # A box around the first link only.
    resp = await client.get("/v1/dept/map", headers=auth,
                            params={"bbox": "114.2999,30.5005,114.3001,30.5020"})
    assert {f["properties"]["segment_id"] for f in (await resp.json())["features"]} == {"10:0:100"}
    for bad in ("1,2,3", "a,b,c,d", "114.4,30.5,114.3,30.6", "114,95,115,96", "nan,1,2,3"):
        resp = await client.get("/v1/dept/map", headers=auth, params={"bbox": bad})
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["code"] == "bad_request"
    wid = await dept.queue_warning()
    resp = await client.get(f"/v1/dept/warnings/{wid}/map", headers=auth)
    shapes = await resp.json()
    parts = [f["properties"]["part"] for f in shapes["features"]]
    assert parts.count("queue") == 6 and "area" in parts
    assert (await client.get(f"/v1/dept/warnings/{wid}/map",
                             headers=dept.auth("safety"))).status == 403
    assert (await client.get("/v1/dept/warnings/nope/map", headers=auth)).status == 404


async def test_a_console_that_lost_its_connection_shows_every_event_it_missed(
        dept: Dept, browser: Any) -> None:
    url = str(dept.client.make_url("/console/"))
    w = await sign_in(browser, url, dept.tokens["police"], "police-1")
    page = w.page
    wid = await dept.queue_warning()
    item = page.locator(f'#warnings li[data-id="{wid}"]')
    await item.click()
    await page.locator('#d-status[data-status="raised"]').wait_for()
    # The network goes: the browser is offline, and the server sees its connections drop.
    await page.context.set_offline(True)
    for conn in dept.client.server.runner.server.connections:  # type: ignore[union-attr]
        conn.force_close()
    await page.locator('#conn[data-state="reconnecting"]').wait_for()
    # While it is away: an acknowledgment, an assignment and a note by others.
    await dept.post(f"/v1/dept/warnings/{wid}/ack", "police2", {"note": "收到"})
    await dept.post(f"/v1/dept/warnings/{wid}/assign", "police2", {"assignee": "二大队"})
    await dept.post(f"/v1/dept/warnings/{wid}/notes", "police2", {"note": "封闭一条车道"})
    assert await page.locator('#d-status[data-status="raised"]').count() == 1, "it was away"
    await page.context.set_offline(False)
    await page.locator('#conn[data-state="connected"]').wait_for()
    await page.locator('#d-status[data-status="assigned"]').wait_for()
    await page.locator("#d-assigned", has_text="二大队").wait_for()
    await page.locator("#d-notes", has_text="封闭一条车道").wait_for()
    await page.locator("#d-notes", has_text="收到").wait_for()
    await page.locator('#audit tbody tr[data-action="note"]', has_text="police-2").wait_for()
    # A reload resumes from the last event it saw (kept in sessionStorage), not from nothing.
    last = await page.locator("#conn-last").inner_text()
    assert re.search(r"#\d+", last)
    await page.reload()
    await page.locator('#conn[data-state="connected"]').wait_for()
    await page.locator(f'#warnings li[data-id="{wid}"][data-status="assigned"]').wait_for()
    w.check()


async def test_wall_screen_side_by_side_and_phone_stacked(dept: Dept, browser: Any) -> None:
    url = str(dept.client.make_url("/console/"))
    boxes = {}
    for size, viewport in (("wall", {"width": 1920, "height": 1080}),
                           ("phone", {"width": 390, "height": 844})):
        w = await sign_in(browser, url, dept.tokens["police"], "police-1", viewport=viewport,
                          is_mobile=size == "phone", has_touch=size == "phone")
        boxes[size] = [await w.page.locator(sel).bounding_box()
                       for sel in (".list-pane", ".map-pane", ".detail-pane")]
        w.check()
    listed, mapped, detail = boxes["wall"]
    assert listed["x"] < mapped["x"] < detail["x"], "list | map | details"
    assert abs(listed["y"] - mapped["y"]) < 2 and mapped["height"] > 600
    listed, mapped, detail = boxes["phone"]
    assert listed["y"] < mapped["y"] < detail["y"], "stacked"
    assert mapped["width"] > 350 and mapped["height"] > 250


# --- the acceptance on the real system -------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.test_embedded_run import start_embedded

    yield from start_embedded(
        # More vehicles than the foundation's test: the incident's queue is seen sooner.
        tmp_path_factory.mktemp("console"), "--speed-window-s", "5", "--sim-interval-s", "1",
        "--vehicles", "300", "--incident", "demo@4+300:4")


def _run_database(work: Path) -> str:
    """The SQLite database ``tti run`` keeps under ``var/<region>/`` (one per region)."""
    found = sorted(work.glob("var/*/tti.db"))
    assert len(found) == 1, found
    return f"sqlite:///{found[0]}"


@pytest.mark.slow
async def test_acceptance_police_work_the_demo_incident_in_chromium(embedded: Any,
                                                                    browser: Any) -> None:
    base = embedded.base
    async with ClientSession() as http:
        async def ready() -> bool:
            try:
                async with http.get(base + "/readyz") as resp:
                    return resp.status == 200
            except OSError:
                return False

        await wait_for(ready, within_s=60)
        store = WorkflowStore(database_from_url(_run_database(embedded.log.parent)))
        await store.open()
        try:
            token = await store.add_user("张警官", "police", Clock().now())
            safety = await store.add_user("安监-1", "safety", Clock().now())
        finally:
            await store.close()
        url = base + "/warning/console/"
        w = await sign_in(browser, url, token, "张警官")
        page = w.page
        async with http.get(base + "/api/v1/sim") as resp:
            segment = (await resp.json())["demo_incident_segment"]

        async def incident_warning() -> str | None:
            async with http.get(base + "/warning/v1/dept/warnings",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                body = await resp.json()
            found = [x["warning_id"] for x in body["warnings"] if segment in x["segment_ids"]
                     and x["kind"] in ("congestion", "incident")]
            return found[0] if found else None

        await wait_for(incident_warning, within_s=120)  # about 30 s after ready, usually
        wid = await incident_warning()
        item = page.locator(f'#warnings li[data-id="{wid}"]')
        await item.click()
        await act(page, "ack")
        await page.locator('#d-status[data-status="acknowledged"]').wait_for()
        await act(page, "assign", assignee="交警三大队")
        await page.locator('#d-status[data-status="assigned"]').wait_for()
        await act(page, "close")
        await page.locator('#d-status[data-status="closed"]').wait_for()
        async with http.get(f"{base}/warning/v1/dept/warnings/{wid}/audit",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            trail = await resp.json()
        await check_audit(page, "张警官", ["ack", "assign", "close"], trail)
        async with http.post(f"{base}/warning/v1/dept/warnings/{wid}/ack",
                             headers={"Authorization": f"Bearer {safety}"}) as resp:
            assert resp.status == 403
        async with http.post(f"{base}/warning/v1/dept/warnings/{wid}/ack") as resp:
            assert resp.status == 401
        w.check()
