"""Roads as search sees them: directed segments grouped by name (or by ref when unnamed)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.bigdata.store.features import search_text
from shared.roadnet import RoadSegment

# Highest class first: a road that is partly trunk and partly primary is shown as trunk.
_CLASS_ORDER = ("motorway", "trunk", "primary", "secondary", "tertiary", "unclassified",
                "residential", "living_street", "service")

ROAD_NAME_COLUMNS = ("name_key", "key_field", "name", "name_en", "ref", "road_class",
                     "segment_count", "length_m", "min_lon", "min_lat", "max_lon", "max_lat",
                     "center_lon", "center_lat", "search_text")


def _class_rank(road_class: str) -> int:
    base = road_class.removesuffix("_link")
    rank = _CLASS_ORDER.index(base) if base in _CLASS_ORDER else len(_CLASS_ORDER)
    return rank * 2 + (road_class != base)


@dataclass(slots=True)
class _Group:
    key_field: str
    names_en: Counter[str] = field(default_factory=Counter)
    refs: set[str] = field(default_factory=set)
    road_class: str = ""
    count: int = 0
    length_m: float = 0.0
    pieces: set[tuple[int, int, int]] = field(default_factory=set)
    min_lon: float = math.inf
    min_lat: float = math.inf
    max_lon: float = -math.inf
    max_lat: float = -math.inf
    mids: list[tuple[float, float]] = field(default_factory=list)


class RoadNameIndex:
    """Accumulates segments during an import; :meth:`rows` gives one row per named road."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    def add(self, seg: RoadSegment) -> None:
        """Count one directed segment into its road (unnamed and ref-less ones are skipped)."""
        key, key_field = (seg.name, "name") if seg.name else (seg.ref, "ref")
        if not key:
            return
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(key_field)
        if seg.name_en:
            g.names_en[seg.name_en] += 1
        if seg.ref:
            g.refs.update(r.strip() for r in seg.ref.split(";") if r.strip())
        if not g.road_class or _class_rank(seg.road_class) < _class_rank(g.road_class):
            g.road_class = seg.road_class
        g.count += 1
        # Both directions of a two-way piece are one stretch of road: count its length once.
        piece = (seg.way_id, min(seg.from_node, seg.to_node), max(seg.from_node, seg.to_node))
        if piece not in g.pieces:
            g.pieces.add(piece)
            g.length_m += seg.length_m
        for lon, lat in seg.coords:
            g.min_lon = min(g.min_lon, lon)
            g.max_lon = max(g.max_lon, lon)
            g.min_lat = min(g.min_lat, lat)
            g.max_lat = max(g.max_lat, lat)
        g.mids.append(seg.coords[len(seg.coords) // 2])

    def add_all(self, segments: Iterable[RoadSegment]) -> None:
        """Add many segments."""
        for seg in segments:
            self.add(seg)

    def rows(self) -> list[tuple[object, ...]]:
        """Rows in :data:`ROAD_NAME_COLUMNS` order, sorted by key."""
        out: list[tuple[object, ...]] = []
        for key in sorted(self._groups):
            g = self._groups[key]
            cx, cy = (g.min_lon + g.max_lon) / 2, (g.min_lat + g.max_lat) / 2
            # A point on the road (not the bbox centre, which may be off an L-shaped road).
            center = min(g.mids, key=lambda p: (p[0] - cx) ** 2 + (p[1] - cy) ** 2)
            name = key if g.key_field == "name" else None
            name_en = g.names_en.most_common(1)[0][0] if g.names_en else None
            ref = ";".join(sorted(g.refs)) or None
            out.append((key, g.key_field, name, name_en, ref, g.road_class, g.count,
                        round(g.length_m, 1), g.min_lon, g.min_lat, g.max_lon, g.max_lat,
                        center[0], center[1], search_text(name, name_en, ref)))
        return out
