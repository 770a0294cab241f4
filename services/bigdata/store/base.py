"""The geodatabase interface every backend implements, and the records it speaks.

Two backends implement it with the same behaviour (one contract test suite runs against both):
:class:`~services.bigdata.store.sqlite.SqliteStore` (embedded, plain sqlite3 + R*Tree, geometry in
Python with shapely) and :class:`~services.bigdata.store.postgis.PostgisStore` (asyncpg + PostGIS,
GiST indexes). Coordinates are WGS-84 (lon, lat); distances are metres; times are UTC.

What it holds:

- **road segments** (directed, from OSM) with their speed history, and what is learned from it:
  time-of-week speed profiles and free-flow speed (:mod:`services.bigdata.profiles`);
- **features** of the kinds in :data:`FEATURE_KINDS` (bridges, tunnels, stations, parking …) with
  a geometry, names, attrs and a live state;
- **GTFS static** feeds (agency, routes, stops, trips, stop times, shapes, calendars,
  frequencies), their stops also as ``bus_stop``/``rail_station`` features;
- **geofences** (:mod:`services.bigdata.geofences`): restricted zones and roads per vehicle
  class, assigned routes; a restricted road's segments resolved from its polygon or line;
- **import bookkeeping**: per import key (``roads``, ``features:<source>``, ``gtfs:<feed_id>``)
  the source, digest and time of the last import, so re-importing the same file is a no-op.

Schema changes are numbered migrations recorded in ``schema_migrations`` and applied on
:meth:`GeoStore.open`; both backends are at :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.bigdata.geofences import (
    DEFAULT_ROAD_WIDTH_M,
    GeofenceRecord,
    covered_segment_ids,
)
from services.bigdata.store._geo import radius_box
from services.bigdata.store.basemap import BasemapItem
from services.bigdata.store.features import (
    FEATURE_KINDS,
    AmbiguousIdError,
    CatalogueEntry,
    Feature,
    NearbyFeature,
    SearchHit,
)
from services.bigdata.store.gtfs import (
    GtfsData,
    GtfsFeed,
    GtfsFrequency,
    GtfsRoute,
    GtfsShape,
    GtfsStop,
    GtfsStopTime,
    GtfsTrip,
)
from shared.clock import Clock
from shared.errors import ConfigError
from shared.roadnet import RoadSegment

BBox = tuple[float, float, float, float]
"""(min_lon, min_lat, max_lon, max_lat)."""

SCHEMA_VERSION = 7
"""Migrations: 1 roads, speeds and imports; 2 features and road names; 3 GTFS static;
4 time-of-week profiles and learned free flow; 5 geofences; 6 the base map; 7 the speed history
partitioned by day (PostgreSQL; nothing changes in SQLite)."""

DEFAULT_HISTORY_DAYS = 90
"""Days of speed history kept when ``TTI_SPEED_HISTORY_DAYS`` is 0 (over three months: the
profiles read the last four weeks, the rest is there for comparisons and reports)."""
HISTORY_DAY_OFFSET = timedelta(hours=8)
"""The speed history is kept and expired in whole Beijing days (UTC+8, no DST since 1991)."""

OSM_FEATURE_SOURCE = "osm"
"""Import source of the features extracted from the imported OSM file."""


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """What the database holds: name, extent and size."""

    name: str
    bbox: BBox | None
    segment_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeedRecord:
    """One persisted speed window of one segment."""

    segment_id: str
    window_start: datetime
    observed_at: datetime
    speed_kmh: float | None
    sample_count: int
    source: str
    confidence: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentProfile:
    """The usual speed of a segment in one time-of-week bucket, learned from its history.

    ``bucket`` counts 15-minute slots of the week in local time (0 = Monday 00:00-00:15, see
    :mod:`services.bigdata.profiles`); ``speed_kmh`` is the median of ``sample_windows`` speed
    windows; ``updated_at`` is when it was computed.
    """

    segment_id: str
    bucket: int
    speed_kmh: float
    sample_windows: int
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class FreeFlow:
    """A segment's free-flow speed: ``learned`` from night-time probes, or the OSM ``default``.

    ``sample_windows`` and ``updated_at`` describe the learned value (0 and None for a default);
    ``default_kmh`` is the OSM-derived value either way.
    """

    segment_id: str
    speed_kmh: float
    source: str
    sample_windows: int
    updated_at: datetime | None
    default_kmh: float


@dataclass(frozen=True, slots=True)
class NearbySegment:
    """A road segment and its distance in metres from the query point."""

    segment: RoadSegment
    distance_m: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportRecord:
    """The last successful import under one key (``roads``, ``features:osm``, ``gtfs:<feed>``)."""

    key: str
    source: str
    digest: str
    region_name: str
    imported_at: datetime
    item_count: int


@dataclass(frozen=True, slots=True)
class OsmImportOutcome:
    """What :meth:`GeoStore.import_osm` changed."""

    roads_changed: bool
    features_changed: bool

    @property
    def changed(self) -> bool:
        """True when anything was written."""
        return self.roads_changed or self.features_changed


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryUpkeep:
    """What :meth:`GeoStore.maintain_speed_history` did."""

    kept_from: datetime
    """The history now starts at or after this instant (a Beijing midnight, UTC)."""
    partitions_created: int
    partitions_dropped: int
    rows_deleted: int
    """Rows deleted one by one (SQLite); PostgreSQL drops whole days and counts none."""


def history_day(t: datetime) -> date:
    """The Beijing day of ``t`` (a UTC-aware time): the speed history's unit of retention."""
    return (t.astimezone(UTC) + HISTORY_DAY_OFFSET).date()


