"""What the driver is told when a rule raises an alarm: one JT/T 808 text (0x8300) per alarm.

The texts are short and worded as the transport authorities' monitoring platforms word their
spoken reminders (display + TTS). Only alarms the platform decided get one (speeding, fatigue,
night driving, geofences); a terminal's own alarm bits are its opinion, already shown to the
driver by the terminal itself.

The command is built by `services.warning.driver_messages.text_command` (checked, GBK, an id
deterministic from the vehicle, the alarm and the text), so a replica that takes over and
republishes, or a replayed stream, sends it once (JetStream drops the repeated event id and the
collector the repeated command id). Its times come from the warning (the event that raised
it), so every replica builds the same command.
"""

from __future__ import annotations

from services.warning.driver_messages import text_command
from shared.events import TerminalCommand, Warning, WarningStatus

FLAGS = ("display", "tts")


def driver_text(w: Warning) -> str | None:
    """The text for the driver of the vehicle a raised alarm is about, or None (no text)."""
    d = w.details
    rule = d.get("rule")
    if rule == "speeding":
        limit = d.get("limit_kmh")
        if isinstance(limit, int | float) and limit:
            return f"您已超速，限速{limit:g}公里/小时，请减速慢行"
        return "您已超速，请减速慢行"
    if rule == "fatigue_continuous":
        if d.get("limit_s") == 2 * 3600.0:
            return "您夜间已连续驾驶2小时，请立即停车休息"
        return "您已连续驾驶4小时，请立即休息"
    if rule == "fatigue_daily":
        return "您24小时内累计驾驶已超过8小时，请停止驾驶并休息"
    if rule == "night_driving":
        return "凌晨2时至5时客车禁止运行，请就近安全停车休息"
    if rule == "geofence":
        name = d.get("name") or ""
        if d.get("kind") == "assigned_route":
            return f"您已偏离指定路线{name}，请按规定路线行驶"
        place = "路段" if d.get("kind") == "restricted_road" else "区域"
        return f"您已驶入禁行{place}{name}，请立即驶离"
    return None


def alarm_text_command(w: Warning, *, ttl_s: float) -> TerminalCommand | None:
    """The 0x8300 text telling the driver of a just-raised alarm, or None.

    Only for the first version (the Alert) of a rule's alarm; built by the one builder of
    texts to drivers (`services.warning.driver_messages.text_command`), with the alarm as its
    correlation and the event that raised it as its time, so every replica builds the same
    command; it expires ``ttl_s`` after that event (a late reminder would only confuse).
    """
    if w.version != 1 or w.status is not WarningStatus.RAISED:
        return None
    text = driver_text(w)
    vehicle_id = w.details.get("vehicle_id")
    if text is None or not isinstance(vehicle_id, str) or not vehicle_id:
        return None
    return text_command(vehicle_id, text, correlation=w.warning_id,
                        requested_by=f"rule:{w.details.get('rule')}", now=w.updated_at,
                        flags=FLAGS, ttl_s=ttl_s)
