"""GTFS static import: validation verdicts, the real feeds on both backends, ``tti import-gtfs``."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from services import cli
from services.bigdata.gtfs_import import (
    GtfsFeedError,
    feed_id_for,
    import_gtfs_file,
    read_gtfs,
)
from services.bigdata.store import GeoStore, GtfsData, store_from_url
from shared.demo import DemoRegion, generate_demo_region
from tests.bigdata import test_store_contract as contract

pg_template = contract.pg_template
pg_url = contract.pg_url
store_url = contract.store_url
store = contract.store

GOOD: dict[str, str] = {
    "agency.txt": "agency_id,agency_name,agency_url,agency_timezone\n"
                  "A,光谷公交,https://example.org,Asia/Shanghai\n",
    "stops.txt": "stop_id,stop_name,stop_lat,stop_lon,location_type,parent_station\n"
                 "S1,光谷广场,30.505,114.397,0,\n"
                 "S2,鲁巷,30.511,114.412,0,\n"
                 "S3,关山大道,30.490,114.420,0,\n",
    "routes.txt": "route_id,agency_id,route_short_name,route_long_name,route_type\n"
                  "R1,A,1,光谷广场—关山大道,3\n",
    "trips.txt": "route_id,service_id,trip_id,direction_id\nR1,WK,T1,0\nR1,WK,T2,1\n",
    "stop_times.txt": "trip_id,arrival_time,departure_time,stop_id,stop_sequence\n"
                      "T1,07:00:00,07:00:00,S1,1\nT1,07:05:00,07:05:30,S2,2\n"
                      "T1,,,S3,3\nT1,07:15:00,07:15:00,S1,4\n"
                      "T2,23:50:00,23:50:00,S2,1\nT2,24:10:00,24:10:00,S1,2\n",
    "calendar.txt": "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,"
                    "start_date,end_date\nWK,1,1,1,1,1,0,0,20240101,20991231\n",
    "translations.txt": "table_name,field_name,language,translation,record_id\n"
                        "stops,stop_name,en,Optics Valley Square,S1\n",
}


def make_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def variant(**changes: str | None) -> dict[str, str]:
    files = dict(GOOD)
    for name, text in changes.items():
        key = name.replace("__", ".")
        if text is None:
            files.pop(key)
        else:
            files[key] = text
    return files


def test_a_good_feed_reads_with_warnings_and_english_names(tmp_path: Path) -> None:
    data = read_gtfs(make_zip(tmp_path / "city.zip", GOOD), digest="x")
    assert data.feed_id == "city" and data.agency_timezone == "Asia/Shanghai"
    assert data.counts() == {"agencies": 1, "routes": 1, "stops": 3, "trips": 2,
                             "stop_times": 6, "calendar": 1, "calendar_dates": 0,
                             "frequencies": 0, "shapes": 0}
    st = {(r[0], r[1]): r for r in data.tables["gtfs_stop_times"]}
    assert st[("T1", 2)][3:5] == (25500, 25530)
    assert st[("T1", 3)][3:5] == (None, None)
    assert st[("T2", 2)][3] == 24 * 3600 + 600  # past midnight stays on the service day
    assert any("no times" in w for w in data.warnings)
    assert any("no trip has a shape" in w for w in data.warnings)
    names = {f.feature_id: (f.kind, f.name, f.name_en) for f in data.stop_features}
    assert names["city:S1"] == ("bus_stop", "光谷广场", "Optics Valley Square")


@pytest.mark.parametrize(("changes", "reason"), [
    ({"stops__txt": None}, "missing required file stops.txt"),
    ({"calendar__txt": None}, "at least one is required"),
    ({"trips__txt": "route_id,trip_id\nR1,T1\n"}, "trips.txt lacks required column(s) "
                                                  "service_id"),
    ({"stop_times__txt": GOOD["stop_times.txt"] + "T9,08:00:00,08:00:00,S1,1\n"},
     "stop_times.txt trip_id: 1 reference(s) to unknown ids (e.g. 'T9')"),
    ({"stop_times__txt": GOOD["stop_times.txt"] + "T2,24:20:00,24:20:00,S9,3\n"},
     "stop_times.txt stop_id: 1 reference(s) to unknown ids (e.g. 'S9')"),
    ({"stop_times__txt": GOOD["stop_times.txt"].replace("07:05:00", "7:65:00")},
     "unparsable time"),
    ({"stop_times__txt": GOOD["stop_times.txt"].replace("07:15:00,07:15:00", "06:00:00,"
                                                        "06:00:00")},
     "times run backwards in 1 trip(s) (e.g. 'T1')"),
    ({"stop_times__txt": GOOD["stop_times.txt"].replace("07:05:00,07:05:30", "07:05:30,"
                                                        "07:05:00")},
     "depart before they arrive"),
    ({"stop_times__txt": GOOD["stop_times.txt"].replace("T1,07:15:00,07:15:00", "T1,,")},
     "without a time at the first or last stop"),
    ({"stop_times__txt": GOOD["stop_times.txt"] + "T1,07:20:00,07:20:00,S2,4\n"},
     "duplicate trip_id+stop_sequence"),
    ({"agency__txt": GOOD["agency.txt"].replace("Asia/Shanghai", "Mars/Olympus")},
     "unknown time zone 'Mars/Olympus'"),
    ({"trips__txt": GOOD["trips.txt"] + "R7,WK,T3,0\n"}, "trips.txt route_id"),
    ({"trips__txt": GOOD["trips.txt"] + "R1,HOLIDAY,T3,0\n"}, "trips.txt service_id"),
    ({"routes__txt": GOOD["routes.txt"].replace(",3\n", ",42\n")}, "invalid route_type"),
    ({"stops__txt": GOOD["stops.txt"].replace("30.490", "130.490")}, "out of range"),
    ({"calendar__txt": GOOD["calendar.txt"].replace("20991231", "20991331")},
     "invalid end_date"),
])
def test_bad_feeds_are_rejected_with_reasons(tmp_path: Path, changes: dict[str, str | None],
                                             reason: str) -> None:
    path = make_zip(tmp_path / "bad.zip", variant(**changes))
    with pytest.raises(GtfsFeedError) as info:
        read_gtfs(path)
    assert reason in info.value.message
    assert any(reason in e for e in info.value.details["errors"])  # type: ignore[index]


def test_unreadable_inputs(tmp_path: Path) -> None:
    text = tmp_path / "feed.zip"
    text.write_text("route_id\n")
    with pytest.raises(GtfsFeedError, match="not a zip"):
        read_gtfs(text)
    with pytest.raises(GtfsFeedError, match="not found"):
        read_gtfs(tmp_path / "nope.zip")
    with pytest.raises(GtfsFeedError, match="may only use"):
        read_gtfs(make_zip(tmp_path / "ok.zip", GOOD), feed_id="a b")
    assert feed_id_for(Path("/x/Wuhan Bus (2025).zip")) == "Wuhan_Bus_2025"


# --- the real feeds on both backends ----------------------------------------------------------

FEEDS = {
    "google_sample_dta_gtfs": ("Furnace Creek Resort", "bus_stop", "FUR_CREEK_RES"),
    "cairns_translink_2014_gtfs": ("Cairns Central", "bus_stop", None),
    "nyc_subway_2lines_gtfs": ("Van Cortlandt Park-242 St", "rail_station", "101"),
}


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GtfsData]:
    """Every reference feed and the demo region's, read and validated once."""
    from tests.conftest import shared_dir

    out = {name: read_gtfs(shared_dir() / "data" / "gtfs" / f"{name}.zip", digest=name)
           for name in FEEDS}
    demo = generate_demo_region(tmp_path_factory.mktemp("demo"))
    out["demo_gtfs"] = read_gtfs(demo.gtfs_path, digest="demo")
    return out


