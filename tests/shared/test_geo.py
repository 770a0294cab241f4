"""Distances, bearings, the local projection and WGS-84 <-> GCJ-02."""

from __future__ import annotations

import math

import pytest

from shared.geo import (
    EARTH_RADIUS_M,
    LocalProjection,
    bearing_deg,
    gcj02_to_wgs84,
    haversine_m,
    out_of_china,
    point_segment_projection,
    wgs84_to_gcj02,
)

# Published test vectors of the reference GCJ-02 implementation (eviltransform's test suite):
# (wgs lon, wgs lat) -> (gcj lon, gcj lat) for Shanghai, Shenzhen and Beijing.
EVILTRANSFORM_VECTORS = [
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),
]

WUHAN = (114.3055, 30.5928)  # Jianghan Road area


def test_one_degree_of_latitude_is_about_111_km() -> None:
    assert haversine_m(114.3, 30.0, 114.3, 31.0) == pytest.approx(
        math.pi / 180 * EARTH_RADIUS_M, rel=1e-12
    )
    assert haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(111_195.08, abs=0.01)


def test_known_city_distance() -> None:
    # Shanghai -> Beijing (GCJ points of the vectors above): 1,078,164 m on the WGS-84 equatorial
    # radius in the reference implementation, i.e. 1,076,960 m on the mean radius used here.
    (_, sh), (_, bj) = EVILTRANSFORM_VECTORS[0], EVILTRANSFORM_VECTORS[2]
    assert haversine_m(*sh, *bj) == pytest.approx(1_078_164 * EARTH_RADIUS_M / 6_378_137, abs=2.0)


def test_haversine_is_symmetric_and_zero_on_the_same_point() -> None:
    assert haversine_m(*WUHAN, *WUHAN) == 0.0
    a = haversine_m(114.30, 30.55, 114.41, 30.50)
    assert a == pytest.approx(haversine_m(114.41, 30.50, 114.30, 30.55))
    assert haversine_m(0.0, 0.0, 180.0, 0.0) == pytest.approx(math.pi * EARTH_RADIUS_M)


@pytest.mark.parametrize(
    ("dlon", "dlat", "expected"),
    [(0.0, 0.01, 0.0), (0.01, 0.0, 90.0), (0.0, -0.01, 180.0), (-0.01, 0.0, 270.0)],
)
def test_bearing_cardinal_directions(dlon: float, dlat: float, expected: float) -> None:
    lon, lat = WUHAN
    assert bearing_deg(lon, lat, lon + dlon, lat + dlat) == pytest.approx(expected, abs=0.01)


def test_bearing_north_east_is_between_0_and_90() -> None:
    lon, lat = WUHAN
    assert 40.0 < bearing_deg(lon, lat, lon + 0.01, lat + 0.01) < 50.0


def test_local_projection_round_trip_and_accuracy() -> None:
    proj = LocalProjection(*WUHAN)
    lon, lat = WUHAN[0] + 0.015, WUHAN[1] - 0.012  # ~2 km away
    x, y = proj.to_xy(lon, lat)
    back = proj.to_lonlat(x, y)
    assert back == pytest.approx((lon, lat), abs=1e-12)
    assert math.hypot(x, y) == pytest.approx(haversine_m(*WUHAN, lon, lat), rel=1e-3)
    assert proj.to_xy(*WUHAN) == (0.0, 0.0)


def test_point_segment_projection() -> None:
    inside = point_segment_projection(5.0, 3.0, 0.0, 0.0, 10.0, 0.0)
    assert (inside.t, inside.x, inside.y, inside.distance) == pytest.approx((0.5, 5.0, 0.0, 3.0))
    before = point_segment_projection(-4.0, 3.0, 0.0, 0.0, 10.0, 0.0)
    assert (before.t, before.x, before.distance) == pytest.approx((0.0, 0.0, 5.0))
    after = point_segment_projection(13.0, -4.0, 0.0, 0.0, 10.0, 0.0)
    assert (after.t, after.x, after.distance) == pytest.approx((1.0, 10.0, 5.0))
    degenerate = point_segment_projection(3.0, 4.0, 0.0, 0.0, 0.0, 0.0)
    assert (degenerate.t, degenerate.distance) == pytest.approx((0.0, 5.0))


@pytest.mark.parametrize(("wgs", "gcj"), EVILTRANSFORM_VECTORS)
def test_gcj02_matches_published_vectors(
    wgs: tuple[float, float], gcj: tuple[float, float]
) -> None:
    assert wgs84_to_gcj02(*wgs) == pytest.approx(gcj, abs=1e-9)
    assert gcj02_to_wgs84(*gcj) == pytest.approx(wgs, abs=1e-7)


def test_gcj02_offset_in_wuhan_is_a_few_hundred_metres() -> None:
    glon, glat = wgs84_to_gcj02(*WUHAN)
    assert 100.0 < haversine_m(*WUHAN, glon, glat) < 1000.0


def test_gcj02_round_trip_across_china() -> None:
    worst = 0.0
    for lon in range(74, 135, 3):
        for lat in range(18, 54, 3):
            wgs = (lon + 0.123, lat + 0.456)
            back = gcj02_to_wgs84(*wgs84_to_gcj02(*wgs))
            worst = max(worst, abs(back[0] - wgs[0]), abs(back[1] - wgs[1]))
    assert worst < 1e-6


@pytest.mark.parametrize(
    "point",
    [(-104.9903, 39.7392), (153.0251, -27.4698), (-43.1729, -22.9068), (2.3522, 48.8566)],
)
def test_outside_china_is_unchanged(point: tuple[float, float]) -> None:
    assert out_of_china(*point)
    assert wgs84_to_gcj02(*point) == point
    assert gcj02_to_wgs84(*point) == point


def test_wuhan_is_inside_china() -> None:
    assert not out_of_china(*WUHAN)
