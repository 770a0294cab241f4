"""Terminal alarm bits as vehicle-alarm warnings: SOS from any vehicle, safety bits from 两客一危.

A JT/T 808 terminal sets alarm bits in its location reports (``tti.alarm``, `TerminalAlarm`).
An emergency (SOS, bit 0) from any vehicle, and the safety bits (collision, rollover, its own
speeding and fatigue opinion, route deviation, area in/out, theft, illegal movement …) from
coaches, tourist buses and dangerous-goods trucks, each open an *episode*: one warning per
vehicle and alarm, raised at the first report, updated as reports go on (where the vehicle is
now), resolved once no report has carried the bit for ``CLEAR_AFTER_S``. The end time is the last
report's time plus that interval, so every replica ends it alike. Hardware faults (GNSS antenna,
power, camera …) are the operator's business, not the departments', and make no warning.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from services.warning.rules.episodes import (
    UPDATE_EVERY_S,
    Episode,
    EpisodeBook,
    Key,
    episode_id,
)
from shared.events import (
    TWO_PASSENGER_ONE_DANGER,
    Area,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    TerminalAlarm,
    Warning,
    WarningKind,
    WarningStatus,
)
from shared.geo import haversine_m

CLEAR_AFTER_S = 120.0
"""An alarm not repeated for this long is over (terminals repeat it in every report)."""
MOVED_M = 200.0
"""An episode's warning is updated at most once a minute, or when the vehicle moved this far."""

_SAFETY: dict[str, tuple[str, str, CapSeverity]] = {
    "emergency": ("紧急报警", "emergency (SOS)", CapSeverity.EXTREME),
    "collision_warning": ("碰撞预警", "collision warning", CapSeverity.SEVERE),
    "rollover_warning": ("侧翻预警", "rollover warning", CapSeverity.SEVERE),
    "collision_rollover": ("碰撞侧翻报警", "collision or rollover", CapSeverity.SEVERE),
    "danger_warning": ("危险预警", "danger warning", CapSeverity.SEVERE),
    "dangerous_driving": ("危险驾驶行为", "dangerous driving", CapSeverity.SEVERE),
    "overspeed": ("超速报警（终端）", "speeding (terminal)", CapSeverity.MODERATE),
    "fatigue_driving": ("疲劳驾驶（终端）", "fatigue driving (terminal)", CapSeverity.MODERATE),
    "daily_driving_time_exceeded": ("当天累计驾驶超时", "daily driving time exceeded",
                                    CapSeverity.MODERATE),
    "route_deviation": ("路线偏离", "route deviation", CapSeverity.MODERATE),
    "area_in_out": ("进出区域", "area entry/exit", CapSeverity.MODERATE),
    "route_in_out": ("进出路线", "route entry/exit", CapSeverity.MODERATE),
    "vehicle_stolen": ("车辆被盗", "vehicle stolen", CapSeverity.SEVERE),
    "illegal_ignition": ("非法点火", "illegal ignition", CapSeverity.MODERATE),
    "illegal_movement": ("非法位移", "illegal movement", CapSeverity.SEVERE),
    "illegal_door_open": ("非法开门", "illegal door opening", CapSeverity.MODERATE),
    "illegal_driving": ("违规行驶", "illegal driving", CapSeverity.MODERATE),
}
_CLASS_NAMES = {"coach": "客运车", "tourist_bus": "旅游包车", "dangerous_goods": "危险货物运输车",
                "bus": "公交车", "taxi": "出租车", "other": "车辆"}


def _matters(name: str, vehicle_class: str) -> bool:
    if name not in _SAFETY:
        return False
    return name == "emergency" or vehicle_class in TWO_PASSENGER_ONE_DANGER


def _key(w: Warning) -> Key:
    return str(w.details.get("vehicle_id")), str(w.details.get("alarm"))


