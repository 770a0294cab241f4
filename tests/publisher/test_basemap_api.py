"""``/api/v1/basemap`` over the real bigdata app: bigdata's base map, cached in the publisher."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.publisher.basemap import BASEMAP
from shared.demo import DemoRegion, generate_demo_region
from tests.publisher.stack import Stack, import_demo, running_stack


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


def _bbox(demo: DemoRegion) -> str:
    return ",".join(f"{v:.5f}" for v in demo.bbox)


async def test_the_demo_river_comes_from_bigdata_and_stays_cached(stack: Stack,
                                                                  demo: DemoRegion) -> None:
    url = f"/api/v1/basemap?bbox={_bbox(demo)}&zoom=14"
    resp = await stack.client.get(url)
    assert resp.status == 200 and resp.content_type == "application/geo+json"
    body: Any = await resp.json(content_type=None)
    assert body == await (await stack.bigdata.get(
        f"/v1/basemap?bbox={_bbox(demo)}&zoom=14")).json(content_type=None)
    river = [f for f in body["features"] if f["properties"]["name"] == demo.river_name]
    assert {f["geometry"]["type"] for f in river} == {"Polygon", "LineString"}
    tag = resp.headers["ETag"]
    again = await stack.client.get(url, headers={"If-None-Match": tag})
    assert again.status == 304
    # bigdata goes away: the cached box still answers, a new one is 503.
    await stack.bigdata.close()
    assert (await stack.client.get(url)).status == 200
    other = await stack.client.get(f"/api/v1/basemap?bbox={_bbox(demo)}&zoom=13")
    assert other.status == 503
    assert (await other.json())["error"]["code"] == "bigdata_unavailable"


async def test_the_cache_is_bounded(stack: Stack, demo: DemoRegion) -> None:
    cache = stack.client.app[BASEMAP]  # type: ignore[index]
    cache.max_entries = 2
    for zoom in (10, 11, 12):
        assert (await stack.client.get(f"/api/v1/basemap?bbox={_bbox(demo)}&zoom={zoom}")
                ).status == 200
    assert [k[1] for k in cache._entries] == [11, 12]


async def test_bad_parameters_are_400(stack: Stack) -> None:
    for query in ("zoom=12", "bbox=114,30,115,31", "bbox=114,30,115,31&zoom=21",
                  "bbox=100,20,115,31&zoom=5", "bbox=a,b,c,d&zoom=3"):
        resp = await stack.client.get("/api/v1/basemap?" + query)
        assert resp.status == 400, query
        assert (await resp.json())["error"]["code"] == "bad_request"
