"""Live feature state over HTTP: validation, the catalogue, limits, tokens, the event on the bus.

The catalogue arrives as bigdata sends it: ``FeatureCatalogue`` chunks on a real MemoryBus.
"""

from __future__ import annotations

import asyncio
import dataclasses
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

from services.collector.app import CATALOGUE, create_app
from services.collector.detectors import DetectorIntake, InvalidRecord
from services.collector.feature_state import (
    STATE_SCHEMA,
    FeatureCatalogueView,
    add_feature_state_routes,
    parse_state,
    state_event_id,
)
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.errors import DecodeError
from shared.events import (
    FEATURE_CATALOGUE,
    FEATURE_CATALOGUE_REQUEST,
    FEATURE_KINDS,
    FEATURE_STATE,
    CatalogueEntry,
    CatalogueRequest,
    FeatureCatalogue,
    FeatureState,
)
from shared.service import create_base_app
from tests.conftest import FlakyBus

URL = "/api/v1/features/{}/{}/state"
NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


FEATURES: dict[str, tuple[CatalogueEntry, ...]] = {
    "parking": (CatalogueEntry(feature_id="w4242", capacity=300),
                CatalogueEntry(feature_id="w1", capacity=120),
                CatalogueEntry(feature_id="w-nocap")),
    "weather_station": (CatalogueEntry(feature_id="n77"),),
    "tunnel": (CatalogueEntry(feature_id="w9"),),
}


def catalogue(published_at: datetime = NOW, features: dict[str, tuple[CatalogueEntry, ...]]
              | None = None, version: str = "v1") -> list[FeatureCatalogue]:
    """A whole catalogue as bigdata publishes it: one chunk per kind (empty kinds too)."""
    features = FEATURES if features is None else features
    return [FeatureCatalogue(kind=k, version=f"{version}-{k}", published_at=published_at,
                             chunk=0, chunks=1, features=features.get(k, ()))
            for k in FEATURE_KINDS]


class Env:
    def __init__(self, client: TestClient[web.Request, web.Application], bus: FlakyBus,
                 view: FeatureCatalogueView) -> None:
        self.client = client
        self.bus = bus
        self.view = view
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

    async def send_catalogue(self, chunks: list[FeatureCatalogue]) -> None:
        for chunk in chunks:
            await self.bus.publish(FEATURE_CATALOGUE, chunk)
        await self.settle()


async def _env(tokens: tuple[str, ...] = (), *, loaded: bool = True) -> AsyncIterator[Env]:
    bus = FlakyBus(serialize=True)  # the catalogue goes through the wire format, as on NATS
    await bus.start()
    app = create_base_app("collector", Config())
    view = FeatureCatalogueView()
    add_feature_state_routes(app, DetectorIntake(bus, max_body=2_000, tokens=tokens), view)
    async with TestClient(TestServer(app)) as client:
        env = Env(client, bus, view)
        await bus.subscribe(FEATURE_STATE, env.on_state, durable="t")
        await bus.subscribe(FEATURE_CATALOGUE, view.on_catalogue, durable="collector-catalogue")
        if loaded:
            await env.send_catalogue(catalogue())
        yield env
    await bus.close()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async for e in _env():
        yield e


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def refused(reason: str, kind: str = "parking", transport: str = "http") -> float:
    return metric("tti_feature_state_rejected_total", transport=transport, kind=kind,
                  reason=reason)


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
    label = kind if kind in FEATURE_KINDS else "unknown"  # a bounded label, whatever is sent
    before = refused(code, label)
    status, answer = await env.post(URL.format(kind, feature_id), body)
    assert status == 400, answer
    assert answer["error"]["code"] == code
    assert refused(code, label) == before + 1
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


# ---- the cases: closed by default, loud on bad input ----------------------------------


@pytest.mark.parametrize(("feature_id", "values", "status", "code", "reason"), [
    ("w4242", {"free_spaces": -5}, 422, "implausible_value", "free_spaces -5 is below 0"),
    ("w4242", {"free_spaces": 12.5}, 422, "implausible_value", "whole number"),
    ("w4242", {"free_spaces": 301}, 422, "implausible_value", "exceeds the capacity of 300"),
    ("w1", {"free_spaces": 121, "open": True}, 422, "implausible_value", "capacity of 120"),
    ("w4242", {"free_spaces": "12"}, 400, "bad_type", "must be a number"),
    ("w4242", {"free_spaces": True}, 400, "bad_type", "must be a number"),
    ("w404", {"free_spaces": 5}, 404, "unknown_feature", "no parking 'w404'"),
])
async def test_impossible_values_and_unknown_features_are_refused_with_the_reason(
        env: Env, feature_id: str, values: dict[str, Any], status: int, code: str,
        reason: str) -> None:
    before = refused(code)
    got, answer = await env.post(URL.format("parking", feature_id), {"values": values})
    assert got == status, answer
    assert answer["error"]["code"] == code
    assert reason in answer["error"]["message"]
    assert refused(code) == before + 1
    await env.settle()
    assert env.got == []


