"""The road network: OSM import rules, ids, graph, spatial index and routing.

Most tests run on the real OpenStreetMap extract of Wuhan's Optics Valley in ``../shared``; the
tagging edge cases the extract lacks are covered by a small hand-written OSM file.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import networkx as nx
import osmium
import pytest
import shapely

import shared.roadnet as roadnet_module
import shared.roadnet.index as roadnet_index
from shared.errors import TtiError
from shared.events import SPEED_LIMIT_SOURCES
from shared.geo import bearing_deg, haversine_m
from shared.roadnet import (
    Candidate,
    OsmWay,
    RoadNetwork,
    RoadNetworkError,
    RoadSegment,
    UnknownSegmentError,
    make_segment_id,
    parse_maxspeed,
    parse_segment_id,
    speed_limit,
)
from tests.conftest import reference_file

SEGMENT_ID = re.compile(r"^(\d+):(\d+):(\d+)$")
M_PER_DEG = roadnet_index.M_PER_DEG


@pytest.fixture(scope="module")
def wuhan_osm() -> Path:
    return reference_file("osm", "wuhan_optics_valley.osm")


@pytest.fixture(scope="module")
def net(wuhan_osm: Path) -> RoadNetwork:
    return RoadNetwork.from_osm(wuhan_osm)


@pytest.fixture(scope="module")
def way_tags(wuhan_osm: Path) -> dict[int, dict[str, str]]:
    return {
        w.id: {t.k: t.v for t in w.tags}
        for w in osmium.FileProcessor(str(wuhan_osm), osmium.osm.WAY)
        if isinstance(w, osmium.osm.Way)
    }


def _brute_nearest(
    segments: list[RoadSegment], lon: float, lat: float, radius_m: float
) -> dict[str, float]:
    """Linear scan with shapely in the query's local metric frame: the reference answer."""
    kx = M_PER_DEG * math.cos(math.radians(lat))
    origin = shapely.Point(0.0, 0.0)
    found = {}
    for seg in segments:
        line = shapely.LineString([((x - lon) * kx, (y - lat) * M_PER_DEG) for x, y in seg.coords])
        distance = line.distance(origin)
        if distance <= radius_m:
            found[seg.segment_id] = distance
    return found


def _query_points(net: RoadNetwork, n: int, seed: int) -> Iterator[tuple[float, float]]:
    rng = random.Random(seed)
    segments = list(net)
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    for q in range(n):
        if q % 2:
            yield rng.uniform(min_lon, max_lon), rng.uniform(min_lat, max_lat)
        else:  # near a road, where GPS fixes are
            lon, lat = rng.choice(segments).coords[0]
            yield lon + rng.uniform(-3e-4, 3e-4), lat + rng.uniform(-3e-4, 3e-4)


# --- the real Wuhan extract ------------------------------------------------------------------


def test_loads_segments_with_well_formed_ids(net: RoadNetwork) -> None:
    assert len(net) > 500
    for seg in net:
        match = SEGMENT_ID.match(seg.segment_id)
        assert match, seg.segment_id
        assert tuple(int(g) for g in match.groups()) == (seg.way_id, seg.from_node, seg.to_node)
        assert parse_segment_id(seg.segment_id) == (seg.way_id, seg.from_node, seg.to_node)
        assert len(seg.coords) >= 2
        assert seg.length_m > 0
        assert seg.free_flow_kmh > 0
        assert seg.road_class in roadnet_module.ROUTABLE_HIGHWAYS


def test_ids_are_stable_across_loads(wuhan_osm: Path, net: RoadNetwork) -> None:
    again = RoadNetwork.from_osm(wuhan_osm)
    assert list(again.segments) == list(net.segments)
    assert list(again) == list(net)


def test_two_way_ways_give_both_directions_one_way_ways_one(
    net: RoadNetwork, way_tags: dict[int, dict[str, str]]
) -> None:
    one_way = two_way = 0
    for seg in net:
        reverse = make_segment_id(seg.way_id, seg.to_node, seg.from_node)
        tags = way_tags[seg.way_id]
        if tags.get("oneway") == "yes":
            one_way += 1
            assert seg.oneway
            assert reverse not in net, seg.segment_id
        elif tags["highway"] in ("tertiary", "residential", "service") and "oneway" not in tags:
            two_way += 1
            assert not seg.oneway
            assert reverse in net, seg.segment_id
            assert net.find_reverse(seg.segment_id) == reverse
            assert net.get_segment(reverse).coords == seg.coords[::-1]
    assert one_way > 50 and two_way > 50


