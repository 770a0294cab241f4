"""RoutingGraph: exact against networkx under free-flow, congested and closed weights; snapping,
partial segments, alternatives, avoid, errors and immutable weights."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import networkx as nx
import pytest

import shared.roadnet.routing as routing_module
from shared.demo import generate_demo_region
from shared.geo import haversine_m
from shared.roadnet import (
    NoRouteError,
    RoadNetwork,
    RoadNetworkError,
    RoutingGraph,
    Weights,
)
from tests.conftest import reference_file


@pytest.fixture(scope="module")
def demo_net(tmp_path_factory: pytest.TempPathFactory) -> RoadNetwork:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_region(out, size=1)
    return RoadNetwork.from_osm(out / "demo.osm")


@pytest.fixture(scope="module")
def wuhan_net() -> RoadNetwork:
    return RoadNetwork.from_osm(reference_file("osm", "wuhan_optics_valley.osm"))


@pytest.fixture(scope="module", params=["demo", "wuhan"])
def net(request: pytest.FixtureRequest, demo_net: RoadNetwork,
        wuhan_net: RoadNetwork) -> RoadNetwork:
    return demo_net if request.param == "demo" else wuhan_net


@pytest.fixture(scope="module")
def graph(net: RoadNetwork) -> RoutingGraph:
    return RoutingGraph(net)


@pytest.fixture(params=["alt", "whole"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
           graph: RoutingGraph) -> Iterator[str]:
    # Both engines must be exact: force every query to one of them.
    monkeypatch.setattr(graph, "_alt_limit_s", math.inf if request.param == "alt" else -1.0)
    yield request.param


def _congested(graph: RoutingGraph, net: RoadNetwork, seed: int) -> Weights:
    rng = random.Random(seed)
    ids = list(net.segments)
    slow = {s: net.segments[s].free_flow_kmh * rng.uniform(0.1, 0.9)
            for s in rng.sample(ids, len(ids) // 3)}
    return graph.weights_from_speeds(slow).with_closed(rng.sample(ids, max(1, len(ids) // 50)))


def _pairs(g: nx.MultiDiGraph, n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    nodes = sorted(g.nodes)
    return [(rng.choice(nodes), rng.choice(nodes)) for _ in range(n)]


def _nx_time(g: nx.MultiDiGraph, a: int, b: int) -> float:
    try:
        return float(nx.bidirectional_dijkstra(g, a, b, weight="travel_time_s")[0])
    except nx.NetworkXNoPath:
        return math.inf


@pytest.mark.parametrize("kind", ["free", "congested"])
def test_fastest_equals_networkx(graph: RoutingGraph, net: RoadNetwork, engine: str,
                                 kind: str) -> None:
    weights = graph.free_flow() if kind == "free" else _congested(graph, net, 3)
    g = graph.nx_graph(weights)
    pairs = _pairs(g, 120, 11)
    many = graph.fastest_many(pairs, weights)
    for (a, b), t_many in zip(pairs, many, strict=True):
        expected = _nx_time(g, a, b)
        route = graph.fastest(a, b, weights)
        if expected == math.inf:
            assert route is None and t_many == math.inf
            continue
        assert route is not None
        assert route.travel_time_s == pytest.approx(expected, abs=1e-6)
        assert t_many == pytest.approx(expected, abs=1e-6)
        # The segments are a connected drive from a to b costing what is reported.
        if route.segment_ids:
            segs = [net.get_segment(s) for s in route.segment_ids]
            assert segs[0].from_node == a and segs[-1].to_node == b
            assert all(x.to_node == y.from_node for x, y in pairwise(segs))
        assert graph.travel_time(route.segment_ids, weights) == pytest.approx(
            route.travel_time_s, abs=1e-6)


def test_weights_are_clamped_to_free_flow_and_speeds_capped(graph: RoutingGraph,
                                                             net: RoadNetwork) -> None:
    seg = next(iter(net))
    free_s = seg.length_m / (seg.free_flow_kmh / 3.6)
    w = graph.weights({seg.segment_id: free_s / 10})
    assert w.time_s(seg.segment_id) == pytest.approx(free_s)
    fast = graph.weights_from_speeds({seg.segment_id: seg.free_flow_kmh * 5})
    assert fast.time_s(seg.segment_id) == pytest.approx(free_s)
    stopped = graph.weights_from_speeds({seg.segment_id: 0.0})
    assert stopped.time_s(seg.segment_id) == pytest.approx(seg.length_m / (0.5 / 3.6))
    closed = graph.weights({seg.segment_id: math.inf})
    assert closed.time_s(seg.segment_id) == math.inf
    with pytest.raises(RoadNetworkError):
        graph.weights({"1:2:3": 10.0})
    with pytest.raises(RoadNetworkError):
        graph.weights({seg.segment_id: math.nan})


def test_weights_are_immutable(graph: RoutingGraph) -> None:
    w = graph.free_flow()
    with pytest.raises(AttributeError):
        w.as_of = None
    with pytest.raises(ValueError):
        w.array()[0] = 1.0
    seg_id = graph.network.get_segment(next(iter(graph.network.segments))).segment_id
    closed = w.with_closed([seg_id])
    assert closed.time_s(seg_id) == math.inf and w.time_s(seg_id) < math.inf


def test_with_closed_avoids_the_segment_or_raises(graph: RoutingGraph, net: RoadNetwork,
                                                  engine: str) -> None:
    weights = graph.free_flow()
    g = graph.nx_graph(weights)
    for a, b in _pairs(g, 40, 5):
        route = graph.fastest(a, b, weights)
        if route is None or not route.segment_ids:
            continue
        blocked = route.segment_ids[len(route.segment_ids) // 2]
        closed = weights.with_closed([blocked])
        detour = graph.fastest(a, b, closed)
        assert detour is None or blocked not in detour.segment_ids
        if detour is not None:
            assert detour.travel_time_s >= route.travel_time_s - 1e-9
    # Closing everything out of a node leaves no route from it.
    a = next(iter(net)).from_node
    shut = weights.with_closed(net.out_segments(a))
    b = next(s.to_node for s in net if s.from_node != a and s.to_node != a)
    assert graph.fastest(a, b, shut) is None
    lon, lat = net.node_lonlat(a)
    with pytest.raises(NoRouteError) as err:
        graph.route((lon, lat), net.node_lonlat(b), shut.with_closed(net.in_segments(a)))
    assert err.value.http_status == 404 and err.value.code == "no_route"


def _point(seg_coords: tuple[tuple[float, float], ...], f: float) -> tuple[float, float]:
    (x1, y1), (x2, y2) = seg_coords[0], seg_coords[1]
    return x1 + (x2 - x1) * f, y1 + (y2 - y1) * f


def test_route_on_one_long_segment_costs_only_the_part_driven(demo_net: RoadNetwork) -> None:
    graph = RoutingGraph(demo_net)
    seg = max((s for s in demo_net if len(s.coords) == 2 and s.oneway), key=lambda s: s.length_m)
    a, b = _point(seg.coords, 0.2), _point(seg.coords, 0.7)
    weights = graph.free_flow()
    [route] = graph.route(a, b, weights)
    assert route.segment_ids == (seg.segment_id,)
    assert route.length_m == pytest.approx(0.5 * seg.length_m, rel=1e-3)
    assert route.travel_time_s == pytest.approx(
        0.5 * weights.time_s(seg.segment_id), rel=1e-3)
    assert route.from_snap is not None and route.to_snap is not None
    assert route.coords[0] == pytest.approx((route.from_snap.lon, route.from_snap.lat))
    assert route.coords[-1] == pytest.approx((route.to_snap.lon, route.to_snap.lat))
    geo = route.geojson()
    assert geo["type"] == "LineString" and len(geo["coordinates"]) >= 2


def test_route_counts_only_the_driven_parts_of_first_and_last(graph: RoutingGraph,
                                                             net: RoadNetwork,
                                                             engine: str) -> None:
    rng = random.Random(8)
    weights = _congested(graph, net, 4)
    segments = [s for s in net if s.length_m > 60]
    checked = 0
    for _ in range(60):
        s1, s2 = rng.sample(segments, 2)
        try:
            [route] = graph.route(_point(s1.coords, 0.5), _point(s2.coords, 0.5), weights)
        except NoRouteError:
            continue
        assert route.from_snap is not None and route.to_snap is not None
        ids = route.segment_ids
        assert ids[0] == route.from_snap.segment_id and ids[-1] == route.to_snap.segment_id
        if len(ids) < 2:
            continue
        first, last = net.get_segment(ids[0]), net.get_segment(ids[-1])
        head = 1 - route.from_snap.offset_m / first.length_m
        tail = route.to_snap.offset_m / last.length_m
        expected = (head * weights.time_s(ids[0]) + tail * weights.time_s(ids[-1])
                    + graph.travel_time(ids[1:-1], weights))
        assert route.travel_time_s == pytest.approx(expected, rel=1e-9)
        # Exact: no cheaper drive from the start point's node options to the end's.
        g = graph.nx_graph(weights)
        best = _nx_time(g, first.to_node, last.from_node)
        assert (head * weights.time_s(ids[0]) + best + tail * weights.time_s(ids[-1])
                == pytest.approx(expected, abs=1e-6))
        driven = sum(haversine_m(*p, *q) for p, q in pairwise(route.coords))
        assert driven == pytest.approx(route.length_m, rel=1e-3, abs=0.5)
        checked += 1
        if checked >= 15:
            break
    assert checked >= 5


def test_alternatives_are_distinct_ordered_and_truly_timed(graph: RoutingGraph,
                                                          net: RoadNetwork,
                                                          engine: str) -> None:
    rng = random.Random(2)
    weights = _congested(graph, net, 6)
    segments = list(net)
    with_alternatives = 0
    for _ in range(30):
        s1, s2 = rng.sample(segments, 2)
        try:
            routes = graph.route(_point(s1.coords, 0.5), _point(s2.coords, 0.5), weights,
                                 alternatives=2)
        except NoRouteError:
            continue
        assert len(routes) <= 3
        times = [r.travel_time_s for r in routes]
        assert times == sorted(times)
        assert len({r.segment_ids for r in routes}) == len(routes)
        for r in routes:
            assert times[0] - 1e-9 <= r.travel_time_s <= 1.5 * times[0] + 1e-6
            assert r.from_snap is not None and r.to_snap is not None
            first, last = net.get_segment(r.segment_ids[0]), net.get_segment(r.segment_ids[-1])
            if len(r.segment_ids) >= 2:
                expected = ((1 - r.from_snap.offset_m / first.length_m)
                            * weights.time_s(first.segment_id)
                            + graph.travel_time(r.segment_ids[1:-1], weights)
                            + r.to_snap.offset_m / last.length_m * weights.time_s(last.segment_id))
                assert r.travel_time_s == pytest.approx(expected, rel=1e-9)
        with_alternatives += len(routes) > 1
    assert with_alternatives >= 3


def test_avoid_keeps_the_route_off_those_segments(graph: RoutingGraph, net: RoadNetwork,
                                                 engine: str) -> None:
    rng = random.Random(9)
    weights = graph.free_flow()
    segments = [s for s in net if s.length_m > 50]
    done = 0
    for _ in range(40):
        s1, s2 = rng.sample(segments, 2)
        a, b = _point(s1.coords, 0.5), _point(s2.coords, 0.5)
        try:
            [route] = graph.route(a, b, weights)
        except NoRouteError:
            continue
        middle = route.segment_ids[1:-1]
        if not middle:
            continue
        avoid = [middle[len(middle) // 2]]
        try:
            [detour] = graph.route(a, b, weights, avoid=avoid)
        except NoRouteError:
            continue
        assert avoid[0] not in detour.segment_ids
        assert detour.travel_time_s >= route.travel_time_s - 1e-9
        done += 1
        if done >= 8:
            break
    assert done >= 3


def test_a_point_far_from_any_road_is_a_400(graph: RoutingGraph, net: RoadNetwork) -> None:
    min_lon, min_lat, _, _ = net.bbox()
    far = (min_lon - 0.05, min_lat - 0.05)
    near = net.node_lonlat(next(iter(net)).from_node)
    with pytest.raises(RoadNetworkError) as err:
        graph.route(far, near, graph.free_flow())
    assert err.value.http_status == 400 and not isinstance(err.value, NoRouteError)
    with pytest.raises(RoadNetworkError):
        graph.route(near, far, graph.free_flow(), snap_radius_m=50.0)


def test_weights_of_another_graph_are_refused(demo_net: RoadNetwork,
                                              wuhan_net: RoadNetwork) -> None:
    a, b = RoutingGraph(demo_net, landmarks=2), RoutingGraph(wuhan_net, landmarks=2)
    seg = next(iter(demo_net))
    with pytest.raises(RoadNetworkError):
        a.fastest(seg.from_node, seg.to_node, b.free_flow())


def test_without_landmarks_still_exact(demo_net: RoadNetwork) -> None:
    graph = RoutingGraph(demo_net, landmarks=0)
    weights = _congested(graph, demo_net, 1)
    g = graph.nx_graph(weights)
    for a, b in _pairs(g, 30, 4):
        route = graph.fastest(a, b, weights)
        expected = _nx_time(g, a, b)
        assert (route.travel_time_s if route else math.inf) == pytest.approx(expected, abs=1e-6)


def test_module_keeps_its_landmark_count_bounded(demo_net: RoadNetwork) -> None:
    graph = RoutingGraph(demo_net, landmarks=3)
    assert len(graph.landmark_nodes()) == 3
    assert routing_module._ACTIVE_LANDMARKS >= 1


def test_nx_graph_leaves_closed_segments_out(graph: RoutingGraph, net: RoadNetwork) -> None:
    seg = next(iter(net))
    g = graph.nx_graph(graph.free_flow().with_closed([seg.segment_id]))
    assert not g.has_edge(seg.from_node, seg.to_node, key=seg.segment_id)
    assert net.graph.has_edge(seg.from_node, seg.to_node, key=seg.segment_id)
    other = next(s for s in net if s.segment_id != seg.segment_id)
    data = g.edges[other.from_node, other.to_node, other.segment_id]
    assert data["travel_time_s"] == pytest.approx(other.length_m / (other.free_flow_kmh / 3.6))


def test_demo_file_is_written(tmp_path: Path) -> None:
    # RoutingGraph on a network read back from a freshly written file, end to end.
    generate_demo_region(tmp_path, size=1)
    net = RoadNetwork.from_osm(tmp_path / "demo.osm")
    graph = RoutingGraph(net, landmarks=4)
    seg = next(iter(net))
    route = graph.fastest(seg.from_node, seg.to_node, graph.free_flow())
    assert route is not None and route.travel_time_s <= graph.free_flow().time_s(seg.segment_id)
