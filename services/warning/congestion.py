"""Congestion: a graded status per segment, and queues — one warning per queue, however long.

**Grading.** Every window's speed is graded after GB/T 33171 (:mod:`services.warning.levels`):
level 1-5 and the TPI. A segment without a window for ``STALE_WINDOWS`` windows is no longer
live; its time-of-week profile speed stands in (``source: profile``), graded the same way, or it
says ``source: none``.

**Queues.** A segment *raises* when it is at level 5 on at least ``MIN_SAMPLES`` vehicles at no
more than ``MAX_SPEED_RATIO`` of free flow (one slow car is not a jam, and a slow minor road is
not either) — and it *starts* a warning only where that is abnormal for the place and time, or
severe and lasting (:mod:`services.warning.abnormal`: a red light's queue every cycle is status,
not a warning). A queue is a connected run of such segments along the road graph (a segment joins
the one it leads into or comes from, not its own reverse direction); a segment already in a
queue stays in it while it is at level 4 or 5. Each queue is one warning: it grows, shrinks,
merges (the older warning goes on, the other is resolved as merged) and ends as the traffic does.
Its id comes from its head (most downstream) segment and the start of the window it was first
seen in, so replaying the same speeds makes the same warning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.warning.incidents import area_of
from services.warning.levels import level_for_speed, tpi_for_speed
from shared.events import CapCategory, CapSeverity, SegmentSpeed, WarningKind
from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN
from shared.roadnet import RoadNetwork

SEVERE = 5
HOLD_AT_OR_ABOVE = 4
"""A segment already in a queue stays in it at this level or worse."""
MIN_SAMPLES = 2
MAX_SPEED_RATIO = 0.5
STALE_WINDOWS = 3
"""A segment with no new window for this many windows is not live any more."""


@dataclass(frozen=True, slots=True)
class Grade:
    """A speed graded on its road: level 1-5 and TPI (None when there is no speed)."""

    level: int | None
    tpi: float | None

    @property
    def names(self) -> tuple[str | None, str | None]:
        """(Chinese, English) level names."""
        if self.level is None:
            return None, None
        return LEVEL_NAMES[self.level], LEVEL_NAMES_EN[self.level]


def grade(speed_kmh: float | None, road_class: str | None) -> Grade:
    """Grade a speed on a road of this class."""
    if speed_kmh is None:
        return Grade(None, None)
    return Grade(level_for_speed(speed_kmh, road_class), tpi_for_speed(speed_kmh, road_class))


def raises(s: SegmentSpeed, level: int | None) -> bool:
    """Whether a window is bad enough to start (or join as new) a queue."""
    if level != SEVERE or s.speed_kmh is None or s.sample_count < MIN_SAMPLES:
        return False
    return s.free_flow_kmh is None or s.speed_kmh <= MAX_SPEED_RATIO * s.free_flow_kmh


def components(network: RoadNetwork, hot: Collection[str]) -> list[list[str]]:
    """Connected runs of ``hot`` segments along the graph, each sorted, in a stable order."""
    left = set(hot)
    out: list[list[str]] = []
    for start in sorted(hot):
        if start not in left:
            continue
        left.discard(start)
        stack, comp = [start], [start]
        while stack:
            sid = stack.pop()
            if sid not in network:
                continue
            reverse = network.find_reverse(sid)
            for nxt in (*network.successors(sid), *network.predecessors(sid)):
                if nxt in left and nxt != reverse:
                    left.discard(nxt)
                    stack.append(nxt)
                    comp.append(nxt)
        out.append(sorted(comp))
    return out


def head_of(network: RoadNetwork, segment_ids: Collection[str]) -> str:
    """The most downstream segment of a queue: the one whose successors leave the queue.

    A loop has none; then the smallest id, so the choice is stable.
    """
    members = set(segment_ids)
    heads = [sid for sid in sorted(members) if sid in network
             and not any(n in members and n != network.find_reverse(sid)
                         for n in network.successors(sid))]
    return heads[0] if heads else min(members)


def upstream_order(network: RoadNetwork, segment_ids: Collection[str]) -> list[str]:
    """Segments of a queue from its tail to its head, as far as the graph orders them."""
    members = set(segment_ids)
    head = head_of(network, members)
    order: list[str] = []
    seen: set[str] = set()
    frontier = [head]
    while frontier:
        nxt_frontier: list[str] = []
        for sid in frontier:
            if sid in seen:
                continue
            seen.add(sid)
            order.append(sid)
            if sid in network:
                nxt_frontier.extend(p for p in sorted(network.predecessors(sid))
                                    if p in members and p not in seen)
        frontier = nxt_frontier
    order.extend(sorted(members - seen))
    order.reverse()
    return order


def queue_warning_id(head: str, window_start: datetime) -> str:
    """Deterministic id of the congestion warning of a queue first seen at ``head``."""
    key = f"congestion|{head}|{window_start.isoformat()}"
    return "cong-" + hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass(slots=True)
class QueuePlan:
    """What one re-evaluation decided: queues that go on, start, and warnings that end."""

    keep: dict[str, list[str]]
    """Existing warning id → its segments now."""
    new: list[list[str]]
    """Segments of each new queue."""
    merged: dict[str, str]
    """Warning id → the warning it merged into."""
    ended: list[str]
    """Warning ids whose queue is gone."""


def plan_queues(network: RoadNetwork, *, raising: Collection[str], holding: Collection[str],
                queues: Mapping[str, Collection[str]],
                started: Callable[[str], tuple[datetime, str]],
                joining: Collection[str] = ()) -> QueuePlan:
    """Match today's hot segments to the queues held (warning id → segments).

    ``raising`` are segments bad enough to start a queue, ``holding`` those at level 4-5; a
    holding segment counts only if it is in a held queue. ``joining`` (severe, though not
    abnormal by themselves) count only where they touch a held queue or a raising segment: a
    queue grows onto them, none starts from them. ``started(warning_id)`` orders warnings
    (oldest first) when queues merge.
    """
    member_of: dict[str, str] = {}
    for wid, segs in queues.items():
        for sid in segs:
            member_of.setdefault(sid, wid)
    hot = set(raising) | set(joining) | {sid for sid in holding if sid in member_of}
    plan = QueuePlan(keep={}, new=[], merged={}, ended=[])
    claimed: dict[str, tuple[int, list[str]]] = {}
    unclaimed: list[list[str]] = []
    for comp in components(network, hot):
        owners = sorted({member_of[s] for s in comp if s in member_of}, key=started)
        if not owners:
            if any(s in raising for s in comp):
                unclaimed.append(comp)
            continue
        # The oldest warning goes on; the others in this component merged into it.
        owner = owners[0]
        overlap = sum(1 for s in comp if member_of.get(s) == owner)
        held = claimed.get(owner)
        if held is None or overlap > held[0]:
            if held is not None:
                unclaimed.append(held[1])  # the smaller part of a split queue starts anew
            claimed[owner] = (overlap, comp)
        else:
            unclaimed.append(comp)
        for other in owners[1:]:
            plan.merged.setdefault(other, owner)
    for wid, (_, comp) in claimed.items():
        plan.keep[wid] = comp
    for comp in unclaimed:
        if any(s in raising for s in comp):
            plan.new.append(comp)
    for wid in queues:
        if wid not in plan.keep and wid not in plan.merged:
            plan.ended.append(wid)
    for wid in list(plan.merged):
        if wid in plan.keep:  # kept its own larger part elsewhere: not merged after all
            del plan.merged[wid]
    return plan


def queue_text(names: Iterable[str | None], *, length_m: float, speed_kmh: float | None,
               free_flow_kmh: float | None, vehicles: int, level: int | None
               ) -> tuple[str, str, str, str]:
    """(headline, headline_en, description, description_en) of a queue as it is now."""
    roads = [n for n in dict.fromkeys(names) if n]
    road = "、".join(roads[:3]) or "未命名道路"
    road_en = ", ".join(roads[:3]) or "an unnamed road"
    zh = LEVEL_NAMES.get(level or SEVERE, LEVEL_NAMES[SEVERE])
    en = LEVEL_NAMES_EN.get(level or SEVERE, LEVEL_NAMES_EN[SEVERE])
    km = length_m / 1000.0
    speed = "—" if speed_kmh is None else f"{speed_kmh:.0f}"
    free = "—" if free_flow_kmh is None else f"{free_flow_kmh:.0f}"
    headline = f"{road} {zh}"
    headline_en = f"{road_en}: {en}"
    description = (f"{road}{zh}，排队约 {km:.1f} 公里，平均车速 {speed} km/h"
                   f"（畅行 {free} km/h），{vehicles} 辆车。")
    description_en = (f"{en.capitalize()} on {road_en} over about {km:.1f} km: average "
                      f"{speed} km/h (free flow {free} km/h), {vehicles} vehicles.")
    return headline, headline_en, description, description_en


class Held(Protocol):
    """What the engine holds of a segment: its latest window and that window's grade."""

    last: SegmentSpeed
    grade: Grade


