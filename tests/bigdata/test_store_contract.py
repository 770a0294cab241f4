"""The geodatabase contract: the same tests run against SQLite (embedded) and PostGIS.

PostGIS tests each get a fresh database cloned from a per-session template that already has the
extension (cloning takes ~0.1 s; installing PostGIS ~0.5 s). Without a server they skip locally
and fail in CI (``require_server``). The fixtures here are imported by the other bigdata tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import shapely
from shapely.ops import nearest_points

from services.bigdata.store import (
    SCHEMA_VERSION,
    AmbiguousIdError,
    Feature,
    FeatureError,
    GeoStore,
    GtfsData,
    SpeedRecord,
    store_from_url,
)
from services.bigdata.store.postgis import PostgisStore
from services.bigdata.store.sqlite import SqliteStore
from shared.errors import ConfigError, NotFound, TransientError
from shared.geo import haversine_m
from shared.roadnet import RoadSegment, make_segment_id
from tests.conftest import PG_DSN, require_server, unavailable

# --- fixtures (shared with the other tests in tests/bigdata) -------------------------------------


def _dsn_with_db(dsn: str, db: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database with PostGIS installed, to clone per test (dropped at the end)."""
    parts = urlsplit(PG_DSN)
    require_server(parts.hostname or "127.0.0.1", parts.port or 5432, "PostgreSQL")
    name = "tti_tpl_" + uuid.uuid4().hex[:10]
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    try:
        async def install() -> None:
            conn = await asyncpg.connect(_dsn_with_db(PG_DSN, name))
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            finally:
                await conn.close()
        asyncio.run(install())
    except asyncpg.PostgresError as exc:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name}"))
        unavailable(f"PostGIS not available: {exc}")
    yield name
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def pg_url(pg_template: str, unique_name: str) -> Iterator[str]:
    """URL of a fresh PostGIS database (cloned from the template, dropped afterwards)."""
    asyncio.run(_admin(f"CREATE DATABASE {unique_name} TEMPLATE {pg_template}"))
    yield _dsn_with_db(PG_DSN, unique_name)
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {unique_name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", "postgis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend (an empty database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'geo.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[GeoStore]:
    """An opened store of each backend."""
    s = store_from_url(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# --- test data -----------------------------------------------------------------------------------

LON0, LAT0 = 114.40, 30.50  # Optics Valley, Wuhan


def seg(way: int, a: int, b: int, coords: list[tuple[float, float]], *, name: str | None = None,
        name_en: str | None = None, ref: str | None = None, road_class: str = "primary",
        bridge: bool = False) -> RoadSegment:
    length = sum(haversine_m(*p, *q) for p, q in pairwise(coords))
    return RoadSegment(segment_id=make_segment_id(way, a, b), way_id=way, from_node=a,
                       to_node=b, road_class=road_class, name=name, name_en=name_en, ref=ref,
                       lanes=2, speed_limit_kmh=60.0, oneway=False, bridge=bridge,
                       tunnel=False, coords=tuple(coords), length_m=length, free_flow_kmh=60.0)


def grid_segments(n: int = 6, step: float = 0.002) -> list[RoadSegment]:
    """A small street grid, both directions; rows are 高新大道 / 光谷一路 …"""
    out: list[RoadSegment] = []
    node = lambda i, j: 1000 + i * n + j  # noqa: E731
    for j in range(n):
        name = "高新大道" if j == 0 else f"光谷{j}路"
        name_en = "Gaoxin Avenue" if j == 0 else f"Guanggu {j} Road"
        for i in range(n - 1):
            a = (LON0 + i * step, LAT0 + j * step)
            b = (LON0 + (i + 1) * step, LAT0 + j * step)
            out.append(seg(100 + j, node(i, j), node(i + 1, j), [a, b], name=name,
                           name_en=name_en, ref="G316" if j == 0 else None))
            out.append(seg(100 + j, node(i + 1, j), node(i, j), [b, a], name=name,
                           name_en=name_en, ref="G316" if j == 0 else None))
    for i in range(n):
        for j in range(n - 1):
            a = (LON0 + i * step, LAT0 + j * step)
            b = (LON0 + i * step, LAT0 + (j + 1) * step)
            out.append(seg(200 + i, node(i, j), node(i, j + 1), [a, b], name=f"民族{i}街",
                           road_class="secondary"))
    return out


def pt(kind: str, fid: str, lon: float, lat: float, name: str | None = None, **kw: Any
       ) -> Feature:
    return Feature(kind=kind, feature_id=fid, geometry=shapely.Point(lon, lat), name=name, **kw)


def sample_features() -> list[Feature]:
    return [
        pt("parking", "n1", LON0 + 0.001, LAT0 + 0.001, "光谷广场停车场",
           name_en="Optics Valley Square Parking", attrs={"capacity": 120}),
        pt("parking", "n2", LON0 + 0.006, LAT0 + 0.006, "世界城停车场", attrs={"capacity": 40}),
        pt("hotel", "n3", LON0 + 0.003, LAT0 + 0.002, "光谷大酒店", name_en="Guanggu Hotel"),
        pt("toll_station", "n4", LON0 + 0.02, LAT0, "豹澥收费站", ref="S7-03"),
        pt("weather_station", "n5", LON0 - 0.01, LAT0, "东湖气象站"),
        Feature(kind="bridge", feature_id="w9", name="光谷大桥", name_en="Guanggu Bridge",
                geometry=shapely.MultiLineString([[(LON0, LAT0 + 0.004),
                                                   (LON0 + 0.004, LAT0 + 0.004)],
                                                  [(LON0, LAT0 + 0.0042),
                                                   (LON0 + 0.004, LAT0 + 0.0042)]]),
                attrs={"way_ids": [9, 10]}),
        Feature(kind="scenic_spot", feature_id="w20", name="东湖", name_en="East Lake",
                geometry=shapely.box(LON0 - 0.004, LAT0 - 0.004, LON0 - 0.001, LAT0 - 0.001)),
        Feature(kind="waterway", feature_id="w30", name="巡司河", name_en="Xunsi River",
                geometry=shapely.LineString([(LON0 - 0.01, LAT0 + 0.01),
                                             (LON0 + 0.03, LAT0 + 0.05)])),
    ]


KINDS = ["parking", "hotel", "toll_station", "weather_station", "bridge", "scenic_spot",
         "waterway"]


def expected_m(lon: float, lat: float, geom: Any) -> float:
    """Reference distance: haversine to the nearest point of the geometry."""
    if geom.contains(shapely.Point(lon, lat)):
        return 0.0
    near = nearest_points(geom, shapely.Point(lon, lat))[0]
    return haversine_m(lon, lat, near.x, near.y)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=3e-3, abs_tol=0.5)


# --- lifecycle and migrations --------------------------------------------------------------------


async def test_migrations_applied_and_reopen_is_a_no_op(store_url: str) -> None:
    s = store_from_url(store_url)
    await s.open()
    assert await s.schema_version() == SCHEMA_VERSION
    await s.close()
    again = store_from_url(store_url)
    await again.open()  # nothing pending: must not fail or re-run migrations
    try:
        assert await again.schema_version() == SCHEMA_VERSION
    finally:
        await again.close()


def test_store_from_url_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(store_from_url(f"sqlite:///{tmp_path}/x.db"), SqliteStore)
    assert isinstance(store_from_url("postgresql://u@h/db"), PostgisStore)
    with pytest.raises(ConfigError):
        store_from_url("mysql://x")


async def test_sqlite_database_of_version_1_is_migrated_and_its_roads_searchable(
        tmp_path: Path) -> None:
    from services.bigdata.store.sqlite import _V1

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                 "applied_at TEXT NOT NULL)")
    for stmt in _V1.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute("INSERT INTO schema_migrations VALUES (1, '2025-01-01T00:00:00Z')")
    conn.commit()
    conn.close()
    s = SqliteStore(str(path))
    await s.open()
    try:
        assert await s.import_segments("f.osm", "d1", "old", grid_segments()) is True
    finally:
        await s.close()
    # Re-create a version-1 database that already holds roads, then upgrade it.
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM schema_migrations WHERE version > 1")
    conn.execute("DROP TABLE features")
    conn.execute("DROP TABLE features_rtree")
    conn.execute("DROP TABLE road_names")
    conn.execute("DROP INDEX road_segments_ref")
    for t in ("gtfs_feeds", "gtfs_agencies", "gtfs_routes", "gtfs_stops", "gtfs_trips",
              "gtfs_stop_times", "gtfs_shapes", "gtfs_calendar", "gtfs_calendar_dates",
              "gtfs_frequencies"):
        conn.execute(f"DROP TABLE {t}")
    conn.commit()
    conn.close()
    s = SqliteStore(str(path))
    await s.open()
    try:
        assert await s.schema_version() == SCHEMA_VERSION
        hits = await s.search("高新大道", kinds=["road"])
        assert hits[0].id == "高新大道" and len(hits[0].segment_ids) == 10
    finally:
        await s.close()


async def test_postgis_store_reports_an_unreachable_server() -> None:
    s = PostgisStore("postgresql://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(TransientError) as info:
        await s.open()
    assert "secret" not in str(info.value)


# --- road segments -------------------------------------------------------------------------------


async def test_segments_round_trip_and_import_is_idempotent(store: GeoStore) -> None:
    segs = grid_segments()
    assert await store.import_segments("a.osm", "d1", "光谷", segs) is True
    assert await store.import_segments("a.osm", "d1", "光谷", segs) is False
    got = await store.list_segments()
    assert got == segs  # exact coordinates, attributes and import order
    assert await store.find_segment(segs[3].segment_id) == segs[3]
    assert await store.find_segment("1:2:3") is None
    info = await store.region()
    assert info.name == "光谷" and info.segment_count == len(segs)
    assert info.bbox is not None
    assert info.bbox[0] == pytest.approx(LON0, abs=1e-5)
    record = await store.find_import("roads")
    assert record is not None and record.digest == "d1" and record.item_count == len(segs)


async def test_segments_in_bbox_by_extent(store: GeoStore) -> None:
    segs = grid_segments()
    await store.import_segments("a.osm", "d1", "r", segs)
    box = (LON0 + 0.0005, LAT0 - 0.0001, LON0 + 0.0015, LAT0 + 0.0001)
    got = await store.list_segments(box)
    assert {s.segment_id for s in got} == {
        s.segment_id for s in segs
        if min(c[0] for c in s.coords) <= box[2] and max(c[0] for c in s.coords) >= box[0]
        and min(c[1] for c in s.coords) <= box[3] and max(c[1] for c in s.coords) >= box[1]}
    assert await store.list_segments((10.0, 10.0, 10.1, 10.1)) == []


async def test_reimport_with_new_digest_replaces_segments(store: GeoStore) -> None:
    segs = grid_segments()
    await store.import_segments("a.osm", "d1", "r", segs)
    assert await store.import_segments("b.osm", "d2", "r2", segs[:5]) is True
    assert [s.segment_id for s in await store.list_segments()] == [
        s.segment_id for s in segs[:5]]
    assert (await store.region()).name == "r2"
    assert await store.search("光谷5路") == []  # road names follow the segments


async def test_failed_segment_import_leaves_the_database_unchanged(store: GeoStore) -> None:
    segs = grid_segments()
    await store.import_segments("a.osm", "d1", "r", segs)

    def broken() -> Iterator[RoadSegment]:
        yield from segs[:7]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        await store.import_segments("b.osm", "d2", "r2", broken())
    assert await store.list_segments() == segs
    record = await store.find_import("roads")
    assert record is not None and record.digest == "d1"
    # A duplicate id fails inside the database: the same guarantee.
    with pytest.raises(Exception):  # noqa: B017 - sqlite3.IntegrityError / asyncpg error
        await store.import_segments("c.osm", "d3", "r3", [*segs[:3], segs[0]])
    assert await store.list_segments() == segs


async def test_nearest_segments_in_metres(store: GeoStore) -> None:
    segs = grid_segments()
    await store.import_segments("a.osm", "d1", "r", segs)
    lines = {s.segment_id: shapely.LineString(s.coords) for s in segs}
    for lon, lat in [(LON0 + 0.0011, LAT0 + 0.0003), (LON0 + 0.0049, LAT0 + 0.0071),
                     (LON0 - 0.003, LAT0 - 0.002)]:
        got = await store.nearest_segments(lon, lat, k=4)
        ref = sorted((expected_m(lon, lat, g), sid) for sid, g in lines.items())
        assert len(got) == 4
        assert close(got[0].distance_m, ref[0][0])
        assert got[0].segment.segment_id in {sid for d, sid in ref if close(d, ref[0][0])}
        assert [g.distance_m for g in got] == sorted(g.distance_m for g in got)
    far = await store.nearest_segments(LON0 + 0.1, LAT0, k=1)  # 8.6 km east of the grid
    assert len(far) == 1 and close(far[0].distance_m,
                                   haversine_m(LON0 + 0.1, LAT0, LON0 + 0.01, LAT0))
    assert await store.nearest_segments(LON0 + 0.1, LAT0, k=1, max_distance_m=500) == []
    near = await store.nearest_segments(LON0 + 0.0011, LAT0 + 0.0003, k=50, max_distance_m=60)
    assert near and all(n.distance_m <= 60 for n in near)


async def test_speed_history(store: GeoStore) -> None:
    segs = grid_segments()
    await store.import_segments("a.osm", "d1", "r", segs)
    sid = segs[0].segment_id
    t0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    recs = [SpeedRecord(segment_id=sid, window_start=t0 + timedelta(minutes=i),
                        observed_at=t0 + timedelta(minutes=i + 1), speed_kmh=30.0 + i,
                        sample_count=3, source="probe", confidence=0.5) for i in range(5)]
    await store.insert_speeds(recs)
    # The same window again replaces it.
    await store.insert_speeds([SpeedRecord(segment_id=sid, window_start=t0,
                                           observed_at=t0 + timedelta(minutes=1),
                                           speed_kmh=None, sample_count=0, source="probe",
                                           confidence=0.0)])
    got = await store.speed_history(sid, t0, t0 + timedelta(minutes=3))  # [since, until)
    assert [r.window_start for r in got] == [t0, t0 + timedelta(minutes=1),
                                             t0 + timedelta(minutes=2)]
    assert got[0].speed_kmh is None and got[1].speed_kmh == 31.0
    assert got[1].window_start.utcoffset() == timedelta(0)
    assert await store.speed_history("1:2:3", t0, t0 + timedelta(hours=1)) == []


# --- features ------------------------------------------------------------------------------------


async def test_features_import_is_idempotent_and_counts(store: GeoStore) -> None:
    feats = sample_features()
    assert await store.import_features("osm", "f1", KINDS, feats) is True
    assert await store.import_features("osm", "f1", KINDS, feats) is False
    assert await store.feature_counts() == {"bridge": 1, "hotel": 1, "parking": 2,
                                            "scenic_spot": 1, "toll_station": 1,
                                            "waterway": 1, "weather_station": 1}
    got = await store.get_feature("bridge", "w9")
    assert got.name == "光谷大桥" and got.source == "osm" and got.attrs == {"way_ids": [9, 10]}
    assert got.geometry.equals(feats[5].geometry)
    assert got.live is None and got.live_updated_at is None


async def test_reimport_replaces_only_its_source_and_kinds_and_keeps_live_state(
        store: GeoStore) -> None:
    await store.import_features("osm", "f1", KINDS, sample_features())
    await store.import_features("detectors", "x1", ["detector"], [
        pt("detector", "CAM-1", LON0, LAT0, "高新大道摄像头", attrs={"segment_id": "101:1:2"})])
    await store.update_live("parking", "n1", {"free_spaces": 17})
    renamed = pt("parking", "n1", LON0 + 0.001, LAT0 + 0.001, "光谷广场地下停车场",
                 attrs={"capacity": 150})
    # n2 vanished from the source; hotels are not part of this import and must stay.
    assert await store.import_features("osm", "f2", ["parking"], [renamed]) is True
    counts = await store.feature_counts()
    assert counts["parking"] == 1 and counts["hotel"] == 1 and counts["detector"] == 1
    kept = await store.get_feature("parking", "n1")
    assert kept.name == "光谷广场地下停车场" and kept.attrs == {"capacity": 150}
    assert kept.live == {"free_spaces": 17} and kept.live_updated_at is not None
    with pytest.raises(NotFound):
        await store.get_feature("parking", "n2")


async def test_bad_feature_batches_are_rejected_and_change_nothing(store: GeoStore) -> None:
    await store.import_features("osm", "f1", KINDS, sample_features())
    before = await store.feature_counts()
    good = pt("parking", "n7", LON0, LAT0, "新停车场")
    bad_batches: list[list[Feature]] = [
        [good, pt("port", "n8", LON0, LAT0, "港口")],  # kind not in this import's kinds
        [good, good],  # duplicate
        [good, pt("parking", "n9", 200.0, LAT0)],  # outside WGS-84
        [good, Feature(kind="parking", feature_id="a/b", geometry=shapely.Point(LON0, LAT0))],
    ]
    for batch in bad_batches:
        with pytest.raises(FeatureError):
            await store.import_features("osm", "f9", ["parking"], batch)

    def broken() -> Iterator[Feature]:
        yield good
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError):
        await store.import_features("osm", "f9", ["parking"], broken())
    with pytest.raises(FeatureError):
        await store.import_features("osm", "f9", ["castle"], [])
    assert await store.feature_counts() == before
    record = await store.find_import("features:osm")
    assert record is not None and record.digest == "f1"


async def test_features_in_bbox_intersect_exactly(store: GeoStore) -> None:
    await store.import_features("osm", "f1", KINDS, sample_features())
    # This box lies inside the river line's extent but away from the line itself.
    box = (LON0 + 0.02, LAT0 + 0.011, LON0 + 0.028, LAT0 + 0.018)
    assert await store.features_in_bbox(box) == []
    box = (LON0 - 0.002, LAT0 - 0.002, LON0 + 0.0035, LAT0 + 0.0045)
    got = await store.features_in_bbox(box)
    assert [(f.kind, f.feature_id) for f in got] == [
        ("bridge", "w9"), ("hotel", "n3"), ("parking", "n1"), ("scenic_spot", "w20")]
    only = await store.features_in_bbox(box, kinds=["parking", "hotel"])
    assert [f.feature_id for f in only] == ["n3", "n1"]
    assert len(await store.features_in_bbox(box, limit=2)) == 2
    assert len(await store.features_in_bbox(None)) == len(sample_features())
    with pytest.raises(FeatureError):
        await store.features_in_bbox(box, kinds=["castle"])


async def test_nearest_features_in_metres(store: GeoStore) -> None:
    feats = sample_features()
    await store.import_features("osm", "f1", KINDS, feats)
    lon, lat = LON0 + 0.0015, LAT0 + 0.0012
    got = await store.nearest_features(lon, lat, k=3)
    ref = sorted((expected_m(lon, lat, f.geometry), f.feature_id) for f in feats)
    assert [n.feature.feature_id for n in got] == [fid for _, fid in ref[:3]]
    for n, (d, _) in zip(got, ref, strict=False):
        assert close(n.distance_m, d)
    # Inside the lake polygon the distance is 0.
    inside = await store.nearest_features(LON0 - 0.002, LAT0 - 0.002, kinds=["scenic_spot"], k=1)
    assert inside[0].feature.feature_id == "w20" and inside[0].distance_m == 0.0
    parking = await store.nearest_features(lon, lat, kinds=["parking"], k=5)
    assert [n.feature.feature_id for n in parking] == ["n1", "n2"]
    bounded = await store.nearest_features(lon, lat, kinds=["parking"], k=5, max_distance_m=200)
    assert [n.feature.feature_id for n in bounded] == ["n1"]
    # Far away with no bound: still the nearest (the toll station ~20 km west of it is nearer).
    far = await store.nearest_features(LON0 + 0.25, LAT0, kinds=["toll_station"], k=1)
    assert far[0].feature.feature_id == "n4" and close(
        far[0].distance_m, haversine_m(LON0 + 0.25, LAT0, LON0 + 0.02, LAT0))
    assert await store.nearest_features(lon, lat, kinds=["port"]) == []


async def test_search_by_chinese_and_latin_names_ranked(store: GeoStore) -> None:
    await store.import_segments("a.osm", "d1", "r", grid_segments())
    await store.import_features("osm", "f1", KINDS, sample_features())
    hits = await store.search("光谷")
    labels = [(h.kind, h.name) for h in hits]
    # Prefix matches first (shorter names first), then substrings (光谷 inside a longer name).
    assert labels[:3] == [("road", "光谷1路"), ("road", "光谷2路"), ("road", "光谷3路")]
    assert ("bridge", "光谷大桥") in labels and ("hotel", "光谷大酒店") in labels
    assert labels.index(("parking", "光谷广场停车场")) < len(labels)
    assert all(h.match == "prefix" for h in hits[:8])
    road = (await store.search("高新大道"))[0]
    assert road.kind == "road" and road.match == "exact" and len(road.segment_ids) == 10
    assert road.name_en == "Gaoxin Avenue" and road.attrs["road_class"] == "primary"
    assert road.bbox[0] == pytest.approx(LON0)
    by_en = await store.search("gaoxin avenue")  # case-insensitive, English name
    assert by_en[0].id == "高新大道" and by_en[0].match == "exact"
    by_ref = await store.search("g316")
    assert by_ref[0].id == "高新大道"
    assert (await store.search("s7-03"))[0].id == "n4"
    full_width = await store.search("ＧＵＡＮＧＧＵ　ＨＯＴＥＬ")  # NFKC: full-width Latin
    assert [(h.kind, h.id) for h in full_width] == [("hotel", "n3")]
    bridges = await store.search("bridge", kinds=["bridge"])
    assert [(h.id, h.match) for h in bridges] == [("w9", "substring")]
    assert await store.search("光谷", kinds=["road"], limit=2) == hits[:2]
    assert await store.search("不存在的地方") == []
    with pytest.raises(FeatureError):
        await store.search("  ")
    with pytest.raises(FeatureError):
        await store.search("x", kinds=["castle"])


async def test_live_state_updates(store: GeoStore) -> None:
    await store.import_features("osm", "f1", KINDS, sample_features())
    at = datetime(2025, 5, 1, 9, 30, tzinfo=UTC)
    f = await store.update_live("weather_station", "n5",
                                {"temperature_c": 21.5, "visibility_m": 800,
                                 "condition": "雾"}, observed_at=at)
    assert f.live == {"temperature_c": 21.5, "visibility_m": 800, "condition": "雾"}
    assert f.live_updated_at == at
    f = await store.update_live("weather_station", "n5", {"visibility_m": 3000,
                                                          "condition": None})
    assert f.live == {"temperature_c": 21.5, "visibility_m": 3000}
    assert f.live_updated_at is not None and f.live_updated_at > at
    assert (await store.get_feature("weather_station", "n5")).live == f.live
    p = await store.update_live("parking", "n1", {"free_spaces": 0})
    assert p.live == {"free_spaces": 0}
    for bad in ({"free_spaces": 121}, {"free_spaces": -1}, {"free_spaces": 1.5},
                {"free_spaces": True}, {"x": float("nan")}):
        with pytest.raises(FeatureError):
            await store.update_live("parking", "n1", bad)
    assert (await store.get_feature("parking", "n1")).live == {"free_spaces": 0}
    with pytest.raises(NotFound):
        await store.update_live("parking", "n404", {"free_spaces": 1})
    with pytest.raises(NotFound):
        await store.get_feature("hotel", "n1")
    # A state observed before the one held (a late redelivery) changes nothing.
    held = await store.get_feature("weather_station", "n5")
    old = await store.update_live("weather_station", "n5", {"visibility_m": 50},
                                  observed_at=at - timedelta(minutes=1))
    assert old == held
    assert (await store.get_feature("weather_station", "n5")).live == held.live


async def test_osm_import_is_atomic_across_roads_and_features(store: GeoStore) -> None:
    segs = grid_segments()
    out = await store.import_osm("a.osm", "d1", "r", segs, sample_features(),
                                 features_digest="d1:f", feature_kinds=KINDS)
    assert out.roads_changed and out.features_changed
    same = await store.import_osm("a.osm", "d1", "r", segs, sample_features(),
                                  features_digest="d1:f", feature_kinds=KINDS)
    assert not same.changed
    with pytest.raises(FeatureError):
        await store.import_osm("b.osm", "d2", "r", segs[:4],
                               [pt("castle", "n1", LON0, LAT0)], features_digest="d2:f",
                               feature_kinds=KINDS)
    assert len(await store.list_segments()) == len(segs)  # the roads were rolled back too
    assert (await store.find_import("roads")).digest == "d1"  # type: ignore[union-attr]


# --- GTFS ----------------------------------------------------------------------------------------


def tiny_feed(feed_id: str = "city", digest: str = "g1", *, with_features: bool = True
              ) -> GtfsData:
    stops = [("S1", "101", "光谷广场", "Optics Valley Square", None, LAT0, LON0, None, 0, None,
              None, None),
             ("S2", "102", "鲁巷", "Luxiang", None, LAT0 + 0.01, LON0 + 0.01, None, 0, None,
              None, None),
             ("ST", None, "光谷火车站", "Guanggu Railway Station", None, LAT0 + 0.02, LON0,
              None, 1, None, None, None)]
    feats = [pt("bus_stop", f"{feed_id}:S1", LON0, LAT0, "光谷广场")] if with_features else []
    return GtfsData(
        feed_id=feed_id, source="city.zip", digest=digest, agency_timezone="Asia/Shanghai",
        feed_info={"feed_version": "1"}, warnings=("1 stop(s) are not served",),
        tables={
            "gtfs_agencies": [("A", "光谷公交", "https://example.org", "Asia/Shanghai", "zh",
                               None)],
            "gtfs_routes": [("R2", "A", "2", "二路", None, 3, "FF0000", None, None),
                            ("R10", "A", "10", None, None, 3, None, None, 1)],
            "gtfs_stops": stops,
            "gtfs_trips": [("T1", "R2", "WK", "鲁巷", None, 0, None, "SH1", None),
                           ("T2", "R2", "WE", "光谷广场", None, 1, None, None, None),
                           ("T3", "R10", "WK", None, None, None, "B1", None, None)],
            "gtfs_stop_times": [("T1", 2, "S2", 25 * 3600 + 60, 25 * 3600 + 90, None, None,
                                 None, 1.4, 1),
                                ("T1", 1, "S1", 25 * 3600, 25 * 3600, None, 0, None, 0.0, 1),
                                ("T2", 1, "S2", 8 * 3600, 8 * 3600, None, None, None, None,
                                 None)],
            "gtfs_calendar": [("WK", 1, 1, 1, 1, 1, 0, 0, date(2025, 1, 1), date(2025, 12, 31)),
                              ("WE", 0, 0, 0, 0, 0, 1, 1, date(2025, 1, 1),
                               date(2025, 12, 31))],
            "gtfs_calendar_dates": [("WK", date(2025, 5, 1), 2), ("WE", date(2025, 5, 1), 1)],
            "gtfs_frequencies": [("T3", 6 * 3600, 9 * 3600, 600, 0)],
        },
        shapes=[("SH1", ((LON0, LAT0), (LON0 + 0.01, LAT0 + 0.01)), (0.0, 1.4))],
        stop_features=feats)


async def test_gtfs_import_and_queries(store: GeoStore) -> None:
    assert await store.import_gtfs(tiny_feed()) is True
    assert await store.import_gtfs(tiny_feed()) is False
    feeds = await store.list_feeds()
    assert [(f.feed_id, f.agency_timezone, f.counts["stop_times"]) for f in feeds] == [
        ("city", "Asia/Shanghai", 3)]
    assert feeds[0].warnings == ("1 stop(s) are not served",)
    routes = await store.list_routes()
    assert [r.route_id for r in routes] == ["R10", "R2"]  # sort order first, then short name
    trips = await store.trips_for_route("R2")
    assert [(t.trip_id, t.direction_id) for t in trips] == [("T1", 0), ("T2", 1)]
    st = await store.get_trip_stop_times("T1")
    assert [(s.stop_sequence, s.stop_id, s.arrival_s) for s in st] == [
        (1, "S1", 90000), (2, "S2", 90060)]
    assert st[1].shape_dist_traveled == 1.4 and st[0].pickup_type == 0
    with pytest.raises(NotFound):
        await store.get_trip_stop_times("T404")
    assert (await store.find_trip("T3")).block_id == "B1"  # type: ignore[union-attr]
    assert await store.find_trip("T404") is None
    freqs = await store.trip_frequencies("T3")
    assert [(f.start_s, f.end_s, f.headway_s) for f in freqs] == [(21600, 32400, 600)]
    assert await store.active_service_ids(date(2025, 4, 30), "city") == {"WK"}  # Wednesday
    assert await store.active_service_ids(date(2025, 5, 1), "city") == {"WE"}  # holiday swap
    assert await store.active_service_ids(date(2025, 5, 3), "city") == {"WE"}
    assert await store.active_service_ids(date(2026, 5, 4), "city") == set()
    box = (LON0 - 0.001, LAT0 - 0.001, LON0 + 0.011, LAT0 + 0.011)
    assert [s.stop_id for s in await store.stops_in_bbox(box)] == ["S1", "S2"]
    stop = await store.stop_by_id("S1")
    assert stop is not None and stop.name_en == "Optics Valley Square" and stop.code == "101"
    assert await store.stop_by_id("S9") is None
    assert [s.stop_id for s in await store.search_stops("光谷")] == ["S1", "ST"]
    assert [s.stop_id for s in await store.search_stops("luxiang")] == ["S2"]
    assert [s.stop_id for s in await store.search_stops("102")] == ["S2"]
    shape = await store.get_shape("SH1")
    assert shape is not None and shape.coords == ((LON0, LAT0), (LON0 + 0.01, LAT0 + 0.01))
    assert shape.dist_traveled == (0.0, 1.4)
    assert [h.id for h in await store.search("光谷广场", kinds=["bus_stop"])] == ["city:S1"]


async def test_gtfs_feeds_side_by_side_and_ambiguous_ids(store: GeoStore) -> None:
    await store.import_gtfs(tiny_feed("a"))
    await store.import_gtfs(tiny_feed("b"))
    assert len(await store.list_routes()) == 4 and len(await store.list_routes("b")) == 2
    with pytest.raises(AmbiguousIdError):
        await store.get_trip_stop_times("T1")
    with pytest.raises(AmbiguousIdError):
        await store.stop_by_id("S1")
    assert len(await store.get_trip_stop_times("T1", "b")) == 2
    # A new version of feed a replaces only feed a.
    smaller = tiny_feed("a", "g2", with_features=False)
    smaller.tables["gtfs_stop_times"].pop()  # type: ignore[attr-defined]
    assert await store.import_gtfs(smaller) is True
    counts = {f.feed_id: f.counts["stop_times"] for f in await store.list_feeds()}
    assert counts == {"a": 2, "b": 3}
    assert [h.id for h in await store.search("光谷广场", kinds=["bus_stop"])] == ["b:S1"]


async def test_failed_gtfs_import_leaves_the_database_unchanged(store: GeoStore) -> None:
    await store.import_gtfs(tiny_feed())
    broken = tiny_feed(digest="g2")
    duplicate_trip = ("T1", "R2", "WK", None, None, 0, None, None, None)
    broken.tables["gtfs_trips"].append(duplicate_trip)  # type: ignore[attr-defined]
    with pytest.raises(Exception):  # noqa: B017 - duplicate key, raised by either database
        await store.import_gtfs(broken)
    feeds = await store.list_feeds()
    assert feeds[0].digest == "g1" and len(await store.get_trip_stop_times("T1")) == 2
    bad_feature = dataclasses.replace(tiny_feed(digest="g3"),
                                      stop_features=[pt("parking", "city:S1", LON0, LAT0)])
    with pytest.raises(FeatureError):
        await store.import_gtfs(bad_feature)
    assert (await store.list_feeds())[0].digest == "g1"


# --- detector registry ---------------------------------------------------------------------------


async def test_detector_registry_from_csv(store: GeoStore, tmp_path: Path) -> None:
    from services.bigdata.store.features import import_detectors_csv

    segs = grid_segments()
    await store.import_segments("a.osm", "d1", "r", segs)
    watched = segs[0]
    csv_text = (
        "detector_id,segment_id,lon,lat,type,name,name_en\n"
        f"CAM-001,{watched.segment_id},{LON0 + 0.001},{LAT0 + 0.0001},camera,高新大道摄像头,"
        "Gaoxin Ave camera\n"
        f"LOOP-7,{watched.segment_id},,,loop,,\n"  # placed on the middle of its segment
        "RAD-9,9:9:9,114.4,30.5,radar,,\n"  # unknown segment
        "RAD-10,,abc,30.5,radar,,\n"  # bad coordinates
        f"CAM-001,{watched.segment_id},114.4,30.5,camera,,\n"  # duplicate
    )
    path = tmp_path / "detectors.csv"
    path.write_text(csv_text, encoding="utf-8")
    result = await import_detectors_csv(store, path)
    assert (result.applied, result.rows, result.changed) == (2, 5, True)
    assert [e.split(":")[0] for e in result.errors] == ["line 4", "line 5", "line 6"]
    assert not (await import_detectors_csv(store, path)).changed
    cam = await store.get_feature("detector", "CAM-001")
    assert cam.attrs == {"segment_id": watched.segment_id, "type": "camera"}
    loop = await store.get_feature("detector", "LOOP-7")
    mid = shapely.LineString(watched.coords).interpolate(0.5, normalized=True)
    assert loop.geometry.equals_exact(mid, 1e-9)
    assert [h.id for h in await store.search("cam-001")] == ["CAM-001"]
    near = await store.nearest_features(LON0 + 0.001, LAT0 + 0.0001, kinds=["detector"], k=1)
    assert near[0].feature.feature_id == "CAM-001"
    empty = tmp_path / "empty.csv"
    empty.write_text("detector_id,lon,lat\n", encoding="utf-8")
    with pytest.raises(FeatureError):
        await import_detectors_csv(store, empty)
    assert (await store.feature_counts())["detector"] == 2


# --- geofences -----------------------------------------------------------------------------------


def fence_feature(gid: str, kind: str, geometry: Any = None, **props: Any) -> dict[str, Any]:
    """A GeoJSON Feature of a geofence (properties as the import and the API take them)."""
    return {"type": "Feature", "id": gid,
            "geometry": None if geometry is None else shapely.geometry.mapping(geometry),
            "properties": {"name": f"围栏{gid}", "kind": kind, **props}}


def _row_box(i0: int, i1: int, j: int = 0, pad: float = 0.0002) -> Any:
    """A polygon around row ``j`` of the grid from column i0 to i1 (its east-west segments)."""
    step = 0.002
    return shapely.box(LON0 + i0 * step - pad, LAT0 + j * step - pad,
                       LON0 + i1 * step + pad, LAT0 + j * step + pad)


async def test_restricted_road_by_polygon_or_line_resolves_to_the_segments_it_covers(
        store: GeoStore) -> None:
    from services.bigdata.geofences import parse_geofence, resolve_geofence

    segs = grid_segments()
    await store.import_segments("a.osm", "d1", "r", segs)
    by_poly = await resolve_geofence(store, parse_geofence(fence_feature(
        "tunnel", "restricted_road", _row_box(1, 3), vehicle_classes=["dangerous_goods"])))
    # Both directions of the two pieces inside; the cross streets only touch it (10 %).
    assert sorted(by_poly.segment_ids) == sorted([
        make_segment_id(100, 1006, 1012), make_segment_id(100, 1012, 1006),
        make_segment_id(100, 1012, 1018), make_segment_id(100, 1018, 1012)])
    assert by_poly.segments_from == "geometry"
    line = shapely.LineString([(LON0 + 0.002, LAT0 + 0.00005), (LON0 + 0.006, LAT0 + 0.00005)])
    by_line = await resolve_geofence(store, parse_geofence(fence_feature(
        "bridge", "restricted_road", line, vehicle_classes=["dangerous_goods"])))
    assert sorted(by_line.segment_ids) == sorted(by_poly.segment_ids)
    assert await store.covered_segments(shapely.box(LON0 + 1, LAT0, LON0 + 1.01, LAT0 + 0.01)
                                        ) == []


async def test_geofence_put_get_replace_and_delete(store: GeoStore) -> None:
    from services.bigdata.geofences import GeofenceError, parse_geofence, resolve_geofence

    await store.import_segments("a.osm", "d1", "r", grid_segments())
    zone = parse_geofence(fence_feature(
        "z1", "restricted_zone", _row_box(0, 2, 2, pad=0.001), name_en="School zone",
        vehicle_classes=["dangerous_goods", "coach"], time_windows=["22:00-06:00"],
        valid_from="2026-01-01", valid_until="2026-12-31"))
    stored, created = await store.put_geofence(await resolve_geofence(store, zone))
    assert created and stored.source == "api" and stored.updated_at is not None
    again = await store.get_geofence("z1")
    assert again == stored
    assert again.geometry is not None and zone.geometry is not None
    assert again.geometry.equals_exact(zone.geometry, 1e-12)
    assert again.vehicle_classes == ("dangerous_goods", "coach")
    assert again.time_windows == ("22:00-06:00",)
    assert again.valid_from == datetime(2025, 12, 31, 16, tzinfo=UTC)  # local midnight
    assert again.valid_until == datetime(2026, 12, 31, 16, tzinfo=UTC)  # inclusive day
    replaced, created = await store.put_geofence(dataclasses.replace(
        again, name="改名", vehicle_classes=("dangerous_goods",)))
    assert not created and replaced.name == "改名"
    assert replaced.vehicle_classes == ("dangerous_goods",)
    sid = make_segment_id(100, 1000, 1006)
    by_ids = await resolve_geofence(store, parse_geofence(fence_feature(
        "r1", "restricted_road", segment_ids=[sid], vehicle_classes=["taxi"])))
    assert by_ids.bbox == (LON0, LAT0, LON0 + 0.002, LAT0)  # the segments' extent
    await store.put_geofence(by_ids)
    assert [f.geofence_id for f in await store.list_geofences()] == ["r1", "z1"]
    with pytest.raises(GeofenceError, match="unknown segment_ids 9:9:9"):
        await resolve_geofence(store, parse_geofence(fence_feature(
            "r2", "restricted_road", segment_ids=["9:9:9"], vehicle_classes=["taxi"])))
    with pytest.raises(GeofenceError):  # never resolved: no extent to index it by
        await store.put_geofence(parse_geofence(fence_feature(
            "r3", "restricted_road", segment_ids=[sid], vehicle_classes=["taxi"])))
    await store.delete_geofence("z1")
    with pytest.raises(NotFound):
        await store.get_geofence("z1")
    with pytest.raises(NotFound):
        await store.delete_geofence("z1")
    assert [f.geofence_id for f in await store.list_geofences()] == ["r1"]


async def test_geofences_listed_by_bbox_and_kind(store: GeoStore) -> None:
    from services.bigdata.geofences import GeofenceError, parse_geofence, resolve_geofence

    await store.import_segments("a.osm", "d1", "r", grid_segments())
    # An L-shaped route whose extent covers the probe box but whose line does not cross it.
    route = shapely.LineString([(LON0, LAT0), (LON0 + 0.01, LAT0), (LON0 + 0.01, LAT0 + 0.01)])
    fences = [
        fence_feature("a-zone", "restricted_zone", shapely.box(LON0, LAT0, LON0 + 0.001,
                                                               LAT0 + 0.001),
                      vehicle_classes=["dangerous_goods"]),
        fence_feature("b-route", "assigned_route", route, width_m=60, vehicle_ids=["1380"]),
        fence_feature("c-road", "restricted_road", segment_ids=[
            make_segment_id(105, 1005, 1011)], vehicle_classes=["coach"]),
    ]
    for f in fences:
        await store.put_geofence(await resolve_geofence(store, parse_geofence(f)))
    ids = lambda fs: [f.geofence_id for f in fs]  # noqa: E731
    assert ids(await store.list_geofences()) == ["a-zone", "b-route", "c-road"]
    assert ids(await store.list_geofences(kinds=["assigned_route", "restricted_road"])) == [
        "b-route", "c-road"]
    assert ids(await store.list_geofences((LON0 + 0.0005, LAT0 + 0.0005, LON0 + 0.0006,
                                           LAT0 + 0.0006))) == ["a-zone"]
    inner = (LON0 + 0.004, LAT0 + 0.004, LON0 + 0.005, LAT0 + 0.005)
    assert ids(await store.list_geofences(inner)) == []  # in the route's extent, off its line
    # c-road (row 5, columns 0-1) has no geometry: its segments' extent answers.
    assert ids(await store.list_geofences((LON0 + 0.001, LAT0 + 0.0099, LON0 + 0.0011,
                                           LAT0 + 0.0101))) == ["c-road"]
    route_fence = await store.get_geofence("b-route")
    assert route_fence.width_m == 60 and route_fence.vehicle_ids == ("1380",)
    with pytest.raises(GeofenceError):
        await store.list_geofences(kinds=["parking"])


async def test_geofence_import_replaces_only_its_own_source(store: GeoStore) -> None:
    from services.bigdata.geofences import GeofenceError, parse_geofence, resolve_geofence

    await store.import_segments("a.osm", "d1", "r", grid_segments())

    async def fence(gid: str) -> Any:
        return await resolve_geofence(store, parse_geofence(fence_feature(
            gid, "restricted_zone", shapely.box(LON0, LAT0, LON0 + 0.001, LAT0 + 0.001),
            vehicle_classes=["dangerous_goods"])))

    await store.put_geofence(await fence("by-hand"))
    assert await store.import_geofences("file:a.geojson", "h1",
                                        [await fence("a1"), await fence("a2")]) == 2
    assert await store.import_geofences("file:b.geojson", "h2", [await fence("b1")]) == 1
    assert await store.import_geofences("file:a.geojson", "h3", [await fence("a2")]) == 1
    stored = await store.list_geofences()
    assert [(f.geofence_id, f.source) for f in stored] == [
        ("a2", "file:a.geojson"), ("b1", "file:b.geojson"), ("by-hand", "api")]
    record = await store.find_import("geofences:file:a.geojson")
    assert record is not None and record.digest == "h3" and record.item_count == 1
    with pytest.raises(GeofenceError):
        await store.import_geofences("file:a.geojson", "h4", [await fence("x"),
                                                               await fence("x")])
    assert len(await store.list_geofences()) == 3
