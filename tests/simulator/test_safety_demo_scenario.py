"""The safety demo's four vehicles, checked on their own ground truth (no rules involved): each
breaks exactly one rule — speed, time of day, a closed tunnel, hours without rest — and keeps
every other, with the files the demo writes readable by the code that reads them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import orjson
import pytest

from services.bigdata.geofences import parse_collection
from services.simulator.safety_demo import (
    LOCAL_TZ,
    MARGIN_KMH,
    ScenarioVehicle,
    clock_start,
    departure,
    is_night,
    limit_for,
    plan_scenario,
    scenario_day,
    write_files,
)
from services.simulator.world import Fix, World
from services.warning.rules.common import load_coach_routes
from shared.demo import DemoRegion, generate_demo_region
from shared.roadnet import RoadNetwork

STEP_S = 5.0
START = clock_start(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))  # 2026-03-02 02:00 local


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[RoadNetwork, DemoRegion]:
    region = generate_demo_region(tmp_path_factory.mktemp("demo"))
    return RoadNetwork.from_osm(region.osm_path), region


@pytest.fixture(scope="module")
def scenario(demo: tuple[RoadNetwork, DemoRegion]) -> dict[str, ScenarioVehicle]:
    net, region = demo
    return {v.key: v for v in plan_scenario(net, region.tunnels[0].segment_ids)}


@dataclass(frozen=True, slots=True)
class Sample:
    at: datetime
    fix: Fix


def drive(net: RoadNetwork, v: ScenarioVehicle, *, hours: float) -> Iterator[Sample]:
    """The vehicle's true fixes every 5 s from the clock's start, as the simulator scripts it."""
    world = World(net, seed=1)
    [vehicle] = world.make_fleet(1)
    depart_s = (departure(v, scenario_day(START)) - START).total_seconds()
    world.plan_script(vehicle, depart_s, v.path)
    t = 0.0
    while t < hours * 3600:
        yield Sample(START + timedelta(seconds=t), world.fix(vehicle, t))
        t += STEP_S


def local(at: datetime) -> time:
    return at.astimezone(LOCAL_TZ).time()


def moving(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.fix.speed_kmh > 0]


def assert_clean(net: RoadNetwork, v: ScenarioVehicle, samples: list[Sample],
                 allowed: frozenset[int] | set[int] = frozenset()) -> None:
    """Every moving fix (but those allowed) at least the margin under the binding limit."""
    for i, s in enumerate(samples):
        if s.fix.speed_kmh == 0 or i in allowed:
            continue
        limit = limit_for(net.get_segment(s.fix.segment_id), v.vehicle_class,
                          night=is_night(local(s.at)))
        assert s.fix.speed_kmh <= limit - MARGIN_KMH + 1e-6, (v.key, s)


def test_four_terminals_with_their_classes(scenario: dict[str, ScenarioVehicle]) -> None:
    assert sorted(scenario) == ["fatigue", "night", "speeding", "tunnel"]
    assert {k: v.vehicle_class for k, v in scenario.items()} == {
        "speeding": "dangerous_goods", "night": "coach", "tunnel": "dangerous_goods",
        "fatigue": "coach"}
    assert len({v.phone for v in scenario.values()}) == 4
    assert len({v.expected_rule for v in scenario.values()}) == 4


def test_parked_with_the_ignition_off_before_and_after(
        demo: tuple[RoadNetwork, DemoRegion], scenario: dict[str, ScenarioVehicle]) -> None:
    net, _ = demo
    samples = list(drive(net, scenario["speeding"], hours=2))
    first = next(i for i, s in enumerate(samples) if s.fix.speed_kmh > 0)
    last = max(i for i, s in enumerate(samples) if s.fix.speed_kmh > 0)
    assert local(samples[first].at) >= time(2, 30) > local(samples[first - 1].at)
    assert all(not s.fix.ignition and s.fix.speed_kmh == 0 for s in samples[:first])
    assert all(not s.fix.ignition and s.fix.speed_kmh == 0 for s in samples[last + 1:])
    assert len(samples) - last > 100  # it stays (and reports) after arriving
    assert all(s.fix.ignition for s in samples[first:last + 1])


def test_speeding_truck_goes_75_on_an_arterial_limited_to_60_and_nothing_else(
        demo: tuple[RoadNetwork, DemoRegion], scenario: dict[str, ScenarioVehicle]) -> None:
    net, region = demo
    v = scenario["speeding"]
    samples = list(drive(net, v, hours=2))
    over = [i for i, s in enumerate(samples)
            if s.fix.speed_kmh > limit_for(net.get_segment(s.fix.segment_id), v.vehicle_class,
                                           night=True)]
    assert over == list(range(over[0], over[-1] + 1)), "one stretch over the limit"
    assert (len(over) - 1) * STEP_S >= 60.0  # twice the rule's 30 s tolerance
    for i in over:
        seg = net.get_segment(samples[i].fix.segment_id)
        assert samples[i].fix.speed_kmh == pytest.approx(75.0)
        assert seg.road_class == "primary" and seg.speed_limit_kmh == 60.0
    assert_clean(net, v, samples, allowed=set(over))
    driven = moving(samples)
    assert (driven[-1].at - driven[0].at) < timedelta(hours=1)  # far from 2 h at night
    assert not {s.fix.segment_id for s in samples} & set(region.tunnels[0].segment_ids)


def test_night_coach_on_a_long_route_moves_at_0230_within_its_night_limits(
        demo: tuple[RoadNetwork, DemoRegion], scenario: dict[str, ScenarioVehicle],
        tmp_path: Path) -> None:
    net, region = demo
    v = scenario["night"]
    samples = list(drive(net, v, hours=3))
    driven = moving(samples)
    assert local(driven[0].at) <= time(2, 30) <= local(driven[-1].at)
    assert all(time(2, 0) <= local(s.at) < time(5, 0) for s in driven)
    assert driven[-1].at - driven[0].at < timedelta(hours=1)  # far from 2 h at night
    assert_clean(net, v, samples)  # 80 % of the day limit, minus the margin
    routes, _ = write_files(tmp_path, tunnel_name="t", tunnel_name_en="t",
                            tunnel_segment_ids=region.tunnels[0].segment_ids)
    lengths = load_coach_routes(str(routes))
    assert v.route_id is not None and lengths[v.route_id] >= 100.0


def test_tunnel_truck_enters_the_closed_tunnel_once_and_drives_cleanly(
        demo: tuple[RoadNetwork, DemoRegion], scenario: dict[str, ScenarioVehicle],
        tmp_path: Path) -> None:
    net, region = demo
    v = scenario["tunnel"]
    tunnel = set(region.tunnels[0].segment_ids)
    path = [sid for sid, _ in v.path]
    inside = [i for i, sid in enumerate(path) if sid in tunnel]
    assert len(inside) == 1 and 0 < inside[0] < len(path) - 1  # in from outside, out again
    samples = list(drive(net, v, hours=2))
    assert any(s.fix.segment_id in tunnel and s.fix.speed_kmh > 0 for s in samples)
    assert {net.get_segment(s).road_class for s in path} >= {"motorway", "motorway_link"}
    assert_clean(net, v, samples)  # 80 on the ring, 60 off it, ramps' 40
    # The geofence the demo imports names both bores and only dangerous goods.
    _, fences = write_files(tmp_path, tunnel_name=region.tunnels[0].name,
                            tunnel_name_en=region.tunnels[0].name_en,
                            tunnel_segment_ids=region.tunnels[0].segment_ids)
    parsed = parse_collection(orjson.loads(fences.read_bytes()))
    assert not parsed.errors
    [fence] = parsed.fences
    assert fence.kind == "restricted_road"
    assert set(fence.vehicle_classes) == {"dangerous_goods"}
    assert set(fence.segment_ids) == tunnel


def test_day_coach_drives_four_and_a_half_hours_by_day_without_rest(
        demo: tuple[RoadNetwork, DemoRegion], scenario: dict[str, ScenarioVehicle]) -> None:
    net, region = demo
    v = scenario["fatigue"]
    samples = list(drive(net, v, hours=9))
    first = next(i for i, s in enumerate(samples) if s.fix.speed_kmh > 0)
    last = max(i for i, s in enumerate(samples) if s.fix.speed_kmh > 0)
    assert local(samples[first].at) >= time(6, 0)
    assert samples[last].at - samples[first].at >= timedelta(hours=4.5)
    # Not one stop on the way: every fix between is moving, with the ignition on.
    assert all(s.fix.speed_kmh > 0 and s.fix.ignition for s in samples[first:last + 1])
    assert all(not is_night(local(s.at)) for s in samples[first:last + 1])
    assert_clean(net, v, samples)
    # Before 06:00 it stood with the ignition off: resting, not driving at night.
    assert all(not s.fix.ignition for s in samples[:first])
    assert not {s.fix.segment_id for s in samples} & set(region.tunnels[0].segment_ids)


def test_the_clock_and_the_scenario_day() -> None:
    assert local(START) == time(2, 0) and START.astimezone(LOCAL_TZ).day == 2
    # Started late in the night it still runs tonight; after 04:00 it waits for the next.
    at_0330 = datetime(2026, 3, 2, 3, 30, tzinfo=LOCAL_TZ)
    assert scenario_day(at_0330) == at_0330.date()
    at_1400 = datetime(2026, 3, 2, 14, 0, tzinfo=LOCAL_TZ)
    assert scenario_day(at_1400) == at_1400.date() + timedelta(days=1)