def queue_facts(network: RoadNetwork, held: Mapping[str, Held], segs: Collection[str]
                ) -> dict[str, Any]:
    """What a queue is now: its segments tail to head, length, speed, vehicles, level, head."""
    ordered = upstream_order(network, segs)
    length = sum(network.get_segment(s).length_m for s in ordered if s in network)
    windows = [held[s].last for s in ordered if s in held]
    dist = sum(network.get_segment(w.segment_id).length_m for w in windows
               if w.speed_kmh and w.segment_id in network)
    hours = sum(network.get_segment(w.segment_id).length_m / 1000.0 / w.speed_kmh
                for w in windows if w.speed_kmh and w.segment_id in network)
    speed = round(dist / 1000.0 / hours, 1) if hours > 0 else None
    free = [w.free_flow_kmh for w in windows if w.free_flow_kmh]
    levels = [held[s].grade.level or 0 for s in ordered if s in held]
    head = network.get_segment(head_of(network, ordered))
    names = [network.get_segment(s).name for s in ordered if s in network]
    return {
        "ordered": ordered, "length_m": length, "speed_kmh": speed,
        "free_flow_kmh": round(sum(free) / len(free), 1) if free else None,
        "vehicles": max((w.sample_count for w in windows), default=0),
        "level": max(levels, default=None), "head": head,
        "names": names, "observed_at": max(w.observed_at for w in windows),
        "window_start": min(w.window_start for w in windows
                            if held[w.segment_id].grade.level == SEVERE)
        if any(held[w.segment_id].grade.level == SEVERE for w in windows)
        else min(w.window_start for w in windows),
    }


