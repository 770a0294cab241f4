"""Detectors over HTTP: strict validation, partial acceptance, limits, events on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

from services.collector.app import create_app
from services.collector.detectors import (
    EVENT_SCHEMA,
    READING_SCHEMA,
    REASONS,
    DetectorIntake,
    InvalidRecord,
    add_detector_routes,
    openapi_paths,
    parse_event,
    parse_reading,
    parse_rfc3339,
)
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.events import (
    DETECTED_EVENT,
    DETECTED_EVENT_KINDS,
    DETECTOR_READING,
    DetectedEvent,
    DetectorReading,
)
from shared.service import create_base_app
from tests.conftest import FlakyBus

READINGS = "/api/v1/detectors/{}/readings"
EVENTS = "/api/v1/detectors/{}/events"


def iso(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


def reading(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"observed_at": iso(-30), "interval_s": 60, "vehicle_count": 17,
                            "mean_speed_kmh": 43.5, "occupancy_pct": 9.5}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def event(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "stopped_vehicle", "observed_at": iso(-5),
                            "event_id": "cam17-0001", "confidence": 0.9, "lane": 2}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


@dataclass
class Sink:
    """Everything the detector subjects delivered on the bus."""

    readings: list[DetectorReading] = field(default_factory=list)
    events: list[DetectedEvent] = field(default_factory=list)

    async def on_reading(self, env: Envelope[DetectorReading]) -> None:
        self.readings.append(env.payload)

    async def on_event(self, env: Envelope[DetectedEvent]) -> None:
        self.events.append(env.payload)

    async def settle(self, bus: MemoryBus) -> None:
        await asyncio.sleep(0)
        for groups in bus._groups.values():
            for consumers in groups.values():
                for c in consumers:
                    await c.queue.join()


class Env:
    """A test client over an app with the detector routes, a MemoryBus and what it delivered."""

    def __init__(self, client: TestClient[web.Request, web.Application], bus: MemoryBus,
                 sink: Sink) -> None:
        self.client = client
        self.bus = bus
        self.sink = sink

    async def post(self, path: str, body: object, **kwargs: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = kwargs.pop("headers", {"Content-Type": "application/json"})
        resp = await self.client.post(path, data=data, headers=headers, **kwargs)
        return resp.status, await resp.json()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    bus = FlakyBus()
    await bus.start()
    sink = Sink()
    await bus.subscribe(DETECTOR_READING, sink.on_reading, durable="t")
    await bus.subscribe(DETECTED_EVENT, sink.on_event, durable="t")
    app = create_base_app("collector", Config())
    add_detector_routes(app, DetectorIntake(bus, max_body=20_000, max_items=50))
    async with TestClient(TestServer(app)) as client:
        yield Env(client, bus, sink)
    await bus.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---- readings -----------------------------------------------------------------------------


async def test_a_single_reading_is_accepted_and_reaches_the_bus(env: Env) -> None:
    before = metric("tti_detector_records_total", transport="http", record="reading")
    status, body = await env.post(READINGS.format("G50_K12.3:N-1"), reading(
        lane=1, queue_length_m=35))
    assert (status, body) == (202, {"accepted": 1, "rejected": []})
    await env.sink.settle(env.bus)
    [r] = env.sink.readings
    assert r.detector_id == "G50_K12.3:N-1"
    assert (r.vehicle_count, r.mean_speed_kmh, r.occupancy_pct, r.queue_length_m, r.lane,
            r.interval_s, r.source) == (17, 43.5, 9.5, 35.0, 1, 60.0, "http")
    assert r.observed_at.tzinfo is not None
    assert metric("tti_detector_records_total", transport="http",
                  record="reading") == before + 1


async def test_times_with_offsets_are_converted_to_utc(env: Env) -> None:
    local = (datetime.now(UTC) + timedelta(hours=8) - timedelta(minutes=2)).strftime(
        "%Y-%m-%dT%H:%M:%S.123456789+08:00")
    status, _ = await env.post(READINGS.format("cam-1"), reading(observed_at=local))
    assert status == 202
    await env.sink.settle(env.bus)
    got = env.sink.readings[0].observed_at
    assert got.utcoffset() == timedelta(0)
    assert abs(got - (datetime.now(UTC) - timedelta(minutes=2))) < timedelta(seconds=10)


async def test_a_mixed_list_takes_the_valid_and_lists_the_rest(env: Env) -> None:
    records = [
        reading(),
        reading(vehicle_count=-1),
        reading(mean_speed_kmh=300),
        reading(occupancy_pct=100.5),
        reading(interval_s=0),
        reading(queue_length_m=-2),
        reading(observed_at=iso(3600)),
        reading(observed_at="2024-05-01 08:00:00"),  # no offset
        reading(vehicle_count=True),
        reading(vehicle_count=2.5),
        reading(speed_kmh=40),
        reading(vehicle_count=..., mean_speed_kmh=..., occupancy_pct=...),
        "not an object",
        reading(lane=1, vehicle_count=4.0),
    ]
    before = metric("tti_detector_rejected_total", transport="http", record="reading",
                    reason="out_of_range")
    status, body = await env.post(READINGS.format("d1"), records)
    assert status == 202
    assert body["accepted"] == 2
    codes = {r["index"]: r["code"] for r in body["rejected"]}
    assert codes == {1: "out_of_range", 2: "out_of_range", 3: "out_of_range",
                     4: "out_of_range", 5: "out_of_range", 6: "future_time", 7: "bad_time",
                     8: "bad_type", 9: "bad_type", 10: "unknown_field", 11: "no_measurement",
                     12: "bad_type"}
    assert all(r["message"] for r in body["rejected"])
    assert metric("tti_detector_rejected_total", transport="http", record="reading",
                  reason="out_of_range") == before + 5
    await env.sink.settle(env.bus)
    assert [r.vehicle_count for r in env.sink.readings] == [17, 4]


async def test_all_invalid_is_a_400_with_the_reasons(env: Env) -> None:
    status, body = await env.post(READINGS.format("d1"), [reading(interval_s=5000),
                                                          reading(observed_at="yesterday")])
    assert status == 400
    assert body["error"]["code"] == "invalid_readings"
    assert [r["code"] for r in body["error"]["details"]["rejected"]] == ["out_of_range",
                                                                        "bad_time"]
    await env.sink.settle(env.bus)
    assert env.sink.readings == []


@pytest.mark.parametrize(("data", "code"), [
    (b"{not json", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"42", "bad_body"),
    (b"[]", "empty"),
    (b"", "empty"),
    (orjson.dumps([reading()] * 51), "too_many_items"),
])
async def test_unusable_bodies_are_400_json(env: Env, data: bytes, code: str) -> None:
    status, body = await env.post(READINGS.format("d1"), data)
    assert status == 400 and body["error"]["code"] == code and body["error"]["message"]


@pytest.mark.parametrize("detector_id", ["has space", "x" * 65, "semi;colon", "中文"])
async def test_bad_detector_ids_are_refused(env: Env, detector_id: str) -> None:
    status, body = await env.post(READINGS.format(detector_id), reading())
    assert status == 400 and body["error"]["code"] == "bad_detector_id"


async def test_too_large_bodies_get_413_json(env: Env) -> None:
    big = orjson.dumps([reading()] * 200)  # > 20 000 bytes
    status, body = await env.post(READINGS.format("d1"), big)
    assert status == 413 and body["error"]["code"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(50):
            yield b" " * 1000

    resp = await env.client.post(READINGS.format("d1"), data=chunks(),
                                 headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "too_large"


async def test_non_json_content_type_is_415(env: Env) -> None:
    status, body = await env.post(READINGS.format("d1"), orjson.dumps(reading()),
                                  headers={"Content-Type": "text/csv"})
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    status, _ = await env.post(READINGS.format("d1"), orjson.dumps(reading()),
                               headers={"Content-Type": "application/vnd.tti+json"})
    assert status == 202


async def test_bus_away_is_503_and_a_retry_is_safe(env: Env) -> None:
    bus = env.bus
    assert isinstance(bus, FlakyBus)
    bus.down = True
    status, body = await env.post(READINGS.format("d1"), [reading()])
    assert status == 503 and body["error"]["code"] == "bus_error"
    bus.down = False
    assert (await env.post(READINGS.format("d1"), [reading()]))[0] == 202


# ---- events -------------------------------------------------------------------------------


async def test_events_reach_the_bus(env: Env) -> None:
    records = [event(), event(kind="fog", event_id=..., lane=..., description="能见度 80 m",
                              details={"visibility_m": 80}),
               event(kind="meteor"), event(status="cleared", event_id=...),
               event(status="cleared"), event(confidence=1.5), event(event_id="bad id")]
    status, body = await env.post(EVENTS.format("cam-17"), records)
    assert status == 202 and body["accepted"] == 3
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (2, "bad_kind"), (3, "missing_field"), (5, "out_of_range"), (6, "bad_event_id")]
    await env.sink.settle(env.bus)
    stopped, fog, cleared = env.sink.events
    assert (stopped.kind, stopped.event_id, stopped.lane, stopped.confidence, stopped.source,
            stopped.status) == ("stopped_vehicle", "cam17-0001", 2, 0.9, "http", "active")
    assert fog.event_id.startswith("fog-") and fog.details == {"visibility_m": 80}
    assert fog.description == "能见度 80 m"
    assert cleared.status == "cleared" and cleared.event_id == "cam17-0001"
    # A derived id depends only on the content, so a retried event keeps it.
    again = parse_event("cam-17", records[1], source="http", now=datetime.now(UTC))
    assert again.event_id == fog.event_id


async def test_all_invalid_events_is_400(env: Env) -> None:
    status, body = await env.post(EVENTS.format("cam-17"), event(kind=None))
    assert status == 400 and body["error"]["code"] == "invalid_events"
    assert body["error"]["details"]["rejected"][0]["code"] == "missing_field"


async def test_the_collector_app_serves_the_detector_routes(tmp_path: Path) -> None:
    bus = MemoryBus()
    await bus.start()
    sink = Sink()
    await bus.subscribe(DETECTOR_READING, sink.on_reading, durable="t")
    config = Config(db_url=f"sqlite:///{tmp_path / 'c.db'}", jt808_host="127.0.0.1",
                    jt808_port=0)
    async with TestClient(TestServer(create_app(config, bus=bus))) as client:
        resp = await client.post(READINGS.format("app-1"), json=reading())
        assert resp.status == 202
        ready = await (await client.get("/readyz")).json()
        assert "gtfs_rt" not in ready["checks"] and "mqtt" not in ready["checks"]
    await sink.settle(bus)
    assert [r.detector_id for r in sink.readings] == ["app-1"]
    await bus.close()


# ---- the documented schema matches the validation -----------------------------------------


def test_openapi_fragment_is_valid_openapi_3_1() -> None:
    doc = {"openapi": "3.1.0", "info": {"title": "collector", "version": "1"},
           "paths": openapi_paths()}
    validate(doc)
    codes = set(REASONS)
    assert {"too_large", "bad_detector_id", "unknown_field"} <= codes


def _just_after(record: dict[str, Any]) -> datetime:
    """A "now" a minute after the record's time (the schema examples have fixed dates)."""
    return datetime.fromisoformat(record["observed_at"].replace("Z", "+00:00")) + timedelta(
        minutes=1)


