"""The warning engine: graded statuses, one warning per queue, deterministic ids, fallbacks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.warning.engine import WarningEngine
from shared.clients.bigdata import DetectorSite, ProfileSnapshot, ProfileSpeed
from shared.clock import Clock
from shared.events import (
    AREA_INDEX,
    INCIDENT,
    ROAD_STATUS,
    WARNING,
    CapMsgType,
    CapSeverity,
    DetectedEvent,
    RoadStatus,
    SegmentSpeed,
    Warning,
    WarningKind,
    WarningStatus,
)
from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN
from shared.roadnet import RoadNetwork
from tests.warning.support import T0, Recorder, build_network, main_road, window


@pytest.fixture(scope="module")
def network() -> RoadNetwork:
    return build_network()


def engine_on(network: RoadNetwork) -> tuple[WarningEngine, Recorder]:
    out = Recorder()
    engine = WarningEngine(window_s=60.0, clock=Clock(), output=out)
    engine.set_network(network)
    return engine, out


async def feed(engine: WarningEngine, *windows: SegmentSpeed) -> None:
    for w in windows:
        await engine.apply_speed(w)
    await engine.evaluate()


def minute(segments: list[str], m: int, kmh: float) -> list[SegmentSpeed]:
    return [window(s, m, kmh) for s in segments]


async def test_every_window_is_graded_with_the_one_vocabulary(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    sid = main_road(network, 0, 0)[0]
    await feed(engine, window(sid, 0, 45.0), window(sid, 1, 8.0))
    statuses: list[RoadStatus] = out.of(ROAD_STATUS)
    assert [s.level for s in statuses] == [2, 5]
    assert [(s.level_name, s.level_name_en) for s in statuses] == [
        (LEVEL_NAMES[2], LEVEL_NAMES_EN[2]), (LEVEL_NAMES[5], LEVEL_NAMES_EN[5])]
    assert all(s.source == "probe" and s.sample_count == 4 for s in statuses)


async def test_a_queue_over_six_segments_is_one_warning_through_its_life(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    queue = main_road(network, 2, 7)
    await feed(engine, *minute(queue, 0, 40.0))
    await feed(engine, *minute(queue, 1, 6.0))
    await feed(engine, *minute(queue, 2, 4.0))
    await feed(engine, *minute(queue, 3, 50.0))
    warnings: list[Warning] = out.of(WARNING)
    assert len({w.warning_id for w in warnings}) == 1, "one queue, one warning"
    first, last = warnings[0], warnings[-1]
    assert first.kind == WarningKind.CONGESTION and first.status == WarningStatus.RAISED
    assert first.msg_type == CapMsgType.ALERT and first.severity == CapSeverity.SEVERE
    assert first.segment_ids == tuple(queue), "segments listed upstream first"
    assert first.road_names == ("解放大道",)
    assert first.area is not None and first.area.polygon[0] == first.area.polygon[-1]
    assert "1.5 公里" in first.description, first.description
    assert [w.version for w in warnings] == list(range(1, len(warnings) + 1))
    assert last.status == WarningStatus.RESOLVED and not last.active
    assert last.ended_at == T0 + timedelta(minutes=4)
    assert last.details["ended_because"] == "recovered"


async def test_the_text_stays_true_as_the_queue_changes(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    await feed(engine, *minute(main_road(network, 2, 3), 0, 8.0))
    await feed(engine, *minute(main_road(network, 0, 5), 1, 3.0))
    warnings: list[Warning] = out.of(WARNING)
    assert len({w.warning_id for w in warnings}) == 1
    assert warnings[0].speed_kmh == 8.0 and "8 km/h" in warnings[0].description
    assert "0.5 公里" in warnings[0].description
    assert warnings[-1].speed_kmh == 3.0 and "3 km/h" in warnings[-1].description
    assert "1.5 公里" in warnings[-1].description
    assert len(warnings[-1].segment_ids) == 6 and warnings[-1].status == WarningStatus.UPDATED


async def test_one_slow_vehicle_is_not_a_queue(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    sid = main_road(network, 4, 4)[0]
    await feed(engine, window(sid, 0, 5.0, vehicles=1))
    assert out.of(WARNING) == []


async def test_two_queues_merge_into_the_older_warning(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    await feed(engine, *minute(main_road(network, 0, 1), 0, 5.0),
               *minute(main_road(network, 5, 6), 0, 5.0))
    first_ids = {w.warning_id for w in out.of(WARNING)}
    assert len(first_ids) == 2
    await feed(engine, *minute(main_road(network, 0, 6), 1, 5.0))
    active = engine.list_warnings("active")
    assert len(active) == 1 and len(active[0].segment_ids) == 7
    ended = engine.list_warnings("ended")
    assert len(ended) == 1 and ended[0].details["ended_because"].startswith("merged into")
    assert {active[0].warning_id, ended[0].warning_id} == first_ids


async def test_a_replayed_or_redelivered_stream_makes_no_second_warning(
        network: RoadNetwork) -> None:
    queue = main_road(network, 1, 8)
    stream = [*minute(queue, 0, 5.0), *minute(queue, 1, 4.0), *minute(queue, 2, 60.0)]
    engine, out = engine_on(network)
    await feed(engine, *stream)
    again, out_again = engine_on(network)
    await feed(again, *stream)
    ids = [(w.warning_id, w.version, w.status) for w in out.of(WARNING)]
    assert ids == [(w.warning_id, w.version, w.status) for w in out_again.of(WARNING)]
    before = len(out.of(WARNING)) + len(out.of(ROAD_STATUS))
    await feed(engine, *stream)  # redelivered: every window is one already held
    assert len(out.of(WARNING)) + len(out.of(ROAD_STATUS)) == before


async def test_stale_data_falls_back_to_the_profile_then_to_none(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    sid, other = main_road(network, 0, 1)
    engine.set_profiles(ProfileSnapshot(bucket=1, valid_until=T0 + timedelta(hours=1), speeds={
        sid: ProfileSpeed(segment_id=sid, speed_kmh=20.0, updated_at=T0)}))
    await feed(engine, window(sid, 0, 50.0), window(other, 0, 50.0))
    await engine.expire_stale(T0 + timedelta(minutes=5))
    statuses: list[RoadStatus] = out.of(ROAD_STATUS)
    fallback = {s.segment_id: s for s in statuses[2:]}
    assert fallback[sid].source == "profile" and fallback[sid].level == 4
    assert fallback[sid].sample_count == 0 and fallback[sid].level_name == LEVEL_NAMES[4]
    assert fallback[other].source == "none" and fallback[other].level is None


async def test_a_new_profile_bucket_grades_every_segment_without_live_data(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    live, quiet = main_road(network, 0, 1)
    await feed(engine, window(live, 0, 50.0))
    count = await engine.refresh_profiles(ProfileSnapshot(
        bucket=2, valid_until=engine.clock.now() + timedelta(minutes=15), speeds={
            sid: ProfileSpeed(segment_id=sid, speed_kmh=30.0, updated_at=T0)
            for sid in (live, quiet)}))
    assert count == 1
    profile = [s for s in out.of(ROAD_STATUS) if s.source == "profile"]
    assert [s.segment_id for s in profile] == [quiet] and profile[0].level == 3


async def test_queues_whose_data_stops_end_as_no_data(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    await feed(engine, *minute(main_road(network, 3, 5), 0, 5.0))
    await engine.expire_stale(T0 + timedelta(minutes=10))
    last: Warning = out.of(WARNING)[-1]
    assert last.status == WarningStatus.RESOLVED and last.details["ended_because"] == "no_data"


async def test_the_area_index_weighs_segments_by_vehicle_kilometres(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    a, b = main_road(network, 0, 1)
    await feed(engine, window(a, 0, 5.0, vehicles=3), window(b, 0, 55.0, vehicles=1))
    index = {i.area_id: i for i in out.of(AREA_INDEX)}
    net = index["network"]
    assert net.measured_count == 2 and net.segment_count == len(network)
    # TPI 5 → ~9.33 (3 vehicles), 55 km/h → 0 (1 vehicle): weighted 3:1.
    assert 6.5 < (net.tpi or 0) < 7.5 and net.level == 4
    assert net.congested_share == pytest.approx(0.5, abs=0.01)
    assert "group:arterial" in index and any(k.startswith("cell:") for k in index)


def event(kind: str, *, status: str = "active", confidence: float | None = 0.95,
          minutes: int = 0, event_id: str = "e1", detector: str = "cam-1") -> DetectedEvent:
    return DetectedEvent(detector_id=detector, event_id=event_id, kind=kind,
                         observed_at=T0 + timedelta(minutes=minutes), status=status,
                         confidence=confidence, lane=2)


async def test_a_confirmed_accident_is_an_incident_warning_until_cleared(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    sid = main_road(network, 5, 5)[0]
    engine.detectors = {"cam-1": DetectorSite(detector_id="cam-1", lon=114.31, lat=30.5,
                                              segment_id=sid, name="解放大道 K5")}
    from shared.codec import Envelope

    await engine.on_detected_event(Envelope.new(INCIDENT, event("accident")))  # type: ignore
    await engine.on_detected_event(Envelope.new(INCIDENT, event("accident")))  # type: ignore
    await engine.on_detected_event(Envelope.new(
        INCIDENT, event("accident", status="cleared", minutes=20)))  # type: ignore
    incidents = out.of(INCIDENT)
    warnings: list[Warning] = out.of(WARNING)
    assert [i.status for i in incidents] == ["confirmed", "cleared"], "a redelivery is no news"
    assert len(warnings) == 2 and warnings[0].warning_id == warnings[1].warning_id
    assert warnings[0].kind == WarningKind.INCIDENT and warnings[0].segment_ids == (sid,)
    assert warnings[0].area is not None and warnings[0].area.circle is not None
    assert warnings[0].expected_end == T0 + timedelta(minutes=45)
    assert warnings[1].status == WarningStatus.RESOLVED


async def test_an_unsure_detection_stays_a_suspected_incident(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    from shared.codec import Envelope

    await engine.on_detected_event(Envelope.new(
        INCIDENT, event("stopped_vehicle", confidence=0.4)))  # type: ignore
    assert [i.status for i in out.of(INCIDENT)] == ["suspected"]
    assert out.of(WARNING) == []


async def test_cleared_incidents_are_forgotten_after_a_day(network: RoadNetwork) -> None:
    engine, _ = engine_on(network)
    from shared.codec import Envelope

    await engine.on_detected_event(Envelope.new(INCIDENT, event("accident")))  # type: ignore
    await engine.on_detected_event(Envelope.new(
        INCIDENT, event("accident", status="cleared", minutes=5)))  # type: ignore
    assert engine.incidents.list_incidents("cleared")
    assert engine.incidents.prune(T0 + timedelta(hours=2)) == 0
    assert engine.incidents.prune(T0 + timedelta(hours=25)) == 1
    assert engine.incidents.list_incidents("all") == [] and engine.incidents.warnings == {}


# --- abnormal, not usual (issue 15 §3) --------------------------------------------------------

async def test_a_queue_that_is_always_there_raises_no_warning(network: RoadNetwork) -> None:
    # A red light's approach: a crawl on two probes, minute after minute, from the first window.
    engine, out = engine_on(network)
    sid = main_road(network, 2, 2)[0]
    for m, kmh in enumerate([9.0, 12.0, 7.0, 10.0, 8.0, 11.0, 6.0, 9.0]):
        await feed(engine, window(sid, m, kmh, vehicles=2))
    assert [s.level for s in out.of(ROAD_STATUS)] == [5] * 8  # the status says it as it is
    assert out.of(WARNING) == []


async def test_a_sudden_drop_against_the_recent_state_is_a_warning_once_it_persists(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    sid = main_road(network, 3, 3)[0]
    for m in range(5):
        await feed(engine, window(sid, m, 50.0, vehicles=2))
    await feed(engine, window(sid, 5, 8.0, vehicles=2))
    assert out.of(WARNING) == []  # one minute on two cars: not yet
    await feed(engine, window(sid, 6, 7.0, vehicles=2))
    [w] = out.of(WARNING)
    assert w.kind == WarningKind.CONGESTION and w.segment_ids == (sid,)


async def test_many_vehicles_crawling_need_no_second_minute(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    sid = main_road(network, 3, 3)[0]
    for m in range(5):
        await feed(engine, window(sid, m, 50.0, vehicles=2))
    await feed(engine, window(sid, 5, 8.0, vehicles=5))
    assert len(out.of(WARNING)) == 1


async def test_the_profile_says_what_is_usual_at_this_hour(network: RoadNetwork) -> None:
    usual_jam, usual_free = main_road(network, 0, 0)[0], main_road(network, 6, 6)[0]
    engine, out = engine_on(network)
    engine.set_profiles(ProfileSnapshot(bucket=0, valid_until=T0 + timedelta(hours=1), speeds={
        usual_jam: ProfileSpeed(segment_id=usual_jam, speed_kmh=12.0, updated_at=T0),
        usual_free: ProfileSpeed(segment_id=usual_free, speed_kmh=55.0, updated_at=T0)}))
    # Both free this morning so far; then both crawl. That is what 解放大道's first piece
    # usually has at this hour, not its seventh's.
    for m in range(5):
        await feed(engine, window(usual_jam, m, 50.0, vehicles=2),
                   window(usual_free, m, 50.0, vehicles=2))
    for m in range(5, 7):
        await feed(engine, window(usual_jam, m, 9.0, vehicles=2),
                   window(usual_free, m, 9.0, vehicles=2))
    [w] = out.of(WARNING)
    assert w.segment_ids == (usual_free,)


async def test_a_warned_queue_grows_back_onto_segments_that_are_not_abnormal_alone(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    head, *upstream = main_road(network, 8, 10)[::-1]
    for m in range(5):
        await feed(engine, *(window(s, m, 50.0, vehicles=2) for s in (head, *upstream)))
    await feed(engine, window(head, 5, 6.0, vehicles=5))
    [w] = out.of(WARNING)
    assert w.segment_ids == (head,)
    # The queue reaches back onto two segments seen slow only now, on two cars each.
    await feed(engine, window(head, 6, 6.0, vehicles=5),
               *(window(s, 6, 9.0, vehicles=2) for s in upstream))
    latest = engine.list_warnings("active")
    assert len(latest) == 1 and set(latest[0].segment_ids) == {head, *upstream}
