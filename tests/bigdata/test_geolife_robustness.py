"""Real GPS logs (GeoLife, Beijing, ~1-5 s, walking, cycling, buses and cars mixed) through the
matcher and the speed windows: nothing raises, every fix gets one result, memory stays bounded.

We have no Beijing map, so the logs run twice: as they are, against the demo region (every fix
is far from any road: the "no candidates" path), and shifted onto the demo region (real noise,
stops, gaps, walking and mode changes over roads they were not recorded on: chains start and
break all the time).
"""

from __future__ import annotations

import math
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bigdata.matching import MatchGraph, MatchParams, OnlineMatcher
from services.bigdata.speeds import SpeedWindows, VehicleProbe
from shared.demo import DemoRegion, generate_demo_region
from shared.roadnet import RoadNetwork

_EXCEL_EPOCH_DAYS = 25569.0  # GeoLife's day count starts 1899-12-30; Unix time at 1970-01-01

Fix = tuple[float, float, float]  # (t, lon, lat)


def read_plt_tar(path: Path) -> dict[str, list[Fix]]:
    """Fixes per GeoLife user, in file-name (= start time) order, read from the tar in place."""
    files: dict[str, list[tuple[str, list[Fix]]]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".plt"):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            rows: list[Fix] = []
            # Six header lines, then: lat, lon, 0, altitude (ft), days, date, time.
            for line in handle.read().decode("ascii", "replace").splitlines()[6:]:
                parts = line.split(",")
                if len(parts) < 7:
                    continue
                t = (float(parts[4]) - _EXCEL_EPOCH_DAYS) * 86_400.0
                rows.append((t, float(parts[1]), float(parts[0])))
            user = Path(member.name).parts[1]
            files.setdefault(user, []).append((member.name, rows))
    return {user: [fix for _, rows in sorted(parts) for fix in rows]
            for user, parts in sorted(files.items())}


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def net(region: DemoRegion) -> RoadNetwork:
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture
def logs(shared_data: Path) -> dict[str, list[Fix]]:
    return read_plt_tar(shared_data / "trajectories" / "geolife_beijing_sample_plt.tar.gz")


def _run(fixes_by_user: dict[str, list[Fix]], graph: MatchGraph,
         windows: SpeedWindows, params: MatchParams) -> Iterator[int]:
    """Feed every user's fixes; yield after each fix the largest per-vehicle state seen."""
    for user, fixes in fixes_by_user.items():
        probe = VehicleProbe(user, OnlineMatcher(graph, params), vehicle_class="other")
        decided = accepted = 0
        last_t = -math.inf
        for t, lon, lat in fixes:
            accepted += t > last_t
            last_t = max(last_t, t)
            for sample in probe.update(t, lon, lat):
                decided += 1
                windows.add_sample(user, sample)
            windows.close_due(t - windows.window_s)
            yield probe.state_size()
        for sample in probe.flush():
            decided += 1
            windows.add_sample(user, sample)
        # Every fix newer than the one before is decided exactly once; the rest are ignored.
        assert decided == accepted, user


def test_all_logs_far_from_any_road(logs: dict[str, list[Fix]], net: RoadNetwork) -> None:
    assert sum(len(f) for f in logs.values()) > 160_000
    params = MatchParams()
    windows = SpeedWindows(60.0)
    bound = (params.lag + 1) * (params.max_candidates + 1)
    assert max(_run(logs, MatchGraph(net), windows, params)) <= bound
    windows.close_due(math.inf)
    assert windows.open_partials() == 0


def _shift_onto(fixes: list[Fix], lon0: float, lat0: float) -> list[Fix]:
    """Move a log so that its first fix lies at (lon0, lat0), keeping its shape in metres."""
    _, lon_a, lat_a = fixes[0]
    kx = math.cos(math.radians(lat_a)) / math.cos(math.radians(lat0))
    return [(t, lon0 + (lon - lon_a) * kx, lat0 + (lat - lat_a)) for t, lon, lat in fixes]


def test_logs_shifted_onto_the_demo_roads(logs: dict[str, list[Fix]], net: RoadNetwork,
                                          region: DemoRegion) -> None:
    lon0, lat0 = region.center
    # Every user, a few thousand fixes each, keeps the test to seconds.
    shifted = {user: _shift_onto(fixes[:1_200], lon0, lat0) for user, fixes in logs.items()}
    params = MatchParams(lag=2)
    graph = MatchGraph(net, cache_sources=256)
    windows = SpeedWindows(60.0)
    bound = (params.lag + 1) * (params.max_candidates + 1)

    tracemalloc.start()
    try:
        states = _run(shifted, graph, windows, params)
        total = sum(len(f) for f in shifted.values())
        peak_state = 0
        after_warmup = None
        for n, state in enumerate(states):
            peak_state = max(peak_state, state)
            if n == total // 3:
                after_warmup = tracemalloc.get_traced_memory()[0]
        end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert peak_state <= bound
    assert graph.cached_sources() <= 256
    assert after_warmup is not None
    # Two thirds more fixes once the caches are warm add next to nothing.
    assert end - after_warmup < 3_000_000, (after_warmup, end)
    windows.close_due(math.inf)
    assert windows.open_partials() == 0
