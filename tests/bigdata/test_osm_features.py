"""OSM features: tag classification, grouping, geometry; the OSM import and ``tti import-osm``.

Acceptance: the real Wuhan extract and the demo region import on both backends; 高新大道, the
demo's bridges (江城一桥, 江城二桥) and tunnel (江城隧道) are found by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services import cli
from services.bigdata.osm_features import (
    OSM_KINDS,
    attach_segments,
    classify,
    extract_features,
    import_osm_file,
)
from services.bigdata.store import GeoStore, store_from_url
from shared.demo import DemoRegion, generate_demo_region
from shared.errors import TtiError
from shared.roadnet import RoadNetwork
from tests.bigdata import test_store_contract as contract

# The backend fixtures of the contract suite: every test here runs on SQLite and PostGIS.
pg_template = contract.pg_template
pg_url = contract.pg_url
store_url = contract.store_url
store = contract.store

LON0, LAT0 = 114.30, 30.60


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.mark.parametrize(("tags", "kinds"), [
    ({"highway": "toll_booth"}, ["toll_station"]),
    ({"barrier": "toll_booth", "name": "豹澥收费站"}, ["toll_station"]),
    ({"highway": "services", "name": "军山服务区"}, ["service_area"]),
    ({"highway": "bus_stop", "public_transport": "platform", "bus": "yes"}, ["bus_stop"]),
    ({"public_transport": "platform", "bus": "yes"}, ["bus_stop"]),
    ({"public_transport": "stop_position", "bus": "yes"}, []),
    ({"public_transport": "platform", "railway": "platform", "train": "yes"}, []),
    ({"amenity": "bus_station", "name": "光谷公交总站"}, ["bus_station"]),
    ({"amenity": "bus_station", "name": "宏基长途汽车客运站"}, ["coach_station"]),
    ({"amenity": "bus_station", "name:en": "Fujiapo Long-distance Bus Station"},
     ["coach_station"]),
    ({"amenity": "bus_station", "coach": "yes"}, ["coach_station"]),
    ({"public_transport": "station", "bus": "yes"}, ["bus_station"]),
    ({"railway": "station", "public_transport": "station", "subway": "yes"}, ["rail_station"]),
    ({"public_transport": "station", "train": "yes"}, ["rail_station"]),
    ({"railway": "halt"}, ["rail_station"]),
    ({"landuse": "port"}, ["port"]),
    ({"harbour": "yes"}, ["port"]),
    ({"industrial": "port"}, ["port"]),
    ({"amenity": "ferry_terminal", "name": "中华路码头"}, ["port"]),
    ({"amenity": "parking", "capacity": "300"}, ["parking"]),
    ({"tourism": "attraction"}, ["scenic_spot"]),
    ({"tourism": "museum"}, ["scenic_spot"]),
    ({"tourism": "hotel"}, ["hotel"]),
    ({"tourism": "guest_house"}, ["hotel"]),
    ({"man_made": "monitoring_station", "monitoring:weather": "yes"}, ["weather_station"]),
    ({"man_made": "monitoring_station", "monitoring:air_quality": "yes"}, []),
    ({"amenity": "parking", "tourism": "hotel"}, ["parking", "hotel"]),
    ({"highway": "primary", "name": "珞喻路"}, []),
])
def test_classify(tags: dict[str, str], kinds: list[str]) -> None:
    assert [k for k, _ in classify(tags)] == kinds


def test_classify_attrs() -> None:
    ((_, parking),) = classify({"amenity": "parking", "capacity": "300", "parking":
                                "underground", "fee": "yes"})
    assert parking == {"capacity": 300, "parking": "underground"}
    assert classify({"amenity": "parking", "capacity": "many"})[0][1] == {}
    ((_, hotel),) = classify({"tourism": "hotel", "stars": "4"})
    assert hotel == {"tourism": "hotel", "stars": 4}
    ((_, rail),) = classify({"railway": "station", "station": "subway"})
    assert rail["station"] == "subway"


def _osm(nodes: list[tuple[int, float, float, dict[str, str]]],
         ways: list[tuple[int, list[int], dict[str, str]]],
         relations: list[tuple[int, list[tuple[str, int, str]], dict[str, str]]]) -> str:
    def tags(t: dict[str, str]) -> str:
        return "".join(f'<tag k="{k}" v="{v}"/>' for k, v in t.items())

    out = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    out += [f'<node id="{i}" version="1" lat="{lat}" lon="{lon}">{tags(t)}</node>'
            for i, lon, lat, t in nodes]
    out += [f'<way id="{i}" version="1">' + "".join(f'<nd ref="{n}"/>' for n in nds)
            + tags(t) + "</way>" for i, nds, t in ways]
    out += [f'<relation id="{i}" version="1">' + "".join(
        f'<member type="{mt}" ref="{ref}" role="{role}"/>' for mt, ref, role in members)
        + tags(t) + "</relation>" for i, members, t in relations]
    out.append("</osm>")
    return "\n".join(out)


@pytest.fixture
def sample_osm(tmp_path: Path) -> Path:
    d = 0.0002  # ≈ 20 m
    nodes: list[tuple[int, float, float, dict[str, str]]] = []

    def node(i: int, lon: float, lat: float, **tags: str) -> int:
        nodes.append((i, lon, lat, dict(tags)))
        return i

    road = {"highway": "primary", "bridge": "yes", "name": "长江大桥",
            "name:en": "Yangtze River Bridge", "layer": "1"}
    for i, (x, y) in enumerate([(0, 0), (0.01, 0), (0, d), (0.01, d), (0.05, 0), (0.06, 0)]):
        node(1 + i, LON0 + x, LAT0 + y)
    for i, x in enumerate([0.0, 0.002, 0.004, 0.006]):
        node(20 + i, LON0 + x, LAT0 + 0.01)
    square = [(0.02, 0.02), (0.021, 0.02), (0.021, 0.021), (0.02, 0.021)]
    for i, (x, y) in enumerate(square):
        node(40 + i, LON0 + x, LAT0 + y)
    port = [(0.03, 0.03), (0.035, 0.03), (0.035, 0.035), (0.03, 0.035)]
    for i, (x, y) in enumerate(port):
        node(50 + i, LON0 + x, LAT0 + y)
    for i, x in enumerate([0.0, 0.01, 0.02, 0.03]):
        node(60 + i, LON0 + x, LAT0 - 0.01)
    node(100, LON0 + 0.001, LAT0 + 0.001, highway="toll_booth", name="收费站")
    node(101, LON0 + 0.002, LAT0 + 0.001, tourism="hotel", stars="4", name="光谷酒店",
         **{"name:en": "Optics Valley Hotel"})
    node(102, LON0 + 0.003, LAT0 + 0.001, man_made="monitoring_station",
         name="东湖气象站", **{"monitoring:weather": "yes"})
    node(103, LON0 + 0.004, LAT0 + 0.001, amenity="bus_station", name="宏基长途汽车客运站")
    node(104, LON0 + 0.005, LAT0 + 0.001, railway="station", public_transport="station",
         train="yes", name="武汉站", alt_name="武汉火车站", **{"name:en": "Wuhan Station"})
    node(105, LON0 + 0.006, LAT0 + 0.001, highway="bus_stop", public_transport="platform",
         bus="yes", name="光谷广场")
    node(106, LON0 + 0.007, LAT0 + 0.001, public_transport="stop_position", bus="yes")
    ways = [
        (1, [1, 2], road),
        (2, [4, 3], road),  # the other carriageway, 20 m away: the same bridge
        (3, [5, 6], road),  # same name, 4 km away: another bridge
        (4, [20, 21], {"highway": "motorway_link", "bridge": "yes"}),
        (5, [21, 22], {"highway": "footway", "bridge": "yes", "name": "人行天桥"}),
        (6, [22, 23], {"highway": "primary", "tunnel": "yes", "name": "东湖路",
                       "tunnel:name": "东湖隧道"}),
        (7, [20, 23], {"highway": "primary", "tunnel": "culvert"}),
        (8, [40, 41, 42, 43, 40], {"amenity": "parking", "capacity": "200", "name": "停车场"}),
        (10, [50, 51, 52, 53, 50], {}),
        (11, [60, 61], {"waterway": "river", "name": "长江", "name:en": "Yangtze"}),
        (12, [61, 62], {"waterway": "river", "name": "长江"}),
        (13, [62, 63], {"waterway": "canal", "name": "运河"}),
    ]
    relations = [(9, [("way", 10, "outer")], {"type": "multipolygon", "landuse": "port",
                                               "name": "阳逻港"})]
    path = tmp_path / "sample.osm"
    path.write_text(_osm(nodes, ways, relations), encoding="utf-8")
    return path


def test_extract_features_from_sample(sample_osm: Path) -> None:
    feats = extract_features(sample_osm)
    by: dict[tuple[str, str], Any] = {(f.kind, f.feature_id): f for f in feats}
    bridges = sorted((f.feature_id, f.name, f.attrs["way_ids"]) for f in feats
                     if f.kind == "bridge")
    assert bridges == [("w1", "长江大桥", [1, 2]), ("w3", "长江大桥", [3]), ("w4", None, [4])]
    first = by[("bridge", "w1")]
    assert first.geometry.geom_type == "MultiLineString" and first.name_en == (
        "Yangtze River Bridge")
    assert first.attrs["layer"] == "1" and first.attrs["road_classes"] == ["primary"]
    tunnels = [f for f in feats if f.kind == "tunnel"]
    assert [(t.feature_id, t.name, t.attrs["road_names"]) for t in tunnels] == [
        ("w6", "东湖隧道", ["东湖路"])]
    parking = by[("parking", "w8")]
    assert parking.geometry.geom_type == "Polygon" and parking.attrs["capacity"] == 200
    port = by[("port", "r9")]
    assert port.geometry.geom_type == "Polygon" and port.name == "阳逻港"
    assert port.geometry.area > 0
    rivers = sorted((f.feature_id, f.name, f.attrs["waterway"], f.attrs["way_ids"])
                    for f in feats if f.kind == "waterway")
    assert rivers == [("w11", "长江", "river", [11, 12]), ("w13", "运河", "canal", [13])]
    assert by[("waterway", "w11")].geometry.geom_type == "LineString"  # merged
    assert by[("toll_station", "n100")].name == "收费站"
    assert by[("hotel", "n101")].attrs["stars"] == 4
    assert ("weather_station", "n102") in by and ("coach_station", "n103") in by
    station = by[("rail_station", "n104")]
    assert station.name_en == "Wuhan Station" and station.attrs["alt_names"] == ["武汉火车站"]
    assert ("bus_stop", "n105") in by
    assert not any(f.feature_id in ("w5", "w7", "n106", "w10") for f in feats)
    assert {f.kind for f in feats} <= set(OSM_KINDS)


def test_bridges_and_tunnels_carry_their_segment_ids(demo: DemoRegion) -> None:
    net = RoadNetwork.from_osm(demo.osm_path)
    feats = attach_segments(extract_features(demo.osm_path), net)
    named = {f.name: f for f in feats if f.kind in ("bridge", "tunnel") and f.name}
    for structure in (*demo.bridges, *demo.tunnels):
        f = named[structure.name]
        assert f.name_en == structure.name_en
        assert set(f.attrs["way_ids"]) == set(structure.way_ids)
        assert set(f.attrs["segment_ids"]) == set(structure.segment_ids)
    river = next(f for f in feats if f.kind == "waterway")
    assert (river.name, river.name_en) == (demo.river_name, demo.river_name_en)


def test_unreadable_files_raise_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.osm"
    garbage.write_bytes(b"\x00\x01 not xml")
    with pytest.raises(TtiError, match="cannot read OSM file"):
        extract_features(garbage)
    with pytest.raises(TtiError, match="not found"):
        extract_features(tmp_path / "missing.osm")


async def test_demo_region_structures_found_by_name(store: GeoStore, demo: DemoRegion) -> None:
    summary = await import_osm_file(store, demo.osm_path)
    assert summary.roads_changed and summary.features_changed
    assert summary.segment_count == demo.segment_count
    assert summary.feature_counts["bridge"] >= 2 and summary.feature_counts["tunnel"] == 1
    for name, kind, structure in [("江城一桥", "bridge", demo.bridges[0]),
                                  ("江城二桥", "bridge", demo.bridges[1]),
                                  ("江城隧道", "tunnel", demo.tunnels[0])]:
        hits = await store.search(name)
        top = hits[0]
        assert (top.kind, top.name, top.match) == (kind, name, "exact")
        feature = await store.get_feature(kind, top.id)
        assert set(feature.attrs["segment_ids"]) == set(structure.segment_ids)
        # The road itself is found too, with its segments.
        road = next(h for h in hits if h.kind == "road")
        assert set(road.segment_ids) == set(structure.segment_ids)
    english = await store.search("second bridge")
    assert english[0].name == "江城二桥"
    river = await store.search(demo.river_name, kinds=["waterway"])
    assert river[0].name_en == demo.river_name_en
    again = await import_osm_file(store, demo.osm_path)
    assert not again.changed
    assert again.feature_counts == summary.feature_counts


async def test_unchanged_reimport_counts_only_what_the_file_imported(store: GeoStore,
                                                                      demo: DemoRegion) -> None:
    from services.bigdata.gtfs_import import import_gtfs_file

    first = await import_osm_file(store, demo.osm_path)
    await import_gtfs_file(store, demo.gtfs_path)  # adds bus_stop features of its own
    assert (await store.feature_counts())["bus_stop"] > first.feature_counts["bus_stop"]
    again = await import_osm_file(store, demo.osm_path)
    assert not again.changed
    assert again.feature_counts == first.feature_counts
    assert again.describe().split(" — ")[0] == first.describe().split(" — ")[0]


def test_cli_imports_default_to_the_region_database(run_cli: Any, demo: DemoRegion,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Without TTI_DB_URL the OSM file's region gets its own file, the one `tti run --osm` uses;
    # the GTFS feed goes to the region --osm names.
    monkeypatch.delenv("TTI_DB_URL", raising=False)
    var = tmp_path / "var"
    assert run_cli(["import-osm", str(demo.osm_path), "--var-dir", str(var)]) == 0
    assert run_cli(["import-gtfs", str(demo.gtfs_path), "--var-dir", str(var),
                    "--osm", str(demo.osm_path)]) == 0
    capsys.readouterr()
    dbs = sorted(var.glob("*/tti.db"))
    assert [d.parent.name for d in dbs] == [cli.load_config({}).region_key(str(demo.osm_path))]
    assert _state(f"sqlite:///{dbs[0]}")[1]["bus_stop"] > 0


async def test_wuhan_extract_imports_and_finds_gaoxin_avenue(store: GeoStore,
                                                             shared_data: Path) -> None:
    path = shared_data / "osm" / "wuhan_optics_valley.osm"
    summary = await import_osm_file(store, path)
    assert summary.segment_count > 500
    assert summary.feature_counts.get("rail_station", 0) >= 3
    hits = await store.search("高新大道")
    road = next(h for h in hits if h.kind == "road" and h.name == "高新大道")
    assert road.match == "exact" and len(road.segment_ids) > 10
    segs = [await store.find_segment(sid) for sid in road.segment_ids[:5]]
    assert all(s is not None and s.name == "高新大道" for s in segs)
    stops = await store.search("高新大道", kinds=["bus_stop"])
    assert stops and all(h.match == "prefix" for h in stops)
    station = await store.search("Guanggu 7th Road", kinds=["rail_station"])
    assert [h.name for h in station] == ["光谷七路"]
    near = await store.nearest_features(station[0].center[0], station[0].center[1],
                                        kinds=["rail_station"], k=1)
    assert near[0].feature.name == "光谷七路" and near[0].distance_m == 0.0
    assert not (await import_osm_file(store, path)).changed


# --- tti import-osm -------------------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``tti …`` in-process, without installing uvloop or replacing pytest's log handlers."""
    monkeypatch.setattr(cli, "_install_uvloop", lambda: None)
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    yield cli.main