async def test_reference_feeds_import_and_stops_are_found(store: GeoStore,
                                                          parsed: dict[str, GtfsData]) -> None:
    for data in parsed.values():
        assert await store.import_gtfs(data) is True
    feeds = {f.feed_id: f for f in await store.list_feeds()}
    assert set(feeds) == set(parsed)
    for name, data in parsed.items():
        assert feeds[name].counts == data.counts()
        assert feeds[name].warnings == tuple(data.warnings)
    for name, (stop_name, kind, stop_id) in FEEDS.items():
        stops = await store.search_stops(stop_name, feed_id=name)
        assert stops and stop_name in (stops[0].name or "")
        hits = await store.search(stop_name, kinds=[kind])
        assert hits and hits[0].id.startswith(f"{name}:") and hits[0].kind == kind
        if stop_id:
            stop = await store.stop_by_id(stop_id, name)
            assert stop is not None and stop.name and stop_name in stop.name
    demo_hits = await store.search("jiefang avenue", kinds=["bus_stop"])
    assert demo_hits and demo_hits[0].name is not None and demo_hits[0].name.startswith(
        "解放大道")
    # Timetable queries the bus-ETA engine relies on.
    nyc = "nyc_subway_2lines_gtfs"
    routes = await store.list_routes(nyc)
    trips = await store.trips_for_route(routes[0].route_id, nyc)
    assert trips
    times = await store.get_trip_stop_times(trips[0].trip_id, nyc)
    assert [t.stop_sequence for t in times] == sorted(t.stop_sequence for t in times)
    assert all(t.departure_s is not None for t in times)
    sample = "google_sample_dta_gtfs"
    # calendar: FULLW daily, WE weekends; calendar_dates removes FULLW on 2007-06-04.
    assert await store.active_service_ids(date(2007, 6, 4), sample) == set()
    assert await store.active_service_ids(date(2007, 6, 5), sample) == {"FULLW"}
    assert await store.active_service_ids(date(2007, 6, 9), sample) == {"FULLW", "WE"}
    freqs = await store.trip_frequencies("STBA", sample)
    assert [(f.start_s, f.end_s, f.headway_s) for f in freqs] == [(21600, 79200, 1800)]
    shape = await store.get_shape("R1_0", "demo_gtfs")
    assert shape is not None and len(shape.coords) > 2 and shape.dist_traveled is not None


