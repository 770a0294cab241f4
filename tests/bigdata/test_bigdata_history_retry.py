"""Bigdata while the database refuses: windows still close and go on the bus, and the speed
history receives every one of them once the database is back (none lost, none twice).

Same demo region, traces and helpers as ``test_bigdata_live.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from services.bigdata.store import SpeedRecord
from services.bigdata.store.sqlite import SqliteStore
from shared.bus.memory import MemoryBus
from shared.errors import TransientError
from shared.events import SEGMENT_SPEED
from shared.roadnet import RoadNetwork
from tests.bigdata.test_bigdata_live import (  # noqa: F401 - fixtures used by name
    PARTITIONS,
    T0,
    Clock,
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


class FlakyHistoryStore(SqliteStore):
    """The embedded store, whose speed history refuses writes while ``down`` (the database
    away, as PostgreSQL's connection errors surface through the store)."""

    down = False

    async def insert_speeds(self, records: Sequence[SpeedRecord]) -> None:
        if self.down:
            raise TransientError("geodatabase unreachable: connection refused")
        await super().insert_speeds(records)


async def _history(store: SqliteStore, segment_ids: set[str]) -> set[tuple[str, datetime]]:
    since, until = datetime.fromtimestamp(T0 - 3600, UTC), datetime.fromtimestamp(T0 + 7200, UTC)
    out: set[tuple[str, datetime]] = set()
    for sid in segment_ids:
        rows = await store.speed_history(sid, since, until)
        assert len(rows) == len({r.window_start for r in rows}), "a window stored twice"
        out |= {(r.segment_id, r.window_start) for r in rows}
    return out


async def test_speeds_closed_while_the_database_refuses_reach_the_history_once_it_is_back(
        imported_db: Path, net: RoadNetwork, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    db = tmp_path / "geo.db"
    shutil.copy(imported_db, db)
    store = FlakyHistoryStore(str(db))
    await store.open()
    bus = MemoryBus(partitions=PARTITIONS)
    await bus.start()
    sink = Sink()
    await bus.subscribe(SEGMENT_SPEED, sink.on_speed, durable="test-sink")
    clock = Clock()
    bd = (await open_replicas(bus, store, clock))[0]
    try:
        for t, subject, payload, key in positions(fleet(net, count=30, duration_s=290.0,
                                                        seed=11)):
            clock.at = t
            await bus.publish(subject, payload, key=key)
        await settle_memory(bus)
        retried = counter("tti_bigdata_speed_history_total", result="retried")
        stored = counter("tti_bigdata_speed_history_total", result="stored")

        store.down = True
        clock.advance(10 * bd.window_s)
        closed = await bd.flush(clock.at, final=True)
        assert len(closed) > 20
        await settle_memory(bus)
        # Live values do not wait for the history: they are on the bus already.
        assert {(s.segment_id, s.window_start) for s in sink.speeds} == {
            (s.segment_id, s.window_start) for s in closed}
        assert len(bd.unstored) == len(closed)
        segments = {s.segment_id for s in closed}
        assert await _history(store, segments) == set()

        clock.advance(5.0)
        assert await bd.flush(clock.at) == []  # still refused: kept, not closed again
        assert len(bd.unstored) == len(closed)
        assert counter("tti_bigdata_speed_history_total",
                       result="retried") >= retried + 2 * len(closed)

        store.down = False
        clock.advance(5.0)
        await bd.flush(clock.at)
        assert bd.unstored == []
        assert await _history(store, segments) == {(s.segment_id, s.window_start)
                                                   for s in closed}
        assert counter("tti_bigdata_speed_history_total",
                       result="stored") == stored + len(closed)
        await settle_memory(bus)
        sink.by_window()  # asserts that none went on the bus twice
    finally:
        await bd.stop()
        await bus.close()
        await store.close()
