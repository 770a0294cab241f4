"""The 12328/12122 hotline desk API over the real publisher, bigdata and warning apps: spoken
answers by road, bridge, stop and route name; tickets on the bus, numbered and looked up; the
department users' credentials checked by the warning service."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.publisher.channels.hotline import clock, distance, sentences, speed
from services.publisher.channels.hotline_api import HOTLINE_AUTH, mask_phone
from services.publisher.channels.query import NotUnderstood
from services.warning.workflow.store import WorkflowStore
from shared.codec import Envelope, dumps
from shared.db import database_from_url
from shared.demo import DemoRegion, generate_demo_region
from shared.events import CITIZEN_REPORT, CitizenReport
from tests.publisher import wait_for
from tests.publisher.channels.demo_feeds import live_bus, road_status
from tests.publisher.stack import Stack, import_demo, running_stack

NUMBER = re.compile(r"^\d{8}-[A-Z2-7]{6}$")


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


async def tokens(stack: Stack, *roles: str) -> dict[str, str]:
    """Department users made as ``tti users add`` makes them, in the warning service's db."""
    store = WorkflowStore(database_from_url(stack.warning_db))
    await store.open()
    try:
        return {role: await store.add_user(f"{role}-1", role, stack.clock.now())
                for role in roles}
    finally:
        await store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ask(stack: Stack, token: str, q: str, status: int = 200, **params: str) -> Any:
    resp = await stack.client.get("/api/v1/hotline/answer", params={"q": q, **params},
                                  headers=bearer(token))
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_credentials_401_403_and_the_roles_that_may(stack: Stack) -> None:
    t = await tokens(stack, "hotline", "admin", "police")
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eA=="},
                    {"Authorization": "Bearer "}):
        resp = await stack.client.get("/api/v1/hotline/answer?q=路况", headers=headers)
        assert resp.status == 401, headers
        assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await stack.client.get("/api/v1/hotline/answer?q=路况", headers=bearer(t["police"]))
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
    for role in ("hotline", "admin"):
        body = await ask(stack, t[role], "路况")
        assert body["kind"] == "index"
    for url in ("/api/v1/hotline/tickets/20260303-AAAAAA",):
        assert (await stack.client.get(url)).status == 401
    assert (await stack.client.post("/api/v1/hotline/tickets", json={})).status == 401


async def test_a_known_credential_is_remembered_and_an_unreachable_checker_is_503(
        stack: Stack) -> None:
    t = await tokens(stack, "hotline", "admin")
    await ask(stack, t["hotline"], "路况")
    await stack.warning.close()  # the warning service goes away
    body = await ask(stack, t["hotline"], "路况")  # remembered for a minute
    assert body["kind"] == "index"
    resp = await stack.client.get("/api/v1/hotline/answer?q=路况", headers=bearer(t["admin"]))
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "warning_unavailable"


async def test_too_many_bad_credentials_from_one_address_are_refused(stack: Stack) -> None:
    app = stack.client.app
    assert app is not None
    app[HOTLINE_AUTH].max_failures = 3
    codes = []
    for i in range(5):
        resp = await stack.client.get("/api/v1/hotline/answer?q=路况",
                                      headers=bearer(f"guess-{i}"))
        codes.append(resp.status)
    assert codes == [401, 401, 401, 429, 429]


async def test_a_road_and_a_bridge_by_name_in_spoken_sentences(stack: Stack,
                                                               demo: DemoRegion) -> None:
    t = await tokens(stack, "hotline")
    jammed, *rest = demo.bridges[0].segment_ids
    await road_status(stack, jammed, 5, 6.0)
    for sid in rest:
        await road_status(stack, sid, 2, 40.0)
    body = await ask(stack, t["hotline"], "江城一桥现在堵不堵", line="12122")
    assert body["kind"] == "road_status" and body["line"] == "12122"
    assert body["q"] == "江城一桥现在堵不堵" and body["generated_at"].endswith("Z")
    said = body["sentences"]
    assert 1 <= len(said) <= 3 and body["text"] == "".join(said)
    assert said[0].startswith("江城一桥目前基本畅通，平均车速每小时")
    assert said[1] == "其中最拥堵的路段严重拥堵，车速每小时6公里。"
    for s in said:
        assert s.endswith("。") and len(s) <= 60
        assert not re.search(r"km|/h|%|[A-Za-z]", s), s
    tunnel = await ask(stack, t["hotline"], "江城隧道")
    assert tunnel["sentences"] == ["江城隧道暂无实时路况数据。"]


