"""Prediction accuracy, measured continuously with the ETA Accuracy Benchmark.

The benchmark (Transit app and partners, after IBI Group's method) files each prediction under the
time between when it was *sampled* and when the bus *actually* reached the stop, and calls it
accurate when ``actual − predicted`` lies within the bucket's window, bounds included (negative:
the bus came earlier than predicted, which riders forgive less):

======  ===============  =============
bucket  time to arrival  actual − pred
======  ===============  =============
0-3     [0, 3) min       −30 s … +90 s
3-6     [3, 6) min       −60 s … +150 s
6-10    [6, 10) min      −60 s … +210 s
10-15   [10, 15) min     −90 s … +270 s
======  ===============  =============

Sampling: at each arrival, the prediction riders were being shown for that trip and stop is
looked up every 30 s before it (15 s, 45 s, … 885 s ahead): the newest one published at or before
that instant, if it was still fresh. Sampling on a fixed grid weighs every minute of waiting the
same, however often a bus reports. The timetable is scored at the same instants as a baseline.
The overall figure is the plain mean of the four bucket shares, as the benchmark defines it.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from prometheus_client import Counter

ETA_SAMPLES = Counter("tti_bigdata_eta_samples_total",
                      "ETA Accuracy Benchmark samples, by time-to-arrival bucket and source",
                      ["bucket", "source"])
ETA_ACCURATE = Counter("tti_bigdata_eta_accurate_total",
                       "ETA Accuracy Benchmark samples inside the bucket's window",
                       ["bucket", "source"])


@dataclass(frozen=True, slots=True)
class Bucket:
    """One benchmark bucket: time to arrival [lo_s, hi_s) and the accepted window."""

    name: str
    lo_s: float
    hi_s: float
    early_s: float
    late_s: float

    def accurate(self, error_s: float) -> bool:
        """Whether ``actual − predicted`` is inside the window (bounds inclusive)."""
        return -self.early_s <= error_s <= self.late_s


BUCKETS = (
    Bucket("0-3", 0.0, 180.0, 30.0, 90.0),
    Bucket("3-6", 180.0, 360.0, 60.0, 150.0),
    Bucket("6-10", 360.0, 600.0, 60.0, 210.0),
    Bucket("10-15", 600.0, 900.0, 90.0, 270.0),
)
SOURCES = ("live", "schedule")


def bucket_for(lead_s: float) -> Bucket | None:
    """The bucket of a time to arrival, None outside [0, 15 min)."""
    for b in BUCKETS:
        if b.lo_s <= lead_s < b.hi_s:
            return b
    return None


@dataclass(slots=True)
class Tally:
    """Counts for one bucket and source."""

    count: int = 0
    accurate: int = 0
    early: int = 0
    late: int = 0
    abs_error_s: float = 0.0
    error_s: float = 0.0

    def add(self, bucket: Bucket, error_s: float) -> bool:
        """Count one sample; returns whether it was accurate."""
        self.count += 1
        self.abs_error_s += abs(error_s)
        self.error_s += error_s
        if bucket.accurate(error_s):
            self.accurate += 1
            return True
        if error_s < 0:
            self.early += 1
        else:
            self.late += 1
        return False


class PredictionLog:
    """Published predictions per (trip instance, stop index), oldest first, until scored."""

    def __init__(self, keep_s: float = 1200.0) -> None:
        self.keep_s = keep_s
        self._log: dict[str, dict[int, tuple[list[float], list[float]]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._log.values())

    def add(self, run_key: str, stop_index: int, made_at: float, predicted: float) -> None:
        """Record a published prediction."""
        made, pred = self._log.setdefault(run_key, {}).setdefault(stop_index, ([], []))
        made.append(made_at)
        pred.append(predicted)
        if made_at - made[0] > self.keep_s:  # older than any sample will look back
            cut = bisect_right(made, made_at - self.keep_s)
            del made[:cut], pred[:cut]

    def pop(self, run_key: str, stop_index: int) -> tuple[list[float], list[float]] | None:
        """Take the predictions of one stop (they are scored once)."""
        stops = self._log.get(run_key)
        if stops is None:
            return None
        return stops.pop(stop_index, None)

    def forget(self, run_key: str) -> None:
        """Drop a trip instance that ended."""
        self._log.pop(run_key, None)


class Accuracy:
    """Benchmark tallies since start, for the API and the Prometheus counters."""

    def __init__(self, *, step_s: float = 30.0, fresh_s: float = 150.0) -> None:
        self.step_s = step_s
        self.fresh_s = fresh_s
        self.tallies = {src: {b.name: Tally() for b in BUCKETS} for src in SOURCES}
        self.arrivals_scored = 0

    def score(self, actual: float, made: list[float], predicted: list[float],
              scheduled: float | None) -> int:
        """Score the predictions of one arrival; returns the number of live samples."""
        samples = 0
        lead = self.step_s / 2
        while lead < BUCKETS[-1].hi_s:
            at = actual - lead
            i = bisect_right(made, at) - 1
            if i >= 0 and at - made[i] <= self.fresh_s:
                bucket = bucket_for(lead)
                assert bucket is not None
                self._count("live", bucket, actual - predicted[i])
                samples += 1
                if scheduled is not None:
                    self._count("schedule", bucket, actual - scheduled)
            lead += self.step_s
        if samples:
            self.arrivals_scored += 1
        return samples

    def _count(self, source: str, bucket: Bucket, error_s: float) -> None:
        ok = self.tallies[source][bucket.name].add(bucket, error_s)
        ETA_SAMPLES.labels(bucket.name, source).inc()
        if ok:
            ETA_ACCURATE.labels(bucket.name, source).inc()

    def report(self, source: str = "live") -> dict[str, object]:
        """Per-bucket counts and shares, and the benchmark's overall figure."""
        rows = []
        shares = []
        for b in BUCKETS:
            t = self.tallies[source][b.name]
            share = t.accurate / t.count if t.count else None
            if share is not None:
                shares.append(share)
            rows.append({
                "bucket": b.name, "time_to_arrival_s": [b.lo_s, b.hi_s],
                "window_s": [-b.early_s, b.late_s], "count": t.count, "accurate": t.accurate,
                "early": t.early, "late": t.late,
                "share": None if share is None else round(share, 4),
                "mean_abs_error_s": round(t.abs_error_s / t.count, 1) if t.count else None,
                # actual − predicted on average: negative = buses come earlier than said
                "mean_error_s": round(t.error_s / t.count, 1) if t.count else None,
            })
        return {"buckets": rows,
                "overall": round(sum(shares) / len(shares), 4) if shares else None}
