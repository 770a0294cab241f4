"""Citizens' reports in the warning service's keeping: the store on both databases, the bus
consumer, the public status and the departments' desk."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from services.warning.api.public import SERVICE
from services.warning.app import create_app
from services.warning.workflow.reports import ReportStore
from services.warning.workflow.store import WorkflowStore
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.config import Config
from shared.db import Database, database_from_url
from shared.errors import BadRequest, Conflict, NotFound
from shared.events import CITIZEN_REPORT, CitizenReport, report_number
from tests.conftest import fresh_pg_database
from tests.publisher import wait_for
from tests.warning.support import bigdata_standin, build_network

T0 = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)


def report(n: int = 1, *, at: datetime = T0, channel: str = "app", kind: str = "accident",
           **kw: Any) -> CitizenReport:
    return CitizenReport(report_id=f"{channel}:r{n}", channel=channel, kind=kind,
                         reported_at=at, text=f"两车追尾 {n}", lon=114.4, lat=30.5,
                         contact="138****5678", **kw)


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Database]:
    db = database_from_url(url)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
                ) -> AsyncIterator[ReportStore]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            db = await stack.enter_async_context(opened(f"sqlite:///{tmp_path}/w.db"))
        else:
            dsn = await stack.enter_async_context(fresh_pg_database(unique_name))
            db = await stack.enter_async_context(opened(dsn))
        s = ReportStore(db)
        await s.migrate()
        yield s


async def test_a_report_is_kept_once_and_moves_only_forward(store: ReportStore) -> None:
    r = report()
    number = report_number(r.report_id, r.reported_at)
    assert await store.add(r, T0 + timedelta(seconds=1))
    assert not await store.add(r, T0 + timedelta(seconds=5)), "a redelivery is the same report"
    held = await store.find(number)
    assert held is not None and held.status == "received" and held.report == r
    assert held.received_at == T0 + timedelta(seconds=1)
    public = held.public()
    assert public["status_name"] == "已受理" and "contact" not in public
    assert held.full()["contact"] == "138****5678"

    at = T0 + timedelta(minutes=3)
    moved, changed = await store.set_status(number, "reviewing", user="hl-1", role="hotline",
                                            at=at, reply="正在核查", note="转三大队")
    assert changed and moved.status == "reviewing" and moved.reply == "正在核查"
    again, changed = await store.set_status(number, "reviewing", user="hl-1", role="hotline",
                                            at=at + timedelta(seconds=9), reply="正在核查",
                                            note="转三大队")
    assert not changed and again.status_at == at, "a retried request changes nothing"
    with pytest.raises(Conflict):
        await store.set_status(number, "received", user="x", role="police", at=at)
    with pytest.raises(BadRequest):
        await store.set_status(number, "lost", user="x", role="police", at=at)
    with pytest.raises(NotFound):
        await store.set_status("20260303-AAAAAA", "reviewing", user="x", role="police", at=at)
    done, _ = await store.set_status(number, "resolved", user="p-1", role="police",
                                     at=at + timedelta(minutes=20), reply="已清障",
                                     warning_id="w-1")
    assert done.public()["final"] and done.warning_id == "w-1"
    with pytest.raises(Conflict):
        await store.set_status(number, "resolved", user="p-1", role="police", at=at,
                               reply="改口")
    steps = [(h.status, h.user, h.note) for h in await store.history(number)]
    assert steps == [("reviewing", "hl-1", "转三大队"), ("resolved", "p-1", "")]

    # Resent the next day to another replica: numbered anew there, still the one report.
    later = dataclasses.replace(r, reported_at=T0 + timedelta(days=1))
    second = report_number(later.report_id, later.reported_at)
    assert second != number
    assert not await store.add(later, T0 + timedelta(days=1))
    again_found = await store.find(second)
    assert again_found is not None and again_found.number == number
    assert again_found.status == "resolved" and len(await store.history(second)) == 2


async def test_reports_are_listed_newest_first_by_status_and_channel(store: ReportStore
                                                                     ) -> None:
    for n in range(5):
        channel = "hotline_12328" if n % 2 else "app"
        await store.add(report(n, at=T0 + timedelta(minutes=n), channel=channel), T0)
    await store.set_status(report_number("app:r0", T0), "rejected", user="p", role="police",
                           at=T0)
    listed = await store.recent()
    assert [r.report.report_id for r in listed] == [
        "app:r4", "hotline_12328:r3", "app:r2", "hotline_12328:r1", "app:r0"]
    fresh = await store.recent(statuses=frozenset({"received"}), channels=frozenset({"app"}))
    assert [r.report.report_id for r in fresh] == ["app:r4", "app:r2"]
    older = await store.recent(before=T0 + timedelta(minutes=2), limit=1)
    assert [r.report.report_id for r in older] == ["hotline_12328:r1"]
    assert await store.prune(T0 + timedelta(days=181)) >= 5
    assert await store.recent() == []


# --- the service ----------------------------------------------------------------------------


class Desk:
    def __init__(self, client: TestClient[Any, Any], bus: MemoryBus,
                 tokens: dict[str, str]) -> None:
        self.client, self.bus, self.tokens = client, bus, tokens

    async def post(self, path: str, role: str, body: dict[str, Any]) -> tuple[int, Any]:
        resp = await self.client.post(path, data=orjson.dumps(body), headers={
            "Authorization": f"Bearer {self.tokens[role]}"})
        return resp.status, await resp.json()

    async def get(self, path: str, role: str | None = None, **params: str) -> tuple[int, Any]:
        headers = {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}
        resp = await self.client.get(path, params=params, headers=headers)
        return resp.status, await resp.json()


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    db_url = f"sqlite:///{tmp_path}/tti.db"
    users = WorkflowStore(database_from_url(db_url))
    await users.open()
    tokens = {role: await users.add_user(f"{role}-1", role, Clock().now())
              for role in ("police", "safety", "hotline")}
    await users.close()
    bus = MemoryBus(partitions=2)
    await bus.start()
    bigdata = TestServer(bigdata_standin(build_network()))
    await bigdata.start_server()
    app = create_app(Config(bigdata_url=str(bigdata.make_url("/")), db_url=db_url), bus=bus)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        await wait_for(lambda: app[SERVICE].ready.is_set(), within_s=20)
        yield Desk(client, bus, tokens)
    finally:
        await client.close()
        await bus.close()
        await bigdata.close()


def stored(result: str) -> float:
    return REGISTRY.get_sample_value("tti_warning_citizen_reports_total",
                                     {"result": result}) or 0.0


async def test_a_report_on_the_bus_is_kept_and_its_status_is_public(desk: Desk) -> None:
    rejected = stored("rejected")
    await desk.bus.publish(CITIZEN_REPORT, report(7, channel="carrier_pigeon"),
                           event_id="bad")
    r = report(8, channel="hotline_12122", kind="congestion")
    await desk.bus.publish(CITIZEN_REPORT, r, event_id=f"report:{r.report_id}")
    number = report_number(r.report_id, r.reported_at)

    async def kept() -> bool:
        return (await desk.get(f"/v1/reports/{number}"))[0] == 200

    await wait_for(kept, within_s=10)
    assert stored("rejected") == rejected + 1, "the unknown channel is refused and counted"
    status, public = await desk.get(f"/v1/reports/{number}")
    assert public["status"] == "received" and public["channel"] == "hotline_12122"
    assert "contact" not in public and public["status_owner"] == "warning"
    assert (await desk.get("/v1/reports/20260303-AAAAAA"))[0] == 404
    assert (await desk.get("/v1/reports/not-a-number"))[0] == 404

    assert (await desk.get("/v1/dept/reports"))[0] == 401
    assert (await desk.get("/v1/dept/reports", "safety"))[0] == 403
    status, listed = await desk.get("/v1/dept/reports", "hotline", status="received")
    assert status == 200 and [x["number"] for x in listed["reports"]] == [number]
    assert listed["reports"][0]["contact"] == "138****5678"
    assert (await desk.get("/v1/dept/reports", "hotline", status="lost"))[0] == 400

    path = f"/v1/dept/reports/{number}/status"
    status, body = await desk.post(path, "safety", {"status": "reviewing"})
    assert status == 403
    status, body = await desk.post(path, "hotline", {"status": "reviewing",
                                                     "reply": "已转交警核查",
                                                     "note": "来电人情绪激动"})
    assert status == 200 and body["changed"] and body["status"] == "reviewing"
    status, body = await desk.post(path, "hotline", {"status": "reviewing",
                                                     "reply": "已转交警核查",
                                                     "note": "来电人情绪激动"})
    assert status == 200 and not body["changed"]
    status, body = await desk.post(path, "police", {"status": "received"})
    assert status == 409 and body["error"]["code"] == "bad_transition"
    status, body = await desk.post(path, "police", {"status": "confirmed",
                                                    "warning_id": "no-such-warning"})
    assert status == 400 and body["error"]["code"] == "unknown_warning"
    status, body = await desk.post(path, "police", {"status": "resolved", "reply": "已疏通"})
    assert status == 200 and body["final"]

    _, public = await desk.get(f"/v1/reports/{number}")
    assert (public["status"], public["status_name"], public["reply"]) == (
        "resolved", "已办结", "已疏通")
    assert "来电人情绪激动" not in orjson.dumps(public).decode(), "notes stay inside"
    _, one = await desk.get(f"/v1/dept/reports/{number}", "police")
    assert [(h["status"], h["user"]) for h in one["history"]] == [
        ("reviewing", "hotline-1"), ("resolved", "police-1")]
