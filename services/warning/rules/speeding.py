"""Speeding of 两客一危 vehicles against the limit that binds them where they are.

The effective limit of a fix is the lowest of: the segment's limit (OSM ``maxspeed`` or the
statutory default of its kind of road, when known); for dangerous goods 80 km/h on expressways
(高速公路: ``motorway`` and its ramps) and 60 km/h on every other road, urban expressways
(城市快速路, ``trunk``) included (危险货物道路运输安全管理办法 §46 names 高速公路 only); for
coaches and tourist buses between 22:00 and 06:00 local time 80 % of the day limit
(道路旅客运输及客运站管理规定; with no known day limit there is nothing to take 80 % of).

A vehicle speeds when it goes faster than the limit plus ``tolerance_kmh`` for at least
``tolerance_s``, judged on fixes the matcher is sure of (``confidence`` ≥ ``min_confidence``):
where an elevated road runs over its ground road the limit of a doubtful fix may be the other
road's, so such a fix neither starts an episode nor confirms one that is starting, but it
continues one already confirmed (the speed itself is the terminal's, not in doubt). The episode
ends at the first fix back within the limit once it has stayed there for ``tolerance_s``
(a short dip does not split one violation in two), or, when the vehicle falls silent for
``SILENT_S``, at its last fix over the limit. Severity: Severe from 20 % over the limit (where
the law's heavier penalties begin for these vehicles), else Moderate. The warning is updated at
most once a minute while it lasts, at once when its severity rises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.warning.rules.common import (
    PASSENGER,
    RuleSettings,
    key_of,
    local_seconds,
    vehicle_alarm,
    where,
    who,
)
from services.warning.rules.episodes import Episode, EpisodeBook, episode_id
from shared.events import CapSeverity, MatchedPosition, Warning

RULE = "speeding"
EXPRESSWAY = frozenset({"motorway", "motorway_link"})
"""高速公路 in OSM's tagging of China (trunk is a 城市快速路 or a 国道, not one)."""
DANGEROUS_GOODS_KMH = (80.0, 60.0)
"""Dangerous goods: at most 80 km/h on expressways, 60 km/h on other roads (§46)."""
NIGHT_SHARE = 0.8
NIGHT = (22 * 3600, 6 * 3600)
"""Coaches' night (local seconds of the day): from 22:00 to 06:00."""
SEVERE_RATIO = 1.2
SILENT_S = 120.0
"""No fix for this long: the episode ends at its last fix over the limit."""

_SOURCE_ZH = {"osm": "道路限速", "statutory": "法定限速", "dangerous_goods": "危险货物运输车限速",
              "coach_night": "夜间客车限速（日间限速的80%）"}
_SOURCE_EN = {"osm": "posted limit", "statutory": "statutory limit",
              "dangerous_goods": "dangerous-goods limit",
              "coach_night": "coaches' night limit (80 % of the day limit)"}


def effective_limit(p: MatchedPosition, ts: float) -> tuple[float | None, str]:
    """The limit binding this vehicle at this fix, and where it comes from."""
    limit = p.speed_limit_kmh if p.speed_limit_source != "none" and p.speed_limit_kmh else None
    source = p.speed_limit_source
    if p.vehicle_class == "dangerous_goods":
        dg = DANGEROUS_GOODS_KMH[0 if p.road_class in EXPRESSWAY else 1]
        if limit is None or dg < limit:
            limit, source = dg, "dangerous_goods"
    elif p.vehicle_class in PASSENGER and limit is not None:
        s = local_seconds(ts)
        if s >= NIGHT[0] or s < NIGHT[1]:
            limit, source = round(limit * NIGHT_SHARE, 1), "coach_night"
    return limit, source


@dataclass(slots=True)
class _Track:
    """One vehicle: its last fix, a run over the limit not yet confirmed, a dip under it."""

    last_at: datetime
    over_since: datetime | None = None
    under_since: datetime | None = None
    last_over: datetime | None = None
    max_kmh: float = 0.0
    held: tuple[MatchedPosition, float | None, str] | None = None
    """The latest fix of an open episode not yet written into its warning (with its limit)."""


