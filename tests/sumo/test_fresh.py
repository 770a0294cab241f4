"""The harness's warning latency: from the speed window completing the evidence to the warning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.sumo.fresh import warning_latency
from bench.sumo.host import Tap
from shared.events import (
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    SegmentSpeed,
    Warning,
    WarningKind,
    WarningStatus,
)

T0 = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)


def speed(sid: str, minute: int) -> SegmentSpeed:
    return SegmentSpeed(segment_id=sid, window_start=T0 + timedelta(minutes=minute),
                        observed_at=T0 + timedelta(minutes=minute + 1), speed_kmh=5.0,
                        sample_count=3)


def warning(wid: str, segments: tuple[str, ...], version: int = 1) -> Warning:
    return Warning(warning_id=wid, kind=WarningKind.CONGESTION, status=WarningStatus.RAISED,
                   category=CapCategory.TRANSPORT, severity=CapSeverity.SEVERE,
                   urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
                   msg_type=CapMsgType.ALERT, cause="severe_congestion", started_at=T0,
                   updated_at=T0, headline="h", segment_ids=segments, version=version)


def test_latency_counts_from_the_newest_window_of_the_warnings_segments() -> None:
    tap = Tap()
    at = T0 + timedelta(minutes=2)
    tap.speeds += [(at, speed("a", 0)), (at + timedelta(seconds=0.3), speed("b", 0)),
                   (at + timedelta(seconds=9), speed("a", 1))]  # after the warning: not it
    tap.warnings += [(at + timedelta(seconds=0.5), warning("w1", ("a", "b"))),
                     (at + timedelta(seconds=30), warning("w1", ("a",), 2)),  # an update
                     (at + timedelta(seconds=10), warning("w2", ("a",))),
                     (at + timedelta(seconds=11), warning("w3", ("elsewhere",)))]
    lat = warning_latency(tap)
    assert lat.warnings == 2  # w1's update is no new evidence; w3 names no segment with a window
    assert lat.p50_s is not None and abs(lat.p50_s - 0.6) < 1e-6  # median of 0.2 s and 1.0 s
    assert lat.p95_s is not None and abs(lat.p95_s - 1.0) < 1e-6
