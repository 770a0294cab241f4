"""The fatigue rule: 4 h by day / 2 h at night without a 20-min rest, 8 h in 24 h, per driver."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from services.warning.rules.fatigue import (
    CONTINUOUS,
    DAILY,
    FORGET_AFTER_S,
    FatigueRule,
)
from shared.events import (
    CapCategory,
    DriverIdentity,
    MatchedPosition,
    Warning,
    WarningKind,
    WarningStatus,
)

D0 = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)  # 08:00 in Wuhan
H = 3600.0
Event = MatchedPosition | DriverIdentity


def fix(s: float, kmh: float = 70.0, *, vid: str = "13900000002", acc: bool = True,
        cls: str = "coach", t0: datetime = D0) -> MatchedPosition:
    return MatchedPosition(vehicle_id=vid, vehicle_class=cls,
                           observed_at=t0 + timedelta(seconds=s), lon=114.3, lat=30.5,
                           segment_id="5:0:1", offset_m=0.0, road_class="motorway",
                           speed_limit_kmh=100.0, speed_limit_source="osm", confidence=0.99,
                           speed_kmh=kmh, status=0b11 if acc else 0b10)


def drive(start: float, end: float, *, step: float = 60.0, kmh: float = 70.0,
          **kw: object) -> list[MatchedPosition]:
    """Fixes every ``step`` s over [start, end] (both ends)."""
    n = round((end - start) / step)
    return [fix(start + i * step, kmh, **kw) for i in range(n + 1)]  # type: ignore[arg-type]


def card(s: float, state: str, driver: str | None, *, vid: str = "13900000002",
         t0: datetime = D0) -> DriverIdentity:
    return DriverIdentity(vehicle_id=vid, observed_at=t0 + timedelta(seconds=s), state=state,
                          driver_id=driver)


def run(rule: FatigueRule, events: Iterable[Event]) -> list[Warning]:
    out: list[Warning] = []
    for e in events:
        out.extend(rule.on_matched(e) if isinstance(e, MatchedPosition) else rule.on_driver(e))
    return out


def of(ws: Sequence[Warning], rule: str) -> list[Warning]:
    return [w for w in ws if w.details["rule"] == rule]


def test_four_and_a_half_hours_by_day_without_a_rest_is_one_alarm_ended_by_the_rest() -> None:
    rule = FatigueRule()
    trip = drive(0, 4.5 * H) + drive(4.5 * H + 60, 4.5 * H + 26 * 60, kmh=0.0)
    out = run(rule, trip)
    assert len({w.warning_id for w in out}) == 1 and all(
        w.details["rule"] == CONTINUOUS for w in out)
    first, *updates, last = out
    assert first.kind is WarningKind.VEHICLE_ALARM and first.category is CapCategory.SAFETY
    assert first.status is WarningStatus.RAISED and first.cause == CONTINUOUS
    # Over 4 h at the first fix after 4 h of driving.
    assert first.started_at == D0 + timedelta(seconds=4 * H + 60)
    assert first.details["limit_s"] == 4 * H and first.details["subject"] == "13900000002"
    assert "连续驾驶 4小时01分" in first.headline
    # Half an hour more at one fix a minute: updated at most once a minute.
    assert 20 <= len(updates) <= 30
    assert all(b.updated_at - a.updated_at >= timedelta(seconds=60)
               for a, b in zip(out, updates, strict=False))
    # Stopped from 4.5 h + 60 s on; 20 minutes of it end the episode where the rest began.
    assert last.status is WarningStatus.RESOLVED
    assert last.ended_at == D0 + timedelta(seconds=4.5 * H + 60)
    assert last.details["ended_because"] == "rested"
    assert "休息20分钟" in last.description


def test_a_rest_shorter_than_20_minutes_does_not_break_the_drive() -> None:
    short = FatigueRule()
    trip = (drive(0, 2 * H) + drive(2 * H + 60, 2 * H + 15 * 60, kmh=0.0)
            + drive(2 * H + 16 * 60, 4.5 * H))
    out = run(short, trip)
    assert out and out[0].status is WarningStatus.RAISED
    # 2 h, then 14 min between the first and last fix standing (rest, not driving; the
    # minutes into and out of the stop are driving), then over 4 h of driving at 4 h 15 min.
    assert out[0].started_at - D0 == timedelta(seconds=4 * H + 15 * 60)
    long = FatigueRule()
    trip = (drive(0, 2 * H) + drive(2 * H + 60, 2 * H + 22 * 60, kmh=0.0)
            + drive(2 * H + 23 * 60, 6 * H))
    assert run(long, trip) == [], "a 20-minute rest at 2 h starts the count again"


def test_at_night_two_hours_is_the_limit() -> None:
    evening = D0 + timedelta(hours=12, minutes=30)  # 20:30 in Wuhan
    rule = FatigueRule()
    out = run(rule, drive(0, 2.5 * H, t0=evening))
    # Begun at 20:30; past 22:00 the night's 2 h apply: over at 22:31.
    assert out and out[0].started_at == evening + timedelta(seconds=2 * H + 60)
    assert out[0].details["limit_s"] == 2 * H
    assert "夜间连续驾驶不得超过2小时" in out[0].description
    # The same drive by day is within the 4 h.
    assert run(FatigueRule(), drive(0, 2.5 * H)) == []


def test_a_silent_terminal_is_not_resting() -> None:
    rule = FatigueRule()
    out = run(rule, drive(0, 3 * H) + drive(4.5 * H, 4.6 * H))  # 90 minutes without a report
    assert [w.status for w in out][:1] == [WarningStatus.RAISED]
    assert float(out[0].details["driving_s"]) > 4 * H  # type: ignore[arg-type]
    # A terminal that reports with the ignition off is resting: the time does not count.
    parked = FatigueRule()
    trip = [*drive(0, 3 * H), fix(3 * H + 60, 0.0, acc=False), *drive(4.5 * H, 4.6 * H)]
    assert run(parked, trip) == []
    # An ignition-off status on a vehicle that moves is wiring, not rest.
    wired = FatigueRule()
    assert run(wired, drive(0, 4.5 * H, acc=False))[0].status is WarningStatus.RAISED


def test_the_tick_ends_an_alarm_once_the_ignition_has_been_off_for_20_minutes() -> None:
    rule = FatigueRule()
    out = run(rule, [*drive(0, 4.2 * H), fix(4.2 * H + 30, 0.0, acc=False)])
    assert out[0].status is WarningStatus.RAISED
    assert rule.expire(D0 + timedelta(seconds=4.2 * H + 10 * 60)) == []
    ended = rule.expire(D0 + timedelta(seconds=4.2 * H + 30 * 60))
    assert [w.status for w in ended] == [WarningStatus.RESOLVED]
    assert ended[0].ended_at == D0 + timedelta(seconds=4.2 * H + 30)  # the ignition went off
    # Silent with the ignition on: the episode stays open for hours, then is given up.
    silent = FatigueRule()
    run(silent, drive(0, 4.2 * H))
    assert silent.expire(D0 + timedelta(seconds=6 * H)) == []
    gone = silent.expire(D0 + timedelta(seconds=4.2 * H + FORGET_AFTER_S))
    assert [w.details["ended_because"] for w in gone] == ["no_reports"]
    assert gone[0].ended_at == D0 + timedelta(seconds=4.2 * H)


def test_more_than_eight_hours_in_24_is_its_own_alarm() -> None:
    rule = FatigueRule()
    events: list[MatchedPosition] = []
    t = 0.0
    for _ in range(3):  # 3 h 50 min driving, 30 min rest, three times
        events += drive(t, t + 3 * H + 50 * 60)
        t += 3 * H + 50 * 60
        events += drive(t + 60, t + 30 * 60, kmh=0.0)
        t += 31 * 60
    out = run(rule, events)
    assert of(out, CONTINUOUS) == []
    daily = of(out, DAILY)
    assert len({w.warning_id for w in daily}) == 1
    assert daily[0].status is WarningStatus.RAISED and daily[0].cause == DAILY
    assert float(daily[0].details["day_driving_s"]) > 8 * H  # type: ignore[arg-type]
    assert "24小时内累计驾驶" in daily[0].headline
    assert daily[-1].status is WarningStatus.RESOLVED  # the last rest ends that stretch


def test_a_drivers_time_follows_them_from_vehicle_to_vehicle() -> None:
    rule = FatigueRule()
    events: list[Event] = [card(0, "card_in", "D42", vid="A"), *drive(60, 3 * H, vid="A"),
                           card(3 * H + 60, "card_out", "D42", vid="A"),
                           card(3 * H + 120, "card_in", "D42", vid="B"),
                           *drive(3 * H + 180, 4.5 * H, vid="B")]
    out = run(rule, events)
    assert out and out[0].status is WarningStatus.RAISED
    w = out[0]
    assert w.details["subject"] == "driver:D42" and w.details["driver_id"] == "D42"
    assert w.details["vehicle_id"] == "B" and "驾驶员 D42" in w.headline
    assert rule.drivers == {"B": "D42"}
    # Without the cards each vehicle alone is within the limit.
    anonymous = FatigueRule()
    assert run(anonymous, [e for e in events if isinstance(e, MatchedPosition)]) == []


def test_a_driver_signing_in_takes_over_the_vehicles_open_alarm() -> None:
    rule = FatigueRule()
    out = run(rule, drive(0, 4.5 * H))
    raised = out[0]
    assert raised.details["subject"] == "13900000002"
    signed = run(rule, [card(4.5 * H + 10, "card_in", "D7")])
    assert [w.warning_id for w in signed] == [raised.warning_id]
    assert signed[0].status is WarningStatus.UPDATED
    assert signed[0].details["subject"] == "driver:D7" and signed[0].details["driver_id"] == "D7"
    more = run(rule, drive(4.5 * H + 60, 5 * H))
    assert {w.warning_id for w in more} == {raised.warning_id}


def test_replicas_agree_and_a_restart_goes_on_with_the_open_alarm() -> None:
    trip = drive(0, 4.5 * H) + drive(4.5 * H + 60, 4.5 * H + 25 * 60, kmh=0.0)
    assert run(FatigueRule(), trip) == run(FatigueRule(), trip)
    first = FatigueRule()
    head = run(first, trip[:260])  # through 4 h 19 min
    resumed = FatigueRule()
    resumed.resume(head[-1])
    tail = run(resumed, trip[260:])
    assert {w.warning_id for w in tail} == {head[0].warning_id}
    assert tail[-1].status is WarningStatus.RESOLVED
    assert tail[-1].ended_at == D0 + timedelta(seconds=4.5 * H + 60)
    assert [w.version for w in head + tail] == list(range(1, len(head + tail) + 1))


def test_a_redelivered_fix_or_card_changes_nothing() -> None:
    rule = FatigueRule()
    events: list[Event] = [card(0, "card_in", "D1"), *drive(60, 4.2 * H)]
    out = run(rule, events)
    assert out and run(rule, events) == []
    assert rule.drives["driver:D1"].drive_s == 4.2 * H  # signed in at 0, moving at 60 s


def test_night_seconds_fast_paths_agree_with_the_day_by_day_sum() -> None:
    import random

    from services.warning.rules.common import DAY_S, local_day_start, overlap
    from services.warning.rules.fatigue import NIGHT_FROM_S, NIGHT_TO_S, night_seconds

    def by_day(a: float, b: float) -> float:
        total, d = 0.0, local_day_start(a)
        while d < b:
            total += overlap(a, b, d, d + NIGHT_TO_S) + overlap(a, b, d + NIGHT_FROM_S, d + DAY_S)
            d += DAY_S
        return total

    rng = random.Random(3)
    for _ in range(20_000):
        a = D0.timestamp() + rng.uniform(0, 3 * DAY_S)
        b = a + rng.choice((rng.uniform(0, 600), rng.uniform(0, 1.5 * DAY_S)))
        assert abs(night_seconds(a, b) - by_day(a, b)) < 1e-6
    assert night_seconds(D0.timestamp(), D0.timestamp() + H) == 0.0  # 08:00-09:00