def test_footways_and_paths_are_not_roads(
    net: RoadNetwork, way_tags: dict[int, dict[str, str]]
) -> None:
    excluded = {w for w, t in way_tags.items() if t.get("highway") in ("path", "cycleway")}
    assert excluded
    assert not any(seg.way_id in excluded for seg in net)


def test_graph_nodes_are_way_ends_and_shared_nodes(wuhan_osm: Path, net: RoadNetwork) -> None:
    uses: dict[int, int] = {}
    ends: set[int] = set()
    looped: set[int] = set()
    for way in osmium.FileProcessor(str(wuhan_osm), osmium.osm.WAY):
        if not isinstance(way, osmium.osm.Way):
            continue
        tags = {t.k: t.v for t in way.tags}
        if tags.get("highway") not in roadnet_module.ROUTABLE_HIGHWAYS:
            continue
        refs = [n.ref for n in way.nodes]
        ends.update((refs[0], refs[-1]))
        if len(set(refs)) < len(refs):  # closed, or looping back onto itself
            looped.update(refs)
        for ref in refs:
            uses[ref] = uses.get(ref, 0) + 1
    expected = ends | {n for n, count in uses.items() if count >= 2}
    graph_nodes = {s.from_node for s in net} | {s.to_node for s in net}
    assert expected <= graph_nodes
    # The only extra split points are inside looping ways, where ids would otherwise repeat.
    assert graph_nodes - expected <= looped


def test_gaoxin_avenue_is_found_by_name(net: RoadNetwork) -> None:
    gaoxin = [s for s in net if s.name == "高新大道"]
    assert len(gaoxin) >= 10
    assert {s.road_class for s in gaoxin} <= {"trunk", "primary", "trunk_link", "primary_link"}
    total_km = sum(s.length_m for s in gaoxin) / 1000
    assert total_km > 2.0


def test_nearest_from_a_point_on_gaoxin_avenue_returns_it_first(net: RoadNetwork) -> None:
    seg = max((s for s in net if s.name == "高新大道"), key=lambda s: s.length_m)
    (lon1, lat1), (lon2, lat2) = seg.coords[0], seg.coords[1]
    lon, lat = (lon1 + lon2) / 2, (lat1 + lat2) / 2
    found = net.nearest(lon, lat)
    assert found, "nothing near a point on the road"
    assert found[0].segment_id in {seg.segment_id, net.find_reverse(seg.segment_id)}
    assert found[0].distance_m < 0.5
    assert net.get_segment(found[0].segment_id).name == "高新大道"
    if found[0].segment_id == seg.segment_id:
        assert found[0].offset_m == pytest.approx(haversine_m(lon1, lat1, lon, lat), rel=1e-3)
        assert found[0].bearing_deg == pytest.approx(bearing_deg(lon1, lat1, lon2, lat2), abs=0.01)


def test_nearest_returns_both_directions_of_a_two_way_road(net: RoadNetwork) -> None:
    seg = next(s for s in net if not s.oneway and s.length_m > 100)
    lon, lat = seg.coords[0]
    lon2, lat2 = seg.coords[1]
    found = {c.segment_id for c in net.nearest((lon + lon2) / 2, (lat + lat2) / 2, radius_m=5)}
    assert {seg.segment_id, net.find_reverse(seg.segment_id)} <= found


