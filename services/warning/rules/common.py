"""What the 两客一危 rules share: their settings, Hubei local time, and one warning shape."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.warning.rules.episodes import Key
from shared.config import Config
from shared.errors import ConfigError
from shared.events import (
    Area,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapUrgency,
    Warning,
    WarningKind,
    WarningStatus,
)

LOCAL_OFFSET_S = 8 * 3600
"""Hubei local time is UTC+8 all year (China has no daylight saving time)."""
DAY_S = 86_400
CLASS_ZH = {"coach": "客运车", "tourist_bus": "旅游包车", "dangerous_goods": "危险货物运输车",
            "bus": "公交车", "taxi": "出租车", "other": "车辆"}
CLASS_EN = {"coach": "coach", "tourist_bus": "tourist bus",
            "dangerous_goods": "dangerous-goods truck", "bus": "bus", "taxi": "taxi",
            "other": "vehicle"}
PASSENGER = frozenset({"coach", "tourist_bus"})
MOVING_KMH = 5.0
"""Above this reported speed a vehicle is moving (GNSS speed of a parked vehicle jitters)."""


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """The rules' tunables (from ``shared/config.py``; defaults for tests and benchmarks)."""

    speeding_tolerance_kmh: float = 5.0
    speeding_tolerance_s: float = 30.0
    min_confidence: float = 0.6
    coach_routes: Mapping[str, float] = field(default_factory=dict)
    """Coach route id → route length in km (routes under 100 km are exempt from 02:00-05:00)."""
    driver_text_ttl_s: float = 600.0

    @classmethod
    def from_config(cls, config: Config, *,
                    coach_routes: Mapping[str, float] | None = None) -> RuleSettings:
        """The rules' settings from the service's; reads the coach routes CSV unless given."""
        routes = load_coach_routes(config.coach_routes) if coach_routes is None else coach_routes
        return cls(speeding_tolerance_kmh=config.speeding_tolerance_kmh,
                   speeding_tolerance_s=config.speeding_tolerance_s,
                   min_confidence=config.match_min_confidence, coach_routes=routes,
                   driver_text_ttl_s=config.driver_text_ttl_s)


def load_coach_routes(path: str) -> dict[str, float]:
    """``route_id,length_km`` rows of a CSV (header optional); empty path: no routes."""
    if not path:
        return {}
    routes: dict[str, float] = {}
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            for n, row in enumerate(csv.reader(f), start=1):
                if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                    continue
                if n == 1 and row[0].strip().lower() == "route_id":
                    continue
                try:
                    length = float(row[1])
                except (IndexError, ValueError):
                    raise ConfigError(f"TTI_COACH_ROUTES {path} line {n}: expected "
                                      f"route_id,length_km, got {row!r}") from None
                if not math.isfinite(length) or length < 0:
                    raise ConfigError(f"TTI_COACH_ROUTES {path} line {n}: bad length {length}")
                routes[row[0].strip()] = length
    except OSError as exc:
        raise ConfigError(f"TTI_COACH_ROUTES {path}: {exc}") from exc
    return routes


def local_seconds(ts: float) -> float:
    """Seconds since local (UTC+8) midnight of an epoch timestamp."""
    return (ts + LOCAL_OFFSET_S) % DAY_S


def local_day_start(ts: float) -> float:
    """Epoch timestamp of the local midnight at or before ``ts``."""
    return ts - local_seconds(ts)


def overlap(a: float, b: float, lo: float, hi: float) -> float:
    """Length of [a, b] ∩ [lo, hi]."""
    return max(0.0, min(b, hi) - max(a, lo))


def key_of(w: Warning) -> Key:
    """The episode key the vehicle rules write into every warning's details."""
    return str(w.details.get("subject")), str(w.details.get("rule"))


def who(vehicle_id: str, vehicle_class: str, driver_id: str | None) -> tuple[str, str]:
    """The vehicle (and driver) in Chinese and English, for headlines."""
    zh = f"{CLASS_ZH.get(vehicle_class, '车辆')} {vehicle_id}"
    en = f"{CLASS_EN.get(vehicle_class, 'vehicle')} {vehicle_id}"
    if driver_id:
        zh += f"（驾驶员 {driver_id}）"
        en += f" (driver {driver_id})"
    return zh, en


def where(vehicle_id: str, lon: float, lat: float) -> dict[str, object]:
    """Warning fields placing it at the vehicle's position (a 100 m circle)."""
    if not (lon or lat):
        return {"lon": None, "lat": None, "area": None}
    return {"lon": lon, "lat": lat,
            "area": Area(description=f"车辆 {vehicle_id} 位置", circle=(lon, lat, 100.0))}


def duration_zh(seconds: float) -> str:
    """``2小时05分`` / ``35分`` / ``40秒``."""
    s = int(seconds)
    if s < 60:
        return f"{s}秒"
    h, m = divmod(s // 60, 60)
    return f"{h}小时{m:02d}分" if h else f"{m}分"


def duration_en(seconds: float) -> str:
    """``2 h 05 min`` / ``35 min`` / ``40 s``."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    h, m = divmod(s // 60, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def vehicle_alarm(*, warning_id: str, cause: str, started_at: datetime,
                  decided_at: datetime | None = None, **fields: object) -> Warning:
    """The first (Alert) message of a rule's episode: a Safety vehicle alarm, observed.

    ``decided_at``: the event that raised it, when later than its start (a tolerance passed);
    ``fields``: severity, the texts, details and where (the rest of `Warning`'s fields).
    """
    return Warning(
        warning_id=warning_id, kind=WarningKind.VEHICLE_ALARM, status=WarningStatus.RAISED,
        category=CapCategory.SAFETY, urgency=CapUrgency.IMMEDIATE,
        certainty=CapCertainty.OBSERVED, msg_type=CapMsgType.ALERT, started_at=started_at,
        updated_at=decided_at or started_at, cause=cause, **fields)  # type: ignore[arg-type]


def utc(ts: float) -> datetime:
    """An epoch timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)

