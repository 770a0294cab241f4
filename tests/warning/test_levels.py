"""GB/T 33171 congestion levels and TPI per road class."""

from __future__ import annotations

import pytest

from services.warning.levels import LEVEL_NAMES, level_for_speed, road_group, tpi_for_speed


@pytest.mark.parametrize(("speed", "road_class", "level"), [
    (80, "motorway", 1), (60, "motorway", 2), (40, "motorway", 3), (30, "motorway", 4),
    (20, "motorway", 5), (10, "motorway", 5),
    (50, "primary", 1), (40, "primary", 2), (30, "primary", 3), (20, "primary", 4),
    (15, "primary", 5), (5, "primary", 5),
    (40, "residential", 1), (30, "residential", 2), (20, "residential", 3),
    (12, "residential", 4), (8, "residential", 5),
])
def test_level_by_speed_and_class(speed: float, road_class: str, level: int) -> None:
    assert level_for_speed(speed, road_class) == level


def test_same_speed_is_worse_on_faster_road_class() -> None:
    assert level_for_speed(30, "motorway") > level_for_speed(30, "residential")


def test_unknown_class_is_treated_as_minor_road() -> None:
    assert road_group(None) == road_group("service") == "minor"


def test_tpi_is_monotone_and_inside_the_level_band() -> None:
    last = 11.0
    for speed in range(0, 120):
        tpi = tpi_for_speed(float(speed), "primary")
        level = level_for_speed(float(speed), "primary")
        assert 0.0 <= tpi <= 10.0
        assert tpi <= last
        assert 2 * (level - 1) <= tpi <= 2 * level
        last = tpi


def test_level_names_are_the_five_standard_levels() -> None:
    assert [LEVEL_NAMES[i] for i in range(1, 6)] == ["畅通", "基本畅通", "轻度拥堵", "中度拥堵",
                                                    "严重拥堵"]
