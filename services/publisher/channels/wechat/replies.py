"""The resolver's answers (:mod:`services.publisher.channels.query`) as WeChat text replies.

Short Chinese texts for a phone screen: a line per item, minutes rather than clock times for
buses, Beijing time (UTC+8) where a time is shown, the level names the warning service graded,
and "暂无实时数据" where there is no live value. The wording is this channel's own; the data is
the one resolver's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from services.publisher.channels.query import (
    Ambiguous,
    Arrival,
    CarPark,
    IndexAnswer,
    LiveBus,
    NearbyAnswer,
    NotUnderstood,
    ParkingAnswer,
    QueryAnswer,
    RoadStatusAnswer,
    RouteArrivals,
    StopArrivals,
)

BEIJING = timezone(timedelta(hours=8))

OCCUPANCY = {
    "EMPTY": "空车", "MANY_SEATS_AVAILABLE": "座位充足", "FEW_SEATS_AVAILABLE": "座位较少",
    "STANDING_ROOM_ONLY": "仅剩站位", "CRUSHED_STANDING_ROOM_ONLY": "较拥挤", "FULL": "满载",
    "NOT_ACCEPTING_PASSENGERS": "不载客",
}
KIND_NAMES = {"road": "道路", "stop": "站点", "route": "线路", "place": "地点"}

HELP = ("您可以发送：\n"
        "· 线路，如「512路」，或线路加站名「512路 光谷广场」\n"
        "· 道路、桥梁或隧道名，如「长江大桥」\n"
        "· 站名，查到站\n"
        "· 「停车」（先发送位置）或「停车 地名」\n"
        "· 「路况」，查交通指数\n"
        "· 位置（＋ → 位置），查周边路况和停车场\n"
        "· 「订阅 512路」「订阅 站名」「订阅 道路名」，有预警时通知您；"
        "「我的订阅」查看，「取消订阅 1」取消")


def clock_time(at: datetime) -> str:
    """``HH:MM`` Beijing time."""
    return at.astimezone(BEIJING).strftime("%H:%M")


def age(seconds: int | None) -> str:
    """How old a figure is, in words."""
    if seconds is None:
        return ""
    if seconds < 90:
        return "刚刚"
    if seconds < 3600:
        return f"{round(seconds / 60)}分钟前"
    return f"{seconds // 3600}小时前"


def _minutes(minutes: int) -> str:
    return "即将进站" if minutes <= 0 else f"{minutes}分钟"


def _arrival_line(a: Arrival, *, with_route: bool) -> str:
    parts = []
    if with_route:
        parts.append(f"{a.route_short_name or a.route_id or '?'}路")
    if a.headsign:
        parts.append(f"开往{a.headsign}")
    if a.source == "live":
        parts.append(_minutes(a.minutes))
        if a.occupancy in OCCUPANCY:
            parts.append(OCCUPANCY[a.occupancy])
    else:
        parts.append(f"计划{clock_time(a.arrival_at)}")
    return " ".join(parts)


def _timetable_note(state: str | None) -> str:
    return "\n（时刻表暂时无法获取，仅显示实时车辆）" if state == "unavailable" else ""


def stop_arrivals(a: StopArrivals) -> str:
    """A stop's next buses."""
    head = f"【{a.stop_name}】"
    if not a.arrivals:
        return head + "\n暂无即将到站的车辆" + _timetable_note(a.timetable)
    lines = [_arrival_line(x, with_route=True) for x in a.arrivals]
    return head + "\n" + "\n".join(lines) + _timetable_note(a.timetable)


def _bus_line(b: LiveBus) -> str:
    where = (f"下一站{b.next_stop_name}" + (f"（{_minutes(b.next_stop_minutes)}）"
                                          if b.next_stop_minutes is not None else "")
             if b.next_stop_name else "位置更新于" + age(b.age_s))
    crowd = f"，{OCCUPANCY[b.occupancy]}" if b.occupancy in OCCUPANCY else ""
    return f"{b.label}：{where}{crowd}"


def route_arrivals(r: RouteArrivals) -> str:
    """A route at a stop, or its live buses."""
    name = f"{r.route_short_name}路"
    if r.stop_name is not None:
        head = f"【{name} · {r.stop_name}】"
        if not r.arrivals:
            return head + "\n暂无即将到站的车辆" + _timetable_note(r.timetable)
        return (head + "\n" + "\n".join(_arrival_line(a, with_route=False) for a in r.arrivals)
                + _timetable_note(r.timetable))
    head = f"【{name}】" + (f"{r.long_name}" if r.long_name else "")
    if not r.buses:
        return head + "\n暂无在线车辆。发送「" + name + " 站名」查询到站时间"
    return (head + f"\n在线车辆{len(r.buses)}辆：\n" + "\n".join(_bus_line(b) for b in r.buses[:8])
            + "\n发送「" + name + " 站名」查询到站时间")


def _road_kind(r: RoadStatusAnswer) -> str:
    return "桥梁" if r.bridge else "隧道" if r.tunnel else "道路"