def test_nearest_agrees_with_a_linear_scan(
    net: RoadNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    segments = list(net)
    for scan_rows_max in (10**9, -1):  # the plain-Python scan, then the numpy one
        monkeypatch.setattr(roadnet_index, "_PY_ROWS_MAX", scan_rows_max)
        for q, (lon, lat) in enumerate(_query_points(net, 80, seed=11)):
            radius = (10.0, 50.0, 200.0)[q % 3]
            got = net.nearest(lon, lat, radius_m=radius, k=6)
            expected = _brute_nearest(segments, lon, lat, radius)
            assert [c.distance_m for c in got] == pytest.approx(sorted(expected.values())[:6])
            for c in got:
                assert c.distance_m == pytest.approx(expected[c.segment_id], abs=1e-6)


def test_nearest_candidates_are_consistent(net: RoadNetwork) -> None:
    for lon, lat in _query_points(net, 60, seed=5):
        found = net.nearest(lon, lat, radius_m=80.0, k=8)
        assert len(found) <= 8
        assert len({c.segment_id for c in found}) == len(found)
        assert [c.distance_m for c in found] == sorted(c.distance_m for c in found)
        for c in found:
            assert isinstance(c, Candidate)
            seg = net.get_segment(c.segment_id)
            assert c.distance_m <= 80.0
            assert 0.0 <= c.offset_m <= seg.length_m + 1e-6
            assert 0.0 <= c.bearing_deg < 360.0
            # The projected point is where the distance was measured to.
            assert haversine_m(lon, lat, c.lon, c.lat) == pytest.approx(c.distance_m, abs=0.05)


def test_nearest_far_away_or_degenerate_queries_are_empty(net: RoadNetwork) -> None:
    assert net.nearest(0.0, 0.0) == []
    assert net.nearest(114.52, 30.48, k=0) == []
    assert net.nearest(114.52, 30.48, radius_m=-1.0) == []


def test_in_bbox_agrees_with_a_linear_scan(net: RoadNetwork) -> None:
    rng = random.Random(2)
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    segments = list(net)
    for size in (0.0005, 0.003, 0.02, 0.5):
        for _ in range(10):
            lon = rng.uniform(min_lon, max_lon)
            lat = rng.uniform(min_lat, max_lat)
            box = (lon, lat, lon + size, lat + size * 0.8)
            got = [s.segment_id for s in net.in_bbox(*box)]
            area = shapely.box(*box)
            expected = [
                s.segment_id for s in segments if shapely.LineString(s.coords).intersects(area)
            ]
            assert got == expected
    assert net.in_bbox(0.0, 0.0, 1.0, 1.0) == []
    assert len(net.in_bbox(*net.bbox())) == len(net)


def test_bbox_covers_every_coordinate(net: RoadNetwork) -> None:
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    lons = [p[0] for s in net for p in s.coords]
    lats = [p[1] for s in net for p in s.coords]
    assert (min_lon, min_lat, max_lon, max_lat) == (min(lons), min(lats), max(lons), max(lats))


def test_successors_and_predecessors_match_the_graph(net: RoadNetwork) -> None:
    graph = net.graph
    assert isinstance(graph, nx.MultiDiGraph)
    assert graph.number_of_edges() == len(net)
    for seg in net:
        leaving = {key for _, _, key in graph.out_edges(seg.to_node, keys=True)}
        arriving = {key for _, _, key in graph.in_edges(seg.from_node, keys=True)}
        assert set(net.successors(seg.segment_id)) == leaving
        assert set(net.predecessors(seg.segment_id)) == arriving
        for nxt in net.successors(seg.segment_id):
            assert net.get_segment(nxt).from_node == seg.to_node
        data = graph.edges[seg.from_node, seg.to_node, seg.segment_id]
        assert data["length_m"] == seg.length_m
        assert data["road_class"] == seg.road_class
        assert data["free_flow_kmh"] == seg.free_flow_kmh
    node = next(iter(graph.nodes))
    assert (graph.nodes[node]["lon"], graph.nodes[node]["lat"]) == net.node_lonlat(node)


def test_successors_include_the_u_turn(net: RoadNetwork) -> None:
    seg = next(s for s in net if not s.oneway)
    assert net.find_reverse(seg.segment_id) in net.successors(seg.segment_id)


def test_shortest_path_is_connected_and_matches_networkx(net: RoadNetwork) -> None:
    graph = net.graph
    rng = random.Random(7)
    ids = list(net.segments)
    found = 0
    for _ in range(150):
        a, b = rng.choice(ids), rng.choice(ids)
        bound = rng.choice((800.0, 3000.0, 20000.0))
        result = net.shortest_path(a, b, max_length_m=bound)
        try:
            expected: float | None = nx.shortest_path_length(
                graph, net.get_segment(a).to_node, net.get_segment(b).from_node, weight="length_m"
            )
        except nx.NetworkXNoPath:
            expected = None
        if expected is None or expected > bound:
            assert result is None
            continue
        found += 1
        assert result is not None
        path, distance = result
        assert distance == pytest.approx(expected)
        assert path[0] == a and path[-1] == b
        for x, y in pairwise(path):
            assert y in net.successors(x)
        inner = sum(net.get_segment(s).length_m for s in path[1:-1])
        assert inner == pytest.approx(distance)
    assert found > 20


def test_shortest_path_cache_resumes_correctly(wuhan_osm: Path) -> None:
    # A fresh network, so every answer below goes through one cached, resumed search.
    fresh = RoadNetwork.from_osm(wuhan_osm)
    graph = fresh.graph
    start = next(s for s in fresh if s.name == "高新大道")
    lengths = nx.single_source_dijkstra_path_length(graph, start.to_node, weight="length_m")
    targets = list(fresh)[::20]
    for bound in (300.0, 2500.0, 300.0, 1e9):
        for target in targets:
            result = fresh.shortest_path(start.segment_id, target.segment_id, max_length_m=bound)
            expected = lengths.get(target.from_node)
            if expected is None or expected > bound:
                assert result is None
            else:
                assert result is not None
                assert result[1] == pytest.approx(expected)


def test_shortest_path_to_a_directly_following_segment(net: RoadNetwork) -> None:
    seg = next(s for s in net if net.successors(s.segment_id))
    nxt = net.successors(seg.segment_id)[0]
    assert net.shortest_path(seg.segment_id, nxt) == ([seg.segment_id, nxt], 0.0)
    with pytest.raises(RoadNetworkError):
        net.shortest_path(seg.segment_id, "1:2:3")


def test_lookup_of_unknown_segment(net: RoadNetwork) -> None:
    assert net.find_segment("1:2:3") is None
    with pytest.raises(UnknownSegmentError, match="unknown segment id '1:2:3'"):
        net.get_segment("1:2:3")
    with pytest.raises(KeyError):
        net.get_segment("1:2:3")
    with pytest.raises(RoadNetworkError):
        net.successors("nope")
    assert net.out_segments(-1) == [] and net.in_segments(-1) == []
    assert issubclass(RoadNetworkError, TtiError) and issubclass(RoadNetworkError, ValueError)


def test_from_segments_round_trip(net: RoadNetwork) -> None:
    copy = RoadNetwork.from_segments(list(net))
    assert list(copy.segments) == list(net.segments)
    for lon, lat in _query_points(net, 20, seed=3):
        assert copy.nearest(lon, lat) == net.nearest(lon, lat)
    with pytest.raises(RoadNetworkError, match="duplicate segment id"):
        RoadNetwork.from_segments([*list(net)[:3], next(iter(net))])
    with pytest.raises(RoadNetworkError, match="no road segments"):
        RoadNetwork.from_segments([])


# --- bad files -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RoadNetworkError, match="OSM file not found"):
        RoadNetwork.from_osm(tmp_path / "nowhere.osm")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.osm", bytes(range(256)) * 8),
        ("garbage.osm.pbf", b"\x00\x00\xff\xffnot a pbf" * 100),
        ("empty.osm", b""),
        ("page.osm", b"<html><body>not OSM</body></html>"),
        ("notes.txt", b"<osm/>"),
    ],
)
def test_unreadable_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RoadNetworkError, match=f"cannot read OSM file .*{re.escape(name)}"):
        RoadNetwork.from_osm(path)


