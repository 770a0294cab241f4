"""The speeding rule: the binding limit per vehicle class and hour, tolerances, doubtful fixes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from services.warning.rules.common import RuleSettings
from services.warning.rules.speeding import SpeedingRule, effective_limit
from shared.events import (
    CapCategory,
    CapMsgType,
    CapSeverity,
    MatchedPosition,
    Warning,
    WarningKind,
    WarningStatus,
)

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)  # 16:00 in Wuhan
NIGHT = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)  # 23:00 in Wuhan


def fix(s: float, kmh: float, *, vid: str = "13900000001", cls: str = "dangerous_goods",
        limit: float | None = 60.0, source: str = "osm", road: str = "primary",
        confidence: float = 0.97, t0: datetime = T0, seg: str = "5:0:1") -> MatchedPosition:
    return MatchedPosition(vehicle_id=vid, vehicle_class=cls,
                           observed_at=t0 + timedelta(seconds=s), lon=114.3 + s * 1e-5,
                           lat=30.5, segment_id=seg, offset_m=10.0, road_class=road,
                           speed_limit_kmh=limit, speed_limit_source=source,
                           confidence=confidence, speed_kmh=kmh, road_name="雄楚大道")


def run(rule: SpeedingRule, fixes: Iterable[MatchedPosition]) -> list[Warning]:
    out: list[Warning] = []
    for p in fixes:
        out.extend(rule.on_matched(p))
    return out


def every(step: float, start: float, end: float, kmh: float, **kw: object) -> list[MatchedPosition]:
    """Fixes every ``step`` s from ``start`` to ``end`` (exclusive) at ``kmh``."""
    n = int((end - start) / step)
    return [fix(start + i * step, kmh, **kw) for i in range(n)]  # type: ignore[arg-type]


def test_dangerous_goods_at_75_on_a_60_road_is_one_alarm_from_start_to_end() -> None:
    rule = SpeedingRule()
    trip = every(5, 0, 20, 55.0) + every(5, 20, 200, 75.0) + every(5, 200, 260, 50.0)
    out = run(rule, trip)
    assert len({w.warning_id for w in out}) == 1
    first, *updates, last = out
    assert first.kind is WarningKind.VEHICLE_ALARM and first.category is CapCategory.SAFETY
    assert first.status is WarningStatus.RAISED and first.msg_type is CapMsgType.ALERT
    assert first.cause == "speeding" and first.severity is CapSeverity.SEVERE  # 75 ≥ 1.2 × 60
    # Over from 20 s on; raised once it had lasted the 30 s tolerance; started at 20 s.
    assert first.started_at == T0 + timedelta(seconds=20)
    assert first.updated_at == T0 + timedelta(seconds=50)
    assert first.details["limit_kmh"] == 60.0 and first.details["limit_source"] == "osm"
    assert "限速 60 km/h" in first.headline
    # Updates at most once a minute while it goes on (75 km/h every 5 s for 150 s).
    assert [w.status for w in updates] == [WarningStatus.UPDATED, WarningStatus.UPDATED]
    gaps = [b.updated_at - a.updated_at for a, b in pairwise(out[:-1])]
    assert all(g >= timedelta(seconds=60) for g in gaps)
    # Back within the limit at 200 s and stayed so for 30 s: ended at 200 s.
    assert last.status is WarningStatus.RESOLVED and last.ended_at == T0 + timedelta(seconds=200)
    assert last.details["ended_because"] == "back_within_limit"
    assert last.details["max_speed_kmh"] == 75.0 and last.details["over_s"] == 180.0
    assert [w.version for w in out] == list(range(1, len(out) + 1))
    assert rule.book.find(("13900000001", "speeding")) is None


def test_the_dangerous_goods_limit_is_80_on_expressways_and_60_elsewhere() -> None:
    assert effective_limit(fix(0, 0, limit=120.0, road="motorway"), T0.timestamp()) == (
        80.0, "dangerous_goods")
    # An urban expressway (trunk) is not a 高速公路: 60 applies.
    assert effective_limit(fix(0, 0, limit=80.0, road="trunk"), T0.timestamp()) == (
        60.0, "dangerous_goods")
    # A lower posted limit stays the binding one; no known limit: the class's.
    assert effective_limit(fix(0, 0, limit=40.0), T0.timestamp()) == (40.0, "osm")
    assert effective_limit(fix(0, 0, limit=None, source="none"), T0.timestamp()) == (
        60.0, "dangerous_goods")
    # A taxi or a coach by day keeps the road's limit.
    assert effective_limit(fix(0, 0, cls="coach", limit=120.0, road="motorway"),
                           T0.timestamp()) == (120.0, "osm")
    rule = SpeedingRule()
    assert run(rule, every(5, 0, 120, 84.0, limit=120.0, road="motorway")) == []
    out = run(rule, every(5, 120, 240, 92.0, limit=120.0, road="motorway"))
    assert out and out[0].details["limit_kmh"] == 80.0
    assert out[0].details["limit_source"] == "dangerous_goods"


def test_coaches_at_night_keep_to_80_percent_of_the_day_limit() -> None:
    day = SpeedingRule()
    assert run(day, every(5, 0, 300, 62.0, cls="coach")) == []  # within 60 + 5 by day
    night = SpeedingRule()
    out = run(night, every(5, 0, 300, 62.0, cls="coach", t0=NIGHT))
    assert out and out[0].status is WarningStatus.RAISED
    assert out[0].details["limit_kmh"] == 48.0 and out[0].details["limit_source"] == "coach_night"
    assert out[0].severity is CapSeverity.SEVERE  # 62 ≥ 1.2 × 48
    # 06:00 is day again, 05:59 still night.
    six = datetime(2026, 11, 28, 22, 0, tzinfo=UTC)
    assert effective_limit(fix(0, 0, cls="coach"), six.timestamp()) == (60.0, "osm")
    assert effective_limit(fix(-60, 0, cls="tourist_bus"), six.timestamp() - 60) == (
        48.0, "coach_night")


def test_tolerances_in_kmh_and_seconds_are_settings() -> None:
    # 64 on a 60 road is within the 5 km/h tolerance; 25 s over is within the 30 s one.
    rule = SpeedingRule()
    assert run(rule, every(5, 0, 300, 64.0)) == []
    assert run(rule, every(5, 300, 325, 80.0) + every(5, 325, 400, 50.0)) == []
    strict = SpeedingRule(RuleSettings(speeding_tolerance_kmh=2.0, speeding_tolerance_s=10.0))
    out = run(strict, every(5, 0, 30, 64.0))
    assert [w.started_at for w in out] == [T0]
    assert out[0].updated_at == T0 + timedelta(seconds=10)
    assert out[0].details["tolerance_kmh"] == 2.0 and out[0].details["tolerance_s"] == 10.0


def test_doubtful_fixes_on_an_elevated_road_do_not_make_an_alarm_on_their_own() -> None:
    # Matched to the elevated road (limit 60) with low confidence: perhaps on the ground road.
    rule = SpeedingRule()
    assert run(rule, every(5, 0, 600, 90.0, confidence=0.3)) == []
    # Sure fixes over the limit raise it; doubtful ones in between neither confirm nor break a
    # run that is starting, and do continue one already confirmed.
    mixed = SpeedingRule()
    trip = [fix(0, 90.0), *every(5, 5, 40, 90.0, confidence=0.3)]
    assert run(mixed, trip) == [], "only the first fix was sure: not confirmed"
    out = run(mixed, [fix(40, 90.0)])
    assert [w.started_at for w in out] == [T0], "a sure fix 40 s later confirms the run"
    more = run(mixed, every(5, 45, 300, 90.0, confidence=0.3))
    assert all(w.status is WarningStatus.UPDATED for w in more) and more


def test_a_redelivered_or_late_fix_changes_nothing() -> None:
    rule = SpeedingRule()
    trip = every(5, 0, 100, 80.0)
    out = run(rule, trip)
    assert run(rule, trip) == [] and run(rule, [fix(50, 120.0)]) == []
    assert len(out) == 2  # raised at 30 s, updated at 90 s


def test_a_vehicle_that_falls_silent_ends_its_alarm_at_its_last_fix_over_the_limit() -> None:
    rule = SpeedingRule()
    out = run(rule, every(5, 0, 100, 80.0))
    assert rule.expire(T0 + timedelta(seconds=150)) == []  # 55 s of silence: not yet
    ended = rule.expire(T0 + timedelta(seconds=300))
    assert [w.status for w in ended] == [WarningStatus.RESOLVED]
    assert ended[0].warning_id == out[0].warning_id
    assert ended[0].ended_at == T0 + timedelta(seconds=95)
    assert ended[0].details["ended_because"] == "no_reports"
    # The tick finding it over and the next fix finding it over agree.
    other = SpeedingRule()
    run(other, every(5, 0, 100, 80.0))
    late = run(other, [fix(400, 80.0)])
    assert late[0] == ended[0]


def test_a_second_replica_and_a_restarted_rule_make_the_same_warnings() -> None:
    trip = every(5, 0, 120, 80.0) + every(5, 120, 300, 95.0) + every(5, 300, 360, 40.0)
    a, b = SpeedingRule(), SpeedingRule()
    assert run(a, trip) == run(b, trip)
    first = SpeedingRule()
    head = run(first, trip[:30])  # through 145 s
    resumed = SpeedingRule()
    resumed.resume(head[-1])
    tail = run(resumed, trip[30:])
    assert {w.warning_id for w in head + tail} == {head[0].warning_id}
    assert tail[-1].status is WarningStatus.RESOLVED
    assert tail[-1].ended_at == T0 + timedelta(seconds=300)
    assert [w.version for w in head + tail] == list(range(1, len(head + tail) + 1))


def test_a_worse_violation_is_updated_at_once() -> None:
    rule = SpeedingRule()
    out = run(rule, every(5, 0, 45, 68.0))  # 68 on 60: moderate, raised at 30 s
    assert [w.severity for w in out] == [CapSeverity.MODERATE]
    up = run(rule, [fix(45, 80.0)])  # 15 s later, 80 ≥ 72: severe, not held back
    assert [(w.status, w.severity) for w in up] == [(WarningStatus.UPDATED, CapSeverity.SEVERE)]


def test_another_vehicles_speeding_is_its_own_alarm() -> None:
    rule = SpeedingRule()
    out = run(rule, sorted(every(5, 0, 60, 80.0) + every(5, 0, 60, 80.0, vid="2"),
                           key=lambda p: p.observed_at))
    assert {w.details["vehicle_id"] for w in out} == {"13900000001", "2"}
    assert len({w.warning_id for w in out}) == 2
