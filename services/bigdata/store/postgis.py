"""Geodatabase on PostgreSQL + PostGIS through an asyncpg pool (the distributed deployment).

Geometry columns are typed (``geometry(LineString,4326)`` for segments and shapes,
``geometry(Point,4326)`` for stops, ``geometry(Geometry,4326)`` restricted to points, lines and
polygons for features), each with a GiST index for ``&&`` box queries and a GiST index on
``geom::geography`` so nearest queries are index-assisted KNN (``<->``) in metres on the sphere.
Geometry travels as EWKB (asyncpg binary codec) and jsonb as binary JSON; bulk imports use
``COPY`` (``copy_records_to_table``). Every import takes a transaction-level advisory lock, so
replicas that start together with the same file import it once. The speed history is partitioned
by day, written with COPY and expired by whole days (:mod:`services.bigdata.store.history_pg`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson
import shapely

from services.bigdata.geofences import (
    GeofenceRecord,
    check_geofence_kinds,
    check_storable,
    check_unique,
    record_from_row,
)
from services.bigdata.profiles import (
    FREE_FLOW_HOURS,
    FREE_FLOW_PERCENTILE,
    FREE_FLOW_SOURCES,
    MIN_FREE_FLOW_WINDOWS,
    MIN_PROFILE_WINDOWS,
    PROFILE_SOURCES,
    bucket_of,
    bucket_sql,
    local_hour_sql,
)
from services.bigdata.store._geo import coords_of_wkb, ewkb, ewkb_linestring
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
    unique_in_feeds,
)
from services.bigdata.store.basemap import (
    POSTGIS_MIGRATION,
    BasemapItem,
    check_layers,
    postgis_basemap_in_bbox,
    postgis_write_basemap,
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
from services.bigdata.store.history_pg import MIGRATION as HISTORY_MIGRATION
from services.bigdata.store.history_pg import SpeedHistory
from shared.clock import Clock
from shared.errors import ConfigError, NotFound, TransientError
from shared.roadnet import RoadSegment

log = logging.getLogger("tti.bigdata.store")

MIGRATIONS: list[str] = [
    # 1: road segments, speed history, import bookkeeping
    """
    CREATE TABLE road_segments (
        seq integer NOT NULL,
        segment_id text PRIMARY KEY,
        way_id bigint NOT NULL, from_node bigint NOT NULL, to_node bigint NOT NULL,
        road_class text NOT NULL, name text, name_en text, ref text, lanes integer,
        speed_limit_kmh double precision, oneway boolean NOT NULL, bridge boolean NOT NULL,
        tunnel boolean NOT NULL, length_m double precision NOT NULL,
        free_flow_kmh double precision NOT NULL,
        geom geometry(LineString, 4326) NOT NULL
    );
    CREATE INDEX road_segments_seq ON road_segments (seq);
    CREATE INDEX road_segments_name ON road_segments (name);
    CREATE INDEX road_segments_geom ON road_segments USING gist (geom);
    CREATE INDEX road_segments_geog ON road_segments USING gist ((geom::geography));
    CREATE TABLE segment_speeds (
        segment_id text NOT NULL, window_start timestamptz NOT NULL,
        observed_at timestamptz NOT NULL, speed_kmh double precision,
        sample_count integer NOT NULL, source text NOT NULL,
        confidence double precision NOT NULL,
        PRIMARY KEY (segment_id, window_start, source)
    );
    CREATE TABLE imports (
        kind text PRIMARY KEY, source text NOT NULL, digest text NOT NULL,
        region_name text NOT NULL, imported_at timestamptz NOT NULL, item_count integer NOT NULL
    );
    """,
    # 2: features and the road names search looks at
    """
    CREATE TABLE features (
        kind text NOT NULL, feature_id text NOT NULL, source text NOT NULL,
        name text, name_en text, ref text, search_text text NOT NULL,
        geom geometry(Geometry, 4326) NOT NULL CHECK (GeometryType(geom) IN
            ('POINT', 'LINESTRING', 'MULTILINESTRING', 'POLYGON', 'MULTIPOLYGON')),
        attrs jsonb NOT NULL DEFAULT '{}', live jsonb, live_updated_at timestamptz,
        import_seq bigint NOT NULL,
        PRIMARY KEY (kind, feature_id)
    );
    CREATE INDEX features_source ON features (source, kind);
    CREATE INDEX features_geom ON features USING gist (geom);
    CREATE INDEX features_geog ON features USING gist ((geom::geography));
    CREATE TABLE road_names (
        name_key text PRIMARY KEY, key_field text NOT NULL, name text, name_en text, ref text,
        road_class text NOT NULL, segment_count integer NOT NULL,
        length_m double precision NOT NULL,
        min_lon double precision NOT NULL, min_lat double precision NOT NULL,
        max_lon double precision NOT NULL, max_lat double precision NOT NULL,
        center_lon double precision NOT NULL, center_lat double precision NOT NULL,
        search_text text NOT NULL
    );
    CREATE INDEX road_segments_ref ON road_segments (ref);
    """,
    # 3: GTFS static
    """
    CREATE TABLE gtfs_feeds (
        feed_id text PRIMARY KEY, source text NOT NULL, digest text NOT NULL,
        imported_at timestamptz NOT NULL, agency_timezone text NOT NULL,
        feed_info jsonb NOT NULL, counts jsonb NOT NULL, warnings jsonb NOT NULL
    );
    CREATE TABLE gtfs_agencies (
        feed_id text NOT NULL, agency_id text NOT NULL, agency_name text NOT NULL,
        agency_url text, agency_timezone text NOT NULL, agency_lang text, agency_phone text,
        PRIMARY KEY (feed_id, agency_id)
    );
    CREATE TABLE gtfs_routes (
        feed_id text NOT NULL, route_id text NOT NULL, agency_id text,
        route_short_name text, route_long_name text, route_desc text,
        route_type integer NOT NULL, route_color text, route_text_color text,
        route_sort_order integer,
        PRIMARY KEY (feed_id, route_id)
    );
    CREATE TABLE gtfs_stops (
        feed_id text NOT NULL, stop_id text NOT NULL, stop_code text, stop_name text,
        stop_name_en text, stop_desc text, stop_lat double precision,
        stop_lon double precision, zone_id text, location_type integer NOT NULL,
        parent_station text, wheelchair_boarding integer, platform_code text,
        search_text text NOT NULL,
        geom geometry(Point, 4326) GENERATED ALWAYS AS (CASE
            WHEN stop_lon IS NOT NULL AND stop_lat IS NOT NULL
            THEN ST_SetSRID(ST_MakePoint(stop_lon, stop_lat), 4326) END) STORED,
        PRIMARY KEY (feed_id, stop_id)
    );
    CREATE INDEX gtfs_stops_geom ON gtfs_stops USING gist (geom);
    CREATE TABLE gtfs_trips (
        feed_id text NOT NULL, trip_id text NOT NULL, route_id text NOT NULL,
        service_id text NOT NULL, trip_headsign text, trip_short_name text,
        direction_id integer, block_id text, shape_id text, wheelchair_accessible integer,
        PRIMARY KEY (feed_id, trip_id)
    );
    CREATE INDEX gtfs_trips_route ON gtfs_trips (feed_id, route_id);
    CREATE INDEX gtfs_trips_trip ON gtfs_trips (trip_id);
    CREATE TABLE gtfs_stop_times (
        feed_id text NOT NULL, trip_id text NOT NULL, stop_sequence integer NOT NULL,
        stop_id text NOT NULL, arrival_s integer, departure_s integer, stop_headsign text,
        pickup_type integer, drop_off_type integer, shape_dist_traveled double precision,
        timepoint integer,
        PRIMARY KEY (feed_id, trip_id, stop_sequence)
    );
    CREATE INDEX gtfs_stop_times_stop ON gtfs_stop_times (feed_id, stop_id);
    CREATE TABLE gtfs_shapes (
        feed_id text NOT NULL, shape_id text NOT NULL,
        geom geometry(LineString, 4326) NOT NULL, dist_traveled double precision[],
        PRIMARY KEY (feed_id, shape_id)
    );
    CREATE TABLE gtfs_calendar (
        feed_id text NOT NULL, service_id text NOT NULL,
        monday smallint NOT NULL, tuesday smallint NOT NULL, wednesday smallint NOT NULL,
        thursday smallint NOT NULL, friday smallint NOT NULL, saturday smallint NOT NULL,
        sunday smallint NOT NULL, start_date date NOT NULL, end_date date NOT NULL,
        PRIMARY KEY (feed_id, service_id)
    );
    CREATE TABLE gtfs_calendar_dates (
        feed_id text NOT NULL, service_id text NOT NULL, date date NOT NULL,
        exception_type smallint NOT NULL,
        PRIMARY KEY (feed_id, service_id, date)
    );
    CREATE INDEX gtfs_calendar_dates_date ON gtfs_calendar_dates (feed_id, date);
    CREATE TABLE gtfs_frequencies (
        feed_id text NOT NULL, trip_id text NOT NULL, start_s integer NOT NULL,
        end_s integer NOT NULL, headway_s integer NOT NULL, exact_times integer,
        PRIMARY KEY (feed_id, trip_id, start_s)
    );
    """,
    # 4: time-of-week profiles and learned free flow (services.bigdata.profiles)
    """
    CREATE TABLE IF NOT EXISTS segment_profiles (
        segment_id text NOT NULL,
        bucket smallint NOT NULL CHECK (bucket BETWEEN 0 AND 671),
        speed_kmh double precision NOT NULL, sample_windows integer NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (segment_id, bucket)
    );
    CREATE INDEX IF NOT EXISTS segment_profiles_bucket ON segment_profiles (bucket);
    CREATE TABLE IF NOT EXISTS segment_free_flow (
        segment_id text PRIMARY KEY, speed_kmh double precision NOT NULL,
        sample_windows integer NOT NULL, updated_at timestamptz NOT NULL
    );
    CREATE INDEX IF NOT EXISTS segment_speeds_window ON segment_speeds (window_start);
    """,
    # 5: geofences (services.bigdata.geofences); the extent columns answer for segment-only ones
    """
    CREATE TABLE IF NOT EXISTS geofences (
        geofence_id text PRIMARY KEY, kind text NOT NULL, name text NOT NULL, name_en text,
        source text NOT NULL,
        geom geometry(Geometry, 4326) CHECK (geom IS NULL OR GeometryType(geom) IN
            ('LINESTRING', 'MULTILINESTRING', 'POLYGON', 'MULTIPOLYGON')),
        min_lon double precision NOT NULL, min_lat double precision NOT NULL,
        max_lon double precision NOT NULL, max_lat double precision NOT NULL,
        props jsonb NOT NULL, updated_at timestamptz NOT NULL
    );
    CREATE INDEX IF NOT EXISTS geofences_geom ON geofences USING gist (geom);
    CREATE INDEX IF NOT EXISTS geofences_source ON geofences (source);
    """,
    # 6: the base map (services.bigdata.store.basemap)
    POSTGIS_MIGRATION,
    # 7: segment_speeds partitioned by Beijing day, rows moved (services.bigdata.store.history_pg)
    HISTORY_MIGRATION,
]

# Advisory lock keys (arbitrary constants): schema changes, and imports.
_MIGRATION_LOCK = 0x7171_0001
_IMPORT_LOCK = 0x7171_0002
_PROFILE_LOCK = 0x7171_0003

_EPOCH = "floor(extract(epoch FROM window_start))::bigint"
_WINDOWS = ("FROM segment_speeds WHERE window_start >= $1 AND window_start < $2 "
            "AND speed_kmh IS NOT NULL AND sample_count > 0 AND source = ANY($3::text[])")

_SEGMENT_COLS = ("segment_id", "way_id", "from_node", "to_node", "road_class", "name",
                 "name_en", "ref", "lanes", "speed_limit_kmh", "oneway", "bridge", "tunnel",
                 "length_m", "free_flow_kmh")
_SEGMENT_SELECT = ", ".join(_SEGMENT_COLS) + ", geom"
_FEATURE_SELECT = ("kind, feature_id, source, name, name_en, ref, geom, attrs, live, "
                   "live_updated_at")
_GEOFENCE_SELECT = ("geofence_id, kind, name, name_en, source, geom, min_lon, min_lat, max_lon, "
                    "max_lat, props, updated_at")
_C = 'COLLATE "C"'  # code-point order, as SQLite's BINARY and Python's str comparison
_LABEL = "COALESCE(name, name_en, ref, '')"
_RANK = ("CASE WHEN strpos(search_text, $1) > 0 THEN 0 WHEN strpos(search_text, $2) > 0 "
         "THEN 1 ELSE 2 END")
_POINT = "ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography"
_TIE_SLACK = 4  # extra KNN rows fetched so equal distances order by id as on SQLite


def _redact(dsn: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", dsn)


def _segments_from_rows(rows: Sequence[Any]) -> list[RoadSegment]:
    coords = coords_of_wkb([r["geom"] for r in rows])
    return [RoadSegment(segment_id=r[0], way_id=r[1], from_node=r[2], to_node=r[3],
                        road_class=r[4], name=r[5], name_en=r[6], ref=r[7], lanes=r[8],
                        speed_limit_kmh=r[9], oneway=r[10], bridge=r[11], tunnel=r[12],
                        length_m=r[13], free_flow_kmh=r[14], coords=c)
            for r, c in zip(rows, coords, strict=True)]


def _row_to_profile(r: Any) -> SegmentProfile:
    return SegmentProfile(segment_id=r[0], bucket=r[1], speed_kmh=r[2], sample_windows=r[3],
                          updated_at=r[4].astimezone(UTC))


def _features_from_rows(rows: Sequence[Any]) -> list[Feature]:
    if not rows:
        return []
    geoms = shapely.from_wkb([r["geom"] for r in rows])
    return [Feature(kind=r[0], feature_id=r[1], source=r[2], name=r[3], name_en=r[4],
                    ref=r[5], geometry=g, attrs=r[7], live=r[8], live_updated_at=r[9])
            for r, g in zip(rows, geoms, strict=True)]


def _geofence_from_row(r: Any) -> GeofenceRecord:
    return record_from_row(
        geofence_id=r[0], kind=r[1], name=r[2], name_en=r[3], source=r[4],
        geometry=None if r[5] is None else shapely.from_wkb(r[5]),
        bbox=(r[6], r[7], r[8], r[9]), props=r[10], updated_at=r[11])


async def _write_geofence(conn: asyncpg.Connection, f: GeofenceRecord, source: str,
                          at: datetime) -> bool:
    """Upsert one fence; True when it was new."""
    check_storable(f)
    assert f.bbox is not None
    return bool(await conn.fetchval(
        f"INSERT INTO geofences ({_GEOFENCE_SELECT}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
        "$9, $10, $11, $12) ON CONFLICT (geofence_id) DO UPDATE SET kind = EXCLUDED.kind, "
        "name = EXCLUDED.name, name_en = EXCLUDED.name_en, source = EXCLUDED.source, "
        "geom = EXCLUDED.geom, min_lon = EXCLUDED.min_lon, min_lat = EXCLUDED.min_lat, "
        "max_lon = EXCLUDED.max_lon, max_lat = EXCLUDED.max_lat, props = EXCLUDED.props, "
        "updated_at = EXCLUDED.updated_at RETURNING (xmax = 0)",
        f.geofence_id, f.kind, f.name, f.name_en, source,
        None if f.geometry is None else ewkb(f.geometry), *f.bbox, f.props(), at))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary codecs so COPY works for every column: jsonb is a version byte + JSON text, and
    # PostGIS's binary geometry format is EWKB, which shapely reads and writes.
    await conn.set_type_codec("jsonb", schema="pg_catalog", format="binary",
                              encoder=lambda v: b"\x01" + orjson.dumps(v),
                              decoder=lambda b: orjson.loads(b[1:]))
    schema = await conn.fetchval("SELECT typnamespace::regnamespace::text FROM pg_type "
                                 "WHERE typname = 'geometry' LIMIT 1")
    await conn.set_type_codec("geometry", schema=schema, format="binary",
                              encoder=lambda v: v, decoder=lambda b: b)


async def _last_digest(conn: asyncpg.Connection, key: str) -> str | None:
    value = await conn.fetchval("SELECT digest FROM imports WHERE kind = $1", key)
    return None if value is None else str(value)


async def _record_import(conn: asyncpg.Connection, at: datetime, key: str, source: str,
                         digest: str, region_name: str, count: int) -> None:
    await conn.execute(
        "INSERT INTO imports VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind) DO UPDATE SET "
        "source = EXCLUDED.source, digest = EXCLUDED.digest, region_name = "
        "EXCLUDED.region_name, imported_at = EXCLUDED.imported_at, "
        "item_count = EXCLUDED.item_count",
        key, source, digest, region_name, at, count)


async def _write_segments(conn: asyncpg.Connection, segments: Iterable[RoadSegment]) -> int:
    # TRUNCATE is transactional in PostgreSQL and far cheaper than deleting 100k index entries.
    await conn.execute("TRUNCATE road_segments, road_names")
    names = RoadNameIndex()
    count = 0

    def records() -> Iterator[tuple[Any, ...]]:
        nonlocal count
        for s in segments:
            count += 1
            names.add(s)
            yield (count, s.segment_id, s.way_id, s.from_node, s.to_node, s.road_class, s.name,
                   s.name_en, s.ref, s.lanes, s.speed_limit_kmh, s.oneway, s.bridge, s.tunnel,
                   float(s.length_m), float(s.free_flow_kmh), ewkb_linestring(s.coords))

    await conn.copy_records_to_table("road_segments", records=records(),
                                     columns=["seq", *_SEGMENT_COLS, "geom"])
    await conn.copy_records_to_table("road_names", records=names.rows(),
                                     columns=list(ROAD_NAME_COLUMNS))
    return count


async def _write_features(conn: asyncpg.Connection, source: str, kinds: Sequence[str],
                          features: Iterable[Feature]) -> int:
    allowed = frozenset(check_kinds(kinds, allowed=frozenset(FEATURE_KINDS)) or ())
    seq = await conn.fetchval("SELECT COALESCE(MAX(import_seq), 0) + 1 FROM features")
    seen: set[tuple[str, str]] = set()

    def records() -> Iterator[tuple[Any, ...]]:
        for f in features:
            validate_feature(f, allowed)
            key = (f.kind, f.feature_id)
            if key in seen:
                raise FeatureError(f"duplicate feature {f.kind}/{f.feature_id} in one import")
            seen.add(key)
            yield (f.kind, f.feature_id, source, f.name, f.name_en, f.ref,
                   feature_search_text(f), ewkb(f.geometry), dict(f.attrs), seq)

    # Stage with COPY, then upsert: existing features keep their live state.
    await conn.execute("CREATE TEMP TABLE features_stage (LIKE features INCLUDING DEFAULTS) "
                       "ON COMMIT DROP")
    await conn.copy_records_to_table(
        "features_stage", records=records(),
        columns=["kind", "feature_id", "source", "name", "name_en", "ref", "search_text",
                 "geom", "attrs", "import_seq"])
    await conn.execute(
        "INSERT INTO features (kind, feature_id, source, name, name_en, ref, search_text, geom, "
        "attrs, import_seq) SELECT kind, feature_id, source, name, name_en, ref, search_text, "
        "geom, attrs, import_seq FROM features_stage ON CONFLICT (kind, feature_id) DO UPDATE "
        "SET source = EXCLUDED.source, name = EXCLUDED.name, name_en = EXCLUDED.name_en, "
        "ref = EXCLUDED.ref, search_text = EXCLUDED.search_text, geom = EXCLUDED.geom, "
        "attrs = EXCLUDED.attrs, import_seq = EXCLUDED.import_seq")
    await conn.execute("DROP TABLE features_stage")
    await conn.execute("DELETE FROM features WHERE source = $1 AND kind = ANY($2::text[]) "
                       "AND import_seq <> $3", source, sorted(allowed), seq)
    return len(seen)


class PostgisStore(GeoStore):
    """The production store (``postgresql://user@host/db``); needs the PostGIS extension."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10,
                 clock: Clock | None = None) -> None:
        self.dsn = dsn
        self.clock = clock or Clock()  # import, profile and live-state times
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._history = SpeedHistory()  # partitioned by day (history_pg)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise TransientError("geodatabase is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise TransientError(f"postgresql: {exc}") from exc

    @asynccontextmanager
    async def _import_tx(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _IMPORT_LOCK)
            yield conn

    # --- lifecycle ---

    async def open(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            raise TransientError(f"cannot connect to {_redact(self.dsn)}: {exc}") from exc
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                try:
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
                except asyncpg.PostgresError as exc:
                    raise ConfigError(f"PostGIS is not available in {_redact(self.dsn)}: "
                                      f"{exc}") from exc
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                                   "(version integer PRIMARY KEY, applied_at timestamptz "
                                   "NOT NULL)")
                current = await conn.fetchval(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                for version, sql in enumerate(MIGRATIONS, start=1):
                    if version <= current:
                        continue
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)",
                                       version, self.clock.now())
            try:  # the coming days' partitions; a write creates any other day's itself
                await self._history.prepare(conn, self.clock.now())
            except TransientError as exc:
                log.warning("speed history partitions not prepared at open: %s", exc.message)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(self.dsn, min_size=self._min_size,
                                               max_size=self._max_size, init=_init_connection)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def schema_version(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval("SELECT MAX(version) FROM schema_migrations"))

    async def find_import(self, key: str) -> ImportRecord | None:
        async with self._conn() as conn:
            r = await conn.fetchrow("SELECT kind, source, digest, region_name, imported_at, "
                                    "item_count FROM imports WHERE kind = $1", key)
        if r is None:
            return None
        return ImportRecord(key=r[0], source=r[1], digest=r[2], region_name=r[3],
                            imported_at=r[4], item_count=r[5])

    # --- road segments ---

    async def import_segments(self, source: str, digest: str, region_name: str,
                              segments: Iterable[RoadSegment]) -> bool:
        async with self._import_tx() as conn:
            if await _last_digest(conn, "roads") == digest:
                return False
            count = await _write_segments(conn, segments)
            await _record_import(conn, self.clock.now(),
                                 "roads", source, digest, region_name, count)
        return True

    async def import_osm(self, source: str, digest: str, region_name: str,
                         segments: Iterable[RoadSegment], features: Iterable[Feature], *,
                         features_digest: str, feature_kinds: Sequence[str] = FEATURE_KINDS,
                         basemap: Iterable[BasemapItem] | None = None) -> OsmImportOutcome:
        fkey = f"features:{OSM_FEATURE_SOURCE}"
        async with self._import_tx() as conn:
            roads = await _last_digest(conn, "roads") != digest
            feats = await _last_digest(conn, fkey) != features_digest
            if roads:
                count = await _write_segments(conn, segments)
                await _record_import(conn, self.clock.now(),
                                     "roads", source, digest, region_name, count)
            if feats:
                n = await _write_features(conn, OSM_FEATURE_SOURCE, feature_kinds, features)
                if basemap is not None:
                    await postgis_write_basemap(conn, basemap)
                await _record_import(conn, self.clock.now(),
                                     fkey, source, features_digest, region_name, n)
        return OsmImportOutcome(roads, feats)

    async def list_segments(self, bbox: BBox | None = None) -> list[RoadSegment]:
        async with self._conn() as conn:
            if bbox is None:
                rows = await conn.fetch(f"SELECT {_SEGMENT_SELECT} FROM road_segments "
                                        "ORDER BY seq")
            else:
                rows = await conn.fetch(
                    f"SELECT {_SEGMENT_SELECT} FROM road_segments WHERE geom && "
                    "ST_MakeEnvelope($1, $2, $3, $4, 4326) ORDER BY seq", *bbox)
        return _segments_from_rows(rows)

    async def find_segment(self, segment_id: str) -> RoadSegment | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {_SEGMENT_SELECT} FROM road_segments "
                                      "WHERE segment_id = $1", segment_id)
        return None if row is None else _segments_from_rows([row])[0]

    async def nearest_segments(self, lon: float, lat: float, k: int = 1,
                               max_distance_m: float | None = None) -> list[NearbySegment]:
        if k <= 0:
            return []
        where = ""
        args: list[Any] = [lon, lat, k + _TIE_SLACK]
        if max_distance_m is not None:
            where = f"WHERE ST_DWithin(geom::geography, {_POINT}, $4, false)"
            args.append(max_distance_m)
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_SEGMENT_SELECT}, geom::geography <-> {_POINT} AS d "
                f"FROM road_segments {where} ORDER BY geom::geography <-> {_POINT} LIMIT $3",
                *args)
        segs = _segments_from_rows(rows)
        ranked = sorted((round(r["d"], 3), s.segment_id, s)
                        for r, s in zip(rows, segs, strict=True))
        return [NearbySegment(s, d) for d, _, s in ranked[:k]]

    async def region(self) -> RegionInfo:
        async with self._conn() as conn:
            name = await conn.fetchval("SELECT region_name FROM imports WHERE kind = 'roads'")
            ext = await conn.fetchrow(
                "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e), n FROM (SELECT "
                "ST_Extent(geom) AS e, COUNT(*) AS n FROM road_segments) s")
        bbox = None if ext["n"] == 0 else (ext[0], ext[1], ext[2], ext[3])
        return RegionInfo(name or "", bbox, int(ext["n"]))

    async def insert_speeds(self, records: Sequence[SpeedRecord]) -> None:
        if not records:
            return
        async with self._conn() as conn:
            await self._history.insert(conn, records)

    async def speed_history(self, segment_id: str, since: datetime, until: datetime
                            ) -> list[SpeedRecord]:
        async with self._conn() as conn:
            return await self._history.history(conn, segment_id, since, until)

    async def maintain_speed_history(self, *, keep_days: int, now: datetime | None = None
                                     ) -> HistoryUpkeep:
        async with self._conn() as conn:
            return await self._history.upkeep(conn, now or self.clock.now(), keep_days)

    # --- profiles ---

    async def recompute_profiles(self, since: datetime, until: datetime) -> int:
        updated_at = self.clock.now()
        async with self._conn() as conn, conn.transaction():
            # Replicas recompute on the same schedule: the first does it, the others wait for
            # it rather than aggregate the same history again in parallel.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PROFILE_LOCK)
            await conn.execute("DELETE FROM segment_profiles")
            await conn.execute("DELETE FROM segment_free_flow")
            status = await conn.execute(
                "INSERT INTO segment_profiles (segment_id, bucket, speed_kmh, sample_windows, "
                f"updated_at) SELECT segment_id, {bucket_sql(_EPOCH)} AS b, "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY speed_kmh), count(*), $4 "
                f"{_WINDOWS} GROUP BY segment_id, b HAVING count(*) >= $5",
                since, until, list(PROFILE_SOURCES), updated_at, MIN_PROFILE_WINDOWS)
            start, end = FREE_FLOW_HOURS
            await conn.execute(
                "INSERT INTO segment_free_flow (segment_id, speed_kmh, sample_windows, "
                "updated_at) SELECT segment_id, percentile_cont($6::float8) WITHIN GROUP "
                f"(ORDER BY speed_kmh), count(*), $4 {_WINDOWS} "
                f"AND ({local_hour_sql(_EPOCH)} >= {start} OR {local_hour_sql(_EPOCH)} < {end}) "
                "GROUP BY segment_id HAVING count(*) >= $5",
                since, until, list(FREE_FLOW_SOURCES), updated_at, MIN_FREE_FLOW_WINDOWS,
                FREE_FLOW_PERCENTILE)
        return int(status.rsplit(" ", 1)[-1])

    async def profiles_at(self, when: datetime, segment_ids: Sequence[str] | None = None
                          ) -> dict[str, SegmentProfile]:
        sql = ("SELECT segment_id, bucket, speed_kmh, sample_windows, updated_at "
               "FROM segment_profiles WHERE bucket = $1")
        async with self._conn() as conn:
            if segment_ids is None:
                rows = await conn.fetch(sql, bucket_of(when))
            else:
                rows = await conn.fetch(sql + " AND segment_id = ANY($2::text[])",
                                        bucket_of(when), list(segment_ids))
        return {r[0]: _row_to_profile(r) for r in rows}

    async def segment_profile(self, segment_id: str) -> list[SegmentProfile]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT segment_id, bucket, speed_kmh, sample_windows, updated_at "
                "FROM segment_profiles WHERE segment_id = $1 ORDER BY bucket", segment_id)
        return [_row_to_profile(r) for r in rows]

    async def learned_free_flow(self, segment_ids: Sequence[str] | None = None
                                ) -> dict[str, FreeFlow]:
        sql = ("SELECT r.segment_id, r.free_flow_kmh, f.speed_kmh, f.sample_windows, "
               "f.updated_at FROM road_segments r "
               "LEFT JOIN segment_free_flow f ON f.segment_id = r.segment_id")
        async with self._conn() as conn:
            if segment_ids is None:
                rows = await conn.fetch(sql + " ORDER BY r.seq")
            else:
                rows = await conn.fetch(sql + " WHERE r.segment_id = ANY($1::text[])",
                                        list(segment_ids))
        return {r[0]: free_flow_of(r[0], r[1], r[2], r[3],
                                   None if r[4] is None else r[4].astimezone(UTC))
                for r in rows}

    # --- features ---

    async def import_features(self, source: str, digest: str, kinds: Sequence[str],
                              features: Iterable[Feature]) -> bool:
        key = f"features:{source}"
        async with self._import_tx() as conn:
            if await _last_digest(conn, key) == digest:
                return False
            n = await _write_features(conn, source, kinds, features)
            await _record_import(conn, self.clock.now(), key, source, digest, "", n)
        return True

    async def features_in_bbox(self, bbox: BBox | None, kinds: Sequence[str] | None = None,
                               limit: int = 1000) -> list[Feature]:
        kinds = check_kinds(kinds, allowed=frozenset(FEATURE_KINDS))
        conds: list[str] = ["TRUE"]
        args: list[Any] = []
        if bbox is not None:
            conds.append("geom && ST_MakeEnvelope($1, $2, $3, $4, 4326) AND "
                         "ST_Intersects(geom, ST_MakeEnvelope($1, $2, $3, $4, 4326))")
            args.extend(bbox)
        if kinds is not None:
            args.append(list(kinds))
            conds.append(f"kind = ANY(${len(args)}::text[])")
        args.append(limit)
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_FEATURE_SELECT} FROM features WHERE {' AND '.join(conds)} "
                f"ORDER BY kind {_C}, feature_id {_C} LIMIT ${len(args)}", *args)
        return _features_from_rows(rows)

    async def nearest_features(self, lon: float, lat: float,
                               kinds: Sequence[str] | None = None, k: int = 5,
                               max_distance_m: float | None = None) -> list[NearbyFeature]:
        kinds = check_kinds(kinds, allowed=frozenset(FEATURE_KINDS))
        if k <= 0:
            return []
        conds = ["TRUE"]
        args: list[Any] = [lon, lat, k + _TIE_SLACK]
        if max_distance_m is not None:
            args.append(max_distance_m)
            conds.append(f"ST_DWithin(geom::geography, {_POINT}, ${len(args)}, false)")
        if kinds is not None:
            args.append(list(kinds))
            conds.append(f"kind = ANY(${len(args)}::text[])")
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_FEATURE_SELECT}, geom::geography <-> {_POINT} AS d FROM features "
                f"WHERE {' AND '.join(conds)} ORDER BY geom::geography <-> {_POINT} LIMIT $3",
                *args)
        feats = _features_from_rows(rows)
        ranked = sorted((round(r["d"], 3), f"{f.kind}/{f.feature_id}", f)
                        for r, f in zip(rows, feats, strict=True))
        return [NearbyFeature(f, d) for d, _, f in ranked[:k]]

    async def search(self, query: str, kinds: Sequence[str] | None = None,
                     limit: int = 20) -> list[SearchHit]:
        exact, prefix, sub = query_patterns(query)
        kinds = check_kinds(kinds)
        feature_kinds = [k for k in (FEATURE_KINDS if kinds is None else kinds) if k != ROAD_KIND]
        hits: list[SearchHit] = []
        async with self._conn() as conn:
            if kinds is None or ROAD_KIND in kinds:
                rows = await conn.fetch(
                    f"SELECT {', '.join(ROAD_NAME_COLUMNS[:-1])}, {_RANK} AS rank "
                    "FROM road_names WHERE strpos(search_text, $3) > 0 ORDER BY rank, "
                    f"char_length({_LABEL}), {_LABEL} {_C}, name_key {_C} LIMIT $4",
                    exact, prefix, sub, limit)
                for r in rows:
                    column = "name" if r["key_field"] == "name" else "ref"
                    ids = await conn.fetch(f"SELECT segment_id FROM road_segments WHERE "
                                           f"{column} = $1 ORDER BY seq", r["name_key"])
                    hits.append(_road_hit(r, tuple(x[0] for x in ids)))
            if feature_kinds:
                rows = await conn.fetch(
                    f"SELECT {_FEATURE_SELECT}, {_RANK} AS rank FROM features "
                    "WHERE strpos(search_text, $3) > 0 AND kind = ANY($4::text[]) ORDER BY "
                    f"rank, char_length({_LABEL}), {_LABEL} {_C}, kind {_C}, feature_id {_C} "
                    "LIMIT $5", exact, prefix, sub, feature_kinds, limit)
                for f, r in zip(_features_from_rows(rows), rows, strict=True):
                    b = f.geometry.bounds
                    hits.append(SearchHit(kind=f.kind, id=f.feature_id, name=f.name,
                                          name_en=f.name_en, ref=f.ref,
                                          match=MATCH_NAMES[r["rank"]], center=f.center,
                                          bbox=(b[0], b[1], b[2], b[3]), attrs=f.attrs))
        hits.sort(key=SearchHit.sort_key)
        return hits[:limit]

    async def basemap_in_bbox(self, bbox: BBox, *, layers: Sequence[str] | None = None,
                              min_size_m: float = 0.0, max_rank: int = 99,
                              limit: int = 10_000) -> list[BasemapItem]:
        checked = check_layers(layers)
        async with self._conn() as conn:
            return await postgis_basemap_in_bbox(conn, bbox, checked, min_size_m, max_rank,
                                                 limit)

    async def get_feature(self, kind: str, feature_id: str) -> Feature:
        check_kinds([kind], allowed=frozenset(FEATURE_KINDS))
        async with self._conn() as conn:
            return await _get_feature(conn, kind, feature_id)

    async def update_live(self, kind: str, feature_id: str, live: Mapping[str, Any], *,
                          observed_at: datetime | None = None) -> Feature:
        check_kinds([kind], allowed=frozenset(FEATURE_KINDS))
        at = observed_at or self.clock.now()
        async with self._conn() as conn, conn.transaction():
            current = await _get_feature(conn, kind, feature_id, for_update=True)
            if current.live_updated_at is not None and current.live_updated_at > at:
                return current
            merged = merge_live(kind, current.attrs, current.live, live)
            await conn.execute("UPDATE features SET live = $1, live_updated_at = $2 "
                               "WHERE kind = $3 AND feature_id = $4", merged, at, kind,
                               feature_id)
            return await _get_feature(conn, kind, feature_id)

    async def feature_counts(self) -> dict[str, int]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT kind, COUNT(*) FROM features GROUP BY kind "
                                    f"ORDER BY kind {_C}")
        return {r[0]: int(r[1]) for r in rows}

    async def list_feature_catalogue(self) -> dict[str, list[CatalogueEntry]]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT kind, feature_id, attrs -> 'capacity' FROM features "
                                    f"ORDER BY kind {_C}, feature_id {_C}")
        out: dict[str, list[CatalogueEntry]] = {}
        for kind, fid, capacity in rows:
            out.setdefault(kind, []).append(catalogue_entry(kind, fid, capacity))
        return out

    # --- geofences ---

    async def put_geofence(self, fence: GeofenceRecord) -> tuple[GeofenceRecord, bool]:
        at = self.clock.now()
        async with self._conn() as conn, conn.transaction():
            created = await _write_geofence(conn, fence, fence.source, at)
            return await _get_geofence(conn, fence.geofence_id), created

    async def import_geofences(self, source: str, digest: str,
                               fences: Sequence[GeofenceRecord]) -> int:
        at = self.clock.now()
        check_unique(fences)
        async with self._import_tx() as conn:
            await conn.execute("DELETE FROM geofences WHERE source = $1 AND NOT "
                               "(geofence_id = ANY($2::text[]))", source,
                               [f.geofence_id for f in fences])
            for f in fences:
                await _write_geofence(conn, f, source, at)
            await _record_import(conn, at, f"geofences:{source}", source, digest, "",
                                 len(fences))
        return len(fences)

    async def list_geofences(self, bbox: BBox | None = None, kinds: Sequence[str] | None = None
                             ) -> list[GeofenceRecord]:
        kinds = check_geofence_kinds(kinds)
        conds = ["TRUE"]
        args: list[Any] = []
        if bbox is not None:
            args.extend(bbox)
            conds.append("max_lon >= $1 AND min_lon <= $3 AND max_lat >= $2 AND min_lat <= $4 "
                         "AND (geom IS NULL OR ST_Intersects(geom, "
                         "ST_MakeEnvelope($1, $2, $3, $4, 4326)))")
        if kinds is not None:
            args.append(list(kinds))
            conds.append(f"kind = ANY(${len(args)}::text[])")
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {_GEOFENCE_SELECT} FROM geofences WHERE "
                                    f"{' AND '.join(conds)} ORDER BY geofence_id {_C}", *args)
        return [_geofence_from_row(r) for r in rows]

    async def get_geofence(self, geofence_id: str) -> GeofenceRecord:
        async with self._conn() as conn:
            return await _get_geofence(conn, geofence_id)

    async def delete_geofence(self, geofence_id: str) -> None:
        async with self._conn() as conn:
            status = await conn.execute("DELETE FROM geofences WHERE geofence_id = $1",
                                        geofence_id)
        if status.endswith(" 0"):
            raise NotFound(f"no geofence {geofence_id!r}")

    async def segments_by_id(self, segment_ids: Sequence[str]) -> dict[str, RoadSegment]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {_SEGMENT_SELECT} FROM road_segments WHERE "
                                    "segment_id = ANY($1::text[]) ORDER BY seq",
                                    list(dict.fromkeys(segment_ids)))
        return {s.segment_id: s for s in _segments_from_rows(rows)}

    # --- GTFS static ---

    async def import_gtfs(self, data: GtfsData) -> bool:
        key = f"gtfs:{data.feed_id}"
        feed = data.feed_id
        async with self._import_tx() as conn:
            if await _last_digest(conn, key) == data.digest:
                return False
            for table in GTFS_TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE feed_id = $1", feed)
            for table, cols in GTFS_COLUMNS.items():
                rows = data.tables.get(table, ())
                if table == "gtfs_stops":
                    # stop_code, stop_name, stop_name_en are columns 0..2 after stop_id.
                    records: Iterable[tuple[Any, ...]] = (
                        (feed, *row, search_text(row[2], row[3], row[1])) for row in rows)
                    columns = ["feed_id", *cols, "search_text"]
                else:
                    records = ((feed, *row) for row in rows)
                    columns = ["feed_id", *cols]
                await conn.copy_records_to_table(table, records=records, columns=columns)
            await conn.copy_records_to_table(
                "gtfs_shapes", columns=["feed_id", "shape_id", "geom", "dist_traveled"],
                records=((feed, sid, ewkb_linestring(coords),
                          None if dists is None else list(dists))
                         for sid, coords, dists in data.shapes))
            await conn.execute(
                "INSERT INTO gtfs_feeds VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (feed_id) DO UPDATE SET source = EXCLUDED.source, "
                "digest = EXCLUDED.digest, imported_at = EXCLUDED.imported_at, "
                "agency_timezone = EXCLUDED.agency_timezone, feed_info = EXCLUDED.feed_info, "
                "counts = EXCLUDED.counts, warnings = EXCLUDED.warnings",
                feed, data.source, data.digest, self.clock.now(), data.agency_timezone,
                dict(data.feed_info), data.counts(), list(data.warnings))
            await _write_features(conn, key, ("bus_stop", "rail_station"), data.stop_features)
            await _record_import(conn, self.clock.now(), key, data.source, data.digest, feed,
                                 len(data.tables.get("gtfs_stop_times", ())))
        return True

    async def list_feeds(self) -> list[GtfsFeed]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT * FROM gtfs_feeds ORDER BY feed_id {_C}")
        return [GtfsFeed(feed_id=r[0], source=r[1], digest=r[2],
                         imported_at=r[3].astimezone(UTC), agency_timezone=r[4],
                         feed_info=r[5], counts=r[6], warnings=tuple(r[7])) for r in rows]

    async def list_routes(self, feed_id: str | None = None) -> list[GtfsRoute]:
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_routes"]))
        async with self._conn() as conn:
            if feed_id:
                rows = await conn.fetch(f"SELECT {cols} FROM gtfs_routes WHERE feed_id = $1",
                                        feed_id)
            else:
                rows = await conn.fetch(f"SELECT {cols} FROM gtfs_routes")
        return sort_routes([route_from_row(r) for r in rows])

    async def _by_id(self, table: str, column: str, ident: str, feed_id: str | None
                     ) -> list[Any]:
        cols = ("feed_id, shape_id, geom, dist_traveled" if table == "gtfs_shapes"
                else ", ".join(("feed_id", *GTFS_COLUMNS[table])))
        async with self._conn() as conn:
            if feed_id:
                return list(await conn.fetch(
                    f"SELECT {cols} FROM {table} WHERE {column} = $1 AND feed_id = $2",
                    ident, feed_id))
            return list(await conn.fetch(
                f"SELECT {cols} FROM {table} WHERE {column} = $1 ORDER BY feed_id {_C}", ident))

    async def find_trip(self, trip_id: str, feed_id: str | None = None) -> GtfsTrip | None:
        row = unique_in_feeds(await self._by_id("gtfs_trips", "trip_id", trip_id, feed_id),
                              "trip_id", trip_id)
        return None if row is None else trip_from_row(row)

    async def trips_for_route(self, route_id: str, feed_id: str | None = None
                              ) -> list[GtfsTrip]:
        return sort_trips([trip_from_row(r) for r in
                           await self._by_id("gtfs_trips", "route_id", route_id, feed_id)])

    async def get_trip_stop_times(self, trip_id: str, feed_id: str | None = None
                                  ) -> list[GtfsStopTime]:
        trip = await self.find_trip(trip_id, feed_id)
        if trip is None:
            raise NotFound(f"no trip {trip_id!r}")
        names = ("feed_id", *GTFS_COLUMNS["gtfs_stop_times"])
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {', '.join(names)} FROM gtfs_stop_times WHERE "
                                    "feed_id = $1 AND trip_id = $2 ORDER BY stop_sequence",
                                    trip.feed_id, trip_id)
        return [GtfsStopTime(**dict(zip(names, r, strict=True))) for r in rows]

    async def trip_frequencies(self, trip_id: str, feed_id: str | None = None
                               ) -> list[GtfsFrequency]:
        trip = await self.find_trip(trip_id, feed_id)
        if trip is None:
            return []
        names = ("feed_id", *GTFS_COLUMNS["gtfs_frequencies"])
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {', '.join(names)} FROM gtfs_frequencies WHERE "
                                    "feed_id = $1 AND trip_id = $2 ORDER BY start_s",
                                    trip.feed_id, trip_id)
        return [GtfsFrequency(**dict(zip(names, r, strict=True))) for r in rows]

    async def active_service_ids(self, day: date, feed_id: str) -> set[str]:
        async with self._conn() as conn:
            cal = await conn.fetch(
                "SELECT service_id, monday, tuesday, wednesday, thursday, friday, saturday, "
                "sunday, start_date, end_date FROM gtfs_calendar WHERE feed_id = $1 AND "
                "start_date <= $2 AND end_date >= $2", feed_id, day)
            exc = await conn.fetch("SELECT service_id, exception_type FROM gtfs_calendar_dates "
                                   "WHERE feed_id = $1 AND date = $2", feed_id, day)
        return active_services(day, [(r[0], tuple(r[1:8]), r[8], r[9]) for r in cal],
                               [(r[0], r[1]) for r in exc])

    async def stops_in_bbox(self, bbox: BBox, feed_id: str | None = None, limit: int = 1000
                            ) -> list[GtfsStop]:
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_stops"]))
        extra = ""
        args: list[Any] = [*bbox, limit]
        if feed_id:
            extra = " AND feed_id = $6"
            args.append(feed_id)
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {cols} FROM gtfs_stops WHERE geom && ST_MakeEnvelope($1, $2, $3, $4, "
                f"4326){extra} ORDER BY feed_id {_C}, stop_id {_C} LIMIT $5", *args)
        return [stop_from_row(r) for r in rows]

    async def stop_by_id(self, stop_id: str, feed_id: str | None = None) -> GtfsStop | None:
        row = unique_in_feeds(await self._by_id("gtfs_stops", "stop_id", stop_id, feed_id),
                              "stop_id", stop_id)
        return None if row is None else stop_from_row(row)

    async def search_stops(self, query: str, feed_id: str | None = None, limit: int = 20
                           ) -> list[GtfsStop]:
        exact, prefix, sub = query_patterns(query)
        cols = ", ".join(("feed_id", *GTFS_COLUMNS["gtfs_stops"]))
        extra = ""
        args: list[Any] = [exact, prefix, sub, limit]
        if feed_id:
            extra = " AND feed_id = $5"
            args.append(feed_id)
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {cols}, {_RANK} AS rank FROM gtfs_stops WHERE strpos(search_text, $3) "
                f"> 0{extra} ORDER BY rank, char_length(COALESCE(stop_name, '')), "
                f"stop_name {_C}, feed_id {_C}, stop_id {_C} LIMIT $4", *args)
        return [stop_from_row(r) for r in rows]

    async def get_shape(self, shape_id: str, feed_id: str | None = None) -> GtfsShape | None:
        row = unique_in_feeds(await self._by_id("gtfs_shapes", "shape_id", shape_id, feed_id),
                              "shape_id", shape_id)
        if row is None:
            return None
        return GtfsShape(feed_id=row[0], shape_id=row[1], coords=coords_of_wkb([row[2]])[0],
                         dist_traveled=None if row[3] is None else tuple(row[3]))


