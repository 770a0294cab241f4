"""A segment's speed limit: its OSM ``maxspeed``, else the statutory default for its kind of road.

The statutory defaults are those of the Road Traffic Safety Law's implementing regulations
(道路交通安全法实施条例):

- §45: "在没有限速标志、标线的道路上，机动车不得超过下列最高行驶速度：（一）没有道路中心线的道路，
  城市道路为每小时30公里，公路为每小时40公里；（二）同方向只有1条机动车道的道路，城市道路为每小时
  50公里，公路为每小时70公里。"
- §78: 高速公路 at most 120 km/h.

OSM does not tag centre lines, so the kind of road is read from its tags (`speed_limit`).
"""

from __future__ import annotations

import re

from shared.roadnet.segments import RoadSegment

__all__ = ["STATUTORY_LIMITS_KMH", "speed_limit"]

STATUTORY_LIMITS_KMH: dict[tuple[str, bool], float] = {
    ("no_centre_line", False): 30.0,  # §45 (一), city road
    ("no_centre_line", True): 40.0,  # §45 (一), 公路
    ("one_lane", False): 50.0,  # §45 (二), city road
    ("one_lane", True): 70.0,  # §45 (二), 公路
}
"""§45's numbers by (layout, is 公路)."""

MOTORWAY_LIMIT_KMH = 120.0
"""§78: the most a 高速公路 allows."""

# Narrow classes: in China such roads rarely carry markings, so without a lanes tag they are
# taken as roads without a centre line.
_NARROW = frozenset({"residential", "service", "living_street", "unclassified", "track"})
# Tertiary and above: a two-way one without a lanes tag is taken as one lane each way (a
# multi-lane road of these classes is normally mapped as two one-way carriageways or tagged).
_MARKED = frozenset({"trunk", "trunk_link", "primary", "primary_link", "secondary",
                     "secondary_link", "tertiary", "tertiary_link"})
# National, provincial, county and township road numbers (国道 G, 省道 S, 县道 X, 乡道 Y).
_GONGLU_REF = re.compile(r"^\s*[GSXY]\s?\d+", re.IGNORECASE)


def _is_gonglu(segment: RoadSegment) -> bool:
    """Whether a road is a 公路 (highway outside the city's street network) under §45."""
    if segment.road_class in ("motorway", "motorway_link"):
        return True  # 高速公路 are 公路 by definition
    ref = segment.ref or ""
    return any(_GONGLU_REF.match(part) for part in ref.split(";"))


def _layout(segment: RoadSegment) -> str | None:
    """§45's kind of road: ``no_centre_line``, ``one_lane`` (each way), or None (neither)."""
    lanes = segment.lanes
    if lanes is not None:
        if not segment.oneway and segment.lanes_total == 1:
            return "no_centre_line"  # one lane shared by both directions
        # lanes is per direction: two-way lanes=2 or lanes:forward=1, or one-way lanes=1.
        return "one_lane" if lanes == 1 else None
    if segment.road_class in _NARROW:
        return "no_centre_line"
    if not segment.oneway and segment.road_class in _MARKED:
        return "one_lane"
    return None


def speed_limit(segment: RoadSegment) -> tuple[float | None, str]:
    """The segment's speed limit (km/h) and where it comes from: ``osm``, ``statutory``, ``none``.

    In order:

    1. a usable OSM ``maxspeed`` (or ``maxspeed:forward``/``:backward``) → that, ``osm``;
    2. ``highway=motorway`` → 120 (§78), ``statutory``;
    3. §45, ``statutory``, by the road's layout and whether it is a 公路:

       - no centre line: a two-way road tagged ``lanes=1``, or an untagged narrow road
         (residential, service, living_street, unclassified, track) → city 30, 公路 40;
       - one lane per direction: one-way ``lanes=1``, two-way ``lanes=2`` (or a direction's
         ``lanes:forward``/``:backward`` = 1), or a two-way road of tertiary class or above
         without a lanes tag → city 50, 公路 70;
       - 公路: a ``ref`` of a national, provincial, county or township road (G/S/X/Y and
         digits) or a motorway ramp; everything else, an urban expressway (``trunk`` without
         such a ref) included, is a city road;

    4. otherwise (two or more lanes each way, a one-way road or ramp without a lanes tag):
       §45 says nothing → ``(None, "none")``.

    A segment read back from a store that does not keep ``lanes_total`` takes a two-way road's
    one lane per direction as ``lanes=2`` (the common tagging).
    """
    if segment.speed_limit_kmh is not None:
        return segment.speed_limit_kmh, "osm"
    if segment.road_class == "motorway":
        return MOTORWAY_LIMIT_KMH, "statutory"
    layout = _layout(segment)
    if layout is None:
        return None, "none"
    return STATUTORY_LIMITS_KMH[(layout, _is_gonglu(segment))], "statutory"
