"""The speed history at province scale: day partitions, on-demand days, COPY upserts, retention.

PostgreSQL tests use the contract suite's fixtures (a fresh PostGIS database each; skipped
locally, failed in CI without a server); the retention of the embedded store runs on SQLite.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.bigdata.app import keep_speed_history
from services.bigdata.store import SCHEMA_VERSION, SpeedRecord
from services.bigdata.store.base import history_day, retention_start
from services.bigdata.store.history_pg import AHEAD_DAYS, list_partitions, partition_name
from services.bigdata.store.postgis import MIGRATIONS, PostgisStore
from services.bigdata.store.sqlite import SqliteStore
from tests.bigdata.test_store_contract import (  # noqa: F401  (fixtures)
    grid_segments,
    pg_template,
    pg_url,
)
from tests.conftest import ManualClock

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # 20:00 in Beijing, 10 March
SID = "100:1:2"


@pytest.fixture
def dsn(pg_url: str) -> str:  # noqa: F811
    """A fresh PostGIS database."""
    return pg_url


def rec(at: datetime, speed: float | None = 40.0, *, sid: str = SID, source: str = "probe",
        samples: int = 3) -> SpeedRecord:
    return SpeedRecord(segment_id=sid, window_start=at, observed_at=at + timedelta(minutes=1),
                       speed_kmh=speed, sample_count=samples, source=source, confidence=0.5)


async def partitions(dsn: str) -> dict[date, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await list_partitions(conn)
    finally:
        await conn.close()


async def opened(dsn: str, at: datetime = NOW) -> PostgisStore:
    store = PostgisStore(dsn, clock=ManualClock(at.timestamp()), max_size=3)
    await store.open()
    return store


async def test_open_makes_today_and_the_next_days_beijing_days(dsn: str) -> None:
    store = await opened(dsn, datetime(2026, 3, 10, 17, 0, tzinfo=UTC))  # 11 March, 01:00
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        days = await partitions(dsn)
        assert sorted(days) == [date(2026, 3, 11) + timedelta(i) for i in range(AHEAD_DAYS + 1)]
        assert days[date(2026, 3, 11)] == "segment_speeds_p20260311"
        # A window at 23:59 and one at 00:00 Beijing time fall in different days, both read.
        late, early = datetime(2026, 3, 11, 15, 59, tzinfo=UTC), datetime(2026, 3, 11, 16, 0,
                                                                           tzinfo=UTC)
        await store.insert_speeds([rec(late, 30.0), rec(early, 50.0)])
        got = await store.speed_history(SID, late - timedelta(hours=1), early + timedelta(hours=1))
        assert [(r.window_start, r.speed_kmh) for r in got] == [(late, 30.0), (early, 50.0)]
        conn = await asyncpg.connect(dsn)
        try:
            where = {r[0]: r[1] for r in await conn.fetch(
                "SELECT tableoid::regclass::text, count(*) FROM segment_speeds GROUP BY 1")}
        finally:
            await conn.close()
        assert where == {"segment_speeds_p20260311": 1, "segment_speeds_p20260312": 1}
    finally:
        await store.close()


async def test_rows_of_days_far_away_are_stored_not_lost(dsn: str) -> None:
    store = await opened(dsn)
    try:
        past = datetime(1999, 12, 31, 16, 30, tzinfo=UTC)  # 2000-01-01 00:30 in Beijing
        future = datetime(2099, 6, 1, 8, 0, tzinfo=UTC)
        await store.insert_speeds([rec(past, 11.0), rec(NOW, 22.0), rec(future, 33.0)])
        for at, speed in ((past, 11.0), (NOW, 22.0), (future, 33.0)):
            (got,) = await store.speed_history(SID, at, at + timedelta(minutes=1))
            assert got.speed_kmh == speed and got.window_start == at
        days = await partitions(dsn)
        assert date(2000, 1, 1) in days and date(2099, 6, 1) in days
    finally:
        await store.close()


async def test_a_later_value_replaces_the_earlier_even_within_one_batch(dsn: str) -> None:
    store = await opened(dsn)
    try:
        t0 = NOW.replace(minute=0)
        await store.insert_speeds([rec(t0 + timedelta(minutes=i), 30.0 + i) for i in range(5)])
        # A window closed again with late data; the same key twice in a batch: the last wins.
        await store.insert_speeds([rec(t0, 10.0, samples=5), rec(t0, 12.0, samples=6),
                                   rec(t0 + timedelta(minutes=1), None, samples=0),
                                   rec(t0, 40.0, source="detector")])
        await store.insert_speeds([rec(t0 + timedelta(minutes=2), 32.0)])  # unchanged: no-op
        await store.insert_speeds([rec(t0 + timedelta(minutes=5), 35.0)])  # new again
        await store.insert_speeds([rec(t0 + timedelta(minutes=5), 36.0),  # and once more mixed
                                   rec(t0 + timedelta(minutes=6), 37.0)])
        assert [r.speed_kmh for r in await store.speed_history(
            SID, t0 + timedelta(minutes=5), t0 + timedelta(minutes=7))] == [36.0, 37.0]
        got = sorted(await store.speed_history(SID, t0, t0 + timedelta(minutes=5)),
                     key=lambda r: (r.window_start, r.source))
        assert [(r.window_start - t0, r.source, r.speed_kmh, r.sample_count) for r in got] == [
            (timedelta(0), "detector", 40.0, 3), (timedelta(0), "probe", 12.0, 6),
            (timedelta(minutes=1), "probe", None, 0), (timedelta(minutes=2), "probe", 32.0, 3),
            (timedelta(minutes=3), "probe", 33.0, 3), (timedelta(minutes=4), "probe", 34.0, 3),
        ]
    finally:
        await store.close()


async def test_retention_drops_whole_old_days_and_keeps_the_recent(dsn: str) -> None:
    store = await opened(dsn)
    try:
        ages = (400, 91, 90, 89, 1, 0)
        await store.insert_speeds([rec(NOW - timedelta(days=d)) for d in ages])
        done = await store.maintain_speed_history(keep_days=90, now=NOW)
        assert done.kept_from == retention_start(NOW, 90)
        assert done.kept_from == datetime(2025, 12, 9, 16, 0, tzinfo=UTC)  # 10 Dec, Beijing
        assert done.partitions_dropped == 2
        days = await partitions(dsn)
        assert history_day(NOW - timedelta(days=91)) not in days
        assert history_day(NOW - timedelta(days=90)) in days  # not wholly older: kept
        span = (NOW - timedelta(days=500), NOW + timedelta(days=1))
        kept = {(NOW - r.window_start).days for r in await store.speed_history(SID, *span)}
        assert kept == {90, 89, 1, 0}
        # Unset (0) means the default, 90 days; an hour later nothing more is due.
        again = await store.maintain_speed_history(keep_days=0, now=NOW + timedelta(hours=1))
        assert again.partitions_dropped == 0 and again.kept_from == done.kept_from
        # A late row of an expired day is still stored (its day comes back until next upkeep).
        await store.insert_speeds([rec(NOW - timedelta(days=200), 5.0)])
        assert len(await store.speed_history(SID, *span)) == 5
    finally:
        await store.close()


async def test_a_day_another_replica_dropped_is_made_again_for_a_late_row(dsn: str) -> None:
    a, b = await opened(dsn), await opened(dsn)
    try:
        old = NOW - timedelta(days=120)
        await a.insert_speeds([rec(old, 1.0)])  # a now believes that day exists
        assert (await b.maintain_speed_history(keep_days=90, now=NOW)).partitions_dropped == 1
        await a.insert_speeds([rec(old, 2.0)])
        (got,) = await a.speed_history(SID, old, old + timedelta(minutes=1))
        assert got.speed_kmh == 2.0
    finally:
        await a.close()
        await b.close()


async def test_replicas_opening_and_creating_days_together_do_not_fail(dsn: str) -> None:
    stores = [PostgisStore(dsn, clock=ManualClock(NOW.timestamp()), max_size=3)
              for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * 4
        far = [NOW + timedelta(days=30 + i, minutes=i) for i in range(5)]
        await asyncio.gather(*(s.insert_speeds([rec(t, float(i), sid=f"1:{i}:2") for t in far])
                               for i, s in enumerate(stores)))
        await asyncio.gather(*(s.maintain_speed_history(keep_days=7, now=NOW + timedelta(days=10))
                               for s in stores))
        days = await partitions(dsn)
        assert all(history_day(t) in days for t in far)
        for i, s in enumerate(stores):
            got = await s.speed_history(f"1:{i}:2", far[0], far[-1] + timedelta(minutes=1))
            assert [r.speed_kmh for r in got] == [float(i)] * 5
    finally:
        for s in stores:
            await s.close()


async def test_migration_moves_the_rows_of_an_unpartitioned_history(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL)")
        for version, sql in enumerate(MIGRATIONS[:6], start=1):
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, now())", version)
        old = [rec(datetime(2025, 5, 1, 15, 59, tzinfo=UTC), 20.0),  # 1 May 23:59 Beijing
               rec(datetime(2025, 5, 1, 16, 0, tzinfo=UTC), 21.0),   # 2 May 00:00
               rec(datetime(2025, 5, 1, 16, 0, tzinfo=UTC), 22.0, source="detector"),
               rec(datetime(2025, 9, 9, 9, 9, tzinfo=UTC), None, sid="7:8:9", samples=0)]
        await conn.executemany(
            "INSERT INTO segment_speeds VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(r.segment_id, r.window_start, r.observed_at, r.speed_kmh, r.sample_count,
              r.source, r.confidence) for r in old])
    finally:
        await conn.close()
    store = await opened(dsn)
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        span = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
        got = await store.speed_history(SID, *span) + await store.speed_history("7:8:9", *span)
        assert sorted(got, key=lambda r: (r.segment_id, r.window_start, r.source)) == \
            sorted(old, key=lambda r: (r.segment_id, r.window_start, r.source))
        days = await partitions(dsn)
        assert {date(2025, 5, 1), date(2025, 5, 2), date(2025, 9, 9)} <= set(days)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM pg_partitioned_table WHERE "
                                       "partrelid = 'segment_speeds'::regclass") == 1
            assert await conn.fetchval("SELECT to_regclass('segment_speeds_unpartitioned')") \
                is None
            assert await conn.fetchval(
                f"SELECT count(*) FROM {partition_name(date(2025, 5, 2))}") == 2
        finally:
            await conn.close()
        # The profiles still read the history (through the partitions).
        await store.import_segments("g.osm", "d", "r", grid_segments())
        await store.recompute_profiles(*span)
    finally:
        await store.close()


async def test_sqlite_retention_deletes_the_expired_days(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "geo.db"), clock=ManualClock(NOW.timestamp()))
    await store.open()
    try:
        await store.insert_speeds([rec(NOW - timedelta(days=d)) for d in (400, 91, 90, 3, 0)])
        done = await store.maintain_speed_history(keep_days=90)
        assert done.rows_deleted == 2 and done.kept_from == retention_start(NOW, 90)
        span = (NOW - timedelta(days=500), NOW + timedelta(days=1))
        kept = {(NOW - r.window_start).days for r in await store.speed_history(SID, *span)}
        assert kept == {90, 3, 0}
        assert (await store.maintain_speed_history(keep_days=0)).rows_deleted == 0
    finally:
        await store.close()


async def test_the_service_upkeep_runs_after_start_and_then_hourly(tmp_path: Path) -> None:
    clock = ManualClock(NOW.timestamp())
    store = SqliteStore(str(tmp_path / "geo.db"), clock=clock)
    await store.open()
    task = asyncio.create_task(keep_speed_history(store, clock=clock, keep_days=30,
                                                  first_s=600, interval_s=3600))
    try:
        await store.insert_speeds([rec(NOW - timedelta(days=31, hours=12)), rec(NOW)])
        await asyncio.sleep(0.05)
        span = (NOW - timedelta(days=60), NOW + timedelta(days=1))
        assert len(await store.speed_history(SID, *span)) == 2  # not before first_s
        clock.at += 600
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(await store.speed_history(SID, *span)) == 1:
                break
        assert [r.window_start for r in await store.speed_history(SID, *span)] == [NOW]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