async def _get_feature(conn: asyncpg.Connection, kind: str, feature_id: str, *,
                       for_update: bool = False) -> Feature:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_FEATURE_SELECT} FROM features WHERE kind = $1 AND "
                              f"feature_id = $2{lock}", kind, feature_id)
    if row is None:
        raise NotFound(f"no {kind} {feature_id!r}")
    return _features_from_rows([row])[0]


async def _get_geofence(conn: asyncpg.Connection, geofence_id: str) -> GeofenceRecord:
    row = await conn.fetchrow(f"SELECT {_GEOFENCE_SELECT} FROM geofences WHERE "
                              "geofence_id = $1", geofence_id)
    if row is None:
        raise NotFound(f"no geofence {geofence_id!r}")
    return _geofence_from_row(row)


def _road_hit(r: Any, segment_ids: tuple[str, ...]) -> SearchHit:
    return SearchHit(kind=ROAD_KIND, id=r["name_key"], name=r["name"], name_en=r["name_en"],
                     ref=r["ref"], match=MATCH_NAMES[r["rank"]],
                     center=(r["center_lon"], r["center_lat"]),
                     bbox=(r["min_lon"], r["min_lat"], r["max_lon"], r["max_lat"]),
                     attrs={"road_class": r["road_class"], "segment_count": r["segment_count"],
                            "length_m": r["length_m"], "matched_on": r["key_field"]},
                     segment_ids=segment_ids)
