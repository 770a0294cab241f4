"""The warning service's composition root: engine, inputs, lease, HTTP API.

Consumes ``tti.segment.speed`` and ``tti.detector.event`` (and follows ``tti.terminal.command``
and its outcomes, and ``tti.citizen.report``, into the workflow store); produces
``tti.road.status``, ``tti.warning``, ``tti.incident``, ``tti.area.index``, ``tti.forecast``
and, for the departments' texts to drivers, ``tti.terminal.command``; serves ``/v1/route``,
``/v1/warnings``, ``/v1/incidents``, ``/v1/index``, ``/v1/forecasts`` (and its ``/score``),
``/v1/reports/{number}`` and ``/openapi.json``. See README.md
beside this file.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

from aiohttp import web

from services.warning.api.cap import add_cap_routes
from services.warning.api.dept import AttemptLimiter, DeptContext, add_dept_routes
from services.warning.api.dept_messages import add_message_routes
from services.warning.api.forecasts import add_forecast_routes
from services.warning.api.public import ENGINE, SERVICE, add_routes
from services.warning.api.reports import add_report_routes
from services.warning.citizen_reports import CitizenReports
from services.warning.console import add_console_routes
from services.warning.driver_messages import DriverMessages
from services.warning.engine import WarningEngine
from services.warning.forecast import Forecaster, ProfileBook
from services.warning.service import LeaseOutput, WarningService
from services.warning.workflow.reports import ReportStore
from services.warning.workflow.store import WorkflowStore
from shared.bus import EventBus
from shared.bus.lease import Lease, lease_for_bus
from shared.clients.bigdata import BigdataClient
from shared.clock import Clock
from shared.config import Config
from shared.db import Database, database_from_url
from shared.service import add_probe_check, add_readiness_check, create_base_app, spawn

LEASE_NAME = "warning"


def create_app(config: Config, *, bus: EventBus, clock: Clock | None = None,
               bigdata: BigdataClient | None = None, lease: Lease | None = None,
               db: Database | None = None) -> web.Application:
    """Wire the warning service (no I/O here); everything starts in ``cleanup_ctx``.

    ``db`` is the deployment's database (default ``TTI_DB_URL``): the departments' workflow
    store lives there.
    """
    app = create_base_app("warning", config)
    store = WorkflowStore(db or database_from_url(config.db_url))
    reports = ReportStore(store.db)
    store.also_prune.append(reports.prune)
    clock = clock or config.make_clock()
    client = bigdata or BigdataClient(config.bigdata_url)
    holder = f"warning-{config.replica_index}@{socket.gethostname()}"
    service: WarningService

    async def on_change(held: bool) -> None:
        await service.on_lease(held)

    ttl = config.lease_ttl_s
    lease = lease or lease_for_bus(bus, LEASE_NAME, holder, on_change=on_change, ttl_s=ttl,
                                   renew_s=ttl / 5, poll_s=min(2.0, ttl / 6))
    # A standby holds back what it computes for longer than a dead holder can keep the lease.
    output = LeaseOutput(bus, lease, store, hold_s=max(LeaseOutput.HOLD_S, 4 * ttl))
    engine = WarningEngine(window_s=config.speed_window_s, clock=clock, output=output)
    forecaster = Forecaster(window_s=config.speed_window_s, output=output,
                            profiles=ProfileBook(client.get_profiles, clock=clock))
    service = WarningService(config, bus=bus, clock=clock, bigdata=client, engine=engine,
                             lease=lease, store=store, output=output, forecaster=forecaster)
    messages = DriverMessages(bus, store, durable=service.durable,
                              ttl_s=config.driver_text_ttl_s)
    citizen_reports = CitizenReports(bus, reports, clock, durable=service.durable,
                                     listener=service.on_citizen_report)
    app[ENGINE] = engine
    app[SERVICE] = service

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        await reports.migrate()
        await client.start()
        await service.subscribe()
        await messages.subscribe()
        await citizen_reports.subscribe()
        await lease.start()
        spawn(app, service.prepare(), name="warning-prepare")
        spawn(app, service.tick_loop(), name="warning-tick")
        spawn(app, service.profile_loop(), name="warning-profiles")
        spawn(app, service.registry_loop(), name="warning-registries")
        spawn(app, service.upkeep_loop(), name="warning-upkeep")
        spawn(app, forecaster.keep_profiles(clock, service.ready),
              name="warning-forecast-profiles")
        yield
        await service.unsubscribe()
        await messages.unsubscribe()
        await citizen_reports.unsubscribe()
        await engine.stop()
        await forecaster.stop()
        if lease.held:
            await output.retry()  # what is still owed goes out before the hand-over
        await lease.stop()
        await client.close()
        await store.close()

    app.cleanup_ctx.append(resources)
    add_readiness_check(app, "engine", service.readiness)
    add_readiness_check(app, "bus", lambda: (bus.connected, "connected" if bus.connected
                                             else "disconnected"))
    # The workflow store (warnings, reports, users) in the deployment's database.
    add_probe_check(app, "database", lambda: store.db.fetch_value("SELECT 1"))
    add_routes(app)
    add_dept_routes(app, DeptContext(store=store, engine=engine, service=service, bus=bus,
                                     clock=clock, limiter=AttemptLimiter(clock)))
    add_message_routes(app, messages)
    add_report_routes(app, reports)
    add_cap_routes(app)
    add_forecast_routes(app, forecaster)
    add_console_routes(app)
    return app