def history_day_start(day: date) -> datetime:
    """Beijing midnight starting ``day``, in UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) - HISTORY_DAY_OFFSET


def retention_start(now: datetime, keep_days: int) -> datetime:
    """Where a history of ``keep_days`` days (0: :data:`DEFAULT_HISTORY_DAYS`) begins at ``now``.

    Only whole days expire: the start of the Beijing day containing ``now - keep_days``.
    """
    if keep_days < 0:
        raise ValueError(f"keep_days must be 0 or more, not {keep_days}")
    keep = timedelta(days=keep_days or DEFAULT_HISTORY_DAYS)
    return history_day_start(history_day(now - keep))


class GeoStore(abc.ABC):
    """Road segments, features and GTFS static with geometry; speed history; import bookkeeping.

    Every import method runs in one transaction and is idempotent per key and digest: the same
    digest again returns False and writes nothing; any failure (including an exception raised
    while iterating the input) leaves the database as it was.
    """

    # --- lifecycle ---

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The highest applied migration."""

    @abc.abstractmethod
    async def find_import(self, key: str) -> ImportRecord | None:
        """The last import under ``key`` (``roads``, ``features:<source>``, ``gtfs:<feed>``)."""

    # --- road segments ---

    @abc.abstractmethod
    async def import_segments(self, source: str, digest: str, region_name: str,
                              segments: Iterable[RoadSegment]) -> bool:
        """Replace the road segments with ``segments`` in one transaction.

        Returns False (and changes nothing) when ``digest`` equals the last import's: re-importing
        the same file is idempotent. Any failure leaves the database as it was.
        """

    @abc.abstractmethod
    async def import_osm(self, source: str, digest: str, region_name: str,
                         segments: Iterable[RoadSegment], features: Iterable[Feature], *,
                         features_digest: str, feature_kinds: Sequence[str] = FEATURE_KINDS,
                         basemap: Iterable[BasemapItem] | None = None) -> OsmImportOutcome:
        """Roads, the OSM features and the base map of one file, together in one transaction.

        Roads are replaced unless ``digest`` equals the ``roads`` import's; the features of
        ``feature_kinds`` from source ``osm`` are replaced unless ``features_digest`` equals the
        ``features:osm`` import's (the extractor's version is part of that digest, so a better
        extractor re-imports the same file), and with them the whole base map when ``basemap``
        is given (None keeps the one held). All or nothing: a bad base map item raises
        FeatureError and nothing is written.
        """

    @abc.abstractmethod
    async def list_segments(self, bbox: BBox | None = None) -> list[RoadSegment]:
        """Segments whose extent intersects ``bbox`` (all when None), in import order."""

    @abc.abstractmethod
    async def find_segment(self, segment_id: str) -> RoadSegment | None:
        """One segment, or None."""

    @abc.abstractmethod
    async def nearest_segments(self, lon: float, lat: float, k: int = 1,
                               max_distance_m: float | None = None) -> list[NearbySegment]:
        """The ``k`` segments nearest to (lon, lat), nearest first (ties by segment id)."""

    @abc.abstractmethod
    async def region(self) -> RegionInfo:
        """Name, extent and segment count of the imported network."""

    @abc.abstractmethod
    async def insert_speeds(self, records: Sequence[SpeedRecord]) -> None:
        """Persist speed windows (a repeated window replaces the earlier value)."""

    @abc.abstractmethod
    async def speed_history(self, segment_id: str, since: datetime, until: datetime
                            ) -> list[SpeedRecord]:
        """Speed windows of one segment in [since, until), oldest first."""

    @abc.abstractmethod
    async def maintain_speed_history(self, *, keep_days: int, now: datetime | None = None
                                     ) -> HistoryUpkeep:
        """Prepare the history ahead of ``now`` (default: the store's clock) and expire what
        lies wholly before :func:`retention_start` (``keep_days`` 0: the default, 90 days).

        PostgreSQL creates the coming days' partitions and drops the expired ones; SQLite
        deletes the expired rows. Writes never depend on it having run.
        """

    # --- profiles (services.bigdata.profiles) ---

    @abc.abstractmethod
    async def recompute_profiles(self, since: datetime, until: datetime) -> int:
        """Rebuild the time-of-week profiles and learned free flows from windows in [since, until).

        Replaces both tables in one transaction (a bucket or segment without enough windows
        any more loses its value); returns the number of (segment, bucket) profiles written.
        """

    @abc.abstractmethod
    async def profiles_at(self, when: datetime, segment_ids: Sequence[str] | None = None
                          ) -> dict[str, SegmentProfile]:
        """Profiles of the bucket containing ``when``, by segment id (those that have one)."""

    async def profile_at(self, segment_id: str, when: datetime) -> SegmentProfile | None:
        """One segment's profile for the bucket containing ``when``, or None."""
        return (await self.profiles_at(when, [segment_id])).get(segment_id)

    @abc.abstractmethod
    async def segment_profile(self, segment_id: str) -> list[SegmentProfile]:
        """Every bucket's profile of one segment, by bucket (empty without history)."""

    @abc.abstractmethod
    async def learned_free_flow(self, segment_ids: Sequence[str] | None = None
                                ) -> dict[str, FreeFlow]:
        """Free-flow speed of road segments (all when None): learned, else the OSM default.

        Unknown segment ids are left out.
        """

    # --- features ---

    @abc.abstractmethod
    async def import_features(self, source: str, digest: str, kinds: Sequence[str],
                              features: Iterable[Feature]) -> bool:
        """Make the features of ``kinds`` from ``source`` exactly ``features``, in one transaction.

        ``source`` names where they come from (``osm``, ``gtfs:<feed>``, ``detectors``); features
        of those kinds previously imported from it and absent now are deleted, the others
        replaced — keeping their live state. Returns False and writes nothing when ``digest``
        equals the last import's from ``source``. A feature whose kind is not in ``kinds``, a
        duplicate (kind, id) or a bad geometry raises :class:`FeatureError`, DB unchanged.
        """

    @abc.abstractmethod
    async def features_in_bbox(self, bbox: BBox | None, kinds: Sequence[str] | None = None,
                               limit: int = 1000) -> list[Feature]:
        """Features whose geometry intersects ``bbox`` (all when None), by kind then id."""

    @abc.abstractmethod
    async def nearest_features(self, lon: float, lat: float,
                               kinds: Sequence[str] | None = None, k: int = 5,
                               max_distance_m: float | None = None) -> list[NearbyFeature]:
        """The ``k`` features nearest to (lon, lat) in metres, nearest first."""

    @abc.abstractmethod
    async def search(self, query: str, kinds: Sequence[str] | None = None,
                     limit: int = 20) -> list[SearchHit]:
        """Features and roads whose name, name_en or ref contains ``query`` (case-insensitive).

        Roads come as one hit per name (kind ``road``, with their segment ids). Order: exact
        match, prefix, substring; then shorter name first. ``kinds`` may include ``road``.
        """

    @abc.abstractmethod
    async def basemap_in_bbox(self, bbox: BBox, *, layers: Sequence[str] | None = None,
                              min_size_m: float = 0.0, max_rank: int = 99,
                              limit: int = 10_000) -> list[BasemapItem]:
        """Base map items whose extent meets ``bbox``: shapes at least ``min_size_m`` big,
        places of rank at most ``max_rank``; places first by rank, then the biggest shapes
        (a limit drops the smallest), then layer and id."""

    @abc.abstractmethod
    async def get_feature(self, kind: str, feature_id: str) -> Feature:
        """One feature with its live state; :class:`~shared.errors.NotFound` when missing."""

    @abc.abstractmethod
    async def update_live(self, kind: str, feature_id: str, live: Mapping[str, Any], *,
                          observed_at: datetime | None = None) -> Feature:
        """Merge ``live`` into the feature's live state (None deletes a key); returns it.

        ``live_updated_at`` becomes ``observed_at`` (default now, UTC). An update observed before
        the state held (a redelivery, a slow sender) changes nothing: the feature comes back as
        held, its ``live_updated_at`` later than ``observed_at``; the check and the write are one
        transaction, so concurrent writers cannot undo a newer state. Raises NotFound when the
        feature does not exist and FeatureError for an implausible state (e.g. more free parking
        spaces than capacity).
        """

    @abc.abstractmethod
    async def feature_counts(self) -> dict[str, int]:
        """Number of features per kind (kinds with none are left out)."""

    @abc.abstractmethod
    async def list_feature_catalogue(self) -> dict[str, list[CatalogueEntry]]:
        """Every feature's id and bounds (:func:`catalogue_bounds`), per kind, by id.

        Kinds with no feature are left out. This is what bigdata publishes as the
        ``FeatureCatalogue`` for the collector's checks at the edge.
        """

    # --- geofences (services.bigdata.geofences) ---

    @abc.abstractmethod
    async def put_geofence(self, fence: GeofenceRecord) -> tuple[GeofenceRecord, bool]:
        """Create or replace one fence (segments already resolved); the stored fence and
        whether it was created. ``updated_at`` is the store's clock."""

    @abc.abstractmethod
    async def import_geofences(self, source: str, digest: str,
                               fences: Sequence[GeofenceRecord]) -> int:
        """Store ``fences`` under ``source`` in one transaction; returns how many.

        Fences ``source`` stored before and absent now are deleted; others (the API's, other
        files') stay unless a fence here has their id. A duplicate id raises GeofenceError,
        database unchanged.
        """

    @abc.abstractmethod
    async def list_geofences(self, bbox: BBox | None = None, kinds: Sequence[str] | None = None
                             ) -> list[GeofenceRecord]:
        """Fences intersecting ``bbox`` (by geometry; by extent for segment-only fences), of
        ``kinds``; all when None; by id."""

    @abc.abstractmethod
    async def get_geofence(self, geofence_id: str) -> GeofenceRecord:
        """One fence; :class:`~shared.errors.NotFound` when missing."""

    @abc.abstractmethod
    async def delete_geofence(self, geofence_id: str) -> None:
        """Delete one fence; :class:`~shared.errors.NotFound` when missing."""

    async def segments_by_id(self, segment_ids: Sequence[str]) -> dict[str, RoadSegment]:
        """The known segments among ``segment_ids`` (unknown ones left out)."""
        out: dict[str, RoadSegment] = {}
        for sid in dict.fromkeys(segment_ids):
            seg = await self.find_segment(sid)
            if seg is not None:
                out[sid] = seg
        return out

    async def covered_segments(self, geometry: Any, width_m: float | None = None) -> list[str]:
        """Ids of the segments a restricted road's polygon or line covers, in import order
        (:func:`~services.bigdata.geofences.covered_segment_ids`)."""
        b = geometry.bounds
        pad = (width_m or DEFAULT_ROAD_WIDTH_M) / 2.0
        lo = radius_box(b[0], b[1], pad)
        hi = radius_box(b[2], b[3], pad)
        candidates = await self.list_segments((lo[0], lo[1], hi[2], hi[3]))
        return covered_segment_ids(geometry, width_m,
                                   [(s.segment_id, s.coords) for s in candidates])

    # --- GTFS static ---

    @abc.abstractmethod
    async def import_gtfs(self, data: GtfsData) -> bool:
        """Replace feed ``data.feed_id`` (its rows and its stop features) in one transaction.

        False and nothing written when the digest equals the feed's last import.
        """

    @abc.abstractmethod
    async def list_feeds(self) -> list[GtfsFeed]:
        """Imported feeds, by feed id."""

    @abc.abstractmethod
    async def list_routes(self, feed_id: str | None = None) -> list[GtfsRoute]:
        """Routes (of one feed, or all), by feed, sort order, short name, id."""

    @abc.abstractmethod
    async def find_trip(self, trip_id: str, feed_id: str | None = None) -> GtfsTrip | None:
        """One trip, or None. Without ``feed_id`` an id present in two feeds raises
        :class:`AmbiguousIdError`."""

    @abc.abstractmethod
    async def trips_for_route(self, route_id: str, feed_id: str | None = None
                              ) -> list[GtfsTrip]:
        """Trips of a route, by direction then trip id (empty for an unknown route)."""

    @abc.abstractmethod
    async def get_trip_stop_times(self, trip_id: str, feed_id: str | None = None
                                  ) -> list[GtfsStopTime]:
        """The trip's stop times in stop_sequence order.

        Raises NotFound for an unknown trip, AmbiguousIdError when ``feed_id`` is None and
        several feeds have the trip id.
        """

    @abc.abstractmethod
    async def trip_frequencies(self, trip_id: str, feed_id: str | None = None
                               ) -> list[GtfsFrequency]:
        """frequencies.txt rows of a headway-based trip, by start time (empty otherwise)."""

    @abc.abstractmethod
    async def active_service_ids(self, day: date, feed_id: str) -> set[str]:
        """Service ids of ``feed_id`` running on ``day`` (the service day, in the feed's
        ``agency_timezone``): calendar.txt weekday and range, then calendar_dates.txt."""

    @abc.abstractmethod
    async def stops_in_bbox(self, bbox: BBox, feed_id: str | None = None, limit: int = 1000
                            ) -> list[GtfsStop]:
        """Stops with a location inside ``bbox``, by feed and stop id."""

    @abc.abstractmethod
    async def stop_by_id(self, stop_id: str, feed_id: str | None = None) -> GtfsStop | None:
        """One stop, or None (AmbiguousIdError as for :meth:`find_trip`)."""

    @abc.abstractmethod
    async def search_stops(self, query: str, feed_id: str | None = None, limit: int = 20
                           ) -> list[GtfsStop]:
        """Stops whose name, English name or code contains ``query``; exact/prefix first."""

    @abc.abstractmethod
    async def get_shape(self, shape_id: str, feed_id: str | None = None) -> GtfsShape | None:
        """A trip shape, or None (AmbiguousIdError as for :meth:`find_trip`)."""


