"""Short-term speed forecasts per segment, 15 and 30 minutes ahead, scored as they come true.

**When.** Each segment's first window with a speed at a new ``window_start`` makes one forecast
per horizon (``HORIZONS_S``), for the window starting ``horizon`` later (``valid_at`` = the
window's ``observed_at`` + horizon). A redelivered or older window makes none, so a segment gets
at most one forecast per horizon per window, whatever the bus repeats.

**With a profile** (bigdata's time-of-week speed of the target window's bucket, and of the
current window's): today's deviation from the usual speed, as the ratio r = live / profile now,
is carried to the target and decays toward the profile there:

    forecast = profile(target) × (1 + (r − 1) × ½^(horizon / DEVIATION_HALF_LIFE_S))

with a half-life of 20 minutes: 59 % of today's deviation is kept 15 minutes ahead, 35 % at
30. Why it decays: what makes today unlike the usual day (a queue, an incident, rain) is mostly
cleared within tens of minutes, while the profile already holds what the time of day brings
(the rush hour coming or going); short-term traffic forecasting keeps finding the current
value best a few minutes ahead and the historical profile best from about half an hour to an
hour on. A half-life of 20 minutes puts the crossover (half of each) in that range. The ratio
(rather than a difference in km/h) carries a queue at a third of the usual speed into a bucket
whose usual speed is lower as a third of that, not below zero. ``live`` is a least-squares line
through the last 5 minutes of windows read at the latest one (a single window of a few probe
vehicles is noisy), kept within the values it was fitted to.

**Without a profile**: the recent trend, damped, and pulled toward the segment's recent mean:

    x = live + slope × TREND_REACH_S × (1 − e^(−horizon / TREND_REACH_S))
    forecast = mean + (x − mean) × e^(−horizon / MEAN_REVERSION_S)

The slope (last 10 minutes) reaches at most 5 minutes' worth ahead however far the horizon (a
queue forms or clears in minutes, it does not go on falling for half an hour), and the result
relaxes toward the mean of the last 30 minutes (the best stand-in there is for the usual speed)
with a time constant of an hour. It is bounded by zero and the highest of the segment's free
flow and the speeds seen: no runaway extrapolation.

**Scoring.** When the target window's speed arrives, the forecast and persistence (the speed of
the window it was made at: "the same as now") are both compared with it; per horizon the
mean absolute error (km/h) and the share within 25 % of the truth are kept for each, and the
skill 1 − MAE(forecast)/MAE(persistence). A target window that never comes (no vehicles, or it
was not newer) leaves its forecast ``unverified``. Exported as ``tti_warning_forecast_*``
metrics and ``GET /v1/forecasts/score``.

**Determinism.** Everything is decided from the stream (window times, speeds) and the profiles,
so a standby replica computes the same forecasts under the same event ids
(``forecast:<segment>:<window_start>:<horizon_s>``) and JetStream drops the copies. Profiles are
fetched ahead of need (:class:`ProfileBook`); a replica that could not reach bigdata forecasts
from the trend meanwhile, and the first copy published is the one kept.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Gauge

from services.warning.levels import LEVEL_NAMES, LEVEL_NAMES_EN, level_for_speed
from shared.clients.bigdata import ProfileSnapshot
from shared.clock import Clock
from shared.events import FORECAST, SegmentForecast, SegmentSpeed, Subject

log = logging.getLogger("tti.warning.forecast")

T = TypeVar("T")

HORIZONS_S = (900.0, 1800.0)
"""Forecast horizons: 15 and 30 minutes."""
DEVIATION_HALF_LIFE_S = 1200.0
"""Today's deviation from the profile halves every 20 minutes ahead (see the module text)."""
LEVEL_S = 300.0
"""The current speed: a line through the windows of the last 5 minutes, read at the latest."""
TREND_S = 600.0
"""The slope: least squares over the windows of the last 10 minutes."""
TREND_REACH_S = 300.0
"""A damped trend reaches at most this many seconds' worth of its slope ahead."""
MEAN_S = 1800.0
"""The recent mean (and the history kept) spans the last 30 minutes."""
MEAN_REVERSION_S = 3600.0
"""Without a profile, the forecast relaxes toward the recent mean with this time constant."""
RATIO_BOUNDS = (0.05, 2.0)
"""Live/profile ratios beyond these are a bad profile or a bad window, not today's traffic."""
MIN_PROFILE_KMH = 1.0
"""A profile below this (a road that usually stands) gives no usable ratio."""
WITHIN = 0.25
"""A forecast within 25 % of the truth counts as close."""
METHODS = ("forecast", "persistence")