async def test_a_stop_and_a_route_at_it_by_name(stack: Stack) -> None:
    t = await tokens(stack, "hotline")
    await live_bus(stack)
    stop = await ask(stack, t["hotline"], "解放大道八一路")
    assert stop["kind"] == "stop_arrivals"
    # Both directions' platforms: the timetable's next bus one way, the tracked bus the other.
    assert stop["sentences"] == [
        "解放大道八一路站：1路往解放大道纬二十一路方向按时刻表9点01分到站，"
        "往解放大道青年路方向预计4分钟后到站。", "4分钟后到站的1路车内较拥挤。"]
    route = await ask(stack, t["hotline"], "1路 解放大道八一路")
    assert route["kind"] == "route_arrivals"
    assert route["sentences"] == [
        "1路往解放大道纬二十一路方向按时刻表9点01分到达解放大道八一路站。",
        "1路往解放大道青年路方向预计4分钟后到达解放大道八一路站，车内较拥挤。"]
    buses = await ask(stack, t["hotline"], "1路")
    assert buses["sentences"][0] == ("1路（解放大道纬二十一路至解放大道青年路）目前有1辆车在线"
                                     "运营。")
    assert buses["sentences"][1] == "最近一辆预计4分钟后到达解放大道八一路站，车内较拥挤。"
    unknown = await ask(stack, t["hotline"], "512路")
    assert unknown["kind"] == "not_understood"
    assert unknown["sentences"][0] == "没有找到512路公交线路。"
    assert unknown["sentences"][1].startswith("您可以这样问：1路")


async def test_bad_questions_are_json_400(stack: Stack) -> None:
    t = await tokens(stack, "hotline")
    for params in ({}, {"q": ""}, {"q": "路" * 101}, {"q": "路况", "line": "110"},
                   {"q": "停车", "near": "500,30"}):
        resp = await stack.client.get("/api/v1/hotline/answer", params=params,
                                      headers=bearer(t["hotline"]))
        assert resp.status == 400, params
        assert (await resp.json())["error"]["code"] in ("bad_request", "bad_field")


