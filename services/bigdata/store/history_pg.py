"""The speed history on PostgreSQL: ``segment_speeds`` partitioned by day, COPY upserts, retention.

A province (≈ 100,000 directed segments, one window a minute) writes ≈ 144 M rows a day, so the
table is ``PARTITION BY RANGE (window_start)``, one partition per **Beijing day** (UTC+8,
00:00-24:00 local, named ``segment_speeds_pYYYYMMDD`` after the local date). Beijing rather than
UTC days because the day boundary then falls at local midnight, in the quietest hour of traffic,
instead of at 08:00 in the morning rush; a local day's history (what the profiles, the reports and
the people asking about "yesterday's rush hour" look at) is one partition; and the profiles'
time-of-week buckets are local too (:mod:`services.bigdata.profiles`).

**Partitions** (:class:`SpeedHistory`): today and :data:`AHEAD_DAYS` days after it are created when
the store opens and at every upkeep (hourly, by the service); a row of any other day (late,
replayed or imported data) gets its partition created on demand before it is written, so no row
is ever lost to a missing partition. There is no DEFAULT partition: with one, creating a day that
already has rows there means moving them while writers go on, and a late row would sit in a table
no query can prune. A partition is created as a plain table and then ATTACHed, which needs only a
SHARE UPDATE EXCLUSIVE lock on ``segment_speeds`` (``CREATE TABLE … PARTITION OF`` would need
ACCESS EXCLUSIVE and wait behind every reader, e.g. a long profile recomputation). Replicas
serialise partition changes on an advisory lock and check the catalogue under it.

**Retention**: partitions wholly older than ``keep_days`` (``TTI_SPEED_HISTORY_DAYS``) are dropped
(``DROP TABLE``, instant, no dead rows to vacuum). A drop needs ACCESS EXCLUSIVE on the parent, so
it waits at most :data:`DROP_LOCK_TIMEOUT` for readers to finish and is otherwise tried again at
the next upkeep.

**Writes**: a batch is de-duplicated (the last value of a key wins, as the row-by-row upsert did)
and COPYed (binary) straight into the table, one transaction. If a key is there already (a window
closed again with late data, a batch written again after a lost reply) that COPY is rolled back
and the batch is COPYed into a per-connection temporary table and upserted in one ``INSERT …
SELECT … ON CONFLICT DO UPDATE`` in primary-key order (an unchanged value rewrites nothing); the
next batches go that way directly, more of them while conflicts go on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from services.bigdata.store.base import (
    HistoryUpkeep,
    SpeedRecord,
    history_day,
    history_day_start,
    retention_start,
)
from shared.errors import TransientError

log = logging.getLogger("tti.bigdata.history")

TABLE = "segment_speeds"
PARTITION_PREFIX = f"{TABLE}_p"
AHEAD_DAYS = 3
"""Partitions are kept ready for today and this many days after it."""
CREATE_LOCK_TIMEOUT = "5s"
DROP_LOCK_TIMEOUT = "1s"
"""How long a DROP of an expired partition may queue for its lock (others queue behind it)."""
PARTITION_LOCK = 0x7171_0004
"""Advisory lock key of partition changes (the store's other keys are 0x7171_0001…3)."""

COLUMNS = ("segment_id", "window_start", "observed_at", "speed_kmh", "sample_count", "source",
           "confidence")
_COLS = ", ".join(COLUMNS)
_STAGE = "segment_speeds_stage"
_PARTITION_NAME = re.compile(rf"^{PARTITION_PREFIX}(\d{{8}})$")

MIGRATION = f"""
    ALTER TABLE {TABLE} RENAME TO {TABLE}_unpartitioned;
    ALTER INDEX {TABLE}_pkey RENAME TO {TABLE}_unpartitioned_pkey;
    -- Days prune time ranges now; an index on window_start alone would only slow the writes.
    DROP INDEX IF EXISTS {TABLE}_window;
    CREATE TABLE {TABLE} (
        segment_id text NOT NULL, window_start timestamptz NOT NULL,
        observed_at timestamptz NOT NULL, speed_kmh double precision,
        sample_count integer NOT NULL, source text NOT NULL,
        confidence double precision NOT NULL,
        PRIMARY KEY (segment_id, window_start, source)
    ) PARTITION BY RANGE (window_start);
    DO $$
    DECLARE
        d date;
    BEGIN
        FOR d IN SELECT DISTINCT ((window_start AT TIME ZONE 'UTC') + interval '8 hours')::date
                 FROM {TABLE}_unpartitioned LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF {TABLE} FOR VALUES FROM (%L) TO (%L)',
                           '{PARTITION_PREFIX}' || to_char(d, 'YYYYMMDD'),
                           to_char(d - interval '8 hours', 'YYYY-MM-DD HH24:MI:SS') || '+00',
                           to_char(d + interval '16 hours', 'YYYY-MM-DD HH24:MI:SS') || '+00');
        END LOOP;
    END $$;
    INSERT INTO {TABLE} ({_COLS}) SELECT {_COLS} FROM {TABLE}_unpartitioned;
    DROP TABLE {TABLE}_unpartitioned;
"""
"""Migration 7: the speed history becomes partitioned by Beijing day, its rows moved."""

_STAGE_DDL = (f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (segment_id text, window_start "
              "timestamptz, observed_at timestamptz, speed_kmh double precision, "
              "sample_count integer, source text, confidence double precision) "
              "ON COMMIT DELETE ROWS")
_UPSERT = (f"INSERT INTO {TABLE} AS s ({_COLS}) SELECT {_COLS} FROM {_STAGE} "
           "ORDER BY segment_id, window_start, source "
           "ON CONFLICT (segment_id, window_start, source) DO UPDATE SET "
           "observed_at = EXCLUDED.observed_at, speed_kmh = EXCLUDED.speed_kmh, "
           "sample_count = EXCLUDED.sample_count, confidence = EXCLUDED.confidence "
           "WHERE (s.observed_at, s.speed_kmh, s.sample_count, s.confidence) IS DISTINCT FROM "
           "(EXCLUDED.observed_at, EXCLUDED.speed_kmh, EXCLUDED.sample_count, "
           "EXCLUDED.confidence)")
_HISTORY = (f"SELECT {_COLS} FROM {TABLE} WHERE segment_id = $1 AND window_start >= $2 "
            "AND window_start < $3 ORDER BY window_start")


def partition_name(day: date) -> str:
    """The partition holding the Beijing day ``day``: ``segment_speeds_p20261204``."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def day_of_partition(name: str) -> date | None:
    """The day a partition named by :func:`partition_name` holds; None for any other name."""
    m = _PARTITION_NAME.match(name)
    return None if m is None else datetime.strptime(m.group(1), "%Y%m%d").date()


def _bound(day: date) -> str:
    return history_day_start(day).strftime("%Y-%m-%d %H:%M:%S+00")


def latest_per_key(records: Iterable[SpeedRecord]) -> list[tuple[Any, ...]]:
    """COPY rows of ``records``, one per (segment, window, source), the last one given winning,
    in key order (replicas writing the same keys take their locks in the same order)."""
    rows: dict[tuple[str, datetime, str], tuple[Any, ...]] = {}
    for r in records:
        rows[(r.segment_id, r.window_start, r.source)] = (
            r.segment_id, r.window_start, r.observed_at, r.speed_kmh, r.sample_count, r.source,
            r.confidence)
    return [rows[k] for k in sorted(rows)]


async def list_partitions(conn: asyncpg.Connection) -> dict[date, str]:
    """The day partitions ``segment_speeds`` has, by day."""
    rows = await conn.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                            "c.oid = i.inhrelid WHERE i.inhparent = $1::regclass", TABLE)
    out: dict[date, str] = {}
    for (name,) in rows:
        day = day_of_partition(name)
        if day is not None:
            out[day] = name
    return out


async def create_partitions(conn: asyncpg.Connection, days: Iterable[date]) -> list[date]:
    """Create the partitions of ``days`` that do not exist yet (one transaction); the created.

    Under the advisory lock, so replicas creating the same day do not collide.
    """
    wanted = sorted(set(days))
    if not wanted:
        return []
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{CREATE_LOCK_TIMEOUT}'")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            have = await list_partitions(conn)
            created = [d for d in wanted if d not in have]
            for day in created:
                name = partition_name(day)
                # A plain table, then ATTACH: SHARE UPDATE EXCLUSIVE on the parent, so readers
                # and writers of the other days go on meanwhile.
                await conn.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS)")
                await conn.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES "
                                   f"FROM ('{_bound(day)}') TO ('{_bound(day + timedelta(1))}')")
    except asyncpg.LockNotAvailableError as exc:
        raise TransientError(f"speed history partitions not created (locked): {exc}") from exc
    if created:
        log.info("speed history partitions created: %s",
                 ", ".join(partition_name(d) for d in created))
    return created


async def drop_partitions_before(conn: asyncpg.Connection, first_kept: date) -> list[date]:
    """Drop the partitions of days before ``first_kept``; the days dropped.

    Each drop is its own transaction: one that cannot get its lock in time stays for the next
    upkeep, the others go.
    """
    dropped: list[date] = []
    for day in sorted(d for d in await list_partitions(conn) if d < first_kept):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
                status = await conn.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
        except asyncpg.LockNotAvailableError:
            log.warning("expired speed history partition %s not dropped (in use); next upkeep "
                        "tries again", partition_name(day))
            continue
        if status == "DROP TABLE":
            dropped.append(day)
    if dropped:
        log.info("speed history partitions dropped: %s",
                 ", ".join(partition_name(d) for d in dropped))
    return dropped


class SpeedHistory:
    """The partitioned speed history of one store: which days exist, writes, reads, upkeep."""

    def __init__(self) -> None:
        self._days: set[date] = set()  # partitions known to exist (refreshed on a miss)
        self._upsert_next = 0  # batches to upsert without trying COPY first (after conflicts)
        self._backoff = 0

    async def ensure_days(self, conn: asyncpg.Connection, days: Iterable[date]) -> list[date]:
        """Make sure the partitions of ``days`` exist; the ones this call created."""
        missing = set(days) - self._days
        if not missing:
            return []
        self._days = set(await list_partitions(conn))
        missing -= self._days
        created = await create_partitions(conn, missing) if missing else []
        self._days |= missing
        return created

    async def prepare(self, conn: asyncpg.Connection, now: datetime) -> list[date]:
        """Today's and the next :data:`AHEAD_DAYS` days' partitions (Beijing days of ``now``)."""
        today = history_day(now)
        return await self.ensure_days(conn, (today + timedelta(i) for i in range(AHEAD_DAYS + 1)))

    async def upkeep(self, conn: asyncpg.Connection, now: datetime, keep_days: int
                     ) -> HistoryUpkeep:
        """Partitions ahead of ``now``; drop those wholly older than ``keep_days`` days."""
        created = await self.prepare(conn, now)
        kept_from = retention_start(now, keep_days)
        dropped = await drop_partitions_before(conn, history_day(kept_from))
        self._days -= set(dropped)
        return HistoryUpkeep(kept_from=kept_from, partitions_created=len(created),
                             partitions_dropped=len(dropped), rows_deleted=0)

    async def insert(self, conn: asyncpg.Connection, records: Sequence[SpeedRecord]) -> None:
        """Upsert ``records`` in one transaction.

        New windows are COPYed straight into the table; a batch holding a key the table has
        already (a window closed again with late data, a batch written again after an error)
        rolls that back and goes through the staging table and one upsert instead, and so do
        the next 1, 2, 4 … 64 batches after consecutive conflicts (they come in runs: a
        replay, a restarted replica), until a COPY goes through again.
        """
        rows = latest_per_key(records)
        if not rows:
            return
        days = {history_day(r[1]) for r in rows}
        for attempt in range(2):
            await self.ensure_days(conn, days)
            try:
                async with conn.transaction():
                    if self._upsert_next > 0:
                        self._upsert_next -= 1
                    elif await self._copy_new(conn, rows):
                        self._backoff = 0
                        return
                    else:  # stored keys: upsert the next 1, 2, 4 … 64 batches at once
                        self._backoff = min(64, 2 * self._backoff or 1)
                        self._upsert_next = self._backoff
                    await conn.execute(_STAGE_DDL)
                    await conn.copy_records_to_table(_STAGE, records=rows, columns=COLUMNS)
                    await conn.execute(_UPSERT)
                return
            except asyncpg.CheckViolationError as exc:
                # "no partition of relation … found for row": another replica's retention
                # dropped a day we thought was there (late rows of an expired day). Look again.
                if attempt or "no partition" not in str(exc):
                    raise
                self._days.clear()

    @staticmethod
    async def _copy_new(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> bool:
        """COPY ``rows`` into the table under a savepoint; False (rolled back) on a conflict."""
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def history(self, conn: asyncpg.Connection, segment_id: str, since: datetime,
                      until: datetime) -> list[SpeedRecord]:
        """Windows of one segment in [since, until), oldest first (only its days are read)."""
        rows = await conn.fetch(_HISTORY, segment_id, since, until)
        return [SpeedRecord(segment_id=r[0], window_start=r[1].astimezone(UTC),
                            observed_at=r[2].astimezone(UTC), speed_kmh=r[3],
                            sample_count=r[4], source=r[5], confidence=r[6]) for r in rows]
