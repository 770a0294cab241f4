"""The simulator's GTFS-rt feed: a valid FeedMessage of the fleet's buses, with HTTP validators."""

from __future__ import annotations

import csv
import dataclasses
import io
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.transit import gtfs_realtime_pb2

from services.simulator.fleet import BusFix, Simulator, sim_config_from
from services.simulator.gtfs_rt_feed import (
    FEED_PATH,
    SimGtfsRtFeed,
    Timetable,
    add_gtfs_rt_feed_route,
    load_timetable,
    occupancy_status,
    simulated_load_pct,
)
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region

Rt = gtfs_realtime_pb2.VehiclePosition


def prepared_simulator(tmp: Path) -> tuple[Simulator, DemoRegion]:
    """A simulator over the demo region with its fleet built (no terminals connected)."""
    region = generate_demo_region(tmp / "demo", size=1)
    config = Config(var_dir=str(tmp / "var"), osm=str(region.osm_path), sim_vehicles=60)
    # Every bus reports through the feed here (tti run splits them between the two channels).
    sim = Simulator(dataclasses.replace(sim_config_from(config, demo=region), gtfs_rt_share=1.0))
    sim.prepare()
    return sim, region


def gtfs_trips(path: Path) -> dict[str, tuple[str, int]]:
    """trip_id -> (route_id, direction_id) from a GTFS zip."""
    with zipfile.ZipFile(path) as z, z.open("trips.txt") as f:
        return {r["trip_id"]: (r["route_id"], int(r["direction_id"]))
                for r in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"))}


class Clock:
    """A settable wall clock and monotonic clock for the feed's rebuilds."""

    def __init__(self) -> None:
        self.wall = datetime.now(UTC)
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture(scope="module")
def sim_region(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulator, DemoRegion]:
    return prepared_simulator(tmp_path_factory.mktemp("simfeed"))


@pytest.fixture
async def feed_client(sim_region: tuple[Simulator, DemoRegion]
                      ) -> AsyncIterator[tuple[TestClient[web.Request, web.Application],
                                               SimGtfsRtFeed, Clock]]:
    sim, region = sim_region
    clock = Clock()
    feed = SimGtfsRtFeed(sim.bus_fixes, timetable=Timetable.from_gtfs(region.gtfs_path),
                         refresh_s=5.0, monotonic=lambda: clock.mono, wall=lambda: clock.wall)
    app = web.Application()
    add_gtfs_rt_feed_route(app, feed)
    async with TestClient(TestServer(app)) as client:
        yield client, feed, clock


def _parse(body: bytes) -> gtfs_realtime_pb2.FeedMessage:
    msg = gtfs_realtime_pb2.FeedMessage()
    msg.ParseFromString(body)
    return msg


async def test_feed_is_a_valid_message_of_the_simulators_buses(
        feed_client: tuple[TestClient[web.Request, web.Application], SimGtfsRtFeed, Clock],
        sim_region: tuple[Simulator, DemoRegion]) -> None:
    client, _, clock = feed_client
    sim, region = sim_region
    resp = await client.get(FEED_PATH)
    assert resp.status == 200
    assert resp.content_type == "application/x-protobuf"
    msg = _parse(await resp.read())
    assert msg.IsInitialized()  # every required field of the GTFS-rt proto is set
    assert msg.header.gtfs_realtime_version == "2.0"
    assert msg.header.incrementality == gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    assert msg.header.timestamp == int(clock.wall.timestamp())

    buses = {v.vehicle_id: v for v in sim.fleet if v.vehicle_class == "bus"}
    assert buses, "the demo fleet has buses"
    assert {e.vehicle.vehicle.id for e in msg.entity} == set(buses)
    trips = gtfs_trips(region.gtfs_path)
    route_ids = {r.route_id for r in region.bus_routes}
    min_lon, min_lat, max_lon, max_lat = region.bbox
    per_group: dict[tuple[str, int], list[str]] = {}
    for e in msg.entity:
        vp = e.vehicle
        route_id, _, direction = (buses[vp.vehicle.id].route_id or "").partition(":")
        assert vp.trip.route_id == route_id and route_id in route_ids
        assert vp.trip.direction_id == int(direction)
        # A real trip of the GTFS timetable, of that route and direction.
        assert trips[vp.trip.trip_id] == (route_id, int(direction))
        assert len(vp.trip.start_date) == 8 and vp.trip.start_time.count(":") == 2
        per_group.setdefault((route_id, int(direction)), []).append(vp.trip.trip_id)
        assert min_lon <= vp.position.longitude <= max_lon
        assert min_lat <= vp.position.latitude <= max_lat
        assert 0 <= vp.position.bearing < 360
        assert 0 < vp.position.speed * 3.6 <= 61  # m/s; buses are capped at 60 km/h
        assert vp.vehicle.license_plate.startswith("鄂A")
        assert vp.current_status == Rt.IN_TRANSIT_TO
        assert vp.HasField("occupancy_status") and vp.HasField("occupancy_percentage")
        assert vp.occupancy_status == occupancy_status(vp.occupancy_percentage)
        assert abs(vp.timestamp - msg.header.timestamp) < 60
    for ids in per_group.values():
        assert len(ids) == len(set(ids)), "buses of one route and direction share no trip"


async def test_conditional_requests_get_304_until_the_feed_changes(
        feed_client: tuple[TestClient[web.Request, web.Application], SimGtfsRtFeed, Clock]
) -> None:
    client, _, clock = feed_client
    first = await client.get(FEED_PATH)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and first.headers["Cache-Control"] == "no-cache"

    by_etag = await client.get(FEED_PATH, headers={"If-None-Match": etag})
    assert by_etag.status == 304 and await by_etag.read() == b""
    assert by_etag.headers["ETag"] == etag
    by_date = await client.get(FEED_PATH, headers={"If-Modified-Since": modified})
    assert by_date.status == 304
    weak_list = await client.get(FEED_PATH, headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak_list.status == 304
    # If-None-Match wins over If-Modified-Since (RFC 9110): a different tag means 200.
    other = await client.get(FEED_PATH, headers={"If-None-Match": '"other"',
                                                 "If-Modified-Since": modified})
    assert other.status == 200

    clock.advance(2)  # within refresh_s: same content
    assert (await client.get(FEED_PATH, headers={"If-None-Match": etag})).status == 304
    clock.advance(5)  # rebuilt: new validators, old ones get the full feed
    changed = await client.get(FEED_PATH, headers={"If-None-Match": etag,
                                                   "If-Modified-Since": modified})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag
    assert changed.headers["Last-Modified"] != modified
    assert len(_parse(await changed.read()).entity) > 0


async def test_text_format_for_people(
        feed_client: tuple[TestClient[web.Request, web.Application], SimGtfsRtFeed, Clock]
) -> None:
    client, _, _ = feed_client
    resp = await client.get(FEED_PATH, params={"format": "text"})
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert 'gtfs_realtime_version: "2.0"' in text and "trip_id" in text


def test_last_modified_keeps_rising_when_the_clock_does_not() -> None:
    clock = Clock()
    feed = SimGtfsRtFeed(lambda: [], refresh_s=1.0, monotonic=lambda: clock.mono,
                         wall=lambda: clock.wall)
    first = feed.snapshot()
    clock.mono += 1.5  # monotonic moves, the wall clock is stuck
    second = feed.snapshot()
    assert second.last_modified > first.last_modified


def _bus(vid: str, progress: float | None, direction: int = 0) -> BusFix:
    return BusFix(vehicle_id=vid, plate="鄂A0", route_id="R1", direction_id=direction,
                  lon=114.3, lat=30.55, speed_kmh=20.0, heading_deg=90.0,
                  observed_at=datetime.now(UTC), route_progress=progress)


def test_timetable_gives_each_bus_a_trip_matching_its_progress(
        sim_region: tuple[Simulator, DemoRegion]) -> None:
    _, region = sim_region
    tt = load_timetable(region.gtfs_path)
    assert tt is not None and len(tt) > 0
    noon = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)  # 12:00 in Wuhan
    got = tt.assign([_bus("a", 0.0), _bus("b", 0.9), _bus("c", 0.0), _bus("d", None, 1)], noon)
    assert got["a"].trip_id.startswith("R1_0_") and got["d"].trip_id.startswith("R1_1_")
    assert got["a"].trip_id != got["c"].trip_id  # never two buses on one trip
    # Just starting out: the noon departure; nearly done: one that left well before.
    assert {got["a"].start_time, got["c"].start_time} >= {"12:00:00"}
    assert got["b"].start_time < "12:00:00"
    assert got["a"].start_date == "20240501"
    assert tt.assign([_bus("x", 0.1)], noon).keys() == {"x"}
    assert Timetable([]).assign([_bus("x", 0.1)], noon) == {}


def test_missing_timetable_is_not_fatal(tmp_path: Path) -> None:
    assert load_timetable("") is None
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    assert load_timetable(bad) is None


def test_occupancy_follows_load_and_peaks_in_rush_hour() -> None:
    levels = [occupancy_status(p) for p in (0, 10, 45, 70, 90, 100, 110)]
    assert levels == sorted(levels)
    assert levels[0] == Rt.EMPTY and levels[-1] == Rt.FULL
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Shanghai")
    day = datetime(2024, 5, 1, tzinfo=tz)
    ids = [f"bus{i}" for i in range(40)]

    def mean_at(hour: float) -> float:
        t = day + timedelta(hours=hour)
        return sum(simulated_load_pct(i, t, tz) for i in ids) / len(ids)

    assert mean_at(7.75) > 2 * mean_at(3.0)
    assert mean_at(17.75) > mean_at(13.0)
    assert all(0 <= simulated_load_pct(i, day, tz) <= 110 for i in ids)


def test_each_bus_reports_on_one_channel_only(tmp_path: Path) -> None:
    region = generate_demo_region(tmp_path / "demo", size=1)
    config = Config(var_dir=str(tmp_path / "var"), osm=str(region.osm_path), sim_vehicles=60)
    sim = Simulator(dataclasses.replace(sim_config_from(config, demo=region), gtfs_rt_share=0.5))
    sim.prepare()
    buses = {v.vehicle_id for v in sim.fleet if v.route_id}
    on_feed = {f.vehicle_id for f in sim.bus_fixes()}
    assert on_feed and on_feed < buses
    assert abs(len(on_feed) - len(buses) / 2) <= 1
    # The rest are JT/T 808 terminals: never both.
    assert sim.feed_buses == on_feed