async def test_import_gtfs_file_is_idempotent_and_bad_feeds_change_nothing(
        store: GeoStore, tmp_path: Path) -> None:
    good = make_zip(tmp_path / "city.zip", GOOD)
    first = await import_gtfs_file(store, good)
    assert first.changed and first.feed_id == "city" and first.counts["stop_times"] == 6
    again = await import_gtfs_file(store, good)
    assert not again.changed and again.counts == first.counts
    before = await store.find_import("gtfs:city")
    bad = make_zip(tmp_path / "city2.zip", variant(stops__txt=None))
    with pytest.raises(GtfsFeedError):
        await import_gtfs_file(store, bad, feed_id="city")
    assert await store.find_import("gtfs:city") == before
    assert [f.feed_id for f in await store.list_feeds()] == ["city"]
    assert len(await store.get_trip_stop_times("T1", "city")) == 4


# --- tti import-gtfs ------------------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``tti …`` in-process, without installing uvloop or replacing pytest's log handlers."""
    monkeypatch.setattr(cli, "_install_uvloop", lambda: None)
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    yield cli.main


def test_cli_import_gtfs(run_cli: Any, store_url: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    demo: DemoRegion = generate_demo_region(tmp_path / "demo")
    assert run_cli(["import-gtfs", str(demo.gtfs_path), "--db-url", store_url]) == 0
    out, _ = capsys.readouterr()
    assert "feed 'demo_gtfs'" in out and "imported" in out
    assert run_cli(["import-gtfs", str(demo.gtfs_path), "--db-url", store_url]) == 0
    assert "already imported (unchanged)" in capsys.readouterr().out
    bad = make_zip(tmp_path / "bad.zip", variant(
        stop_times__txt=GOOD["stop_times.txt"] + "T9,08:00:00,08:00:00,S9,1\n"))
    assert run_cli(["import-gtfs", str(bad), "--db-url", store_url, "--feed-id",
                    "demo_gtfs"]) == 2
    err = capsys.readouterr().err
    assert "rejected" in err and "error: stop_times.txt trip_id" in err

    async def feeds() -> list[str]:
        s = store_from_url(store_url)
        await s.open()
        try:
            return [f"{f.feed_id}:{f.counts['stop_times']}" for f in await s.list_feeds()]
        finally:
            await s.close()

    assert asyncio.run(feeds()) == ["demo_gtfs:5150"]
