"""Collector service: protocol gateways that turn terminal reports into bus events.

The JT/T 808 TCP server runs inside the app's lifecycle (``cleanup_ctx``); the HTTP side serves
health, readiness and metrics. On shutdown the gateway drains first (``TTI_JT808_DRAIN_S``),
while ``/readyz`` still answers 503 ``draining``; then commands still waiting fail and the
rest closes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.collector.commands import CommandRouter
from services.collector.detectors import (
    DetectorIntake,
    MqttDetectorInput,
    add_detector_routes,
    openapi_paths,
)
from services.collector.feature_state import (
    CatalogueFollower,
    FeatureCatalogueView,
    add_feature_state_routes,
)
from services.collector.feature_state import openapi_paths as feature_state_paths
from services.collector.gtfs_rt import GtfsRtPoller
from services.collector.jt808_gateway import Jt808Gateway
from services.collector.registry import VehicleRegistry
from services.collector.terminals import TerminalStore, terminal_store_from_url
from shared.bus import EventBus
from shared.clock import Clock
from shared.config import Config
from shared.errors import ConfigError
from shared.service import add_drain_step, add_readiness_check, create_base_app

log = logging.getLogger("tti.collector")

GATEWAY = web.AppKey("jt808_gateway", Jt808Gateway)
COMMANDS = web.AppKey("jt808_commands", CommandRouter)


def create_app(config: Config, *, bus: EventBus, terminals: TerminalStore | None = None,
               registry: VehicleRegistry | None = None,
               clock: Clock | None = None) -> web.Application:
    """Wire the collector; the TCP server starts in ``cleanup_ctx``.

    ``clock`` (default: the configured one) is what every time check, timeout and poll of the
    collector reads.
    """
    if not config.jt808_drain_s >= 0:  # also refuses NaN
        raise ConfigError(f"TTI_JT808_DRAIN_S must be 0 or more seconds, not "
                          f"{config.jt808_drain_s!r}")
    clock = clock or config.make_clock()
    app = create_base_app("collector", config)
    store = terminals or terminal_store_from_url(config.db_url, clock=clock)
    gateway = Jt808Gateway(
        clock=clock, bus=bus, terminals=store, registry=registry or VehicleRegistry(),
        heartbeat_s=config.jt808_heartbeat_s, idle_factor=config.jt808_idle_factor,
        max_connections=config.jt808_max_connections,
        open_registration=config.jt808_open_registration,
        max_frames_per_s=config.jt808_max_frames_per_s,
        max_write_buffer=config.jt808_max_write_buffer,
        resend_after_s=config.jt808_resend_after_s,
        max_registrations_per_s=config.jt808_max_registrations_per_s)
    app[GATEWAY] = gateway
    commands = CommandRouter(gateway, bus=bus, store=store, replica_index=config.replica_index,
                             replica_count=config.replica_count,
                             timeout_s=config.jt808_command_timeout_s)
    app[COMMANDS] = commands

    async def resources(app: web.Application) -> AsyncIterator[None]:
        if registry is None and config.vehicle_registry:
            gateway.registry = VehicleRegistry.from_csv(config.vehicle_registry)
            log.info("vehicle registry: %d vehicles", len(gateway.registry))
        await store.open()
        try:
            await gateway.start(config.jt808_host, config.jt808_port)
            log.info("JT/T 808 gateway listening", extra={"port": gateway.port})
            try:
                await commands.start()
                yield
            finally:
                # Done already under `tti serve` (the drain step below); not when mounted in
                # `tti run` or under another runner. The router keeps working meanwhile: a
                # command waiting here is forwarded once its terminal is on another replica.
                await gateway.drain(config.jt808_drain_s)
                # Before the gateway closes the rest: commands still waiting fail visibly.
                await commands.stop()
                await gateway.stop()
        finally:
            await store.close()

    app.cleanup_ctx.append(resources)

    async def drain() -> None:
        # While /readyz still answers (503 "draining"), before the HTTP site stops.
        await gateway.drain(config.jt808_drain_s)

    add_drain_step(app, drain)
    add_readiness_check(app, "jt808", gateway.readiness)
    add_readiness_check(app, "bus", lambda: (bus.connected, "connected" if bus.connected
                                             else "disconnected"))
    _add_feeds_and_detectors(app, config, bus, clock)
    return app


GTFS_RT = web.AppKey("gtfs_rt_poller", GtfsRtPoller)
MQTT_DETECTORS = web.AppKey("mqtt_detectors", MqttDetectorInput)
CATALOGUE = web.AppKey("feature_catalogue", FeatureCatalogueView)


async def _openapi(request: web.Request) -> web.Response:
    """The collector's HTTP inputs as an OpenAPI 3.1 document."""
    return web.json_response({
        "openapi": "3.1.0",
        "info": {"title": "TTI collector", "version": "1",
                 "description": "Roadside detector and camera inputs, live state of "
                                "features (parking, weather, …). Times are RFC 3339; "
                                "stored and echoed in UTC. When sensor tokens are configured, "
                                "send `Authorization: Bearer <token>`."},
        "components": {"securitySchemes": {"sensorToken": {"type": "http",
                                                           "scheme": "bearer"}}},
        "security": [{"sensorToken": []}],
        "paths": {**openapi_paths(), **feature_state_paths()},
    })


def _add_feeds_and_detectors(app: web.Application, config: Config, bus: EventBus,
                             clock: Clock) -> None:
    """GTFS-rt pollers (when feeds are configured), HTTP detector routes, MQTT (when set)."""
    intake = DetectorIntake(bus, max_body=config.detector_max_body,
                            max_items=config.detector_max_items, tokens=config.sensor_tokens,
                            wall=clock.now)
    add_detector_routes(app, intake)
    # The features bigdata holds, learnt over the bus: feature states are checked against it.
    catalogue = FeatureCatalogueView()
    app[CATALOGUE] = catalogue
    follower = CatalogueFollower(bus, catalogue, clock=clock, replica_index=config.replica_index,
                                 replica_count=config.replica_count)
    app.cleanup_ctx.append(follower.cleanup_ctx)
    add_readiness_check(app, "feature_catalogue", catalogue.readiness)
    add_feature_state_routes(app, intake, catalogue)
    app.router.add_get("/openapi.json", _openapi)
    if config.gtfs_rt_urls:
        poller = GtfsRtPoller.from_config(config, bus=bus, clock=clock)
        app[GTFS_RT] = poller
        app.cleanup_ctx.append(poller.cleanup_ctx)
        add_readiness_check(app, "gtfs_rt", poller.readiness)
    if config.mqtt_url:
        mqtt = MqttDetectorInput.from_config(config, intake=intake, catalogue=catalogue)
        app[MQTT_DETECTORS] = mqtt
        app.cleanup_ctx.append(mqtt.cleanup_ctx)
        add_readiness_check(app, "mqtt", mqtt.readiness)