@pytest.mark.parametrize("record", [reading(), reading(lane=3, vehicle_count=0,
                                                       mean_speed_kmh=None),
                                    *READING_SCHEMA["examples"]])
def test_valid_readings_pass_schema_and_parser(record: dict[str, Any]) -> None:
    jsonschema.validate(record, READING_SCHEMA)
    parse_reading("d", record, source="http", now=_just_after(record))


@pytest.mark.parametrize("record", [reading(vehicle_count=-1), reading(extra=1),
                                    reading(vehicle_count=..., mean_speed_kmh=...,
                                            occupancy_pct=...),
                                    reading(interval_s=...), reading(lane=0)])
def test_invalid_readings_fail_schema_and_parser(record: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, READING_SCHEMA)
    with pytest.raises(InvalidRecord):
        parse_reading("d", record, source="http", now=datetime.now(UTC))


@pytest.mark.parametrize("record", [event(kind="debris"), event(event_id=...),
                                    *EVENT_SCHEMA["examples"]])
def test_valid_events_pass_schema_and_parser(record: dict[str, Any]) -> None:
    jsonschema.validate(record, EVENT_SCHEMA)
    parse_event("d", record, source="http", now=_just_after(record))


@pytest.mark.parametrize("record", [event(kind="tornado"), event(status="cleared", event_id=...),
                                    event(status="gone"), event(confidence=2),
                                    event(details=[1])])
