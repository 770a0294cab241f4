"""``tti run --clock-rate 10``: the same system, ten times faster than real time.

Everything reads the one clock (``shared/clock.py``): the simulated fleet drives, reports and
heartbeats on it, the gateway checks report times against it, bigdata closes its one-minute
windows on it, the warning service grades them. With the default one-minute window and
five-second reports the scenario (live speeds, the ``--incident`` slowdown becoming level 5 and
an incident warning, which ends once the incident is over) takes minutes of clock time and a
tenth of that in real time. The real-time waits
below are generous: this is not a timing test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.test_embedded_run import Embedded, _get, _wait, start_embedded

pytestmark = pytest.mark.slow

RATE = 10.0


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    # Production timings (60 s windows, 5 s reports), on a clock ten times as fast.
    yield from start_embedded(
        tmp_path_factory.mktemp("embedded-fast"), "--clock-rate", str(RATE),
        "--speed-window-s", "60", "--sim-interval-s", "5", "--vehicles", "80",
        "--incident", "demo@30+480:4")


def _sim_time(inst: Embedded) -> float:
    _, sim = _get(inst.base + "/api/v1/sim")
    return float(sim["sim_time_s"])  # type: ignore[index]


def test_fast_clock_runs_the_whole_scenario(fast: Embedded) -> None:
    _wait("/readyz 200", lambda: _get(fast.base + "/readyz")[0] == 200, 120, fast.proc)
    real0, clock0 = time.monotonic(), _sim_time(fast)

    def probe_roads() -> list[dict[str, object]]:
        status, body = _get(fast.base + "/api/v1/roads")
        assert status == 200
        return [f["properties"] for f in body["features"]  # type: ignore[index]
                if f["properties"]["source"] == "probe"]

    # A first window closes 60 s + grace after it starts: about two clock minutes.
    live = _wait("segments with probe speeds", probe_roads, 120, fast.proc)
    for p in live:  # type: ignore[attr-defined]
        assert p["sample_count"] >= 1 and p["observed_at"] and p["speed_kmh"] is not None

    _, sim = _get(fast.base + "/api/v1/sim")
    segment = sim["demo_incident_segment"]  # type: ignore[index]

    def warned() -> object:
        _, body = _get(fast.base + "/api/v1/warnings")
        return [w for w in body["warnings"]  # type: ignore[index]
                if segment in (w.get("segment_ids") or [w.get("segment_id")])]

    warnings = _wait("a warning on the incident segment", warned, 240, fast.proc)
    assert warnings[0]["kind"] in ("congestion", "incident")  # type: ignore[index]

    def severe() -> object:
        status, road = _get(f"{fast.base}/api/v1/roads/{segment}")
        return road if status == 200 and road["properties"]["level"] == 5 else None  # type: ignore

    _wait("level 5 on the incident segment", severe, 120, fast.proc)
    # The scenario took more than a window on the clock (nothing is concluded before one
    # closes) and about a tenth of that in real time. How many windows depends on where in its
    # window the service was ready and on how soon the incident's queue shows: 102 s was seen.
    clock_s, real_s = _sim_time(fast) - clock0, time.monotonic() - real0
    assert clock_s > 60.0
    assert clock_s >= 0.5 * RATE * real_s, (clock_s, real_s)

    # The slowdown lasts 8 clock-minutes: its warning is an incident's (the queue ends at one
    # point) and ends, with the incident, once the traffic there recovers.
    wid = warnings[0]["warning_id"]  # type: ignore[index]

    def kind_of() -> object:
        _, body = _get(f"{fast.base}/api/v1/warnings")
        return next((w["kind"] for w in body["warnings"]  # type: ignore[index]
                     if w["warning_id"] == wid), None)

    def ended() -> bool:
        _, body = _get(f"{fast.base}/api/v1/warnings")
        _, incidents = _get(f"{fast.base}/api/v1/incidents")
        return (all(w["warning_id"] != wid for w in body["warnings"])  # type: ignore[index]
                and not incidents["incidents"])  # type: ignore[index]

    _wait("the warning says incident", lambda: kind_of() == "incident", 120, fast.proc)
    _wait("the warning and its incident ended after the slowdown", ended, 240, fast.proc)