def road_status(r: RoadStatusAnswer, *, short: bool = False) -> str:
    """A road's level (worst and typical), speed, age and warnings."""
    name = r.name + (f"（{round(r.distance_m)}米）" if r.distance_m is not None else "")
    if r.worst is None or r.typical is None:
        text = f"{name}：暂无实时数据"
    else:
        speed = (f"，平均车速{round(r.typical.speed_kmh)}公里/小时"
                 if r.typical.speed_kmh is not None else "")
        worst = (f"，最拥堵处{r.worst.level_name}" if r.worst.level > r.typical.level else "")
        usual = "（按历史规律估计）" if r.source == "profile" else ""
        text = f"{name}：{r.typical.level_name}{worst}{speed}{usual}"
        if not short and r.age_s is not None and r.source == "live":
            text += f"，{age(r.age_s)}更新"
    if short:
        return text
    lines = [f"【{r.name}】{_road_kind(r)}", text.split("：", 1)[1]]
    for w in r.warnings:
        lines.append(f"⚠ {w.headline}")
    if r.warnings_more:
        lines.append(f"另有{r.warnings_more}条预警")
    return "\n".join(lines)


def _car_park_line(c: CarPark) -> str:
    name = c.name or "停车场"
    free = (f"空位{c.free_spaces}" + (f"/{c.capacity}" if c.capacity else "")
            + (f"（{age(c.age_s)}）" if c.age_s is not None else "")
            if c.free_spaces is not None else
            (f"车位{c.capacity}个，暂无空位数据" if c.capacity else "暂无空位数据"))
    return f"{name} {round(c.distance_m)}米 {free}"


def parking(p: ParkingAnswer) -> str:
    """Car parks near a place or the follower."""
    where = p.place_name or "您的位置"
    if not p.car_parks:
        return f"{where}附近{round(p.radius_m)}米内没有找到停车场"
    return f"【{where}附近停车场】\n" + "\n".join(_car_park_line(c) for c in p.car_parks)


def index(i: IndexAnswer) -> str:
    """The traffic index of the network and its most congested areas."""
    if i.network is None or i.network.tpi is None:
        return "暂无交通指数数据"
    n = i.network
    lines = [f"【交通指数】全路网 {n.tpi:.1f}（{n.level_name or '—'}）"
             + (f"，平均车速{round(n.speed_kmh)}公里/小时" if n.speed_kmh is not None else "")]
    for a in i.areas[:5]:
        if a.tpi is not None and a.area_id != "network":
            lines.append(f"{a.name} {a.tpi:.1f}（{a.level_name or '—'}）")
    if i.observed_at is not None:
        lines.append(f"{clock_time(i.observed_at)}更新")
    return "\n".join(lines)


def nearby(n: NearbyAnswer) -> str:
    """The roads and car parks around a point."""
    where = n.place_name or "您的位置"
    lines = [f"【{where}周边】"]
    if n.roads:
        lines += [road_status(r, short=True) for r in n.roads]
    else:
        lines.append("附近没有已知道路")
    if n.car_parks:
        lines.append("停车场：")
        lines += [_car_park_line(c) for c in n.car_parks[:3]]
    return "\n".join(lines)


def ambiguous(a: Ambiguous) -> str:
    """Ask the follower to pick one."""
    lines = [f"「{a.text}」有多个结果，请发送更完整的名称："]
    for c in a.candidates:
        detail = f"（{c.detail}）" if c.detail else ""
        lines.append(f"· {c.name}{detail} [{KIND_NAMES.get(c.kind, c.kind)}]")
    return "\n".join(lines)


def not_understood(n: NotUnderstood) -> str:
    """A short help reply, with examples from this region's own data."""
    lead = {
        "empty": "请发送要查询的内容。",
        "too_long": "内容太长了，请简短一些。",
        "unknown_route": f"没有找到线路「{n.subject}」。",
        "unknown_stop": f"没有找到站点「{n.subject}」。",
        "needs_location": "请先发送您的位置（＋ → 位置），再发送「停车」或「附近」。",
    }.get(n.reason, f"没有找到「{n.subject or n.text}」。")
    examples = "、".join(f"「{e}」" for e in n.examples[:5])
    return lead + (f"\n试试：{examples}" if examples else "") + "\n发送「帮助」查看全部用法"


def render(answer: QueryAnswer) -> str:
    """Any resolver answer as a reply text."""
    if isinstance(answer, StopArrivals):
        return stop_arrivals(answer)
    if isinstance(answer, RouteArrivals):
        return route_arrivals(answer)
    if isinstance(answer, RoadStatusAnswer):
        return road_status(answer)
    if isinstance(answer, ParkingAnswer):
        return parking(answer)
    if isinstance(answer, IndexAnswer):
        return index(answer)
    if isinstance(answer, NearbyAnswer):
        return nearby(answer)
    if isinstance(answer, Ambiguous):
        return ambiguous(answer)
    return not_understood(answer)


def numbered(items: Sequence[str]) -> str:
    """``1. a`` lines."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
