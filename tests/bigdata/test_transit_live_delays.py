"""Live speeds in bus ETAs: how much a one-minute window may say.

A window is one minute of whichever vehicles were on a segment — often one car. One car that
waited at a red light reads "3 km/h" for its segment; a bus meets that red once, so it must not
push the ETA by minutes. A queue (slow window after slow window, several vehicles) still does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.bigdata.transit.predictor import (
    Predictor,
    SegmentSpeeds,
    ShapeSegments,
    SpeedWindow,
    segment_delay_s,
)
from services.bigdata.transit.schedule import GtfsFileSource, Schedule
from services.bigdata.transit.service import TransitService
from services.bigdata.transit.tracker import Tracker, VehicleState
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import SEGMENT_SPEED, SegmentSpeed
from shared.roadnet import RoadNetwork
from tests.bigdata.test_transit import trace_for

T = 1_800_000_000.0


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def network(region: DemoRegion) -> RoadNetwork:
    return RoadNetwork.from_osm(region.osm_path)


@pytest.fixture(scope="module")
def schedule(region: DemoRegion) -> Schedule:
    return GtfsFileSource(region.gtfs_path).load_sync()


def window(speed_kmh: float, age_s: float, *, confidence: float) -> SpeedWindow:
    return SpeedWindow(speed_kmh, T - age_s, 60.0, confidence, 50.0)


# --- one segment ------------------------------------------------------------------------------


def test_one_slow_window_testifies_to_at_most_its_minute() -> None:
    # 200 m at 3 km/h would be 240 s; one car at a red over one minute says <= 60 s of delay.
    delay, trust = segment_delay_s([window(3.0, 30, confidence=0.28)], 200.0, 50.0, 60.0, T)
    assert 0 < delay <= 60.0
    assert trust == pytest.approx(0.28 * 0.5 ** (30 / 120), abs=1e-6)
    # A red among quick windows: still at most a minute, and diluted by the others.
    mixed = [window(45.0, 270, confidence=0.28), window(3.0, 150, confidence=0.28),
             window(45.0, 30, confidence=0.28)]
    assert segment_delay_s(mixed, 200.0, 50.0, 60.0, T)[0] < 30.0


def test_a_queue_testifies_to_what_it_shows() -> None:
    # Five slow minutes, several vehicles each: the full 200 m at 3 km/h, trusted.
    queue = [window(3.0, age, confidence=0.75) for age in (270, 210, 150, 90, 30)]
    delay, trust = segment_delay_s(queue, 200.0, 50.0, 60.0, T)
    assert delay == pytest.approx(200 * 3.6 / 3.0 - 200 * 3.6 / 50.0, rel=1e-6)
    assert trust > 0.9
    # Quick windows say the road is quick (no delay beyond free flow).
    quick = [window(50.0, age, confidence=0.75) for age in (90, 30)]
    assert segment_delay_s(quick, 200.0, 50.0, 60.0, T)[0] == pytest.approx(0.0, abs=1e-9)


def test_segment_speeds_keep_recent_windows() -> None:
    speeds = SegmentSpeeds(ttl_s=300.0)
    speeds.update("s", 20.0, T - 400, sample_count=2)
    speeds.update("s", 10.0, T - 120, sample_count=2)
    speeds.update("s", 12.0, T - 120, sample_count=3)  # a revision of the same window
    speeds.update("s", 30.0, T - 200)  # older than the newest: ignored
    fresh = speeds.fresh("s", T)
    assert [w.speed_kmh for w in fresh] == [12.0]
    assert fresh[0].confidence == pytest.approx(1 - 2.718281828 ** -1, abs=1e-3)
    assert speeds.find("s", T) == 12.0
    speeds.update("s", 25.0, T - 60, confidence=0.7)
    assert [w.confidence for w in speeds.fresh("s", T)] == [pytest.approx(0.632, abs=1e-3), 0.7]
    assert speeds.fresh("s", T + 200) == [speeds.fresh("s", T)[-1]]  # the older one aged out
    speeds.update("s", None, T)  # a window without vehicles clears the segment
    assert speeds.find("s", T) is None and speeds.fresh("s", T) == []


def test_live_weight_fades_with_the_time_to_the_stop(schedule: Schedule) -> None:
    p = Predictor(schedule)
    s = p.settings
    assert p.live_weight(60.0, 1.0) == 1.0
    assert p.live_weight(60.0, 0.3) == pytest.approx(0.3)
    weights = [p.live_weight(lead, 1.0) for lead in range(0, 1800, 60)]
    assert weights == sorted(weights, reverse=True)
    assert p.live_weight(s.live_fade_s + 600, 1.0) == pytest.approx(s.live_floor)


# --- a bus's ETAs -----------------------------------------------------------------------------


def _bus(schedule: Schedule, network: RoadNetwork) -> tuple[VehicleState, float, ShapeSegments]:
    trace = trace_for(schedule, network, "R1_0_0800")
    tracker = Tracker(schedule)
    for p in trace.positions[:20]:
        tracker.update(p)
    st = tracker.vehicles["13800000001"]
    assert st.run is not None
    segs = ShapeSegments.from_network(st.run.trip.pattern.shape, network)
    return st, trace.positions[19].observed_at.timestamp(), segs


def _flowing(schedule: Schedule, network: RoadNetwork, segs: ShapeSegments, t: float,
             but: str | None = None) -> Predictor:
    """A predictor that has seen the route (``but`` one segment) flow normally for five
    minutes, three cars a minute."""
    pred = Predictor(schedule, network=lambda: network)
    for age in (270, 210, 150, 90, 30):
        for sid in segs.ids:
            if sid != but:
                pred.speeds.update(sid, 30.0, t - age, sample_count=3)
    return pred


def _segment_ahead(st: VehicleState, segs: ShapeSegments) -> tuple[str, int]:
    """A segment of >= 100 m a little ahead of the bus, and the first stop after it."""
    assert st.run is not None
    d = st.run.trip.pattern.stop_dist_m
    for a, b, sid in zip(segs.starts, segs.ends, segs.ids, strict=True):
        if a > st.along_m + 50 and b - a >= 100:
            return sid, next(k for k in range(len(d)) if d[k] >= b)
    raise AssertionError("no segment ahead")


def test_one_car_at_a_red_ahead_does_not_push_the_eta_by_minutes(
        schedule: Schedule, network: RoadNetwork) -> None:
    st, t, segs = _bus(schedule, network)
    sid, k = _segment_ahead(st, segs)
    base = dict(_flowing(schedule, network, segs, t).predict(st, t))
    red = _flowing(schedule, network, segs, t)
    # The newest window there: one car that stood most of the minute at the stop line.
    red.speeds.update(sid, 3.0, t - 20, sample_count=1, confidence=0.28)
    shifted = dict(red.predict(st, t))
    assert shifted.keys() == base.keys()
    assert all(shifted[j] - base[j] < 30.0 for j in base)  # not minutes
    assert shifted[k] >= base[k]  # but not ignored either


def test_a_real_queue_ahead_still_pushes_the_eta(schedule: Schedule,
                                                 network: RoadNetwork) -> None:
    st, t, segs = _bus(schedule, network)
    sid, k = _segment_ahead(st, segs)
    base = dict(_flowing(schedule, network, segs, t).predict(st, t))
    queued = _flowing(schedule, network, segs, t, but=sid)
    # Slow window after slow window, several vehicles each: a queue, not a red.
    for age in (240, 180, 120, 60, 10):
        queued.speeds.update(sid, 3.0, t - age, sample_count=4, confidence=0.7)
    shifted = dict(queued.predict(st, t))
    assert shifted[k] - base[k] > 90.0
    assert all(shifted[j] >= base[j] for j in base)


async def test_the_service_keeps_how_much_a_window_says(schedule: Schedule) -> None:
    svc = TransitService(Config(), MemoryBus(), source=None)
    svc.predictor = Predictor(schedule)
    end = datetime.fromtimestamp(T, UTC)
    await svc.on_speed(Envelope.new(SEGMENT_SPEED, SegmentSpeed(
        segment_id="s", window_start=end - timedelta(seconds=60), observed_at=end,
        speed_kmh=4.0, sample_count=1, confidence=0.2, free_flow_kmh=50.0)))
    (w,) = svc.predictor.speeds.fresh("s", T)
    assert (w.speed_kmh, w.confidence, w.duration_s, w.free_flow_kmh) == (4.0, 0.2, 60.0, 50.0)
