"""The area traffic index: TPI (GB/T 33171, 0-10) of the network, its road groups and a grid.

An area's TPI is the mean of its measured segments' TPI weighted by vehicle kilometres (segment
length × vehicles seen in the window), its speed the space-mean speed over those segments
(Σ length / Σ length/speed), its congested share the share of measured length at level 4-5. Areas:
``network`` (everything), ``group:expressway|arterial|minor`` and ``cell:<x>:<y>``, squares of
``CELL_M`` metres over the network's extent (cell 0:0 at its south-west corner). Only live values
count: a profile is the usual state, not today's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.warning.levels import road_group
from shared.events import AreaIndex, SegmentSpeed
from shared.geo import EARTH_RADIUS_M
from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN
from shared.roadnet import RoadNetwork

CELL_M = 2000.0
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_GROUP_NAMES = {"expressway": "快速路 expressway", "arterial": "主干路 arterial",
                "minor": "次干路及支路 minor roads"}


class Graded(Protocol):
    """A held segment value: its last window and its grade."""

    last: SegmentSpeed
    grade: Any


@dataclass(frozen=True, slots=True)
class _Where:
    length_m: float
    areas: tuple[str, ...]


class AreaGrid:
    """Which areas each segment belongs to, and each area's name, extent and size."""

    def __init__(self, network: RoadNetwork, *, cell_m: float = CELL_M) -> None:
        min_lon, min_lat, max_lon, max_lat = network.bbox()
        self.cell_lat = cell_m / _M_PER_DEG
        self.cell_lon = cell_m / (_M_PER_DEG * math.cos(math.radians((min_lat + max_lat) / 2)))
        self.origin = (min_lon, min_lat)
        self.where: dict[str, _Where] = {}
        self.names: dict[str, str] = {"network": "全路网 network"}
        self.bbox: dict[str, tuple[float, float, float, float]] = {
            "network": (min_lon, min_lat, max_lon, max_lat)}
        self.sizes: dict[str, int] = defaultdict(int)
        for seg in network:
            mid = seg.coords[len(seg.coords) // 2]
            x = int((mid[0] - min_lon) // self.cell_lon)
            y = int((mid[1] - min_lat) // self.cell_lat)
            cell = f"cell:{x}:{y}"
            group = f"group:{road_group(seg.road_class)}"
            if cell not in self.names:
                self.names[cell] = f"网格 {x},{y} cell"
                lon0, lat0 = min_lon + x * self.cell_lon, min_lat + y * self.cell_lat
                self.bbox[cell] = (round(lon0, 6), round(lat0, 6),
                                   round(lon0 + self.cell_lon, 6), round(lat0 + self.cell_lat, 6))
            self.names.setdefault(group, _GROUP_NAMES[group.split(":", 1)[1]])
            areas = ("network", group, cell)
            self.where[seg.segment_id] = _Where(seg.length_m, areas)
            for a in areas:
                self.sizes[a] += 1


def _level_of_tpi(tpi: float) -> int:
    return min(5, int(tpi // 2) + 1)


def compute_index(grid: AreaGrid, live: Mapping[str, Graded], now: datetime) -> list[AreaIndex]:
    """Every area's index from the live graded segments (areas with no segment left out)."""
    tpi_sum: dict[str, float] = defaultdict(float)
    weight: dict[str, float] = defaultdict(float)
    length: dict[str, float] = defaultdict(float)
    hours: dict[str, float] = defaultdict(float)
    congested: dict[str, float] = defaultdict(float)
    measured: dict[str, int] = defaultdict(int)
    for sid, held in live.items():
        where = grid.where.get(sid)
        g = held.grade
        if where is None or g.tpi is None or held.last.speed_kmh is None:
            continue
        w = where.length_m * max(1, held.last.sample_count)
        for area in where.areas:
            tpi_sum[area] += g.tpi * w
            weight[area] += w
            length[area] += where.length_m
            hours[area] += where.length_m / 1000.0 / max(0.5, held.last.speed_kmh)
            measured[area] += 1
            if (g.level or 0) >= 4:
                congested[area] += where.length_m
    out = []
    for area in sorted(grid.names):
        if weight[area] > 0:
            value = round(tpi_sum[area] / weight[area], 2)
            tpi: float | None = value
            level: int | None = _level_of_tpi(value)
            speed: float | None = round(length[area] / 1000.0 / hours[area], 1)
            share = round(congested[area] / length[area], 3)
        else:
            tpi = level = speed = None
            share = 0.0
        out.append(AreaIndex(
            area_id=area, name=grid.names[area], observed_at=now, tpi=tpi, level=level,
            level_name=None if level is None else LEVEL_NAMES[level],
            level_name_en=None if level is None else LEVEL_NAMES_EN[level],
            speed_kmh=speed, congested_share=share, segment_count=grid.sizes[area],
            measured_count=measured[area], bbox=grid.bbox.get(area)))
    return out
