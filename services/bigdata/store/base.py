"""The geodatabase interface every backend implements, and the records it speaks."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.errors import ConfigError
from shared.roadnet import RoadSegment

BBox = tuple[float, float, float, float]


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


class GeoStore(abc.ABC):
    """Road segments with geometry, their speed history, and import bookkeeping."""

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
    async def import_segments(self, source: str, digest: str, region_name: str,
                              segments: Iterable[RoadSegment]) -> bool:
        """Replace the road segments with ``segments`` in one transaction.

        Returns False (and changes nothing) when ``digest`` equals the last import's: re-importing
        the same file is idempotent. Any failure leaves the database as it was.
        """

    @abc.abstractmethod
    async def list_segments(self, bbox: BBox | None = None) -> list[RoadSegment]:
        """Segments whose extent intersects ``bbox`` (all when None)."""

    @abc.abstractmethod
    async def find_segment(self, segment_id: str) -> RoadSegment | None:
        """One segment, or None."""

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


def store_from_url(url: str) -> GeoStore:
    """``sqlite:///path`` → the embedded store (``postgresql://`` comes with PostGIS support)."""
    if url.startswith("sqlite:///"):
        from services.bigdata.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url == "sqlite://:memory:":
        from services.bigdata.store.sqlite import SqliteStore

        return SqliteStore(":memory:")
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///path")
