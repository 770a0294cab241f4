"""The GTFS-rt poller against real HTTP feeds: the simulator's, and hand-made bad ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.transit import gtfs_realtime_pb2
from prometheus_client import REGISTRY

from services.collector.gtfs_rt import (
    FeedSource,
    GtfsRtPoller,
    parse_feed_sources,
)
from services.simulator.fleet import Simulator
from services.simulator.gtfs_rt_feed import (
    FEED_PATH,
    SimGtfsRtFeed,
    Timetable,
    add_gtfs_rt_feed_route,
)
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.demo import DemoRegion
from shared.errors import ConfigError
from shared.events import VEHICLE_POSITION, VehiclePosition
from tests.conftest import FlakyBus
from tests.simulator.test_gtfs_rt_feed import gtfs_trips, prepared_simulator

Rt = gtfs_realtime_pb2.VehiclePosition


class Positions:
    """Every VehiclePosition delivered on a real MemoryBus."""

    def __init__(self) -> None:
        self.items: list[VehiclePosition] = []
        self.envelopes: list[Envelope[VehiclePosition]] = []

    async def handler(self, env: Envelope[VehiclePosition]) -> None:
        self.envelopes.append(env)
        self.items.append(env.payload)

    async def settle(self, bus: MemoryBus) -> None:
        """Wait until the bus delivered everything published so far."""
        for _ in range(3):
            await asyncio.sleep(0)
        for groups in bus._groups.values():
            for consumers in groups.values():
                for c in consumers:
                    await c.queue.join()


@pytest.fixture
async def bus_and_positions() -> AsyncIterator[tuple[MemoryBus, Positions]]:
    bus = MemoryBus(partitions=4)
    await bus.start()
    got = Positions()
    await bus.subscribe(VEHICLE_POSITION, got.handler, durable="test")
    yield bus, got
    await bus.close()


class Clock:
    """Monotonic clock the poller's staleness runs on."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---- against the simulator's feed ---------------------------------------------------------


@pytest.fixture(scope="module")
def sim_region(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulator, DemoRegion]:
    return prepared_simulator(tmp_path_factory.mktemp("gtfsrt"))


@pytest.fixture
async def sim_feed(sim_region: tuple[Simulator, DemoRegion]
                   ) -> AsyncIterator[tuple[str, SimGtfsRtFeed]]:
    sim, region = sim_region
    feed = SimGtfsRtFeed(sim.bus_fixes, timetable=Timetable.from_gtfs(region.gtfs_path),
                         refresh_s=3600)
    app = web.Application()
    add_gtfs_rt_feed_route(app, feed)
    async with TestServer(app) as server:
        yield str(server.make_url(FEED_PATH)), feed


