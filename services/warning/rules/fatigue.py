"""Fatigue driving: continuous driving without a 20-minute rest, and driving time in 24 hours.

Limits (道路运输车辆动态监督管理办法, GB/T 19056's 连续驾驶): more than 4 h of continuous driving
by day, or 2 h at night (22:00-06:00 local), without a rest of at least 20 min; more than 8 h of
driving in any 24 h. The limit is the one of the hour the driver is driving in: at 22:30 a drive
begun at 20:00 is over the night limit (as monitoring platforms apply 夜间连续驾驶超过2小时).

Time is accounted between consecutive fixes of the subject. The interval is *rest* when the
ignition was off at its start (status bit 0 clear on a vehicle not moving: terminals report when
the ignition comes on; a moving vehicle is driven whatever its wiring says) or the driver had
signed out, or when the vehicle was stopped (≤ ``STOPPED_KMH``) at both ends and the terminal
kept reporting (gap ≤ ``REPORT_GAP_S``); anything else is *driving* — a terminal that falls
silent with the ignition on is not resting, its silence counts as driving and its episodes stay
open. Rest shorter than 20 min neither counts as driving nor breaks the drive. A gap of
``FORGET_AFTER_S`` forgets the subject (nothing can be said of the time before) and ends its
episodes at its last fix (``no_reports``).

Subject: the driver when the terminal reported one (0x0702 ``card_in``: the driver's time follows
them from vehicle to vehicle), else the vehicle. A driver signing in on a vehicle that has been
driven without a card takes its time over, open alarms included (the same alarm goes on, now
naming the driver), unless they have their own unrested drive (from another vehicle: then the
vehicle's alarms end, ``driver_signed_in``); signing out starts the driver's rest.

An episode starts at the fix that passes a limit and ends where the 20-minute rest that ends
it began (``rested``); the 24-hour one also when old driving leaves the 24 hours
(``within_daily_limit``). Ids, texts and end times come from the events, so replicas agree.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.warning.rules.common import (
    DAY_S,
    MOVING_KMH,
    RuleSettings,
    duration_en,
    duration_zh,
    key_of,
    local_day_start,
    local_seconds,
    overlap,
    utc,
    vehicle_alarm,
    where,
    who,
)
from services.warning.rules.episodes import EpisodeBook, episode_id
from shared.events import CapSeverity, DriverIdentity, MatchedPosition, Warning

CONTINUOUS, DAILY = "fatigue_continuous", "fatigue_daily"
DAY_LIMIT_S = 4 * 3600.0
NIGHT_LIMIT_S = 2 * 3600.0
DAILY_LIMIT_S = 8 * 3600.0
REST_S = 20 * 60.0
STOPPED_KMH = 1.0
"""At or below this reported speed the vehicle stands (terminals report 0 when stopped)."""
REPORT_GAP_S = 300.0
"""A terminal reports at least this often while the ignition is on; a longer gap is silence."""
FORGET_AFTER_S = 8 * 3600.0
SILENT_S = FORGET_AFTER_S
"""Silence is driving, not rest: an episode outlives it until the subject is forgotten."""
NIGHT_FROM_S, NIGHT_TO_S = 22 * 3600.0, 6 * 3600.0


def is_night(ts: float) -> bool:
    """Whether an epoch timestamp falls between 22:00 and 06:00 local."""
    s = local_seconds(ts)
    return s >= NIGHT_FROM_S or s < NIGHT_TO_S


def night_seconds(a: float, b: float) -> float:
    """Seconds of [a, b] (epoch) between 22:00 and 06:00 local."""
    sa, span = local_seconds(a), b - a
    # One report interval lies within one part of the day (the common case):
    if sa >= NIGHT_TO_S and sa + span <= NIGHT_FROM_S:
        return 0.0  # all by day
    if sa + span <= NIGHT_TO_S or (sa >= NIGHT_FROM_S and sa + span <= DAY_S):
        return span  # all at night
    total = 0.0
    d = local_day_start(a)
    while d < b:
        total += overlap(a, b, d, d + NIGHT_TO_S) + overlap(a, b, d + NIGHT_FROM_S, d + DAY_S)
        d += DAY_S
    return total


@dataclass(slots=True)
class _Drive:
    """One subject's driving: the current drive since the last rest, and the last 24 hours."""

    subject: str
    vehicle_id: str
    vehicle_class: str = "other"
    driver_id: str | None = None
    last_ts: float | None = None
    last_stopped: bool = True
    last_off: bool = False
    """The ignition was off (or the driver signed out) at the last fix: rest until the next."""
    rest_from: float | None = None
    drive_s: float = 0.0
    night_s: float = 0.0
    runs: deque[list[float]] = field(default_factory=deque)
    """Driving runs [start, end] (epoch) of the last 24 h; ``run_s`` their total."""
    run_s: float = 0.0
    lon: float = 0.0
    lat: float = 0.0

    def day_s(self, ts: float) -> float:
        """Driving time in the 24 hours up to ``ts``."""
        horizon = ts - DAY_S
        runs = self.runs
        while runs and runs[0][1] <= horizon:
            a, b = runs.popleft()
            self.run_s -= b - a
        if not runs:
            self.run_s = 0.0
            return 0.0
        return self.run_s - max(0.0, horizon - runs[0][0])

    def drive(self, a: float, b: float) -> None:
        self.drive_s += b - a
        self.night_s += night_seconds(a, b)
        if self.runs and self.runs[-1][1] == a:
            self.runs[-1][1] = b
        else:
            self.runs.append([a, b])
        self.run_s += b - a

    def rested(self) -> None:
        self.drive_s = self.night_s = 0.0