def queue_fields(network: RoadNetwork, facts: dict[str, Any], *, incident: bool = False
                 ) -> dict[str, Any]:
    """The warning fields of a queue's facts (kind, text, segments, level, area). A queue
    that ends at one point (``incident``) is a suspected incident's warning."""
    headline, headline_en, description, description_en = queue_text(
        facts["names"], length_m=facts["length_m"], speed_kmh=facts["speed_kmh"],
        free_flow_kmh=facts["free_flow_kmh"], vehicles=facts["vehicles"],
        level=facts["level"])
    kind = WarningKind.INCIDENT if incident else WarningKind.CONGESTION
    if incident:
        headline, headline_en = f"{headline}（疑似交通事件）", f"{headline_en} (suspected incident)"
        description = f"疑似交通事件：排队止于一点，其后道路畅通。{description}"
        description_en = (f"Suspected incident: the queue ends at one point, with free road "
                          f"past it. {description_en}")
    mid = facts["head"].coords[len(facts["head"].coords) // 2]
    return {
        "kind": kind, "category": CapCategory.TRANSPORT,
        "cause": "suspected_incident" if incident else "severe_congestion",
        "segment_ids": tuple(facts["ordered"]), "headline": headline,
        "headline_en": headline_en, "description": description,
        "description_en": description_en,
        "road_names": tuple(n for n in dict.fromkeys(facts["names"]) if n),
        "level": facts["level"], "speed_kmh": facts["speed_kmh"],
        "lon": mid[0], "lat": mid[1],
        "severity": CapSeverity.SEVERE if facts["level"] == SEVERE
        else CapSeverity.MODERATE,
        "area": area_of(network, facts["ordered"], facts["names"]),
        "details": {"length_m": round(facts["length_m"], 1),
                    "vehicles": facts["vehicles"],
                    "free_flow_kmh": facts["free_flow_kmh"]},
    }