async def test_positions_from_the_simulator_feed_reach_the_bus(
        sim_feed: tuple[str, SimGtfsRtFeed], sim_region: tuple[Simulator, DemoRegion],
        bus_and_positions: tuple[MemoryBus, Positions]) -> None:
    url, feed = sim_feed
    sim, region = sim_region
    bus, got = bus_and_positions
    poller = GtfsRtPoller(parse_feed_sources([f"simtest={url}"]), bus=bus)
    await poller.open()
    try:
        state = poller.feeds[0]
        assert poller.readiness()[0] is False  # not primed yet
        result = await poller.poll_once(state)
        await got.settle(bus)
        buses = {v.vehicle_id: v for v in sim.fleet if v.vehicle_class == "bus"}
        assert result.result == "ok" and result.published == len(buses) and not result.rejected
        assert {p.vehicle_id for p in got.items} == {f"simtest:{vid}" for vid in buses}
        trips = gtfs_trips(region.gtfs_path)
        for p in got.items:
            assert p.vehicle_class == "bus" and p.source == "gtfs-rt"
            assert p.route_id == (buses[p.vehicle_id.split(":", 1)[1]].route_id or "").split(
                ":")[0]
            assert p.trip_id is not None and trips[p.trip_id][0] == p.route_id
            assert p.occupancy in Rt.OccupancyStatus.keys()  # noqa: SIM118 (an EnumTypeWrapper)
            assert p.speed_kmh is not None and 0 < p.speed_kmh <= 61
            assert p.observed_at.tzinfo is not None and p.received_at is not None
            assert abs(p.observed_at - datetime.now(UTC)) < timedelta(minutes=1)
        # Positions are partitioned by vehicle: each one went to its vehicle's partition.
        assert len({e.event_id for e in got.envelopes}) == len(got.envelopes)
        ready, detail = poller.readiness()
        assert ready and f"simtest: up, {len(buses)} vehicles" in detail
        assert metric("tti_gtfs_rt_feed_up", feed="simtest") == 1

        # Nothing changed: 304, nothing published.
        before = metric("tti_gtfs_rt_fetches_total", feed="simtest", result="not_modified")
        again = await poller.poll_once(state)
        await got.settle(bus)
        assert again.result == "not_modified" and again.published == 0
        assert len(got.items) == len(buses)
        assert metric("tti_gtfs_rt_fetches_total", feed="simtest",
                      result="not_modified") == before + 1

        # The feed is rebuilt in the same second: new ETag, same vehicle times → duplicates.
        feed.invalidate()
        feed._wall = lambda: datetime.now(UTC) + timedelta(seconds=3)
        dup = await poller.poll_once(state)
        await got.settle(bus)
        if dup.published == 0:  # the second may have ticked over; then they are new
            assert dup.result == "ok" and dup.duplicates == len(buses)
        assert len(got.items) == len(buses) + dup.published
    finally:
        await poller.stop()


async def test_the_polling_task_publishes_without_being_driven(
        sim_feed: tuple[str, SimGtfsRtFeed],
        bus_and_positions: tuple[MemoryBus, Positions]) -> None:
    url, _ = sim_feed
    bus, got = bus_and_positions
    app = web.Application()
    poller = GtfsRtPoller([FeedSource("loop", url)], bus=bus, poll_s=0.2)
    ctx = poller.cleanup_ctx(app)
    await ctx.__anext__()
    try:
        for _ in range(100):
            if got.items:
                break
            await asyncio.sleep(0.05)
        assert got.items and got.items[0].vehicle_id.startswith("loop:")
    finally:
        with pytest.raises(StopAsyncIteration):
            await ctx.__anext__()
    assert not poller._tasks


# ---- a feed that misbehaves ---------------------------------------------------------------


@dataclass
class FlakyFeed:
    """A feed server whose answer the test switches: ok, 500, garbage, huge."""

    mode: str = "ok"
    body: bytes = b""
    etag: str = '"v1"'
    hits: int = 0
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.headers_seen.append(dict(request.headers))
        if self.mode == "500":
            return web.Response(status=500, text="boom")
        if self.mode == "503":
            return web.Response(status=503, headers={"Retry-After": "7"})
        if self.mode == "garbage":
            return web.Response(body=b"<html>not a feed</html>", content_type="text/html")
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers={"ETag": self.etag})
        return web.Response(body=self.body, content_type="application/x-protobuf",
                            headers={"ETag": self.etag})


def feed_bytes(entities: list[dict[str, Any]], *, header_ts: int | None = None) -> bytes:
    """A FeedMessage with vehicle entities described by small dicts."""
    msg = gtfs_realtime_pb2.FeedMessage()
    msg.header.gtfs_realtime_version = "2.0"
    if header_ts is not None:
        msg.header.timestamp = header_ts
    for i, spec in enumerate(entities):
        e = msg.entity.add()
        e.id = f"e{i}"
        if spec.get("deleted"):
            e.is_deleted = True
            continue
        if spec.get("trip_update"):
            e.trip_update.trip.trip_id = "T1"
            continue
        vp = e.vehicle
        if "id" in spec:
            vp.vehicle.id = spec["id"]
        if "lat" in spec:
            vp.position.latitude = spec["lat"]
            vp.position.longitude = spec.get("lon", 114.3)
        elif spec.get("no_position") is None:
            pass
        if "speed" in spec:
            vp.position.speed = spec["speed"]
        if "bearing" in spec:
            vp.position.bearing = spec["bearing"]
        if "ts" in spec:
            vp.timestamp = spec["ts"]
        if "trip" in spec:
            vp.trip.trip_id, vp.trip.route_id = spec["trip"]
        if "occupancy" in spec:
            vp.occupancy_status = spec["occupancy"]
        if "occupancy_pct" in spec:
            vp.occupancy_percentage = spec["occupancy_pct"]
    return msg.SerializePartialToString()


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyFeed, str]]:
    feed = FlakyFeed()
    app = web.Application()
    app.router.add_get("/vp.pb", feed.handle)
    async with TestServer(app) as server:
        yield feed, str(server.make_url("/vp.pb"))


