"""The 12328 / 12122 hotline's words: a resolver answer as one to three short spoken sentences.

For text-to-speech and for an agent to read aloud: Chinese, units spoken the way Chinese says
them ("预计3分钟后到站", "车速每小时25公里", "约300米", "9点05分"), levels by name ("严重拥堵"),
no symbols a voice would spell out (no "km/h", "%", "→", bus labels or ids). Times are Beijing
time. The answers come from :func:`services.publisher.channels.query.resolve`; this module only
words them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from services.publisher.channels.query_answers import (
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
MAX_SENTENCES = 3
STALE_S = 300
"""A road or car-park figure older than this is said with its age."""

OCCUPANCY_WORDS = {
    "EMPTY": "车内空座很多", "MANY_SEATS_AVAILABLE": "车内空座较多",
    "FEW_SEATS_AVAILABLE": "车内座位不多", "STANDING_ROOM_ONLY": "车内较拥挤",
    "CRUSHED_STANDING_ROOM_ONLY": "车内非常拥挤", "FULL": "车辆已满载",
    "NOT_ACCEPTING_PASSENGERS": "该车暂不载客", "NOT_BOARDABLE": "该车暂不能上车",
}
"""GTFS-realtime OccupancyStatus in spoken words (NO_DATA_AVAILABLE says nothing)."""


def sentences(answer: QueryAnswer) -> list[str]:
    """One to three sentences, each ending in 。, for ``answer``."""
    words = _RENDERERS[type(answer)](answer)
    return [s if s.endswith(("。", "？")) else s + "。" for s in words if s][:MAX_SENTENCES]


# -- spoken numbers --------------------------------------------------------------------------


def speed(kmh: float) -> str:
    """"每小时25公里" (whole kilometres an hour)."""
    return f"每小时{max(0, round(kmh))}公里"


def minutes(m: int) -> str:
    """"预计3分钟后到站", or "即将到站" under a minute."""
    return "即将到站" if m <= 0 else f"预计{m}分钟后到站"


def distance(metres: float) -> str:
    """"约300米" (to 10 m) under a kilometre, else "约1.5公里"."""
    if metres < 1000:
        return f"约{max(10, round(metres / 10) * 10)}米"
    km = round(metres / 1000, 1)
    return f"约{km:g}公里"


def clock(at: datetime) -> str:
    """Beijing time as spoken: "9点05分", "14点整"."""
    local = at.astimezone(BEIJING)
    return f"{local.hour}点整" if local.minute == 0 else f"{local.hour}点{local.minute:02d}分"


def age(seconds: int) -> str:
    """How old a figure is: "5分钟前", "2小时前"."""
    if seconds < 3600:
        return f"{max(1, seconds // 60)}分钟前"
    return f"{seconds // 3600}小时前"


def route_name(short_name: str | None) -> str:
    """"1路" (a route named "K1" stays "K1路")."""
    return f"{short_name}路" if short_name else "公交"


# -- answers -----------------------------------------------------------------------------------


def _road(a: RoadStatusAnswer) -> list[str]:
    what = a.name
    out: list[str]
    if a.typical is None or a.worst is None:
        out = [f"{what}暂无实时路况数据"]
    else:
        usual = "按往常同时段估计，" if a.source == "profile" else ""
        first = f"{usual}{what}目前{a.typical.level_name}"
        if a.typical.speed_kmh is not None:
            first += f"，平均车速{speed(a.typical.speed_kmh)}"
        out = [first]
        if a.worst.level > a.typical.level:
            worst = f"其中最拥堵的路段{a.worst.level_name}"
            if a.worst.speed_kmh is not None:
                worst += f"，车速{speed(a.worst.speed_kmh)}"
            out.append(worst)
        if a.age_s is not None and a.age_s > STALE_S:
            out[-1] += f"，数据为{age(a.age_s)}"
    if a.warnings:
        more = f"另有{a.warnings_more}条预警" if a.warnings_more else ""
        out.append(f"请注意：{a.warnings[0].headline}" + (f"，{more}" if more else ""))
    return out


def _directions(rows: Sequence[Arrival], most: int) -> list[list[Arrival]]:
    """The arrivals of each route and direction (headsign), the soonest direction first."""
    seen: dict[tuple[str | None, str | None], list[Arrival]] = {}
    for row in rows:
        seen.setdefault((row.route_id, row.headsign), []).append(row)
    return sorted(seen.values(), key=lambda v: v[0].arrival_at)[:most]


def _toward(row: Arrival, rows: Sequence[Arrival]) -> str:
    """"往X方向" when the route has more than one direction among ``rows``."""
    both = {r.headsign for r in rows if r.route_id == row.route_id}
    return f"往{row.headsign}方向" if row.headsign and len(both) > 1 else ""


def _when(row: Arrival) -> str:
    if row.source == "live":
        return minutes(row.minutes)
    return f"按时刻表{clock(row.arrival_at)}到站"


def _reach(row: Arrival) -> str:
    """"预计3分钟后到达" / "即将到达" / "按时刻表9点05分到达" (the stop's name follows)."""
    if row.source != "live":
        return f"按时刻表{clock(row.arrival_at)}到达"
    return "即将到达" if row.minutes <= 0 else f"预计{row.minutes}分钟后到达"


def _occupancy(row: Arrival | LiveBus) -> str:
    return OCCUPANCY_WORDS.get(row.occupancy or "", "")


def _stop(a: StopArrivals) -> list[str]:
    if not a.arrivals:
        tail = "，时刻表暂时无法查询" if a.timetable == "unavailable" else ""
        return [f"{a.stop_name}站暂无车辆到站信息{tail}"]
    firsts = [d[0] for d in _directions(a.arrivals, 3)]
    by_route: dict[str | None, list[Arrival]] = {}
    for row in firsts:
        by_route.setdefault(row.route_id, []).append(row)
    said = "；".join(route_name(rows[0].route_short_name)
                    + "，".join(f"{_toward(r, a.arrivals)}{_when(r)}" for r in rows)
                    for rows in by_route.values())
    out = [f"{a.stop_name}站：{said}"]
    live = next((r for r in firsts if r.source == "live" and _occupancy(r)), None)
    if live is not None:
        when = "即将到站" if live.minutes <= 0 else f"{live.minutes}分钟后到站"
        out.append(f"{when}的{route_name(live.route_short_name)}{_occupancy(live)}")
    return out


def _route(a: RouteArrivals) -> list[str]:
    name = route_name(a.route_short_name)
    if a.stop_name is not None:
        if not a.arrivals:
            return [f"{a.stop_name}站暂无{name}的到站信息"]
        out = []
        for rows in _directions(a.arrivals, 2):
            first = rows[0]
            toward = f"往{first.headsign}方向" if first.headsign else ""
            said = f"{name}{toward}{_reach(first)}{a.stop_name}站"
            if first.source == "live" and _occupancy(first):
                said += f"，{_occupancy(first)}"
            if len(rows) > 1 and len(a.arrivals) == len(rows):  # one direction only
                said += "，下一班" + _when(rows[1])
            out.append(said)
        return out
    termini = f"（{a.long_name.replace(' — ', '至')}）" if a.long_name else ""
    if not a.buses:
        return [f"{name}{termini}目前没有车辆的实时位置", "请说出线路和站点，例如"
                f"{name}加站名，查询按时刻表的到站时间"]
    out = [f"{name}{termini}目前有{len(a.buses)}辆车在线运营"]
    bus = next((b for b in a.buses if b.next_stop_name and b.next_stop_minutes is not None),
               None)
    if bus is not None:
        assert bus.next_stop_minutes is not None
        arrive = ("即将到达" if bus.next_stop_minutes <= 0
                  else f"预计{bus.next_stop_minutes}分钟后到达")
        out.append(f"最近一辆{arrive}{bus.next_stop_name}站"
                   + (f"，{_occupancy(bus)}" if _occupancy(bus) else ""))
    return out


def _park(c: CarPark) -> str:
    said = f"{c.name or '停车场'}，{distance(c.distance_m)}"
    if c.free_spaces is not None:
        said += f"，空余车位{c.free_spaces}个"
        if c.age_s is not None and c.age_s > STALE_S:
            said += f"（{age(c.age_s)}的数据）"
    elif c.capacity is not None:
        said += f"，共{c.capacity}个车位，暂无空余车位数据"
    return said


def _parking(a: ParkingAnswer) -> list[str]:
    where = a.place_name or "您所在位置"
    if not a.car_parks:
        return [f"{where}附近{distance(a.radius_m).removeprefix('约')}内暂无停车场信息"]
    return [f"{where}附近有{len(a.car_parks)}个停车场", *(_park(c) for c in a.car_parks[:2])]


def _index(a: IndexAnswer) -> list[str]:
    n = a.network
    if n is None or n.tpi is None:
        return ["暂无全路网交通指数"]
    first = f"全路网交通指数{n.tpi:.1f}" + (f"，{n.level_name}" if n.level_name else "")
    if n.speed_kmh is not None:
        first += f"，平均车速{speed(n.speed_kmh)}"
    out = [first]
    worst = next((x for x in a.areas if x.tpi is not None), None)
    if worst is not None and worst.tpi is not None and worst.tpi > n.tpi:
        out.append(f"{worst.name}较为拥堵，指数{worst.tpi:.1f}")
    if a.age_s is not None and a.age_s > STALE_S:
        out.append(f"数据为{age(a.age_s)}")
    return out


def _nearby(a: NearbyAnswer) -> list[str]:
    where = a.place_name or "您所在位置"
    out = []
    roads = [r for r in a.roads if r.typical is not None]
    if roads:
        said = "，".join(f"{r.name}{r.typical.level_name}" for r in roads[:3]
                        if r.typical is not None)
        out.append(f"{where}附近：{said}")
    else:
        out.append(f"{where}附近的道路暂无实时路况数据" if a.roads else f"{where}附近没有道路信息")
    if a.car_parks:
        out.append("最近的停车场是" + _park(a.car_parks[0]))
    return out


def _ambiguous(a: Ambiguous) -> list[str]:
    names = "、".join(dict.fromkeys(c.name for c in a.candidates))
    return [f"找到多个结果：{names}", "请说出完整的名称"]


def _not_understood(a: NotUnderstood) -> list[str]:
    examples = "、".join(a.examples[:3])
    ask = f"您可以这样问：{examples}" if examples else ""
    first = {
        "empty": "请说出要查询的道路、桥梁、公交线路或站点",
        "too_long": "问题太长了，请只说道路、桥梁、公交线路或站点的名称",
        "unknown_route": f"没有找到{a.subject}路公交线路",
        "unknown_stop": f"没有找到{a.subject}这个站点",
        "needs_location": "请说明您在哪里，例如一个站点或地名",
    }.get(a.reason, f"抱歉，没有找到与{a.subject or a.text}相关的信息")
    return [first, ask]


_RENDERERS: dict[type, Callable[[Any], list[str]]] = {
    RoadStatusAnswer: _road, StopArrivals: _stop, RouteArrivals: _route,
    ParkingAnswer: _parking, IndexAnswer: _index, NearbyAnswer: _nearby,
    Ambiguous: _ambiguous, NotUnderstood: _not_understood,
}
