"""Per-segment space-mean speeds in fixed windows from matched vehicle pieces.

Space-mean speed over a window is total distance driven on the segment divided by total time
spent driving it (Σd / Σt), which weighs slow vehicles correctly, unlike an average of spot speeds.
A window is closed once the clock passes its end plus a grace period for late reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.bigdata.matching import Piece


@dataclass(slots=True)
class _Acc:
    distance_m: float = 0.0
    duration_s: float = 0.0
    vehicles: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class WindowSpeed:
    """The result of one closed window on one segment."""

    segment_id: str
    window_start: datetime
    window_end: datetime
    speed_kmh: float
    sample_count: int
    distance_m: float
    duration_s: float


class SpeedWindows:
    """Accumulates pieces into windows of ``window_s`` seconds keyed by their end time."""

    def __init__(self, window_s: float, *, grace_s: float | None = None,
                 min_duration_s: float = 1.0) -> None:
        self.window_s = window_s
        self.grace_s = min(30.0, window_s / 2) if grace_s is None else grace_s
        self.min_duration_s = min_duration_s
        self._open: dict[int, dict[str, _Acc]] = {}
        self.late_pieces = 0

    def _bucket(self, t: float) -> int:
        return math.floor(t / self.window_s)

    def add(self, vehicle_id: str, t_end: float, pieces: Iterable[Piece], *,
            now: float | None = None) -> None:
        """Add a vehicle's pieces that ended at ``t_end`` (epoch seconds)."""
        bucket = self._bucket(t_end)
        if now is not None and (bucket + 1) * self.window_s + self.grace_s < now:
            self.late_pieces += 1
            return
        windows = self._open.setdefault(bucket, {})
        for piece in pieces:
            acc = windows.get(piece.segment_id)
            if acc is None:
                acc = windows[piece.segment_id] = _Acc()
            acc.distance_m += piece.distance_m
            acc.duration_s += piece.duration_s
            acc.vehicles.add(vehicle_id)

    def close_due(self, now: float) -> list[WindowSpeed]:
        """Close every window whose end plus grace is before ``now``."""
        out: list[WindowSpeed] = []
        for bucket in sorted(self._open):
            if (bucket + 1) * self.window_s + self.grace_s > now:
                break
            start = datetime.fromtimestamp(bucket * self.window_s, UTC)
            end = datetime.fromtimestamp((bucket + 1) * self.window_s, UTC)
            for sid, acc in self._open.pop(bucket).items():
                if acc.duration_s < self.min_duration_s:
                    continue
                out.append(WindowSpeed(sid, start, end, acc.distance_m / acc.duration_s * 3.6,
                                       len(acc.vehicles), acc.distance_m, acc.duration_s))
        return out