def _now_ts() -> int:
    return int(datetime.now(UTC).timestamp())


async def test_bad_entities_are_rejected_by_kind_and_the_rest_published(
        flaky: tuple[FlakyFeed, str], bus_and_positions: tuple[MemoryBus, Positions]) -> None:
    server, url = flaky
    bus, got = bus_and_positions
    now = _now_ts()
    server.body = feed_bytes([
        {"id": "good", "lat": 30.55, "lon": 114.30, "ts": now, "speed": 10.0, "bearing": 370.0,
         "trip": ("T9", "R9"), "occupancy": Rt.STANDING_ROOM_ONLY, "occupancy_pct": 92},
        {"id": "header-time", "lat": 30.56, "occupancy_pct": 5000},  # no timestamp: the header's
        {"id": "no-position"},
        {"id": "north-of-the-pole", "lat": 95.0, "ts": now},
        {"id": "null-island", "lat": 0.0, "lon": 0.0, "ts": now},
        {"id": "tomorrow", "lat": 30.5, "ts": now + 86_400},
        {"id": "milliseconds", "lat": 30.5, "ts": now * 1000},
        {"id": "last-year", "lat": 30.5, "ts": now - 365 * 86_400},
        {"id": "reversing", "lat": 30.5, "ts": now, "speed": -3.0},
        {"lat": 30.5, "ts": now},  # no vehicle id
        {"deleted": True},
        {"trip_update": True},
        {"id": "good", "lat": 30.55, "ts": now},  # the same vehicle and time again
    ], header_ts=now - 5)
    before = {k: metric("tti_gtfs_rt_rejected_total", feed="bad", kind=k)
              for k in ("no_position", "coordinates_out_of_range", "future_time", "stale_time",
                        "bad_speed", "no_vehicle_id")}
    poller = GtfsRtPoller([FeedSource("bad", url)], bus=bus)
    await poller.open()
    try:
        result = await poller.poll_once(poller.feeds[0])
    finally:
        await poller.stop()
    await got.settle(bus)
    assert result.result == "ok"
    assert result.published == 2 and result.ignored == 2 and result.duplicates == 1
    assert result.rejected == 8
    state = poller.feeds[0]
    assert dict(state.rejected) == {"no_position": 1, "coordinates_out_of_range": 2,
                                    "future_time": 2, "stale_time": 1, "bad_speed": 1,
                                    "no_vehicle_id": 1}
    for kind, n in state.rejected.items():
        assert metric("tti_gtfs_rt_rejected_total", feed="bad", kind=kind) == before[kind] + n
    by_id = {p.vehicle_id: p for p in got.items}
    assert set(by_id) == {"bad:good", "bad:header-time"}
    good = by_id["bad:good"]
    assert good.speed_kmh == 36.0 and good.heading_deg == 10.0
    assert (good.trip_id, good.route_id, good.occupancy) == ("T9", "R9", "STANDING_ROOM_ONLY")
    assert good.occupancy_pct == 92.0
    assert by_id["bad:header-time"].occupancy_pct is None  # 5000 %: a broken counter, dropped
    assert good.observed_at == datetime.fromtimestamp(now, UTC)
    assert by_id["bad:header-time"].observed_at == datetime.fromtimestamp(now - 5, UTC)