def unique_in_feeds(rows: Sequence[Any], what: str, ident: str,
                    feed_of: Any = lambda r: r[0]) -> Any | None:
    """The one row among rows for the same id in different feeds; None when there is none."""
    if not rows:
        return None
    if len(rows) > 1:
        feeds = ", ".join(sorted(str(feed_of(r)) for r in rows))
        raise AmbiguousIdError(f"{what} {ident!r} exists in feeds {feeds}: pass feed_id")
    return rows[0]


def free_flow_of(segment_id: str, default_kmh: float, learned_kmh: float | None,
                 sample_windows: int | None, updated_at: datetime | None) -> FreeFlow:
    """A :class:`FreeFlow` from a road row joined with its learned value (None when not learned)."""
    if learned_kmh is None:
        return FreeFlow(segment_id=segment_id, speed_kmh=default_kmh, source="default",
                        sample_windows=0, updated_at=None, default_kmh=default_kmh)
    return FreeFlow(segment_id=segment_id, speed_kmh=learned_kmh, source="learned",
                    sample_windows=sample_windows or 0, updated_at=updated_at,
                    default_kmh=default_kmh)


def store_from_url(url: str, *, clock: Clock | None = None) -> GeoStore:
    """``sqlite:///path`` → the embedded store; ``postgresql://…`` → PostGIS.

    ``clock`` stamps import, profile and live-state times (default: real time).
    """
    if url.startswith("sqlite:///"):
        from services.bigdata.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), clock=clock)
    if url == "sqlite://:memory:":
        from services.bigdata.store.sqlite import SqliteStore

        return SqliteStore(":memory:", clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        from services.bigdata.store.postgis import PostgisStore

        return PostgisStore(url, clock=clock)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///path or "
                      "postgresql://user@host/db")