FORECASTS = Counter("tti_warning_forecasts_total", "Speed forecasts made, by horizon and source",
                    ["horizon", "source"])
SCORED = Counter("tti_warning_forecast_scored_total",
                 "Forecasts compared with the speed that came true, by horizon", ["horizon"])
UNVERIFIED = Counter("tti_warning_forecast_unverified_total",
                     "Forecasts whose target window never came, by horizon", ["horizon"])
ABS_ERROR = Counter("tti_warning_forecast_abs_error_kmh_total",
                    "Sum of absolute errors (km/h) against the speed that came true, by horizon "
                    "and method (forecast, persistence)", ["horizon", "method"])
CLOSE = Counter("tti_warning_forecast_within_25pct_total",
                "Predictions within 25 % of the speed that came true, by horizon and method",
                ["horizon", "method"])
MAE = Gauge("tti_warning_forecast_mae_kmh",
            "Mean absolute error (km/h) since start, by horizon and method", ["horizon", "method"])
CLOSE_SHARE = Gauge("tti_warning_forecast_within_25pct_ratio",
                    "Share of predictions within 25 % of the truth since start, by horizon and "
                    "method", ["horizon", "method"])


class Output(Protocol):
    """Where forecasts go (the service's lease-gated output, as for the engine)."""

    async def publish(self, subject: Subject[T], payload: T, *, event_id: str) -> None:
        """Hand one event over; ``event_id`` is deterministic (JetStream drops repeats)."""


ProfileFetch = Callable[[datetime], Awaitable[ProfileSnapshot]]


