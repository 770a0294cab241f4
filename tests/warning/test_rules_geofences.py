"""The geofence rule: restricted tunnels and zones, route deviation, time windows, redelivery."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import shapely
from shapely.geometry import mapping

from services.warning.rules.geofences import EXIT_MARGIN_M, SILENT_S, GeofenceRule
from shared.clients.bigdata import Geofence
from shared.events import (
    CapCategory,
    CapSeverity,
    MatchedPosition,
    Warning,
    WarningKind,
    WarningStatus,
)

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)  # 16:00 in Wuhan
LON0, LAT0 = 114.30, 30.50
M_LON = 1 / 95_900  # degrees of longitude per metre at 30.5° N (≈)
M_LAT = 1 / 111_195
TUNNEL = ("7:1:2", "7:2:3")

TUNNEL_FENCE = Geofence(geofence_id="tunnel-dg", name="长江隧道", name_en="Yangtze Tunnel",
                        kind="restricted_road", vehicle_classes=frozenset({"dangerous_goods"}),
                        segment_ids=frozenset(TUNNEL))
ZONE = shapely.box(LON0, LAT0, LON0 + 500 * M_LON, LAT0 + 500 * M_LAT)
ZONE_FENCE = Geofence(geofence_id="school", name="学校片区", kind="restricted_zone",
                      vehicle_classes=frozenset({"dangerous_goods", "coach"}),
                      geometry=mapping(ZONE))
ROUTE_LINE = shapely.LineString([(LON0, LAT0), (LON0 + 2000 * M_LON, LAT0)])
ROUTE_FENCE = Geofence(geofence_id="route-1380", name="危化品专用线路", kind="assigned_route",
                       vehicle_classes=frozenset(), vehicle_ids=frozenset({"1380"}),
                       geometry=mapping(ROUTE_LINE), width_m=100.0)


def fix(s: float, *, vid: str = "1380", cls: str = "dangerous_goods", seg: str = "5:0:1",
        lon: float = LON0 + 0.01, lat: float = LAT0 + 0.01, tunnel: bool = False,
        confidence: float = 0.95, t0: datetime = T0) -> MatchedPosition:
    return MatchedPosition(vehicle_id=vid, vehicle_class=cls,
                           observed_at=t0 + timedelta(seconds=s), lon=lon, lat=lat,
                           segment_id=seg, offset_m=10.0, road_class="primary",
                           speed_limit_kmh=60.0, speed_limit_source="osm",
                           confidence=confidence, speed_kmh=40.0, tunnel=tunnel,
                           road_name="长江隧道" if tunnel else "沿江大道")


def run(rule: GeofenceRule, fixes: Iterable[MatchedPosition]) -> list[Warning]:
    out: list[Warning] = []
    for p in fixes:
        out.extend(rule.on_matched(p))
    return out


def tunnel_trip(cls: str = "dangerous_goods", vid: str = "1380") -> list[MatchedPosition]:
    """Approach, 13 fixes in the tunnel (10 s apart, two minutes), out the other side."""
    trip = [fix(0, cls=cls, vid=vid, seg="7:0:1"), fix(10, cls=cls, vid=vid, seg="7:0:1")]
    trip += [fix(20 + 10 * i, cls=cls, vid=vid, seg=TUNNEL[i // 7], tunnel=True)
             for i in range(13)]
    trip.append(fix(150, cls=cls, vid=vid, seg="7:3:4"))
    trip.append(fix(160, cls=cls, vid=vid, seg="7:3:4"))
    return trip


def rule_with(*fences: Geofence, **kwargs: Any) -> GeofenceRule:
    rule = GeofenceRule(**kwargs)
    rule.set_fences(fences)
    return rule


def test_dangerous_goods_truck_in_a_closed_tunnel_raises_one_alarm_updated_and_resolved() -> None:
    rule = rule_with(TUNNEL_FENCE, ZONE_FENCE)
    out = run(rule, tunnel_trip())
    assert len({w.warning_id for w in out}) == 1
    first, *updates, last = out
    assert first.status is WarningStatus.RAISED and first.version == 1
    assert first.kind is WarningKind.VEHICLE_ALARM and first.category is CapCategory.SAFETY
    assert first.severity is CapSeverity.SEVERE
    assert first.cause == "geofence_entry"
    assert first.started_at == T0 + timedelta(seconds=20)
    assert "长江隧道" in first.headline and "Yangtze Tunnel" in first.headline_en
    assert first.details["geofence_id"] == "tunnel-dg"
    assert first.details["kind"] == "restricted_road"
    assert first.details["vehicle_class"] == "dangerous_goods"
    # Two minutes inside: updated at most once a minute.
    assert [w.status for w in updates] == [WarningStatus.UPDATED, WarningStatus.UPDATED]
    assert [w.updated_at - T0 for w in updates] == [timedelta(seconds=80),
                                                    timedelta(seconds=140)]
    assert "仍在其中" in updates[-1].description
    assert last.status is WarningStatus.RESOLVED
    assert last.ended_at == T0 + timedelta(seconds=150)  # the first fix outside
    assert last.details["ended_because"] == "exited"
    assert "驶离" in last.description and "left it" in last.description_en
    assert [w.version for w in out] == [1, 2, 3, 4]
    assert rule.expire(T0 + timedelta(hours=1)) == []


def test_a_taxi_through_the_same_tunnel_raises_nothing() -> None:
    rule = rule_with(TUNNEL_FENCE)
    assert run(rule, tunnel_trip(cls="taxi", vid="T1")) == []
    assert rule.expire(T0 + timedelta(hours=1)) == []


def test_redelivered_fixes_change_nothing_and_a_replay_makes_the_same_warnings() -> None:
    trip = tunnel_trip()
    rule = rule_with(TUNNEL_FENCE)
    out = []
    for i, p in enumerate(trip):
        out += rule.on_matched(p)
        assert rule.on_matched(p) == []  # redelivered at once
        assert rule.on_matched(trip[max(0, i - 3)]) == []  # or late
    assert out == run(rule_with(TUNNEL_FENCE), trip)


def test_a_doubtful_fix_neither_enters_nor_leaves_a_closed_road() -> None:
    rule = rule_with(TUNNEL_FENCE)
    # Under the closed road, the matcher unsure: no entry.
    assert run(rule, [fix(0, seg=TUNNEL[0], confidence=0.3)]) == []
    raised = run(rule, [fix(10, seg=TUNNEL[0])])
    assert len(raised) == 1
    assert run(rule, [fix(20, seg="9:9:9", confidence=0.3)]) == []  # not an exit
    (resolved,) = run(rule, [fix(30, seg="9:9:9")])
    assert resolved.ended_at == T0 + timedelta(seconds=30)


def test_a_restricted_zone_by_polygon_with_a_margin_at_its_edge() -> None:
    rule = rule_with(ZONE_FENCE)
    east = LON0 + 500 * M_LON
    mid = LAT0 + 250 * M_LAT
    out = run(rule, [
        fix(0, cls="coach", vid="C9", lon=east + 100 * M_LON, lat=mid),  # outside
        fix(10, cls="coach", vid="C9", lon=east - 20 * M_LON, lat=mid),  # in: entry
        fix(20, cls="coach", vid="C9", lon=east + (EXIT_MARGIN_M - 5) * M_LON, lat=mid),
        fix(30, cls="coach", vid="C9", lon=east - 5 * M_LON, lat=mid),
        fix(40, cls="coach", vid="C9", lon=east + 60 * M_LON, lat=mid),  # out: exit
    ])
    assert [w.status for w in out] == [WarningStatus.RAISED, WarningStatus.RESOLVED]
    assert out[0].severity is CapSeverity.MODERATE  # a coach, not on a tunnel or bridge
    assert out[0].started_at == T0 + timedelta(seconds=10)
    assert out[1].ended_at == T0 + timedelta(seconds=40)
    assert "学校片区" in out[0].headline
    # A taxi is not barred from it; a fix far from every fence leaves no state behind.
    assert run(rule, [fix(0, cls="taxi", vid="T2", lon=east - 20 * M_LON, lat=mid)]) == []
    assert run(rule, [fix(0, vid="far", lon=LON0 + 1, lat=LAT0 + 1)]) == []
    assert "far" not in rule.vehicles


def route_fix(s: float, off_m: float, *, vid: str = "1380") -> MatchedPosition:
    return fix(s, vid=vid, lon=LON0 + 10 * s * M_LON, lat=LAT0 + off_m * M_LAT)


def test_route_deviation_raised_after_consecutive_fixes_off_and_resolved_on_return() -> None:
    rule = rule_with(ROUTE_FENCE, deviation_fixes=5, deviation_s=600)
    on = [route_fix(s, 10) for s in range(0, 30, 10)]
    off = [route_fix(s, 200) for s in range(30, 90, 10)]  # six fixes 200 m away
    back = [route_fix(90, 20), route_fix(100, 0)]
    out = run(rule, [*on, *off, *back])
    assert [w.status for w in out] == [WarningStatus.RAISED, WarningStatus.RESOLVED]
    raised, resolved = out
    assert raised.cause == "route_deviation" and raised.severity is CapSeverity.MODERATE
    assert raised.started_at == T0 + timedelta(seconds=30)  # the first fix off
    assert raised.updated_at == T0 + timedelta(seconds=70)  # the fifth: decided then
    assert resolved.ended_at == T0 + timedelta(seconds=90)
    assert resolved.details["ended_because"] == "returned"
    assert "回到路线" in resolved.description
    # A vehicle the route does not name may drive anywhere.
    assert run(rule, [route_fix(s, 300, vid="other") for s in range(0, 120, 10)]) == []


def test_route_deviation_by_time_off_the_route_and_not_before_joining_it() -> None:
    rule = rule_with(ROUTE_FENCE, deviation_fixes=50, deviation_s=60)
    # Driving to the route from the depot is no deviation.
    assert run(rule, [route_fix(s, 500) for s in range(0, 100, 20)]) == []
    out = run(rule, [route_fix(100, 0), route_fix(130, 300), route_fix(160, 300),
                     route_fix(190, 300)])
    assert [w.status for w in out] == [WarningStatus.RAISED]
    assert out[0].started_at == T0 + timedelta(seconds=130)
    assert out[0].updated_at == T0 + timedelta(seconds=190)  # 60 s off


def test_time_windows_and_a_restriction_ending_while_inside() -> None:
    night = replace(TUNNEL_FENCE, time_windows=((22 * 3600, 6 * 3600),))
    day_1300 = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)  # 21:00 local: not yet closed
    rule = rule_with(night)
    assert run(rule, [fix(s, seg=TUNNEL[0], tunnel=True, t0=day_1300)
                      for s in (0, 10, 20)]) == []
    late = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)  # 23:00 local
    assert len(run(rule, [fix(0, vid="A", seg=TUNNEL[0], tunnel=True, t0=late)])) == 1
    dawn = datetime(2026, 11, 28, 21, 58, tzinfo=UTC)  # 05:58 local
    rule = rule_with(night)
    (raised,) = run(rule, [fix(0, seg=TUNNEL[0], tunnel=True, t0=dawn)])
    (resolved,) = run(rule, [fix(240, seg=TUNNEL[1], tunnel=True, t0=dawn)])  # 06:02, inside
    six = datetime(2026, 11, 28, 22, 0, tzinfo=UTC)
    assert resolved.ended_at == six
    assert resolved.details["ended_because"] == "restriction_ended"
    # The tick ends it alike when no fix comes.
    rule = rule_with(night)
    run(rule, [fix(0, seg=TUNNEL[0], tunnel=True, t0=dawn)])
    assert rule.expire(six - timedelta(seconds=1)) == []
    (ticked,) = rule.expire(six + timedelta(seconds=30))
    assert ticked.ended_at == six and ticked.warning_id == raised.warning_id


def test_validity_dates() -> None:
    future = replace(TUNNEL_FENCE, valid_from=T0 + timedelta(days=1))
    assert run(rule_with(future), tunnel_trip()) == []
    past = replace(TUNNEL_FENCE, valid_until=T0)
    assert run(rule_with(past), tunnel_trip()) == []


def test_silence_ends_an_episode_at_its_last_fix() -> None:
    rule = rule_with(TUNNEL_FENCE)
    run(rule, tunnel_trip()[:6])
    last_fix = T0 + timedelta(seconds=50)
    assert rule.expire(last_fix + timedelta(seconds=SILENT_S - 1)) == []
    (ended,) = rule.expire(last_fix + timedelta(seconds=SILENT_S))
    assert ended.ended_at == last_fix and ended.details["ended_because"] == "no_reports"


def test_closed_by_hand_while_inside_stays_closed_until_the_vehicle_leaves() -> None:
    rule = rule_with(TUNNEL_FENCE)
    (raised,) = run(rule, tunnel_trip()[:3])
    rule.adopt(replace(raised, status=WarningStatus.CLOSED, version=2))
    assert run(rule, tunnel_trip()[3:]) == []  # still inside, then out: nothing
    again = run(rule, [fix(300, seg=TUNNEL[0], tunnel=True)])  # back in: a new episode
    assert len(again) == 1 and again[0].warning_id != raised.warning_id


def test_resumed_episode_goes_on_and_ends_at_exit() -> None:
    trip = tunnel_trip()
    first = GeofenceRule()
    first.set_fences([TUNNEL_FENCE])
    (raised,) = run(first, trip[:4])
    second = rule_with(TUNNEL_FENCE)
    second.resume(raised)
    out = run(second, trip[3:])
    assert {w.warning_id for w in out} == {raised.warning_id}
    assert out[-1].status is WarningStatus.RESOLVED
    assert out[-1].ended_at == T0 + timedelta(seconds=150)


def test_a_fence_withdrawn_ends_the_episode_at_the_next_fix() -> None:
    rule = rule_with(TUNNEL_FENCE)
    run(rule, tunnel_trip()[:4])
    rule.set_fences([])
    (ended,) = run(rule, [fix(40, seg=TUNNEL[0], tunnel=True)])
    assert ended.details["ended_because"] == "geofence_removed"
    assert ended.ended_at == T0 + timedelta(seconds=40)