def test_file_without_roads(tmp_path: Path) -> None:
    path = tmp_path / "footpaths.osm"
    path.write_text(
        '<?xml version="1.0"?><osm version="0.6">'
        '<node id="1" lat="30.5" lon="114.3"/><node id="2" lat="30.501" lon="114.3"/>'
        '<way id="5"><nd ref="1"/><nd ref="2"/><tag k="highway" v="footway"/></way></osm>'
    )
    with pytest.raises(RoadNetworkError, match="no routable roads"):
        RoadNetwork.from_osm(path)


# --- tagging rules on a hand-written file ----------------------------------------------------

_NODES = {
    1: (114.3000, 30.5000),
    2: (114.3010, 30.5000),
    3: (114.3020, 30.5000),
    4: (114.3010, 30.5010),
    5: (114.3010, 30.5020),
    6: (114.3020, 30.5020),
    7: (114.3030, 30.5020),
    8: (114.3035, 30.5025),
    9: (114.3030, 30.5030),
    10: (114.3020, 30.4990),
    11: (114.3020, 30.4980),
    12: (114.3030, 30.4980),
    13: (114.3030, 30.4990),
    14: (114.3040, 30.5000),
    15: (114.3050, 30.5000),
    16: (114.3060, 30.5000),
    17: (114.3040, 30.5020),
}
_WAYS: list[tuple[int, list[int], dict[str, str]]] = [
    (10, [1, 2, 3], {"highway": "residential", "name": "甲路", "name:en": "Jia Road"}),
    (
        11,
        [2, 4, 5],
        {"highway": "primary", "oneway": "yes", "lanes": "3", "maxspeed": "60", "bridge": "yes"},
    ),
    (12, [5, 6], {"highway": "secondary", "oneway": "-1", "tunnel": "yes", "lanes": "4"}),
    (13, [6, 7], {"highway": "motorway", "ref": "G4", "maxspeed": "CN:motorway"}),
    (14, [7, 8, 9, 7], {"highway": "tertiary", "junction": "roundabout"}),
    (15, [3, 9], {"highway": "footway"}),
    (
        16,
        [3, 10],
        {
            "highway": "service",
            "lanes:forward": "2",
            "lanes:backward": "1",
            "maxspeed": "20 mph",
            "name:zh": "乙路",
            "bridge": "no",
        },
    ),
    (17, [10, 11, 12, 13, 10], {"highway": "unclassified", "lanes": "3"}),
    (18, [3, 14], {"highway": "construction"}),
    (19, [3, 14, 999, 15, 16], {"highway": "residential", "maxspeed": "signals"}),
    (20, [7, 17], {"highway": "trunk_link"}),
    (21, [9, 17], {"highway": "pedestrian", "area": "yes"}),
    (22, [17, 6], {"highway": "living_street", "oneway": "no"}),
]