class ProfileBook:
    """Profile snapshots, each kept with the span of time it is known to cover, fetched once.

    bigdata answers ``/v1/profiles?at=T`` with the bucket holding T and when it ends
    (``valid_until``), so a snapshot asked for at T covers [T, valid_until): later times in the
    same bucket find it without asking again, and the book needs no copy of bigdata's bucket
    arithmetic. One fetch runs at a time; a caller waits for it at most ``wait_s`` (real
    seconds: it paces bigdata's HTTP, not the traffic), and the fetch, carrying on, fills the
    book for later callers. After a failure nothing is asked for ``retry_s`` (clock seconds).
    """

    def __init__(self, fetch: ProfileFetch, *, clock: Clock, wait_s: float = 2.0,
                 retry_s: float = 30.0, keep: int = 8) -> None:
        self.fetch = fetch
        self.clock = clock
        self.wait_s = wait_s
        self.retry_s = retry_s
        self.keep = keep
        self.fetches = 0
        self._spans: list[tuple[datetime, ProfileSnapshot]] = []
        self._task: asyncio.Task[None] | None = None
        self._retry_at = -math.inf
        self._failing = False

    def add(self, snapshot: ProfileSnapshot, *, at: datetime) -> None:
        """Keep a snapshot known to cover [at, its valid_until)."""
        for i, (start, held) in enumerate(self._spans):
            if held.valid_until == snapshot.valid_until and held.bucket == snapshot.bucket:
                # The same bucket asked for earlier: keep the values first seen, widen the span.
                self._spans[i] = (min(start, at), held)
                return
        self._spans.append((at, snapshot))
        self._spans.sort(key=lambda span: span[1].valid_until)
        del self._spans[:-self.keep]

    def find(self, at: datetime) -> ProfileSnapshot | None:
        """The snapshot covering ``at``, if one is held."""
        for start, snap in self._spans:
            if start <= at < snap.valid_until:
                return snap
        return None

    async def get(self, at: datetime) -> ProfileSnapshot | None:
        """The snapshot covering ``at``, fetched if needed; None when bigdata has not answered."""
        for _ in range(2):  # a fetch for another time may be running: wait for it, then ours
            found = self.find(at)
            if found is not None:
                return found
            if self.clock.monotonic() < self._retry_at:
                return None
            task = self._task
            if task is None or task.done():
                task = self._task = asyncio.get_running_loop().create_task(
                    self._load(at), name="warning-forecast-profiles")
            done, _ = await asyncio.wait({task}, timeout=self.wait_s)
            if not done:
                return None
        return self.find(at)

    async def _load(self, at: datetime) -> None:
        self.fetches += 1
        try:
            snapshot = await self.fetch(at)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._retry_at = self.clock.monotonic() + self.retry_s
            if not self._failing:
                log.warning("forecast profiles not loaded, forecasting from trends: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("forecast profiles load again")
        self._failing = False
        self.add(snapshot, at=at)

    async def close(self) -> None:
        """Cancel a fetch still running."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@dataclass(slots=True)
class Errors:
    """Running absolute errors of one method at one horizon."""

    count: int = 0
    abs_sum_kmh: float = 0.0
    close: int = 0

    def add(self, predicted_kmh: float, truth_kmh: float) -> float:
        """Count one comparison; returns the absolute error."""
        err = abs(predicted_kmh - truth_kmh)
        self.count += 1
        self.abs_sum_kmh += err
        if err <= WITHIN * truth_kmh:
            self.close += 1
        return err

    @property
    def mae_kmh(self) -> float | None:
        """Mean absolute error, km/h (None before the first comparison)."""
        return self.abs_sum_kmh / self.count if self.count else None

    @property
    def within_25pct(self) -> float | None:
        """Share of predictions within 25 % of the truth."""
        return self.close / self.count if self.count else None

    def as_json(self) -> dict[str, Any]:
        """``mae_kmh`` and ``within_25pct``, rounded."""
        mae, share = self.mae_kmh, self.within_25pct
        return {"mae_kmh": None if mae is None else round(mae, 3),
                "within_25pct": None if share is None else round(share, 4)}


@dataclass(slots=True)
class HorizonScore:
    """Forecast and persistence against the truth, at one horizon."""

    horizon_s: float
    forecast: Errors = field(default_factory=Errors)
    persistence: Errors = field(default_factory=Errors)
    unverified: int = 0

    @property
    def skill(self) -> float | None:
        """1 − MAE(forecast) / MAE(persistence): above 0 the forecast is the better."""
        f, p = self.forecast.mae_kmh, self.persistence.mae_kmh
        if f is None or p is None or p == 0:
            return None
        return 1.0 - f / p


@dataclass(frozen=True, slots=True)
class _Pending:
    horizon_s: float
    forecast_kmh: float
    persistence_kmh: float


@dataclass(slots=True)
class _Track:
    last_start: datetime
    history: deque[tuple[float, float]] = field(default_factory=deque)
    """(window start as epoch seconds, speed km/h), oldest first, the last MEAN_S."""
    pending: dict[datetime, list[_Pending]] = field(default_factory=dict)
    """Forecasts waiting for their target window, by the target's window start."""
    latest: tuple[SegmentForecast, ...] = ()


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (value at the last point, slope per second); slope 0 for one time."""
    t_last = points[-1][0]
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0.0:
        return mv, 0.0
    slope = sum((t - mt) * (v - mv) for t, v in points) / var
    return mv + slope * (t_last - mt), slope


def _recent(history: deque[tuple[float, float]], span_s: float) -> list[tuple[float, float]]:
    t_last = history[-1][0]
    return [(t, v) for t, v in history if t > t_last - span_s]


def predict(history: deque[tuple[float, float]], horizon_s: float, *,
            profile_now_kmh: float | None, profile_then_kmh: float | None,
            free_flow_kmh: float | None) -> tuple[float, str]:
    """The speed ``horizon_s`` after the latest window of ``history``, and how it was made.

    ``history`` holds (epoch seconds, km/h) of the segment's recent windows, oldest first.
    """
    near = _recent(history, LEVEL_S)
    level, _ = _line(near)
    lo, hi = min(v for _, v in near), max(v for _, v in near)
    live = min(hi, max(lo, level))
    if profile_then_kmh is not None and profile_then_kmh >= MIN_PROFILE_KMH:
        keep = 0.5 ** (horizon_s / DEVIATION_HALF_LIFE_S)
        if profile_now_kmh is not None and profile_now_kmh >= MIN_PROFILE_KMH:
            ratio = min(RATIO_BOUNDS[1], max(RATIO_BOUNDS[0], live / profile_now_kmh))
            speed = profile_then_kmh * (1.0 + (ratio - 1.0) * keep)
        else:  # no usual speed now to measure today against: decay the difference instead
            speed = profile_then_kmh + (live - profile_then_kmh) * keep
        return max(0.0, speed), "live+profile"
    _, slope = _line(_recent(history, TREND_S))
    mean = sum(v for _, v in history) / len(history)
    reach = TREND_REACH_S * (1.0 - math.exp(-horizon_s / TREND_REACH_S))
    extrapolated = live + slope * reach
    speed = mean + (extrapolated - mean) * math.exp(-horizon_s / MEAN_REVERSION_S)
    ceiling = max(max(v for _, v in history), free_flow_kmh or 0.0)
    return min(ceiling, max(0.0, speed)), "live+trend"


class Forecaster:
    """Forecasts every live segment at each new window and scores what comes true."""

    def __init__(self, *, window_s: float, output: Output, profiles: ProfileBook | None,
                 horizons_s: tuple[float, ...] = HORIZONS_S) -> None:
        self.window_s = window_s
        self.output = output
        self.profiles = profiles
        self.horizons_s = horizons_s
        self.tracks: dict[str, _Track] = {}
        self.scores = {h: HorizonScore(h) for h in horizons_s}
        self.stream_at: datetime | None = None
        self._swept_at: datetime | None = None

    async def on_speed(self, s: SegmentSpeed) -> list[SegmentForecast]:
        """Score what this window makes true, then forecast from it; returns the forecasts."""
        track = self.tracks.get(s.segment_id)
        if track is not None and s.window_start <= track.last_start:
            return []  # redelivered or older: one forecast per segment per window
        if self.stream_at is None or s.window_start > self.stream_at:
            self.stream_at = s.window_start
        if track is None:
            track = self.tracks[s.segment_id] = _Track(last_start=s.window_start)
        track.last_start = s.window_start
        self._score(track, s)
        self._sweep()
        if s.speed_kmh is None:
            return []
        t = s.window_start.timestamp()
        track.history.append((t, s.speed_kmh))
        while track.history[0][0] <= t - MEAN_S:
            track.history.popleft()
        now_profile = await self._profile_kmh(s.segment_id, s.window_start)
        made: list[SegmentForecast] = []
        for h in self.horizons_s:
            target = s.window_start + timedelta(seconds=h)
            speed, source = predict(
                track.history, h, profile_now_kmh=now_profile,
                profile_then_kmh=await self._profile_kmh(s.segment_id, target),
                free_flow_kmh=s.free_flow_kmh)
            speed = round(speed, 1)
            level = level_for_speed(speed, s.road_class)
            f = SegmentForecast(
                segment_id=s.segment_id, made_at=s.observed_at,
                valid_at=s.observed_at + timedelta(seconds=h), horizon_s=h, speed_kmh=speed,
                level=level, level_name=LEVEL_NAMES[level], level_name_en=LEVEL_NAMES_EN[level],
                source=source)
            track.pending.setdefault(target, []).append(_Pending(h, speed, s.speed_kmh))
            FORECASTS.labels(_label(h), source).inc()
            made.append(f)
            await self.output.publish(FORECAST, f, event_id=forecast_event_id(f, s.window_start))
        track.latest = tuple(made)
        return made

    async def _profile_kmh(self, segment_id: str, at: datetime) -> float | None:
        if self.profiles is None:
            return None
        snap = await self.profiles.get(at)
        p = None if snap is None else snap.speeds.get(segment_id)
        return None if p is None else p.speed_kmh

    def _score(self, track: _Track, s: SegmentSpeed) -> None:
        for target in [t for t in track.pending if t <= s.window_start]:
            waiting = track.pending.pop(target)
            if target < s.window_start or s.speed_kmh is None:
                self._unverified(waiting)
                continue
            for p in waiting:
                self._compare(p, s.speed_kmh)

    def _compare(self, p: _Pending, truth_kmh: float) -> None:
        score = self.scores[p.horizon_s]
        h = _label(p.horizon_s)
        SCORED.labels(h).inc()
        for method, errors, predicted in (("forecast", score.forecast, p.forecast_kmh),
                                          ("persistence", score.persistence,
                                           p.persistence_kmh)):
            err = errors.add(predicted, truth_kmh)
            ABS_ERROR.labels(h, method).inc(err)
            if err <= WITHIN * truth_kmh:
                CLOSE.labels(h, method).inc()
            MAE.labels(h, method).set(errors.mae_kmh or 0.0)
            CLOSE_SHARE.labels(h, method).set(errors.within_25pct or 0.0)

    def _unverified(self, waiting: list[_Pending]) -> None:
        for p in waiting:
            self.scores[p.horizon_s].unverified += 1
            UNVERIFIED.labels(_label(p.horizon_s)).inc()

    def _sweep(self) -> None:
        """Forget segments silent for longer than any forecast or history reaches (stream time)."""
        now = self.stream_at
        assert now is not None
        if self._swept_at is not None and now - self._swept_at < timedelta(seconds=MEAN_S):
            return
        self._swept_at = now
        horizon = max(self.horizons_s, default=0.0)
        limit = now - timedelta(seconds=max(horizon, MEAN_S) + self.window_s)
        for sid in [sid for sid, tr in self.tracks.items() if tr.last_start < limit]:
            for waiting in self.tracks.pop(sid).pending.values():
                self._unverified(waiting)

    async def keep_profiles(self, clock: Clock, ready: asyncio.Event | None = None) -> None:
        """Fetch the profiles forecasts will need ahead of need: now, each horizon, one more;
        from when ``ready`` is set (the service reached bigdata: not before it listens)."""
        if self.profiles is None:
            return
        if ready is not None:
            await ready.wait()
        ahead = (0.0, *self.horizons_s, max(self.horizons_s, default=0.0) + 900.0)
        while True:
            now = clock.now()
            for a in ahead:
                await self.profiles.get(now + timedelta(seconds=a))
            await clock.sleep(60.0)

    async def stop(self) -> None:
        """Cancel a profile fetch still running."""
        if self.profiles is not None:
            await self.profiles.close()

    # --- reads -------------------------------------------------------------------------------

    def list_forecasts(self, segment_id: str) -> list[SegmentForecast]:
        """The latest forecast of each horizon for a segment, nearest first (empty if none)."""
        track = self.tracks.get(segment_id)
        return [] if track is None else list(track.latest)

    def score_json(self) -> dict[str, Any]:
        """The running scores per horizon, as ``/v1/forecasts/score`` answers them."""
        horizons = []
        for h, sc in self.scores.items():
            skill = sc.skill
            horizons.append({
                "horizon_s": h, "scored": sc.forecast.count, "unverified": sc.unverified,
                "forecast": sc.forecast.as_json(), "persistence": sc.persistence.as_json(),
                "skill": None if skill is None else round(skill, 4)})
        return {"horizons": horizons, "as_of": self.stream_at, "time_zone": "UTC",
                "segments": len(self.tracks)}


def forecast_event_id(f: SegmentForecast, window_start: datetime) -> str:
    """The deterministic event id of a forecast: segment, the window it was made at, horizon."""
    return f"forecast:{f.segment_id}:{window_start.isoformat()}:{int(f.horizon_s)}"


def _label(horizon_s: float) -> str:
    return str(int(horizon_s))
