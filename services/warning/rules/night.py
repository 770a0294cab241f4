"""Long-distance coaches on the road between 02:00 and 05:00 local time.

Long-distance coaches stop from 02:00 to 05:00 or hand over to a relay (接驳运输); routes under
100 km are exempt. Only ``coach`` counts: a tourist bus (``tourist_bus``) runs a charter, not a
scheduled long-distance route, and has no route whose length could exempt it. A route's length
comes from ``RuleSettings.coach_routes`` (``TTI_COACH_ROUTES``, a CSV of route_id,length_km):
nothing else knows route lengths yet, and a coach whose route is unknown is not exempt.

A fix counts when the coach is moving (> 5 km/h) with 02:00 ≤ local time < 05:00. Once it has
kept moving for ``CONFIRM_S`` (a coach pulling into its stop at 02:00:10 is not on the road),
the episode is raised; it starts at the first such fix and ends where the coach stopped, once
it has stood for ``STOP_S`` (a red light does not end it), at 05:00 if it was still moving
then, or at its last moving fix when it falls silent for ``SILENT_S``. The warning is updated
at most once a minute while it goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.warning.rules.common import (
    MOVING_KMH,
    RuleSettings,
    duration_en,
    duration_zh,
    key_of,
    local_day_start,
    local_seconds,
    utc,
    vehicle_alarm,
    where,
    who,
)
from services.warning.rules.episodes import Episode, EpisodeBook, episode_id
from shared.events import CapSeverity, MatchedPosition, Warning

RULE = "night_driving"
FROM_S, TO_S = 2 * 3600.0, 5 * 3600.0
EXEMPT_UNDER_KM = 100.0
STOP_S = 600.0
SILENT_S = 600.0
CONFIRM_S = 60.0


@dataclass(slots=True)
class _Coach:
    last_at: datetime
    last_moving: datetime | None = None
    stopped_at: datetime | None = None
    moving_since: datetime | None = None
    """First fix of a run moving in the hours, not yet confirmed."""


class NightDrivingRule:
    """Night-driving episodes by coach."""

    rule = RULE

    def __init__(self, settings: RuleSettings | None = None, *,
                 driver_of: dict[str, str] | None = None) -> None:
        s = settings or RuleSettings()
        self.routes = dict(s.coach_routes)
        self.drivers = driver_of if driver_of is not None else {}
        self.coaches: dict[str, _Coach] = {}
        self.book = EpisodeBook(key_of=key_of)
        self.silent = timedelta(seconds=SILENT_S)
        self.stop = timedelta(seconds=STOP_S)
        self.confirm = timedelta(seconds=CONFIRM_S)

    def exempt(self, route_id: str | None) -> bool:
        """Whether a route is known to be shorter than 100 km."""
        length = self.routes.get(route_id) if route_id else None
        return length is not None and length < EXEMPT_UNDER_KM

    def on_matched(self, p: MatchedPosition) -> list[Warning]:
        """Warnings this fix raises, updates or resolves."""
        if p.vehicle_class != "coach":
            return []
        at = p.observed_at
        c = self.coaches.get(p.vehicle_id)
        if c is None:
            c = self.coaches[p.vehicle_id] = _Coach(at)
        elif at <= c.last_at:
            return []  # redelivered or late
        out: list[Warning] = []
        ep = self.book.find((p.vehicle_id, RULE))
        if at - c.last_at >= self.silent:
            c.moving_since = None  # a run does not span a silence
            if ep is not None:
                out.append(self._end(ep, c, "no_reports"))  # as the tick would have
                ep = None
        c.last_at = at
        ts = at.timestamp()
        in_hours = FROM_S <= local_seconds(ts) < TO_S
        moving = p.speed_kmh is not None and p.speed_kmh > MOVING_KMH
        violating = in_hours and moving and not self.exempt(p.route_id)
        if ep is None:
            if not violating:
                c.moving_since = None
                return out
            if c.moving_since is None:
                c.moving_since = at
            if at - c.moving_since >= self.confirm:
                start, c.moving_since = c.moving_since, None
                c.last_moving, c.stopped_at = at, None
                out.append(self.book.raise_((p.vehicle_id, RULE), vehicle_alarm(
                    warning_id=episode_id("night", RULE, p.vehicle_id, start), cause=RULE,
                    started_at=start, decided_at=at, **self._fields(p, start, at)), at=at))
            return out
        if violating:
            c.last_moving, c.stopped_at = at, None
        elif not in_hours:
            out.append(self._end(ep, c, "hours_over"))
            return out
        elif c.stopped_at is None:
            c.stopped_at = at
        if c.stopped_at is not None and at - c.stopped_at >= self.stop:
            out.append(self._end(ep, c, "stopped"))
            return out
        w = self.book.update(ep, at=at, **self._fields(p, ep.warning.started_at, at))
        if w is not None:
            out.append(w)
        return out

    def expire(self, now: datetime) -> list[Warning]:
        """Episodes of coaches silent for ``SILENT_S``."""
        out: list[Warning] = []
        for vid in [v for v, c in self.coaches.items()
                    if now - c.last_at >= self.silent and self.book.find((v, RULE)) is None]:
            del self.coaches[vid]  # a fresh record at its next fix behaves alike
        for ep in self.book:
            c = self.coaches.get(ep.key[0])
            if c is None:
                out.append(self.book.resolve(ep, end=ep.last_seen, because="no_reports"))
            elif now - c.last_at >= self.silent:
                out.append(self._end(ep, c, "no_reports"))
        return out

    def resume(self, w: Warning) -> None:
        """Go on with an episode a previous run left open."""
        if self.book.resume(w) is not None:
            vid = str(w.details.get("vehicle_id"))
            c = self.coaches.get(vid)
            if c is None or c.last_at < w.updated_at:
                self.coaches[vid] = _Coach(w.updated_at, last_moving=w.updated_at)
            else:  # this replica has seen the coach since (it follows the active one)
                c.moving_since = None
                c.last_moving = max(c.last_moving or w.updated_at, w.updated_at)

    def adopt(self, w: Warning) -> None:
        """A department's change of an open episode's warning."""
        self.book.adopt(w)

    def _end(self, ep: Episode, c: _Coach, because: str) -> Warning:
        last = c.last_moving or ep.last_seen
        five = utc(local_day_start(last.timestamp()) + TO_S)
        end = c.stopped_at if c.stopped_at is not None else min(last if because == "no_reports"
                                                                else five, five)
        d = ep.warning.details
        driver = d.get("driver_id")
        zh, en = who(str(d.get("vehicle_id")), "coach", driver if isinstance(driver, str)
                     else None)
        span = (end - ep.warning.started_at).total_seconds()
        why_zh, why_en = _ENDED[because]
        return self.book.resolve(
            ep, end=end, because=because,
            description=f"{zh} 凌晨2时至5时行驶 {duration_zh(span)}，{why_zh}。",
            description_en=(f"The {en} drove {duration_en(span)} between 02:00 and 05:00; "
                            f"{why_en}."),
            details={"driving_s": span})

    def _fields(self, p: MatchedPosition, started: datetime,
                at: datetime) -> dict[str, Any]:
        driver = self.drivers.get(p.vehicle_id)
        zh, en = who(p.vehicle_id, p.vehicle_class, driver)
        length = self.routes.get(p.route_id) if p.route_id else None
        route_zh = f"线路 {p.route_id}" if p.route_id else "线路不明"
        route_en = f"route {p.route_id}" if p.route_id else "route unknown"
        if length is not None:
            route_zh += f"，{length:g} 公里"
            route_en += f", {length:g} km"
        span = (at - started).total_seconds()
        return {
            "severity": CapSeverity.MODERATE,
            "headline": f"{zh} 凌晨2时至5时违规行驶",
            "headline_en": f"Coach on the road between 02:00 and 05:00: {en}",
            "description": (f"{zh}（{route_zh}）在凌晨2时至5时行驶，已持续 "
                            f"{duration_zh(span)}，当前 {p.speed_kmh or 0:.0f} km/h。长途客运"
                            f"车辆应在此时段停止运行或接驳运输。"),
            "description_en": (f"The {en} ({route_en}) has been driving between 02:00 and "
                               f"05:00 for {duration_en(span)}, now at "
                               f"{p.speed_kmh or 0:.0f} km/h; long-distance coaches stop or "
                               f"hand over to a relay in these hours."),
            "speed_kmh": p.speed_kmh,
            "road_names": (p.road_name,) if p.road_name else (),
            **where(p.vehicle_id, p.lon, p.lat),
            "details": {"rule": RULE, "subject": p.vehicle_id, "vehicle_id": p.vehicle_id,
                        "vehicle_class": p.vehicle_class, "driver_id": driver,
                        "route_id": p.route_id, "route_length_km": length,
                        "limit": "02:00-05:00 local", "speed_kmh": p.speed_kmh,
                        "driving_s": span},
        }


_ENDED = {"stopped": ("已停车", "it has stopped"),
          "hours_over": ("已过5时", "05:00 has passed"),
          "no_reports": ("终端已停止上报", "its terminal stopped reporting")}
"""Why an episode ended, in words."""
