"""Terminals' own alarm bits: one vehicle-alarm warning per episode, never one per report."""

from __future__ import annotations

from datetime import timedelta

from services.warning.engine import WarningEngine
from shared.clock import Clock
from shared.codec import Envelope
from shared.events import (
    TERMINAL_ALARM,
    WARNING,
    CapCategory,
    CapSeverity,
    TerminalAlarm,
    Warning,
    WarningKind,
    WarningStatus,
)
from tests.warning.support import T0, Recorder, build_network


def alarm(seconds: float, *alarms: str, vehicle: str = "13800000001", cls: str = "taxi",
          lon: float = 114.30) -> Envelope[TerminalAlarm]:
    return Envelope.new(TERMINAL_ALARM, TerminalAlarm(
        vehicle_id=vehicle, lon=lon, lat=30.5, observed_at=T0 + timedelta(seconds=seconds),
        alarms=alarms, alarm_bits=1, vehicle_class=cls))


def engine() -> tuple[WarningEngine, Recorder]:
    out = Recorder()
    e = WarningEngine(window_s=60.0, clock=Clock(), output=out)
    e.set_network(build_network())
    return e, out


async def test_an_sos_is_one_warning_from_start_to_end() -> None:
    e, out = engine()
    for s in range(0, 50, 10):  # five reports within a minute, standing still
        await e.on_terminal_alarm(alarm(s, "emergency"))
    await e.on_terminal_alarm(alarm(70, "emergency"))  # a minute on: one update
    await e.on_terminal_alarm(alarm(70, "emergency"))  # redelivered: nothing
    await e.tick()  # the stream's time is still 70 s: it goes on
    assert len(out.of(WARNING)) == 2
    # Another vehicle's report five minutes on: the stream's time has passed the SOS's end.
    await e.on_terminal_alarm(alarm(370, "gnss_antenna_cut", vehicle="2"))
    await e.tick()
    warnings: list[Warning] = out.of(WARNING)
    assert len({w.warning_id for w in warnings}) == 1
    assert [w.status for w in warnings] == [WarningStatus.RAISED, WarningStatus.UPDATED,
                                            WarningStatus.RESOLVED]
    first, last = warnings[0], warnings[-1]
    assert first.kind == WarningKind.VEHICLE_ALARM and first.severity == CapSeverity.EXTREME
    assert first.category == CapCategory.RESCUE and first.area is not None
    assert last.ended_at == T0 + timedelta(seconds=70 + 120)
    assert last.details["reports"] == 2 and last.details["ended_because"] == "alarm_cleared"


async def test_moving_with_the_alarm_on_updates_where_it_is() -> None:
    e, out = engine()
    await e.on_terminal_alarm(alarm(0, "emergency"))
    await e.on_terminal_alarm(alarm(10, "emergency", lon=114.31))  # ≈ 1 km east
    warnings: list[Warning] = out.of(WARNING)
    assert len(warnings) == 2 and warnings[1].lon == 114.31


async def test_safety_bits_count_for_coaches_and_dangerous_goods_only() -> None:
    e, out = engine()
    await e.on_terminal_alarm(alarm(0, "overspeed", "gnss_antenna_cut", cls="taxi"))
    assert out.of(WARNING) == [], "a taxi's own speeding bit and a hardware fault: no alarm"
    await e.on_terminal_alarm(alarm(0, "overspeed", "gnss_antenna_cut", vehicle="2",
                                    cls="dangerous_goods"))
    warnings: list[Warning] = out.of(WARNING)
    assert [w.cause for w in warnings] == ["overspeed"]
    assert warnings[0].severity == CapSeverity.MODERATE
    assert warnings[0].details["vehicle_class"] == "dangerous_goods"


async def test_a_restarted_engine_goes_on_with_the_open_episode() -> None:
    e, out = engine()
    await e.on_terminal_alarm(alarm(0, "emergency"))
    raised: Warning = out.of(WARNING)[0]
    again, out2 = engine()
    again.restore([raised])
    await again.on_terminal_alarm(alarm(90, "emergency"))
    assert [w.warning_id for w in out2.of(WARNING)] == [raised.warning_id]


async def test_a_backlog_caught_up_ends_nothing_the_stream_goes_on_with() -> None:
    # Reports of hours ago replayed now (a restarted replica catching up): ticks between them
    # judge silence by the stream's time, so the SOS is one episode, as it was live.
    e, out = engine()
    for s in range(0, 600, 30):
        await e.on_terminal_alarm(alarm(s, "emergency"))
        await e.tick()
    warnings: list[Warning] = out.of(WARNING)
    assert len({w.warning_id for w in warnings}) == 1
    assert all(w.status is not WarningStatus.RESOLVED for w in warnings)
