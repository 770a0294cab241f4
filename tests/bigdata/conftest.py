"""Fixtures of the bigdata tests: the demo region, its network and routing graph, traces."""

from __future__ import annotations

from typing import Any

import pytest

from services.bigdata.matching import MatchGraph
from services.bigdata.traces import Trace, generate_traces
from services.simulator.world import Incident, World
from shared.demo import DemoRegion, generate_demo_region
from shared.roadnet import RoadNetwork


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    """The generated demo city (per test module)."""
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def net(region: DemoRegion) -> RoadNetwork:
    """The demo road network."""
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture(scope="module")
def graph(net: RoadNetwork) -> MatchGraph:
    """The matcher's routing graph over the demo network."""
    return MatchGraph(net)


def sim_traces(net: RoadNetwork, *, seed: int, hot_segment: str | None = None,
               incidents: list[Incident] | None = None, **kwargs: Any) -> list[Trace]:
    """Simulator traces; the World and the noise are seeded alike, so runs repeat exactly."""
    world = World(net, seed=seed, hot_segment=hot_segment)
    world.incidents.extend(incidents or [])
    return generate_traces(world, seed=seed, **kwargs)
