"""Congestion levels from segment speeds, after GB/T 33171-2016: the one place levels are graded.

The standard grades a road's operating state in five levels by average travel speed, with
thresholds per road class (expressway, arterial, secondary/branch), and maps its traffic
performance index (TPI, 0-10) onto the same five bands of width 2. The warning service grades
live and profile speeds here; the names come from :mod:`shared.levels`, the one vocabulary.
"""

from __future__ import annotations

from bisect import bisect_left

from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN

__all__ = ["LEVEL_NAMES", "LEVEL_NAMES_EN", "level_for_speed", "road_group", "tpi_for_speed"]

# Speed thresholds (km/h) between levels 5|4, 4|3, 3|2 and 2|1, per road-class group.
_THRESHOLDS = {
    "expressway": (20.0, 35.0, 50.0, 65.0),
    "arterial": (15.0, 25.0, 35.0, 45.0),
    "minor": (10.0, 15.0, 25.0, 35.0),
}

_GROUP = {
    "motorway": "expressway", "motorway_link": "arterial", "trunk": "expressway",
    "trunk_link": "arterial", "primary": "arterial", "primary_link": "arterial",
}


def road_group(road_class: str | None) -> str:
    """GB/T 33171 road group of an OSM highway class: expressway, arterial or minor."""
    return _GROUP.get(road_class or "", "minor")


def level_for_speed(speed_kmh: float, road_class: str | None) -> int:
    """Level 1 (畅通) … 5 (严重拥堵) for an average travel speed on a road of this class.

    A speed exactly on a threshold takes the worse level.
    """
    return 5 - bisect_left(_THRESHOLDS[road_group(road_class)], speed_kmh)


def tpi_for_speed(speed_kmh: float, road_class: str | None) -> float:
    """Traffic performance index 0-10: level L spans [2(L-1), 2L], linear in speed inside."""
    t = _THRESHOLDS[road_group(road_class)]
    level = level_for_speed(speed_kmh, road_class)
    if level == 5:
        frac = 1.0 - max(0.0, speed_kmh) / t[0]
    elif level == 1:
        frac = 1.0 - (speed_kmh - t[3]) / t[3]
    else:
        lo, hi = t[4 - level], t[5 - level]
        frac = (hi - speed_kmh) / (hi - lo)
    return round(2.0 * (level - 1) + 2.0 * min(1.0, max(0.0, frac)), 2)