@dataclass(slots=True)
class _Vehicle:
    last_at: datetime | None = None
    identity_at: datetime | None = None
    driver_id: str | None = None


class FatigueRule:
    """Fatigue episodes by driver (when known) or vehicle."""

    rules = (CONTINUOUS, DAILY)

    def __init__(self, settings: RuleSettings | None = None) -> None:
        del settings  # the limits are the law's, not tunables
        self.vehicles: dict[str, _Vehicle] = {}
        self.drives: dict[str, _Drive] = {}
        self.drivers: dict[str, str] = {}
        """Vehicle → the driver signed in on it (the other rules name the driver too)."""
        self._driving: dict[str, str] = {}
        """Driver → the vehicle they are signed in on (one at a time)."""
        self.book = EpisodeBook(key_of=key_of)

    # --- inputs -----------------------------------------------------------------------------

    def on_matched(self, p: MatchedPosition) -> list[Warning]:
        """Account the time since the subject's last fix; warnings raised, updated or ended."""
        v = self.vehicles.get(p.vehicle_id)
        if v is None:
            v = self.vehicles[p.vehicle_id] = _Vehicle()
        elif v.last_at is not None and p.observed_at <= v.last_at:
            return []  # redelivered or late
        v.last_at = p.observed_at
        subject = f"driver:{v.driver_id}" if v.driver_id else p.vehicle_id
        d = self.drives.get(subject)
        if d is None:
            d = self.drives[subject] = _Drive(subject, p.vehicle_id, driver_id=v.driver_id)
        d.vehicle_id, d.vehicle_class, d.lon, d.lat = (p.vehicle_id, p.vehicle_class,
                                                       p.lon, p.lat)
        ts = p.observed_at.timestamp()
        stopped = p.speed_kmh is not None and p.speed_kmh <= STOPPED_KMH
        off = not p.status & 1 and not (p.speed_kmh is not None and p.speed_kmh > MOVING_KMH)
        out: list[Warning] = []
        last = d.last_ts
        d.last_ts = ts
        if last is None or ts <= last:
            d.last_stopped, d.last_off = stopped or off, off
            if d.last_stopped and d.rest_from is None:
                d.rest_from = ts
            return out
        gap = ts - last
        if gap >= SILENT_S and not d.last_off:
            out += self._end_all(d, last, "no_reports")  # as the tick would have
        if gap >= FORGET_AFTER_S and not d.last_off:
            d.rested()
            d.runs.clear()
            d.run_s = 0.0
            d.rest_from = None
        elif d.last_off or (d.last_stopped and (stopped or off) and gap <= REPORT_GAP_S):
            if d.rest_from is None:
                d.rest_from = last
            out += self._rest(d, ts)
        else:
            d.rest_from = None
            d.drive(last, ts)
            out += self._check(d, p.observed_at)
        d.last_stopped, d.last_off = stopped or off, off
        if d.last_stopped and d.rest_from is None:
            d.rest_from = ts
        return out

    def on_driver(self, e: DriverIdentity) -> list[Warning]:
        """A driver signing in or out: whose time the vehicle's fixes count from now on."""
        v = self.vehicles.get(e.vehicle_id)
        if v is None:
            v = self.vehicles[e.vehicle_id] = _Vehicle()
        elif v.identity_at is not None and e.observed_at <= v.identity_at:
            return []  # redelivered or late
        v.identity_at = e.observed_at
        ts = e.observed_at.timestamp()
        out: list[Warning] = []
        if e.state == "card_out":
            if v.driver_id is not None and e.driver_id in (None, v.driver_id):
                out += self._sign_out(v, e.vehicle_id, ts)
            return out
        if e.state != "card_in" or not e.driver_id:
            return out
        if v.driver_id == e.driver_id:
            return out  # signed in already
        if v.driver_id is not None:
            out += self._sign_out(v, e.vehicle_id, ts)
        elsewhere = self._driving.get(e.driver_id)
        if elsewhere is not None and elsewhere != e.vehicle_id:
            out += self._sign_out(self.vehicles[elsewhere], elsewhere, ts)
        subject = f"driver:{e.driver_id}"
        mine = self.drives.get(subject)
        anonymous = self.drives.pop(e.vehicle_id, None)
        if mine is not None and mine.rest_from is not None and mine.last_ts is not None:
            mine.last_ts = max(mine.last_ts, ts)
            out += self._rest(mine, ts)
        if anonymous is not None:
            # The vehicle's time without a card: most likely this driver's, unless they come
            # from an unrested drive of their own on another vehicle.
            if mine is None or mine.drive_s == 0.0:
                if mine is not None:
                    anonymous.runs = deque(sorted([*mine.runs, *anonymous.runs]))
                    anonymous.run_s += mine.run_s
                out += self._rekey(anonymous, subject, e.driver_id, e.observed_at)
                mine = anonymous
            else:
                out += self._end_all(anonymous, ts, "driver_signed_in")
        if mine is None:
            mine = _Drive(subject, e.vehicle_id, last_ts=ts, rest_from=ts)
        mine.driver_id = e.driver_id
        mine.vehicle_id = e.vehicle_id
        mine.last_off = False
        self.drives[subject] = mine
        v.driver_id = e.driver_id
        self.drivers[e.vehicle_id] = e.driver_id
        self._driving[e.driver_id] = e.vehicle_id
        return out

    def expire(self, now: datetime) -> list[Warning]:
        """Open episodes whose subject rested 20 min with the ignition off, or fell silent."""
        out: list[Warning] = []
        ts = now.timestamp()
        subjects = {ep.key[0] for ep in self.book}
        for subject in [k for k, d in self.drives.items() if k not in subjects
                        and (d.last_ts is None or ts - d.last_ts >= DAY_S)]:
            # A day without a fix: nothing of its time is left to count (a fresh drive at its
            # next fix accounts alike).
            del self.drives[subject]
        for vid in [k for k, v in self.vehicles.items() if v.driver_id is None
                    and (v.last_at is None or ts - v.last_at.timestamp() >= DAY_S)]:
            del self.vehicles[vid]
        for subject in sorted(subjects):
            d = self.drives.get(subject)
            if d is None or d.last_ts is None:
                for ep in self.book:
                    if ep.key[0] == subject:
                        out.append(self.book.resolve(ep, end=ep.last_seen,
                                                     because="no_reports"))
                continue
            if d.last_off:
                out += self._rest(d, ts)  # an ignition-off rest goes on without reports
            elif ts - d.last_ts >= SILENT_S:
                out += self._end_all(d, d.last_ts, "no_reports")
        return out

    def resume(self, w: Warning) -> None:
        """Go on with an episode a previous run left open, its times taken from the warning."""
        ep = self.book.resume(w)
        if ep is None:
            return
        det = w.details
        subject = str(det.get("subject"))
        d = self.drives.get(subject)
        if d is None:
            driver = det.get("driver_id")
            d = self.drives[subject] = _Drive(subject, str(det.get("vehicle_id")),
                                              driver_id=driver if isinstance(driver, str)
                                              else None)
        ts = w.updated_at.timestamp()
        d.last_ts = max(d.last_ts or ts, ts)
        d.last_stopped = False
        drive_s, night_s, day_s = (det.get("driving_s"), det.get("night_s"),
                                   det.get("day_driving_s"))
        if isinstance(drive_s, int | float):
            d.drive_s = max(d.drive_s, float(drive_s))
        if isinstance(night_s, int | float):
            d.night_s = max(d.night_s, float(night_s))
        if isinstance(day_s, int | float) and not d.runs:
            d.runs.append([ts - float(day_s), ts])  # one run: what the warning says of the day
            d.run_s = float(day_s)
        if d.driver_id:
            self.vehicles.setdefault(d.vehicle_id, _Vehicle()).driver_id = d.driver_id
            self.drivers[d.vehicle_id] = d.driver_id
            self._driving[d.driver_id] = d.vehicle_id

    def adopt(self, w: Warning) -> None:
        """A department's change of an open episode's warning."""
        self.book.adopt(w)

    # --- accounting -------------------------------------------------------------------------

    def _sign_out(self, v: _Vehicle, vehicle_id: str, ts: float) -> list[Warning]:
        driver = v.driver_id
        v.driver_id = None
        self.drivers.pop(vehicle_id, None)
        if driver is None:
            return []
        self._driving.pop(driver, None)
        d = self.drives.get(f"driver:{driver}")
        if d is None:
            return []
        if d.last_ts is None or ts > d.last_ts:
            d.last_ts = ts
        if d.rest_from is None:
            d.rest_from = ts
        d.last_off = d.last_stopped = True  # off the wheel: the time until sign-in is rest
        return []

    def _rest(self, d: _Drive, ts: float) -> list[Warning]:
        if d.rest_from is None or ts - d.rest_from < REST_S:
            return []
        out = self._end_all(d, d.rest_from, "rested")
        d.rested()
        return out

    def _end_all(self, d: _Drive, end_ts: float, because: str) -> list[Warning]:
        out: list[Warning] = []
        for rule in (CONTINUOUS, DAILY):
            ep = self.book.find((d.subject, rule))
            if ep is None:
                continue
            end = utc(end_ts)
            zh, en = who(d.vehicle_id, d.vehicle_class, d.driver_id)
            what_zh, what_en = _ENDED[because]
            out.append(self.book.resolve(
                ep, end=end, because=because,
                description=f"{zh}：{what_zh}。{ep.warning.description}",
                description_en=f"{en}: {what_en}. {ep.warning.description_en}"))
        return out

    def _rekey(self, d: _Drive, subject: str, driver_id: str, at: datetime) -> list[Warning]:
        """The vehicle's drive becomes the driver's: its open alarms go on, naming them."""
        old = d.subject
        d.subject, d.driver_id = subject, driver_id
        out: list[Warning] = []
        for rule in (CONTINUOUS, DAILY):
            ep = self.book.open.pop((old, rule), None)
            if ep is None:
                continue
            ep.key = (subject, rule)
            self.book.open[ep.key] = ep
            held = ep.warning.details.get("limit_s")
            limit_s = float(held) if isinstance(held, int | float) else DAY_LIMIT_S
            w = self.book.update(ep, at=at, news=True,
                                 **self._fields(d, rule, limit_s, d.day_s(at.timestamp())))
            if w is not None:
                out.append(w)
        return out

    def _check(self, d: _Drive, at: datetime) -> list[Warning]:
        open_ = self.book.open
        if (d.drive_s <= NIGHT_LIMIT_S and d.run_s <= DAILY_LIMIT_S
                and (d.subject, CONTINUOUS) not in open_ and (d.subject, DAILY) not in open_):
            return []  # under every limit (run_s bounds the 24 h total) and nothing open
        ts = at.timestamp()
        out: list[Warning] = []
        day_s = d.day_s(ts)
        continuous_s = NIGHT_LIMIT_S if is_night(ts) else DAY_LIMIT_S
        for rule, over, limit_s in (
                (CONTINUOUS, d.drive_s > continuous_s, continuous_s),
                (DAILY, day_s > DAILY_LIMIT_S, DAILY_LIMIT_S)):
            key = (d.subject, rule)
            ep = self.book.find(key)
            if ep is None and not over:
                continue
            if ep is not None and rule == DAILY and not over:
                # Older driving left the 24 hours: within the allowance again.
                zh, en = who(d.vehicle_id, d.vehicle_class, d.driver_id)
                out.append(self.book.resolve(
                    ep, end=at, because="within_daily_limit",
                    description=f"{zh}：24小时内累计驾驶 {duration_zh(day_s)}，已回到8小时以内。",
                    description_en=(f"{en}: {duration_en(day_s)} of driving in the last 24 h, "
                                    f"within 8 h again.")))
                continue
            if ep is None:
                out.append(self.book.raise_(key, vehicle_alarm(
                    warning_id=episode_id("fatigue", rule, d.subject, at), cause=rule,
                    started_at=at, **self._fields(d, rule, limit_s, day_s)), at=at))
                continue
            held = ep.warning.details.get("limit_s")
            if rule == CONTINUOUS and isinstance(held, int | float):
                limit_s = min(limit_s, float(held))  # once over the night limit, it stays so
            w = self.book.update(ep, at=at, news=held != limit_s,
                                 **self._fields(d, rule, limit_s, day_s))
            if w is not None:
                out.append(w)
        return out

    @staticmethod
    def _fields(d: _Drive, rule: str, limit_s: float, day_s: float) -> dict[str, Any]:
        zh, en = who(d.vehicle_id, d.vehicle_class, d.driver_id)
        if rule == CONTINUOUS:
            night = limit_s == NIGHT_LIMIT_S
            lim_zh = "夜间连续驾驶不得超过2小时" if night else "连续驾驶不得超过4小时"
            lim_en = ("at most 2 h at night" if night else "at most 4 h") + \
                " without a 20-min rest"
            headline = f"{zh} 疲劳驾驶：连续驾驶 {duration_zh(d.drive_s)}"
            headline_en = f"Fatigue driving: {en}, {duration_en(d.drive_s)} without a rest"
            description = (f"{zh} 连续驾驶 {duration_zh(d.drive_s)}（其中夜间 "
                           f"{duration_zh(d.night_s)}）未休息20分钟以上，{lim_zh}。")
            description_en = (f"The {en} has driven {duration_en(d.drive_s)} (of which "
                              f"{duration_en(d.night_s)} at night) without a rest of 20 min; "
                              f"the limit is {lim_en}.")
        else:
            headline = f"{zh} 疲劳驾驶：24小时内累计驾驶 {duration_zh(day_s)}"
            headline_en = f"Fatigue driving: {en}, {duration_en(day_s)} in 24 h"
            description = f"{zh} 24小时内累计驾驶 {duration_zh(day_s)}，不得超过8小时。"
            description_en = (f"The {en} has driven {duration_en(day_s)} in the last 24 hours; "
                              f"the limit is 8 h.")
        return {
            "severity": CapSeverity.MODERATE, "headline": headline,
            "headline_en": headline_en, "description": description,
            "description_en": description_en, **where(d.vehicle_id, d.lon, d.lat),
            "details": {"rule": rule, "subject": d.subject, "vehicle_id": d.vehicle_id,
                        "vehicle_class": d.vehicle_class, "driver_id": d.driver_id,
                        "limit_s": limit_s, "driving_s": round(d.drive_s, 1),
                        "night_s": round(d.night_s, 1), "day_driving_s": round(day_s, 1)}}


_ENDED = {"rested": ("已停车休息20分钟以上", "rested for at least 20 min"),
          "no_reports": ("终端长时间未上报，无法继续判断",
                         "the terminal has not reported for hours; nothing more can be said"),
          "driver_signed_in": ("驾驶员已插卡签到，此后按驾驶员计时",
                               "a driver signed in; their time is counted from now on")}
"""Why an episode ended, in words (prefixed to the last description)."""
