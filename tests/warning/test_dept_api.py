"""The departments' API: credentials and roles, the lifecycle with its audit, the stream, restarts.

The real warning app on the real memory bus and SQLite, a bigdata stand-in for the map.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from services.warning.api.public import SERVICE
from services.warning.app import create_app
from services.warning.workflow.store import WorkflowStore
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.db import database_from_url
from shared.events import (
    COMMAND_OUTCOME,
    SEGMENT_SPEED,
    TERMINAL_ALARM,
    TERMINAL_COMMAND,
    CommandOutcome,
    TerminalAlarm,
    TerminalCommand,
    VehiclePosition,
)
from tests.publisher import wait_for
from tests.warning.support import LON0, T0, bigdata_standin, build_network, main_road, window

NETWORK = build_network()
QUEUE = main_road(NETWORK, 2, 7)


class Dept:
    """A running warning service and the tokens of its users."""

    def __init__(self, client: TestClient[Any, Any], bus: MemoryBus, tokens: dict[str, str],
                 db_url: str) -> None:
        self.client = client
        self.bus = bus
        self.tokens = tokens
        self.db_url = db_url

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def queue_warning(self) -> str:
        for m, kmh in ((0, 5.0), (1, 4.0)):
            for sid in QUEUE:
                await self.bus.publish(SEGMENT_SPEED, window(sid, m, kmh))

        async def raised() -> bool:
            body = await (await self.client.get("/v1/dept/warnings",
                                                headers=self.auth("police"))).json()
            return body["count"] == 1

        await wait_for(raised, within_s=20)
        body = await (await self.client.get("/v1/dept/warnings",
                                            headers=self.auth("police"))).json()
        return str(body["warnings"][0]["warning_id"])

    async def post(self, path: str, role: str, body: dict[str, Any] | None = None
                   ) -> tuple[int, Any]:
        resp = await self.client.post(path, headers=self.auth(role),
                                      data=orjson.dumps(body or {}))
        return resp.status, await resp.json()


async def start(tmp_path: Path, db_url: str, bus: MemoryBus) -> tuple[TestClient[Any, Any],
                                                                      TestServer]:
    bigdata = TestServer(bigdata_standin(NETWORK))
    await bigdata.start_server()
    app = create_app(Config(bigdata_url=str(bigdata.make_url("/")), db_url=db_url), bus=bus)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    await wait_for(lambda: app[SERVICE].ready.is_set(), within_s=20)
    return client, bigdata


@pytest.fixture
async def dept(tmp_path: Path) -> AsyncIterator[Dept]:
    db_url = f"sqlite:///{tmp_path}/tti.db"
    store = WorkflowStore(database_from_url(db_url))
    await store.open()
    now = Clock().now()
    tokens = {role: await store.add_user(f"{role}-1", role, now)
              for role in ("police", "safety", "transport", "admin", "hotline")}
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


async def test_no_or_bad_credentials_get_401(dept: Dept) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        resp = await dept.client.get("/v1/dept/warnings", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] in ("unauthorized", "session_ended")
    resp = await dept.client.post("/v1/dept/warnings/x/ack")
    assert resp.status == 401


async def test_police_acknowledge_assign_and_close_with_an_audit(dept: Dept) -> None:
    wid = await dept.queue_warning()
    status, body = await dept.post(f"/v1/dept/warnings/{wid}/ack", "safety")
    assert status == 403 and body["error"]["code"] == "forbidden", "safety acts on alarms"
    status, w = await dept.post(f"/v1/dept/warnings/{wid}/ack", "police", {"note": "收到"})
    assert status == 200 and w["status"] == "acknowledged" and w["msg_type"] == "Ack"
    status, body = await dept.post(f"/v1/dept/warnings/{wid}/ack", "police")
    assert status == 409, "acknowledged already"
    status, w = await dept.post(f"/v1/dept/warnings/{wid}/assign", "police",
                                {"assignee": "交警三大队"})
    assert status == 200 and w["status"] == "assigned"
    assert w["details"]["assigned_to"] == "交警三大队"
    status, w = await dept.post(f"/v1/dept/warnings/{wid}/notes", "police",
                                {"note": "三大队已到场"})
    assert status == 200 and w["details"]["notes"][-1]["text"] == "三大队已到场"
    status, w = await dept.post(f"/v1/dept/warnings/{wid}/close", "police")
    assert status == 200 and w["status"] == "closed" and not w["active"]
    resp = await dept.client.get(f"/v1/dept/warnings/{wid}/audit", headers=dept.auth("police"))
    trail = await resp.json()
    done = [(e["action"], e["user"], e["outcome"]) for e in trail["audit"]]
    assert done == [("ack", "safety-1", "forbidden"), ("ack", "police-1", "ok"),
                    ("ack", "police-1", "conflict"), ("assign", "police-1", "ok"),
                    ("note", "police-1", "ok"), ("close", "police-1", "ok")]
    assert all(e["at"].endswith("Z") and e["address"] for e in trail["audit"])
    # One status per version (the detour comes as a second message of whichever version is
    # current when it is computed).
    by_version = {m["version"]: m["status"] for m in trail["messages"]}
    assert [by_version[v] for v in sorted(by_version)][-4:] == [
        "acknowledged", "assigned", "assigned", "closed"]
    # The queue goes on, but the closed warning does not come back as a new one.
    for sid in QUEUE:
        await dept.bus.publish(SEGMENT_SPEED, window(sid, 2, 4.0))
    await asyncio.sleep(0.3)
    body = await (await dept.client.get("/v1/dept/warnings", headers=dept.auth("police"))).json()
    assert body["count"] == 0


async def test_roles_see_what_concerns_them(dept: Dept) -> None:
    await dept.queue_warning()
    for role, count in (("police", 1), ("transport", 1), ("admin", 1), ("safety", 0)):
        body = await (await dept.client.get("/v1/dept/warnings", headers=dept.auth(role))).json()
        assert body["count"] == count, role
    assert (await dept.client.get("/v1/dept/alarms", headers=dept.auth("police"))).status == 403
    assert (await dept.client.get("/v1/dept/alarms", headers=dept.auth("safety"))).status == 200


async def test_a_closure_raised_by_hand_closes_the_road_for_routing(dept: Dept) -> None:
    closed = main_road(NETWORK, 5, 5)
    status, w = await dept.post("/v1/dept/warnings", "police", {
        "kind": "closure", "headline": "解放大道施工封闭", "segment_ids": closed,
        "severity": "Severe", "expected_end": "2026-12-04T06:00:00+08:00"})
    assert status == 201, w
    assert w["kind"] == "closure" and w["status"] == "raised" and w["segment_ids"] == closed
    assert w["details"]["raised_by"] == "police-1"
    status, body = await dept.post("/v1/dept/warnings", "safety", {
        "kind": "closure", "headline": "x", "segment_ids": closed})
    assert status == 403
    status, body = await dept.post("/v1/dept/warnings", "police", {"kind": "congestion",
                                                                   "headline": "x"})
    assert status == 400 and "measured" in body["error"]["message"]
    service = dept.client.app[SERVICE]
    await service._refresh_weights()
    resp = await dept.client.get("/v1/route", params={
        "from": f"{LON0 + 0.0005},30.50002", "to": f"{LON0 + 0.028},30.50002"})
    route = (await resp.json())["routes"][0]
    assert closed[0] not in route["segment_ids"], "the route goes round the closure"
    status, w = await dept.post(f"/v1/dept/warnings/{w['warning_id']}/cancel", "police")
    assert status == 200 and w["status"] == "cancelled" and w["msg_type"] == "Cancel"


async def test_the_console_session_needs_its_csrf_token_to_write(dept: Dept) -> None:
    wid = await dept.queue_warning()
    resp = await dept.client.post("/v1/dept/session",
                                  data=orjson.dumps({"token": dept.tokens["police"]}))
    assert resp.status == 200
    session = await resp.json()
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    me = await (await dept.client.get("/v1/dept/me")).json()  # the cookie jar sends it
    assert me["user"] == "police-1" and me["csrf"] == session["csrf"]
    resp = await dept.client.post(f"/v1/dept/warnings/{wid}/ack")
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "csrf"
    resp = await dept.client.post(f"/v1/dept/warnings/{wid}/ack",
                                  headers={"X-CSRF-Token": session["csrf"]})
    assert resp.status == 200
    resp = await dept.client.delete("/v1/dept/session", headers={"X-CSRF-Token": session["csrf"]})
    assert resp.status == 200
    assert (await dept.client.get("/v1/dept/me")).status == 401


async def test_sign_in_attempts_are_rate_limited(dept: Dept) -> None:
    codes = [(await dept.client.post("/v1/dept/session",
                                     data=orjson.dumps({"token": "guess"}))).status
             for _ in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]


async def _read_events(client: TestClient[Any, Any], headers: dict[str, str],
                       until: Callable[[dict[str, Any]], bool]
                       ) -> list[tuple[int, dict[str, Any]]]:
    """Events of the stream until one satisfies ``until``."""
    events: list[tuple[int, dict[str, Any]]] = []
    async with client.get("/v1/dept/stream", headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        event_id, data = None, None
        async with asyncio.timeout(20):
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    data = orjson.loads(line[6:])
                elif line == "" and event_id is not None and data is not None:
                    events.append((event_id, data))
                    event_id, data = None, None
                    if until(events[-1][1]):
                        break
    return events


async def test_a_console_that_lost_its_stream_gets_every_event_it_missed(dept: Dept) -> None:
    wid = await dept.queue_warning()
    first = await _read_events(dept.client, {**dept.auth("police"), "Last-Event-ID": "0"},
                               lambda w: w["detour"] is not None)  # raised, then its detour
    last_seen = first[-1][0]
    assert first[0][1]["warning_id"] == wid and first[0][1]["version"] == 1
    # While it is away: an acknowledgment and a note.
    await dept.post(f"/v1/dept/warnings/{wid}/ack", "police")
    await dept.post(f"/v1/dept/warnings/{wid}/notes", "police", {"note": "n1"})
    missed = await _read_events(dept.client, {**dept.auth("police"),
                                              "Last-Event-ID": str(last_seen)},
                                lambda w: bool(w["details"].get("notes")))
    assert all(seq > last_seen for seq, _ in missed)
    assert [w["status"] for _, w in missed] == ["acknowledged", "acknowledged"]
    assert missed[-1][1]["details"]["notes"][-1]["text"] == "n1"
    # Safety sees none of the traffic warnings on its stream.
    async with dept.client.get("/v1/dept/stream", headers={**dept.auth("safety"),
                                                           "Last-Event-ID": "0"}) as resp:
        chunk = await asyncio.wait_for(resp.content.readany(), 5)
        assert b"event: warning" not in chunk


async def test_acknowledged_warnings_survive_a_restart(dept: Dept, tmp_path: Path) -> None:
    wid = await dept.queue_warning()
    await dept.post(f"/v1/dept/warnings/{wid}/ack", "police")
    await dept.client.close()
    bus = MemoryBus(partitions=2)
    await bus.start()
    client, bigdata = await start(tmp_path, dept.db_url, bus)
    try:
        body = await (await client.get("/v1/dept/warnings", headers=dept.auth("police"))).json()
        assert [(w["warning_id"], w["status"]) for w in body["warnings"]] == [
            (wid, "acknowledged")]
    finally:
        await client.close()
        await bus.close()
        await bigdata.close()


async def test_every_cap_document_of_a_lifecycle_validates(dept: Dept) -> None:
    import xmlschema

    schema = xmlschema.XMLSchema(str(Path(__file__).parents[1] / "data" / "CAP-v1.2.xsd"))
    wid = await dept.queue_warning()
    await dept.post(f"/v1/dept/warnings/{wid}/ack", "police")
    await dept.post(f"/v1/dept/warnings/{wid}/assign", "police", {"assignee": "三大队"})
    await dept.post(f"/v1/dept/warnings/{wid}/close", "police")
    trail = await (await dept.client.get(f"/v1/dept/warnings/{wid}/audit",
                                         headers=dept.auth("police"))).json()
    versions = sorted({m["version"] for m in trail["messages"]})
    assert len(versions) >= 4
    kinds = []
    for version in versions:
        resp = await dept.client.get(f"/v1/cap/{wid}.xml", params={"version": str(version)})
        assert resp.status == 200 and resp.content_type == "application/cap+xml"
        doc = await resp.read()
        schema.validate(doc)
        kinds.append(schema.to_dict(doc)["msgType"])
    assert kinds[0] == "Alert" and "Ack" in kinds and kinds[-1] == "Update"
    latest = await (await dept.client.get(f"/v1/cap/{wid}.xml")).read()
    assert schema.to_dict(latest)["info"][0]["responseType"] == ["AllClear"]
    assert (await dept.client.get("/v1/cap/nope.xml")).status == 404
    restricted = await dept.client.get(f"/v1/dept/cap/{wid}.xml", headers=dept.auth("police"))
    assert restricted.status == 200
    assert (await dept.client.get(f"/v1/dept/cap/{wid}.xml",
                                  headers=dept.auth("safety"))).status == 403


# --- texts to drivers -------------------------------------------------------------------------

VEHICLE = "13800000001"


async def sos_alarm(dept: Dept) -> str:
    """A vehicle alarm raised by the terminal alarm rule (an SOS), its warning id."""
    await dept.bus.publish(TERMINAL_ALARM, TerminalAlarm(
        vehicle_id=VEHICLE, lon=LON0, lat=30.5, observed_at=T0, alarms=("emergency",),
        alarm_bits=1, vehicle_class="coach"), key=VEHICLE)

    async def raised() -> bool:
        body = await (await dept.client.get("/v1/dept/alarms", headers=dept.auth("safety"))
                      ).json()
        return body["count"] == 1

    await wait_for(raised, within_s=20)
    body = await (await dept.client.get("/v1/dept/alarms", headers=dept.auth("safety"))).json()
    return str(body["warnings"][0]["warning_id"])


async def commands_on_the_bus(dept: Dept) -> list[TerminalCommand]:
    """Every TerminalCommand published from now on (the collector's view of the subject)."""
    seen: list[TerminalCommand] = []

    async def keep(env: Envelope[TerminalCommand]) -> None:
        seen.append(env.payload)

    await dept.bus.subscribe(TERMINAL_COMMAND, keep, durable="test-collector")
    return seen


async def test_texting_a_driver_needs_credentials_and_a_role_that_may(dept: Dept) -> None:
    wid = await sos_alarm(dept)
    path = f"/v1/dept/vehicles/{VEHICLE}/messages"
    resp = await dept.client.post(path, data=orjson.dumps({"text": "请停车"}))
    assert resp.status == 401
    assert (await dept.client.get(path)).status == 401
    for role, body in (("hotline", {"text": "请停车"}),
                       ("police", {"text": "请停车"}),  # police: only about their warnings
                       ("police", {"text": "请停车", "warning_id": wid})):  # not an alarm's
        status, answer = await dept.post(path, role, body)
        assert status == 403 and answer["error"]["code"] == "forbidden", (role, body)
    assert (await dept.client.get(path, headers=dept.auth("hotline"))).status == 403
    status, answer = await dept.post(path, "safety", {"text": "请停车", "warning_id": "nope"})
    assert status == 404
    status, answer = await dept.post("/v1/dept/vehicles/999/messages", "safety",
                                     {"text": "请停车", "warning_id": wid})
    assert status == 422 and answer["error"]["code"] == "other_vehicle"
    trail = await (await dept.client.get(f"/v1/dept/warnings/{wid}/audit",
                                         headers=dept.auth("safety"))).json()
    assert [(e["user"], e["outcome"]) for e in trail["audit"]
            if e["action"] == "driver_text"] == [("police-1", "forbidden"),
                                                 ("safety-1", "other_vehicle")]


async def test_a_text_no_terminal_can_take_is_422_with_the_reason(dept: Dept) -> None:
    seen = await commands_on_the_bus(dept)
    path = f"/v1/dept/vehicles/{VEHICLE}/messages"
    for body, code, words in (
            ({"text": "   "}, "empty_text", "non-empty"),
            ({}, "empty_text", "non-empty"),
            ({"text": "减速" * 101}, "text_too_long", "202 characters"),
            ({"text": "前方拥堵🚗请绕行"}, "text_not_gbk", "GBK"),
            ({"text": "ok\x07"}, "text_control_chars", "U+0007"),
            ({"text": "请减速", "flags": ["tts", "siren"]}, "bad_flags", "siren"),
            ({"text": "请减速", "flags": "tts"}, "bad_flags", "list")):
        status, answer = await dept.post(path, "safety", body)
        assert status == 422, body
        assert answer["error"]["code"] == code and words in answer["error"]["message"], answer
    status, _ = await dept.post("/v1/dept/vehicles/bad%20id/messages", "safety", {"text": "x"})
    assert status == 400
    await asyncio.sleep(0.1)
    assert seen == [], "nothing went to the terminal"
    listed = await (await dept.client.get(path, headers=dept.auth("safety"))).json()
    assert listed["count"] == 0


async def test_a_text_goes_to_the_terminal_and_its_outcomes_onto_the_alarm(dept: Dept) -> None:
    wid = await sos_alarm(dept)
    seen = await commands_on_the_bus(dept)
    path = f"/v1/dept/vehicles/{VEHICLE}/messages"
    status, answer = await dept.post(path, "safety", {
        "text": "请立即靠边停车并报告情况", "flags": ["tts", "display", "emergency"],
        "warning_id": wid})
    assert status == 202, answer
    assert answer["duplicate"] is False and answer["status"] == "requested"
    await wait_for(lambda: len(seen) == 1)
    cmd = seen[0]
    assert cmd.command_id == answer["command_id"] and cmd.vehicle_id == VEHICLE
    assert (cmd.kind, cmd.text, cmd.flags) == ("text", "请立即靠边停车并报告情况",
                                               ("tts", "display", "emergency"))
    assert cmd.requested_by == "safety-1" and cmd.correlation == wid
    assert (cmd.expires_at - cmd.requested_at).total_seconds() == 600.0
    # The same request again (a double click) is the same command; an explicit key is its own.
    status, again = await dept.post(path, "safety", {
        "text": "请立即靠边停车并报告情况", "flags": ["tts", "display", "emergency"],
        "warning_id": wid})
    assert status == 202 and again["command_id"] == cmd.command_id and again["duplicate"]
    keyed = {**dept.auth("transport"), "Idempotency-Key": "k-1"}
    first = await (await dept.client.post(path, headers=keyed,
                                          data=orjson.dumps({"text": "请减速"}))).json()
    repeat = await dept.client.post(path, headers=keyed, data=orjson.dumps({"text": "请减速"}))
    assert (await repeat.json())["command_id"] == first["command_id"] != cmd.command_id
    other = await dept.client.post(path, headers=keyed, data=orjson.dumps({"text": "别的"}))
    assert other.status == 409
    # The collector's outcomes, one redelivered: each is recorded once on the alarm.
    heard_again = _repeats()
    for status_, result, detail in (("sent", None, "0x8300 serial 7"),
                                    ("acknowledged", 0, "terminal answered 0x0001 result 0"),
                                    ("acknowledged", 0, "terminal answered 0x0001 result 0")):
        await dept.bus.publish(COMMAND_OUTCOME, CommandOutcome(
            command_id=cmd.command_id, vehicle_id=VEHICLE, kind="text", status=status_,
            at=cmd.requested_at, replica=0, detail=detail, result=result,
            result_text="success" if result == 0 else "", correlation=wid), key=VEHICLE)

    async def trail() -> list[dict[str, Any]]:
        body = await (await dept.client.get(f"/v1/dept/warnings/{wid}/audit",
                                            headers=dept.auth("safety"))).json()
        return [e for e in body["audit"] if e["action"] == "driver_text"]

    await wait_for(lambda: _repeats() == heard_again + 1)  # the third one was handled
    entries = await trail()
    assert [(e["user"], e["outcome"]) for e in entries] == [
        ("safety-1", "ok"), ("safety-1", "duplicate"), (f"terminal {VEHICLE}", "sent"),
        (f"terminal {VEHICLE}", "acknowledged")]
    assert entries[0]["details"]["command_id"] == cmd.command_id
    assert entries[-1]["details"]["summary_en"] == "terminal acknowledged (0x0001 result 0)"
    listed = await (await dept.client.get(path, headers=dept.auth("safety"))).json()
    assert listed["count"] == 2
    mine = next(c for c in listed["commands"] if c["command_id"] == cmd.command_id)
    assert mine["status"] == "acknowledged" and mine["warning_id"] == wid
    assert [o["status"] for o in mine["outcomes"]] == ["sent", "acknowledged"]
    assert mine["requested_at"].endswith("Z")
    # Police read none of them: no command concerns a warning they see.
    police = await (await dept.client.get(path, headers=dept.auth("police"))).json()
    assert police["count"] == 0


def _repeats() -> float:
    """Outcomes the warning service heard a second time (and recorded nothing for)."""
    return REGISTRY.get_sample_value("tti_warning_command_outcomes_total",
                                     {"status": "acknowledged", "new": "no"}) or 0.0


async def test_every_route_of_the_warning_app_is_in_the_openapi_document(dept: Dept) -> None:
    from openapi_spec_validator import validate

    doc = await (await dept.client.get("/openapi.json")).json()
    validate(doc)
    routes = {(r.method.lower(), r.resource.canonical) for r in dept.client.app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert routes - documented == set(), "routes missing from /openapi.json"
    assert documented - routes == set(), "documented routes the app does not serve"
    for path in ("/v1/dept/vehicles/{vehicle_id}/messages", "/console/", "/v1/dept/map"):
        assert path in doc["paths"], path
    text = doc["paths"]["/v1/dept/vehicles/{vehicle_id}/messages"]["post"]
    assert {"202", "401", "403", "422"} <= set(text["responses"])


async def test_acknowledging_an_sos_confirms_it_to_the_terminal(dept: Dept) -> None:
    wid = await sos_alarm(dept)
    seen = await commands_on_the_bus(dept)
    status, body = await dept.post(f"/v1/dept/warnings/{wid}/ack", "safety")
    assert status == 200, body
    await wait_for(lambda: any(c.kind == "alarm_confirm" for c in seen))
    (confirm,) = [c for c in seen if c.kind == "alarm_confirm"]
    # 0x8203: every report of the emergency alarm (serial 0), bit 0, about this warning.
    assert (confirm.vehicle_id, confirm.alarm_serial, confirm.alarm_type) == (VEHICLE, 0, 1)
    assert confirm.correlation == wid and confirm.requested_by == "safety-1"
    await dept.bus.publish(COMMAND_OUTCOME, CommandOutcome(
        command_id=confirm.command_id, vehicle_id=VEHICLE, kind="alarm_confirm",
        status="acknowledged", at=confirm.requested_at, replica=0, result=0,
        correlation=wid), key=VEHICLE)

    async def confirmed() -> bool:
        body = await (await dept.client.get(f"/v1/dept/warnings/{wid}/audit",
                                            headers=dept.auth("safety"))).json()
        return any(e["action"] == "terminal_alarm_confirm" and e["outcome"] == "acknowledged"
                   for e in body["audit"])

    await wait_for(confirmed)
    # A queue warning's acknowledgment sends nothing to any terminal.
    qid = await dept.queue_warning()
    before = len(seen)
    status, _ = await dept.post(f"/v1/dept/warnings/{qid}/ack", "police")
    assert status == 200
    await asyncio.sleep(0.2)
    assert [c.kind for c in seen[before:]] == []


async def test_a_position_query_brings_back_where_the_vehicle_is(dept: Dept) -> None:
    path = f"/v1/dept/vehicles/{VEHICLE}/position-query"
    assert (await dept.client.post(path)).status == 401
    status, body = await dept.post(path, "hotline")
    assert status == 403, body
    seen = await commands_on_the_bus(dept)
    status, body = await dept.post(path, "transport")
    assert status == 202, body
    await wait_for(lambda: len(seen) == 1)
    (cmd,) = seen
    assert (cmd.kind, cmd.vehicle_id, cmd.command_id) == ("position_query", VEHICLE,
                                                          body["command_id"])
    at = cmd.requested_at
    await dept.bus.publish(COMMAND_OUTCOME, CommandOutcome(
        command_id=cmd.command_id, vehicle_id=VEHICLE, kind="position_query",
        status="acknowledged", at=at, replica=0, position=VehiclePosition(
            vehicle_id=VEHICLE, lon=LON0, lat=30.5, observed_at=at, speed_kmh=42.0)),
        key=VEHICLE)

    async def answered() -> dict[str, Any] | None:
        listed = await (await dept.client.get(f"/v1/dept/vehicles/{VEHICLE}/messages",
                                              headers=dept.auth("transport"))).json()
        done = [c for c in listed["commands"] if c["status"] == "acknowledged"]
        return done[0] if done else None

    await wait_for(answered)
    got = await answered()
    assert got is not None and got["kind"] == "position_query"
    assert got["summary_en"] == "terminal reported its position (0x0201)"
    position = got["outcomes"][-1]["position"]
    assert (position["lon"], position["lat"], position["speed_kmh"]) == (LON0, 30.5, 42.0)
