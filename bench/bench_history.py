"""Speed history benchmark: one simulated province day into the partitioned PostgreSQL history.

A province is ≈ 100,000 directed segments × 1,440 one-minute windows = 144 M rows a day. This
writes ``--segments`` × ``--minutes`` windows (by default every segment of a province for the
first ``--minutes`` minutes of a Beijing day: a slice of the day, in the order the service writes
it, minute after minute) through ``PostgisStore.insert_speeds`` (day partitions; new windows
COPYed in, re-closed ones through a staging table and one upsert), in batches of the service's
``STORE_BATCH``, and prints rows/s (time inside ``insert_speeds``; building the records is not
timed); then the last ``--replay-minutes`` again with other values (the upsert path).
While it writes, a reader in a process of its own asks for a random segment's history over the
day's 24 hours (``speed_history``) every ``--query-gap-ms``; the p50/p99 of those queries are
printed.

Baseline, measured in the same run: the previous write path (``executemany`` of INSERT … ON
CONFLICT DO UPDATE into the unpartitioned table with its window_start index, migrations 1 + 4)
over a smaller sample (``--baseline-segments`` × ``--baseline-minutes``), with the same reader.
The new path is also run on exactly that sample, so the ratio compares equal work; the big run
shows how the rate holds as a day's partition grows. The projection to 144 M rows assumes the
measured rate holds, which it need not once a day's index outgrows memory: read it as such.

    .venv/bin/python bench/bench_history.py [--segments 100000] [--minutes 120]
        [--baseline-segments 100000] [--baseline-minutes 3] [--replay-minutes 1] [--batch 5000]
        [--pg-dsn postgresql://postgres@127.0.0.1:5432/test]

Everything runs in a fresh database created (and dropped) through ``--pg-dsn``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np

from services.bigdata.app import Bigdata
from services.bigdata.store import SpeedRecord
from services.bigdata.store.base import history_day_start
from services.bigdata.store.history_pg import partition_name
from services.bigdata.store.postgis import PostgisStore

PROVINCE_SEGMENTS = 100_000
DAY_MINUTES = 1_440
DAY = datetime(2026, 6, 1, tzinfo=UTC).date()  # a Monday; the slice starts at 00:00 Beijing
SOURCES = ("probe", "probe", "probe", "detector", "probe+detector")

OLD_INSERT = ("INSERT INTO segment_speeds VALUES ($1, $2, $3, $4, $5, $6, $7) "
              "ON CONFLICT (segment_id, window_start, source) DO UPDATE SET "
              "observed_at = EXCLUDED.observed_at, speed_kmh = EXCLUDED.speed_kmh, "
              "sample_count = EXCLUDED.sample_count, confidence = EXCLUDED.confidence")
"""The write path before partitioning (PostgisStore.insert_speeds up to migration 6)."""
OLD_HISTORY = ("SELECT segment_id, window_start, observed_at, speed_kmh, sample_count, source, "
               "confidence FROM segment_speeds WHERE segment_id = $1 AND window_start >= $2 "
               "AND window_start < $3 ORDER BY window_start")
"""The history query before partitioning (the same text; the table is in schema ``old``)."""
OLD_TABLE = """
    CREATE TABLE segment_speeds (
        segment_id text NOT NULL, window_start timestamptz NOT NULL,
        observed_at timestamptz NOT NULL, speed_kmh double precision,
        sample_count integer NOT NULL, source text NOT NULL,
        confidence double precision NOT NULL,
        PRIMARY KEY (segment_id, window_start, source));
    CREATE INDEX segment_speeds_window ON segment_speeds (window_start);
"""


def segment_ids(n: int) -> list[str]:
    """Ids shaped like OSM's ``<way>:<from>:<to>``, in random order (as a window closes)."""
    rng = random.Random(7)
    ids = [f"{rng.randrange(10**8, 10**9)}:{rng.randrange(10**9, 10**10)}:"
           f"{rng.randrange(10**9, 10**10)}" for _ in range(n)]
    rng.shuffle(ids)
    return ids


