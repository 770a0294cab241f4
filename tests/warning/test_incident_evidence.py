"""Evidence about one place and time is one incident: probes, detectors, SOS alarms, citizens."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.warning.engine import WarningEngine
from services.warning.incidents import EVIDENCE_S, combined_confidence
from shared.clients.bigdata import DetectorSite
from shared.clock import Clock
from shared.codec import Envelope
from shared.events import (
    DETECTED_EVENT,
    INCIDENT,
    TERMINAL_ALARM,
    WARNING,
    CitizenReport,
    DetectedEvent,
    Incident,
    TerminalAlarm,
    Warning,
    WarningKind,
)
from shared.roadnet import RoadNetwork
from tests.warning.support import T0, Recorder, build_network, main_road, window


@pytest.fixture(scope="module")
def network() -> RoadNetwork:
    return build_network()


def engine_on(network: RoadNetwork) -> tuple[WarningEngine, Recorder]:
    out = Recorder()
    engine = WarningEngine(window_s=60.0, clock=Clock(start=T0), output=out)
    engine.set_network(network)
    return engine, out


def midpoint(network: RoadNetwork, sid: str) -> tuple[float, float]:
    coords = network.get_segment(sid).coords
    return coords[len(coords) // 2]


def sos(network: RoadNetwork, sid: str, minute: float, vehicle: str = "13800000001"
        ) -> Envelope[TerminalAlarm]:
    lon, lat = midpoint(network, sid)
    return Envelope.new(TERMINAL_ALARM, TerminalAlarm(
        vehicle_id=vehicle, lon=lon, lat=lat, observed_at=T0 + timedelta(minutes=minute),
        alarms=("emergency",), alarm_bits=1, vehicle_class="coach"))


def report(network: RoadNetwork, sid: str, minute: float, kind: str = "accident",
           rid: str = "app:1") -> CitizenReport:
    lon, lat = midpoint(network, sid)
    return CitizenReport(report_id=rid, channel="app", kind=kind, text="两车追尾，占一条车道",
                         reported_at=T0 + timedelta(minutes=minute), lon=lon, lat=lat)


async def queue_behind(engine: WarningEngine, network: RoadNetwork, *, downstream_kmh: float
                       ) -> tuple[str, list[str]]:
    """Five normal minutes, then a crawl on 解放大道 pieces 3-5; piece 6 past it at
    ``downstream_kmh``. Returns (the piece past the head, the queue's segments)."""
    queue, past = main_road(network, 3, 5), main_road(network, 6, 6)[0]
    for m in range(5):
        for s in (*queue, past):
            await engine.apply_speed(window(s, m, 50.0, vehicles=2))
    for s in queue:
        await engine.apply_speed(window(s, 5, 6.0, vehicles=5))
    await engine.apply_speed(window(past, 5, downstream_kmh, vehicles=3))
    await engine.evaluate()
    return past, queue


async def test_a_queue_that_ends_at_one_point_is_a_suspected_incident_under_its_warning(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    _, queue = await queue_behind(engine, network, downstream_kmh=50.0)
    [w] = out.of(WARNING)
    assert w.kind == WarningKind.INCIDENT and w.cause == "suspected_incident"
    assert "疑似交通事件" in w.headline and w.detour is None  # the router is not wired here
    [inc] = engine.incidents.active()
    assert inc.status == "suspected" and inc.sources == ("probes",)
    assert inc.warning_id == w.warning_id  # the queue's warning stands for it: one warning
    assert set(inc.segment_ids) == set(queue)
    # The queue dissolves: the incident clears with it.
    for s in queue:
        await engine.apply_speed(window(s, 6, 48.0, vehicles=3))
    await engine.evaluate()
    assert engine.incidents.active() == []
    assert out.of(INCIDENT)[-1].status == "cleared"
    assert {x.warning_id for x in out.of(WARNING)} == {w.warning_id}  # one warning throughout
    assert not out.of(WARNING)[-1].active


async def test_a_queue_spreading_back_from_congestion_ahead_is_no_incident(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    await queue_behind(engine, network, downstream_kmh=12.0)
    [w] = out.of(WARNING)
    assert w.kind == WarningKind.CONGESTION and w.cause == "severe_congestion"
    assert engine.incidents.active() == []


async def test_a_camera_confirms_the_probes_incident_without_a_second_warning(
        network: RoadNetwork) -> None:
    engine, _ = engine_on(network)
    _, queue = await queue_behind(engine, network, downstream_kmh=50.0)
    head = queue[-1]
    lon, lat = midpoint(network, head)
    engine.detectors = {"cam-7": DetectorSite(detector_id="cam-7", lon=lon, lat=lat,
                                              segment_id=head, name="解放大道 3号路口")}
    await engine.on_detected_event(Envelope.new(DETECTED_EVENT, DetectedEvent(
        detector_id="cam-7", event_id="e1", kind="accident", status="active",
        observed_at=T0 + timedelta(minutes=6, seconds=20), confidence=0.7)))
    [inc] = engine.incidents.active()
    assert inc.kind == "accident" and inc.status == "confirmed"
    assert set(inc.sources) == {"probes", "detector:cam-7"}
    assert inc.confidence == combined_confidence([0.6, 0.7])
    assert [w.kind for w in engine.list_warnings("active")] == [WarningKind.INCIDENT]


async def test_an_sos_and_a_citizens_report_at_one_place_are_one_confirmed_incident(
        network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    sid = main_road(network, 8, 8)[0]
    await engine.on_terminal_alarm(sos(network, sid, 1.0))
    [alone] = engine.incidents.active()
    assert alone.status == "suspected"
    assert [w.kind for w in out.of(WARNING)] == [WarningKind.VEHICLE_ALARM]  # its own alarm
    await engine.on_citizen_report(report(network, sid, 3.0))
    [inc] = engine.incidents.active()
    assert inc.incident_id == alone.incident_id and inc.kind == "accident"
    assert inc.status == "confirmed" and len(inc.sources) == 2
    incident_warnings: list[Warning] = [w for w in out.of(WARNING)
                                        if w.kind == WarningKind.INCIDENT]
    assert len(incident_warnings) == 1 and incident_warnings[0].cause == "accident"
    assert incident_warnings[0].details["incident_id"] == inc.incident_id
    # The same report again (another replica stored it, or a redelivery) changes nothing.
    before = len(out.events)
    await engine.on_citizen_report(report(network, sid, 3.0))
    assert len(out.events) == before


async def test_reports_far_apart_are_two_incidents(network: RoadNetwork) -> None:
    engine, _ = engine_on(network)
    await engine.on_citizen_report(report(network, main_road(network, 0, 0)[0], 1.0, rid="a"))
    await engine.on_citizen_report(report(network, main_road(network, 9, 9)[0], 1.0, rid="b"))
    assert len(engine.incidents.active()) == 2


async def test_word_nobody_repeats_expires(network: RoadNetwork) -> None:
    engine, out = engine_on(network)
    await engine.on_terminal_alarm(sos(network, main_road(network, 8, 8)[0], 0.0))
    engine.clock = Clock(start=T0 + timedelta(seconds=EVIDENCE_S + 60))
    await engine.tick()
    assert engine.incidents.active() == []
    cleared: Incident = out.of(INCIDENT)[-1]
    assert cleared.status == "cleared"


async def test_reports_that_are_no_incident_are_left_alone(network: RoadNetwork) -> None:
    engine, _ = engine_on(network)
    sid = main_road(network, 2, 2)[0]
    await engine.on_citizen_report(report(network, sid, 1.0, kind="complaint", rid="c"))
    await engine.on_citizen_report(report(network, sid, 1.0, kind="congestion", rid="d"))
    assert engine.incidents.active() == []