def _state(url: str) -> tuple[int, dict[str, int]]:
    async def q() -> tuple[int, dict[str, int]]:
        s = store_from_url(url)
        await s.open()
        try:
            return (await s.region()).segment_count, await s.feature_counts()
        finally:
            await s.close()
    return asyncio.run(q())


def test_cli_import_osm(run_cli: Any, store_url: str, demo: DemoRegion, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["import-osm", str(demo.osm_path), "--db-url", store_url]) == 0
    out, err = capsys.readouterr()
    assert f"{demo.segment_count:,} road segments" in out and "imported" in out
    assert "bridge" in out and "roads: reading" in err  # summary on stdout, progress on stderr
    before = _state(store_url)
    assert run_cli(["import-osm", str(demo.osm_path), "--db-url", store_url]) == 0
    assert "already imported (unchanged)" in capsys.readouterr().out
    garbage = tmp_path / "garbage.osm"
    garbage.write_bytes(b"<osm><node id='1' lat='x'")
    empty = tmp_path / "empty.osm"
    empty.write_text('<?xml version="1.0"?><osm version="0.6"><node id="1" version="1" '
                     'lat="30.5" lon="114.3"/></osm>')
    for bad, message in [(garbage, "cannot read OSM file"), (tmp_path / "nope.osm",
                                                             "not found"),
                         (empty, "no routable roads")]:
        assert run_cli(["import-osm", str(bad), "--db-url", store_url]) == 2
        assert message in capsys.readouterr().err
        assert _state(store_url) == before


