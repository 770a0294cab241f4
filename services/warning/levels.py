"""Congestion levels from segment speeds, after GB/T 33171-2016.

The logic lives in :mod:`shared.levels`, shared with the publisher (which grades profile speeds
the same way); this module re-exports it for the warning service.
"""

from __future__ import annotations

from shared.levels import (
    LEVEL_NAMES,
    LEVEL_NAMES_EN,
    level_for_speed,
    road_group,
    tpi_for_speed,
)

__all__ = ["LEVEL_NAMES", "LEVEL_NAMES_EN", "level_for_speed", "road_group", "tpi_for_speed"]
