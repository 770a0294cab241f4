"""A small real road network for the warning tests, and a recording output.

Two parallel east-west roads 300 m apart, 12 pieces of 250 m each, joined by north-south links
at every node: a queue on 解放大道 has a detour over 和平大道.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from shared.events import SegmentSpeed, Subject
from shared.roadnet import OsmWay, RoadNetwork

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
LON0, LAT0 = 114.30, 30.50
STEP_DEG = 0.0026  # ≈ 250 m east-west at 30.5° N
GAP_DEG = 0.0027   # ≈ 300 m north-south
PIECES = 12


def _node(row: int, k: int) -> tuple[int, float, float]:
    return (row * 100 + k, LON0 + k * STEP_DEG, LAT0 + row * GAP_DEG)


def build_network() -> RoadNetwork:
    """解放大道 (way 1, row 0) and 和平大道 (way 2, row 1), two-way primaries; links (way 10+k)."""
    ways = [
        OsmWay(1, [_node(0, k) for k in range(PIECES + 1)],
               {"highway": "primary", "name": "解放大道", "maxspeed": "60"}),
        OsmWay(2, [_node(1, k) for k in range(PIECES + 1)],
               {"highway": "primary", "name": "和平大道", "maxspeed": "60"}),
    ]
    for k in range(PIECES + 1):
        ways.append(OsmWay(10 + k, [_node(0, k), _node(1, k)],
                           {"highway": "secondary", "name": f"{k}号路", "maxspeed": "40"}))
    return RoadNetwork.from_ways(ways)


def main_road(network: RoadNetwork, first: int, last: int) -> list[str]:
    """Eastbound segments of 解放大道 from piece ``first`` to ``last`` (inclusive), in order."""
    out = []
    for k in range(first, last + 1):
        sid = f"1:{k}:{k + 1}"
        assert sid in network, sid
        out.append(sid)
    return out


def window(sid: str, minute: int, kmh: float | None, *, vehicles: int = 4,
           free_flow: float = 60.0, road_class: str = "primary") -> SegmentSpeed:
    """One minute's speed window of a segment."""
    return SegmentSpeed(segment_id=sid, window_start=T0 + timedelta(minutes=minute),
                        observed_at=T0 + timedelta(minutes=minute + 1), speed_kmh=kmh,
                        sample_count=vehicles, free_flow_kmh=free_flow, road_class=road_class,
                        road_name="解放大道", lon=LON0, lat=LAT0)


@dataclass
class Recorder:
    """An engine output that keeps what it is given, in order (the bus does the same)."""

    events: list[tuple[str, Any, str]] = field(default_factory=list)

    async def publish(self, subject: Subject[Any], payload: Any, *, event_id: str) -> None:
        self.events.append((subject.name, payload, event_id))

    def of(self, subject: Subject[Any]) -> list[Any]:
        """Payloads published on one subject."""
        return [p for name, p, _ in self.events if name == subject.name]


def bigdata_standin(network: RoadNetwork, *, profiles: dict[str, float] | None = None,
                    bus_routes: dict[str, list[str]] | None = None) -> web.Application:
    """bigdata's HTTP contract (segments, profiles, detectors, bus routes) over a network."""
    records = [{
        "segment_id": s.segment_id, "name": s.name, "name_en": s.name_en,
        "road_class": s.road_class, "lanes": s.lanes, "speed_limit_kmh": s.speed_limit_kmh,
        "free_flow_kmh": s.free_flow_kmh, "oneway": s.oneway, "bridge": s.bridge,
        "tunnel": s.tunnel, "length_m": s.length_m, "coords": [list(c) for c in s.coords],
    } for s in network]

    async def segments(request: web.Request) -> web.Response:
        return web.json_response({"segments": records, "count": len(records)})

    async def profile(request: web.Request) -> web.Response:
        at = datetime.fromisoformat(request.query["at"])
        return web.json_response({
            "bucket": 1, "valid_until": (at + timedelta(minutes=15)).isoformat(),
            "profiles": [{"segment_id": sid, "speed_kmh": v, "updated_at": at.isoformat()}
                         for sid, v in (profiles or {}).items()]})

    async def features(request: web.Request) -> web.Response:
        return web.json_response({"features": [], "count": 0})

    async def route_segments(request: web.Request) -> web.Response:
        return web.json_response({"routes": bus_routes or {}, "count": len(bus_routes or {})})

    app = web.Application()
    app.router.add_get("/v1/routes/segments", route_segments)
    app.router.add_get("/v1/segments", segments)
    app.router.add_get("/v1/profiles", profile)
    app.router.add_get("/v1/features", features)
    return app