class TerminalAlarmRule:
    """Open episodes by (vehicle, alarm); what each report and each tick changes."""

    rule = "terminal_alarm"

    def __init__(self, *, clear_after_s: float = CLEAR_AFTER_S) -> None:
        self.clear_after = timedelta(seconds=clear_after_s)
        self.book = EpisodeBook(key_of=_key, update_every_s=UPDATE_EVERY_S)

    def on_alarm(self, a: TerminalAlarm) -> list[Warning]:
        """Warnings raised, updated or resolved by one report's alarm bits (oldest first)."""
        out: list[Warning] = []
        for name in a.alarms:
            if not _matters(name, a.vehicle_class):
                continue
            key = (a.vehicle_id, name)
            ep = self.book.find(key)
            if ep is not None and a.observed_at <= ep.last_seen:
                continue  # redelivered or late: nothing new
            if ep is not None and a.observed_at - ep.last_seen >= self.clear_after:
                # Over already, whether or not this replica's tick has said so yet: end it as
                # the tick would, so every replica publishes the same messages.
                out.append(self._end(ep))
                ep = None
            if ep is None:
                out.append(self.book.raise_(key, self._raise(a, name), at=a.observed_at))
                continue
            reports = int(ep.warning.details.get("reports", 1)) + 1  # type: ignore[call-overload]
            lon, lat, area = self._where(a)
            w = self.book.update(ep, at=a.observed_at, news=self._news(ep.warning, a),
                                 lon=lon, lat=lat, area=area,
                                 details={"reports": reports, "alarm_bits": a.alarm_bits})
            if w is not None:
                out.append(w)
        return out

    @staticmethod
    def _news(w: Warning, a: TerminalAlarm) -> bool:
        if w.details.get("alarm_bits") != a.alarm_bits:
            return True
        if w.lon is None or w.lat is None or not (a.lon or a.lat):
            return bool(a.lon or a.lat) and w.lon is None
        return haversine_m(w.lon, w.lat, a.lon, a.lat) >= MOVED_M

    def _end(self, ep: Episode) -> Warning:
        return self.book.resolve(ep, end=ep.last_seen + self.clear_after,
                                 because="alarm_cleared")

    def expire(self, now: datetime) -> list[Warning]:
        """Episodes whose alarm stopped more than ``clear_after`` ago, resolved."""
        return [self._end(ep) for ep in self.book if now - ep.last_seen >= self.clear_after]

    def resume(self, w: Warning) -> None:
        """An open episode a previous run persisted (its warning still active)."""
        self.book.resume(w)

    def adopt(self, w: Warning) -> None:
        """Take a department's change of an open episode's warning (ack, assign, close …)."""
        self.book.adopt(w)

    def _raise(self, a: TerminalAlarm, name: str) -> Warning:
        zh, en, severity = _SAFETY[name]
        who = f"{_CLASS_NAMES.get(a.vehicle_class, '车辆')} {a.vehicle_id}"
        lon, lat, area = self._where(a)
        return Warning(
            warning_id=episode_id("alarm", "alarm", a.vehicle_id, name, a.observed_at),
            kind=WarningKind.VEHICLE_ALARM, status=WarningStatus.RAISED,
            category=CapCategory.RESCUE if name == "emergency" else CapCategory.SAFETY,
            severity=severity, urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
            msg_type=CapMsgType.ALERT, started_at=a.observed_at, updated_at=a.observed_at,
            cause=name, headline=f"{who} {zh}",
            headline_en=f"{en.capitalize()}: {a.vehicle_class} {a.vehicle_id}",
            description=f"{who}：终端报警「{zh}」。", description_en=(
                f"The terminal of {a.vehicle_class} {a.vehicle_id} reports {en}."),
            lon=lon, lat=lat, area=area,
            details={"vehicle_id": a.vehicle_id, "vehicle_class": a.vehicle_class,
                     "rule": self.rule, "alarm": name, "alarm_bits": a.alarm_bits, "reports": 1})

    @staticmethod
    def _where(a: TerminalAlarm) -> tuple[float | None, float | None, Area | None]:
        if not (a.lon or a.lat):
            return None, None, None
        return a.lon, a.lat, Area(description=f"车辆 {a.vehicle_id} 位置",
                                  circle=(a.lon, a.lat, 100.0))
