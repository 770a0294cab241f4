"""The one text-query resolver of the conversational channels (WeChat, the 12328/12122 hotlines).

A citizen's free text — "1路", "1路 解放大道八一路", "江城一桥", "解放大道八一路", "停车 江城一桥",
"路况", a point — becomes a typed answer computed from :class:`~services.publisher.answers.
Answers`: the data a renderer needs (names, minutes, occupancy, level names, ages), no channel
wording. Each channel renders it in its own words.

What is understood, in this order: an empty or over-long text; a point ``LON,LAT`` (WGS-84);
the traffic index (路况, 交通指数); car parks (停车, 停车场, parking) near a named place or the
sender's location; a bus route by its GTFS short name (``1``, ``1路``, ``公交1路``, ``Bus 1``),
alone or with a stop; "nearby" (附近) with the sender's location; else a name: a road, bridge or
tunnel (its status over its segments, and the warnings on it), a stop (its arrivals) or a
place (the roads and car parks around it). Names match exactly, then as a prefix, then as a
substring, in Chinese or English; when several names match equally well the answer is
:class:`Ambiguous` with the few best.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.publisher.answers import Answers
from services.publisher.api import MAX_QUERY_CHARS
from services.publisher.channels.query_answers import (
    NOT_UNDERSTOOD_REASONS,
    Ambiguous,
    AreaReading,
    Arrival,
    Candidate,
    CarPark,
    IndexAnswer,
    LevelReading,
    LiveBus,
    NearbyAnswer,
    NotUnderstood,
    ParkingAnswer,
    QueryAnswer,
    RoadStatusAnswer,
    RouteArrivals,
    StopArrivals,
    WarningBrief,
)
from services.publisher.places import BusRoute, Places, Stop
from services.publisher.roads import Catalogue, live_properties
from shared.clients.bigdata import Segment
from shared.events import CapSeverity, Warning, WarningKind
from shared.geo import LocalProjection, haversine_m, point_segment_projection

MAX_CANDIDATES = 5
MAX_ARRIVALS = 8
MAX_WARNINGS = 3
NEAR_ROADS_M = 300.0
NEAR_PARKING_M = 1000.0
STOP_GROUP_M = 500.0
"""Stops of one name within this distance are one place (the two directions' platforms)."""

__all__ = [
    "NOT_UNDERSTOOD_REASONS", "Ambiguous", "AreaReading", "Arrival", "Candidate", "CarPark",
    "IndexAnswer", "LevelReading", "LiveBus", "NearbyAnswer", "NotUnderstood", "ParkingAnswer",
    "QueryAnswer", "RoadStatusAnswer", "RouteArrivals", "StopArrivals", "WarningBrief",
    "normalize", "resolve",
]


# -- text ----------------------------------------------------------------------------------------

_LEAD = ("请问一下", "请问", "请帮我查一下", "请帮我查", "帮我查一下", "帮我查", "帮我看看",
         "查询一下", "查询", "查一下", "我想知道", "想知道", "问一下", "现在", "目前", "今天")
_TAIL = ("还有多久到站", "还有多久到", "还有多久", "多久到", "几分钟到", "什么时候到", "到哪了",
         "到哪里了", "到站了吗", "到站", "现在怎么样", "怎么样", "如何", "堵不堵", "堵车吗",
         "拥堵吗", "堵吗", "通畅吗", "畅通吗", "好走吗", "实时", "现在", "吗", "呢", "啊", "呀",
         "?", "!", ".", "。", "的")
_ROAD_TAIL = ("路况", "状况", "情况", "交通")
_INDEX_WORDS = frozenset({"路况", "交通", "交通指数", "拥堵指数", "交通状况", "全市路况",
                          "全城路况", "城市路况", "整体路况", "道路状况", "traffic",
                          "traffic index", "index", "tpi"})
_PARKING_WORDS = ("停车场", "停车位", "停车库", "停车", "车位", "car parks", "car park", "parking")
_NEARBY_WORDS = frozenset({"附近", "周边", "周围", "这里", "我这里", "我附近", "身边", "here",
                           "nearby", "near me", "around me"})
_PLACE_FILLER = ("附近的", "附近", "周边", "周围", "旁边", "哪里有", "哪儿有", "哪里", "哪儿",
                 "有没有", "能", "可以", "有", "在", "的", "near", "around", "at")
_POINT = re.compile(r"^(-?\d{1,3}(?:\.\d+)?)\s*[,\s]\s*(-?\d{1,2}(?:\.\d+)?)$")
_ROUTE = re.compile(r"^(?:公交|公交车|bus|route|no\.?)?\s*([a-z]{0,3}\d{1,4}[a-z]?)\s*"
                    r"(?:路公交车|路公交|路车|路|线|号线)?(?:\s+|$|(?=[^\x00-\x7f]))(.*)$")
_SEVERITY_RANK = {CapSeverity.EXTREME: 0, CapSeverity.SEVERE: 1, CapSeverity.MODERATE: 2,
                  CapSeverity.MINOR: 3, CapSeverity.UNKNOWN: 4}


def normalize(text: str) -> str:
    """Full-width forms folded (NFKC: ０-９, Ａ, full-width space and punctuation), spaces
    collapsed, lower case for the Latin letters."""
    folded = unicodedata.normalize("NFKC", text).replace("，", ",")
    return " ".join(folded.split()).lower()


def _strip(text: str, lead: Sequence[str], tail: Sequence[str]) -> str:
    changed = True
    while changed and text:
        changed = False
        for word in lead:
            if text.startswith(word) and len(text) > len(word):
                text, changed = text[len(word):].strip(), True
        for word in tail:
            if text.endswith(word):
                text, changed = text[: -len(word)].strip(), True
    return text


def _rank(query: str, *names: str | None) -> int | None:
    """0 exact, 1 prefix, 2 substring (case-folded), None no match."""
    best: int | None = None
    for name in names:
        if not name:
            continue
        n = name.casefold()
        rank = 0 if n == query else 1 if n.startswith(query) else 2 if query in n else None
        if rank is not None and (best is None or rank < best):
            best = rank
    return best


# -- the resolver --------------------------------------------------------------------------------


class NotedPoint(tuple[float, float]):
    """A sender's location (lon, lat) that notes whether the resolver read it.

    The resolver reads ``near`` (by index or by unpacking) on every path where it counts, and
    takes the same path for a point it does not read as for no point at all; so an answer
    given without reading :attr:`read` is the answer for every sender, located or not, and a
    channel may share it without looking the sender's location up
    (``tests/publisher/channels/test_query.py`` checks this over the examples).
    """

    read: bool

    def __new__(cls, point: tuple[float, float]) -> NotedPoint:
        self = super().__new__(cls, (float(point[0]), float(point[1])))
        self.read = False
        return self

    def __getitem__(self, index: Any) -> Any:
        self.read = True
        return super().__getitem__(index)

    def __iter__(self) -> Iterator[float]:
        self.read = True
        return super().__iter__()


async def resolve(answers: Answers, text: str, *, near: tuple[float, float] | None = None
                  ) -> QueryAnswer:
    """The answer to a citizen's ``text``; ``near`` is the sender's location (WGS-84), if known.

    Raises :class:`~shared.errors.TransientError` (503 ``catalogue_loading``) while the road or
    stop catalogues load; everything else is an answer, :class:`NotUnderstood` included.
    """
    raw = text.strip()
    if len(raw) > MAX_QUERY_CHARS:
        return NotUnderstood(text=raw[:MAX_QUERY_CHARS], reason="too_long", subject=None,
                             examples=_examples(answers))
    q = normalize(raw)
    if not q:
        if near is not None:
            return _nearby(answers, near, None)
        return NotUnderstood(text=raw, reason="empty", subject=None, examples=_examples(answers))
    if (m := _POINT.match(q)) and _valid_point(float(m.group(1)), float(m.group(2))):
        return _nearby(answers, (float(m.group(1)), float(m.group(2))), None)
    core = _strip(q, _LEAD, _TAIL)
    if not core:  # only fillers: "?", "请问"
        if near is not None:
            return _nearby(answers, near, None)
        return NotUnderstood(text=raw, reason="empty", subject=None, examples=_examples(answers))
    if core in _INDEX_WORDS or _strip(core, ("全市", "全城", "城市", "整体"), ()) in _INDEX_WORDS:
        return _index(answers)
    if any(w in core for w in _PARKING_WORDS):
        return await _parking(answers, core, near, raw)
    route = _ROUTE.match(core)
    if route is not None:
        found = await _route(answers, route.group(1), route.group(2).strip(), near, raw)
        if found is not None:
            return found
        if not route.group(2).strip() and route.group(1).isdigit():
            # A number alone that names no route may still be a stop's code; "512路" is not.
            named = await _by_name(answers, core, near, raw) if core.isdigit() else None
            return named if isinstance(named, StopArrivals) else NotUnderstood(
                text=raw, reason="unknown_route", subject=route.group(1),
                examples=_examples(answers))
    if core in _NEARBY_WORDS or _strip(core, (), ("的路况", "路况")) in _NEARBY_WORDS:
        if near is None:
            return NotUnderstood(text=raw, reason="needs_location", subject=None,
                                 examples=_examples(answers))
        return _nearby(answers, near, None)
    return await _by_name(answers, _strip(core, (), _ROAD_TAIL) or core, near, raw)


def _valid_point(lon: float, lat: float) -> bool:
    return -180 <= lon <= 180 and -90 <= lat <= 90


def _age_s(now: datetime, at: datetime | None) -> int | None:
    return None if at is None else max(0, round((now - at).total_seconds()))


# -- names ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    rank: int
    kind: str
    name: str
    name_en: str | None
    detail: str | None
    items: tuple[Any, ...]


def _road_matches(catalogue: Catalogue, q: str) -> list[_Match]:
    by_name: dict[str, list[Segment]] = defaultdict(list)
    for segment in catalogue.search(q):
        if segment.name:
            by_name[segment.name].append(segment)
    out = []
    for name, segments in by_name.items():
        rank = _rank(q, name, segments[0].name_en)
        if rank is not None:
            out.append(_Match(rank, "road", name, segments[0].name_en,
                              _road_class(segments), tuple(segments)))
    return out


def _road_class(segments: Sequence[Segment]) -> str:
    counts: dict[str, float] = defaultdict(float)
    for s in segments:
        counts[s.road_class] += s.length_m or 0.0
    return max(counts, key=lambda k: counts[k])


def _stop_groups(places: Places, stops: Iterable[Stop]) -> list[tuple[Stop, ...]]:
    """Stops of one name within :data:`STOP_GROUP_M` of the first as one group."""
    groups: list[list[Stop]] = []
    for stop in stops:
        for group in groups:
            if group[0].name == stop.name and haversine_m(
                    group[0].lon, group[0].lat, stop.lon, stop.lat) <= STOP_GROUP_M:
                group.append(stop)
                break
        else:
            groups.append([stop])
    return [tuple(g) for g in groups]


def _stop_matches(places: Places, q: str) -> list[_Match]:
    found = places.search_stops(q, 50)
    names = {s.name for s in found}
    # Every platform of a matching name, not only the first 50 found.
    same = [s for s in places.stops if s.name in names] if len(names) <= MAX_CANDIDATES else found
    out = []
    for group in _stop_groups(places, same):
        rank = _rank(q, group[0].name, group[0].name_en)
        if any(q in (s.code, s.stop_id) for s in group):  # a stop's code only as a whole
            rank = 0
        if rank is not None:
            out.append(_Match(rank, "stop", group[0].name, group[0].name_en, None, group))
    return out


def _place_matches(places: Places, q: str) -> list[_Match]:
    out = []
    for place in places.search_places(q, None, 20):
        rank = _rank(q, place.name, place.name_en, place.ref)
        if rank is not None and place.name:
            out.append(_Match(rank, "place", place.name, place.name_en, place.kind, (place,)))
    return out


def _best(matches: list[_Match], near: tuple[float, float] | None) -> list[_Match]:
    """The matches of the best rank; among several stops of one name, the nearest to ``near``."""
    if not matches:
        return []
    top = min(m.rank for m in matches)
    best = [m for m in matches if m.rank == top]
    if near is not None and len(best) > 1 and len({(m.kind, m.name) for m in best}) == 1:
        best.sort(key=lambda m: min(haversine_m(near[0], near[1], *_where(i)) for i in m.items))
        return best[:1]
    # Shorter names first: "江城一桥" before "江城一桥辅路" for the text "一桥".
    best.sort(key=lambda m: (len(m.name), m.kind != "road", m.name))
    return best


def _where(item: Any) -> tuple[float, float]:
    if isinstance(item, Segment):
        mid = item.coords[len(item.coords) // 2]
        return float(mid[0]), float(mid[1])
    return float(item.lon), float(item.lat)


def _ambiguous(raw: str, matches: Sequence[_Match]) -> Ambiguous:
    return Ambiguous(text=raw, candidates=tuple(
        Candidate(kind=m.kind, name=m.name, name_en=m.name_en, detail=m.detail)
        for m in matches[:MAX_CANDIDATES]))


def _variants(q: str) -> list[str]:
    """The text, then without a trailing 站 ("解放大道八一路站" is the stop 解放大道八一路)."""
    shorter = [q.removesuffix(s) for s in ("公交站", "车站", "站") if q.endswith(s)
               and len(q) > len(s)]
    return [q, *shorter[:1]]


async def _by_name(answers: Answers, q: str, near: tuple[float, float] | None,
                   raw: str) -> QueryAnswer:
    catalogue, places = answers.catalogue(), answers.places()
    for variant in _variants(q):
        matches = (_road_matches(catalogue, variant) + _stop_matches(places, variant)
                   + _place_matches(places, variant))
        best = _best(matches, near)
        if not best:
            continue
        if len(best) > 1:
            return _ambiguous(raw, best)
        match = best[0]
        if match.kind == "road":
            return _road_status(answers, match.name, match.items)
        if match.kind == "stop":
            return await _stop_arrivals(answers, match.items)
        return _nearby(answers, _where(match.items[0]), match.name)
    return NotUnderstood(text=raw, reason="no_match", subject=q, examples=_examples(answers))


# -- roads ---------------------------------------------------------------------------------------


def _road_status(answers: Answers, name: str, segments: Sequence[Segment], *,
                 distance_m: float | None = None) -> RoadStatusAnswer:
    p = answers.p
    now = p.clock.now()
    measured: list[tuple[Segment, dict[str, Any]]] = []
    for segment in segments:
        live = live_properties(p.road_status(segment, now))
        if live["level"] is not None:
            measured.append((segment, live))
    worst = typical = None
    observed = None
    congested = 0.0
    if measured:
        _, w = max(measured, key=lambda m: (m[1]["level"], -(m[1]["speed_kmh"] or 1e9)))
        worst = _reading(w["level"], w["level_name"], w["level_name_en"], w["speed_kmh"])
        by_level = sorted(measured, key=lambda m: m[1]["level"])
        total = sum(_length(s) for s, _ in measured)
        run, typical_live = 0.0, by_level[-1][1]
        for s, live in by_level:
            run += _length(s)
            if run >= total / 2:
                typical_live = live
                break
        timed = [(_length(s), live["speed_kmh"]) for s, live in measured
                 if live["speed_kmh"] is not None and live["speed_kmh"] > 0]
        speed = (round(sum(m for m, _ in timed) / sum(m / v for m, v in timed), 1)
                 if timed else None)
        typical = _reading(typical_live["level"], typical_live["level_name"],
                           typical_live["level_name_en"], speed)
        observed = max(live["observed_at"] for _, live in measured)
        congested = sum(_length(s) for s, live in measured if live["level"] >= 4)
    sources = {live["source"] for _, live in measured}
    source = "none" if not sources else "profile" if sources == {"profile"} else "live"
    ids = {s.segment_id for s in segments}
    warnings = [w for w in p.warnings.list_warnings("active")
                if w.kind != WarningKind.VEHICLE_ALARM
                and (ids.intersection(w.segment_ids) or name in w.road_names)]
    warnings.sort(key=lambda w: (_SEVERITY_RANK.get(w.severity, 9), -w.started_at.timestamp()))
    return RoadStatusAnswer(
        name=name, name_en=segments[0].name_en, road_class=_road_class(segments),
        bridge=any(s.bridge for s in segments), tunnel=any(s.tunnel for s in segments),
        segment_count=len(segments), measured_count=len(measured),
        length_m=round(sum(_length(s) for s in segments), 1),
        congested_length_m=round(congested, 1), worst=worst, typical=typical, source=source,
        observed_at=observed, age_s=_age_s(now, observed),
        warnings=tuple(_brief(w) for w in warnings[:MAX_WARNINGS]),
        warnings_more=max(0, len(warnings) - MAX_WARNINGS), distance_m=distance_m)


def _length(segment: Segment) -> float:
    return float(segment.length_m or 0.0) or 1.0


def _reading(level: int, name: str, name_en: str, speed: float | None) -> LevelReading:
    return LevelReading(level=level, level_name=name, level_name_en=name_en, speed_kmh=speed)


def _brief(w: Warning) -> WarningBrief:
    return WarningBrief(warning_id=w.warning_id, kind=str(w.kind), severity=str(w.severity),
                        headline=w.headline, headline_en=w.headline_en,
                        started_at=w.started_at, level=w.level)


def _distance_m(proj: LocalProjection, segment: Segment) -> float:
    """Metres from the projection's origin to the segment's line."""
    pts = [proj.to_xy(c[0], c[1]) for c in segment.coords]
    if len(pts) == 1:
        return math.hypot(*pts[0])
    return min(point_segment_projection(0.0, 0.0, *a, *b).distance
               for a, b in itertools.pairwise(pts))


def _nearby(answers: Answers, point: tuple[float, float], place_name: str | None
            ) -> NearbyAnswer:
    catalogue = answers.catalogue()
    lon, lat = point
    d = NEAR_ROADS_M / 111_195.0
    dl = d / max(math.cos(math.radians(lat)), 1e-6)
    proj = LocalProjection(lon, lat)
    by_name: dict[str, list[tuple[float, Segment]]] = defaultdict(list)
    for segment in catalogue.list_segments((lon - dl, lat - d, lon + dl, lat + d)):
        if segment.name:
            dist = _distance_m(proj, segment)
            if dist <= NEAR_ROADS_M:
                by_name[segment.name].append((dist, segment))
    nearest = sorted(by_name.items(), key=lambda kv: min(x for x, _ in kv[1]))[:MAX_CANDIDATES]
    roads = tuple(_road_status(answers, name, [s for _, s in found],
                               distance_m=round(min(x for x, _ in found), 1))
                  for name, found in nearest)
    return NearbyAnswer(place_name=place_name, lon=lon, lat=lat, roads=roads,
                        car_parks=_car_parks(answers, point))


# -- parking, index ------------------------------------------------------------------------------


def _car_parks(answers: Answers, point: tuple[float, float]) -> tuple[CarPark, ...]:
    body, _ = answers.parking(point, radius_m=NEAR_PARKING_M, limit=MAX_CANDIDATES)
    return tuple(CarPark(name=c["name"], name_en=c["name_en"], distance_m=c["distance_m"],
                         capacity=c["capacity"], free_spaces=c["free_spaces"],
                         age_s=c["age_s"]) for c in body["parking"])


async def _parking(answers: Answers, core: str, near: tuple[float, float] | None,
                   raw: str) -> QueryAnswer:
    where = core
    for word in _PARKING_WORDS:
        where = where.replace(word, " ")
    where = _strip(" ".join(where.split()), _PLACE_FILLER, _PLACE_FILLER)
    if not where:
        if near is None:
            return NotUnderstood(text=raw, reason="needs_location", subject=None,
                                 examples=_examples(answers))
        return ParkingAnswer(place_name=None, lon=near[0], lat=near[1],
                             radius_m=NEAR_PARKING_M, car_parks=_car_parks(answers, near))
    places = answers.places()
    matches = (_stop_matches(places, where) + _place_matches(places, where)
               + _road_matches(answers.catalogue(), where))
    best = _best(matches, near)
    if not best:
        return NotUnderstood(text=raw, reason="no_match", subject=where,
                             examples=_examples(answers))
    if len({(m.kind, m.name) for m in best}) > 1:
        return _ambiguous(raw, best)
    match = best[0]
    items = match.items
    if match.kind == "road" and near is not None:  # the stretch of the road nearest the sender
        items = (min(items, key=lambda s: haversine_m(near[0], near[1], *_where(s))),)
    point = _where(items[len(items) // 2] if match.kind == "road" else items[0])
    return ParkingAnswer(place_name=match.name, lon=point[0], lat=point[1],
                         radius_m=NEAR_PARKING_M, car_parks=_car_parks(answers, point))


def _area(raw: dict[str, Any]) -> AreaReading:
    return AreaReading(area_id=raw["area_id"], name=raw["name"], tpi=raw["tpi"],
                       level=raw["level"], level_name=raw["level_name"],
                       level_name_en=raw["level_name_en"], speed_kmh=raw["speed_kmh"],
                       congested_share=raw["congested_share"])


def _index(answers: Answers) -> IndexAnswer:
    body, _ = answers.index()
    areas = sorted((_area(a) for a in body["areas"]), key=lambda a: -(a.tpi or 0.0))
    observed = body["observed_at"]
    return IndexAnswer(network=None if body["network"] is None else _area(body["network"]),
                       areas=tuple(areas), observed_at=observed,
                       age_s=_age_s(answers.p.clock.now(), observed))


# -- buses ---------------------------------------------------------------------------------------


def _arrival(row: dict[str, Any]) -> Arrival:
    occupancy = row.get("occupancy") or {}
    return Arrival(route_id=row.get("route_id"), route_short_name=row.get("route_short_name"),
                   headsign=row.get("headsign"), stop_id=row.get("stop_id"),
                   minutes=int(row["minutes"]), arrival_at=row["arrival_at"],
                   source=row["source"], delay_s=row.get("delay_s"),
                   occupancy=occupancy.get("status"), occupancy_pct=occupancy.get("percentage"))


async def _arrivals_at(answers: Answers, stops: Sequence[Stop]
                       ) -> tuple[list[Arrival], str]:
    rows: list[Arrival] = []
    states = []
    for stop in stops[:MAX_CANDIDATES]:
        body, _ = await answers.arrivals(stop.stop_id, limit=40)
        rows.extend(_arrival(r) for r in body["arrivals"])
        states.append(body["timetable"])
    rows.sort(key=lambda a: a.arrival_at)
    state = ("included" if "included" in states else "unavailable" if "unavailable" in states
             else "none")
    return rows, state


async def _stop_arrivals(answers: Answers, stops: Sequence[Stop]) -> StopArrivals:
    rows, state = await _arrivals_at(answers, stops)
    first = stops[0]
    return StopArrivals(stop_name=first.name, stop_name_en=first.name_en,
                        stop_ids=tuple(s.stop_id for s in stops), lon=first.lon, lat=first.lat,
                        arrivals=tuple(rows[:MAX_ARRIVALS]), timetable=state)


def _find_routes(places: Places, ref: str) -> list[BusRoute]:
    ref = ref.casefold()
    return [r for r in places.routes if r.short_name and r.short_name.casefold() == ref]


async def _route(answers: Answers, ref: str, rest: str, near: tuple[float, float] | None,
                 raw: str) -> QueryAnswer | None:
    """A route's answer; None when ``ref`` names no route and the text may be a name."""
    places = answers.places()
    routes = _find_routes(places, ref)
    if not routes:
        return None  # "8号楼", a stop's code: perhaps a name
    if len(routes) > 1:
        return Ambiguous(text=raw, candidates=tuple(
            Candidate(kind="route", name=r.short_name or r.route_id, name_en=None,
                      detail=r.long_name) for r in routes[:MAX_CANDIDATES]))
    route = routes[0]
    rest = _strip(rest, ("在", "到", "去", "at"), ())
    if rest:
        best = next((b for v in _variants(rest) if (b := _best(_stop_matches(places, v), near))),
                    [])
        if not best:
            return NotUnderstood(text=raw, reason="unknown_stop", subject=rest,
                                 examples=_examples(answers))
        if len(best) > 1:
            return _ambiguous(raw, best)
        stops = best[0].items
        rows, state = await _arrivals_at(answers, stops)
        mine = tuple(a for a in rows if a.route_id == route.route_id)[:MAX_ARRIVALS]
        return RouteArrivals(route_id=route.route_id, route_short_name=route.short_name or ref,
                             long_name=route.long_name, stop_name=stops[0].name,
                             stop_ids=tuple(s.stop_id for s in stops), arrivals=mine, buses=(),
                             timetable=state)
    return RouteArrivals(route_id=route.route_id, route_short_name=route.short_name or ref,
                         long_name=route.long_name, stop_name=None, stop_ids=(), arrivals=(),
                         buses=_live_buses(answers, route), timetable=None)


def _live_buses(answers: Answers, route: BusRoute) -> tuple[LiveBus, ...]:
    p = answers.p
    places = answers.places()
    now = p.clock.now()
    next_stop: dict[str, tuple[datetime, str]] = {}
    for preds in p.buses.trips(now).values():
        for pred in preds:
            if pred.vehicle_ref and pred.route_id == route.route_id:
                held = next_stop.get(pred.vehicle_ref)
                if held is None or pred.predicted_arrival < held[0]:
                    next_stop[pred.vehicle_ref] = (pred.predicted_arrival, pred.stop_id)
                break  # the trip's first fresh stop is the next one
    out = []
    for bus in p.buses.live_buses(now):
        if bus.route_id != route.route_id:
            continue
        nxt = next_stop.get(bus.ref)
        stop = places.stop_by_id.get(nxt[1]) if nxt else None
        out.append(LiveBus(
            label=bus.ref, direction_id=bus.direction_id,
            next_stop_name=stop.name if stop else None,
            next_stop_minutes=None if nxt is None
            else max(0, round((nxt[0] - now).total_seconds() / 60)),
            speed_kmh=bus.speed_kmh, occupancy=bus.occupancy, occupancy_pct=bus.occupancy_pct,
            age_s=_age_s(now, bus.observed_at) or 0))
    out.sort(key=lambda b: (b.next_stop_minutes is None, b.next_stop_minutes or 0, b.label))
    return tuple(out)


# -- help ----------------------------------------------------------------------------------------


def _examples(answers: Answers) -> tuple[str, ...]:
    """Queries this region can answer, from its own data: a route, a bridge, a stop, parking
    and the index (what a "not understood" reply offers)."""
    out: list[str] = []
    places, catalogue = answers.p.places, answers.p.catalogue
    stop = places.stops[0].name if places is not None and places.stops else None
    if places is not None:
        route = next((r for r in places.routes if r.short_name), None)
        if route is not None:
            out.append(f"{route.short_name}路" + (f" {stop}" if stop else ""))
    if catalogue is not None:
        named = next((s for s in catalogue.list_segments() if s.name and (s.bridge or s.tunnel)),
                     None) or next((s for s in catalogue.list_segments() if s.name), None)
        if named is not None and named.name:
            out.append(named.name)
    if stop:
        out += [stop, f"停车 {stop}"]
    out.append("路况")
    return tuple(out)
