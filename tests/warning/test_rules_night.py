"""Long-distance coaches on the road from 02:00 to 05:00: one alarm; routes under 100 km exempt."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from services.warning.rules.common import RuleSettings, load_coach_routes
from services.warning.rules.night import NightDrivingRule
from shared.errors import ConfigError
from shared.events import CapCategory, MatchedPosition, Warning, WarningKind, WarningStatus

TWO = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)  # 02:00 on the 28th in Wuhan


def fix(s: float, kmh: float = 80.0, *, vid: str = "13900000003", cls: str = "coach",
        route: str | None = "HB-WH-YC", t0: datetime = TWO) -> MatchedPosition:
    return MatchedPosition(vehicle_id=vid, vehicle_class=cls,
                           observed_at=t0 + timedelta(seconds=s), lon=114.3, lat=30.5,
                           segment_id="5:0:1", offset_m=0.0, road_class="motorway",
                           speed_limit_kmh=100.0, speed_limit_source="osm", confidence=0.99,
                           speed_kmh=kmh, route_id=route, road_name="沪渝高速")


def every(start: float, end: float, kmh: float = 80.0, step: float = 30.0,
          **kw: object) -> list[MatchedPosition]:
    n = round((end - start) / step)
    return [fix(start + i * step, kmh, **kw) for i in range(n)]  # type: ignore[arg-type]


def run(rule: NightDrivingRule, fixes: Iterable[MatchedPosition]) -> list[Warning]:
    out: list[Warning] = []
    for p in fixes:
        out.extend(rule.on_matched(p))
    return out


ROUTES = RuleSettings(coach_routes={"HB-WH-YC": 320.0, "HB-WH-EZ": 80.0})


def test_a_coach_moving_at_0230_is_one_alarm_until_it_stops() -> None:
    rule = NightDrivingRule(ROUTES)
    trip = every(-600, 1800) + every(1800, 3600, kmh=0.0)  # 01:50-02:30 moving, then stands
    out = run(rule, trip)
    assert len({w.warning_id for w in out}) == 1
    first, *updates, last = out
    assert first.kind is WarningKind.VEHICLE_ALARM and first.category is CapCategory.SAFETY
    assert first.cause == "night_driving" and first.status is WarningStatus.RAISED
    assert first.started_at == TWO  # the first fix moving after 02:00
    assert first.updated_at == TWO + timedelta(seconds=60)  # a minute of it confirms
    assert "凌晨2时至5时" in first.headline and "320 公里" in first.description
    assert all(w.status is WarningStatus.UPDATED for w in updates)
    # Fixes every 30 s until 10 minutes standing end it at 40 min: an update a minute, at
    # 2, 3 … 39 min.
    assert all(b.updated_at - a.updated_at >= timedelta(seconds=60)
               for a, b in pairwise([first, *updates]))
    assert len(updates) == 38
    assert last.status is WarningStatus.RESOLVED
    assert last.ended_at == TWO + timedelta(seconds=1800)  # where it stopped
    assert last.details["ended_because"] == "stopped" and "已停车" in last.description


def test_routes_under_100_km_tourist_buses_and_other_hours_make_no_alarm() -> None:
    rule = NightDrivingRule(ROUTES)
    assert run(rule, every(0, 1200, route="HB-WH-EZ")) == []  # 80 km: exempt
    assert run(rule, every(0, 1200, vid="2", cls="tourist_bus")) == []
    assert run(rule, every(0, 1200, vid="3", cls="dangerous_goods")) == []
    assert run(rule, every(3 * 3600, 4 * 3600, vid="4")) == []  # 05:00-06:00
    assert run(rule, every(-3600, 0, vid="5")) == []  # 01:00-02:00
    # A coach whose route is unknown is not exempt.
    assert run(rule, every(0, 120, vid="6", route=None))[0].status is WarningStatus.RAISED
    assert run(rule, every(0, 120, vid="7", route="unknown"))[0].status is WarningStatus.RAISED


def test_a_coach_pulling_in_at_0200_or_waiting_at_a_red_light_is_not_split_or_raised() -> None:
    rule = NightDrivingRule(ROUTES)
    assert run(rule, [fix(0), fix(30), fix(50, 0.0), *every(60, 900, kmh=0.0)]) == []
    # Two minutes at a red light in the middle do not end it.
    red = NightDrivingRule(ROUTES)
    out = run(red, every(0, 600) + every(600, 720, kmh=0.0) + every(720, 1200))
    assert len({w.warning_id for w in out}) == 1
    assert all(w.status is not WarningStatus.RESOLVED for w in out)


def test_still_moving_at_0500_ends_the_alarm_at_0500() -> None:
    rule = NightDrivingRule(ROUTES)
    out = run(rule, every(2.5 * 3600, 3 * 3600 + 300))  # 04:30-05:05
    assert out[0].started_at == TWO + timedelta(hours=2.5)
    assert out[-1].status is WarningStatus.RESOLVED
    assert out[-1].ended_at == TWO + timedelta(hours=3)
    assert out[-1].details["ended_because"] == "hours_over"


def test_silence_ends_it_at_the_last_moving_fix_and_the_tick_agrees_with_the_next_fix() -> None:
    a = NightDrivingRule(ROUTES)
    run(a, every(0, 600))
    assert a.expire(TWO + timedelta(seconds=900)) == []
    ended = a.expire(TWO + timedelta(seconds=1300))
    assert [w.details["ended_because"] for w in ended] == ["no_reports"]
    assert ended[0].ended_at == TWO + timedelta(seconds=570)
    b = NightDrivingRule(ROUTES)
    run(b, every(0, 600))
    assert run(b, [fix(1500)])[0] == ended[0]


def test_replicas_agree_and_a_restart_goes_on_with_the_open_alarm() -> None:
    trip = every(0, 1800) + every(1800, 2700, kmh=0.0)
    assert run(NightDrivingRule(ROUTES), trip) == run(NightDrivingRule(ROUTES), trip)
    head = run(NightDrivingRule(ROUTES), trip[:30])
    resumed = NightDrivingRule(ROUTES)
    resumed.resume(head[-1])
    tail = run(resumed, trip[30:])
    assert {w.warning_id for w in tail} == {head[0].warning_id}
    assert tail[-1].ended_at == TWO + timedelta(seconds=1800)
    assert run(resumed, trip) == []  # redelivered: nothing


def test_the_coach_routes_csv(tmp_path: Path) -> None:
    f = tmp_path / "routes.csv"
    f.write_text("route_id,length_km\nHB-WH-YC,320\n# a comment\nHB-WH-EZ, 80.5\n",
                 encoding="utf-8")
    assert load_coach_routes(str(f)) == {"HB-WH-YC": 320.0, "HB-WH-EZ": 80.5}
    assert load_coach_routes("") == {}
    f.write_text("HB-1,far\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1"):
        load_coach_routes(str(f))
    with pytest.raises(ConfigError, match="TTI_COACH_ROUTES"):
        load_coach_routes(str(tmp_path / "missing.csv"))