class SpeedingRule:
    """Speeding episodes by vehicle."""

    rule = RULE

    def __init__(self, settings: RuleSettings | None = None, *,
                 driver_of: dict[str, str] | None = None) -> None:
        s = settings or RuleSettings()
        self.tolerance_kmh = s.speeding_tolerance_kmh
        self.tolerance = timedelta(seconds=s.speeding_tolerance_s)
        self.min_confidence = s.min_confidence
        self.silent = timedelta(seconds=max(SILENT_S, s.speeding_tolerance_s))
        self.drivers = driver_of if driver_of is not None else {}
        self.tracks: dict[str, _Track] = {}
        self.book = EpisodeBook(key_of=key_of)

    def on_matched(self, p: MatchedPosition) -> list[Warning]:
        """Warnings this fix raises, updates or resolves."""
        at = p.observed_at
        t = self.tracks.get(p.vehicle_id)
        if t is None:
            t = self.tracks[p.vehicle_id] = _Track(at)
        elif at <= t.last_at:
            return []  # redelivered or late: nothing new
        out: list[Warning] = []
        ep = self.book.find((p.vehicle_id, RULE))
        if at - t.last_at >= self.silent:
            t.over_since = None  # a run over the limit does not span a silence
            if ep is not None:
                out.append(self._end_silent(ep, t))  # as the tick would have (replicas agree)
                ep = None
        t.last_at = at
        ts = at.timestamp()
        limit, source = effective_limit(p, ts)
        speed = p.speed_kmh
        over = limit is not None and speed is not None and speed > limit + self.tolerance_kmh
        if ep is None:
            if not over:
                t.over_since = None
            elif p.confidence >= self.min_confidence:
                if t.over_since is None:
                    t.over_since = at
                if at - t.over_since >= self.tolerance:
                    assert limit is not None and speed is not None
                    t.under_since, t.last_over, t.max_kmh = None, at, speed
                    out.append(self.book.raise_((p.vehicle_id, RULE),
                                                self._raise(p, t, limit, source), at=at))
            # a doubtful fix over the limit neither confirms a run nor breaks it
            return out
        if over:
            assert speed is not None and limit is not None
            t.under_since, t.last_over = None, at
            t.max_kmh = max(t.max_kmh, speed)
        elif t.under_since is None:
            t.under_since = at
        if t.under_since is not None and at - t.under_since >= self.tolerance:
            t.over_since = None
            out.append(self._end(ep, t, t.under_since, "back_within_limit"))
            return out
        # Only a worse violation goes out at once: limits change from segment to segment, and
        # an update per change would be an update per fix on some roads.
        broken = ep.warning.details.get("limit_kmh")
        news = (ep.warning.severity is not CapSeverity.SEVERE and isinstance(broken, float)
                and t.max_kmh >= broken * SEVERE_RATIO)
        if not news and at - ep.warning.updated_at < self.book.update_every:
            # Held back: the texts are written when an update or the end goes out.
            ep.last_seen = max(ep.last_seen, at)
            t.held = (p, limit, source)
            return out
        t.held = None
        fields = self._fields(p, t, ep.warning.started_at, ep.warning.details, limit, source)
        w = self.book.update(ep, at=at, news=news, **fields)
        if w is not None:
            out.append(w)
        return out

    def expire(self, now: datetime) -> list[Warning]:
        """Episodes of vehicles silent for ``SILENT_S``, ended at their last fix over the limit."""
        out: list[Warning] = []
        for vid in [v for v, t in self.tracks.items()
                    if now - t.last_at >= self.silent and self.book.find((v, RULE)) is None]:
            # Silent and not speeding: forget it (a fresh track at its next fix behaves alike).
            del self.tracks[vid]
        for ep in self.book:
            t = self.tracks.get(ep.key[0])
            last = t.last_at if t is not None else ep.last_seen
            if now - last >= self.silent:
                if t is None:
                    out.append(self.book.resolve(ep, end=ep.last_seen, because="no_reports"))
                else:
                    t.over_since = None
                    out.append(self._end_silent(ep, t))
        return out

    def resume(self, w: Warning) -> None:
        """Go on with an episode a previous run left open."""
        ep = self.book.resume(w)
        if ep is None:
            return
        vid = str(w.details.get("vehicle_id"))
        max_kmh = w.details.get("max_speed_kmh")
        said = float(max_kmh) if isinstance(max_kmh, int | float) else 0.0
        t = self.tracks.get(vid)
        if t is None or t.last_at < w.updated_at:
            self.tracks[vid] = _Track(w.updated_at, last_over=w.updated_at, max_kmh=said)
        else:  # this replica has seen the vehicle since (it follows the active one)
            t.over_since = None
            t.last_over = max(t.last_over or w.updated_at, w.updated_at)
            t.max_kmh = max(t.max_kmh, said)

    def adopt(self, w: Warning) -> None:
        """A department's change of an open episode's warning."""
        self.book.adopt(w)

    # --- warnings ---------------------------------------------------------------------------

    def _end_silent(self, ep: Episode, t: _Track) -> Warning:
        return self._end(ep, t, t.under_since or t.last_over or ep.last_seen, "no_reports")

    def _end(self, ep: Episode, t: _Track, end: datetime, because: str) -> Warning:
        if t.held is not None:  # where it was last seen goes into the last message
            p, at_limit, source = t.held
            t.held = None
            ep.pending.update(self._fields(p, t, ep.warning.started_at, ep.warning.details,
                                           at_limit, source))
        d = ep.warning.details
        over_s = (end - ep.warning.started_at).total_seconds()
        driver = d.get("driver_id")
        zh, en = who(str(d.get("vehicle_id")), str(d.get("vehicle_class")),
                     driver if isinstance(driver, str) else None)
        name = d.get("road_name")
        road_zh, road_en = (name, name) if isinstance(name, str) else ("未命名道路",
                                                                        "an unnamed road")
        limit, src = d.get("limit_kmh"), str(d.get("limit_source", ""))
        return self.book.resolve(
            ep, end=end, because=because,
            description=(f"{zh} 在{road_zh}的超速已结束：限速 {limit:g} km/h"
                         f"（{_SOURCE_ZH.get(src, src)}），最高 {t.max_kmh:.0f} km/h，"
                         f"超速 {over_s:.0f} 秒。"),
            description_en=(f"The {en} is no longer speeding on {road_en}: limit {limit:g} "
                            f"km/h ({_SOURCE_EN.get(src, src)}), at most {t.max_kmh:.0f} km/h, "
                            f"over the limit for {over_s:.0f} s."),
            details={"max_speed_kmh": t.max_kmh, "over_s": over_s})

    def _raise(self, p: MatchedPosition, t: _Track, limit: float, source: str) -> Warning:
        started = t.over_since or p.observed_at
        return vehicle_alarm(warning_id=episode_id("speed", RULE, p.vehicle_id, started),
                             cause=RULE, started_at=started, decided_at=p.observed_at,
                             **self._fields(p, t, started, {}, limit, source))

    def _fields(self, p: MatchedPosition, t: _Track, started: datetime,
                held: Mapping[str, object], limit: float | None,
                source: str) -> dict[str, Any]:
        """Every field of the warning that follows this fix (texts true as of it)."""
        driver = self.drivers.get(p.vehicle_id)
        zh, en = who(p.vehicle_id, p.vehicle_class, driver)
        road_zh = p.road_name or "未命名道路"
        road_en = p.road_name or "an unnamed road"
        # While the vehicle dips within the limit the warning keeps the limit it broke.
        dipping = t.under_since is not None or limit is None
        lim = held.get("limit_kmh", limit) if dipping else limit
        src = str(held.get("limit_source", source)) if dipping else source
        lim_f = float(lim) if isinstance(lim, int | float) else 0.0
        speed = p.speed_kmh or 0.0
        over_s = (p.observed_at - started).total_seconds()
        severity = (CapSeverity.SEVERE if lim_f and t.max_kmh >= lim_f * SEVERE_RATIO
                    else CapSeverity.MODERATE)
        return {
            "severity": severity,
            "headline": f"{zh} 超速：限速 {lim_f:g} km/h，最高 {t.max_kmh:.0f} km/h",
            "headline_en": (f"Speeding: {en}, limit {lim_f:g} km/h, "
                            f"at most {t.max_kmh:.0f} km/h"),
            "description": (f"{zh} 在{road_zh}超速行驶：限速 {lim_f:g} km/h"
                            f"（{_SOURCE_ZH.get(src, src)}），当前 {speed:.0f} km/h，"
                            f"最高 {t.max_kmh:.0f} km/h，已持续 {over_s:.0f} 秒。"),
            "description_en": (f"The {en} is speeding on {road_en}: limit {lim_f:g} km/h "
                               f"({_SOURCE_EN.get(src, src)}), now {speed:.0f} km/h, at most "
                               f"{t.max_kmh:.0f} km/h, for {over_s:.0f} s."),
            "segment_ids": (p.segment_id,),
            "road_names": (p.road_name,) if p.road_name else (),
            "speed_kmh": speed,
            **where(p.vehicle_id, p.lon, p.lat),
            "details": {
                "rule": RULE, "subject": p.vehicle_id, "vehicle_id": p.vehicle_id,
                "vehicle_class": p.vehicle_class, "driver_id": driver,
                "limit_kmh": lim_f, "limit_source": src,
                "tolerance_kmh": self.tolerance_kmh,
                "tolerance_s": self.tolerance.total_seconds(),
                "speed_kmh": speed, "max_speed_kmh": t.max_kmh, "over_s": over_s,
                "road_class": p.road_class, "segment_id": p.segment_id,
                "road_name": p.road_name, "confidence": p.confidence},
        }
