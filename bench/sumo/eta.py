"""Bus ETAs scored against when SUMO's buses really reached their stops.

The truth is SUMO's stop output: the second each bus halted at each busStop of its trip
(``buses.py``); SUMO second ``t`` is clock time ``t0 + t``. TTI's predictions are what it
published on ``tti.bus.prediction`` (the harness's tap), each from the clock time it arrived on
the bus — when a rider could first have seen it — for a trip instance (``trip_id``,
``start_date``) and stop (``stop_sequence``).

Scoring is the ETA Accuracy Benchmark exactly as TTI measures itself
(``services/bigdata/transit/accuracy.py``, the one implementation): at each true arrival the
prediction shown for that trip and stop is sampled every 30 s before it (15 s … 885 s ahead: the
newest one published by then, if still fresh), filed by time to the true arrival into the
buckets 0-3, 3-6, 6-10, 10-15 min, and accurate when ``actual − predicted`` is inside the
bucket's window; the timetable's arrival is scored at the same instants (the baseline). Only
arrivals within the replayed span (where the bus was still reporting) at stops after the first
count. Coverage: of the sample instants after the bus's first report, the share that had a
fresh live prediction (a bus TTI tracked as another trip, or did not track, has none for its
own trip).

Also: which trip TTI tracked each bus as (its stop events), and how well it timed the arrivals
it detected (``tti.bus.arrival``) against SUMO's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.sumo.buses import BusTrip
from bench.sumo.host import Tap
from services.bigdata.transit.accuracy import BUCKETS, Accuracy

__all__ = ["BusScore", "format_buses", "score_buses"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BusScore:
    """The bus section of the table (times in seconds)."""

    timetable_trips: int
    simulated_trips: int
    replayed_buses: int
    arrivals: int
    """True arrivals scored: stops after the first, reached within the replayed span."""
    arrivals_with_samples: int
    instants: int
    samples: int
    live: dict[str, Any]
    schedule: dict[str, Any]
    predictions: int
    tracked_right: int
    tracked_other: int
    untracked: int
    detected: int
    detection_median_abs_s: float | None
    detection_mean_s: float | None
    notes: list[str] = field(default_factory=list)
    details: list[dict[str, object]] = field(default_factory=list)
    """Per scored arrival (seconds from t0): when the bus halted, the timetable's arrival and
    every live prediction TTI published for it, as [published, predicted]."""

    @property
    def coverage(self) -> float | None:
        return self.samples / self.instants if self.instants else None


def _truth(trip: BusTrip, stops: list[tuple[str, float, float]]
           ) -> dict[int, tuple[float, float]]:
    """Stop index → (halted, left) in SUMO seconds: the stops made, matched in route order."""
    out: dict[int, tuple[float, float]] = {}
    j = 0
    for k, bs in enumerate(trip.bus_stops):
        while j < len(stops) and stops[j][0] != bs:
            j += 1
        if j == len(stops):
            break
        out[k] = (stops[j][1], stops[j][2])
        j += 1
    return out


def score_buses(*, trips: list[BusTrip], stops: dict[str, list[tuple[str, float, float]]],
                tap: Tap, t0: datetime, duration_s: float, phones: dict[str, str],
                first_report_s: dict[str, float], timetable_trips: int) -> BusScore:
    """Score TTI's bus predictions and stop events (see the module docstring).

    ``phones``: the replayed buses' terminals; ``first_report_s``: the SUMO second of each one's
    first report."""
    base = t0.timestamp()
    logged: dict[tuple[str, str | None, int], tuple[list[float], list[float]]] = {}
    for at, p in tap.predictions:
        if p.source != "live":
            continue
        made, pred = logged.setdefault((p.trip_id, p.start_date, p.stop_sequence), ([], []))
        made.append(at.timestamp())
        pred.append(p.predicted_arrival.timestamp())
    for made, pred in logged.values():
        order = sorted(range(len(made)), key=made.__getitem__)
        made[:], pred[:] = [made[i] for i in order], [pred[i] for i in order]
    acc = Accuracy()
    arrivals = with_samples = instants = samples = 0
    trip_of = {phones[t.vehicle].lstrip("0"): t for t in trips if t.vehicle in phones}
    details: list[dict[str, object]] = []
    truth: dict[tuple[str, int], float] = {}
    for trip in trips:
        done = _truth(trip, stops.get(trip.vehicle, []))
        heard = base + first_report_s.get(trip.vehicle, 0.0)
        for k in range(1, len(trip.bus_stops)):
            if k not in done or done[k][0] >= duration_s:
                continue
            actual = base + done[k][0]
            truth[(trip.vehicle, trip.stop_sequence[k])] = actual
            if trip.vehicle not in phones:
                continue
            arrivals += 1
            lead = acc.step_s / 2
            while lead < BUCKETS[-1].hi_s:
                if actual - lead >= heard:
                    instants += 1
                lead += acc.step_s
            made, pred = logged.get((trip.trip_id, trip.start_date, trip.stop_sequence[k]),
                                    ([], []))
            n = acc.score(actual, made, pred, trip.scheduled_arrival[k])
            samples += n
            with_samples += n > 0
            details.append({
                "vehicle": trip.vehicle, "trip_id": trip.trip_id, "stop_id": trip.stop_ids[k],
                "stop_sequence": trip.stop_sequence[k], "arrived_s": done[k][0],
                "scheduled_s": trip.scheduled_arrival[k] - base, "samples": n,
                "predictions": [[round(m - base, 1), round(q - base, 1)]
                                for m, q in zip(made, pred, strict=True)]})
    # Which trip TTI tracked each bus as, and its detected arrivals against SUMO's.
    seen: dict[str, set[str]] = {}
    errors: list[float] = []
    for _, ev in tap.stop_events:
        bus = trip_of.get(ev.vehicle_id)
        if bus is None:
            continue
        seen.setdefault(bus.vehicle, set()).add(ev.trip_id)
        if ev.kind == "arrival" and ev.trip_id == bus.trip_id:
            real = truth.get((bus.vehicle, ev.stop_sequence))
            if real is not None:
                errors.append(ev.observed_at.timestamp() - real)
    replayed = [t for t in trips if t.vehicle in phones]
    right = sum(1 for t in replayed if t.trip_id in seen.get(t.vehicle, ()))
    other = sum(1 for t in replayed if seen.get(t.vehicle, set()) - {t.trip_id})
    return BusScore(
        timetable_trips=timetable_trips, simulated_trips=len(trips), replayed_buses=len(replayed),
        arrivals=arrivals, arrivals_with_samples=with_samples, instants=instants,
        samples=samples, live=acc.report("live"), schedule=acc.report("schedule"),
        predictions=len(tap.predictions), tracked_right=right, tracked_other=other,
        untracked=sum(1 for t in replayed if not seen.get(t.vehicle)), detected=len(errors),
        detection_median_abs_s=statistics.median(abs(e) for e in errors) if errors else None,
        detection_mean_s=statistics.fmean(errors) if errors else None, details=details)


def _share(x: object) -> str:
    return "—" if x is None else f"{100 * float(x):.1f} %"  # type: ignore[arg-type]


def _secs(x: object) -> str:
    return "—" if x is None else f"{float(x):+.0f} s"  # type: ignore[arg-type]


def format_buses(score: BusScore | None) -> list[str]:
    """The bus ETA section of the table."""
    if score is None:
        return ["bus ETAs: not scored (no GTFS feed for this network: buses run on the demo "
                "city's)"]
    lines = ["bus ETAs (ETA Accuracy Benchmark against SUMO's stop arrivals; predictions "
             "sampled every 30 s before each arrival, the timetable at the same instants)",
             f"  {'bucket':<8}{'window':>13}{'samples':>9}{'live':>9}{'timetable':>11}"
             f"{'mean error live':>17}{'timetable':>11}"]
    for lb, sb in zip(score.live["buckets"], score.schedule["buckets"], strict=True):
        lo, hi = lb["window_s"]
        lines.append(
            f"  {lb['bucket']:<8}{f'{lo:+.0f}/{hi:+.0f} s':>13}{lb['count']:>9}"
            f"{_share(lb['share']):>9}{_share(sb['share']):>11}"
            f"{_secs(lb['mean_error_s']):>17}{_secs(sb['mean_error_s']):>11}")
    lines.append(f"  {'overall (mean of the buckets)':<30}{_share(score.live['overall']):>9}"
                 f"{_share(score.schedule['overall']):>11}"
                 "   (mean error: actual − predicted)")
    med = score.detection_median_abs_s
    mean = score.detection_mean_s
    lines += [
        f"  {'coverage':<40}{_share(score.coverage)} of {score.instants} sample instants "
        f"had a fresh live prediction",
        f"  {'arrivals scored':<40}{score.arrivals_with_samples} of {score.arrivals} "
        f"(stops after the first, within the span)",
        f"  {'trips':<40}{score.timetable_trips} in the timetable, {score.simulated_trips} "
        f"simulated, {score.replayed_buses} buses replayed",
        f"  {'tracked as their own trip':<40}{score.tracked_right} "
        f"({score.tracked_other} also as another, {score.untracked} never tracked)",
        f"  {'arrivals TTI detected':<40}{score.detected}, error median "
        + ("—" if med is None else f"{med:.1f} s")
        + ("" if mean is None else f" (mean {mean:+.1f} s, TTI − SUMO)"),
        f"  {'predictions published':<40}{score.predictions}",
    ]
    lines += [f"  {n}" for n in score.notes]
    return lines
