"""Roads as the publisher serves them: the segment catalogue, live road status, GeoJSON.

The catalogue is an immutable snapshot (segments plus a shapely STRtree) swapped whole on each
reload, so readers never see a half-built index. Live values are the latest
:class:`~shared.events.RoadStatus` per segment, as the warning service graded it (live, its
time-of-week profile with ``source: "profile"``, or ``source: "none"``); a segment the warning
service has said nothing about says ``source: "none"`` with nulls rather than pretending to flow
freely. The publisher grades nothing itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from shapely import STRtree, box
from shapely.geometry import LineString

from shared.clients.bigdata import Region, Segment
from shared.errors import BadRequest, DecodeError
from shared.events import SPEED_SOURCES, RoadStatus
from shared.levels import level_names

BBox = tuple[float, float, float, float]


def parse_min_level(raw: str | None) -> int | None:
    """``min_level`` query value → 1..5, None when absent; :class:`BadRequest` if bad."""
    if raw is None:
        return None
    try:
        level = int(raw)
    except ValueError as exc:
        raise BadRequest("min_level must be an integer from 1 to 5") from exc
    if not 1 <= level <= 5:
        raise BadRequest("min_level must be an integer from 1 to 5")
    return level


class Catalogue:
    """An immutable snapshot of every segment, with a spatial index for bbox queries."""

    def __init__(self, segments: Iterable[Segment], region: Region | None = None) -> None:
        by_id: dict[str, Segment] = {}
        for seg in segments:
            by_id[seg.segment_id] = seg  # a repeated id: the later record wins
        self.region = region
        self._by_id = by_id
        self._order = list(by_id.values())
        self._tree = STRtree([LineString(s.coords) for s in self._order])
        names: dict[str, list[int]] = {}
        for i, s in enumerate(self._order):
            for n in {s.name, s.name_en}:
                if n:
                    names.setdefault(n.casefold(), []).append(i)
        self._names = names

    def __len__(self) -> int:
        return len(self._order)

    def find(self, segment_id: str) -> Segment | None:
        """The segment with this id, or None."""
        return self._by_id.get(segment_id)

    def list_segments(self, bbox: BBox | None = None) -> list[Segment]:
        """Segments whose geometry intersects ``bbox`` (all when None), in catalogue order."""
        if bbox is None:
            return list(self._order)
        hits = self._tree.query(box(*bbox), predicate="intersects")
        return [self._order[i] for i in sorted(hits.tolist())]

    def search(self, query: str) -> list[Segment]:
        """Segments whose name or English name contains ``query`` (case-insensitive)."""
        q = query.casefold()
        found = {i for name, idx in self._names.items() if q in name for i in idx}
        return [self._order[i] for i in sorted(found)]


def validate_road_status(status: RoadStatus) -> RoadStatus:
    """Check a RoadStatus and normalise its time to UTC; :class:`DecodeError` when invalid."""
    if status.source not in SPEED_SOURCES:
        raise DecodeError(f"unknown road status source {status.source!r}", code="bad_source")
    if status.level is not None and (isinstance(status.level, bool)
                                     or not isinstance(status.level, int)
                                     or not 1 <= status.level <= 5):
        raise DecodeError(f"road status level {status.level!r} is not 1..5", code="bad_level")
    if not isinstance(status.sample_count, int) or status.sample_count < 0:
        raise DecodeError("sample_count must be a non-negative integer", code="bad_field")
    for name in ("speed_kmh", "tpi"):
        value = getattr(status, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise DecodeError(f"{name} must be a finite number or null", code="bad_field")
    if status.observed_at.utcoffset() != timedelta(0):
        status = dataclasses.replace(status, observed_at=status.observed_at.astimezone(UTC))
    return status


class RoadStatusBoard:
    """Latest RoadStatus per segment: newest ``observed_at`` wins; bounded and aged out.

    A value older than ``max_age_s`` is no longer live (the segment reads as "no data"), so a
    producer that stops talking cannot leave yesterday's jam on the map.
    """

    def __init__(self, *, max_entries: int = 500_000, max_age_s: float = 1800.0) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        # Ordered by last update, so the least recently updated entry is evicted first.
        self._latest: OrderedDict[str, RoadStatus] = OrderedDict()

    def __len__(self) -> int:
        return len(self._latest)

    def apply(self, status: RoadStatus) -> bool:
        """Keep ``status`` unless a newer one is held; returns whether it was applied."""
        status = validate_road_status(status)
        held = self._latest.get(status.segment_id)
        if held is not None and held.observed_at > status.observed_at:
            return False  # a redelivered or late event must not roll the value back
        self._latest[status.segment_id] = status
        self._latest.move_to_end(status.segment_id)
        while len(self._latest) > self.max_entries:
            self._latest.popitem(last=False)
        return True

    def find(self, segment_id: str, now: datetime) -> RoadStatus | None:
        """The live status of a segment, or None when there is none or it is too old."""
        status = self._latest.get(segment_id)
        if status is None or (now - status.observed_at).total_seconds() > self.max_age_s:
            return None
        return status

    def prune(self, now: datetime) -> int:
        """Drop statuses older than ``max_age_s``; returns how many were dropped."""
        cutoff = now - timedelta(seconds=self.max_age_s)
        old = [sid for sid, s in self._latest.items() if s.observed_at < cutoff]
        for sid in old:
            del self._latest[sid]
        return len(old)


def live_properties(status: RoadStatus | None) -> dict[str, object]:
    """The live part of a road's properties; no data (or source "none") gives nulls."""
    if status is None or status.source == "none":
        return {"level": None, "level_name": None, "level_name_en": None, "speed_kmh": None,
                "tpi": None, "observed_at": None, "sample_count": 0, "source": "none"}
    # A source with too few samples to judge may send no level; its speed still stands. The
    # names are the warning service's, as sent (an older producer sent only the Chinese one).
    level = status.level
    name, name_en = level_names(level)
    return {
        "level": level,
        "level_name": status.level_name or name,
        "level_name_en": status.level_name_en or name_en,
        "speed_kmh": None if status.speed_kmh is None else round(float(status.speed_kmh), 1),
        "tpi": None if status.tpi is None else round(float(status.tpi), 2),
        "observed_at": status.observed_at,
        "sample_count": status.sample_count,
        "source": status.source,
    }


def road_feature(segment: Segment, status: RoadStatus | None, *, detail: bool = False
                 ) -> dict[str, object]:
    """A GeoJSON LineString feature of one segment with its live values.

    ``detail`` adds the attributes the map list leaves out to stay light (lanes, limits, length).
    """
    props: dict[str, object] = {
        "segment_id": segment.segment_id,
        "name": segment.name,
        "name_en": segment.name_en,
        "road_class": segment.road_class,
        "bridge": segment.bridge,
        "tunnel": segment.tunnel,
        "free_flow_kmh": segment.free_flow_kmh,
    }
    if detail:
        props.update(lanes=segment.lanes, speed_limit_kmh=segment.speed_limit_kmh,
                     oneway=segment.oneway, length_m=segment.length_m)
    props.update(live_properties(status))
    return {
        "type": "Feature",
        "id": segment.segment_id,
        "geometry": {"type": "LineString", "coordinates": segment.coords},
        "properties": props,
    }
