"""Small geodesy helpers: distances, bearings, a local metric projection, WGS-84 <-> GCJ-02.

Everything inside TTI is WGS-84 (lon, lat) in degrees; GCJ-02 exists only at the edges that
need it (WeChat locations, Chinese map SDKs). Distances are in metres, bearings in degrees
clockwise from north.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "EARTH_RADIUS_M",
    "LocalProjection",
    "SegmentProjection",
    "bearing_deg",
    "gcj02_to_wgs84",
    "haversine_m",
    "out_of_china",
    "point_segment_projection",
    "wgs84_to_gcj02",
]

EARTH_RADIUS_M = 6_371_008.8
"""Mean earth radius (IUGG), the usual choice for haversine distances."""

_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two WGS-84 points."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2.0) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2.0) ** 2
    # min() guards against h creeping past 1.0 through rounding for antipodal points.
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dlmb = math.radians(lon2 - lon1)
    y = math.sin(dlmb) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlmb)
    return math.degrees(math.atan2(y, x)) % 360.0


@dataclass(frozen=True, slots=True)
class LocalProjection:
    """Equirectangular projection around an origin: metres east (x) and north (y).

    Good to well under 0.1 % within a few kilometres of the origin, which is all map matching
    and spatial indexing need, and an order of magnitude cheaper than a real projection.
    """

    lon0: float
    lat0: float

    @property
    def m_per_deg_lon(self) -> float:
        """Metres per degree of longitude at the origin's latitude."""
        return _M_PER_DEG * math.cos(math.radians(self.lat0))

    @property
    def m_per_deg_lat(self) -> float:
        """Metres per degree of latitude."""
        return _M_PER_DEG

    def to_xy(self, lon: float, lat: float) -> tuple[float, float]:
        """Project a WGS-84 point to local metres."""
        return (lon - self.lon0) * self.m_per_deg_lon, (lat - self.lat0) * _M_PER_DEG

    def to_lonlat(self, x: float, y: float) -> tuple[float, float]:
        """Inverse of `to_xy`."""
        return self.lon0 + x / self.m_per_deg_lon, self.lat0 + y / _M_PER_DEG


@dataclass(frozen=True, slots=True)
class SegmentProjection:
    """Where a point projects onto a line segment A→B (planar coordinates).

    `t` is the clamped fraction along A→B, (`x`, `y`) the projected point, `distance` the
    distance from the query point to it, in the units of the inputs.
    """

    t: float
    x: float
    y: float
    distance: float


def point_segment_projection(
    px: float, py: float, ax: float, ay: float, bx: float, by: float
) -> SegmentProjection:
    """Project point P onto segment A→B in a planar (e.g. `LocalProjection`) frame."""
    dx = bx - ax
    dy = by - ay
    dd = dx * dx + dy * dy
    if dd == 0.0:
        t = 0.0
    else:
        t = ((px - ax) * dx + (py - ay) * dy) / dd
        t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
    qx = ax + t * dx
    qy = ay + t * dy
    return SegmentProjection(t, qx, qy, math.hypot(px - qx, py - qy))


# --- GCJ-02 ---------------------------------------------------------------------------------
# The widely published reverse-engineered GCJ-02 obfuscation (as in eviltransform and the
# Chinese map SDK docs): Krasovsky 1940 ellipsoid constants and a fixed trigonometric warp.
_GCJ_A = 6378245.0
_GCJ_EE = 0.00669342162296594323


def out_of_china(lon: float, lat: float) -> bool:
    """True outside the rough mainland-China box where GCJ-02 applies no offset."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _gcj_delta(lon: float, lat: float) -> tuple[float, float]:
    x = lon - 105.0
    y = lat - 35.0
    sqrt_abs_x = math.sqrt(abs(x))
    common = (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    d_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sqrt_abs_x + common
    d_lat += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    d_lat += (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    d_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sqrt_abs_x + common
    d_lon += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    d_lon += (150.0 * math.sin(x / 12.0 * math.pi) + 300 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    rad_lat = math.radians(lat)
    magic = 1.0 - _GCJ_EE * math.sin(rad_lat) ** 2
    sqrt_magic = math.sqrt(magic)
    d_lat = (d_lat * 180.0) / ((_GCJ_A * (1.0 - _GCJ_EE)) / (magic * sqrt_magic) * math.pi)
    d_lon = (d_lon * 180.0) / (_GCJ_A / sqrt_magic * math.cos(rad_lat) * math.pi)
    return d_lon, d_lat


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """WGS-84 (lon, lat) → GCJ-02 (lon, lat); points outside China are returned unchanged."""
    if out_of_china(lon, lat):
        return lon, lat
    d_lon, d_lat = _gcj_delta(lon, lat)
    return lon + d_lon, lat + d_lat


def gcj02_to_wgs84(lon: float, lat: float, *, tolerance_deg: float = 1e-9) -> tuple[float, float]:
    """GCJ-02 (lon, lat) → WGS-84 by fixed-point iteration of the forward transform.

    The offset field is smooth and small (< 1 km), so each step shrinks the error by about
    three orders of magnitude; 1e-9 deg (0.1 mm) is reached in 3-4 steps.
    """
    if out_of_china(lon, lat):
        return lon, lat
    w_lon, w_lat = lon, lat
    for _ in range(30):
        g_lon, g_lat = wgs84_to_gcj02(w_lon, w_lat)
        e_lon = g_lon - lon
        e_lat = g_lat - lat
        w_lon -= e_lon
        w_lat -= e_lat
        if abs(e_lon) < tolerance_deg and abs(e_lat) < tolerance_deg:
            break
    return w_lon, w_lat
