"""Embedded geodatabase on plain sqlite3 with the R*Tree module (no SpatiaLite).

sqlite3 calls block, so each runs in a worker thread; one connection guarded by a lock keeps the
single-writer rule. Segment geometry is a JSON (lon, lat) polyline, feature geometry WKB; each has
its extent in an R*Tree, and exact predicates and distances are computed with shapely on the
R*Tree's candidates (in a local metric frame around the query point).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from itertools import groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import shapely
from shapely.geometry import mapping, shape

from services.bigdata.geofences import (
    GeofenceRecord,
    check_geofence_kinds,
    check_storable,
    check_unique,
    record_from_row,
)
from services.bigdata.profiles import (
    FREE_FLOW_PERCENTILE,
    FREE_FLOW_SOURCES,
    MIN_FREE_FLOW_WINDOWS,
    MIN_PROFILE_WINDOWS,
    PROFILE_SOURCES,
    bucket_of,
    bucket_of_epoch,
    is_free_flow_hour,
    local_hour_of_epoch,
    percentile_cont,
)
from services.bigdata.store._geo import box_intersects, distances_m, radius_box, wkb
from services.bigdata.store._roads import ROAD_NAME_COLUMNS, RoadNameIndex
from services.bigdata.store.base import (
    OSM_FEATURE_SOURCE,
    BBox,
    FreeFlow,
    GeoStore,
    HistoryUpkeep,
    ImportRecord,
    NearbySegment,
    OsmImportOutcome,
    RegionInfo,
    SegmentProfile,
    SpeedRecord,
    free_flow_of,
    retention_start,
    unique_in_feeds,
)
from services.bigdata.store.basemap import (
    SQLITE_MIGRATION,
    BasemapItem,
    check_layers,
    sqlite_basemap_in_bbox,
    sqlite_write_basemap,
)
from services.bigdata.store.features import (
    FEATURE_KINDS,
    MATCH_NAMES,
    ROAD_KIND,
    CatalogueEntry,
    Feature,
    FeatureError,
    NearbyFeature,
    SearchHit,
    catalogue_entry,
    check_kinds,
    feature_search_text,
    merge_live,
    query_patterns,
    search_text,
    validate_feature,
)
from services.bigdata.store.gtfs import (
    DATE_COLUMNS,
    GTFS_COLUMNS,
    GTFS_TABLES,
    GtfsData,
    GtfsFeed,
    GtfsFrequency,
    GtfsRoute,
    GtfsShape,
    GtfsStop,
    GtfsStopTime,
    GtfsTrip,
    active_services,
    route_from_row,
    sort_routes,
    sort_trips,
    stop_from_row,
    trip_from_row,
)
from shared.clock import Clock
from shared.errors import NotFound, TransientError
from shared.roadnet import RoadSegment

R = TypeVar("R")
Migration = str | Callable[[sqlite3.Connection], None]

_V1 = """
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
"""

_V2 = """
    CREATE TABLE features (
        fid INTEGER PRIMARY KEY,
        kind TEXT NOT NULL, feature_id TEXT NOT NULL, source TEXT NOT NULL,
        name TEXT, name_en TEXT, ref TEXT, search_text TEXT NOT NULL,
        geom BLOB NOT NULL, attrs TEXT NOT NULL, live TEXT, live_updated_at TEXT,
        import_seq INTEGER NOT NULL,
        UNIQUE (kind, feature_id)
    );
    CREATE INDEX features_source ON features(source, kind);
    CREATE VIRTUAL TABLE features_rtree USING rtree(fid, min_lon, max_lon, min_lat, max_lat);
    CREATE TABLE road_names (
        name_key TEXT PRIMARY KEY, key_field TEXT NOT NULL, name TEXT, name_en TEXT, ref TEXT,
        road_class TEXT NOT NULL, segment_count INTEGER NOT NULL, length_m REAL NOT NULL,
        min_lon REAL NOT NULL, min_lat REAL NOT NULL, max_lon REAL NOT NULL,
        max_lat REAL NOT NULL, center_lon REAL NOT NULL, center_lat REAL NOT NULL,
        search_text TEXT NOT NULL
    );
    CREATE INDEX road_segments_ref ON road_segments(ref);
"""

_V3 = """
    CREATE TABLE gtfs_feeds (
        feed_id TEXT PRIMARY KEY, source TEXT NOT NULL, digest TEXT NOT NULL,
        imported_at TEXT NOT NULL, agency_timezone TEXT NOT NULL, feed_info TEXT NOT NULL,
        counts TEXT NOT NULL, warnings TEXT NOT NULL
    );
    CREATE TABLE gtfs_agencies (
        feed_id TEXT NOT NULL, agency_id TEXT NOT NULL, agency_name TEXT NOT NULL,
        agency_url TEXT, agency_timezone TEXT NOT NULL, agency_lang TEXT, agency_phone TEXT,
        PRIMARY KEY (feed_id, agency_id)
    );
    CREATE TABLE gtfs_routes (
        feed_id TEXT NOT NULL, route_id TEXT NOT NULL, agency_id TEXT,
        route_short_name TEXT, route_long_name TEXT, route_desc TEXT,
        route_type INTEGER NOT NULL, route_color TEXT, route_text_color TEXT,
        route_sort_order INTEGER,
        PRIMARY KEY (feed_id, route_id)
    );
    CREATE TABLE gtfs_stops (
        feed_id TEXT NOT NULL, stop_id TEXT NOT NULL, stop_code TEXT, stop_name TEXT,
        stop_name_en TEXT, stop_desc TEXT, stop_lat REAL, stop_lon REAL, zone_id TEXT,
        location_type INTEGER NOT NULL, parent_station TEXT, wheelchair_boarding INTEGER,
        platform_code TEXT, search_text TEXT NOT NULL,
        PRIMARY KEY (feed_id, stop_id)
    );
    CREATE INDEX gtfs_stops_lat ON gtfs_stops(stop_lat);
    CREATE TABLE gtfs_trips (
        feed_id TEXT NOT NULL, trip_id TEXT NOT NULL, route_id TEXT NOT NULL,
        service_id TEXT NOT NULL, trip_headsign TEXT, trip_short_name TEXT,
        direction_id INTEGER, block_id TEXT, shape_id TEXT, wheelchair_accessible INTEGER,
        PRIMARY KEY (feed_id, trip_id)
    );
    CREATE INDEX gtfs_trips_route ON gtfs_trips(feed_id, route_id);
    CREATE INDEX gtfs_trips_trip ON gtfs_trips(trip_id);
    CREATE TABLE gtfs_stop_times (
        feed_id TEXT NOT NULL, trip_id TEXT NOT NULL, stop_sequence INTEGER NOT NULL,
        stop_id TEXT NOT NULL, arrival_s INTEGER, departure_s INTEGER, stop_headsign TEXT,
        pickup_type INTEGER, drop_off_type INTEGER, shape_dist_traveled REAL,
        timepoint INTEGER,
        PRIMARY KEY (feed_id, trip_id, stop_sequence)
    ) WITHOUT ROWID;
    CREATE INDEX gtfs_stop_times_stop ON gtfs_stop_times(feed_id, stop_id);
    CREATE TABLE gtfs_shapes (
        feed_id TEXT NOT NULL, shape_id TEXT NOT NULL, coords BLOB NOT NULL,
        dist_traveled BLOB,
        PRIMARY KEY (feed_id, shape_id)
    );
    CREATE TABLE gtfs_calendar (
        feed_id TEXT NOT NULL, service_id TEXT NOT NULL,
        monday INTEGER NOT NULL, tuesday INTEGER NOT NULL, wednesday INTEGER NOT NULL,
        thursday INTEGER NOT NULL, friday INTEGER NOT NULL, saturday INTEGER NOT NULL,
        sunday INTEGER NOT NULL, start_date TEXT NOT NULL, end_date TEXT NOT NULL,
        PRIMARY KEY (feed_id, service_id)
    );
    CREATE TABLE gtfs_calendar_dates (
        feed_id TEXT NOT NULL, service_id TEXT NOT NULL, date TEXT NOT NULL,
        exception_type INTEGER NOT NULL,
        PRIMARY KEY (feed_id, service_id, date)
    );
    CREATE INDEX gtfs_calendar_dates_date ON gtfs_calendar_dates(feed_id, date);
    CREATE TABLE gtfs_frequencies (
        feed_id TEXT NOT NULL, trip_id TEXT NOT NULL, start_s INTEGER NOT NULL,
        end_s INTEGER NOT NULL, headway_s INTEGER NOT NULL, exact_times INTEGER,
        PRIMARY KEY (feed_id, trip_id, start_s)
    );
