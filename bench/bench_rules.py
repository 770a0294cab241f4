"""Benchmark: matched positions per second through every 两客一危 rule, from their bus encoding.

Run: ``.venv/bin/python bench/bench_rules.py [--vehicles 2000] [--fixes 100]``. Standalone: it
builds a fleet of coaches, tourist buses and dangerous-goods trucks reporting every 10 s from
01:50 local time (so the night rule and the coaches' night limit are live), some of them too
fast, some in a tunnel closed to them, some off their assigned route, over 300 geofences. Each
fix is encoded as the bus carries it (``shared/codec.py``) before the clock starts.

Figures (one core, in process): the codec's decode alone (the baseline, measured in the same
run), decode + the whole `RuleSet` (speeding, fatigue, night driving, geofences; a tick every
5 s of stream time), and each rule alone on decoded positions. The target is ≥ 20,000
positions/s through every rule.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, uninstalled

import shapely
from shapely.geometry import mapping

from services.warning.rules.common import RuleSettings
from services.warning.rules.fatigue import FatigueRule
from services.warning.rules.geofences import GeofenceRule
from services.warning.rules.night import NightDrivingRule
from services.warning.rules.ruleset import RuleSet
from services.warning.rules.speeding import SpeedingRule
from shared.clients.bigdata import Geofence
from shared.codec import Envelope, decode_envelope, encode_envelope
from shared.events import MATCHED_POSITION, MatchedPosition

START = datetime(2026, 11, 27, 17, 50, tzinfo=UTC)  # 01:50 in Wuhan
LON0, LAT0 = 114.20, 30.45
CLASSES = ("coach", "tourist_bus", "dangerous_goods")
ROADS = (("motorway", 120.0), ("trunk", 80.0), ("primary", 60.0), ("secondary", 50.0))


def fences(rng: random.Random) -> list[Geofence]:
    """100 closed tunnels/bridges, 100 zones (≈ 500 m squares), 100 assigned routes."""
    out: list[Geofence] = []
    for i in range(100):
        out.append(Geofence(geofence_id=f"road-{i}", name=f"隧道{i}", kind="restricted_road",
                            vehicle_classes=frozenset({"dangerous_goods"}),
                            segment_ids=frozenset({f"{i}:0:1", f"{i}:1:2"})))
        x, y = LON0 + rng.uniform(0, 0.3), LAT0 + rng.uniform(0, 0.2)
        out.append(Geofence(geofence_id=f"zone-{i}", name=f"学校{i}", kind="restricted_zone",
                            vehicle_classes=frozenset({"dangerous_goods", "coach"}),
                            geometry=mapping(shapely.box(x, y, x + 0.005, y + 0.0045))))
        line = shapely.LineString([(LON0 + 0.003 * i, LAT0), (LON0 + 0.003 * i, LAT0 + 0.2)])
        out.append(Geofence(geofence_id=f"route-{i}", name=f"专用线路{i}", kind="assigned_route",
                            vehicle_classes=frozenset(), vehicle_ids=frozenset({f"v{i}"}),
                            geometry=mapping(line), width_m=100.0))
    return out


def fleet(vehicles: int, fixes: int, rng: random.Random) -> list[MatchedPosition]:
    """Every vehicle's fixes, 10 s apart, in time order (as the stream interleaves them)."""
    out: list[MatchedPosition] = []
    kinds = []
    for v in range(vehicles):
        road, limit = ROADS[v % len(ROADS)]
        speed = limit * rng.choice((0.7, 0.9, 1.0, 1.25))  # a quarter of them too fast
        kinds.append((f"v{v}", CLASSES[v % 3], road, limit, speed,
                      LON0 + rng.uniform(0, 0.3), LAT0 + rng.uniform(0, 0.2)))
    for k in range(fixes):
        at = START + timedelta(seconds=10 * k)
        for n, (vid, cls, road, limit, speed, lon, lat) in enumerate(kinds):
            seg = f"{n % 300}:{k // 30 % 3}:{k // 30 % 3 + 1}"
            out.append(MatchedPosition(
                vehicle_id=vid, vehicle_class=cls, observed_at=at + timedelta(milliseconds=n),
                lon=lon + k * 0.0002, lat=lat, segment_id=seg, offset_m=10.0, road_class=road,
                speed_limit_kmh=limit, speed_limit_source="osm",
                confidence=0.95 if n % 10 else 0.4, speed_kmh=speed + rng.uniform(-2, 2),
                status=3, road_name="沪渝高速", route_id=f"R{n % 20}"))
    return out


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} /s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vehicles", type=int, default=2000)
    ap.add_argument("--fixes", type=int, default=100, help="fixes per vehicle (10 s apart)")
    args = ap.parse_args()
    rng = random.Random(7)
    fs = fences(rng)
    settings = RuleSettings(coach_routes={f"R{i}": 50.0 if i < 5 else 400.0 for i in range(20)})
    positions = fleet(args.vehicles, args.fixes, rng)
    wire = [encode_envelope(Envelope.new(MATCHED_POSITION, p)) for p in positions]
    n = len(wire)
    print(f"Python {platform.python_version()} on {platform.machine()}, one core; "
          f"{args.vehicles} vehicles × {args.fixes} fixes = {n:,} matched positions, "
          f"{len(fs)} geofences\n")

    t = time.perf_counter()
    decoded = [decode_envelope(MATCHED_POSITION, raw).payload for raw in wire]
    base_s = time.perf_counter() - t
    print(f"  codec decode alone (baseline)        {rate(n, base_s)}")

    rules = RuleSet(settings)
    rules.set_fences(fs)
    out = 0
    next_tick = START
    t = time.perf_counter()
    for raw in wire:
        p = decode_envelope(MATCHED_POSITION, raw).payload
        out += len(rules.on_matched(p))
        if p.observed_at >= next_tick:
            out += len(rules.expire(p.observed_at))
            next_tick = p.observed_at + timedelta(seconds=5)
    full_s = time.perf_counter() - t
    print(f"  decode + every rule (RuleSet)        {rate(n, full_s)}   "
          f"{full_s / base_s:.1f}× the decode alone; {out:,} warning messages")

    singles: list[tuple[str, object]] = [
        ("speeding", SpeedingRule(settings)), ("fatigue", FatigueRule(settings)),
        ("night driving", NightDrivingRule(settings)), ("geofences", GeofenceRule())]
    for name, rule in singles:
        if isinstance(rule, GeofenceRule):
            rule.set_fences(fs)
        on = rule.on_matched  # type: ignore[attr-defined]
        t = time.perf_counter()
        for p in decoded:
            on(p)
        s = time.perf_counter() - t
        print(f"  {name + ' alone (decoded)':<36} {rate(n, s)}")
    verdict = "meets" if n / full_s >= 20_000 else "MISSES"
    print(f"\n  target ≥ 20,000 positions/s per core through every rule: {verdict}")


if __name__ == "__main__":
    main()
