"""The one clock every service reads time through, passed in at composition (``services/cli.py``).

A `Clock` gives UTC wall time (`now`, `time`), a monotonic reading for timeouts (`monotonic`) and
`sleep`, all at one ``rate``: 1 is real time; 10 runs the whole system ten times faster than real
time (a replay, a benchmark, a test), the JT/T 808 gateway's future-time check, speed windows,
rules and timeouts included, because none of them reads another source of time. ``start`` sets
the virtual time at which the clock starts (a replay of a recorded day); by default it starts at
the real time. Settings: ``TTI_CLOCK_RATE``, ``TTI_CLOCK_START``.

Only the bus backends' own protocol timers (JetStream ack waits, reconnect backoff) stay on real
time: they pace a server, not the traffic.
"""

from __future__ import annotations

import asyncio
import math
import time as _time
from datetime import UTC, datetime

from shared.errors import ConfigError

__all__ = ["Clock", "parse_clock_start"]


class Clock:
    """UTC time, monotonic time and sleeping, at ``rate`` × real time from ``start``.

    A real-time clock (rate 1, no start) reads the system's wall clock as it is, NTP steps
    included. Any other clock advances its virtual time on the monotonic clock, so a replay
    never jumps when the wall clock is stepped, and ``time()`` and ``monotonic()`` agree.
    """

    __slots__ = ("_mono0", "_real", "_virtual0", "rate")

    def __init__(self, rate: float = 1.0, *, start: datetime | None = None) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"clock rate must be a positive number, not {rate!r}")
        if start is not None and start.tzinfo is None:
            raise ConfigError("clock start must be an aware datetime")
        self.rate = float(rate)
        self._real = self.rate == 1.0 and start is None
        self._mono0 = _time.monotonic()
        self._virtual0 = _time.time() if start is None else start.timestamp()

    @property
    def realtime(self) -> bool:
        """Whether this clock is the wall clock itself (rate 1, no start offset)."""
        return self._real

    def time(self) -> float:
        """Seconds since the epoch (UTC), like ``time.time()``."""
        if self._real:
            return _time.time()
        return self._virtual0 + (_time.monotonic() - self._mono0) * self.rate

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), UTC)

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything), at the clock's rate."""
        return (_time.monotonic() - self._mono0) * self.rate

    def real_seconds(self, seconds: float) -> float:
        """How long ``seconds`` of this clock's time take in real time."""
        return seconds / self.rate

    def clock_seconds(self, real_seconds: float) -> float:
        """How many of this clock's seconds pass in ``real_seconds`` of real time."""
        return real_seconds * self.rate

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time (``sleep(0)`` just yields)."""
        await asyncio.sleep(max(0.0, seconds) / self.rate)

    @classmethod
    def from_settings(cls, rate: float, start: str) -> Clock:
        """A clock from the ``clock_rate`` and ``clock_start`` settings (errors name them)."""
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"TTI_CLOCK_RATE must be a positive number, not {rate!r}")
        return cls(rate, start=parse_clock_start(start))

    def __repr__(self) -> str:
        return f"Clock(rate={self.rate:g}, now={self.now().isoformat()})"


def parse_clock_start(raw: str) -> datetime | None:
    """``TTI_CLOCK_START``: empty (start now) or an ISO 8601 time; a naive one is UTC."""
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"TTI_CLOCK_START: not an ISO 8601 time: {raw!r}") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
