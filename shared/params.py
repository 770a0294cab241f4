"""Query parameters every HTTP API parses the same way: a WGS-84 point ``LON,LAT``, a bbox.

A malformed value is a :class:`~shared.errors.BadRequest` (HTTP 400 with a JSON body).
"""

from __future__ import annotations

import math

from shared.errors import BadRequest


def parse_point(raw: str | None, name: str) -> tuple[float, float]:
    """``LON,LAT`` (WGS-84 degrees) → (lon, lat); BadRequest when missing or malformed."""
    if not raw:
        raise BadRequest(f"{name} is required: {name}=LON,LAT (WGS-84 degrees)")
    parts = raw.split(",")
    if len(parts) != 2:
        raise BadRequest(f"{name} must be LON,LAT (WGS-84 degrees)")
    try:
        lon, lat = float(parts[0]), float(parts[1])
    except ValueError:
        raise BadRequest(f"{name} must be two numbers: LON,LAT") from None
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180
            and -90 <= lat <= 90):
        raise BadRequest(f"{name} must be a WGS-84 longitude and latitude")
    return lon, lat


def parse_alternatives(raw: str | None, *, most: int = 3) -> int:
    """The ``alternatives`` of a route query: 0 to ``most``; BadRequest otherwise."""
    if raw is None:
        return 0
    if not raw.isdigit() or int(raw) > most:
        raise BadRequest(f"alternatives must be an integer from 0 to {most}")
    return int(raw)


BBox = tuple[float, float, float, float]
"""(min_lon, min_lat, max_lon, max_lat), WGS-84 degrees."""


def parse_bbox(raw: str | None, name: str = "bbox") -> BBox | None:
    """``minlon,minlat,maxlon,maxlat`` → a bbox; None when absent; BadRequest when malformed."""
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) != 4:
        raise BadRequest(f"{name} must be four comma-separated numbers: "
                         "minlon,minlat,maxlon,maxlat (WGS-84 degrees)")
    try:
        minlon, minlat, maxlon, maxlat = (float(p) for p in parts)
    except ValueError:
        raise BadRequest(f"{name} must be four numbers: minlon,minlat,maxlon,maxlat") from None
    if not all(math.isfinite(v) for v in (minlon, minlat, maxlon, maxlat)):
        raise BadRequest(f"{name} values must be finite numbers")
    if not (-180 <= minlon <= 180 and -180 <= maxlon <= 180):
        raise BadRequest(f"{name} longitudes must be within [-180, 180]")
    if not (-90 <= minlat <= 90 and -90 <= maxlat <= 90):
        raise BadRequest(f"{name} latitudes must be within [-90, 90]")
    if minlon >= maxlon or minlat >= maxlat:
        raise BadRequest(f"{name} minimum must be less than its maximum "
                         "(minlon < maxlon, minlat < maxlat)")
    return minlon, minlat, maxlon, maxlat