def _write_osm(path: Path) -> Path:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6">']
    for node_id, (lon, lat) in _NODES.items():
        lines.append(f'<node id="{node_id}" version="1" lat="{lat}" lon="{lon}"/>')
    for way_id, refs, tags in _WAYS:
        lines.append(f'<way id="{way_id}" version="1">')
        lines += [f'<nd ref="{r}"/>' for r in refs]
        lines += [f'<tag k="{k}" v="{v}"/>' for k, v in tags.items()]
        lines.append("</way>")
    lines.append("</osm>")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path: Path) -> RoadNetwork:
    return RoadNetwork.from_osm(_write_osm(tmp_path / "small.osm"))


def test_small_file_segments(small: RoadNetwork) -> None:
    assert set(small.segments) == {
        # two-way residential split at node 2 (shared with way 11)
        "10:1:2", "10:2:1", "10:2:3", "10:3:2",
        # one-way primary through an unshared interior node
        "11:2:5",
        # oneway=-1 runs against the node order
        "12:6:5",
        # motorway is one-way by default
        "13:6:7",
        # a closed roundabout is split so both pieces get distinct ids
        "14:7:8", "14:8:7",
        # two-way service road
        "16:3:10", "16:10:3",
        # a two-way loop hanging off one node: split again where ids would collide
        "17:10:12", "17:12:10", "17:12:13", "17:13:12", "17:13:10", "17:10:13",
        # a way broken by a node missing from the extract
        "19:3:14", "19:14:3", "19:15:16", "19:16:15",
        # *_link is one-way by default
        "20:7:17",
        # explicit oneway=no
        "22:17:6", "22:6:17",
    }  # fmt: skip