async def test_a_kind_is_its_own_namespace_and_other_kinds_have_rules_too(env: Env) -> None:
    # w9 is a tunnel: as a parking lot it does not exist.
    assert (await env.post(URL.format("parking", "w9"), {"values": {"free_spaces": 1}}))[0] == 404
    assert (await env.post(URL.format("tunnel", "w9"), {"values": {"status": "closed"}}))[0] == 202
    # An empty kind is known to be empty: its ids are unknown, not "still loading".
    status, answer = await env.post(URL.format("hotel", "n1"), {"values": {"rooms_free": 3}})
    assert (status, answer["error"]["code"]) == (404, "unknown_feature")
    status, answer = await env.post(URL.format("weather_station", "n77"),
                                    {"values": {"visibility_m": -20}})
    assert (status, answer["error"]["code"]) == (422, "implausible_value")
    assert "visibility_m" in answer["error"]["message"]


async def test_a_whole_number_sent_as_a_float_is_taken_as_the_number(env: Env) -> None:
    assert (await env.post(URL.format("parking", "w4242"),
                           {"values": {"free_spaces": 12.0}}))[0] == 202
    # Without a known capacity only the capacity check is skipped.
    assert (await env.post(URL.format("parking", "w-nocap"),
                           {"values": {"free_spaces": 5000}}))[0] == 202
    assert (await env.post(URL.format("parking", "w-nocap"),
                           {"values": {"free_spaces": -1}}))[0] == 422
    await env.settle()
    assert [s.values for s in env.got] == [{"free_spaces": 12}, {"free_spaces": 5000}]
    assert isinstance(env.got[0].values["free_spaces"], int)


async def test_until_the_catalogue_arrives_states_get_503_with_retry_after() -> None:
    async for env in _env(loaded=False):
        assert not env.view.complete
        before = refused("catalogue_loading")
        resp = await env.client.post(URL.format("parking", "w4242"),
                                     json={"values": {"free_spaces": 5}})
        answer = await resp.json()
        assert resp.status == 503 and answer["error"]["code"] == "catalogue_loading"
        assert resp.headers["Retry-After"].isdigit()
        assert refused("catalogue_loading") == before + 1
        # What needs no catalogue is still checked: a negative count is 422 at once.
        status, answer = await env.post(URL.format("parking", "w4242"),
                                        {"values": {"free_spaces": -5}})
        assert (status, answer["error"]["code"]) == (422, "implausible_value")
        await env.send_catalogue(catalogue())
        assert env.view.complete
        assert (await env.post(URL.format("parking", "w4242"),
                               {"values": {"free_spaces": 5}}))[0] == 202
        await env.settle()
        assert [s.values for s in env.got] == [{"free_spaces": 5}]


async def test_a_new_catalogue_replaces_the_kind_and_an_older_one_never_wins(env: Env) -> None:
    later = NOW + timedelta(minutes=5)
    added = {**FEATURES, "parking": (*FEATURES["parking"], CatalogueEntry(feature_id="w5",
                                                                          capacity=10))}
    await env.send_catalogue(catalogue(later, added, version="v2"))
    assert (await env.post(URL.format("parking", "w5"), {"values": {"free_spaces": 3}}))[0] == 202
    # The stream replays an older catalogue (a new durable starts at the beginning): ignored.
    await env.send_catalogue(catalogue(NOW, version="v1"))
    assert env.view.find("parking", "w5") == CatalogueEntry(feature_id="w5", capacity=10)
    removed = {**FEATURES, "parking": FEATURES["parking"][:1]}
    await env.send_catalogue(catalogue(later + timedelta(minutes=5), removed, version="v3"))
    assert (await env.post(URL.format("parking", "w5"), {"values": {"free_spaces": 3}}))[0] == 404