def test_invalid_events_fail_schema_and_parser(record: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, EVENT_SCHEMA)
    with pytest.raises(InvalidRecord):
        parse_event("d", record, source="http", now=datetime.now(UTC))


def test_every_event_kind_is_accepted() -> None:
    for kind in DETECTED_EVENT_KINDS:
        assert parse_event("d", event(kind=kind), source="http",
                           now=datetime.now(UTC)).kind == kind


@pytest.mark.parametrize(("raw", "code"), [
    ("2024-02-30T00:00:00Z", "bad_time"), ("2024-05-01T24:00:00Z", "bad_time"),
    ("2024-05-01T08:00:00+25:00", "bad_time"), ("2024-05-01", "bad_time"),
    ("2024-05-01T08:00:00", "bad_time"), (1714550400, "bad_type"),
    ("2024-04-01T00:00:00Z", "stale_time"), ("2024-05-01T00:20:00Z", "future_time"),
])
def test_rfc3339_rules(raw: object, code: str) -> None:
    now = datetime(2024, 5, 1, 0, 10, tzinfo=UTC)
    with pytest.raises(InvalidRecord) as exc:
        parse_rfc3339(raw, now=now)
    assert exc.value.code == code


def test_rfc3339_accepts_the_forms_devices_send() -> None:
    now = datetime(2024, 5, 1, 0, 10, tzinfo=UTC)
    expect = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
    for raw in ("2024-05-01T00:00:00Z", "2024-05-01t00:00:00z", "2024-05-01 08:00:00+08:00",
                "2024-04-30T19:00:00-05:00", "2024-05-01T00:00:00.000Z"):
        assert parse_rfc3339(raw, now=now) == expect