async def test_a_failing_feed_is_reported_down_once_and_up_once(
        flaky: tuple[FlakyFeed, str], bus_and_positions: tuple[MemoryBus, Positions],
        caplog: pytest.LogCaptureFixture) -> None:
    server, url = flaky
    bus, _ = bus_and_positions
    server.body = feed_bytes([{"id": "b1", "lat": 30.5, "ts": _now_ts()}], header_ts=_now_ts())
    poller = GtfsRtPoller([FeedSource("flaky", url)], bus=bus)
    await poller.open()
    caplog.set_level(logging.INFO, logger="tti.collector.gtfs_rt")
    try:
        state = poller.feeds[0]
        assert (await poller.poll_once(state)).result == "ok"
        for mode in ("500", "500", "garbage", "503", "garbage"):
            server.mode = mode
            result = await poller.poll_once(state)
            assert result.result in ("http_error", "bad_feed")
            assert metric("tti_gtfs_rt_feed_up", feed="flaky") == 0
        assert result.result == "bad_feed"
        ready, detail = poller.readiness()
        # A remote feed failing after priming does not make the pod unready; the detail says.
        assert ready and "flaky: down since" in detail and "bad_feed" in detail
        server.mode = "ok"
        server.body = feed_bytes([{"id": "b1", "lat": 30.5, "ts": _now_ts() + 1}],
                                 header_ts=_now_ts() + 1)
        server.etag = '"v2"'
        assert (await poller.poll_once(state)).published == 1
        assert metric("tti_gtfs_rt_feed_up", feed="flaky") == 1
    finally:
        await poller.stop()
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(failing) == 1 and failing[0].levelno == logging.WARNING
    assert "HTTP 500" in failing[0].getMessage()
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    assert poller.readiness()[1].startswith("flaky: up")


async def test_a_feed_with_no_new_data_goes_stale_and_recovers(
        flaky: tuple[FlakyFeed, str], bus_and_positions: tuple[MemoryBus, Positions],
        caplog: pytest.LogCaptureFixture) -> None:
    server, url = flaky
    bus, _ = bus_and_positions
    clock = Clock()
    server.body = feed_bytes([{"id": "b1", "lat": 30.5, "ts": _now_ts()}], header_ts=_now_ts())
    poller = GtfsRtPoller([FeedSource("stale", url)], bus=bus, stale_s=60, monotonic=clock)
    caplog.set_level(logging.INFO, logger="tti.collector.gtfs_rt")
    await poller.open()
    try:
        state = poller.feeds[0]
        assert (await poller.poll_once(state)).result == "ok"
        assert server.headers_seen[-1].get("If-None-Match") is None
        clock.t += 30
        assert (await poller.poll_once(state)).result == "not_modified"
        assert server.headers_seen[-1]["If-None-Match"] == '"v1"'
        assert state.up is True
        clock.t += 40  # 70 s without new data
        assert (await poller.poll_once(state)).result == "not_modified"
        assert state.up is False and "stale" in state.last_error
        assert metric("tti_gtfs_rt_feed_up", feed="stale") == 0
        clock.t += 10
        poller.readiness()  # checking again does not log again
        server.etag = '"v2"'
        server.body = feed_bytes([{"id": "b1", "lat": 30.5, "ts": _now_ts() + 2}],
                                 header_ts=_now_ts() + 2)
        assert (await poller.poll_once(state)).published == 1
        assert state.up is True
    finally:
        await poller.stop()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("failing: stale" in m for m in msgs) == 1
    assert sum("recovered" in m for m in msgs) == 1