def windows(ids: Sequence[str], minutes: int, batch: int, *, first: int = 0,
            seed: int = 11) -> Iterator[list[SpeedRecord]]:
    """The day's windows from minute ``first`` on, minute after minute, in batches of ``batch``."""
    rng = random.Random(seed)
    start = history_day_start(DAY)
    out: list[SpeedRecord] = []
    for m in range(first, first + minutes):
        at = start + timedelta(minutes=m)
        for i, sid in enumerate(ids):
            out.append(SpeedRecord(segment_id=sid, window_start=at,
                                   observed_at=at + timedelta(minutes=1),
                                   speed_kmh=round(rng.uniform(5.0, 80.0), 2),
                                   sample_count=1 + (i + m) % 7, source=SOURCES[i % 5],
                                   confidence=0.5))
            if len(out) == batch:
                yield out
                out = []
    if out:
        yield out


def reader_process(url: str, table: str, n_ids: int, gap_s: float, ready: Any, stop: Any,
                   out: Any) -> None:
    """Query random segments' history of the day until ``stop``; put the latencies on ``out``.

    A process of its own, so that the writer's record encoding does not delay its queries
    (they would wait for the event loop, not for the database).
    """
    async def run() -> list[float]:
        ids = segment_ids(n_ids)
        since = history_day_start(DAY)
        until = since + timedelta(hours=24)
        rng = random.Random(3)
        latencies: list[float] = []
        store, pool = None, None
        if table == "public":  # the new path: the store's own query
            store = PostgisStore(url, min_size=1, max_size=1)
            await store.open()
        else:  # the old store's query, through a pool as the store did
            pool = await asyncpg.create_pool(url, min_size=1, max_size=1,
                                             server_settings={"search_path": table})
        ready.set()
        try:
            while not stop.is_set():
                sid = rng.choice(ids)
                t = time.perf_counter()
                if store is not None:
                    await store.speed_history(sid, since, until)
                elif pool is not None:
                    async with pool.acquire() as conn:
                        await conn.fetch(OLD_HISTORY, sid, since, until)
                latencies.append(time.perf_counter() - t)
                await asyncio.sleep(gap_s)
        finally:
            if pool is not None:
                await pool.close()
            if store is not None:
                await store.close()
        return latencies

    out.put(asyncio.run(run()))