async def test_a_ticket_is_published_numbered_and_looked_up(stack: Stack) -> None:
    t = await tokens(stack, "hotline")
    seen: list[Envelope[CitizenReport]] = []

    async def on_report(env: Envelope[CitizenReport]) -> None:
        seen.append(env)

    await stack.bus.subscribe(CITIZEN_REPORT, on_report, durable="test-hotline")
    ticket = {"category": "投诉", "line": "12328", "caller": "138 1234 5678",
              "text": "1路司机拒载，在解放大道八一路站", "reference": "A-0001"}
    resp = await stack.client.post("/api/v1/hotline/tickets", json=ticket,
                                   headers=bearer(t["hotline"]))
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    number = body["number"]
    assert NUMBER.match(number) and resp.headers["Location"] == (
        f"/api/v1/hotline/tickets/{number}")
    assert body["category"] == "complaint" and body["category_name"] == "投诉"
    assert body["kind"] == "complaint" and body["channel"] == "hotline_12328"
    assert body["caller"] == "138****5678" and body["status"] == "received"
    await wait_for(lambda: len(seen) == 1)
    event = seen[0]
    report = event.payload
    assert event.event_id == f"report:{report.report_id}"
    assert report.channel == "hotline_12328" and report.kind == "complaint"
    assert report.contact == "138****5678"
    assert report.details["agent"] == "hotline-1" and report.details["reference"] == "A-0001"
    assert "12345678" not in dumps(report).decode() and "1234 5678" not in dumps(report).decode()

    # The agent's own reference makes a resend the same ticket.
    again = await stack.client.post("/api/v1/hotline/tickets", json=ticket,
                                    headers=bearer(t["hotline"]))
    assert again.status == 200 and (await again.json())["number"] == number

    async def owned() -> bool:
        r = await stack.client.get(f"/api/v1/hotline/tickets/{number}",
                                   headers=bearer(t["hotline"]))
        return r.status == 200 and (await r.json())["status_owner"] == "warning"

    await wait_for(owned, within_s=10)
    status = await (await stack.client.get(f"/api/v1/hotline/tickets/{number}",
                                           headers=bearer(t["hotline"]))).json()
    assert status["status_name"] == "已受理" and status["channel"] == "hotline_12328"
    assert "contact" not in status and "caller" not in status
    assert len(seen) == 1, "a resend is not a second report"
    missing = await stack.client.get("/api/v1/hotline/tickets/20260303-AAAAAA",
                                     headers=bearer(t["hotline"]))
    assert missing.status == 404

    # A 举报 of an accident, on the 12122 line, with an Idempotency-Key.
    accident = {"category": "report", "line": "12122", "kind": "accident",
                "text": "绕城高速两车追尾", "lon": 114.30, "lat": 30.55}
    headers = {**bearer(t["hotline"]), "Idempotency-Key": "call-7781"}
    first = await stack.client.post("/api/v1/hotline/tickets", json=accident, headers=headers)
    assert first.status == 201, await first.text()
    body = await first.json()
    assert (body["kind"], body["channel"], body["caller"]) == ("accident", "hotline_12122", None)
    again = await stack.client.post("/api/v1/hotline/tickets", json=accident, headers=headers)
    assert again.status == 200 and (await again.json())["number"] == body["number"]
    await wait_for(lambda: len(seen) == 2)
    assert (seen[1].payload.lon, seen[1].payload.lat) == (114.30, 30.55)


async def test_bad_tickets_are_json_400(stack: Stack) -> None:
    t = await tokens(stack, "hotline")
    good = {"category": "咨询", "line": "12328", "text": "江城一桥几点恢复通行"}
    for change in ({"category": "闲聊"}, {"line": "110"}, {"line": None}, {"text": ""},
                   {"caller": "call me"}, {"caller": "12"}, {"lon": 114.3},
                   {"lat": 95, "lon": 114.3}, {"kind": "accident"},
                   {"category": "举报", "kind": "volcano"},
                   {"category": "举报", "kind": "accident"},
                   {"segment_id": "no:such:road"}, {"text": "字" * 2001},
                   {"reference": "r" * 65}):
        body = {k: v for k, v in {**good, **change}.items() if v is not None}
        resp = await stack.client.post("/api/v1/hotline/tickets", json=body,
                                       headers=bearer(t["hotline"]))
        assert resp.status == 400, (change, await resp.text())
        assert (await resp.json())["error"]["code"] == "bad_field", change
    resp = await stack.client.post("/api/v1/hotline/tickets", data=b"{not json",
                                   headers={**bearer(t["hotline"]),
                                            "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_json"
    resp = await stack.client.post("/api/v1/hotline/tickets", data=orjson.dumps(good),
                                   headers={**bearer(t["hotline"]), "Content-Type": "text/plain"})
    assert resp.status == 400
    ok = await stack.client.post("/api/v1/hotline/tickets", json=good,
                                 headers=bearer(t["hotline"]))
    assert ok.status == 201


def test_spoken_numbers() -> None:
    from datetime import UTC, datetime

    assert speed(24.6) == "每小时25公里"
    assert distance(287) == "约290米" and distance(1540) == "约1.5公里"
    assert clock(datetime(2026, 3, 3, 1, 5, tzinfo=UTC)) == "9点05分"
    assert clock(datetime(2026, 3, 3, 6, 0, tzinfo=UTC)) == "14点整"
    assert mask_phone("+86 138-1234-5678") == "138****5678"
    assert mask_phone("027-87654321") == "027****4321"
    assert mask_phone("87654321") == "87****21"
    said = sentences(NotUnderstood(text="x", reason="needs_location", subject=None,
                                   examples=("路况",)))
    assert said == ["请说明您在哪里，例如一个站点或地名。", "您可以这样问：路况。"]
