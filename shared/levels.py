"""The one vocabulary of congestion levels (GB/T 33171-2016), in Chinese and English.

Levels are *graded* in one place, the warning service (``services/warning/levels.py``); every
other part renders the ``level``, ``level_name`` and ``level_name_en`` it is sent, and may use
this table only to name or list levels (a legend, an OpenAPI enum), never to grade a speed.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

LEVELS: Final = (1, 2, 3, 4, 5)
"""Level 1 is free flow, 5 severe congestion."""

LEVEL_NAMES: Final = MappingProxyType({1: "畅通", 2: "基本畅通", 3: "轻度拥堵", 4: "中度拥堵",
                                       5: "严重拥堵"})
"""The standard's names of the five levels."""

LEVEL_NAMES_EN: Final = MappingProxyType({1: "smooth", 2: "basically smooth",
                                          3: "light congestion", 4: "moderate congestion",
                                          5: "severe congestion"})
"""English names of the five levels."""

NO_DATA_NAME: Final = "无数据"
NO_DATA_NAME_EN: Final = "no data"
"""What a segment with neither a live value nor a profile says."""


def level_names(level: int | None) -> tuple[str | None, str | None]:
    """(Chinese, English) names of a level; (None, None) for None."""
    if level is None:
        return None, None
    return LEVEL_NAMES[level], LEVEL_NAMES_EN[level]


def describe_levels() -> list[dict[str, object]]:
    """The vocabulary as a list (``/api/v1/levels``): level, name, name_en."""
    return [{"level": n, "name": LEVEL_NAMES[n], "name_en": LEVEL_NAMES_EN[n]} for n in LEVELS]