async def test_sensor_tokens_are_required_when_configured() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from services.collector.detectors import DetectorIntake, add_detector_routes
    from shared.bus.memory import MemoryBus
    from shared.service import create_base_app

    bus = MemoryBus()
    await bus.start()
    app = create_base_app("collector", Config())
    add_detector_routes(app, DetectorIntake(bus, tokens=["s3cret-token"]))
    reading = {"observed_at": "2026-11-28T08:00:00Z", "interval_s": 60, "vehicle_count": 3}
    async with TestClient(TestServer(app)) as client:
        url = "/api/v1/detectors/cam-1/readings"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            resp = await client.post(url, json=reading, headers=headers)
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        resp = await client.post(url, json=reading,
                                 headers={"Authorization": "Bearer s3cret-token"})
        assert resp.status == 202, await resp.text()
    await bus.close()


async def test_collector_serves_its_openapi_document(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer
    from openapi_spec_validator import validate

    from services.collector.app import create_app
    from shared.bus.memory import MemoryBus

    bus = MemoryBus()
    app = create_app(Config(jt808_port=0, jt808_host="127.0.0.1",
                            db_url=f"sqlite:///{tmp_path}/t.db"), bus=bus)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/openapi.json")
        spec = await resp.json()
    validate(spec)
    assert "/api/v1/detectors/{detector_id}/readings" in spec["paths"]
