"""The simulator's driving model: legs, bus dwell at stops, incidents, ground truth."""

from __future__ import annotations

import pytest

from services.simulator.world import World, parse_incident
from shared.demo import generate_demo_region
from shared.errors import BadRequest
from shared.roadnet import RoadNetwork


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[RoadNetwork, object]:
    region = generate_demo_region(tmp_path_factory.mktemp("demo"))
    return RoadNetwork.from_osm(region.osm_path), region


def test_buses_stand_at_their_stops_and_move_between(demo: tuple[RoadNetwork, object]) -> None:
    net, region = demo
    pattern = region.bus_routes[0].patterns[0]  # type: ignore[attr-defined]
    key = f"{region.bus_routes[0].route_id}:{pattern.direction_id}"  # type: ignore[attr-defined]
    stops = {st.segment_id: st.offset_m for st in pattern.stops}
    world = World(net, seed=3, bus_routes=[(key, pattern.segment_ids)], bus_stops={key: stops})
    bus = next(v for v in world.make_fleet(40) if v.route_id)
    standing = moving = 0
    for t in range(0, 1800, 2):
        fix = world.fix(bus, float(t))
        if fix.speed_kmh == 0.0:
            standing += 1
            assert fix.segment_id in stops, "buses only stand at stops"
        else:
            moving += 1
    assert standing > 10 and moving > standing
    legs = world.drop_past(bus, 1800.0)
    dwelt = [leg for leg in legs if leg.dwell_s > 0]
    assert dwelt and all(15.0 <= leg.dwell_s <= 40.0 for leg in dwelt)
    # Truth speeds are driving speeds: a dwell does not lower them.
    assert all(leg.speed_kmh > 5.0 for leg in dwelt)


def test_incident_slows_vehicles_on_its_segment(demo: tuple[RoadNetwork, object]) -> None:
    net, region = demo
    seg = region.incident_segment_id  # type: ignore[attr-defined]
    world = World(net, seed=5, hot_segment=seg, hot_share=1.0)
    world.incidents.append(parse_incident(f"{seg}@0+3600:5", net))
    fleet = world.make_fleet(10)
    for t in range(0, 900, 5):
        for v in fleet:
            world.fix(v, float(t))
    legs = [leg for v in fleet for leg in world.drop_past(v, 900.0)
            if leg.segment.segment_id == seg]
    assert legs and all(leg.speed_kmh < 7.0 for leg in legs)


@pytest.mark.parametrize("spec", ["nope", "1:2:3@0+60:5", "demo@x+60:5", "demo@0+0:5",
                                  "demo@0+60:0", "demo@0+60:fast"])
def test_bad_incident_specs_are_rejected(demo: tuple[RoadNetwork, object], spec: str) -> None:
    net, region = demo
    with pytest.raises(BadRequest):
        parse_incident(spec, net, default_segment=region.incident_segment_id)  # type: ignore


def test_incident_spec_forms(demo: tuple[RoadNetwork, object]) -> None:
    net, region = demo
    seg = region.incident_segment_id  # type: ignore[attr-defined]
    inc = parse_incident("demo@1m+5m:8", net, default_segment=seg)
    assert (inc.segment_id, inc.start_s, inc.duration_s, inc.speed_kmh) == (seg, 60, 300, 8)
    assert parse_incident("demo", net, default_segment=seg).segment_id == seg
    assert not inc.active(59.0) and inc.active(60.0) and not inc.active(360.0)