def test_cli_import_detectors(run_cli: Any, store_url: str, demo: DemoRegion, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["import-osm", str(demo.osm_path), "--db-url", store_url]) == 0
    capsys.readouterr()
    seg = demo.incident_segment_id
    registry = tmp_path / "detectors.csv"
    registry.write_text("detector_id,segment_id,lon,lat,type,name\n"
                        f"cam-1,{seg},,,camera,解放大道卡口\n"
                        "cam-2,no:such:segment,,,camera,\n", encoding="utf-8")
    assert run_cli(["import-detectors", str(registry), "--db-url", store_url]) == 0
    out, err = capsys.readouterr()
    assert "1 of 2 rows imported" in out
    assert "no:such:segment" in err  # the bad row is named, the good one imported
    assert _state(store_url)[1]["detector"] == 1
    assert run_cli(["import-detectors", str(registry), "--db-url", store_url]) == 0
    assert "(unchanged)" in capsys.readouterr().out
    useless = tmp_path / "useless.csv"
    useless.write_text("detector_id,segment_id\ncam-9,no:such:segment\n", encoding="utf-8")
    assert run_cli(["import-detectors", str(useless), "--db-url", store_url]) == 2
    assert "no usable row" in capsys.readouterr().err
    assert _state(store_url)[1]["detector"] == 1