def test_small_file_attributes(small: RoadNetwork) -> None:
    primary = small.get_segment("11:2:5")
    assert primary.coords == (_NODES[2], _NODES[4], _NODES[5])
    assert (primary.lanes, primary.speed_limit_kmh, primary.free_flow_kmh) == (3, 60.0, 60.0)
    assert primary.oneway and primary.bridge and not primary.tunnel

    reverse_only = small.get_segment("12:6:5")
    assert reverse_only.coords == (_NODES[6], _NODES[5])
    assert reverse_only.tunnel and reverse_only.oneway and reverse_only.lanes == 4

    motorway = small.get_segment("13:6:7")
    assert (motorway.ref, motorway.speed_limit_kmh, motorway.lanes) == ("G4", 120.0, None)

    forward, backward = small.get_segment("16:3:10"), small.get_segment("16:10:3")
    assert (forward.lanes, backward.lanes) == (2, 1)
    assert forward.speed_limit_kmh == pytest.approx(32.187, abs=1e-3)
    assert forward.name == "乙路" and forward.name_en is None and not forward.bridge

    loop = small.get_segment("17:10:12")
    assert loop.lanes == 2  # three lanes on a two-way road: two per direction, rounded up
    assert loop.free_flow_kmh == 30.0 and loop.speed_limit_kmh is None

    residential = small.get_segment("10:1:2")
    assert (residential.name, residential.name_en) == ("甲路", "Jia Road")
    assert residential.free_flow_kmh == 30.0 and residential.lanes is None
    assert small.get_segment("19:3:14").speed_limit_kmh is None  # maxspeed=signals
    assert small.get_segment("22:6:17").free_flow_kmh == 15.0
    for seg in small:
        assert seg.length_m == pytest.approx(
            sum(haversine_m(*a, *b) for a, b in zip(seg.coords, seg.coords[1:], strict=False))
        )


def test_small_file_graph(small: RoadNetwork) -> None:
    assert small.successors("10:1:2") == ["10:2:1", "10:2:3", "11:2:5"]
    assert small.predecessors("11:2:5") == ["10:1:2", "10:3:2"]
    assert small.successors("13:6:7") == ["14:7:8", "20:7:17"]
    assert small.successors("11:2:5") == []  # node 5 is only entered (way 12 runs 6 -> 5)
    assert small.out_segments(7) == ["14:7:8", "20:7:17"]
    assert small.in_segments(7) == ["13:6:7", "14:8:7"]

    length = {s.segment_id: s.length_m for s in small}
    assert small.shortest_path("10:1:2", "16:10:3") == (
        ["10:1:2", "10:2:3", "16:3:10", "16:10:3"],
        pytest.approx(length["10:2:3"] + length["16:3:10"]),
    )
    assert small.shortest_path("13:6:7", "22:6:17") == (
        ["13:6:7", "20:7:17", "22:17:6", "22:6:17"],
        pytest.approx(length["20:7:17"] + length["22:17:6"]),
    )
    assert small.shortest_path("13:6:7", "22:6:17", max_length_m=50.0) is None
    # The motorway's side of the map cannot be reached from the west (one-way ways).
    assert small.shortest_path("10:1:2", "13:6:7") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("60", 60.0),
        ("60 km/h", 60.0),
        ("40 mph", 64.37376),
        ("10 knots", 18.52),
        ("CN:motorway", 120.0),
        ("CN:urban", None),
        ("none", None),
        ("walk", None),
        ("0", None),
        ("", None),
        (None, None),
        ("50;60", 50.0),
    ],
)
def test_parse_maxspeed(value: str | None, expected: float | None) -> None:
    result = parse_maxspeed(value)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["", "1:2", "1:2:3:4", "a:b:c", "1:2:x"])
def test_malformed_segment_ids(bad: str) -> None:
    with pytest.raises(RoadNetworkError, match="malformed segment id"):
        parse_segment_id(bad)
    assert make_segment_id(*parse_segment_id("7:8:9")) == "7:8:9"


# --- speed limits: OSM, else the statutory defaults (实施条例 §45, §78) --------------------------


