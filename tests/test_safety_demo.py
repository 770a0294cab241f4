"""``tti run --safety-demo``, end to end: four simulated JT/T 808 terminals on the demo city, the
collector, bigdata's matched positions, the warning service's rules and the text back to the
driver. Each scenario vehicle raises exactly one vehicle alarm of its rule, and each terminal
receives one 0x8300 text and answers it (0x0001 result 0).

The scenario spans about 8 h of clock time (02:00 to past 10:01 local). The demo runs it at
clock rate 150 (3.4 minutes); the test runs the same at 300 (``--clock-rate``, which the demo
yields to), so under two minutes of real time. The waits below are generous, this is not a
timing test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_embedded_run import Embedded, _get, _wait, start_embedded

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the test runs about 110 s
CLOCK_RATE = 300.0

EXPECTED = {"speeding": "speeding", "night": "night_driving", "tunnel": "geofence",
            "fatigue": "fatigue_continuous"}
DONE_AFTER_S = 9 * 3600.0
"""Clock seconds after 02:00 by which every drive has ended (the day coach parks at 10:33)."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    yield from start_embedded(tmp_path_factory.mktemp("safety-demo"), "--safety-demo",
                              "--clock-rate", str(CLOCK_RATE))


def _sim(inst: Embedded) -> dict[str, Any]:
    status, body = _get(inst.base + "/api/v1/sim")
    assert status == 200
    return body  # type: ignore[return-value]


def _alarms(inst: Embedded) -> list[dict[str, Any]]:
    status, body = _get(inst.base + "/warning/v1/warnings?status=all&kind=vehicle_alarm")
    assert status == 200
    return body["warnings"]  # type: ignore[index, no-any-return]


def test_four_vehicles_four_alarms_four_answered_texts(demo: Embedded) -> None:
    _wait("/readyz 200", lambda: _get(demo.base + "/readyz")[0] == 200, 120, demo.proc)
    scenario = {v["key"]: v for v in _sim(demo)["scenario"]}
    assert sorted(scenario) == sorted(EXPECTED)
    vehicles = {v["vehicle_id"]: key for key, v in scenario.items()}

    def all_raised() -> list[dict[str, Any]] | None:
        alarms = _alarms(demo)
        rules = {(w["details"]["vehicle_id"], w["details"]["rule"]) for w in alarms}
        want = {(scenario[k]["vehicle_id"], rule) for k, rule in EXPECTED.items()}
        return alarms if want <= rules else None

    _wait("the four alarms", all_raised, 900, demo.proc)
    # Past the end of every drive (and the day coach's rest), nothing else was raised.
    _wait("the end of the scenario", lambda: _sim(demo)["sim_time_s"] > DONE_AFTER_S - 2 * 3600
          and _sim(demo)["texts_received"] >= 4, 600, demo.proc)
    _wait("every drive over", lambda: _sim(demo)["sim_time_s"] > DONE_AFTER_S, 600, demo.proc)
    alarms = _alarms(demo)
    by_vehicle: dict[str, list[str]] = {}
    for w in alarms:
        by_vehicle.setdefault(w["details"]["vehicle_id"], []).append(w["details"]["rule"])
    assert {vehicles[v]: rules for v, rules in by_vehicle.items()} == {
        key: [rule] for key, rule in EXPECTED.items()}, by_vehicle
    sim = _sim(demo)
    # One text per terminal, each answered 0x0001 result 0 (the simulator answers every text).
    assert sim["texts_received"] == 4
    assert sorted(t["vehicle_id"] for t in sim["texts"]) == sorted(vehicles)
    assert all(t["text"] and "tts" in t["flags"] for t in sim["texts"])
    assert sim["reports_nacked"] == 0
    # The tunnel alarm names the tunnel and the geofence the demo imported.
    [tunnel] = [w for w in alarms if w["details"]["rule"] == "geofence"]
    assert tunnel["details"]["geofence_id"] == "demo-tunnel-dangerous-goods"
    assert "江城隧道" in tunnel["headline"]


def test_the_demo_wrote_its_files(demo: Embedded) -> None:
    folder = Path(demo.log).parent / "var" / "safety-demo"
    assert (folder / "coach_routes.csv").read_text(encoding="utf-8").startswith(
        "route_id,length_km\n")
    assert (folder / "geofences.geojson").is_file()
    assert (folder / "vehicles.csv").read_text(encoding="utf-8").count("\n") == 5