async def test_a_feed_never_reached_holds_readiness_only_for_its_grace(
        bus_and_positions: tuple[MemoryBus, Positions], caplog: pytest.LogCaptureFixture
) -> None:
    bus, _ = bus_and_positions
    clock = Clock()
    # A port nothing listens on: bind, learn it, close.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    poller = GtfsRtPoller([FeedSource("gone", f"http://127.0.0.1:{port}/vp.pb")], bus=bus,
                          stale_s=60, timeout_s=2, monotonic=clock)
    caplog.set_level(logging.INFO, logger="tti.collector.gtfs_rt")
    await poller.open()
    try:
        state = poller.feeds[0]
        assert (await poller.poll_once(state)).result == "network_error"
        assert (await poller.poll_once(state)).result == "network_error"
        ready, detail = poller.readiness()
        assert not ready and "gone: not primed yet" in detail
        clock.t += 61
        await poller.poll_once(state)
        ready, detail = poller.readiness()
        assert ready and "gone: down" in detail
    finally:
        await poller.stop()
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert sum("not reachable yet" in m for _, m in msgs) == 1
    assert [lvl for lvl, m in msgs if "failing" in m] == [logging.WARNING]


async def test_response_size_and_http_errors_are_bounded(
        flaky: tuple[FlakyFeed, str], bus_and_positions: tuple[MemoryBus, Positions]) -> None:
    server, url = flaky
    bus, _ = bus_and_positions
    server.body = feed_bytes([{"id": f"v{i}", "lat": 30.5, "ts": _now_ts()}
                              for i in range(200)], header_ts=_now_ts())
    poller = GtfsRtPoller([FeedSource("big", url)], bus=bus, max_bytes=1000)
    await poller.open()
    try:
        assert (await poller.poll_once(poller.feeds[0])).result == "too_large"
        server.mode = "503"
        result = await poller.poll_once(poller.feeds[0])
        assert result.result == "http_error" and result.retry_after_s == 7
    finally:
        await poller.stop()


async def test_what_the_bus_refused_is_fetched_and_published_again(
        flaky: tuple[FlakyFeed, str]) -> None:
    server, url = flaky
    bus = FlakyBus(partitions=2)
    await bus.start()
    got = Positions()
    await bus.subscribe(VEHICLE_POSITION, got.handler, durable="t")
    server.body = feed_bytes([{"id": "b1", "lat": 30.5, "ts": _now_ts()}], header_ts=_now_ts())
    poller = GtfsRtPoller([FeedSource("busdown", url)], bus=bus)
    await poller.open()
    try:
        bus.down = True
        assert (await poller.poll_once(poller.feeds[0])).result == "bus_error"
        bus.down = False
        # No validators were kept, so this is a full fetch (not 304) and the position goes out.
        result = await poller.poll_once(poller.feeds[0])
        assert result.result == "ok" and result.published == 1
        await got.settle(bus)
        assert [p.vehicle_id for p in got.items] == ["busdown:b1"]
    finally:
        await poller.stop()
        await bus.close()


# ---- configuration ------------------------------------------------------------------------


def test_feed_sources_from_configuration() -> None:
    feeds = parse_feed_sources(["wuhan=https://bus.example.cn/vp.pb?key=a=b",
                                "http://avl.example.org:8080/gtfsrt", " "])
    assert feeds == [FeedSource("wuhan", "https://bus.example.cn/vp.pb?key=a=b"),
                     FeedSource("avl.example.org", "http://avl.example.org:8080/gtfsrt")]
    for bad in (["ftp://x/y"], ["a=http://x/1", "a=http://y/2"], ["bad name=http://x/"],
                ["x=notaurl"]):
        with pytest.raises(ConfigError):
            parse_feed_sources(bad)
    poller = GtfsRtPoller.from_config(
        Config(gtfs_rt_urls=("a=http://127.0.0.1:1/x",), gtfs_rt_poll_s=3), bus=MemoryBus())
    assert poller.poll_s == 3 and poller.find_feed("a") is not None
    assert poller.find_feed("b") is None
    with pytest.raises(ConfigError):
        GtfsRtPoller([], bus=MemoryBus(), poll_s=0)


def test_feed_name_becomes_the_vehicle_id_prefix(tmp_path: Path) -> None:
    from services.collector.gtfs_rt import map_feed, parse_feed

    now = _now_ts()
    body = feed_bytes([{"id": "A 1", "lat": 30.5, "ts": now}], header_ts=now)
    mapped = map_feed("wh", parse_feed(body), now=datetime.now(UTC))
    assert [p.vehicle_id for p in mapped.positions] == ["wh:A 1"]