def _limit_of(tags: dict[str, str], *, backward: bool = False) -> tuple[float | None, str]:
    """The limit of a small way with these tags (its forward segment, or its backward one)."""
    net = RoadNetwork.from_ways([OsmWay(1, [(1, 114.30, 30.50), (2, 114.301, 30.50)], tags)])
    return speed_limit(net.get_segment("1:2:1" if backward else "1:1:2"))


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        # Tagged: OSM wins, whatever the layout.
        ({"highway": "residential", "maxspeed": "20"}, (20.0, "osm")),
        ({"highway": "motorway", "maxspeed": "CN:motorway"}, (120.0, "osm")),
        ({"highway": "primary", "lanes": "6", "maxspeed": "60"}, (60.0, "osm")),
        # §78: a motorway without maxspeed.
        ({"highway": "motorway", "ref": "G4"}, (120.0, "statutory")),
        # §45 (一), no centre line: two-way lanes=1, or a narrow road without lanes.
        ({"highway": "tertiary", "lanes": "1"}, (30.0, "statutory")),
        ({"highway": "tertiary", "lanes": "1", "ref": "X012"}, (40.0, "statutory")),
        ({"highway": "residential"}, (30.0, "statutory")),
        ({"highway": "service", "oneway": "yes"}, (30.0, "statutory")),
        ({"highway": "living_street"}, (30.0, "statutory")),
        ({"highway": "unclassified", "ref": "Y003"}, (40.0, "statutory")),
        # §45 (二), one lane per direction: two-way lanes=2, one-way lanes=1, or a two-way
        # road of tertiary class or above without lanes.
        ({"highway": "residential", "lanes": "2"}, (50.0, "statutory")),
        ({"highway": "secondary", "oneway": "yes", "lanes": "1"}, (50.0, "statutory")),
        ({"highway": "tertiary"}, (50.0, "statutory")),
        ({"highway": "primary", "ref": "G316"}, (70.0, "statutory")),
        ({"highway": "secondary", "ref": "S7;G50"}, (70.0, "statutory")),
        ({"highway": "motorway_link", "lanes": "1"}, (70.0, "statutory")),
        # An urban expressway (trunk without a G/S/X/Y ref) is a city road.
        ({"highway": "trunk", "lanes": "2"}, (50.0, "statutory")),
        # Nothing in §45: two or more lanes each way, one-way roads without lanes.
        ({"highway": "primary", "lanes": "4"}, (None, "none")),
        ({"highway": "trunk", "oneway": "yes", "lanes": "3", "ref": "G107"}, (None, "none")),
        ({"highway": "primary", "oneway": "yes"}, (None, "none")),
        ({"highway": "primary_link", "oneway": "yes"}, (None, "none")),
        ({"highway": "residential", "lanes": "4"}, (None, "none")),
    ],
)
def test_speed_limit_osm_then_statutory(tags: dict[str, str],
                                        expected: tuple[float | None, str]) -> None:
    assert _limit_of(tags) == expected


def test_speed_limit_per_direction() -> None:
    # lanes:forward=1 / lanes:backward=2: one lane this way (§45 二), two the other (nothing).
    tags = {"highway": "primary", "lanes": "3", "lanes:forward": "1", "lanes:backward": "2"}
    assert _limit_of(tags) == (50.0, "statutory")
    assert _limit_of(tags, backward=True) == (None, "none")
    # maxspeed:forward tags one direction; the other falls back to the statutory default.
    tags = {"highway": "tertiary", "lanes": "2", "maxspeed:forward": "40"}
    assert _limit_of(tags) == (40.0, "osm")
    assert _limit_of(tags, backward=True) == (50.0, "statutory")


def test_speed_limit_sources_are_the_events_vocabulary(net: RoadNetwork) -> None:
    sources = {speed_limit(s)[1] for s in net}
    assert sources <= set(SPEED_LIMIT_SOURCES)
    # Real OSM: few ways carry maxspeed, the rest get a statutory number where §45 has one.
    assert {"statutory", "none"} <= sources
    for s in net:
        kmh, source = speed_limit(s)
        assert (kmh is None) == (source == "none")
        if source == "statutory":
            assert kmh in (30.0, 40.0, 50.0, 70.0, 120.0)
