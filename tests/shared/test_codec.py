"""Envelope codec: round trips for every event type, unknown fields ignored, bad input rejected."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import orjson
import pytest

from shared.codec import Envelope, decode_envelope, encode_envelope
from shared.errors import DecodeError
from shared.events import (
    ALL_SUBJECTS,
    AREA_INDEX,
    ROAD_STATUS,
    VEHICLE_POSITION,
    WARNING,
    Area,
    AreaIndex,
    ArrivalPrediction,
    BusArrival,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    CatalogueEntry,
    CatalogueRequest,
    CitizenReport,
    CommandOutcome,
    DetectedEvent,
    DetectorReading,
    Detour,
    DriverIdentity,
    FeatureCatalogue,
    FeatureState,
    Impact,
    Incident,
    MatchedPosition,
    RoadStatus,
    SegmentForecast,
    SegmentSpeed,
    SegmentSpeedPartial,
    TerminalAlarm,
    TerminalCommand,
    VehiclePosition,
    Warning,
    WarningAction,
    WarningKind,
    WarningStatus,
)

T = datetime(2026, 11, 28, 8, 30, 15, 250000, tzinfo=UTC)

SAMPLES: dict[str, object] = {
    "tti.position": VehiclePosition(vehicle_id="13800000001", lon=114.3, lat=30.55,
                                    observed_at=T, speed_kmh=42.0, heading_deg=90.0,
                                    vehicle_class="coach", received_at=T),
    "tti.alarm": TerminalAlarm(
        vehicle_id="1", lon=114.0, lat=30.0, observed_at=T, alarms=("emergency", "overspeed"),
        alarm_bits=3),
    "tti.segment.speed": SegmentSpeed(
        segment_id="1:2:3", window_start=T, observed_at=T, speed_kmh=None, sample_count=0),
    "tti.road.status": RoadStatus(segment_id="1:2:3", level=5, level_name="严重拥堵",
                                  speed_kmh=4.5, free_flow_kmh=60.0, observed_at=T,
                                  sample_count=3, source="probe", tpi=9.4,
                                  level_name_en="severe congestion"),
    "tti.warning": Warning(
        warning_id="cong-1", kind=WarningKind.CONGESTION, status=WarningStatus.UPDATED,
        category=CapCategory.TRANSPORT, severity=CapSeverity.SEVERE,
        urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
        msg_type=CapMsgType.UPDATE, started_at=T, updated_at=T, expected_end=None,
        headline="解放大道 严重拥堵", cause="severe_congestion", segment_ids=("1:2:3", "1:3:4"),
        area=Area(description="解放大道", polygon=((114.0, 30.0), (114.1, 30.0), (114.0, 30.1),
                                                  (114.0, 30.0))),
        road_names=("解放大道",), version=3,
        detour=Detour(segment_ids=("2:2:3",), travel_time_s=90.0, length_m=700.0,
                      usual_travel_time_s=40.0, coords=((114.0, 30.0), (114.1, 30.0))),
        impact=Impact(bus_routes=("R1",), trips_sampled=200, trips_affected=4,
                      max_delay_s=300.0, computed_at=T),
        details={"sample_count": 3}),
    "tti.incident": Incident(
        incident_id="inc-1", kind="accident", status="confirmed", detected_at=T, updated_at=T,
        lon=114.3, lat=30.5, segment_ids=("1:2:3",), sources=("detector:cam-7",),
        confidence=0.9, lane=2, warning_id="inc-w-1"),
    "tti.area.index": AreaIndex(
        area_id="bridge:w42", name="武汉长江大桥", name_en="Wuhan Yangtze River Bridge",
        observed_at=T, tpi=4.2, level=3,
        level_name="轻度拥堵", level_name_en="light congestion", speed_kmh=31.0,
        congested_share=0.12, segment_count=100, measured_count=40,
        bbox=(114.0, 30.0, 114.5, 30.6)),
    "tti.forecast": SegmentForecast(
        segment_id="1:2:3", made_at=T, valid_at=T, horizon_s=900.0, speed_kmh=22.0, level=3,
        level_name="轻度拥堵", level_name_en="light congestion", source="profile"),
    "tti.citizen.report": CitizenReport(
        report_id="wechat:123", channel="wechat", kind="accident", reported_at=T,
        text="光谷广场追尾", lon=114.4, lat=30.5),
    "tti.warning.action": WarningAction(
        action_id="a-1", action="assign", warning_id="cong-1", user="王警官", role="police",
        at=T, note="派 3 号车", assignee="交警三大队", address="10.0.0.7",
        details={"ticket": 42}),
    "tti.position.matched": MatchedPosition(
        vehicle_id="13800000007", vehicle_class="dangerous_goods", observed_at=T, lon=114.3,
        lat=30.5, segment_id="7:1:2", offset_m=41.5, road_class="primary",
        speed_limit_kmh=60.0, speed_limit_source="statutory", confidence=0.93, speed_kmh=75.0,
        heading_deg=90.0, road_name="解放大道", tunnel=True, status=3),
    "tti.driver.identity": DriverIdentity(
        vehicle_id="13800000007", observed_at=T, state="card_in", driver_id="420100123456",
        driver_name="张师傅", authority="武汉市交通运输局", valid_until="20301231",
        id_card="420102199001011234", ic_result=0),
    "tti.detector.reading": DetectorReading(
        detector_id="cam-7", observed_at=T, interval_s=60, lane=2, vehicle_count=31,
        mean_speed_kmh=37.5, occupancy_pct=12.5, queue_length_m=0.0, source="mqtt"),
    "tti.detector.event": DetectedEvent(
        detector_id="cam-7", event_id="e1", kind="fog", observed_at=T, confidence=0.9,
        details={"visibility_m": 80}),
    "tti.feature.state": FeatureState(
        kind="parking", feature_id="w4242", observed_at=T,
        values={"free_spaces": 37, "status": "open", "barrier_ok": True, "note": None}),
    # Nested frozen dataclasses in a tuple: each entry must come back as a CatalogueEntry.
    "tti.feature.catalogue": FeatureCatalogue(
        kind="parking", version="3f2a9c0d1e4b5a67", published_at=T, chunk=1, chunks=3,
        features=(CatalogueEntry(feature_id="w4242", capacity=300),
                  CatalogueEntry(feature_id="n17"))),
    "tti.feature.catalogue_request": CatalogueRequest(requested_by="collector-0",
                                                      requested_at=T),
    "tti.bus.arrival": BusArrival(
        vehicle_id="13800000001", kind="departure", trip_id="R1_0_0800", route_id="R1",
        stop_id="1479", stop_sequence=2, observed_at=T, start_date="20261128", direction_id=0,
        scheduled_at=T, delay_s=-12.5, dwell_s=31.0, uncertainty_s=10.0),
    "tti.bus.prediction": ArrivalPrediction(
        trip_id="R1_0_0800", route_id="R1", stop_id="1485", stop_sequence=8,
        vehicle_id="13800000001", predicted_arrival=T, made_at=T, source="live",
        start_date="20261128", start_time=None, direction_id=0, scheduled_arrival=T),
    # Vehicle keys are 64-bit unsigned: the largest must survive JSON.
    "tti.segment.partial": SegmentSpeedPartial(
        segment_id="1:2:3", bucket=29_487_030, window_s=60.0,
        moving={"mm": 412_500, "ms": 41_250, "vehicles": [7, 2**64 - 1]},
        stopped={"mm": 0, "ms": 20_000, "vehicles": [7]},
        parked={"mm": 0, "ms": 0, "vehicles": []}, excluded_ms=15_000),
    "tti.terminal.command": TerminalCommand(
        command_id="fatigue-13800000001-1", vehicle_id="13800000001", kind="text",
        requested_at=T, expires_at=T, requested_by="warning-0",
        text="您已连续驾驶4小时，请立即休息", flags=("tts", "display"), correlation="w-1"),
    # A nested optional VehiclePosition: the answer to a 0x8201 position query.
    "tti.terminal.command.outcome": CommandOutcome(
        command_id="q-1", vehicle_id="13800000001", kind="position_query",
        status="acknowledged", at=T, replica=1, result=0, result_text="success",
        position=VehiclePosition(vehicle_id="13800000001", lon=114.3, lat=30.55,
                                 observed_at=T, speed_kmh=42.0, received_at=T),
        correlation="w-1"),
}


@pytest.mark.parametrize("subject", ALL_SUBJECTS, ids=lambda s: s.name)
def test_every_event_type_round_trips(subject: object) -> None:
    payload = SAMPLES[subject.name]  # type: ignore[attr-defined]
    env = Envelope.new(subject, payload, correlation_id="c-1")  # type: ignore[arg-type]
    back = decode_envelope(subject, encode_envelope(env))  # type: ignore[arg-type]
    assert back == env


def test_times_are_utc_with_z() -> None:
    raw = encode_envelope(Envelope.new(ROAD_STATUS, SAMPLES["tti.road.status"]))
    assert b'"observed_at":"2026-11-28T08:30:15.250000Z"' in raw


def test_unknown_fields_are_ignored_missing_required_rejected() -> None:
    env = Envelope.new(VEHICLE_POSITION, SAMPLES["tti.position"])  # type: ignore[arg-type]
    data = orjson.loads(encode_envelope(env))
    data["payload"]["from_the_future"] = 1
    assert decode_envelope(VEHICLE_POSITION, orjson.dumps(data)).payload == env.payload
    del data["payload"]["lat"]
    with pytest.raises(DecodeError, match="lat"):
        decode_envelope(VEHICLE_POSITION, orjson.dumps(data))


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"id": 1}',
                                 b'{"id":"x","time":"yesterday","payload":{}}',
                                 b'{"id":"x","time":"2026-01-01T00:00:00Z","payload":[]}'])
def test_malformed_envelopes_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_envelope(VEHICLE_POSITION, raw)


def test_an_area_index_sent_before_name_en_still_decodes() -> None:
    env = Envelope.new(AREA_INDEX, SAMPLES["tti.area.index"])  # type: ignore[arg-type]
    data = orjson.loads(encode_envelope(env))
    del data["payload"]["name_en"]
    back = decode_envelope(AREA_INDEX, orjson.dumps(data)).payload
    assert back.name == "武汉长江大桥" and back.name_en is None


def test_payloads_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLES["tti.position"].lat = 0.0  # type: ignore[attr-defined]


def test_a_value_outside_an_enum_is_a_decode_error() -> None:
    raw = orjson.loads(encode_envelope(Envelope.new(WARNING, SAMPLES["tti.warning"])))
    raw["payload"]["severity"] = "apocalyptic"
    with pytest.raises(DecodeError, match="severity"):
        decode_envelope(WARNING, orjson.dumps(raw))


def test_every_subject_has_a_sample() -> None:
    assert {s.name for s in ALL_SUBJECTS} == set(SAMPLES)