"""


def _execute_script(conn: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT the migration's transaction; run statement by statement.
    for stmt in sql.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _migration_2(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _V2)
    # A database imported under version 1 already has roads: index their names for search.
    names = RoadNameIndex()
    names.add_all(_row_to_segment(r) for r in conn.execute(
        f"SELECT {_SEGMENT_COLS} FROM road_segments ORDER BY rid"))
    _insert_road_names(conn, names)


_V4 = """
    CREATE TABLE IF NOT EXISTS segment_profiles (
        segment_id TEXT NOT NULL, bucket INTEGER NOT NULL CHECK (bucket BETWEEN 0 AND 671),
        speed_kmh REAL NOT NULL, sample_windows INTEGER NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (segment_id, bucket)
    );
    CREATE INDEX IF NOT EXISTS segment_profiles_bucket ON segment_profiles(bucket);
    CREATE TABLE IF NOT EXISTS segment_free_flow (
        segment_id TEXT PRIMARY KEY, speed_kmh REAL NOT NULL, sample_windows INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS segment_speeds_window ON segment_speeds(window_start);
"""

_V5 = """
    CREATE TABLE IF NOT EXISTS geofences (
        geofence_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, name_en TEXT,
        source TEXT NOT NULL, geometry TEXT,
        min_lon REAL NOT NULL, min_lat REAL NOT NULL, max_lon REAL NOT NULL,
        max_lat REAL NOT NULL, props TEXT NOT NULL, updated_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS geofences_source ON geofences(source);
    CREATE INDEX IF NOT EXISTS geofences_kind ON geofences(kind)
"""

MIGRATIONS: list[Migration] = [
    _V1,  # 1: road segments with an R*Tree on their extent, speed history, import bookkeeping
    _migration_2,  # 2: features (+ R*Tree) and the road names search looks at
    _V3,  # 3: GTFS static
    _V4,  # 4: time-of-week profiles and learned free flow (IF NOT EXISTS: re-runnable)
    _V5,  # 5: geofences (GeoJSON text + extent columns; a few hundred rows, no R*Tree)
    SQLITE_MIGRATION,  # 6: the base map (WKB + R*Tree), services.bigdata.store.basemap
    lambda conn: None,  # 7: PostgreSQL partitions the speed history by day; nothing here
]

_SEGMENT_COLS = ("segment_id, way_id, from_node, to_node, road_class, name, name_en, ref, lanes, "
                 "speed_limit_kmh, oneway, bridge, tunnel, length_m, free_flow_kmh, coords")
_FEATURE_COLS = ("kind, feature_id, source, name, name_en, ref, geom, attrs, live, "
                 "live_updated_at")
_GEOFENCE_COLS = ("geofence_id, kind, name, name_en, source, geometry, min_lon, min_lat, max_lon, "
                  "max_lat, props, updated_at")
_BATCH = 5000
_EXPIRE_BATCH = 20_000  # expired speed rows deleted per write, so other writes interleave
_NEAREST_START_M = 250.0
_FULL_SCAN_M = 50_000.0


def _row_to_segment(row: Any) -> RoadSegment:
    (sid, way, a, b, cls, name, name_en, ref, lanes, limit, oneway, bridge, tunnel, length,
     ff, coords) = row
    return RoadSegment(
        segment_id=sid, way_id=way, from_node=a, to_node=b, road_class=cls, name=name,
        name_en=name_en, ref=ref, lanes=lanes, speed_limit_kmh=limit, oneway=bool(oneway),
        bridge=bool(bridge), tunnel=bool(tunnel), length_m=length, free_flow_kmh=ff,
        coords=tuple((float(x), float(y)) for x, y in orjson.loads(coords)),
    )


def _row_to_profile(r: Any) -> SegmentProfile:
    return SegmentProfile(segment_id=r[0], bucket=r[1], speed_kmh=r[2], sample_windows=r[3],
                          updated_at=_parse_ts(r[4]))


def _rows_to_features(rows: Sequence[Any]) -> list[Feature]:
    if not rows:
        return []
    geoms = shapely.from_wkb(np.asarray([r[6] for r in rows], dtype=object))
    return [Feature(kind=r[0], feature_id=r[1], source=r[2], name=r[3], name_en=r[4], ref=r[5],
                    geometry=g, attrs=orjson.loads(r[7]),
                    live=None if r[8] is None else orjson.loads(r[8]),
                    live_updated_at=None if r[9] is None else _parse_ts(r[9]))
            for r, g in zip(rows, geoms, strict=True)]


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


def _kinds_sql(kinds: Sequence[str] | None, column: str = "kind") -> tuple[str, list[str]]:
    if kinds is None:
        return "", []
    return f" AND {column} IN ({','.join('?' * len(kinds))})", list(kinds)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so the digest check and the writes that follow
    # see the same state even with another process on the same file.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _last_digest(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT digest FROM imports WHERE kind=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _record_import(conn: sqlite3.Connection, at: datetime, key: str, source: str,
                   digest: str, region_name: str, count: int) -> None:
    conn.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?, ?, ?, ?)",
                 (key, source, digest, region_name, _ts(at), count))


def _insert_road_names(conn: sqlite3.Connection, names: RoadNameIndex) -> None:
    conn.executemany(
        f"INSERT INTO road_names ({', '.join(ROAD_NAME_COLUMNS)}) "
        f"VALUES ({','.join('?' * len(ROAD_NAME_COLUMNS))})", names.rows())


def _write_segments(conn: sqlite3.Connection, segments: Iterable[RoadSegment]) -> int:
    conn.execute("DELETE FROM road_segments")
    conn.execute("DELETE FROM road_segments_rtree")
    conn.execute("DELETE FROM road_names")
    names = RoadNameIndex()
    count = 0
    it = iter(segments)
    while batch := list(islice(it, _BATCH)):
        rows = []
        boxes = []
        for s in batch:
            count += 1
            names.add(s)
            rows.append((count, s.segment_id, s.way_id, s.from_node, s.to_node, s.road_class,
                         s.name, s.name_en, s.ref, s.lanes, s.speed_limit_kmh, int(s.oneway),
                         int(s.bridge), int(s.tunnel), s.length_m, s.free_flow_kmh,
                         orjson.dumps(s.coords)))
            xs = [c[0] for c in s.coords]
            ys = [c[1] for c in s.coords]
            boxes.append((count, min(xs), max(xs), min(ys), max(ys)))
        conn.executemany(f"INSERT INTO road_segments (rid, {_SEGMENT_COLS}) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.executemany("INSERT INTO road_segments_rtree VALUES (?,?,?,?,?)", boxes)
    _insert_road_names(conn, names)
    return count


def _write_features(conn: sqlite3.Connection, source: str, kinds: Sequence[str],
                    features: Iterable[Feature]) -> int:
    allowed = frozenset(check_kinds(kinds, allowed=frozenset(FEATURE_KINDS)) or ())
    (seq,) = conn.execute("SELECT COALESCE(MAX(import_seq), 0) + 1 FROM features").fetchone()
    seen: set[tuple[str, str]] = set()
    for f in features:
        validate_feature(f, allowed)
        key = (f.kind, f.feature_id)
        if key in seen:
            raise FeatureError(f"duplicate feature {f.kind}/{f.feature_id} in one import")
        seen.add(key)
        (fid,) = conn.execute(
            "INSERT INTO features (kind, feature_id, source, name, name_en, ref, search_text, "
            "geom, attrs, import_seq) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (kind, feature_id) DO UPDATE SET source=excluded.source, "
            "name=excluded.name, name_en=excluded.name_en, ref=excluded.ref, "
            "search_text=excluded.search_text, geom=excluded.geom, attrs=excluded.attrs, "
            "import_seq=excluded.import_seq RETURNING fid",
            (f.kind, f.feature_id, source, f.name, f.name_en, f.ref, feature_search_text(f),
             wkb(f.geometry), orjson.dumps(dict(f.attrs)), seq)).fetchone()
        min_lon, min_lat, max_lon, max_lat = f.geometry.bounds
        conn.execute("INSERT OR REPLACE INTO features_rtree VALUES (?,?,?,?,?)",
                     (fid, min_lon, max_lon, min_lat, max_lat))
    kinds_sql, params = _kinds_sql(sorted(allowed))
    stale = [r[0] for r in conn.execute(
        f"SELECT fid FROM features WHERE source=? AND import_seq<>?{kinds_sql}",
        [source, seq, *params])]
    conn.executemany("DELETE FROM features_rtree WHERE fid=?", [(f,) for f in stale])
    conn.executemany("DELETE FROM features WHERE fid=?", [(f,) for f in stale])
    return len(seen)


def _sql_date(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _row_to_geofence(r: Any) -> GeofenceRecord:
    return record_from_row(
        geofence_id=r[0], kind=r[1], name=r[2], name_en=r[3], source=r[4],
        geometry=None if r[5] is None else shape(orjson.loads(r[5])),
        bbox=(r[6], r[7], r[8], r[9]), props=orjson.loads(r[10]), updated_at=_parse_ts(r[11]))


def _write_geofence(conn: sqlite3.Connection, f: GeofenceRecord, source: str, at: datetime
                    ) -> bool:
    """Upsert one fence; True when it was new."""
    check_storable(f)
    assert f.bbox is not None
    created = conn.execute("SELECT 1 FROM geofences WHERE geofence_id=?",
                           (f.geofence_id,)).fetchone() is None
    conn.execute(
        f"INSERT OR REPLACE INTO geofences ({_GEOFENCE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (f.geofence_id, f.kind, f.name, f.name_en, source,
         None if f.geometry is None else orjson.dumps(mapping(f.geometry)).decode(),
         *f.bbox, orjson.dumps(f.props()).decode(), _ts(at)))
    return created


class SqliteStore(GeoStore):
    """The embedded store used by ``tti run`` (``sqlite:///var/tti.db``)."""

    def __init__(self, path: str, *, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or Clock()  # import, profile and live-state times
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        if self._conn is None:
            raise TransientError("geodatabase is not open")
        conn = self._conn
        async with self._lock:
            work = asyncio.ensure_future(asyncio.to_thread(fn, conn))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # The thread cannot be stopped: hold the lock until it is done, or close()
                # would free the connection under it (a segfault at shutdown).
                await asyncio.wait([work])
                raise
            except sqlite3.OperationalError as exc:  # locked/busy: worth a retry
                raise TransientError(f"sqlite: {exc}") from exc

    # --- lifecycle ---

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
            with _transaction(conn):
                (current,) = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
                for version, migration in enumerate(MIGRATIONS, start=1):
                    if version <= current:
                        continue
                    if isinstance(migration, str):
                        _execute_script(conn, migration)
                    else:
                        migration(conn)
                    conn.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                 (version, _ts(self.clock.now())))
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

    async def find_import(self, key: str) -> ImportRecord | None:
        def q(conn: sqlite3.Connection) -> ImportRecord | None:
            row = conn.execute("SELECT kind, source, digest, region_name, imported_at, "
                               "item_count FROM imports WHERE kind=?", (key,)).fetchone()
            if row is None:
                return None
            return ImportRecord(key=row[0], source=row[1], digest=row[2], region_name=row[3],
                                imported_at=_parse_ts(row[4]), item_count=row[5])
        return await self._run(q)

    # --- road segments ---

    async def import_segments(self, source: str, digest: str, region_name: str,
                              segments: Iterable[RoadSegment]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if _last_digest(conn, "roads") == digest:
                    return False
                count = _write_segments(conn, segments)
                _record_import(conn, self.clock.now(), "roads", source, digest, region_name, count)
            return True

        return await self._run(write)

    async def import_osm(self, source: str, digest: str, region_name: str,
                         segments: Iterable[RoadSegment], features: Iterable[Feature], *,
                         features_digest: str, feature_kinds: Sequence[str] = FEATURE_KINDS,
                         basemap: Iterable[BasemapItem] | None = None) -> OsmImportOutcome:
        fkey = f"features:{OSM_FEATURE_SOURCE}"

        def write(conn: sqlite3.Connection) -> OsmImportOutcome:
            with _transaction(conn):
                roads = _last_digest(conn, "roads") != digest
                feats = _last_digest(conn, fkey) != features_digest
                if roads:
                    count = _write_segments(conn, segments)
                    _record_import(conn, self.clock.now(),
                                   "roads", source, digest, region_name, count)
                if feats:
                    n = _write_features(conn, OSM_FEATURE_SOURCE, feature_kinds, features)
                    if basemap is not None:
                        sqlite_write_basemap(conn, basemap)
                    _record_import(conn, self.clock.now(),
                                   fkey, source, features_digest, region_name, n)
            return OsmImportOutcome(roads, feats)

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

    async def nearest_segments(self, lon: float, lat: float, k: int = 1,
                               max_distance_m: float | None = None) -> list[NearbySegment]:
        def fetch(conn: sqlite3.Connection, box: BBox | None) -> list[Any]:
            if box is None:
                return conn.execute(f"SELECT {_SEGMENT_COLS} FROM road_segments").fetchall()
            return conn.execute(
                f"SELECT {_SEGMENT_COLS} FROM road_segments WHERE rid IN ("
                "SELECT rid FROM road_segments_rtree WHERE max_lon >= ? AND min_lon <= ? "
                "AND max_lat >= ? AND min_lat <= ?)", (box[0], box[2], box[1], box[3])
            ).fetchall()

        def q(conn: sqlite3.Connection) -> list[NearbySegment]:
            def measure(rows: list[Any]) -> list[tuple[float, str, Any]]:
                segs = [_row_to_segment(r) for r in rows]
                lines = [shapely.LineString(s.coords) for s in segs]
                return [(float(d), s.segment_id, s)
                        for d, s in zip(distances_m(lon, lat, lines), segs, strict=True)]

            hits = _expanding_nearest(conn, lon, lat, k, max_distance_m, fetch, measure)
            return [NearbySegment(s, d) for d, _, s in hits]
        return await self._run(q)

    async def region(self) -> RegionInfo:
        def q(conn: sqlite3.Connection) -> RegionInfo:
            row = conn.execute("SELECT region_name FROM imports WHERE kind='roads'").fetchone()
            ext = conn.execute("SELECT MIN(min_lon), MIN(min_lat), MAX(max_lon), MAX(max_lat), "
                               "COUNT(*) FROM road_segments_rtree").fetchone()
            if ext[4] == 0:
                return RegionInfo(row[0] if row else "", None, 0)
            # The R*Tree keeps 32-bit floats rounded outwards (~1 m); refine the extent from
            # the exact coordinates of the segments on its edges.
            eps = 1e-4
            xs: list[float] = []
            ys: list[float] = []
            for (coords,) in conn.execute(
                    "SELECT coords FROM road_segments WHERE rid IN (SELECT rid FROM "
                    "road_segments_rtree WHERE min_lon <= ? OR min_lat <= ? OR max_lon >= ? "
                    "OR max_lat >= ?)", (ext[0] + eps, ext[1] + eps, ext[2] - eps,
                                         ext[3] - eps)):
                for x, y in orjson.loads(coords):
                    xs.append(x)
                    ys.append(y)
            return RegionInfo(row[0] if row else "", (min(xs), min(ys), max(xs), max(ys)),
                              int(ext[4]))
        return await self._run(q)

    async def insert_speeds(self, records: Sequence[SpeedRecord]) -> None:
        if not records:
            return

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO segment_speeds VALUES (?,?,?,?,?,?,?)",
                    [(r.segment_id, _ts(r.window_start), _ts(r.observed_at), r.speed_kmh,
                      r.sample_count, r.source, r.confidence) for r in records])
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

    async def maintain_speed_history(self, *, keep_days: int, now: datetime | None = None
                                     ) -> HistoryUpkeep:
        kept_from = retention_start(now or self.clock.now(), keep_days)
        cutoff = _ts(kept_from)

        def expire(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                return conn.execute(
                    "DELETE FROM segment_speeds WHERE rowid IN (SELECT rowid FROM "
                    "segment_speeds WHERE window_start < ? LIMIT ?)",
                    (cutoff, _EXPIRE_BATCH)).rowcount

        deleted = 0
        while (n := await self._run(expire)) > 0:
            deleted += n
        return HistoryUpkeep(kept_from=kept_from, partitions_created=0, partitions_dropped=0,
                             rows_deleted=deleted)

    # --- profiles ---

    async def recompute_profiles(self, since: datetime, until: datetime) -> int:
        updated_at = _ts(self.clock.now())
        sources = PROFILE_SOURCES

        def write(conn: sqlite3.Connection) -> int:
            # SQLite has no percentile aggregate: stream the windows one segment at a time
            # (primary-key order) and take medians/percentiles in Python; memory stays bounded
            # by one segment's history. substr() drops the fraction so seconds truncate.
            written = 0
            with _transaction(conn):
                conn.execute("DELETE FROM segment_profiles")
                conn.execute("DELETE FROM segment_free_flow")
                rows = conn.execute(
                    "SELECT segment_id, "
                    "CAST(strftime('%s', substr(window_start, 1, 19)) AS INTEGER), speed_kmh, "
                    "source FROM segment_speeds WHERE window_start >= ? AND window_start < ? "
                    "AND speed_kmh IS NOT NULL AND sample_count > 0 "
                    f"AND source IN ({','.join('?' * len(sources))}) ORDER BY segment_id",
                    (_ts(since), _ts(until), *sources))
                for segment_id, group in groupby(rows, key=itemgetter(0)):
                    buckets: dict[int, list[float]] = defaultdict(list)
                    night: list[float] = []
                    for _, epoch, speed, source in group:
                        buckets[bucket_of_epoch(epoch)].append(speed)
                        if (source in FREE_FLOW_SOURCES
                                and is_free_flow_hour(local_hour_of_epoch(epoch))):
                            night.append(speed)
                    profiles = [(segment_id, b, percentile_cont(sorted(v), 0.5), len(v),
                                 updated_at)
                                for b, v in sorted(buckets.items())
                                if len(v) >= MIN_PROFILE_WINDOWS]
                    conn.executemany("INSERT INTO segment_profiles VALUES (?,?,?,?,?)",
                                     profiles)
                    written += len(profiles)
                    if len(night) >= MIN_FREE_FLOW_WINDOWS:
                        conn.execute("INSERT INTO segment_free_flow VALUES (?,?,?,?)",
                                     (segment_id,
                                      percentile_cont(sorted(night), FREE_FLOW_PERCENTILE),
                                      len(night), updated_at))
            return written
        return await self._run(write)

    async def profiles_at(self, when: datetime, segment_ids: Sequence[str] | None = None
                          ) -> dict[str, SegmentProfile]:
        bucket = bucket_of(when)

        def q(conn: sqlite3.Connection) -> dict[str, SegmentProfile]:
            sql = ("SELECT segment_id, bucket, speed_kmh, sample_windows, updated_at "
                   "FROM segment_profiles WHERE bucket = ?")
            if segment_ids is None:
                rows = conn.execute(sql, (bucket,)).fetchall()
            else:
                rows = []
                ids = list(dict.fromkeys(segment_ids))
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    rows += conn.execute(
                        sql + f" AND segment_id IN ({','.join('?' * len(chunk))})",
                        (bucket, *chunk)).fetchall()
            return {r[0]: _row_to_profile(r) for r in rows}
        return await self._run(q)

    async def segment_profile(self, segment_id: str) -> list[SegmentProfile]:
        def q(conn: sqlite3.Connection) -> list[SegmentProfile]:
            rows = conn.execute(
                "SELECT segment_id, bucket, speed_kmh, sample_windows, updated_at "
                "FROM segment_profiles WHERE segment_id = ? ORDER BY bucket",
                (segment_id,)).fetchall()
            return [_row_to_profile(r) for r in rows]
        return await self._run(q)

    async def learned_free_flow(self, segment_ids: Sequence[str] | None = None
                                ) -> dict[str, FreeFlow]:
        def q(conn: sqlite3.Connection) -> dict[str, FreeFlow]:
            sql = ("SELECT r.segment_id, r.free_flow_kmh, f.speed_kmh, f.sample_windows, "
                   "f.updated_at FROM road_segments r "
                   "LEFT JOIN segment_free_flow f ON f.segment_id = r.segment_id")
            if segment_ids is None:
                rows = conn.execute(sql + " ORDER BY r.rid").fetchall()
            else:
                rows = []
                ids = list(dict.fromkeys(segment_ids))
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    rows += conn.execute(
                        sql + f" WHERE r.segment_id IN ({','.join('?' * len(chunk))})",
                        chunk).fetchall()
            return {r[0]: free_flow_of(r[0], r[1], r[2], r[3],
                                     None if r[4] is None else _parse_ts(r[4])) for r in rows}
        return await self._run(q)

    # --- features ---

    async def import_features(self, source: str, digest: str, kinds: Sequence[str],
                              features: Iterable[Feature]) -> bool:
        key = f"features:{source}"

        def write(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if _last_digest(conn, key) == digest:
                    return False
                n = _write_features(conn, source, kinds, features)
                _record_import(conn, self.clock.now(), key, source, digest, "", n)
            return True

        return await self._run(write)

    async def features_in_bbox(self, bbox: BBox | None, kinds: Sequence[str] | None = None,
                               limit: int = 1000) -> list[Feature]:
        kinds = check_kinds(kinds, allowed=frozenset(FEATURE_KINDS))
        kinds_sql, params = _kinds_sql(kinds)

        def q(conn: sqlite3.Connection) -> list[Feature]:
            if bbox is None:
                rows = conn.execute(
                    f"SELECT {_FEATURE_COLS} FROM features WHERE 1=1{kinds_sql} "
                    "ORDER BY kind, feature_id LIMIT ?", [*params, limit]).fetchall()
                return _rows_to_features(rows)
            min_lon, min_lat, max_lon, max_lat = bbox
            out: list[Feature] = []
            cursor = conn.execute(
                f"SELECT {_FEATURE_COLS} FROM features WHERE fid IN (SELECT fid FROM "
                "features_rtree WHERE max_lon >= ? AND min_lon <= ? AND max_lat >= ? "
                f"AND min_lat <= ?){kinds_sql} ORDER BY kind, feature_id",
                [min_lon, max_lon, min_lat, max_lat, *params])
            # The R*Tree answers by extent; keep only real intersections, up to the limit.
            while len(out) < limit and (rows := cursor.fetchmany(1000)):
                feats = _rows_to_features(rows)
                hit = box_intersects([f.geometry for f in feats], bbox)
                out.extend(f for f, h in zip(feats, hit, strict=True) if h)
            return out[:limit]
        return await self._run(q)

    async def nearest_features(self, lon: float, lat: float,
                               kinds: Sequence[str] | None = None, k: int = 5,
                               max_distance_m: float | None = None) -> list[NearbyFeature]:
        kinds = check_kinds(kinds, allowed=frozenset(FEATURE_KINDS))
        kinds_sql, params = _kinds_sql(kinds)

        def fetch(conn: sqlite3.Connection, box: BBox | None) -> list[Any]:
            if box is None:
                return conn.execute(f"SELECT {_FEATURE_COLS} FROM features WHERE 1=1"
                                    f"{kinds_sql}", params).fetchall()
            return conn.execute(
                f"SELECT {_FEATURE_COLS} FROM features WHERE fid IN (SELECT fid FROM "
                "features_rtree WHERE max_lon >= ? AND min_lon <= ? AND max_lat >= ? "
                f"AND min_lat <= ?){kinds_sql}", [box[0], box[2], box[1], box[3], *params]
            ).fetchall()

        def q(conn: sqlite3.Connection) -> list[NearbyFeature]:
            def measure(rows: list[Any]) -> list[tuple[float, str, Any]]:
                feats = _rows_to_features(rows)
                dists = distances_m(lon, lat, [f.geometry for f in feats])
                return [(float(d), f"{f.kind}/{f.feature_id}", f)
                        for d, f in zip(dists, feats, strict=True)]

            hits = _expanding_nearest(conn, lon, lat, k, max_distance_m, fetch, measure)
            return [NearbyFeature(f, d) for d, _, f in hits]
        return await self._run(q)

    async def search(self, query: str, kinds: Sequence[str] | None = None,
                     limit: int = 20) -> list[SearchHit]:
        exact, prefix, sub = query_patterns(query)
        kinds = check_kinds(kinds)
        feature_kinds = [k for k in (FEATURE_KINDS if kinds is None else kinds) if k != ROAD_KIND]
        rank_sql = ("CASE WHEN instr(search_text, ?) > 0 THEN 0 WHEN instr(search_text, ?) > 0 "
                    "THEN 1 ELSE 2 END")
        label = "COALESCE(name, name_en, ref, '')"

        def q(conn: sqlite3.Connection) -> list[SearchHit]:
            hits: list[SearchHit] = []
            if kinds is None or ROAD_KIND in kinds:
                rows = conn.execute(
                    f"SELECT {', '.join(ROAD_NAME_COLUMNS[:-1])}, {rank_sql} AS rank "
                    "FROM road_names WHERE instr(search_text, ?) > 0 "
                    f"ORDER BY rank, length({label}), {label}, name_key LIMIT ?",
                    (exact, prefix, sub, limit)).fetchall()
                for r in rows:
                    seg_ids = tuple(x[0] for x in conn.execute(
                        f"SELECT segment_id FROM road_segments WHERE {r[1]}=? ORDER BY rid",
                        (r[0],)))
                    hits.append(_road_hit(r, seg_ids))
            if feature_kinds:
                kinds_sql, params = _kinds_sql(feature_kinds)
                rows = conn.execute(
                    f"SELECT {_FEATURE_COLS}, {rank_sql} AS rank FROM features "
                    f"WHERE instr(search_text, ?) > 0{kinds_sql} "
                    f"ORDER BY rank, length({label}), {label}, kind, feature_id LIMIT ?",
                    [exact, prefix, sub, *params, limit]).fetchall()
                for f, r in zip(_rows_to_features(rows), rows, strict=True):
                    hits.append(_feature_hit(f, MATCH_NAMES[r[-1]]))
            hits.sort(key=SearchHit.sort_key)
            return hits[:limit]
        return await self._run(q)

    async def basemap_in_bbox(self, bbox: BBox, *, layers: Sequence[str] | None = None,
                              min_size_m: float = 0.0, max_rank: int = 99,
                              limit: int = 10_000) -> list[BasemapItem]:
        checked = check_layers(layers)
        return await self._run(lambda conn: sqlite_basemap_in_bbox(
            conn, bbox, checked, min_size_m, max_rank, limit))

    async def get_feature(self, kind: str, feature_id: str) -> Feature:
        check_kinds([kind], allowed=frozenset(FEATURE_KINDS))

        def q(conn: sqlite3.Connection) -> Feature:
            return _get_feature(conn, kind, feature_id)
        return await self._run(q)

    async def update_live(self, kind: str, feature_id: str, live: Mapping[str, Any], *,
                          observed_at: datetime | None = None) -> Feature:
        check_kinds([kind], allowed=frozenset(FEATURE_KINDS))
        at = observed_at or self.clock.now()

        def write(conn: sqlite3.Connection) -> Feature:
            with _transaction(conn):
                current = _get_feature(conn, kind, feature_id)
                if current.live_updated_at is not None and current.live_updated_at > at:
                    return current
                merged = merge_live(kind, current.attrs, current.live, live)
                conn.execute("UPDATE features SET live=?, live_updated_at=? WHERE kind=? AND "
                             "feature_id=?", (orjson.dumps(merged), _ts(at), kind, feature_id))
                return _get_feature(conn, kind, feature_id)
        return await self._run(write)

    async def feature_counts(self) -> dict[str, int]:
        def q(conn: sqlite3.Connection) -> dict[str, int]:
            return {k: n for k, n in conn.execute(
                "SELECT kind, COUNT(*) FROM features GROUP BY kind ORDER BY kind")}
        return await self._run(q)

    async def list_feature_catalogue(self) -> dict[str, list[CatalogueEntry]]:
        def q(conn: sqlite3.Connection) -> dict[str, list[CatalogueEntry]]:
            out: dict[str, list[CatalogueEntry]] = {}
            for kind, fid, capacity in conn.execute(
                    "SELECT kind, feature_id, json_extract(attrs, '$.capacity') FROM features "
                    "ORDER BY kind, feature_id"):
                out.setdefault(kind, []).append(catalogue_entry(kind, fid, capacity))
            return out
        return await self._run(q)

    # --- geofences ---

    async def put_geofence(self, fence: GeofenceRecord) -> tuple[GeofenceRecord, bool]:
        at = self.clock.now()

        def write(conn: sqlite3.Connection) -> tuple[GeofenceRecord, bool]:
            with _transaction(conn):
                created = _write_geofence(conn, fence, fence.source, at)
            return _get_geofence(conn, fence.geofence_id), created
        return await self._run(write)

    async def import_geofences(self, source: str, digest: str,
                               fences: Sequence[GeofenceRecord]) -> int:
        at = self.clock.now()
        check_unique(fences)

        def write(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                keep = {f.geofence_id for f in fences}
                stale = [r[0] for r in conn.execute(
                    "SELECT geofence_id FROM geofences WHERE source=?", (source,))
                    if r[0] not in keep]
                conn.executemany("DELETE FROM geofences WHERE geofence_id=?",
                                 [(g,) for g in stale])
                for f in fences:
                    _write_geofence(conn, f, source, at)
                _record_import(conn, at, f"geofences:{source}", source, digest, "",
                               len(fences))
            return len(fences)
        return await self._run(write)

    async def list_geofences(self, bbox: BBox | None = None, kinds: Sequence[str] | None = None
                             ) -> list[GeofenceRecord]:
        kinds = check_geofence_kinds(kinds)
        kinds_sql, params = _kinds_sql(kinds)

        def q(conn: sqlite3.Connection) -> list[GeofenceRecord]:
            if bbox is None:
                rows = conn.execute(f"SELECT {_GEOFENCE_COLS} FROM geofences WHERE 1=1"
                                    f"{kinds_sql} ORDER BY geofence_id", params).fetchall()
                return [_row_to_geofence(r) for r in rows]
            rows = conn.execute(
                f"SELECT {_GEOFENCE_COLS} FROM geofences WHERE max_lon >= ? AND min_lon <= ? "
                f"AND max_lat >= ? AND min_lat <= ?{kinds_sql} ORDER BY geofence_id",
                [bbox[0], bbox[2], bbox[1], bbox[3], *params]).fetchall()
            fences = [_row_to_geofence(r) for r in rows]
            # The extent answers first; a fence with a geometry must really intersect.
            box = shapely.box(*bbox)
            return [f for f in fences if f.geometry is None or f.geometry.intersects(box)]
        return await self._run(q)

    async def get_geofence(self, geofence_id: str) -> GeofenceRecord:
        def q(conn: sqlite3.Connection) -> GeofenceRecord:
            return _get_geofence(conn, geofence_id)
        return await self._run(q)

    async def delete_geofence(self, geofence_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                gone = conn.execute("DELETE FROM geofences WHERE geofence_id=?",
                                    (geofence_id,)).rowcount
            if not gone:
                raise NotFound(f"no geofence {geofence_id!r}")
        await self._run(write)

    # --- GTFS static ---

    async def import_gtfs(self, data: GtfsData) -> bool:
        key = f"gtfs:{data.feed_id}"
        feed = data.feed_id

        def write(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if _last_digest(conn, key) == data.digest:
                    return False
                for table in GTFS_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE feed_id=?", (feed,))
                for table, cols in GTFS_COLUMNS.items():
                    rows = data.tables.get(table, ())
                    extra = ", search_text" if table == "gtfs_stops" else ""
                    marks = ",".join("?" * (len(cols) + 1 + bool(extra)))
                    date_idx = [i for i, c in enumerate(cols) if c in DATE_COLUMNS]
                    records: Iterable[tuple[Any, ...]] = (
                        (_gtfs_row(feed, row, date_idx, table) for row in rows)
                        if date_idx or extra else ((feed, *row) for row in rows))
                    conn.executemany(
                        f"INSERT INTO {table} (feed_id, {', '.join(cols)}{extra}) "
                        f"VALUES ({marks})", records)
                conn.executemany(
                    "INSERT INTO gtfs_shapes VALUES (?,?,?,?)",
                    ((feed, sid, orjson.dumps(coords),
                      None if dists is None else orjson.dumps(dists))
                     for sid, coords, dists in data.shapes))
                conn.execute(
                    "INSERT OR REPLACE INTO gtfs_feeds VALUES (?,?,?,?,?,?,?,?)",
                    (feed, data.source, data.digest, _ts(self.clock.now()),
                     data.agency_timezone, orjson.dumps(dict(data.feed_info)),
                     orjson.dumps(data.counts()), orjson.dumps(list(data.warnings))))
                _write_features(conn, key, ("bus_stop", "rail_station"), data.stop_features)
                n = len(data.tables.get("gtfs_stop_times", ()))
                _record_import(conn, self.clock.now(), key, data.source, data.digest, feed, n)
            return True

        return await self._run(write)

    async def list_feeds(self) -> list[GtfsFeed]:
        def q(conn: sqlite3.Connection) -> list[GtfsFeed]:
            return [GtfsFeed(feed_id=r[0], source=r[1], digest=r[2],
                             imported_at=_parse_ts(r[3]), agency_timezone=r[4],
                             feed_info=orjson.loads(r[5]), counts=orjson.loads(r[6]),
                             warnings=tuple(orjson.loads(r[7])))
                    for r in conn.execute("SELECT * FROM gtfs_feeds ORDER BY feed_id")]
        return await self._run(q)

    async def list_routes(self, feed_id: str | None = None) -> list[GtfsRoute]:
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_routes"]))

        def q(conn: sqlite3.Connection) -> list[GtfsRoute]:
            where, params = ("WHERE feed_id=?", [feed_id]) if feed_id else ("", [])
            rows = conn.execute(f"SELECT {cols} FROM gtfs_routes {where}", params).fetchall()
            return sort_routes([route_from_row(r) for r in rows])
        return await self._run(q)

    async def find_trip(self, trip_id: str, feed_id: str | None = None) -> GtfsTrip | None:
        def q(conn: sqlite3.Connection) -> GtfsTrip | None:
            rows = self._by_id(conn, "gtfs_trips", "trip_id", trip_id, feed_id)
            row = unique_in_feeds(rows, "trip_id", trip_id)
            return None if row is None else trip_from_row(row)
        return await self._run(q)

    async def trips_for_route(self, route_id: str, feed_id: str | None = None
                              ) -> list[GtfsTrip]:
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_trips"]))

        def q(conn: sqlite3.Connection) -> list[GtfsTrip]:
            extra, params = (" AND feed_id=?", [feed_id]) if feed_id else ("", [])
            rows = conn.execute(f"SELECT {cols} FROM gtfs_trips WHERE route_id=?{extra}",
                                [route_id, *params]).fetchall()
            return sort_trips([trip_from_row(r) for r in rows])
        return await self._run(q)

    async def get_trip_stop_times(self, trip_id: str, feed_id: str | None = None
                                  ) -> list[GtfsStopTime]:
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_stop_times"]))

        def q(conn: sqlite3.Connection) -> list[GtfsStopTime]:
            trip = unique_in_feeds(self._by_id(conn, "gtfs_trips", "trip_id", trip_id, feed_id),
                                   "trip_id", trip_id)
            if trip is None:
                raise NotFound(f"no trip {trip_id!r}")
            rows = conn.execute(f"SELECT {cols} FROM gtfs_stop_times WHERE feed_id=? AND "
                                "trip_id=? ORDER BY stop_sequence", (trip[0], trip_id))
            return [GtfsStopTime(**dict(zip(("feed_id", *GTFS_COLUMNS["gtfs_stop_times"]), r,
                                            strict=True))) for r in rows]
        return await self._run(q)

    async def trip_frequencies(self, trip_id: str, feed_id: str | None = None
                               ) -> list[GtfsFrequency]:
        cols = ("feed_id", *GTFS_COLUMNS["gtfs_frequencies"])

        def q(conn: sqlite3.Connection) -> list[GtfsFrequency]:
            trip = unique_in_feeds(self._by_id(conn, "gtfs_trips", "trip_id", trip_id, feed_id),
                                   "trip_id", trip_id)
            if trip is None:
                return []
            rows = conn.execute(f"SELECT {', '.join(cols)} FROM gtfs_frequencies WHERE "
                                "feed_id=? AND trip_id=? ORDER BY start_s", (trip[0], trip_id))
            return [GtfsFrequency(**dict(zip(cols, r, strict=True))) for r in rows]
        return await self._run(q)

    async def active_service_ids(self, day: date, feed_id: str) -> set[str]:
        iso = day.isoformat()

        def q(conn: sqlite3.Connection) -> set[str]:
            cal = [(r[0], r[1:8], date.fromisoformat(r[8]), date.fromisoformat(r[9]))
                   for r in conn.execute(
                       "SELECT service_id, monday, tuesday, wednesday, thursday, friday, "
                       "saturday, sunday, start_date, end_date FROM gtfs_calendar "
                       "WHERE feed_id=? AND start_date <= ? AND end_date >= ?",
                       (feed_id, iso, iso))]
            exc = conn.execute("SELECT service_id, exception_type FROM gtfs_calendar_dates "
                               "WHERE feed_id=? AND date=?", (feed_id, iso)).fetchall()
            return active_services(day, cal, exc)
        return await self._run(q)

    async def stops_in_bbox(self, bbox: BBox, feed_id: str | None = None, limit: int = 1000
                            ) -> list[GtfsStop]:
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_stops"]))

        def q(conn: sqlite3.Connection) -> list[GtfsStop]:
            extra, params = (" AND feed_id=?", [feed_id]) if feed_id else ("", [])
            rows = conn.execute(
                f"SELECT {cols} FROM gtfs_stops WHERE stop_lat BETWEEN ? AND ? AND stop_lon "
                f"BETWEEN ? AND ?{extra} ORDER BY feed_id, stop_id LIMIT ?",
                [bbox[1], bbox[3], bbox[0], bbox[2], *params, limit]).fetchall()
            return [stop_from_row(r) for r in rows]
        return await self._run(q)

    async def stop_by_id(self, stop_id: str, feed_id: str | None = None) -> GtfsStop | None:
        def q(conn: sqlite3.Connection) -> GtfsStop | None:
            row = unique_in_feeds(self._by_id(conn, "gtfs_stops", "stop_id", stop_id, feed_id),
                                  "stop_id", stop_id)
            return None if row is None else stop_from_row(row)
        return await self._run(q)

    async def search_stops(self, query: str, feed_id: str | None = None, limit: int = 20
                           ) -> list[GtfsStop]:
        exact, prefix, sub = query_patterns(query)
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_stops"]))

        def q(conn: sqlite3.Connection) -> list[GtfsStop]:
            extra, params = (" AND feed_id=?", [feed_id]) if feed_id else ("", [])
            rows = conn.execute(
                f"SELECT {cols}, CASE WHEN instr(search_text, ?) > 0 THEN 0 "
                "WHEN instr(search_text, ?) > 0 THEN 1 ELSE 2 END AS rank FROM gtfs_stops "
                f"WHERE instr(search_text, ?) > 0{extra} ORDER BY rank, "
                "length(COALESCE(stop_name, '')), stop_name, feed_id, stop_id LIMIT ?",
                [exact, prefix, sub, *params, limit]).fetchall()
            return [stop_from_row(r[:-1]) for r in rows]
        return await self._run(q)

    async def get_shape(self, shape_id: str, feed_id: str | None = None) -> GtfsShape | None:
        def q(conn: sqlite3.Connection) -> GtfsShape | None:
            row = unique_in_feeds(self._by_id(conn, "gtfs_shapes", "shape_id", shape_id,
                                              feed_id), "shape_id", shape_id)
            if row is None:
                return None
            return GtfsShape(feed_id=row[0], shape_id=row[1],
                             coords=tuple((float(x), float(y)) for x, y in orjson.loads(row[2])),
                             dist_traveled=None if row[3] is None
                             else tuple(orjson.loads(row[3])))
        return await self._run(q)

    @staticmethod
    def _by_id(conn: sqlite3.Connection, table: str, column: str, ident: str,
               feed_id: str | None) -> list[Any]:
        cols = "*" if table == "gtfs_shapes" else ", ".join(
            ("feed_id", *GTFS_COLUMNS[table]))
        extra, params = (" AND feed_id=?", [feed_id]) if feed_id else ("", [])
        return conn.execute(f"SELECT {cols} FROM {table} WHERE {column}=?{extra} "
                            "ORDER BY feed_id", [ident, *params]).fetchall()


def _gtfs_row(feed: str, row: tuple[Any, ...], date_idx: list[int], table: str
              ) -> tuple[Any, ...]:
    values = list(row)
    for i in date_idx:
        values[i] = _sql_date(values[i])
    if table == "gtfs_stops":
        # stop_code, stop_name, stop_name_en are columns 1..3 of GTFS_COLUMNS["gtfs_stops"].
        values.append(search_text(row[2], row[3], row[1]))
    return (feed, *values)


def _get_geofence(conn: sqlite3.Connection, geofence_id: str) -> GeofenceRecord:
    row = conn.execute(f"SELECT {_GEOFENCE_COLS} FROM geofences WHERE geofence_id=?",
                       (geofence_id,)).fetchone()
    if row is None:
        raise NotFound(f"no geofence {geofence_id!r}")
    return _row_to_geofence(row)


def _get_feature(conn: sqlite3.Connection, kind: str, feature_id: str) -> Feature:
    rows = conn.execute(f"SELECT {_FEATURE_COLS} FROM features WHERE kind=? AND feature_id=?",
                        (kind, feature_id)).fetchall()
    if not rows:
        raise NotFound(f"no {kind} {feature_id!r}")
    return _rows_to_features(rows)[0]


def _expanding_nearest(conn: sqlite3.Connection, lon: float, lat: float, k: int,
                       max_distance_m: float | None,
                       fetch: Callable[[sqlite3.Connection, BBox | None], list[Any]],
                       measure: Callable[[list[Any]], list[tuple[float, str, Any]]]
                       ) -> list[tuple[float, str, Any]]:
    """k nearest by growing a search box until k candidates lie within its inscribed circle.

    Everything within the radius is inside the box, so once k measured candidates are within
    the radius, nothing outside can be nearer. Past 50 km it scans everything.
    """
    if k <= 0:
        return []
    radius = _NEAREST_START_M if max_distance_m is None else min(max_distance_m,
                                                                 _NEAREST_START_M * 4)
    while True:
        full = radius > _FULL_SCAN_M
        box = None if full else radius_box(lon, lat, radius)
        measured = measure(fetch(conn, box))
        limit = math.inf if full else radius
        if max_distance_m is not None:
            limit = min(limit, max_distance_m)
        within = sorted((round(d, 3), key, obj) for d, key, obj in measured if d <= limit)
        done = (len(within) >= k or full
                or (max_distance_m is not None and radius >= max_distance_m))
        if done:
            return [(d, key, obj) for d, key, obj in within[:k]]
        radius *= 4
        if max_distance_m is not None:
            radius = min(radius, max_distance_m)


def _road_hit(r: Sequence[Any], segment_ids: tuple[str, ...]) -> SearchHit:
    (key, key_field, name, name_en, ref, road_class, count, length_m, min_lon, min_lat, max_lon,
     max_lat, cx, cy, rank) = r
    return SearchHit(kind=ROAD_KIND, id=key, name=name, name_en=name_en, ref=ref,
                     match=MATCH_NAMES[rank], center=(cx, cy),
                     bbox=(min_lon, min_lat, max_lon, max_lat),
                     attrs={"road_class": road_class, "segment_count": count,
                            "length_m": length_m, "matched_on": key_field},
                     segment_ids=segment_ids)


def _feature_hit(f: Feature, match: str) -> SearchHit:
    b = f.geometry.bounds
    return SearchHit(kind=f.kind, id=f.feature_id, name=f.name, name_en=f.name_en, ref=f.ref,
                     match=match, center=f.center, bbox=(b[0], b[1], b[2], b[3]),
                     attrs=f.attrs)
