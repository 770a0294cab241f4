"""The publisher's REST API: live roads from bus events, warnings, bbox, OpenAPI, readiness."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.publisher.app import PUBLISHER, create_app
from services.publisher.openapi import build_openapi
from services.publisher.roads import RoadStatusBoard
from services.publisher.warning_board import WarningBoard
from shared.bus import bus_from_url
from shared.config import Config
from shared.errors import DecodeError
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
from tests.publisher import (
    EXTRA,
    REGION,
    SEGMENTS,
    BigdataState,
    Env,
    is_ready,
    make_bigdata_app,
    running_publisher,
    wait_for,
)

T0 = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """A ready publisher over a bigdata stand-in and a MemoryBus."""
    async with running_publisher() as e:
        yield e


def _status(segment_id: str, level: int | None, *, observed_at: datetime | None = None,
            source: str = "probe", samples: int = 7, speed: float | None = 18.44
            ) -> RoadStatus:
    names = {1: "畅通", 2: "基本畅通", 3: "轻度拥堵", 4: "中度拥堵", 5: "严重拥堵"}
    return RoadStatus(segment_id=segment_id, level=level,
                      level_name=None if level is None else names[level], speed_kmh=speed,
                      free_flow_kmh=50.0, observed_at=observed_at or datetime.now(UTC),
                      sample_count=samples, source=source)


def _warning(warning_id: str, *, status: str = "active", headline: str = "珞喻路拥堵",
             started_at: datetime | None = None, updated_at: datetime | None = None,
             severity: str = "moderate") -> Warning:
    started = started_at or datetime.now(UTC) - timedelta(minutes=5)
    return Warning(
        warning_id=warning_id, kind=WarningKind.CONGESTION,
        status=WarningStatus.RESOLVED if status == "cleared" else WarningStatus.RAISED,
        category=CapCategory.TRANSPORT, severity=CapSeverity(severity.capitalize()),
        urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
        msg_type=CapMsgType.ALERT, cause="severe_congestion", segment_ids=("101:1:2",),
        started_at=started, updated_at=updated_at or started, headline=headline,
        description="Luoyu Road congested", level=4, speed_kmh=12.0, lon=114.405, lat=30.5,
        details={"tpi": 6.5, "lanes_blocked": [1]})


async def _roads(client: TestClient[Any, Any], query: str = "") -> dict[str, Any]:
    resp = await client.get("/api/v1/roads" + query)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/geo+json"
    body: dict[str, Any] = await resp.json(content_type=None)
    return body


def _props(collection: dict[str, Any], segment_id: str) -> dict[str, Any]:
    for feature in collection["features"]:
        if feature["properties"]["segment_id"] == segment_id:
            props: dict[str, Any] = feature["properties"]
            return props
    raise AssertionError(f"{segment_id} not in collection")


async def _error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


# -- roads ------------------------------------------------------------------------------------


async def test_road_status_event_appears_with_provenance(env: Env) -> None:
    observed = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    await env.bus.publish(ROAD_STATUS, _status("101:1:2", 4, observed_at=observed))

    async def applied() -> bool:
        return _props(await _roads(env.client), "101:1:2")["level"] == 4

    await wait_for(applied)
    body = await _roads(env.client)
    props = _props(body, "101:1:2")
    assert props["level_name"] == "中度拥堵"
    assert props["level_name_en"] == "moderate congestion"
    assert props["speed_kmh"] == 18.4
    assert props["sample_count"] == 7
    assert props["source"] == "probe"
    assert props["observed_at"] == observed.isoformat().replace("+00:00", "Z")
    assert props["name"] == "珞喻路" and props["name_en"] == "Luoyu Road"
    assert body["generated_at"].endswith("Z")
    assert body["type"] == "FeatureCollection"
    assert body["count"] == len(body["features"]) == len(SEGMENTS)
    feature = next(f for f in body["features"] if f["id"] == "101:1:2")
    assert feature["geometry"] == {"type": "LineString",
                                   "coordinates": [[114.40, 30.50], [114.41, 30.50]]}
    # The opposite direction of the same street has no data of its own.
    assert _props(body, "101:2:1")["source"] == "none"


async def test_segment_without_data_says_none_not_free_flow(env: Env) -> None:
    props = _props(await _roads(env.client), "202:3:4")
    assert props["source"] == "none"
    assert props["sample_count"] == 0
    for key in ("level", "level_name", "speed_kmh", "observed_at", "tpi"):
        assert props[key] is None, key
    assert props["free_flow_kmh"] == 50.0  # an attribute, not a live claim


async def test_status_with_source_none_reads_as_no_data(env: Env) -> None:
    await env.bus.publish(ROAD_STATUS, _status("202:3:4", None, source="none", samples=0,
                                               speed=None))
    await env.bus.publish(ROAD_STATUS, _status("101:1:2", 1))
    await wait_for(lambda: len(env.publisher.roads) == 2)
    props = _props(await _roads(env.client), "202:3:4")
    assert props["source"] == "none" and props["level"] is None and props["sample_count"] == 0


async def test_newer_status_wins_and_a_late_one_is_ignored(env: Env) -> None:
    now = datetime.now(UTC)
    await env.bus.publish(ROAD_STATUS, _status("101:1:2", 5, observed_at=now, speed=4.0))
    await env.bus.publish(ROAD_STATUS, _status("101:1:2", 1, observed_at=now - timedelta(
        minutes=2), speed=48.0))
    await env.bus.publish(ROAD_STATUS, _status("404:7:8", 2, observed_at=now))
    await wait_for(lambda: env.publisher.roads.find("404:7:8", datetime.now(UTC)) is not None)
    props = _props(await _roads(env.client), "101:1:2")
    assert props["level"] == 5 and props["speed_kmh"] == 4.0


async def test_invalid_status_is_rejected_and_consumer_carries_on(env: Env) -> None:
    bad = dataclasses.replace(_status("101:1:2", 3), level=9)
    await env.bus.publish(ROAD_STATUS, bad)
    await env.bus.publish(ROAD_STATUS, _status("404:7:8", 3))
    await wait_for(lambda: env.publisher.roads.find("404:7:8", datetime.now(UTC)) is not None)
    assert env.publisher.roads.find("101:1:2", datetime.now(UTC)) is None


async def test_bbox_filters_by_geometry(env: Env) -> None:
    optics_valley = await _roads(env.client, "?bbox=114.39,30.47,114.43,30.51")
    ids = {f["id"] for f in optics_valley["features"]}
    assert ids == {"101:1:2", "101:2:1", "202:3:4", "404:7:8"}
    assert optics_valley["count"] == 4
    bridge = await _roads(env.client, "?bbox=114.28,30.54,114.31,30.57")
    assert [f["id"] for f in bridge["features"]] == ["303:5:6"]
    assert _props(bridge, "303:5:6")["bridge"] is True
    empty = await _roads(env.client, "?bbox=100,20,100.5,20.5")
    assert empty["features"] == [] and empty["count"] == 0
    whole = await _roads(env.client)
    assert whole["count"] == len(SEGMENTS)


async def test_min_level_keeps_only_congested_roads(env: Env) -> None:
    await env.bus.publish(ROAD_STATUS, _status("101:1:2", 4))
    await env.bus.publish(ROAD_STATUS, _status("202:3:4", 2))
    await wait_for(lambda: len(env.publisher.roads) == 2)
    body = await _roads(env.client, "?min_level=3")
    assert [f["id"] for f in body["features"]] == ["101:1:2"]
    body = await _roads(env.client, "?min_level=2&bbox=114.39,30.47,114.43,30.51")
    assert {f["id"] for f in body["features"]} == {"101:1:2", "202:3:4"}


@pytest.mark.parametrize("query", [
    "bbox=114.39,30.47,114.43",            # three numbers
    "bbox=114.39,30.47,114.43,30.51,1",    # five
    "bbox=a,b,c,d",
    "bbox=",
    "bbox=114.43,30.47,114.39,30.51",      # minlon > maxlon
    "bbox=114.39,30.51,114.43,30.47",      # minlat > maxlat
    "bbox=114.39,30.47,114.39,30.51",      # zero width
    "bbox=179,30,181,31",                  # longitude out of range
    "bbox=114,-91,115,30",                 # latitude out of range
    "bbox=nan,30.47,114.43,30.51",
    "bbox=114.39,30.47,inf,30.51",
    "min_level=0",
    "min_level=6",
    "min_level=high",
    "min_level=2.5",
])
async def test_bad_query_is_400_json(env: Env, query: str) -> None:
    resp = await env.client.get("/api/v1/roads?" + query)
    await _error(resp, 400, "bad_request")


async def test_absurd_result_size_is_a_clear_400(env: Env) -> None:
    env.publisher.max_features = 2
    message = await _error(await env.client.get("/api/v1/roads"), 400, "bad_request")
    assert "more than 2" in message
    body = await _roads(env.client, "?bbox=114.28,30.54,114.31,30.57")
    assert body["count"] == 1


async def test_one_road_has_details_and_live_values(env: Env) -> None:
    await env.bus.publish(ROAD_STATUS, _status("202:3:4", 3, source="detector", samples=12))
    await wait_for(lambda: len(env.publisher.roads) == 1)
    resp = await env.client.get("/api/v1/roads/202:3:4")
    assert resp.status == 200
    feature = await resp.json(content_type=None)
    assert feature["type"] == "Feature" and feature["id"] == "202:3:4"
    props = feature["properties"]
    assert props["lanes"] == 3 and props["length_m"] == 960.0 and props["oneway"] is True
    assert props["level"] == 3 and props["source"] == "detector" and props["sample_count"] == 12
    assert props["observed_at"].endswith("Z")


async def test_unknown_road_is_404_json(env: Env) -> None:
    await _error(await env.client.get("/api/v1/roads/999:1:2"), 404, "not_found")


async def test_road_newer_than_the_catalogue_is_asked_of_bigdata(env: Env) -> None:
    resp = await env.client.get(f"/api/v1/roads/{EXTRA['segment_id']}")
    assert resp.status == 200
    props = (await resp.json(content_type=None))["properties"]
    assert props["name_en"] == "New Road" and props["source"] == "none"


async def test_malformed_catalogue_records_are_skipped(env: Env) -> None:
    assert env.publisher.catalogue is not None
    assert len(env.publisher.catalogue) == len(SEGMENTS)
    await _error(await env.client.get("/api/v1/roads/bad:1:2"), 404, "not_found")


async def test_region_is_proxied_from_bigdata(env: Env) -> None:
    resp = await env.client.get("/api/v1/region")
    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == REGION["name"]
    assert body["bbox"] == REGION["bbox"]
    assert body["segment_count"] == REGION["segment_count"]
    assert body["generated_at"].endswith("Z")


# -- warnings ---------------------------------------------------------------------------------


async def _warnings(client: TestClient[Any, Any], status: str | None = None) -> dict[str, Any]:
    resp = await client.get("/api/v1/warnings" + (f"?status={status}" if status else ""))
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    assert body["count"] == len(body["warnings"])
    assert body["generated_at"].endswith("Z")
    return body


async def test_warning_lifecycle_updates_in_place(env: Env) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    await env.bus.publish(WARNING, _warning("w1", started_at=start))
    await wait_for(lambda: env.publisher.warnings.find("w1") is not None)
    body = await _warnings(env.client)
    assert body["count"] == 1
    w = body["warnings"][0]
    expected_fields = {f.name for f in dataclasses.fields(Warning)}
    assert expected_fields <= set(w)
    assert w["started_at"] == start.isoformat().replace("+00:00", "Z")
    assert w["details"] == {"tpi": 6.5, "lanes_blocked": [1]}
    assert w["active"] is True

    # The same id updated: still one warning, new headline.
    await env.bus.publish(WARNING, _warning("w1", started_at=start, severity="severe",
                                            headline="珞喻路严重拥堵",
                                            updated_at=start + timedelta(minutes=5)))
    await wait_for(lambda: env.publisher.warnings.find("w1").severity == "Severe")  # type: ignore[union-attr]
    body = await _warnings(env.client)
    assert body["count"] == 1 and body["warnings"][0]["headline"] == "珞喻路严重拥堵"

    # A late, older version does not roll it back.
    await env.bus.publish(WARNING, _warning("w1", started_at=start, headline="stale",
                                            updated_at=start + timedelta(minutes=1)))
    # Cleared: leaves the active list, shows in cleared and all.
    await env.bus.publish(WARNING, _warning("w1", started_at=start, status="cleared",
                                            headline="珞喻路恢复畅通",
                                            updated_at=start + timedelta(minutes=9)))
    await wait_for(lambda: env.publisher.warnings.find("w1").status == "resolved")  # type: ignore[union-attr]
    assert (await _warnings(env.client))["count"] == 0
    cleared = await _warnings(env.client, "cleared")
    assert [w["headline"] for w in cleared["warnings"]] == ["珞喻路恢复畅通"]
    assert cleared["warnings"][0]["active"] is False
    assert (await _warnings(env.client, "all"))["count"] == 1


async def test_warnings_are_newest_first_and_filter_is_checked(env: Env) -> None:
    now = datetime.now(UTC)
    await env.bus.publish(WARNING, _warning("old", started_at=now - timedelta(hours=2)))
    await env.bus.publish(WARNING, _warning("new", started_at=now - timedelta(minutes=1)))
    await env.bus.publish(WARNING, _warning("mid", started_at=now - timedelta(hours=1)))
    await wait_for(lambda: len(env.publisher.warnings) == 3)
    body = await _warnings(env.client, "active")
    assert [w["warning_id"] for w in body["warnings"]] == ["new", "mid", "old"]
    await _error(await env.client.get("/api/v1/warnings?status=open"), 400, "bad_request")


def test_warning_board_expires_cleared_and_caps_count() -> None:
    board = WarningBoard(max_entries=10, cleared_ttl_s=3600)
    board.apply(_warning("gone", status="cleared", started_at=T0, updated_at=T0))
    board.apply(_warning("recent", status="cleared", started_at=T0,
                         updated_at=T0 + timedelta(hours=2)))
    board.apply(_warning("live", started_at=T0, updated_at=T0))
    assert board.prune(T0 + timedelta(hours=2)) == 1
    assert board.find("gone") is None and board.find("recent") is not None
    for i in range(20):
        board.apply(_warning(f"w{i}", started_at=T0, updated_at=T0 + timedelta(minutes=i)))
    assert len(board) <= 10
    # Cleared ones are evicted before active ones; the most recently updated survive.
    assert board.find("recent") is None and board.find("w19") is not None
    with pytest.raises(DecodeError):
        board.apply(_warning(""))


def test_road_status_board_ages_out_and_is_bounded() -> None:
    board = RoadStatusBoard(max_entries=3, max_age_s=600)
    board.apply(_status("a", 2, observed_at=T0))
    assert board.find("a", T0 + timedelta(minutes=5)) is not None
    assert board.find("a", T0 + timedelta(minutes=11)) is None  # stale reads as no data
    for sid in ("b", "c", "d"):
        board.apply(_status(sid, 2, observed_at=T0 + timedelta(minutes=9)))
    assert len(board) == 3 and board.find("a", T0) is None
    assert board.prune(T0 + timedelta(minutes=20)) == 3
    local = _status("e", 2, observed_at=datetime(2024, 5, 1, 8, 0, tzinfo=timezone_cn()))
    board.apply(local)
    held = board.find("e", T0)
    assert held is not None and held.observed_at.utcoffset() == timedelta(0)
    assert held.observed_at == T0


def timezone_cn() -> Any:
    """UTC+8, the offset a Chinese producer might send."""
    from datetime import timezone

    return timezone(timedelta(hours=8))


# -- readiness, metrics, embedded mode --------------------------------------------------------


async def test_readiness_false_until_catalogue_loads() -> None:
    async with running_publisher(ready=False, wait_ready=False) as env:
        await wait_for(lambda: len(env.bigdata.requests) >= 2)  # it keeps retrying
        resp = await env.client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["checks"]["catalogue"]["ready"] is False
        assert body["checks"]["bus"]["ready"] is True
        await _error(await env.client.get("/api/v1/roads"), 503, "catalogue_loading")
        await _error(await env.client.get("/api/v1/region"), 503, "catalogue_loading")
        # Warnings do not depend on the catalogue.
        assert (await env.client.get("/api/v1/warnings")).status == 200

        env.bigdata.ready = True
        await wait_for(lambda: is_ready(env.client))
        body = await (await env.client.get("/readyz")).json()
        assert body["checks"]["catalogue"]["detail"] == f"{len(SEGMENTS)} segments"
        assert (await _roads(env.client))["count"] == len(SEGMENTS)


async def test_metrics_count_routes_with_bounded_labels(env: Env) -> None:
    await env.client.get("/api/v1/roads/101:1:2")
    await env.client.get("/api/v1/roads/no-such-road")
    await env.client.get("/no/such/path")
    text = await (await env.client.get("/metrics")).text()
    assert 'tti_publisher_http_requests_total{method="GET",route="/api/v1/roads/{segment_id}",' \
           'status="200"}' in text
    assert 'route="/api/v1/roads/{segment_id}",status="404"' in text
    assert 'route="unmatched"' in text
    assert "no-such-road" not in text and "/no/such/path" not in text
    # The latency histogram: cumulative buckets whose +Inf bucket is the route's count.
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line.startswith("tti_publisher_http_request_")}
    route = 'route="/api/v1/roads/{segment_id}"'
    inf = samples[f'tti_publisher_http_request_seconds_bucket{{le="+Inf",{route}}}']
    assert inf == samples[f"tti_publisher_http_request_seconds_count{{{route}}}"] >= 2
    assert samples[f'tti_publisher_http_request_seconds_bucket{{le="0.005",{route}}}'] <= inf
    assert f"tti_publisher_segments_cached {float(len(SEGMENTS))}" in text
    assert "tti_publisher_warnings_active" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_embedded_bigdata_on_the_same_server_does_not_deadlock() -> None:
    """In ``tti run`` bigdata is mounted at /bigdata of this very server."""
    port = _free_port()
    bus = bus_from_url("memory://")
    await bus.start()
    config = Config(bigdata_url=f"http://127.0.0.1:{port}/bigdata")
    app = create_app(config, bus=bus)
    app.add_subapp("/bigdata", make_bigdata_app(BigdataState()))
    app[PUBLISHER].retry_initial_s = 0.02
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        await wait_for(lambda: is_ready(client))
        assert (await _roads(client))["count"] == len(SEGMENTS)
    finally:
        await client.close()
        await bus.close()


# -- OpenAPI ----------------------------------------------------------------------------------


def _served_paths(app: web.Application) -> set[str]:
    paths = set()
    for resource in app.router.resources():
        canonical = resource.canonical
        if canonical:
            paths.add(canonical)
    return paths


async def test_openapi_lists_every_route_the_app_serves(env: Env) -> None:
    resp = await env.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc == build_openapi()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == _served_paths(env.app)
    for path, item in doc["paths"].items():
        assert set(item) <= {"get", "post"} and item, path
        for operation in item.values():
            assert operation["responses"], path
    assert "UTC" in doc["info"]["description"]
    assert "Error" in doc["components"]["schemas"]
    for name in ("/api/v1/roads", "/api/v1/roads/{segment_id}"):
        assert doc["paths"][name]["get"]["responses"]["200"]["content"]
    params = {p["$ref"].rsplit("/", 1)[1]
              for p in doc["paths"]["/api/v1/roads"]["get"]["parameters"]}
    assert params == {"bbox", "min_level", "q", "bridge", "tunnel", "coord"}


def test_openapi_document_is_valid() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(build_openapi())


async def test_responses_match_the_openapi_schemas(env: Env) -> None:
    """The document describes what the API really answers, not just something valid."""
    schema_validator = pytest.importorskip("openapi_schema_validator")
    doc = build_openapi()
    await env.bus.publish(ROAD_STATUS, _status("101:1:2", 4))
    await env.bus.publish(WARNING, _warning("w1"))
    await wait_for(lambda: len(env.publisher.warnings) == 1 and len(env.publisher.roads) == 1)

    def check(schema_name: str, instance: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}",
                  "components": doc["components"]}
        schema_validator.validate(instance, schema, cls=schema_validator.OAS31Validator)

    check("RoadCollection", await _roads(env.client))
    check("RoadFeature", await (await env.client.get("/api/v1/roads/101:1:2")).json(
        content_type=None))
    check("WarningList", await (await env.client.get("/api/v1/warnings?status=all")).json())
    check("Region", await (await env.client.get("/api/v1/region")).json())
    check("Readiness", await (await env.client.get("/readyz")).json())
    check("Health", await (await env.client.get("/healthz")).json())
    check("Error", await (await env.client.get("/api/v1/roads?bbox=x")).json())
