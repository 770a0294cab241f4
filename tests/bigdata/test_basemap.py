"""The base map: extracted from OSM with the features, stored by both backends, served by zoom.

The store tests run against SQLite and PostGIS (the contract fixtures of test_store_contract);
extraction reads the generated demo city and the real Optics Valley extract; serving goes through
the real bigdata app over the imported demo region.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import shapely
from aiohttp.test_utils import TestClient, TestServer

from services.bigdata import basemap
from services.bigdata.app import create_app
from services.bigdata.basemap import render_basemap
from services.bigdata.osm_features import extract_osm, import_osm_file
from services.bigdata.store import BasemapItem, FeatureError, GeoStore, store_from_url
from shared.bus.memory import MemoryBus
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from tests.bigdata.test_store_contract import (  # noqa: F401  (fixtures)
    KINDS,
    LAT0,
    LON0,
    grid_segments,
    pg_template,
    pg_url,
    sample_features,
    store,
    store_url,
)
from tests.conftest import reference_file


def _square(lon: float, lat: float, side: float) -> shapely.Polygon:
    return shapely.box(lon, lat, lon + side, lat + side)


def sample_basemap() -> list[BasemapItem]:
    return [
        BasemapItem(layer="water", item_id="w1", cls="lake", name="南湖", name_en="South Lake",
                    geometry=_square(LON0, LAT0, 0.01), size_m=1000.0),
        BasemapItem(layer="green", item_id="w2", cls="park", name="小游园",
                    geometry=_square(LON0 + 0.002, LAT0, 0.0005), size_m=50.0),
        BasemapItem(layer="water", item_id="w3", cls="river",
                    geometry=shapely.LineString([(LON0, LAT0), (LON0 + 0.02, LAT0)]),
                    size_m=1900.0),
        BasemapItem(layer="landuse", item_id="r4", cls="industrial",
                    geometry=_square(LON0 + 0.5, LAT0, 0.01), size_m=1000.0),
        BasemapItem(layer="place", item_id="n5", cls="city", name="武汉", name_en="Wuhan",
                    geometry=shapely.Point(LON0 + 0.001, LAT0 + 0.001), rank=1),
        BasemapItem(layer="place", item_id="n6", cls="neighbourhood", name="关山",
                    geometry=shapely.Point(LON0 + 0.002, LAT0 + 0.001), rank=5),
    ]


BOX = (LON0 - 0.01, LAT0 - 0.01, LON0 + 0.05, LAT0 + 0.05)


@pytest.fixture
def geo(store: GeoStore) -> GeoStore:  # noqa: F811  (the contract's store, of each backend)
    return store


async def _import(geo: GeoStore, digest: str, items: list[BasemapItem] | None) -> None:
    await geo.import_osm("a.osm", digest, "r", grid_segments(), sample_features(),
                           features_digest=f"{digest}:f", feature_kinds=KINDS, basemap=items)


async def test_basemap_is_geod_with_the_features_and_read_by_box(geo: GeoStore) -> None:
    await _import(geo, "d1", sample_basemap())
    items = await geo.basemap_in_bbox(BOX)
    # Places first by rank, then the biggest shapes; the far industrial area is outside.
    assert [i.item_id for i in items] == ["n5", "n6", "w3", "w1", "w2"]
    lake = next(i for i in items if i.item_id == "w1")
    assert (lake.layer, lake.cls, lake.name, lake.name_en) == ("water", "lake", "南湖",
                                                               "South Lake")
    assert lake.geometry.equals(_square(LON0, LAT0, 0.01))
    assert [i.item_id for i in await geo.basemap_in_bbox(BOX, min_size_m=100.0,
                                                           max_rank=1)] == ["n5", "w3", "w1"]
    assert [i.item_id for i in await geo.basemap_in_bbox(BOX, layers=["water"])] == [
        "w3", "w1"]
    assert len(await geo.basemap_in_bbox(BOX, limit=2)) == 2
    with pytest.raises(FeatureError):
        await geo.basemap_in_bbox(BOX, layers=["buildings"])


async def test_basemap_goes_with_the_features_digest(geo: GeoStore) -> None:
    await _import(geo, "d1", sample_basemap())
    # The same file again changes nothing; None keeps the base map held.
    await _import(geo, "d1", [])
    await geo.import_osm("a.osm", "d2", "r", grid_segments(), sample_features(),
                           features_digest="d2:f", feature_kinds=KINDS)
    assert len(await geo.basemap_in_bbox(BOX)) == 5
    # A new extraction replaces it whole.
    await _import(geo, "d3", sample_basemap()[:1])
    assert [i.item_id for i in await geo.basemap_in_bbox(BOX)] == ["w1"]


async def test_a_bad_basemap_item_rolls_back_the_whole_import(geo: GeoStore) -> None:
    await _import(geo, "d1", sample_basemap())
    bad = BasemapItem(layer="green", item_id="w9", cls="park",
                      geometry=shapely.Point(LON0, LAT0))  # a park must be a polygon
    with pytest.raises(FeatureError):
        await geo.import_osm("b.osm", "d2", "r", grid_segments()[:4], sample_features()[:1],
                               features_digest="d2:f", feature_kinds=KINDS,
                               basemap=[*sample_basemap(), bad])
    assert len(await geo.list_segments()) == len(grid_segments())
    assert len(await geo.basemap_in_bbox(BOX)) == 5
    with pytest.raises(FeatureError, match="duplicate"):
        await _import(geo, "d3", [*sample_basemap(), sample_basemap()[0]])


# --- extraction ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


def test_demo_city_has_its_river_parks_land_use_and_labels(demo: DemoRegion) -> None:
    features, items = extract_osm(demo.osm_path)
    river_line = next(f for f in features if f.kind == "waterway").geometry
    water = [i for i in items if i.layer == "water" and i.geometry.geom_type == "Polygon"]
    river = next(i for i in water if i.cls == "river")
    assert (river.name, river.name_en) == (demo.river_name, demo.river_name_en)
    # The river's water covers its centre line (the blank gap of the old page is filled).
    assert river.geometry.buffer(1e-6).contains(river_line)
    assert any(i.cls == "lake" for i in water)
    green = {i.cls: i for i in items if i.layer == "green"}
    assert {"park", "grass", "forest"} <= set(green)
    assert green["park"].name == "江滩公园"
    assert {i.cls for i in items if i.layer == "landuse"} == {"residential", "commercial",
                                                             "industrial"}
    places = {i.cls: i for i in items if i.layer == "place"}
    assert (places["city"].name, places["city"].name_en, places["city"].rank) == (
        demo.name, demo.name_en, 1)
    assert places["suburb"].rank == 3 and places["neighbourhood"].rank == 5
    # No bridge or road is hidden under a land use: the districts stay off the river's rows.
    assert not any(i.geometry.intersects(river.geometry) for i in items
                   if i.layer == "landuse")


def test_real_extract_gives_water_green_land_use_and_places() -> None:
    _, items = extract_osm(reference_file("osm", "wuhan_optics_valley.osm"))
    layers = {i.layer for i in items}
    assert layers == {"water", "green", "landuse", "place"}
    assert all(i.geometry.is_valid for i in items)
    zone = next(i for i in items if i.layer == "place" and i.name == "东湖高新区")
    assert zone.name_en == "East Lake High-tech Zone" and zone.cls == "town"


def test_rendering_is_bounded_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = [(LON0 + 0.01 * k / 400, LAT0 + (k % 2) * 1e-4)
            for k in range(400)]
    items = [BasemapItem(layer="water", item_id=f"w{n}", cls="river", size_m=1000.0 - n,
                         geometry=shapely.LineString(ring)) for n in range(10)]
    full = render_basemap(items, BOX, 18)
    assert full["count"] == 10 and not full["truncated"]
    monkeypatch.setattr(basemap, "MAX_VERTICES", 1000)
    cut = render_basemap(items, BOX, 18)
    assert cut["truncated"] and cut["vertices"] <= 1000 and cut["count"] == 2
    monkeypatch.setattr(basemap, "MAX_ITEMS", 1)
    assert render_basemap(items, BOX, 18)["count"] == 1


# --- serving ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported_db(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "geo.db"

    async def load() -> None:
        s = store_from_url(f"sqlite:///{path}")
        await s.open()
        try:
            await import_osm_file(s, demo.osm_path)
        finally:
            await s.close()

    asyncio.run(load())
    return path


@pytest.fixture
async def client(demo: DemoRegion, imported_db: Path, tmp_path: Path
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    db = tmp_path / "geo.db"
    shutil.copy(imported_db, db)
    config = Config(db_url=f"sqlite:///{db}", osm=str(demo.osm_path), var_dir=str(tmp_path),
                    partitions=4)
    bus = MemoryBus(partitions=4)
    await bus.start()
    c: TestClient[Any, Any] = TestClient(TestServer(create_app(config, bus=bus)))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()
        await bus.close()


async def _basemap(client: TestClient[Any, Any], query: str, status: int = 200) -> Any:
    resp = await client.get("/v1/basemap?" + query)
    body = await resp.json(content_type=None)
    assert resp.status == status, body
    if status == 200:
        assert resp.content_type == "application/geo+json"
    return body


async def test_served_as_geojson_simplified_by_zoom(client: TestClient[Any, Any],
                                                    demo: DemoRegion) -> None:
    bbox = ",".join(repr(v) for v in demo.bbox)
    near = await _basemap(client, f"bbox={bbox}&zoom=16")
    far = await _basemap(client, f"bbox={bbox}&zoom=11")
    assert near["type"] == "FeatureCollection" and "OpenStreetMap" in near["attribution"]
    by_id = {f["id"]: f for f in near["features"]}
    river = next(f for f in near["features"] if f["properties"]["class"] == "river"
                 and f["geometry"]["type"] == "Polygon")
    assert river["properties"]["name"] == demo.river_name
    assert river["properties"]["layer"] == "water"
    assert far["vertices"] < near["vertices"]
    # Neighbourhood labels only close up; the city's name at every zoom.
    def classes(answer: Any) -> set[str]:
        return {f["properties"]["class"] for f in answer["features"]
                if f["properties"]["layer"] == "place"}
    assert classes(near) == {"city", "suburb", "neighbourhood"}
    assert classes(far) == {"city", "suburb"}
    assert {"city"} == classes(await _basemap(client, f"bbox={bbox}&zoom=8"))
    # Clipped to the box: a small box far from the lake does not carry it.
    lake = next(f for f in by_id.values() if f["properties"]["class"] == "lake")
    lon, lat = lake["geometry"]["coordinates"][0][0]
    small = await _basemap(client, f"bbox={lon + 0.02},{lat + 0.02},{lon + 0.03},{lat + 0.03}"
                                   "&zoom=16&layers=water")
    assert all(f["properties"]["class"] != "lake" for f in small["features"])
    assert all(f["properties"]["layer"] == "water" for f in small["features"])


async def test_bad_parameters_are_400(client: TestClient[Any, Any]) -> None:
    for query in ("zoom=12", "bbox=114,30,115,31", "bbox=114,30,115,31&zoom=21",
                  "bbox=114,30,115,31&zoom=-1", "bbox=114,30,115&zoom=12",
                  "bbox=114,30,115,31&zoom=12&layers=roads"):
        body = await _basemap(client, query, 400)
        assert body["error"]["code"] == "bad_request", query
