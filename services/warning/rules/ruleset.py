"""Every 两客一危 rule behind one door: what the warning service feeds and what comes out.

Inputs, in stream order: matched positions (``tti.position.matched.<p>``: speeding, fatigue,
night driving, geofences), driver identities (``tti.driver.identity.<p>``: fatigue, and the
driver named by the others), terminal alarm bits (``tti.alarm.<p>``), and ticks of the one
clock for what ends by silence or by the passing of time. Out: vehicle-alarm warnings, and for
each alarm a rule has just raised the text its driver gets (`commands_for`).

Time of a tick. Expiry is judged on the stream's time, not the wall clock's: the newest event
time seen, advanced by the clock since that event arrived (never past the clock's now). A
replica catching up on a backlog (after a restart) then ends nothing the stream itself goes on
with, and resolves what it ends at times taken from the events, as a replica that was live all
along did.

Restarts: `resume` and `adopt` route a persisted or department-changed warning to its rule by
``details["rule"]`` (terminal alarms persisted before the rules named themselves carry
``details["alarm"]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from prometheus_client import Counter

from services.warning.rules.common import RuleSettings
from services.warning.rules.driver_texts import alarm_text_command
from services.warning.rules.episodes import EpisodeBook
from services.warning.rules.fatigue import CONTINUOUS, DAILY, FatigueRule
from services.warning.rules.geofences import GeofenceRule
from services.warning.rules.night import NightDrivingRule
from services.warning.rules.speeding import SpeedingRule
from services.warning.rules.terminal_alarms import TerminalAlarmRule
from shared.clients.bigdata import Geofence
from shared.clock import Clock
from shared.events import (
    TWO_PASSENGER_ONE_DANGER,
    DriverIdentity,
    MatchedPosition,
    TerminalAlarm,
    TerminalCommand,
    Warning,
    WarningKind,
)

MONITORED: frozenset[str] = TWO_PASSENGER_ONE_DANGER
"""Vehicle classes the position rules judge (两客一危)."""

REJECTED = Counter("tti_warning_rule_inputs_rejected_total",
                   "Rule inputs that could not be judged, by input and reason",
                   ["input", "reason"])
SKIPPED = Counter("tti_warning_rule_inputs_skipped_total",
                  "Matched positions of classes no rule judges", ["input"])


class _Rule(Protocol):
    book: EpisodeBook

    def expire(self, now: datetime) -> list[Warning]: ...
    def resume(self, w: Warning) -> None: ...
    def adopt(self, w: Warning) -> None: ...


def _position_problem(p: MatchedPosition) -> str | None:
    """Why a matched position cannot be judged (a bounded reason), or None."""
    if p.observed_at.tzinfo is None:
        return "naive_time"
    if not (math.isfinite(p.lon) and math.isfinite(p.lat)
            and -180.0 <= p.lon <= 180.0 and -90.0 <= p.lat <= 90.0):
        return "bad_position"
    if p.speed_kmh is not None and not (math.isfinite(p.speed_kmh) and 0 <= p.speed_kmh < 400):
        return "bad_speed"
    if not (math.isfinite(p.confidence) and 0.0 <= p.confidence <= 1.0):
        return "bad_confidence"
    if p.speed_limit_kmh is not None and not (math.isfinite(p.speed_limit_kmh)
                                              and p.speed_limit_kmh > 0):
        return "bad_limit"
    return None


class RuleSet:
    """The speeding, fatigue, night-driving, geofence and terminal-alarm rules, fed as one."""

    def __init__(self, settings: RuleSettings | None = None, *,
                 clock: Clock | None = None) -> None:
        self.settings = s = settings or RuleSettings()
        self.clock = clock
        self.fatigue = FatigueRule(s)
        # The other rules name the driver the fatigue rule knows to be signed in.
        self.speeding = SpeedingRule(s, driver_of=self.fatigue.drivers)
        self.night = NightDrivingRule(s, driver_of=self.fatigue.drivers)
        self.geofences = GeofenceRule(min_confidence=s.min_confidence)
        self.terminal = TerminalAlarmRule()
        self._rules: dict[str, _Rule] = {
            self.speeding.rule: self.speeding, CONTINUOUS: self.fatigue, DAILY: self.fatigue,
            self.night.rule: self.night, self.geofences.rule: self.geofences,
            self.terminal.rule: self.terminal}
        self._stream_at: datetime | None = None
        self._arrived = 0.0

    # --- inputs -----------------------------------------------------------------------------

    def _seen(self, at: datetime) -> None:
        if self._stream_at is None or at > self._stream_at:
            now = self.clock.now() if self.clock is not None else at
            self._stream_at = min(at, now)  # a terminal's clock ahead of ours moves nothing
        if self.clock is not None:
            self._arrived = self.clock.monotonic()

    def on_matched(self, p: MatchedPosition) -> list[Warning]:
        """Warnings one matched position raises, updates or resolves (every position rule)."""
        problem = _position_problem(p)
        if problem is not None:
            REJECTED.labels("matched_position", problem).inc()
            return []
        self._seen(p.observed_at)
        if p.vehicle_class not in MONITORED:
            SKIPPED.labels("matched_position").inc()
            return []
        return [*self.speeding.on_matched(p), *self.fatigue.on_matched(p),
                *self.night.on_matched(p), *self.geofences.on_matched(p)]

    def on_driver(self, e: DriverIdentity) -> list[Warning]:
        """A driver signing in or out (0x0702)."""
        if e.observed_at.tzinfo is None:
            REJECTED.labels("driver_identity", "naive_time").inc()
            return []
        self._seen(e.observed_at)
        return self.fatigue.on_driver(e)

    def on_alarm(self, a: TerminalAlarm) -> list[Warning]:
        """A terminal's alarm bits."""
        if a.observed_at.tzinfo is None:
            REJECTED.labels("terminal_alarm", "naive_time").inc()
            return []
        self._seen(a.observed_at)
        return self.terminal.on_alarm(a)

    def set_coach_routes(self, routes: Mapping[str, float]) -> None:
        """Coach route lengths in km (the night rule exempts routes under 100 km)."""
        self.settings = replace(self.settings, coach_routes=dict(routes))
        self.night.routes = dict(routes)

    def set_fences(self, fences: Sequence[Geofence]) -> None:
        """The geofences now in force (a reload keeps open episodes going)."""
        self.geofences.set_fences(fences)

    # --- time -------------------------------------------------------------------------------

    def stream_time(self, now: datetime) -> datetime:
        """The time ticks judge silence by: the newest event's, advanced by the clock since."""
        if self._stream_at is None or self.clock is None:
            return now
        since = timedelta(seconds=max(0.0, self.clock.monotonic() - self._arrived))
        return min(now, self._stream_at + since)

    def expire(self, now: datetime) -> list[Warning]:
        """What silence or the passing of time ended, as of the stream's time."""
        at = self.stream_time(now)
        return [*self.speeding.expire(at), *self.fatigue.expire(at), *self.night.expire(at),
                *self.geofences.expire(at), *self.terminal.expire(at)]

    # --- restarts and departments -----------------------------------------------------------

    def rule_of(self, w: Warning) -> _Rule | None:
        """The rule a vehicle alarm belongs to, or None (raised by hand, say)."""
        if w.kind is not WarningKind.VEHICLE_ALARM:
            return None
        rule = w.details.get("rule")
        if isinstance(rule, str) and rule in self._rules:
            return self._rules[rule]
        return self.terminal if w.details.get("alarm") else None

    def resume(self, w: Warning) -> None:
        """An active warning a previous run persisted: its rule goes on with the episode."""
        rule = self.rule_of(w)
        if rule is not None and w.active:
            rule.resume(w)

    def adopt(self, w: Warning) -> None:
        """A department's change of a rule's warning (ack, assign, close, cancel)."""
        rule = self.rule_of(w)
        if rule is not None:
            rule.adopt(w)

    def follow(self, w: Warning) -> str | None:
        """A newer version the active replica published (a standby following it): the
        episode goes on as that version. Returns the id of an episode of this replica's own
        it replaced (the same vehicle and rule under another id: this replica saw the episode
        begin later, after a restart), which the caller drops."""
        rule = self.rule_of(w)
        if rule is None:
            return None
        ep = rule.book.find(rule.book.key_of(w))
        if ep is not None and ep.warning.warning_id == w.warning_id:
            rule.adopt(w)  # the same episode: its state goes on, the warning is theirs
            return None
        if not w.active:
            return None  # theirs ended; one of ours (if any) is not that one
        rule.resume(w)
        return ep.warning.warning_id if ep is not None else None

    def commands_for(self, w: Warning) -> list[TerminalCommand]:
        """The text for the driver when ``w`` is an alarm a rule has just raised."""
        if self.rule_of(w) in (None, self.terminal):
            return []
        cmd = alarm_text_command(w, ttl_s=self.settings.driver_text_ttl_s)
        return [] if cmd is None else [cmd]