def test_chunks_assemble_only_when_complete_and_bad_chunks_are_refused() -> None:
    view = FeatureCatalogueView()
    entries = [CatalogueEntry(feature_id=f"p{i}", capacity=i) for i in range(5)]

    def chunk(i: int, n: int, part: list[CatalogueEntry], version: str = "a",
              at: datetime = NOW) -> FeatureCatalogue:
        return FeatureCatalogue(kind="parking", version=version, published_at=at, chunk=i,
                                chunks=n, features=tuple(part))

    assert not view.add(chunk(0, 3, entries[:2]))
    assert not view.loaded("parking")
    # Another version interleaves (a second publisher): both assemble on their own.
    assert not view.add(chunk(0, 2, entries[:1], "b", NOW + timedelta(seconds=1)))
    assert not view.add(chunk(2, 3, entries[4:]))
    assert view.add(chunk(1, 3, entries[2:4]))
    assert [view.find("parking", f"p{i}") for i in range(5)] == entries
    # The newer "b" completes and wins; the chunk of an older version is dropped.
    assert view.add(chunk(1, 2, entries[1:2], "b", NOW + timedelta(seconds=1)))
    assert view.find("parking", "p4") is None
    assert not view.add(chunk(0, 1, entries, "c", NOW))
    for bad in (chunk(3, 3, []), chunk(0, 0, [])):
        with pytest.raises(DecodeError):
            view.add(bad)
    with pytest.raises(DecodeError):
        view.add(dataclasses.replace(chunk(0, 1, []), kind="castle"))


def test_readiness_waits_for_the_catalogue_then_reports_it_without_blocking() -> None:
    t = [0.0]
    view = FeatureCatalogueView(monotonic=lambda: t[0])
    ready, detail = view.readiness()
    assert not ready and "loading" in detail and "catalogue_loading" in detail
    t[0] = FeatureCatalogueView.READY_GRACE_S + 1
    ready, detail = view.readiness()
    assert ready and "loading" in detail  # JT/T 808 and detectors do not need the catalogue
    for c in catalogue():
        view.add(c)
    ready, detail = view.readiness()
    assert ready and detail.startswith(f"{len(view)} features of {len(FEATURE_KINDS)} kinds")


async def test_the_collector_app_asks_for_the_catalogue_and_checks_against_it(
        tmp_path: Path) -> None:
    bus = MemoryBus()
    await bus.start()
    requests: list[CatalogueRequest] = []

    async def on_request(env: Envelope[CatalogueRequest]) -> None:
        requests.append(env.payload)

    await bus.subscribe(FEATURE_CATALOGUE_REQUEST, on_request, durable="bigdata-catalogue")
    app = create_app(Config(jt808_port=0, jt808_host="127.0.0.1",
                            db_url=f"sqlite:///{tmp_path}/t.db"), bus=bus)
    try:
        async with TestClient(TestServer(app)) as client:
            spec = await (await client.get("/openapi.json")).json()
            for _ in range(100):
                if requests:
                    break
                await asyncio.sleep(0.01)
            assert [r.requested_by for r in requests] == ["collector-0"]
            ready = await (await client.get("/readyz")).json()
            assert not ready["checks"]["feature_catalogue"]["ready"]
            body = {"values": {"free_spaces": 1}}
            resp = await client.post(URL.format("parking", "w1"), json=body)
            assert resp.status == 503
            for c in catalogue():
                await bus.publish(FEATURE_CATALOGUE, c)
            for _ in range(100):
                if app[CATALOGUE].complete:
                    break
                await asyncio.sleep(0.01)
            assert (await client.post(URL.format("parking", "w1"), json=body)).status == 202
            ready = await (await client.get("/readyz")).json()
            assert ready["checks"]["feature_catalogue"]["ready"]
    finally:
        await bus.close()
    validate(spec)
    responses = spec["paths"]["/api/v1/features/{kind}/{feature_id}/state"]["post"]["responses"]
    assert {"400", "404", "422", "503"} <= set(responses)


def test_the_once_per_sensor_log_remembers_a_bounded_number_of_sensors(
        caplog: pytest.LogCaptureFixture) -> None:
    # MQTT topics name the feature, so a client can invent ids without end: the log keeps at
    # most max_keys of them, the least recently refused forgotten first.
    import logging

    from services.collector.feature_state import OncePerSensorLog

    once = OncePerSensorLog(logging.getLogger("tti.test.once"), max_keys=3)
    with caplog.at_level(logging.INFO, logger="tti.test.once"):
        assert once.refused("parking", "w1", "implausible_value", "-5", "t")
        assert not once.refused("parking", "w1", "implausible_value", "-5", "t")
        for i in range(1_000):
            assert once.refused("parking", f"fz-{i}", "unknown_feature", "no such lot", "t")
            if i % 2 == 0:  # w1 keeps sending (and failing): it stays remembered
                assert not once.refused("parking", "w1", "implausible_value", "-5", "t")
        assert len(once._failing) == 3
        assert once.refused("parking", "fz-0", "unknown_feature", "no such lot", "t")  # forgotten
        assert not once.refused("parking", "w1", "implausible_value", "-5", "t")
        caplog.clear()
        once.accepted("parking", "w1")
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "accepted again after 503 refused" in caplog.records[0].getMessage()
