"""Warning service: congestion levels from segment speeds, and congestion warnings.

Consumes ``tti.segment.speed``; produces ``tti.road.status`` (level 1-5 and TPI per segment, or
``source: none`` once a segment's data has gone stale) and ``tti.warning`` (a warning raised when a
segment becomes severely congested, cleared when it recovers or its data goes stale).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from aiohttp import web
from prometheus_client import Counter, Gauge

from services.warning.levels import LEVEL_NAMES, level_for_speed, tpi_for_speed
from shared.bus import EventBus
from shared.codec import Envelope
from shared.clock import Clock
from shared.config import Config
from shared.events import ROAD_STATUS, SEGMENT_SPEED, WARNING, RoadStatus, SegmentSpeed, Warning
from shared.service import add_readiness_check, create_base_app, spawn

log = logging.getLogger("tti.warning")

STATUSES = Counter("tti_warning_road_status_total", "Road statuses published by level",
                   ["level"])
WARNINGS = Counter("tti_warning_warnings_total", "Warnings by kind and status change",
                   ["kind", "status"])
ACTIVE = Gauge("tti_warning_active_warnings", "Active warnings")

SEVERE = 5
CLEAR_AT_OR_BELOW = 3
MIN_SAMPLES = 2
"""A warning needs at least this many vehicles in the window: one slow car is not a jam."""
MAX_SPEED_RATIO = 0.5
"""…and a speed at most this share of free flow, so slow minor roads do not cry wolf."""
STALE_WINDOWS = 3
"""A segment with no new speed for this many windows reports ``source: none``."""


@dataclass(slots=True)
class _SegmentState:
    last: SegmentSpeed
    level: int | None
    warning: Warning | None = None
    stale: bool = False


class WarningEngine:
    """Per-segment levels and the congestion warning lifecycle (one writer: the consumer)."""

    def __init__(self, config: Config, bus: EventBus) -> None:
        self.config = config
        self.bus = bus
        self.segments: dict[str, _SegmentState] = {}

    async def on_speed(self, env: Envelope[SegmentSpeed]) -> None:
        """Grade one segment window, publish its status, raise or clear its warning."""
        s = env.payload
        state = self.segments.get(s.segment_id)
        if state is not None and s.observed_at < state.last.observed_at:
            return  # an older window redelivered after a newer one: keep the newer
        level = None if s.speed_kmh is None else level_for_speed(s.speed_kmh, s.road_class)
        if state is None:
            state = self.segments[s.segment_id] = _SegmentState(s, level)
        state.last, state.level, state.stale = s, level, False
        await self.bus.publish(ROAD_STATUS, RoadStatus(
            segment_id=s.segment_id, level=level,
            level_name=None if level is None else LEVEL_NAMES[level], speed_kmh=s.speed_kmh,
            free_flow_kmh=s.free_flow_kmh, observed_at=s.observed_at,
            sample_count=s.sample_count, source=s.source,
            tpi=None if s.speed_kmh is None else tpi_for_speed(s.speed_kmh, s.road_class),
        ), correlation_id=env.correlation_id)
        STATUSES.labels(str(level or 0)).inc()
        if state.warning is None and level == SEVERE and self._confirmed(s):
            await self._raise(state, env.correlation_id)
        elif state.warning is not None and level is not None:
            if level <= CLEAR_AT_OR_BELOW:
                await self._clear(state, "recovered")
            else:
                await self._update(state)

    @staticmethod
    def _confirmed(s: SegmentSpeed) -> bool:
        if s.sample_count < MIN_SAMPLES or s.speed_kmh is None:
            return False
        return s.free_flow_kmh is None or s.speed_kmh <= MAX_SPEED_RATIO * s.free_flow_kmh

    async def _raise(self, state: _SegmentState, correlation_id: str) -> None:
        s = state.last
        road = s.road_name or s.segment_id
        w = Warning(
            warning_id=uuid.uuid4().hex, kind="congestion", severity="severe", status="active",
            segment_id=s.segment_id, started_at=s.observed_at, updated_at=s.observed_at,
            headline=f"{road} 严重拥堵 / severe congestion",
            description=(f"{road}: 平均速度 {s.speed_kmh:.0f} km/h (free flow "
                         f"{s.free_flow_kmh or 0:.0f} km/h), {s.sample_count} vehicles"),
            level=SEVERE, speed_kmh=s.speed_kmh, lon=s.lon, lat=s.lat,
            details={"road_class": s.road_class, "sample_count": s.sample_count},
        )
        state.warning = w
        await self.bus.publish(WARNING, w, correlation_id=correlation_id)
        WARNINGS.labels("congestion", "active").inc()
        self._count_active()
        log.info("warning raised", extra={"warning_id": w.warning_id, "segment": s.segment_id})

    async def _update(self, state: _SegmentState) -> None:
        assert state.warning is not None
        s = state.last
        w = replace(state.warning, updated_at=s.observed_at, speed_kmh=s.speed_kmh,
                     level=state.level)
        state.warning = w
        await self.bus.publish(WARNING, w)

    async def _clear(self, state: _SegmentState, reason: str) -> None:
        assert state.warning is not None
        now = state.last.observed_at if reason == "recovered" else datetime.now(UTC)
        w = replace(state.warning, status="cleared", updated_at=now, level=state.level,
                     speed_kmh=state.last.speed_kmh,
                     details={**state.warning.details, "cleared_because": reason})
        state.warning = None
        await self.bus.publish(WARNING, w)
        WARNINGS.labels("congestion", "cleared").inc()
        self._count_active()

    def _count_active(self) -> None:
        ACTIVE.set(sum(1 for st in self.segments.values() if st.warning is not None))

    async def expire_stale(self, now: datetime) -> None:
        """Segments without a new window for STALE_WINDOWS windows say so (``source: none``)."""
        limit = timedelta(seconds=self.config.speed_window_s * STALE_WINDOWS)
        for sid, state in list(self.segments.items()):
            if state.stale or now - state.last.observed_at < limit:
                continue
            state.stale = True
            state.level = None
            await self.bus.publish(ROAD_STATUS, RoadStatus(
                segment_id=sid, level=None, level_name=None, speed_kmh=None,
                free_flow_kmh=state.last.free_flow_kmh, observed_at=now, sample_count=0,
                source="none"))
            if state.warning is not None:
                await self._clear(state, "no_data")

    async def stale_loop(self) -> None:
        """Check for stale segments once per window."""
        while True:
            await asyncio.sleep(self.config.speed_window_s)
            try:
                await self.expire_stale(datetime.now(UTC))
            except Exception:
                log.exception("stale check failed")


ENGINE = web.AppKey("warning_engine", WarningEngine)


async def _active(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    active = [st.warning for st in engine.segments.values() if st.warning is not None]
    return web.json_response({"count": len(active),
                              "warning_ids": [w.warning_id for w in active]})


def create_app(config: Config, *, bus: EventBus, clock: Clock | None = None) -> web.Application:
    """Wire the warning service; the consumer starts in ``cleanup_ctx``."""
    app = create_base_app("warning", config)
    engine = WarningEngine(config, bus)
    app[ENGINE] = engine

    async def resources(app: web.Application) -> AsyncIterator[None]:
        sub = await bus.subscribe(SEGMENT_SPEED, engine.on_speed, durable="warning")
        spawn(app, engine.stale_loop(), name="warning-stale")
        yield
        await sub.stop()

    app.cleanup_ctx.append(resources)
    add_readiness_check(app, "bus", lambda: (bus.connected, "connected" if bus.connected
                                             else "disconnected"))
    app.router.add_get("/v1/active", _active)
    return app
