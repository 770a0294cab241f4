"""The generated demo region: deterministic OSM + GTFS that load in the real tools.

gtfs-kit dropped its validator in release 10 (it defers to MobilityData's canonical validator,
a Java tool), so besides loading the feed in gtfs-kit and its ``assess_quality`` verdict, the
checks below apply the canonical validator's error rules that matter for a feed like this one:
required files and fields, unique keys, references, time and distance ordering, calendar and
timezone validity, translations pointing at real records, stops near their trip's shape.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import zipfile
from collections import defaultdict
from datetime import date
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import gtfs_kit
import networkx as nx
import osmium
import pytest
import shapely

from shared.demo import (
    SIZE_100K,
    DemoRegion,
    generate_demo_region,
    grid_lines_for_size,
    segments_for_size,
    size_for_segments,
)
from shared.geo import LocalProjection, bearing_deg
from shared.roadnet import RoadNetwork


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def net(region: DemoRegion) -> RoadNetwork:
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture(scope="module")
def osm(region: DemoRegion) -> dict[str, dict[int, tuple[dict[str, str], object]]]:
    """Every OSM object by type and id: (tags, payload) read back with plain pyosmium."""
    out: dict[str, dict[int, tuple[dict[str, str], object]]] = {
        "node": {},
        "way": {},
        "relation": {},
    }
    for obj in osmium.FileProcessor(str(region.osm_path)):
        tags = {t.k: t.v for t in obj.tags}
        if isinstance(obj, osmium.osm.Node):
            out["node"][obj.id] = (tags, (obj.location.lon, obj.location.lat))
        elif isinstance(obj, osmium.osm.Way):
            out["way"][obj.id] = (tags, [n.ref for n in obj.nodes])
        elif isinstance(obj, osmium.osm.Relation):
            out["relation"][obj.id] = (tags, [(m.type, m.ref, m.role) for m in obj.members])
    return out


@pytest.fixture(scope="module")
def gtfs(region: DemoRegion) -> dict[str, list[dict[str, str]]]:
    with zipfile.ZipFile(region.gtfs_path) as archive:
        return {
            name.removesuffix(".txt"): list(
                csv.DictReader(io.StringIO(archive.read(name).decode("utf-8")))
            )
            for name in archive.namelist()
        }


# --- determinism and size --------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_arguments_give_byte_identical_files(region: DemoRegion, tmp_path: Path) -> None:
    again = generate_demo_region(tmp_path / "again")
    assert _digest(again.osm_path) == _digest(region.osm_path)
    assert _digest(again.gtfs_path) == _digest(region.gtfs_path)
    assert again == generate_demo_region(tmp_path / "again")  # rewriting in place is fine too
    other = generate_demo_region(tmp_path / "other", seed=8)
    assert _digest(other.osm_path) != _digest(region.osm_path)


def test_size_scales_the_segment_count(region: DemoRegion, tmp_path: Path) -> None:
    assert 1000 < region.segment_count < 5000
    assert segments_for_size(1) == region.segment_count
    bigger = generate_demo_region(tmp_path / "size3", size=3)
    assert bigger.segment_count == segments_for_size(3)
    assert 2.5 * region.segment_count < bigger.segment_count < 3.5 * region.segment_count
    assert grid_lines_for_size(4) == 2 * grid_lines_for_size(1)
    with pytest.raises(ValueError, match="size must be >= 1"):
        grid_lines_for_size(0)


def test_size_for_segments_is_the_smallest_size_reaching_the_count() -> None:
    size = size_for_segments(10_000)
    assert segments_for_size(size) >= 10_000 > segments_for_size(size - 1)
    assert SIZE_100K >= 1


@pytest.mark.slow
def test_documented_benchmark_size_reaches_100k_segments() -> None:
    assert segments_for_size(SIZE_100K) >= 100_000 > segments_for_size(SIZE_100K - 1)


# --- OSM ---------------------------------------------------------------------------------------


def test_osm_loads_into_the_same_network(region: DemoRegion, net: RoadNetwork) -> None:
    assert len(net) == region.segment_count
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    assert min_lon < 114.30 < max_lon and min_lat < 30.55 < max_lat
    # Every segment can reach every other: the demo city has no trapped one-way corners.
    assert nx.is_strongly_connected(net.graph)


def test_osm_file_is_well_formed_for_any_osm_tool(region: DemoRegion, osm: dict) -> None:
    text = region.osm_path.read_text(encoding="utf-8")
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6"')
    assert "<bounds " in text
    nodes, ways, relations = osm["node"], osm["way"], osm["relation"]
    assert all(i > 0 for kind in osm.values() for i in kind)
    for _, refs in ways.values():
        assert len(refs) >= 2 and all(r in nodes for r in refs)
    for _, members in relations.values():
        for kind, ref, _role in members:
            assert ref in {"n": nodes, "w": ways, "r": relations}[kind]
    for _, (lon, lat) in nodes.values():
        assert 113.5 < lon < 115.0 and 30.0 < lat < 31.0
    # pyosmium's own reader agrees on the counts with the XML text.
    assert text.count("<node ") == len(nodes)
    assert text.count("<way ") == len(ways)
    assert text.count("<relation ") == len(relations)


def test_roads_have_real_tags(net: RoadNetwork, osm: dict) -> None:
    classes = {s.road_class for s in net}
    assert {"motorway", "motorway_link", "primary", "secondary", "tertiary"} <= classes
    assert {"residential", "service"} <= classes
    named = [s for s in net if s.road_class == "primary"]
    assert all(s.name and s.name_en for s in named)
    jiefang = [s for s in net if s.name == "解放大道"]
    assert jiefang and all(s.name_en == "Jiefang Avenue" for s in jiefang)
    assert all((s.lanes, s.speed_limit_kmh) == (3, 60.0) for s in jiefang)
    one_way_streets = [s for s in net if s.road_class == "residential" and s.oneway]
    assert one_way_streets
    oneway_values = {tags.get("oneway") for tags, _ in osm["way"].values()}
    assert {"yes", "-1"} <= oneway_values
    motorway = [s for s in net if s.road_class == "motorway"]
    assert all(s.oneway and s.ref == "S1" for s in motorway)


def test_river_crosses_the_city(region: DemoRegion, osm: dict, net: RoadNetwork) -> None:
    tags, refs = osm["way"][region.river_way_id]
    assert tags["waterway"] == "river"
    assert (tags["name"], tags["name:en"]) == (region.river_name, region.river_name_en)
    lons = [osm["node"][r][1][0] for r in refs]
    min_lon, _, max_lon, _ = net.bbox()
    assert min(lons) < min_lon and max(lons) > max_lon


def test_bridges_and_tunnel(region: DemoRegion, net: RoadNetwork, osm: dict) -> None:
    assert [b.name_en for b in region.bridges] == ["First Bridge", "Second Bridge"]
    assert [t.name_en for t in region.tunnels] == ["Jiangcheng Tunnel"]
    assert region.bridges[0].name == "江城一桥" and region.tunnels[0].name == "江城隧道"
    for structure, flag, layer in (
        *((b, "bridge", "1") for b in region.bridges),
        *((t, "tunnel", "-1") for t in region.tunnels),
    ):
        assert structure.way_ids and structure.segment_ids
        for way_id in structure.way_ids:
            tags, _ = osm["way"][way_id]
            assert tags[flag] == "yes" and tags["layer"] == layer
            assert tags["name"] == structure.name and tags["name:en"] == structure.name_en
        for sid in structure.segment_ids:
            seg = net.get_segment(sid)
            assert getattr(seg, flag) and seg.name == structure.name
            assert seg.road_class == structure.road_class
    # First Bridge is a two-way arterial; the ring's crossings carry both carriageways.
    first = region.bridges[0]
    assert {net.find_reverse(s) for s in first.segment_ids} == set(first.segment_ids)
    assert len(region.bridges[1].way_ids) == 2 and len(region.tunnels[0].way_ids) == 2


def test_bridges_cross_the_river(region: DemoRegion, net: RoadNetwork, osm: dict) -> None:
    _, refs = osm["way"][region.river_way_id]
    river = shapely.LineString([osm["node"][r][1] for r in refs])
    for structure in (*region.bridges, *region.tunnels):
        lines = [shapely.LineString(net.get_segment(s).coords) for s in structure.segment_ids]
        assert any(line.intersects(river) for line in lines), structure.name
    # Nothing else crosses the water.
    on_structure = {s for st in (*region.bridges, *region.tunnels) for s in st.segment_ids}
    for seg in net:
        if seg.segment_id not in on_structure:
            assert not shapely.LineString(seg.coords).intersects(river), seg.segment_id


# --- bus routes ----------------------------------------------------------------------------------


def test_bus_routes_are_connected_paths_across_the_river(
    region: DemoRegion, net: RoadNetwork
) -> None:
    assert len(region.bus_routes) >= 3
    first_bridge = set(region.bridges[0].segment_ids)
    for route in region.bus_routes:
        assert [p.direction_id for p in route.patterns] == [0, 1]
        assert route.segment_ids == route.patterns[0].segment_ids
        for pattern in route.patterns:
            segments = pattern.segment_ids
            assert len(segments) >= 10
            for a, b in pairwise(segments):
                assert b in net.successors(a), (route.route_id, a, b)
                assert b != net.find_reverse(a), "buses do not U-turn"
            assert first_bridge & set(segments), route.route_id
            assert pattern.length_m == pytest.approx(
                sum(net.get_segment(s).length_m for s in segments)
            )
            assert all(
                net.get_segment(s).road_class not in ("motorway", "motorway_link") for s in segments
            )


def test_bus_stops_lie_along_the_route(region: DemoRegion, net: RoadNetwork, osm: dict) -> None:
    for route in region.bus_routes:
        for pattern in route.patterns:
            stops = pattern.stops
            assert len(stops) >= 5
            assert stops[0].segment_id == pattern.segment_ids[0]
            assert stops[-1].segment_id == pattern.segment_ids[-1]
            distances = [s.distance_m for s in stops]
            assert distances == sorted(distances) and len(set(distances)) == len(distances)
            for stop in stops:
                tags, (lon, lat) = osm["node"][stop.node_id]
                assert stop.stop_id == str(stop.node_id) == tags["gtfs:stop_id"]
                assert tags["highway"] == "bus_stop" and tags["public_transport"] == "platform"
                assert (tags["name"], tags["name:en"]) == (stop.name, stop.name_en)
                assert (lon, lat) == pytest.approx((stop.lon, stop.lat), abs=1e-7)
                index = pattern.segment_ids.index(stop.segment_id)
                before = sum(net.get_segment(s).length_m for s in pattern.segment_ids[:index])
                assert stop.distance_m == pytest.approx(before + stop.offset_m)
                # The platform is at the kerb beside the segment it serves (right-hand side).
                near = {c.segment_id: c for c in net.nearest(lon, lat, radius_m=20.0)}
                assert stop.segment_id in near
                kerb = near[stop.segment_id]
                to_stop = bearing_deg(kerb.lon, kerb.lat, lon, lat)
                assert 45.0 < (to_stop - kerb.bearing_deg) % 360.0 < 135.0


def test_route_relations_in_osm(region: DemoRegion, osm: dict, net: RoadNetwork) -> None:
    relations = osm["relation"]
    refs = set()
    for route in region.bus_routes:
        master_tags, members = relations[route.relation_id]
        assert master_tags["type"] == "route_master" and master_tags["route_master"] == "bus"
        assert [ref for _, ref, _ in members] == [p.relation_id for p in route.patterns]
        for pattern in route.patterns:
            tags, members = relations[pattern.relation_id]
            assert (tags["type"], tags["route"], tags["ref"]) == ("route", "bus", route.short_name)
            refs.add(tags["ref"])
            platforms = [ref for kind, ref, role in members if role == "platform"]
            assert platforms == [s.node_id for s in pattern.stops]
            ways = [ref for kind, ref, _ in members if kind == "w"]
            driven = [net.get_segment(s).way_id for s in pattern.segment_ids]
            assert ways == [w for k, w in enumerate(driven) if k == 0 or driven[k - 1] != w]
    assert len(refs) >= 3


def test_incident_segment_is_on_the_bridge_approach(region: DemoRegion, net: RoadNetwork) -> None:
    seg = net.get_segment(region.incident_segment_id)
    assert seg.road_class == "primary" and not seg.bridge
    assert set(net.successors(seg.segment_id)) & set(region.bridges[0].segment_ids)
    routes_using = [
        r.route_id
        for r in region.bus_routes
        for p in r.patterns
        if region.incident_segment_id in p.segment_ids
    ]
    assert len(set(routes_using)) >= 2


# --- GTFS --------------------------------------------------------------------------------------


def test_gtfs_loads_in_gtfs_kit(region: DemoRegion) -> None:
    feed = gtfs_kit.read_feed(region.gtfs_path, dist_units="km")
    quality = dict(zip(*feed.assess_quality().to_dict("list").values(), strict=True))
    assert quality["assessment"] == "good feed"
    assert len(feed.routes) == len(region.bus_routes)
    dates = feed.get_dates()
    assert dates[0] <= "20260101" and dates[-1] >= "20271231"
    trips_2026 = feed.get_trips("20260704")
    trips_2027 = feed.get_trips("20271225")
    assert len(trips_2026) == len(trips_2027) == len(feed.trips)
    stats = feed.compute_trip_stats()
    assert (stats["distance"] > 2.0).all()  # km
    assert stats["speed"].between(15.0, 25.0).all()  # km/h, 25 km/h running plus dwell


def _seconds(value: str) -> int:
    h, m, s = (int(p) for p in value.split(":"))
    return h * 3600 + m * 60 + s


def _gtfs_problems(gtfs: dict[str, list[dict[str, str]]]) -> list[str]:
    """Errors under the GTFS Schedule reference (the canonical validator's error notices)."""
    problems: list[str] = []
    for required in ("agency", "stops", "routes", "trips", "stop_times", "calendar"):
        if not gtfs.get(required):
            problems.append(f"missing or empty {required}.txt")
    if problems:
        return problems

    def unique(table: str, *fields: str) -> set[tuple[str, ...]]:
        keys = [tuple(row[f] for f in fields) for row in gtfs[table]]
        if len(keys) != len(set(keys)):
            problems.append(f"duplicate key {fields} in {table}.txt")
        return set(keys)

    def present(table: str, *fields: str) -> None:
        for n, row in enumerate(gtfs[table], start=2):
            for f in fields:
                if not row.get(f):
                    problems.append(f"{table}.txt line {n}: missing required {f}")

    present("agency", "agency_name", "agency_url", "agency_timezone")
    present("stops", "stop_id", "stop_name", "stop_lat", "stop_lon")
    present("routes", "route_id", "route_type")
    present("trips", "route_id", "service_id", "trip_id")
    present("stop_times", "trip_id", "stop_id", "stop_sequence")
    present("calendar", "service_id", "start_date", "end_date")
    agencies = unique("agency", "agency_id")
    stops = unique("stops", "stop_id")
    routes = unique("routes", "route_id")
    trips = unique("trips", "trip_id")
    services = unique("calendar", "service_id")
    unique("stop_times", "trip_id", "stop_sequence")
    shapes = {(row["shape_id"],) for row in gtfs.get("shapes", [])}
    unique("shapes", "shape_id", "shape_pt_sequence")

    for row in gtfs["agency"]:
        ZoneInfo(row["agency_timezone"])  # raises on an unknown zone
        if not row["agency_url"].startswith(("http://", "https://")):
            problems.append("agency_url is not a URL")
    for row in gtfs["stops"]:
        if not (-90 <= float(row["stop_lat"]) <= 90 and -180 <= float(row["stop_lon"]) <= 180):
            problems.append(f"stop {row['stop_id']} has invalid coordinates")
    for row in gtfs["routes"]:
        if (row["agency_id"],) not in agencies:
            problems.append(f"route {row['route_id']} references unknown agency")
        if not (row.get("route_short_name") or row.get("route_long_name")):
            problems.append(f"route {row['route_id']} has no name")
        for f in ("route_color", "route_text_color"):
            if row.get(f) and not re.fullmatch(r"[0-9A-Fa-f]{6}", row[f]):
                problems.append(f"route {row['route_id']} {f} is not a hex colour")
    for row in gtfs["calendar"]:
        start = date(
            int(row["start_date"][:4]), int(row["start_date"][4:6]), int(row["start_date"][6:])
        )
        end = date(int(row["end_date"][:4]), int(row["end_date"][4:6]), int(row["end_date"][6:]))
        if start > end:
            problems.append(f"service {row['service_id']} ends before it starts")
    for row in gtfs["trips"]:
        if (row["route_id"],) not in routes:
            problems.append(f"trip {row['trip_id']} references unknown route")
        if (row["service_id"],) not in services:
            problems.append(f"trip {row['trip_id']} references unknown service")
        if row.get("shape_id") and (row["shape_id"],) not in shapes:
            problems.append(f"trip {row['trip_id']} references unknown shape")

    shape_points: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
    for row in gtfs.get("shapes", []):
        shape_points[row["shape_id"]].append(
            (
                int(row["shape_pt_sequence"]),
                float(row["shape_pt_lon"]),
                float(row["shape_pt_lat"]),
                float(row["shape_dist_traveled"]),
            )
        )
    for shape_id, points in shape_points.items():
        points.sort()
        if len(points) < 2 or any(b[3] < a[3] for a, b in pairwise(points)):
            problems.append(f"shape {shape_id} distances decrease or it has < 2 points")

    by_trip: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in gtfs["stop_times"]:
        by_trip[row["trip_id"]].append(row)
        if (row["trip_id"],) not in trips:
            problems.append(f"stop_time references unknown trip {row['trip_id']}")
        if (row["stop_id"],) not in stops:
            problems.append(f"stop_time references unknown stop {row['stop_id']}")
        for f in ("arrival_time", "departure_time"):
            if row[f] and not re.fullmatch(r"\d{1,3}:[0-5]\d:[0-5]\d", row[f]):
                problems.append(f"bad {f} {row[f]!r}")
    trip_shape = {row["trip_id"]: row.get("shape_id") for row in gtfs["trips"]}
    stop_pos = {
        row["stop_id"]: (float(row["stop_lon"]), float(row["stop_lat"])) for row in gtfs["stops"]
    }
    for trip_id in (t for (t,) in trips):
        rows = sorted(by_trip.get(trip_id, []), key=lambda r: int(r["stop_sequence"]))
        if len(rows) < 2:
            problems.append(f"trip {trip_id} has fewer than two stops")
            continue
        if not (rows[0]["arrival_time"] and rows[-1]["departure_time"]):
            problems.append(f"trip {trip_id} lacks first/last times")
        last_time = -1
        last_dist = -1.0
        for row in rows:
            arrival, departure = _seconds(row["arrival_time"]), _seconds(row["departure_time"])
            if arrival > departure or arrival < last_time:
                problems.append(f"trip {trip_id} times go backwards at {row['stop_sequence']}")
            last_time = departure
            dist = float(row["shape_dist_traveled"])
            if dist <= last_dist:
                problems.append(f"trip {trip_id} shape_dist_traveled not increasing")
            last_dist = dist
        shape = shape_points.get(trip_shape[trip_id] or "")
        if shape and last_dist > shape[-1][3] + 1e-3:
            problems.append(f"trip {trip_id} travels past the end of its shape")
    used_stops = {row["stop_id"] for row in gtfs["stop_times"]}
    if used_stops != {s for (s,) in stops}:
        problems.append("stops not served by any trip")
    if {row["route_id"] for row in gtfs["trips"]} != {r for (r,) in routes}:
        problems.append("routes without trips")

    # Stops more than 100 m from their trip's shape (canonical validator: stop_too_far_from_shape).
    checked: set[tuple[str, str]] = set()
    for row in gtfs["stop_times"]:
        key = (trip_shape.get(row["trip_id"]) or "", row["stop_id"])
        if key in checked or key[0] not in shape_points or key[1] not in stop_pos:
            continue
        checked.add(key)
        proj = LocalProjection(*stop_pos[key[1]])
        line = shapely.LineString([proj.to_xy(p[1], p[2]) for p in shape_points[key[0]]])
        distance = line.distance(shapely.Point(0.0, 0.0))
        if distance > 100.0:
            problems.append(f"stop {key[1]} is {distance:.0f} m from shape {key[0]}")

    tables = {"stops": "stop_id", "routes": "route_id", "trips": "trip_id"}
    for row in gtfs.get("translations", []):
        table = row["table_name"]
        if table not in tables:
            problems.append(f"translation for unknown table {table}")
        elif row["record_id"] and not any(
            r[tables[table]] == row["record_id"] for r in gtfs[table]
        ):
            problems.append(f"translation for unknown {table} record {row['record_id']}")
        elif bool(row["record_id"]) == bool(row["field_value"]):
            problems.append("translation needs exactly one of record_id and field_value")
    info = gtfs.get("feed_info", [])
    if info and not (info[0]["feed_publisher_name"] and info[0]["feed_lang"]):
        problems.append("feed_info lacks publisher or language")
    return problems


def test_gtfs_has_no_errors(gtfs: dict[str, list[dict[str, str]]]) -> None:
    assert set(gtfs) >= {
        "agency",
        "stops",
        "routes",
        "trips",
        "stop_times",
        "calendar",
        "shapes",
        "feed_info",
    }
    assert _gtfs_problems(gtfs) == []


def test_gtfs_checker_catches_broken_feeds(gtfs: dict[str, list[dict[str, str]]]) -> None:
    broken = {name: [dict(row) for row in rows] for name, rows in gtfs.items()}
    broken["stop_times"][1]["stop_id"] = "nope"
    broken["trips"][0]["service_id"] = "WEEKDAY"
    problems = _gtfs_problems(broken)
    assert any("unknown stop nope" in p for p in problems)
    assert any("unknown service" in p for p in problems)


def test_gtfs_timetable(region: DemoRegion, gtfs: dict[str, list[dict[str, str]]]) -> None:
    (calendar,) = gtfs["calendar"]
    assert all(
        calendar[d] == "1"
        for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
    assert calendar["start_date"] <= "20260101" and calendar["end_date"] >= "20271231"
    starts: dict[tuple[str, str], list[int]] = defaultdict(list)
    first_time = {}
    for row in gtfs["stop_times"]:
        if row["stop_sequence"] == "1":
            first_time[row["trip_id"]] = _seconds(row["departure_time"])
    for trip in gtfs["trips"]:
        starts[(trip["route_id"], trip["direction_id"])].append(first_time[trip["trip_id"]])
    assert len(starts) == 2 * len(region.bus_routes)
    for times in starts.values():
        times.sort()
        assert times[0] == 6 * 3600 and 22 * 3600 + 50 * 60 <= times[-1] <= 23 * 3600
        assert {b - a for a, b in pairwise(times)} == {600}


def test_gtfs_matches_the_region(
    region: DemoRegion, gtfs: dict[str, list[dict[str, str]]], net: RoadNetwork
) -> None:
    stops = {row["stop_id"]: row for row in gtfs["stops"]}
    shapes: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for row in gtfs["shapes"]:
        shapes[row["shape_id"]].append(
            (
                float(row["shape_pt_lon"]),
                float(row["shape_pt_lat"]),
                float(row["shape_dist_traveled"]),
            )
        )
    speed_ms = 25 / 3.6
    for route in region.bus_routes:
        for pattern in route.patterns:
            for stop in pattern.stops:
                row = stops[stop.stop_id]
                assert row["stop_name"] == stop.name
                assert (float(row["stop_lon"]), float(row["stop_lat"])) == pytest.approx(
                    (stop.lon, stop.lat), abs=1e-7
                )
            shape = shapes[pattern.shape_id]
            assert shape[-1][2] * 1000 == pytest.approx(pattern.length_m, abs=0.5)
            # The shape is the road geometry: every point is a vertex of the network.
            for lon, lat, _ in shape[:: max(1, len(shape) // 40)]:
                assert net.nearest(lon, lat, radius_m=0.5), (lon, lat)
            trip_id = next(
                t["trip_id"]
                for t in gtfs["trips"]
                if t["route_id"] == route.route_id
                and t["direction_id"] == str(pattern.direction_id)
            )
            rows = sorted(
                (r for r in gtfs["stop_times"] if r["trip_id"] == trip_id),
                key=lambda r: int(r["stop_sequence"]),
            )
            assert [r["stop_id"] for r in rows] == [s.stop_id for s in pattern.stops]
            for a, b, sa, sb in zip(rows, rows[1:], pattern.stops, pattern.stops[1:], strict=False):
                run = _seconds(b["arrival_time"]) - _seconds(a["departure_time"])
                assert run == pytest.approx((sb.distance_m - sa.distance_m) / speed_ms, abs=1.0)
                assert float(b["shape_dist_traveled"]) == pytest.approx(
                    sb.distance_m / 1000, abs=1e-4
                )
            dwell = {
                _seconds(r["departure_time"]) - _seconds(r["arrival_time"]) for r in rows[1:-1]
            }
            assert dwell == {30}
    names = {row["stop_id"]: row["stop_name"] for row in gtfs["stops"]}
    translated = {
        row["record_id"]: row["translation"]
        for row in gtfs["translations"]
        if row["table_name"] == "stops"
    }
    assert set(translated) == set(names)
    assert all(re.fullmatch(r"[A-Za-z0-9 &]+", v) for v in translated.values())


def test_region_metadata(region: DemoRegion) -> None:
    assert region.name == "江城" and region.timezone == "Asia/Shanghai"
    assert region.osm_path.name == "demo.osm" and region.gtfs_path.name == "demo_gtfs.zip"
    lon, lat = region.center
    assert math.isclose(lon, 114.30) and math.isclose(lat, 30.55)
    min_lon, min_lat, max_lon, max_lat = region.bbox
    assert min_lon < lon < max_lon and min_lat < lat < max_lat
