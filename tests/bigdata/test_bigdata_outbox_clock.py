"""Bigdata on its clock and its outbox: a fast clock closes windows in real seconds; a bus that
refuses publishes loses no SegmentSpeed and duplicates none.

Same demo region, traces and helpers as ``test_bigdata_live.py``.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.bigdata.app import Bigdata
from services.bigdata.store import store_from_url
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.config import Config
from shared.events import SEGMENT_SPEED
from shared.roadnet import RoadNetwork
from tests.bigdata.test_bigdata_live import (  # noqa: F401 - fixtures used by name
    PARTITIONS,
    T0,
    Run,
    Sink,
    counter,
    fleet,
    imported_db,
    net,
    open_replicas,
    positions,
    region,
    settle_memory,
)
from tests.bigdata.test_bigdata_live import Clock as LiveClock
from tests.conftest import FlakyBus


async def test_a_fast_clock_closes_speed_windows(
        imported_db: Path, net: RoadNetwork, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    """Positions on a clock at rate 60 become SegmentSpeeds through the flush loop itself.

    A 60 s window with its 45 s grace is over 105 clock seconds after it starts: under two
    real seconds here. Nothing in the test moves time but the clock.
    """
    db = tmp_path / "geo.db"
    shutil.copy(imported_db, db)
    clock = Clock(60.0, start=datetime.fromtimestamp(T0, UTC))
    store = store_from_url(f"sqlite:///{db}", clock=clock)
    await store.open()
    bus = MemoryBus(partitions=PARTITIONS, clock=clock)
    await bus.start()
    sink = Sink()
    await bus.subscribe(SEGMENT_SPEED, sink.on_speed, durable="test-sink")
    bd = Bigdata(Config(speed_window_s=60.0, partitions=PARTITIONS), bus, store, clock=clock)
    await bd.load_network()
    await bd.load_detectors()
    await bd.start()
    loop_task = asyncio.create_task(bd.flush_loop())
    try:
        # Two clock minutes of a small fleet, each fix published when the clock reaches it.
        events = sorted(positions(fleet(net, count=8, duration_s=120.0, seed=5)),
                        key=lambda e: e[0])
        for t, subject, payload, key in events:
            await clock.sleep(t - clock.time())
            await bus.publish(subject, payload, key=key)
        async with asyncio.timeout(60.0):  # generous: the first window closes near T0 + 105 s
            while not sink.speeds:  # noqa: ASYNC110 - the flush loop publishes when due
                await asyncio.sleep(0.05)
        first = min(s.window_start for s in sink.speeds)
        assert first == datetime.fromtimestamp(T0, UTC)
        # Published once the clock, not the machine, was past the window and its grace.
        assert clock.now() >= first + timedelta(seconds=60.0 + bd.grace_s)
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        await bd.stop()
        await bus.close()
        await store.close()


async def _flaky_run(db_path: Path, tmp_path: Path) -> tuple[Run, FlakyBus]:
    """One replica on a copy of the demo database, a bus that refuses on demand, a test clock."""
    db = tmp_path / "geo.db"
    shutil.copy(db_path, db)
    store = store_from_url(f"sqlite:///{db}")
    await store.open()
    bus = FlakyBus(partitions=PARTITIONS)
    await bus.start()
    sink = Sink()
    await bus.subscribe(SEGMENT_SPEED, sink.on_speed, durable="test-sink")
    clock = LiveClock()
    bds = await open_replicas(bus, store, clock)
    return Run(bus, store, bds, clock, sink, lambda: settle_memory(bus)), bus


async def test_speeds_closed_while_the_bus_refuses_are_delivered_once_it_is_back(
        imported_db: Path, net: RoadNetwork, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    run, bus = await _flaky_run(imported_db, tmp_path)
    bd = run.replicas[0]
    try:
        for t, subject, payload, key in positions(fleet(net, count=30, duration_s=290.0,
                                                        seed=11)):
            run.clock.at = t
            await bus.publish(subject, payload, key=key)
        await run.settle()
        retried = counter("tti_bus_outbox_total", subject="tti.segment.speed",
                          result="retried")

        bus.down = True
        run.clock.advance(10 * bd.window_s)
        closed = await bd.flush(run.clock.at, final=True)
        assert len(closed) > 20, "the bus going away must not stop windows from closing"
        await run.settle()
        assert run.sink.speeds == []
        assert len(bd.speeds_out) == len(closed)
        # Stored once, at closing time, whatever the bus does.
        sid = closed[0].segment_id
        since, until = (datetime.fromtimestamp(T0 - 3600, UTC),
                        datetime.fromtimestamp(T0 + 7200, UTC))
        stored = await run.store.speed_history(sid, since, until)

        run.clock.advance(5.0)
        assert await bd.flush(run.clock.at) == []  # still refused: kept, not closed again
        assert counter("tti_bus_outbox_total", subject="tti.segment.speed",
                       result="retried") >= retried + 2 * len(closed)

        bus.down = False
        run.clock.advance(5.0)
        await bd.flush(run.clock.at)
        await run.settle()
        delivered = run.sink.by_window()  # asserts that none came twice
        assert set(delivered) == {(s.segment_id, s.window_start) for s in closed}
        assert len(bd.speeds_out) == 0

        run.clock.advance(5.0)
        await bd.flush(run.clock.at)
        await run.settle()
        assert len(run.sink.speeds) == len(closed)  # nothing sent again
        assert await run.store.speed_history(sid, since, until) == stored
    finally:
        await bd.stop()
        await bus.close()
        await run.store.close()


async def test_the_outbox_is_bounded_and_counts_what_it_drops(
        imported_db: Path, net: RoadNetwork, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    run, bus = await _flaky_run(imported_db, tmp_path)
    bd = run.replicas[0]
    bd.speeds_out.limit = 5
    try:
        for t, subject, payload, key in positions(fleet(net, count=20, duration_s=290.0,
                                                        seed=12)):
            run.clock.at = t
            await bus.publish(subject, payload, key=key)
        await run.settle()
        dropped = counter("tti_bus_outbox_total", subject="tti.segment.speed",
                          result="dropped")
        bus.down = True
        run.clock.advance(10 * bd.window_s)
        closed = await bd.flush(run.clock.at, final=True)
        assert len(closed) > 5
        assert len(bd.speeds_out) == 5
        assert counter("tti_bus_outbox_total", subject="tti.segment.speed",
                       result="dropped") == dropped + len(closed) - 5
        bus.down = False
        await bd.flush(run.clock.at)
        await run.settle()
        # The newest five survive (the oldest go first).
        assert [s.segment_id for s in run.sink.speeds] == [s.segment_id for s in closed[-5:]]
    finally:
        await bd.stop()
        await bus.close()
        await run.store.close()
