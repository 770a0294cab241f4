"""Embedded geodatabase on plain sqlite3 with the R*Tree module (no SpatiaLite).

sqlite3 calls block, so each runs in a worker thread; one connection guarded by a lock keeps the
single-writer rule. Geometry is stored as a JSON (lon, lat) polyline with its extent in an R*Tree.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from services.bigdata.store.base import BBox, GeoStore, RegionInfo, SpeedRecord
from shared.errors import TransientError
from shared.roadnet import RoadSegment

R = TypeVar("R")

MIGRATIONS: list[str] = [
    # 1: road segments with an R*Tree on their extent, speed history, import bookkeeping
    """
    CREATE TABLE road_segments (
        rid INTEGER PRIMARY KEY,
        segment_id TEXT NOT NULL UNIQUE,
        way_id INTEGER NOT NULL, from_node INTEGER NOT NULL, to_node INTEGER NOT NULL,
        road_class TEXT NOT NULL, name TEXT, name_en TEXT, ref TEXT, lanes INTEGER,
        speed_limit_kmh REAL, oneway INTEGER NOT NULL, bridge INTEGER NOT NULL,
        tunnel INTEGER NOT NULL, length_m REAL NOT NULL, free_flow_kmh REAL NOT NULL,
        coords BLOB NOT NULL
    );
    CREATE INDEX road_segments_name ON road_segments(name);
    CREATE VIRTUAL TABLE road_segments_rtree USING rtree(rid, min_lon, max_lon, min_lat, max_lat);
    CREATE TABLE segment_speeds (
        segment_id TEXT NOT NULL, window_start TEXT NOT NULL, observed_at TEXT NOT NULL,
        speed_kmh REAL, sample_count INTEGER NOT NULL, source TEXT NOT NULL,
        confidence REAL NOT NULL,
        PRIMARY KEY (segment_id, window_start, source)
    );
    CREATE TABLE imports (
        kind TEXT PRIMARY KEY, source TEXT NOT NULL, digest TEXT NOT NULL,
        region_name TEXT NOT NULL, imported_at TEXT NOT NULL, item_count INTEGER NOT NULL
    );
    """,
]

_SEGMENT_COLS = ("segment_id, way_id, from_node, to_node, road_class, name, name_en, ref, lanes, "
                 "speed_limit_kmh, oneway, bridge, tunnel, length_m, free_flow_kmh, coords")


def _row_to_segment(row: Any) -> RoadSegment:
    (sid, way, a, b, cls, name, name_en, ref, lanes, limit, oneway, bridge, tunnel, length,
     ff, coords) = row
    return RoadSegment(
        segment_id=sid, way_id=way, from_node=a, to_node=b, road_class=cls, name=name,
        name_en=name_en, ref=ref, lanes=lanes, speed_limit_kmh=limit, oneway=bool(oneway),
        bridge=bool(bridge), tunnel=bool(tunnel), length_m=length, free_flow_kmh=ff,
        coords=tuple((float(x), float(y)) for x, y in orjson.loads(coords)),
    )


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


class SqliteStore(GeoStore):
    """The embedded store used by ``tti run`` (``sqlite:///var/tti.db``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        if self._conn is None:
            raise TransientError("geodatabase is not open")
        conn = self._conn
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, conn)
            except sqlite3.OperationalError as exc:  # locked/busy: worth a retry
                raise TransientError(f"sqlite: {exc}") from exc

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            (current,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                conn.execute("BEGIN")
                try:
                    for stmt in sql.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                 (version, _ts(datetime.now(UTC))))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return conn

        self._conn = await asyncio.to_thread(connect)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            async with self._lock:
                await asyncio.to_thread(conn.close)

    async def schema_version(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0])
        return await self._run(q)

    async def import_segments(self, source: str, digest: str, region_name: str,
                              segments: Iterable[RoadSegment]) -> bool:
        segs = list(segments)

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT digest FROM imports WHERE kind='roads'").fetchone()
            if row is not None and row[0] == digest:
                return False
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM road_segments")
                conn.execute("DELETE FROM road_segments_rtree")
                for rid, s in enumerate(segs, start=1):
                    conn.execute(
                        f"INSERT INTO road_segments (rid, {_SEGMENT_COLS}) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (rid, s.segment_id, s.way_id, s.from_node, s.to_node, s.road_class,
                         s.name, s.name_en, s.ref, s.lanes, s.speed_limit_kmh, int(s.oneway),
                         int(s.bridge), int(s.tunnel), s.length_m, s.free_flow_kmh,
                         orjson.dumps(s.coords)))
                    xs = [c[0] for c in s.coords]
                    ys = [c[1] for c in s.coords]
                    conn.execute("INSERT INTO road_segments_rtree VALUES (?,?,?,?,?)",
                                 (rid, min(xs), max(xs), min(ys), max(ys)))
                conn.execute(
                    "INSERT OR REPLACE INTO imports VALUES ('roads', ?, ?, ?, ?, ?)",
                    (source, digest, region_name, _ts(datetime.now(UTC)), len(segs)))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return True

        return await self._run(write)

    async def list_segments(self, bbox: BBox | None = None) -> list[RoadSegment]:
        def q(conn: sqlite3.Connection) -> list[RoadSegment]:
            if bbox is None:
                rows = conn.execute(f"SELECT {_SEGMENT_COLS} FROM road_segments ORDER BY rid")
            else:
                min_lon, min_lat, max_lon, max_lat = bbox
                rows = conn.execute(
                    f"SELECT {_SEGMENT_COLS} FROM road_segments WHERE rid IN ("
                    "SELECT rid FROM road_segments_rtree WHERE max_lon >= ? AND min_lon <= ? "
                    "AND max_lat >= ? AND min_lat <= ?) ORDER BY rid",
                    (min_lon, max_lon, min_lat, max_lat))
            return [_row_to_segment(r) for r in rows]
        return await self._run(q)

    async def find_segment(self, segment_id: str) -> RoadSegment | None:
        def q(conn: sqlite3.Connection) -> RoadSegment | None:
            row = conn.execute(f"SELECT {_SEGMENT_COLS} FROM road_segments WHERE segment_id=?",
                               (segment_id,)).fetchone()
            return None if row is None else _row_to_segment(row)
        return await self._run(q)

    async def region(self) -> RegionInfo:
        def q(conn: sqlite3.Connection) -> RegionInfo:
            row = conn.execute("SELECT region_name FROM imports WHERE kind='roads'").fetchone()
            ext = conn.execute("SELECT MIN(min_lon), MIN(min_lat), MAX(max_lon), MAX(max_lat), "
                               "COUNT(*) FROM road_segments_rtree").fetchone()
            bbox = None if ext[4] == 0 else (ext[0], ext[1], ext[2], ext[3])
            return RegionInfo(row[0] if row else "", bbox, int(ext[4]))
        return await self._run(q)

    async def insert_speeds(self, records: Sequence[SpeedRecord]) -> None:
        if not records:
            return

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO segment_speeds VALUES (?,?,?,?,?,?,?)",
                    [(r.segment_id, _ts(r.window_start), _ts(r.observed_at), r.speed_kmh,
                      r.sample_count, r.source, r.confidence) for r in records])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        await self._run(write)

    async def speed_history(self, segment_id: str, since: datetime, until: datetime
                            ) -> list[SpeedRecord]:
        def q(conn: sqlite3.Connection) -> list[SpeedRecord]:
            rows = conn.execute(
                "SELECT segment_id, window_start, observed_at, speed_kmh, sample_count, source, "
                "confidence FROM segment_speeds WHERE segment_id=? AND window_start >= ? "
                "AND window_start < ? ORDER BY window_start",
                (segment_id, _ts(since), _ts(until))).fetchall()
            return [SpeedRecord(segment_id=r[0], window_start=_parse_ts(r[1]),
                                observed_at=_parse_ts(r[2]), speed_kmh=r[3], sample_count=r[4],
                                source=r[5], confidence=r[6]) for r in rows]
        return await self._run(q)
