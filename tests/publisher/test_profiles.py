"""Profile fallback across services: the warning service grades a road's time-of-week profile
when it has no live data, the publisher shows it as sent — never free flow, never its own grade.

The publisher and the warning service run on one real memory bus, both reading a bigdata
stand-in (its HTTP contract) for segments and profiles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.publisher.app import PUBLISHER, create_app
from services.publisher.state import Publisher
from services.warning.api.public import SERVICE
from services.warning.app import create_app as create_warning_app
from shared.bus import bus_from_url
from shared.clients.bigdata import BigdataClient, parse_profiles
from shared.config import Config
from shared.errors import TransientError
from shared.events import ROAD_STATUS, RoadStatus
from tests.publisher import BigdataState, is_ready, make_bigdata_app, wait_for

UPDATED = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def _profiles_answer(request: web.Request) -> dict[str, Any]:
    at = datetime.fromisoformat(request.query["at"])
    return {"at": at.isoformat(), "bucket": 2 * 96 + 32, "label": "Wed 08:00",
            "time_zone": "Asia/Shanghai",
            "valid_until": (at + timedelta(minutes=15)).isoformat(), "count": 3,
            "profiles": [
                {"segment_id": "101:1:2", "speed_kmh": 12.0, "sample_windows": 40,
                 "updated_at": UPDATED.isoformat()},
                {"segment_id": "202:3:4", "speed_kmh": 70.0, "sample_windows": 40,
                 "updated_at": UPDATED.isoformat()},
                {"segment_id": "303:5:6", "speed_kmh": "fast"},  # malformed: skipped
            ]}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    bigdata = make_bigdata_app(BigdataState())

    async def profiles(request: web.Request) -> web.Response:
        return web.json_response(_profiles_answer(request))

    bigdata.router.add_get("/v1/profiles", profiles)
    bigdata_server = TestServer(bigdata)
    await bigdata_server.start_server()
    bus = bus_from_url("memory://", partitions=4)
    await bus.start()
    config = Config(bigdata_url=str(bigdata_server.make_url("/")),
                    db_url=f"sqlite:///{tmp_path}/tti.db")
    warning = create_warning_app(config, bus=bus)
    w: TestClient[Any, Any] = TestClient(TestServer(warning))
    await w.start_server()
    config = config.replace(warning_url=str(w.make_url("/")))
    app = create_app(config, bus=bus, bigdata=BigdataClient(config.bigdata_url))
    app[PUBLISHER].retry_initial_s = 0.02
    c: TestClient[Any, Any] = TestClient(TestServer(app))
    await c.start_server()
    try:
        await wait_for(lambda: is_ready(c))
        await wait_for(lambda: warning[SERVICE].ready.is_set())
        await wait_for(lambda: app[PUBLISHER].roads.find("101:1:2", datetime.now(UTC))
                       is not None)
        yield c
    finally:
        await c.close()
        await w.close()
        await bus.close()
        await bigdata_server.close()


async def _props(client: TestClient[Any, Any], segment_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/roads/{segment_id}")
    assert resp.status == 200, await resp.text()
    props: dict[str, Any] = (await resp.json(content_type=None))["properties"]
    return props


async def test_profile_without_live_data_and_probe_with_it(client: TestClient[Any, Any]) -> None:
    props = await _props(client, "101:1:2")
    assert props["source"] == "profile"
    assert props["speed_kmh"] == 12.0
    assert props["sample_count"] == 0
    # primary = arterial group: 12 km/h is below 15, level 5, as the warning service grades it.
    assert props["level"] == 5 and props["level_name"] == "严重拥堵"
    assert props["level_name_en"] == "severe congestion"
    assert props["tpi"] is not None and 8.0 <= props["tpi"] <= 10.0
    trunk = await _props(client, "202:3:4")
    assert trunk["source"] == "profile" and trunk["level"] == 1
    # No profile (and a malformed one) for these: still "none", not free flow.
    for sid in ("303:5:6", "101:2:1"):
        none = await _props(client, sid)
        assert none["source"] == "none" and none["speed_kmh"] is None and none["level"] is None

    publisher: Publisher = client.app[PUBLISHER]
    await publisher.bus.publish(ROAD_STATUS, RoadStatus(
        segment_id="101:1:2", level=2, level_name="基本畅通", speed_kmh=38.0,
        free_flow_kmh=50.0, observed_at=datetime.now(UTC), sample_count=6, source="probe"))

    async def live() -> bool:
        return (await _props(client, "101:1:2"))["source"] == "probe"

    await wait_for(live)
    props = await _props(client, "101:1:2")
    assert props["speed_kmh"] == 38.0 and props["sample_count"] == 6 and props["level"] == 2

    listing = await client.get("/api/v1/roads?min_level=4")
    ids = [f["id"] for f in (await listing.json(content_type=None))["features"]]
    assert ids == []  # 101:1:2 is live level 2 now; 202:3:4's profile is level 1


async def test_the_page_and_api_name_levels_as_the_warning_service(
        client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/levels")
    levels = (await resp.json())["levels"]
    from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN

    assert [(x["name"], x["name_en"]) for x in levels] == [
        (LEVEL_NAMES[n], LEVEL_NAMES_EN[n]) for n in range(1, 6)]


async def test_routes_come_from_the_warning_service(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/route", params={"from": "114.401,30.5001",
                                                    "to": "114.409,30.5001"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    route = body["routes"][0]
    assert route["segment_ids"] == ["101:1:2"] and 700 < route["length_m"] < 800
    assert body["time_zone"] == "UTC"
    far = await client.get("/api/v1/route", params={"from": "100.0,20.0", "to": "114.4,30.5"})
    assert far.status == 400 and (await far.json())["error"]["message"]
    bad = await client.get("/api/v1/route", params={"from": "east", "to": "114.4,30.5"})
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_request"


def test_malformed_profiles_answer_is_a_transient_error() -> None:
    with pytest.raises(TransientError):
        parse_profiles({"profiles": "nope"})
    with pytest.raises(TransientError):
        parse_profiles({"profiles": [], "bucket": 3, "valid_until": 5})
    snap = parse_profiles({"profiles": [{"segment_id": "1:2:3", "speed_kmh": 30,
                                         "updated_at": "2024-05-01T00:00:00Z"}, None],
                           "bucket": 3, "valid_until": "2024-05-01T00:15:00+00:00"})
    assert snap.rejected == 1 and snap.speeds["1:2:3"].speed_kmh == 30.0
