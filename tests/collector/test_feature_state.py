"""Live feature state over HTTP: validation, limits, tokens, the event on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
from services.collector.detectors import DetectorIntake, InvalidRecord
from services.collector.feature_state import (
    STATE_SCHEMA,
    add_feature_state_routes,
    parse_state,
    state_event_id,
)
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.events import FEATURE_STATE, FeatureState
from shared.service import create_base_app
from tests.conftest import FlakyBus

URL = "/api/v1/features/{}/{}/state"
NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


class Env:
    def __init__(self, client: TestClient[web.Request, web.Application], bus: FlakyBus) -> None:
        self.client = client
        self.bus = bus
        self.got: list[FeatureState] = []

    async def on_state(self, env: Envelope[FeatureState]) -> None:
        self.got.append(env.payload)

    async def post(self, path: str, body: object, **kwargs: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = kwargs.pop("headers", {"Content-Type": "application/json"})
        resp = await self.client.post(path, data=data, headers=headers, **kwargs)
        return resp.status, await resp.json()

    async def settle(self) -> None:
        await asyncio.sleep(0)
        for groups in self.bus._groups.values():
            for consumers in groups.values():
                for c in consumers:
                    await c.queue.join()


async def _env(tokens: tuple[str, ...] = ()) -> AsyncIterator[Env]:
    bus = FlakyBus()
    await bus.start()
    app = create_base_app("collector", Config())
    add_feature_state_routes(app, DetectorIntake(bus, max_body=2_000, tokens=tokens))
    async with TestClient(TestServer(app)) as client:
        env = Env(client, bus)
        await bus.subscribe(FEATURE_STATE, env.on_state, durable="t")
        yield env
    await bus.close()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async for e in _env():
        yield e


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_parking_state_reaches_the_bus(env: Env) -> None:
    observed = (datetime.now(UTC) - timedelta(seconds=20)).replace(microsecond=0)
    before = metric("tti_feature_states_total", kind="parking")
    status, body = await env.post(URL.format("parking", "w4242"), {
        "observed_at": observed.isoformat(), "values": {"free_spaces": 37, "open": True}})
    assert (status, body) == (202, {"accepted": 1})
    await env.settle()
    [state] = env.got
    assert (state.kind, state.feature_id, state.values, state.source) == (
        "parking", "w4242", {"free_spaces": 37, "open": True}, "http")
    assert state.observed_at == observed
    assert metric("tti_feature_states_total", kind="parking") == before + 1


async def test_without_observed_at_the_state_is_of_now(env: Env) -> None:
    status, _ = await env.post(URL.format("weather_station", "n77"),
                               {"values": {"temperature_c": -2.5, "road_surface": "icy"}})
    assert status == 202
    await env.settle()
    assert abs((env.got[0].observed_at - datetime.now(UTC)).total_seconds()) < 5


@pytest.mark.parametrize(("kind", "feature_id", "body", "code"), [
    ("car_park", "w1", {"values": {"free_spaces": 3}}, "bad_kind"),
    ("parking", "w 1", {"values": {"free_spaces": 3}}, "bad_feature_id"),
    ("parking", "w1", [{"values": {"free_spaces": 3}}], "bad_body"),
    ("parking", "w1", {"values": {}}, "bad_values"),
    ("parking", "w1", {"values": {"Free": 3}}, "bad_values"),
    ("parking", "w1", {"values": {"free_spaces": [3]}}, "bad_values"),
    ("parking", "w1", {"values": {"note": "x" * 201}}, "bad_values"),
    ("parking", "w1", {"values": {f"v{i}": i for i in range(33)}}, "too_many_values"),
    ("parking", "w1", {"values": {"free_spaces": 3}, "capacity": 9}, "unknown_field"),
    ("parking", "w1", {"observed_at": "yesterday", "values": {"free_spaces": 3}},
     "bad_time"),
])
async def test_invalid_states_are_400_and_publish_nothing(env: Env, kind: str, feature_id: str,
                                                         body: object, code: str) -> None:
    before = metric("tti_feature_state_rejected_total", reason=code)
    status, answer = await env.post(URL.format(kind, feature_id), body)
    assert status == 400, answer
    assert answer["error"]["code"] == code
    assert metric("tti_feature_state_rejected_total", reason=code) == before + 1
    await env.settle()
    assert env.got == []


async def test_not_json_and_too_large_bodies(env: Env) -> None:
    status, answer = await env.post(URL.format("parking", "w1"), b"{free_spaces: 3")
    assert (status, answer["error"]["code"]) == (400, "bad_json")
    status, answer = await env.post(URL.format("parking", "w1"), b"x=1",
                                    headers={"Content-Type": "text/plain"})
    assert status == 415
    big = {"values": {f"v{i}": "y" * 190 for i in range(12)}}
    status, answer = await env.post(URL.format("parking", "w1"), big)
    assert status == 413 and answer["error"]["code"] == "too_large"


async def test_bus_away_is_503_and_a_retry_is_the_same_event(env: Env) -> None:
    now = datetime.now(UTC)
    body = {"observed_at": (now - timedelta(minutes=1)).isoformat(), "values": {"free_spaces": 5}}
    env.bus.down = True
    status, answer = await env.post(URL.format("parking", "w1"), body)
    assert status == 503 and answer["error"]["code"] == "bus_error"
    env.bus.down = False
    assert (await env.post(URL.format("parking", "w1"), body))[0] == 202
    first = parse_state("parking", "w1", body, now=now)
    assert state_event_id(first) == state_event_id(parse_state("parking", "w1", body, now=now))
    other = parse_state("parking", "w1", {**body, "values": {"free_spaces": 6}}, now=now)
    assert state_event_id(other) != state_event_id(first)


async def test_sensor_tokens_guard_the_endpoint() -> None:
    async for env in _env(tokens=("s3cret",)):
        body = {"values": {"free_spaces": 5}}
        for headers in ({}, {"Authorization": "Bearer nope"}):
            resp = await env.client.post(URL.format("parking", "w1"), json=body,
                                         headers=headers)
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        resp = await env.client.post(URL.format("parking", "w1"), json=body,
                                     headers={"Authorization": "Bearer s3cret"})
        assert resp.status == 202


@pytest.mark.parametrize("body", [
    {"values": {"free_spaces": 3}},
    {"observed_at": "2026-11-29T15:00:00+08:00", "values": {"status": "closed", "x": None}},
])
def test_valid_states_pass_schema_and_parser(body: dict[str, Any]) -> None:
    jsonschema.validate(body, STATE_SCHEMA)
    parse_state("tunnel", "w9", body, now=NOW)


@pytest.mark.parametrize("body", [
    {"values": {}}, {"values": {"A": 1}}, {"values": {"a": [1]}}, {"values": {"a": 1}, "b": 2}])
def test_invalid_states_fail_schema_and_parser(body: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, STATE_SCHEMA)
    with pytest.raises(InvalidRecord):
        parse_state("tunnel", "w9", body, now=NOW)


async def test_the_collector_app_serves_and_documents_the_endpoint(tmp_path: Path) -> None:
    bus = MemoryBus()
    app = create_app(Config(jt808_port=0, jt808_host="127.0.0.1",
                            db_url=f"sqlite:///{tmp_path}/t.db"), bus=bus)
    async with TestClient(TestServer(app)) as client:
        spec = await (await client.get("/openapi.json")).json()
        resp = await client.post(URL.format("parking", "w1"), json={"values": {"free": 1}})
        assert resp.status == 202
    validate(spec)
    assert "/api/v1/features/{kind}/{feature_id}/state" in spec["paths"]