async def write_while_reading(write: Callable[[list[SpeedRecord]], Awaitable[None]],
                              url: str, table: str, ids: Sequence[str], minutes: int,
                              batch: int, gap_s: float, *, first: int = 0, seed: int = 11
                              ) -> tuple[int, float, list[float]]:
    """(rows, seconds inside ``write``, query latencies) of writing the slice while a reader
    process queries; building the records is not timed."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=reader_process, args=(url, table, len(ids), gap_s, ready, stop,
                                                    out))
    proc.start()
    try:
        await asyncio.to_thread(ready.wait, 60)
        rows = 0
        elapsed = 0.0
        for chunk in windows(ids, minutes, batch, first=first, seed=seed):
            t0 = time.perf_counter()
            await write(chunk)
            elapsed += time.perf_counter() - t0
            rows += len(chunk)
    finally:
        stop.set()
        latencies: list[float] = await asyncio.to_thread(out.get, True, 60)
        await asyncio.to_thread(proc.join, 60)
    return rows, elapsed, latencies


def pct(values: list[float], q: float) -> float:
    """Percentile (q in 0..100) of latencies in seconds, in milliseconds (nan when none)."""
    return float(np.percentile(np.asarray(values), q)) * 1000.0 if values else float("nan")


async def create_pg_database(admin_dsn: str) -> tuple[str, str]:
    name = "tbench_history_" + uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return name, urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))


async def drop_pg_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def sql(dsn: str, query: str) -> object:
    """One value of one query, on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def run_baseline(url: str, ids: Sequence[str], minutes: int, batch: int, gap_s: float
                       ) -> tuple[int, float, list[float]]:
    """The old table (schema ``old``) written the old way, while a reader queries it."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2,
                                     server_settings={"search_path": "old"})
    try:
        async with pool.acquire() as conn:
            await conn.execute(OLD_TABLE)

        async def write(records: list[SpeedRecord]) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(OLD_INSERT, [
                    (r.segment_id, r.window_start, r.observed_at, r.speed_kmh, r.sample_count,
                     r.source, r.confidence) for r in records])

        return await write_while_reading(write, url, "old", ids, minutes, batch, gap_s)
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=PROVINCE_SEGMENTS)
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--baseline-segments", type=int, default=PROVINCE_SEGMENTS)
    parser.add_argument("--baseline-minutes", type=int, default=3)
    parser.add_argument("--replay-minutes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=Bigdata.STORE_BATCH)
    parser.add_argument("--query-gap-ms", type=float, default=20.0)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    gap_s = args.query_gap_ms / 1000.0

    name, url = await create_pg_database(args.pg_dsn)
    try:
        # Baseline: the old table and write path, in a schema of its own.
        admin = await asyncpg.connect(url)
        try:
            await admin.execute("CREATE SCHEMA old")
        finally:
            await admin.close()
        base_ids = segment_ids(args.baseline_segments)
        b_rows, b_s, b_lat = await run_baseline(url, base_ids, args.baseline_minutes,
                                                args.batch, gap_s)

        store = PostgisStore(url, max_size=4)
        await store.open()
        try:
            # The new path on the baseline's sample (equal work), then, on an emptied day, the
            # big slice.
            s_rows, s_s, s_lat = await write_while_reading(
                store.insert_speeds, url, "public", base_ids, args.baseline_minutes,
                args.batch, gap_s)
            await sql(url, f"TRUNCATE {partition_name(DAY)}")
            ids = segment_ids(args.segments)
            rows, secs, lat = await write_while_reading(
                store.insert_speeds, url, "public", ids, args.minutes, args.batch, gap_s)
            size = await sql(url, f"SELECT pg_total_relation_size('{partition_name(DAY)}')")
            index = await sql(url, f"SELECT pg_indexes_size('{partition_name(DAY)}')")
            # The last minutes again with other values: windows re-closed with late data go
            # through the staging table and the upsert.
            r_rows, r_s, r_lat = await write_while_reading(
                store.insert_speeds, url, "public", ids, args.replay_minutes, args.batch,
                gap_s, first=args.minutes - args.replay_minutes, seed=12)
        finally:
            await store.close()
    finally:
        await drop_pg_database(args.pg_dsn, name)

    def line(label: str, n: int, s: float, q: list[float]) -> str:
        return (f"{label:<52} {n:>11,} {s:8.1f} {n / s:10,.0f} {len(q):7d} "
                f"{pct(q, 50):8.2f} {pct(q, 99):8.2f}")

    print(f"speed history, batches of {args.batch:,} rows, a reader process querying a random "
          f"segment's 24 h every {args.query_gap_ms:.0f} ms while writing")
    header = (f"{'path':<52} {'rows':>11} {'write s':>8} {'rows/s':>10} {'queries':>7} "
              f"{'q p50 ms':>8} {'q p99 ms':>8}")
    print(header)
    print("-" * len(header))
    print(line(f"baseline executemany upsert, unpartitioned "
               f"({args.baseline_segments:,}x{args.baseline_minutes})", b_rows, b_s, b_lat))
    print(line("COPY, day partitions (same sample)", s_rows, s_s, s_lat))
    print(line(f"COPY, day partitions ({args.segments:,}x{args.minutes})",
               rows, secs, lat))
    base_rate = b_rows / b_s
    print(line(f"  same windows again, other values: upsert "
               f"({args.segments:,}x{args.replay_minutes})",
               r_rows, r_s, r_lat))
    print(f"\nratio rows/s, COPY / baseline: same sample {s_rows / s_s / base_rate:.1f}x, "
          f"big slice {rows / secs / base_rate:.1f}x")
    day_rows = PROVINCE_SEGMENTS * DAY_MINUTES
    rate = rows / secs
    print(f"province day = {PROVINCE_SEGMENTS:,} segments x {DAY_MINUTES:,} windows = "
          f"{day_rows / 1e6:.0f} M rows, {day_rows / 86400:,.0f} rows/s on average; measured "
          f"{rate:,.0f} rows/s would write it in {day_rows / rate / 3600:.1f} h "
          f"(projected, {rows / day_rows:.1%} of a day measured)")
    assert isinstance(size, int) and isinstance(index, int)
    print(f"storage (before the re-write): {size / rows:.0f} bytes/row ({index / rows:.0f} of "
          f"them index) -> "
          f"{size / rows * day_rows / 1e9:.1f} GB per province day, "
          f"{size / rows * day_rows * 90 / 1e12:.2f} TB for 90 days (projected)")


if __name__ == "__main__":
    asyncio.run(main())
