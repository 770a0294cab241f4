"""Time-of-week speed profiles and learned free-flow speed, from the persisted speed history.

**Buckets.** A profile value belongs to one 15-minute slot of the week in Hubei's local time
(China Standard Time, UTC+8): bucket 0 is Monday 00:00-00:15, bucket 671 Sunday 23:45-24:00,
:data:`BUCKETS_PER_WEEK` = 672. Fifteen minutes resolve the edges of the rush hours (an hourly
slot smears a 07:30-08:30 peak over two slots at half depth), and over the 28-day default
window a slot still gets four weeks × 15 one-minute windows when a segment is driven steadily.
China has observed no daylight saving time since 1991, so the bucket is plain arithmetic on the
UTC epoch (:func:`bucket_of`) and both store backends compute the very same expression in SQL.

**Profile speed.** The median of the window speeds (probe, detector or fused) that fell in the
bucket, kept only with at least :data:`MIN_PROFILE_WINDOWS` windows: the median is robust to the
odd incident or a single-vehicle window, which a mean is not.

**Learned free flow.** The 85th percentile (``percentile_cont``, linear interpolation) of the
probe window speeds in the light-traffic night hours 23:00-05:00 local, the usual definition of a
road's free-flow speed from measurements; learned only with at least
:data:`MIN_FREE_FLOW_WINDOWS` windows, otherwise the OSM-derived default of the segment stands.

The store methods doing this are ``GeoStore.recompute_profiles``, ``profiles_at``,
``segment_profile`` and ``learned_free_flow``; :func:`keep_profiles` recomputes periodically.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.clock import Clock

if TYPE_CHECKING:
    from services.bigdata.store.base import GeoStore

log = logging.getLogger("tti.bigdata.profiles")

TIME_ZONE = "Asia/Shanghai"
"""The local time zone buckets are counted in (fixed UTC+8, no DST since 1991)."""
UTC_OFFSET_S = 8 * 3600
BUCKET_S = 15 * 60
"""Length of one time-of-week bucket: 15 minutes."""
WEEK_S = 7 * 86400
BUCKETS_PER_WEEK = WEEK_S // BUCKET_S
"""672 buckets: 7 days × 96 quarter hours."""
EPOCH_WEEKDAY_S = 3 * 86400
"""1970-01-01 was a Thursday: shift by three days so that bucket 0 starts on Monday."""

PROFILE_SOURCES = ("probe", "detector", "probe+detector")
"""Window sources a profile is built from (measured values only, never ``profile``/``none``)."""
FREE_FLOW_SOURCES = ("probe", "probe+detector")
"""Window sources free flow is learned from: probe vehicles actually driving the road."""
FREE_FLOW_HOURS = (23, 5)
"""Local hours [23:00, 05:00) that count as light traffic for learning free flow."""
FREE_FLOW_PERCENTILE = 0.85
MIN_PROFILE_WINDOWS = 4
"""Fewer speed windows in a bucket than this and the bucket has no profile."""
MIN_FREE_FLOW_WINDOWS = 20
"""Fewer night windows than this and the segment keeps its OSM-derived free flow."""
HISTORY_DAYS = 28
"""How much history a recomputation looks at (four of each weekday)."""
RECOMPUTE_INTERVAL_S = 3600.0


def bucket_of(when: datetime) -> int:
    """The time-of-week bucket (0 = Monday 00:00-00:15 local … 671) containing ``when``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return bucket_of_epoch(math.floor(when.timestamp()))


def bucket_end(when: datetime) -> datetime:
    """The UTC instant the bucket containing ``when`` ends (when the next one starts)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    epoch = math.floor(when.timestamp())
    start = epoch - (epoch + UTC_OFFSET_S) % BUCKET_S
    return datetime.fromtimestamp(start + BUCKET_S, UTC)


def bucket_label(bucket: int) -> str:
    """Local weekday and start time of a bucket, e.g. ``Mon 07:30``."""
    day, rest = divmod(bucket, 96)
    hour, quarter = divmod(rest, 4)
    return f"{('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')[day]} {hour:02d}:{quarter * 15:02d}"


def is_free_flow_hour(local_hour: int) -> bool:
    """Whether a local hour of day is in the light-traffic hours free flow is learned from."""
    start, end = FREE_FLOW_HOURS
    return local_hour >= start or local_hour < end


def percentile_cont(sorted_values: Sequence[float], fraction: float) -> float:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the closest ranks."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = fraction * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# SQL fragments (identical arithmetic on both backends) over an integer epoch-seconds column.
def bucket_sql(epoch: str) -> str:
    """SQL for the bucket of an integer epoch expression (same as :func:`bucket_of`)."""
    return f"((({epoch}) + {UTC_OFFSET_S + EPOCH_WEEKDAY_S}) % {WEEK_S}) / {BUCKET_S}"


def local_hour_sql(epoch: str) -> str:
    """SQL for the local hour of day of an integer epoch expression."""
    return f"((({epoch}) + {UTC_OFFSET_S}) % 86400) / 3600"


async def keep_profiles(store: GeoStore, *, clock: Clock,
                        interval_s: float = RECOMPUTE_INTERVAL_S,
                        history_days: float = HISTORY_DAYS) -> None:
    """Recompute profiles over the last ``history_days`` now and every ``interval_s``, forever.

    Both in ``clock`` time (a fast clock recomputes sooner in real time). A failure is logged
    and retried at the next turn; the previous profiles stay served.
    """
    while True:
        until = clock.now()
        try:
            n = await store.recompute_profiles(until - timedelta(days=history_days), until)
            log.info("time-of-week profiles recomputed: %d segment buckets", n)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recomputing time-of-week profiles failed")
        await clock.sleep(interval_s)


def bucket_of_epoch(epoch_s: int) -> int:
    """:func:`bucket_of` for integer UTC epoch seconds."""
    return ((epoch_s + UTC_OFFSET_S + EPOCH_WEEKDAY_S) % WEEK_S) // BUCKET_S


def local_hour_of_epoch(epoch_s: int) -> int:
    """Local (UTC+8) hour of day of integer UTC epoch seconds."""
    return ((epoch_s + UTC_OFFSET_S) % 86400) // 3600
